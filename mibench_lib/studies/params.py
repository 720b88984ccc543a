"""Read study parameter files and check them against the notebook and the code they feed.

A study notebook declares its parameters, with their types and defaults, in the cell tagged
``parameters``; ``papermill.inspect_notebook`` and the cell's syntax tree read them. A parameter file
``parameters/<study>/<config>.yaml`` is a YAML mapping of some of those names to values, and
``-p key value`` pairs from the command line override it. papermill itself only logs a warning for a
name the notebook does not declare and converts nothing, so a typo would run the defaults silently;
here an unknown name or a value of the wrong type is a :class:`ParameterError` that names the file,
the field and the expected type.

Beyond the top-level types, :func:`check_study_parameters` checks what the nested values feed, before
anything runs: every registry name (``dataset``, ``*_arch``, ``attacks``, ``baselines``, the keys of
``attack_kwargs`` and ``query_budgets``, the ``name`` of each ``defenses`` entry) and every keyword
mapping against the signature of the function it is passed to, read with :mod:`inspect` when the
check runs (so a new attack, defense or dataset needs no change here). See :data:`KWARGS_FIELDS`
for which function each mapping feeds, and :data:`BUDGET_BOUNDS` for the sanity bounds on
iteration budgets (``steps: 10**12`` is a typo, not an experiment).

The file itself must be a non-empty mapping (an empty file would silently run the notebook's
defaults, the full study) without a repeated key at any level (YAML would keep the last value).

The runner injects ``study``, ``config`` and ``out_dir`` itself (see :data:`INJECTED`), so a
parameter file cannot point a run at the wrong output folder.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
import math
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, create_model

__all__ = [
    "BUDGET_BOUNDS",
    "INJECTED",
    "KWARGS_FIELDS",
    "DuplicateKeyError",
    "Feeds",
    "ParameterError",
    "ParameterSpec",
    "check_study_parameters",
    "display_path",
    "load_parameters",
    "notebook_parameters",
    "parse_overrides",
    "read_parameter_file",
    "safe_dump",
    "safe_load",
    "validate_parameters",
]

INJECTED: tuple[str, ...] = ("study", "config", "out_dir")
"""Set by the runner: study (notebook name), config (file stem), out_dir (absolute path)."""

# Declared type names (annotation or type comment) mapped to the type a YAML value must have.
_TYPE_NAMES: dict[str, type] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "List": list,
    "dict": dict,
    "Dict": dict,
}
# Types a literal default may have for the type to be inferred from it.
_LITERAL_TYPES: tuple[type, ...] = (bool, int, float, str, list, dict)
# pydantic error types mapped to the expected type named in our messages.
_EXPECTED: dict[str, str] = {
    "int_type": "int",
    "int_from_float": "int",
    "float_type": "float",
    "string_type": "str",
    "bool_type": "bool",
    "list_type": "list",
    "dict_type": "dict",
}


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names one key twice (YAML would silently keep the last value)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(
            "while constructing a mapping",
            first,
            f"duplicate key {key!r} (first on line {first.line + 1})",
            again,
        )
        self.key = key
        self.first_line = first.line + 1
        self.line = again.line + 1


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that reads ``1e-3`` as a float (YAML 1.2) and refuses repeated keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            # Explicit keys only: a key that overrides one brought in by a merge (<<) is legitimate.
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class reports it with its position
                    continue
                if first is not None:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """Safe YAML dumper that quotes the strings :class:`_Loader` would read as floats (``"1e3"``)."""


_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that reads ``1e-3`` as a float and refuses a repeated mapping key.

    Raises:
        DuplicateKeyError: A mapping, at any nesting level, names a key twice.
        yaml.YAMLError: Any other syntax error.
        ValueError: A value that YAML's own constructors refuse (``2001-13-01``, ``!!int x``).

    Example:
        >>> safe_load("lr: 1e-3\\nsteps: 10")
        {'lr': 0.001, 'steps': 10}
        >>> safe_load("gmi: {steps: 1, steps: 2}")
        Traceback (most recent call last):
        ...
        mibench_lib.studies.params.DuplicateKeyError: while constructing a mapping
        ...
    """
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no object construction


def safe_dump(data: Any) -> str:
    """``yaml.safe_dump`` (block style, keys in order) that :func:`safe_load` reads back equal.

    Example:
        >>> safe_dump({"tag": "1e3", "lr": 1e-3})
        "tag: '1e3'\\nlr: 0.001\\n"
        >>> safe_load(safe_dump({"tag": "1e3"}))
        {'tag': '1e3'}
    """
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)  # non-ASCII escaped: U+0085 too


class ParameterError(ValueError):
    """A parameter file or override does not fit the notebook it is meant for."""


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter declared in a notebook's ``parameters`` cell.

    Attributes:
        name: Variable name.
        type: Type a value must have (``int`` also passes for ``float``), or None when the cell
            neither annotates it nor gives a literal default (then any value passes).
        nullable: Whether ``null`` is accepted (the default is ``None``).
        default: Source text of the default value, as written in the cell.
        help: The trailing comment of the line, if any.
    """

    name: str
    type: type | None
    nullable: bool
    default: str
    help: str


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _literal(source: str) -> tuple[bool, Any]:
    """(True, value) when ``source`` is a Python literal, else (False, None)."""
    try:
        return True, ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _parse_annotation(text: str) -> tuple[type | None, bool]:
    """(type, nullable) from an annotation such as ``int``, ``list[int]``, ``str | None``."""
    text = text.strip().strip("'\"")
    nullable = False
    if text.startswith("Optional[") and text.endswith("]"):
        text, nullable = text[len("Optional[") : -1], True
    parts = [p.strip() for p in text.split("|")]
    if "None" in parts:
        parts.remove("None")
        nullable = True
    if len(parts) != 1:
        return None, nullable
    return _TYPE_NAMES.get(parts[0].split("[")[0].strip()), nullable


def _cell_assignments(source: str) -> dict[str, tuple[str, str]]:
    """Top-level ``name = value`` and ``name: ann = value`` of a cell, as name -> (ann, value)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            value = ast.get_source_segment(source, node.value) or ""
            found[node.target.id] = (ast.unparse(node.annotation), value)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = ("", ast.get_source_segment(source, node.value) or "")
    return found


def _spec(name: str, annotation: str, default: str, help_text: str) -> ParameterSpec:
    is_literal, value = _literal(default)
    typ, nullable = _parse_annotation(annotation) if annotation else (None, False)
    if typ is None and is_literal and value is not None:
        typ = next((t for t in _LITERAL_TYPES if type(value) is t), None)
    nullable = nullable or (is_literal and value is None)
    return ParameterSpec(name=name, type=typ, nullable=nullable, default=default, help=help_text)


def notebook_parameters(notebook: str | Path) -> dict[str, ParameterSpec]:
    """The parameters a notebook declares, in cell order, with the types values must have.

    The type comes from the annotation (``seeds: list = [0]``, ``root: str | None = None``) or a
    ``# type:`` comment; without either, from the literal default (``n = 3`` declares an int). A
    ``None`` default or an optional annotation makes the parameter nullable. Annotation and default
    are read from the cell's syntax tree (papermill's line parser skips ``x: str | None = None`` and
    cuts a dict spread over several lines), so every top-level assignment of the cell is a
    parameter; papermill contributes the trailing comment as ``help``.

    Args:
        notebook: Path of a ``.ipynb`` file with a cell tagged ``parameters``.

    Returns:
        Mapping from parameter name to :class:`ParameterSpec`.

    Raises:
        FileNotFoundError: ``notebook`` does not exist.
        ParameterError: The notebook has no cell tagged ``parameters`` or it declares nothing.
    """
    import nbformat
    import papermill  # slow to import; only the runner and the validator need it

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {display_path(path)} does not exist")
    # papermill warns about each line its pattern cannot read; the syntax tree below reads them.
    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level
    papermill_log.setLevel(logging.ERROR)
    try:
        inspected = papermill.inspect_notebook(str(path))
    finally:
        papermill_log.setLevel(level)
    if not inspected:
        raise ParameterError(
            f"{display_path(path)}: no cell tagged 'parameters' (or it assigns nothing)"
        )
    specs = {
        name: _spec(
            name,
            "" if info["inferred_type_name"] == "None" else str(info["inferred_type_name"]),
            str(info["default"]),
            str(info.get("help") or ""),
        )
        for name, info in inspected.items()
    }
    cell = next(
        c
        for c in nbformat.read(path, as_version=4).cells
        if "parameters" in c.metadata.get("tags", [])
    )
    assigned = _cell_assignments(cell.source)
    for name, (annotation, default) in assigned.items():
        # The syntax tree reads every assignment whole (papermill's line pattern cuts a dict
        # spread over several lines); papermill contributes the trailing comment.
        help_text = specs[name].help if name in specs else ""
        specs[name] = _spec(name, annotation, default, help_text)
    order = [*assigned, *(name for name in specs if name not in assigned)]
    return {name: specs[name] for name in order}


def _yaml_reason(err: Exception) -> tuple[int | None, str]:
    """(line or None, what is wrong) of an error raised by :func:`safe_load`."""
    if isinstance(err, DuplicateKeyError):
        return err.line, (
            f"duplicate key {err.key!r} (first on line {err.first_line}); YAML would keep only "
            "the last value: remove one"
        )
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        return (None if mark is None else mark.line + 1), (
            f"invalid YAML: {err.problem or err.context or 'syntax error'}"
        )
    return None, f"invalid YAML: {err}"


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    """Read one YAML parameter file: a non-empty mapping of parameter names to values.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ParameterError: The YAML does not parse or repeats a key at any level (the message names
            file, line and key), the file is empty (it would run the notebook's defaults: the full
            study), or its top level is not a mapping with string keys.
    """
    p = Path(path)
    shown = display_path(p)
    if not p.is_file():
        raise FileNotFoundError(f"parameter file {shown} does not exist")
    try:
        data = safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError, OverflowError) as err:  # ValueError: "2001-13-01"
        line, reason = _yaml_reason(err)
        raise ParameterError(f"{shown if line is None else f'{shown}:{line}'}: {reason}") from err
    if data is None or data == {}:
        raise ParameterError(
            f"{shown}: empty parameter file; it would run the notebook's defaults (the full "
            "study). Set at least one parameter, e.g. the seeds"
        )
    if not isinstance(data, dict):
        raise ParameterError(
            f"{shown}: expected a mapping of parameter names to values, got {type(data).__name__}"
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ParameterError(f"{shown}: parameter names must be strings, got {bad!r}")
    return data


def parse_overrides(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn command-line ``-p key value`` pairs into values, each value read as YAML.

    So ``-p steps 10`` gives an int, ``-p lr 1e-3`` a float, ``-p seeds "[0, 1]"`` a list and
    ``-p name gmi`` a string. A later pair for the same key wins.

    Raises:
        ParameterError: A value does not parse as YAML (or repeats a key of a mapping).
    """
    out: dict[str, Any] = {}
    for key, text in pairs:
        try:
            out[key] = safe_load(text) if text.strip() else ""
        except (yaml.YAMLError, ValueError, OverflowError) as err:
            raise ParameterError(f"-p {key} {text!r}: {_yaml_reason(err)[1]}") from err
    return out


def _describe(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{type(value).__name__} ({shown})"


def validate_parameters(
    values: Mapping[str, Any],
    specs: Mapping[str, ParameterSpec],
    *,
    source: str,
) -> dict[str, Any]:
    """Check names and types of ``values`` against the notebook's parameters.

    Types are checked strictly: an int passes for a float (and becomes a float), but a string never
    passes for a number, nor a number for a bool.

    Args:
        values: Parameter names to values, as read from a file or the command line.
        specs: The notebook's parameters, from :func:`notebook_parameters`.
        source: What the values came from, used as the prefix of every message
            (a file path, or ``"-p"`` for overrides).

    Returns:
        The values, converted where a float was declared and an int given.

    Raises:
        ParameterError: A name is one the runner injects, or the notebook does not declare it
            (the message lists the known names), or a value has the wrong type (the message names
            the field, the expected and the given type).
    """
    injected = [k for k in values if k in INJECTED]
    if injected:
        raise ParameterError(
            f"{source}: {', '.join(repr(k) for k in injected)} set by the runner "
            f"(study = notebook name, config = file stem, out_dir = output folder); remove it"
        )
    unknown = [k for k in values if k not in specs]
    if unknown:
        known = ", ".join(k for k in specs if k not in INJECTED)
        raise ParameterError(
            f"{source}: unknown parameter {', '.join(repr(k) for k in unknown)}; "
            f"the notebook declares: {known}"
        )
    fields: dict[str, Any] = {}
    for i, name in enumerate(values):
        spec = specs[name]
        typ: Any = Any if spec.type is None else spec.type
        if spec.nullable and spec.type is not None:
            typ = typ | None
        # Internal field names avoid clashes with BaseModel attributes (json, copy, model_*).
        fields[f"p{i}"] = (typ, Field(default=None, alias=name))
    model = create_model(
        "NotebookParameters",
        __config__=ConfigDict(strict=True, extra="forbid", protected_namespaces=()),
        **fields,
    )
    try:
        checked = model.model_validate(dict(values))
    except ValidationError as err:
        messages = []
        for e in err.errors():
            field = ".".join(str(part) for part in e["loc"])
            expected = _EXPECTED.get(e["type"])
            if expected is None:
                messages.append(f"field '{field}': {e['msg']}, got {_describe(e['input'])}")
            else:
                messages.append(f"field '{field}' expects {expected}, got {_describe(e['input'])}")
        raise ParameterError(f"{source}: {'; '.join(messages)}") from err
    return checked.model_dump(by_alias=True, exclude_unset=True)


# ----------------------------------------------------------------------------- nested checks

#: Lower and upper bounds of iteration and size budgets, by keyword name, wherever the name appears:
#: in a keyword mapping (attack, defense, training loop, GAN trainer, adversarial training) or at the
#: top level (``samples_per_class``, ``workers``). The lower bounds are what the code needs
#: (``epochs: 0`` would leave an untrained network in place of the target or the GAN prior). The
#: upper bounds are sanity bounds, orders of magnitude above every published setting (GMI: 1,500
#: steps, 5 restarts; the CelebA GAN: 280 epochs), so a value above one is a typo such as
#: ``10**12``, which would run for years before anyone noticed. A study that truly needs more
#: raises the bound here.
BUDGET_BOUNDS: dict[str, tuple[int, int]] = {
    "epochs": (1, 10_000),
    "pretrain_epochs": (1, 10_000),
    "steps": (0, 1_000_000),  # GMI: 0 keeps the initial draws
    "eval_steps": (0, 1_000_000),
    "max_iter": (1, 1_000_000),
    "max_iters": (1, 1_000_000),
    "max_stale_iters": (1, 1_000_000),
    "restarts": (1, 10_000),
    "eval_restarts": (1, 10_000),
    "n_critic": (1, 1_000),
    "sphere_points": (1, 1_000_000),
    "init_batch": (1, 1_000_000),
    "max_init_batches": (1, 1_000_000),
    "batch_size": (1, 1_000_000),
    "window": (1, 1_000_000),
    "eval_every": (1, 100_000_000),
    "latent_dim": (1, 100_000),
    "width": (1, 100_000),
    "critic_width": (1, 100_000),
    "samples_per_class": (1, 10_000),
    "workers": (0, 1_024),
}

#: Bounds that differ for one field: PGD adversarial training needs at least one step.
FIELD_BOUNDS: dict[str, dict[str, tuple[int, int]]] = {
    "at_kwargs": {"steps": (1, 1_000_000)},
}

#: Keyword arguments an attack gets from the harness, never from a parameter file (besides the
#: public networks each attack lists in ``ATTACK_NEEDS``).
ATTACK_SUPPLIED = frozenset({"oracle", "labels", "rng", "on_step"})
#: Keyword arguments a defense gets from the study (``make_defense``), never from a parameter file:
#: the names of ``mibench_lib.defenses.STUDY_INPUTS`` (the target's seed and epochs, the device,
#: labelled public data, a generator).
#: (``DEFENSE_SUPPLIED`` is read lazily: importing the defenses imports torch and opacus, which
#: ``mibench --help`` does not need.)
#: Keyword arguments a target prior's ``build`` gets from the study, never from a parameter file.
PRIOR_SUPPLIED = frozenset({"oracle", "public", "num_classes", "seed", "device", "progress"})


def _defense_supplied() -> frozenset[str]:
    return frozenset(importlib.import_module("mibench_lib.defenses").STUDY_INPUTS)


def __getattr__(name: str) -> Any:  # PEP 562: DEFENSE_SUPPLIED on first use
    if name == "DEFENSE_SUPPLIED":
        return _defense_supplied()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_TRAIN_SUPPLIED = frozenset(
    {
        "model",
        "train",
        "test",
        "loss_fn",
        "wrap_model",
        "prepare",
        "defense",
        "checkpoint_thresholds",
        "device",
        "rng",
        "progress",
        "desc",
    }
)


@dataclass(frozen=True)
class Feeds:
    """The function a keyword mapping is passed to, found by name when the check runs.

    Attributes:
        target: ``"module:function"``.
        supplied: Its parameters the study code sets itself (never from a parameter file).
        accepted: Optional ``"module:attribute"`` of a collection of keys the caller further
            restricts the mapping to (skipped when the attribute does not exist).
        all_required: Every allowed key must be present (the study code indexes each).
    """

    target: str
    supplied: frozenset[str] = frozenset()
    accepted: str | None = None
    all_required: bool = False


#: Which function each flat keyword mapping feeds (``attack_kwargs``, ``defenses`` and
#: ``dataset_kwargs`` go through their registries instead, by the name they give).
KWARGS_FIELDS: dict[str, Feeds] = {
    "target_train": Feeds(
        "mibench_lib.models.train:train_classifier",
        _TRAIN_SUPPLIED,
        accepted="mibench_lib.artifacts:_TRAIN_KEYS",
    ),
    "evaluator_train": Feeds(
        "mibench_lib.models.train:train_classifier",
        _TRAIN_SUPPLIED,
        accepted="mibench_lib.artifacts:_TRAIN_KEYS",
    ),
    "face_train": Feeds(
        "mibench_lib.models.train:train_classifier",
        _TRAIN_SUPPLIED,
        accepted="mibench_lib.artifacts:_TRAIN_KEYS",
    ),
    # betas: cached_gan refuses it (its recipe fixes Adam's betas).
    "gan_train": Feeds(
        "mibench_lib.generators.train:train_wgan_gp",
        frozenset({"generator", "critic", "public", "device", "rng", "progress", "betas"}),
    ),
    "gan": Feeds(
        "mibench_lib.artifacts:cached_gan",
        frozenset({"cache", "public", "arch", "train_cfg", "seed", "device", "progress"}),
        all_required=True,
    ),
    # eps and norm come from eps_grid.
    "at_kwargs": Feeds(
        "mibench_lib.defenses.adversarial:adversarial_training_defense",
        frozenset({"eps", "norm", "seed"}),
    ),
}

Issues = Iterator[tuple[str, str]]
"""(field path such as ``attack_kwargs.gmi``, what is wrong) pairs."""


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _registry(module: str, name: str) -> Mapping[str, Any]:
    return getattr(importlib.import_module(module), name)


def _accepted_parameters(fn: Callable[..., Any], supplied: Iterable[str]) -> dict[str, Any]:
    """Parameters of ``fn`` a keyword mapping may set: by keyword, not supplied by the caller."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    skip = set(supplied)
    return {
        name: p
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in kinds and name not in skip
    }


# Annotation names and the YAML values they accept.
_SIMPLE_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
    "NoneType": lambda v: v is None,
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "Any": lambda v: True,
    "object": lambda v: True,
}
_SEQUENCES = {"list", "List", "Sequence", "MutableSequence", "tuple", "Tuple", "Iterable"}
_MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping"}
# Types no YAML value can be (a parameter typed only so cannot come from a parameter file).
_NOT_YAML = {"Callable", "Tensor", "Generator", "Module", "ImageSet", "PathLike", "device"}


def _either(results: Iterable[bool | None]) -> bool | None:
    results = list(results)
    if any(r is True for r in results):
        return True
    return None if any(r is None for r in results) else False


def _matches(node: ast.expr, value: Any, scope: Mapping[str, Any]) -> bool | None:
    """Whether ``value`` fits the annotation ``node``; None when the annotation is not understood."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return value is None
        if isinstance(node.value, str):  # a quoted forward reference
            try:
                return _matches(ast.parse(node.value, mode="eval").body, value, scope)
            except SyntaxError:
                return None
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _either(_matches(side, value, scope) for side in (node.left, node.right))
    if isinstance(node, ast.Subscript):
        base = ast.unparse(node.value).rsplit(".", 1)[-1]
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Literal":
            try:
                allowed = [ast.literal_eval(a) for a in args]
            except ValueError:
                return None
            return any(type(value) is type(a) and value == a for a in allowed)
        if base == "Optional":
            return value is None or _matches(args[0], value, scope)
        if base == "Union":
            return _either(_matches(a, value, scope) for a in args)
        if base in _SEQUENCES:
            if not isinstance(value, list):
                return False
            variadic = len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is ...
            if base in {"tuple", "Tuple"} and not variadic:
                if len(value) != len(args):
                    return False
                pairs = list(zip(args, value))
            else:
                pairs = [(args[0], v) for v in value]
            return all(_matches(a, v, scope) is not False for a, v in pairs)
        if base in _MAPPINGS:
            return isinstance(value, dict)
        return _matches(node.value, value, scope)
    name = node.id if isinstance(node, ast.Name) else None
    if isinstance(node, ast.Attribute):
        name = node.attr
    if name is None:
        return None
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name](value)
    if name in _NOT_YAML:
        return False
    alias = scope.get(name)  # e.g. Normalization = Literal["face", "none"]
    if typing.get_origin(alias) is typing.Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(alias))
    return None


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _fits(annotation: Any, value: Any, fn: Callable[..., Any]) -> bool:
    """Whether ``value`` fits a parameter's annotation (True when it cannot be judged)."""
    text = _annotation_text(annotation)
    if not text:
        return True
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return True
    return _matches(node, value, getattr(fn, "__globals__", {})) is not False


def _check_bounds(
    field: str, name: str, value: Any, bounds: Mapping[str, tuple[int, int]]
) -> Issues:
    if name not in bounds or not isinstance(value, int) or isinstance(value, bool):
        return
    low, high = bounds[name]
    if value < low:
        yield (
            field,
            f"{value} is below {low}"
            + (" (training needs at least one epoch)" if name.endswith("epochs") else ""),
        )
    elif value > high:
        yield (
            field,
            (
                f"{value} exceeds the sanity bound {high:,} for '{name}' "
                "(see mibench_lib.studies.params.BUDGET_BOUNDS)"
            ),
        )


def _names(keys: Iterable[Any]) -> str:
    return ", ".join(sorted(str(k) for k in keys)) or "none"


def _check_kwargs(
    field: str,
    value: Any,
    fn: Callable[..., Any],
    supplied: Iterable[str],
    *,
    what: str,
    accepted: Iterable[str] | None = None,
    all_required: bool = False,
) -> Issues:
    """Check one keyword mapping against the signature of the function it is passed to."""
    if not isinstance(value, dict):
        yield field, f"expects a mapping of keyword arguments of {what}, got {_describe(value)}"
        return
    params = _accepted_parameters(fn, supplied)
    if accepted is not None:
        keep = set(accepted)
        params = {k: p for k, p in params.items() if k in keep}
    supplied = set(supplied)
    preset = [k for k in value if k in supplied and k not in params]
    if preset:
        yield (
            field,
            (
                f"{', '.join(repr(k) for k in preset)} set by the study code, not by a parameter "
                f"file; remove {'them' if len(preset) > 1 else 'it'}"
            ),
        )
    unknown = [k for k in value if k not in params and k not in supplied]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        yield (
            field,
            (
                f"unknown key{plural} {', '.join(repr(k) for k in unknown)}; allowed: {_names(params)}"
            ),
        )
    missing = [
        k
        for k, p in params.items()
        if k not in value and (all_required or p.default is inspect.Parameter.empty)
    ]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        yield field, f"missing key{plural} {', '.join(repr(k) for k in missing)} (needed by {what})"
    bounds = {**BUDGET_BOUNDS, **FIELD_BOUNDS.get(field.split(".")[0].split("[")[0], {})}
    for key, item in value.items():
        if key not in params:
            continue
        sub = f"{field}.{key}"
        if not _fits(params[key].annotation, item, fn):
            yield sub, f"expects {_annotation_text(params[key].annotation)}, got {_describe(item)}"
            continue
        yield from _check_bounds(sub, key, item, bounds)


def _check_registry_name(field: str, value: Any, registry: Mapping[str, Any], what: str) -> Issues:
    if not isinstance(value, str):
        yield field, f"expects the {what} name as a str, got {_describe(value)}"
    elif value not in registry:
        yield field, f"unknown {what} {value!r}; known: {_names(registry)}"


def _check_list(field: str, value: Any, *, what: str, empty_ok: bool = False) -> Issues:
    if not isinstance(value, list):
        yield field, f"expects a list of {what}, got {_describe(value)}"
    elif not value and not empty_ok:
        yield field, f"empty list; give at least one {what.rstrip('s')}"
    else:
        seen: list[Any] = []
        for i, item in enumerate(value):
            if any(type(item) is type(s) and item == s for s in seen):
                yield f"{field}[{i}]", f"repeats {item!r} (each run would be recorded twice)"
            seen.append(item)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_seeds(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    problems = list(_check_list(field, value, what="seeds"))
    yield from problems
    if isinstance(value, list):
        for i, seed in enumerate(value):
            if not _is_int(seed) or not 0 <= seed < 2**63:
                yield f"{field}[{i}]", f"expects an int in [0, 2**63), got {_describe(seed)}"


def _check_classes(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_list(field, value, what="class ids", empty_ok=True)
    if isinstance(value, list):
        for i, c in enumerate(value):
            if not _is_int(c) or c < 0:
                yield f"{field}[{i}]", f"expects a class id (int >= 0), got {_describe(c)}"


def _check_resolutions(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_list(field, value, what="resolutions")
    if isinstance(value, list):
        for i, r in enumerate(value):
            if not _is_int(r) or r < 8:
                yield (
                    f"{field}[{i}]",
                    f"expects an image side in pixels (int >= 8), got {_describe(r)}",
                )


def _check_per_resolution(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    """``{resolution: {parameter: value}}``: each override checked like the parameter itself."""
    if not isinstance(value, dict):
        yield (
            field,
            f"expects a mapping of resolution to parameter overrides, got {_describe(value)}",
        )
        return
    resolutions = values.get("resolutions", [])
    fixed = {"resolutions", "per_resolution", "seeds", "attacks", "baselines", *INJECTED}
    for res, overrides in value.items():
        at = f"{field}.{res}"
        if res not in resolutions:
            yield at, f"{res!r} is not one of resolutions {resolutions}"
            continue
        if not isinstance(overrides, dict):
            yield at, f"expects a mapping of parameter overrides, got {_describe(overrides)}"
            continue
        for name, override in overrides.items():
            if name not in values or name in fixed:
                yield f"{at}.{name}", "is not a parameter a resolution can override"
                continue
            check = _field_check(name)
            if check is not None:  # checked as the parameter itself, reported under this path
                for path, problem in check(name, override, values):
                    yield f"{at}.{path}", problem


def _check_thresholds(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_list(field, value, what="thresholds")
    if isinstance(value, list):
        for i, t in enumerate(value):
            if not _is_number(t) or not 0 < t <= 1:
                yield f"{field}[{i}]", f"expects a test accuracy in (0, 1], got {_describe(t)}"


def _check_attacks(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_list(field, value, what="attacks")
    if isinstance(value, list):
        attacks = _registry("mibench_lib.attacks", "ATTACKS")
        for i, name in enumerate(value):
            yield from _check_registry_name(f"{field}[{i}]", name, attacks, "attack")


def _check_baselines(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_list(field, value, what="baselines", empty_ok=True)
    if isinstance(value, list):
        known = _registry("mibench_lib.studies.harness", "BASELINES")
        for i, name in enumerate(value):
            yield from _check_registry_name(f"{field}[{i}]", name, known, "baseline")


def _check_attack_kwargs(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    if not isinstance(value, dict):
        yield (
            field,
            f"expects a mapping of attack name to keyword arguments, got {_describe(value)}",
        )
        return
    attacks = _registry("mibench_lib.attacks", "ATTACKS")
    needs = _registry("mibench_lib.attacks", "ATTACK_NEEDS")
    for name, kwargs in value.items():
        if name not in attacks:
            yield field, f"unknown attack {name!r}; known: {_names(attacks)}"
            continue
        yield from _check_kwargs(
            f"{field}.{name}",
            kwargs,
            attacks[name],
            ATTACK_SUPPLIED | set(needs.get(name, ())),
            what=f"attack {name!r}",
        )


def _check_prior_kwargs(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    if not isinstance(value, dict):
        yield (
            field,
            f"expects a mapping of prior to keyword arguments, got {_describe(value)}",
        )
        return
    specs = _registry("mibench_lib.attacks", "SPECS")
    priors = {
        p.name: p
        for spec in specs.values()
        for p in (*spec.target_priors, *getattr(spec, "public_priors", ()))
    }
    for name, kwargs in value.items():
        if name not in priors:
            known = _names(priors) if priors else "none (no registered attack trains one)"
            yield field, f"unknown prior {name!r}; known: {known}"
            continue
        yield from _check_kwargs(
            f"{field}.{name}", kwargs, priors[name].build, PRIOR_SUPPLIED, what=f"prior {name!r}"
        )


def _check_query_budgets(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    if not isinstance(value, dict):
        yield field, f"expects a mapping of attack name to query budget, got {_describe(value)}"
        return
    attacks = _registry("mibench_lib.attacks", "ATTACKS")
    for name, budget in value.items():
        if name not in attacks:
            yield field, f"unknown attack {name!r}; known: {_names(attacks)}"
        elif not _is_int(budget) or budget < 1:
            yield f"{field}.{name}", f"expects a positive int (queries), got {_describe(budget)}"


def _check_defenses(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    if not isinstance(value, list):
        yield field, f"expects a list of {{name, kwargs}} entries, got {_describe(value)}"
        return
    if not value:
        yield field, "empty list; give at least one defense (e.g. {name: none})"
        return
    defenses = _registry("mibench_lib.defenses", "DEFENSES")
    seen: dict[str, int] = {}
    for i, entry in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(entry, dict):
            yield at, f"expects a mapping {{name, kwargs}}, got {_describe(entry)}"
            continue
        extra = [k for k in entry if k not in ("name", "kwargs", "attacks")]
        if extra:
            keys = ", ".join(repr(k) for k in extra)
            yield at, f"unknown key {keys}; allowed: attacks, kwargs, name"
        subset = entry.get("attacks")
        if subset is not None:
            study_attacks = values.get("attacks", [])
            if not isinstance(subset, list) or not subset:
                yield (
                    f"{at}.attacks",
                    f"expects a non-empty list of attacks, got {_describe(subset)}",
                )
            else:
                bad = [a for a in subset if a not in study_attacks]
                if bad:
                    yield (
                        f"{at}.attacks",
                        f"{bad} not in the study's attacks {list(study_attacks)} "
                        "(a defense entry can only narrow them)",
                    )
        if "name" not in entry:
            yield at, "missing key 'name'"
            continue
        name = entry["name"]
        problems = list(_check_registry_name(f"{at}.name", name, defenses, "defense"))
        if problems:
            yield from problems
            continue
        kwargs = entry.get("kwargs", {})
        yield from _check_kwargs(
            f"{at}.kwargs", kwargs, defenses[name], _defense_supplied(), what=f"defense {name!r}"
        )
        identity = json.dumps([name, kwargs], sort_keys=True, default=str)
        if identity in seen:
            yield at, f"repeats {field}[{seen[identity]}] (each run would be recorded twice)"
        seen.setdefault(identity, i)


def _check_dataset(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_registry_name(
        field, value, _registry("mibench_lib.data", "DATASETS"), "dataset"
    )


def _check_dataset_kwargs(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    datasets = _registry("mibench_lib.data", "DATASETS")
    name = values.get("dataset")
    if not isinstance(name, str) or name not in datasets:
        return  # the dataset itself is reported
    yield from _check_kwargs(field, value, datasets[name], (), what=f"dataset {name!r}")


def _check_arch(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_registry_name(
        field, value, _registry("mibench_lib.models", "MODELS"), "architecture"
    )


def _check_eps_grid(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    if not isinstance(value, dict):
        yield field, f"expects a mapping of norm to a list of radii, got {_describe(value)}"
        return
    if not value:
        yield field, "empty mapping; give at least one norm with its radii"
        return
    norms = getattr(importlib.import_module("mibench_lib.defenses.adversarial"), "NORMS", None)
    for norm, radii in value.items():
        if norms is not None and norm not in norms:
            yield field, f"unknown norm {norm!r}; known: {_names(norms)}"
            continue
        at = f"{field}.{norm}"
        yield from _check_list(at, radii, what="radii")
        if isinstance(radii, list):
            for i, eps in enumerate(radii):
                if not _is_number(eps) or not 0 < eps < math.inf:
                    yield (
                        f"{at}[{i}]",
                        (
                            f"expects a radius > 0 (0, standard training, is always included), "
                            f"got {_describe(eps)}"
                        ),
                    )


def _check_flat_kwargs(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    feeds = KWARGS_FIELDS[field]
    fn = _resolve(feeds.target)
    accepted = None
    if feeds.accepted is not None:
        try:
            accepted = _resolve(feeds.accepted)
        except (ImportError, AttributeError):
            accepted = None
    yield from _check_kwargs(
        field,
        value,
        fn,
        feeds.supplied,
        what=f"{fn.__module__}.{fn.__qualname__}",
        accepted=accepted,
        all_required=feeds.all_required,
    )


def _check_budget_value(field: str, value: Any, values: Mapping[str, Any]) -> Issues:
    yield from _check_bounds(field, field, value, BUDGET_BOUNDS)


_FIELD_CHECKS: dict[str, Callable[[str, Any, Mapping[str, Any]], Issues]] = {
    "seeds": _check_seeds,
    "classes": _check_classes,
    "thresholds": _check_thresholds,
    "resolutions": _check_resolutions,
    "per_resolution": _check_per_resolution,
    "attacks": _check_attacks,
    "baselines": _check_baselines,
    "attack_kwargs": _check_attack_kwargs,
    "query_budgets": _check_query_budgets,
    "prior_kwargs": _check_prior_kwargs,
    "defenses": _check_defenses,
    "dataset": _check_dataset,
    "dataset_kwargs": _check_dataset_kwargs,
    "eps_grid": _check_eps_grid,
    "samples_per_class": _check_budget_value,
    "workers": _check_budget_value,
    **{name: _check_flat_kwargs for name in KWARGS_FIELDS},
}


def _field_check(name: str) -> Callable[[str, Any, Mapping[str, Any]], Issues] | None:
    if name in _FIELD_CHECKS:
        return _FIELD_CHECKS[name]
    if name.endswith("_arch"):
        return _check_arch
    return None


def _format_issue(source: str, field: str, problem: str) -> str:
    if problem.startswith("expects "):
        return f"{source}: field '{field}' {problem}"
    return f"{source}: field '{field}': {problem}"


def check_study_parameters(
    values: Mapping[str, Any], *, source: str | Mapping[str, str] = "parameters"
) -> None:
    """Check nested values against the registries and the signatures of the code they feed.

    Only fields with a known meaning are checked (see the module docstring); registries and
    signatures are read when this runs, so an attack, defense or dataset added to its registry
    is checked without a change here. Values the notebook's types already checked (``seeds`` is a
    list) are taken as given.

    Args:
        values: Every parameter the run will see (notebook defaults updated by the file and the
            overrides), so that ``dataset_kwargs`` is checked against the dataset actually used.
        source: What each field's value came from, as the prefix of its message: one string for
            all, or a mapping from field name to the file path, ``"-p"`` or the notebook.

    Raises:
        ParameterError: One line per problem, each naming the source, the field (dotted, e.g.
            ``attack_kwargs.gmi``), the bad key or value and what is allowed.

    Example:
        >>> try:
        ...     check_study_parameters({"attack_kwargs": {"gmi": {"stepz": 3}}}, source="x.yaml")
        ... except ParameterError as err:
        ...     print(err)  # doctest: +ELLIPSIS
        x.yaml: field 'attack_kwargs.gmi': unknown key 'stepz'; allowed: ..., lr, ..., steps
    """
    problems: list[str] = []
    for name, value in values.items():
        check = _field_check(name)
        if check is None:
            continue
        where = source if isinstance(source, str) else source.get(name, "parameters")
        problems += [_format_issue(where, f, p) for f, p in check(name, value, values)]
    if problems:
        raise ParameterError("\n".join(problems))


def load_parameters(
    params_file: str | Path,
    notebook: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read, validate and merge a parameter file and overrides for a notebook.

    The file is checked first, then the overrides on their own, so each message names where the
    bad value came from. Overrides win over the file (a shallow update, as ``papermill -f ... -p``).
    Then the nested values the run will see (notebook defaults updated by both) are checked by
    :func:`check_study_parameters`; a problem in a default names the notebook.

    Args:
        params_file: ``parameters/<study>/<config>.yaml``.
        notebook: The study notebook whose ``parameters`` cell declares the names.
        overrides: Values from ``-p key value`` (see :func:`parse_overrides`).

    Returns:
        The merged parameters, without the injected ``study``, ``config`` and ``out_dir``.

    Raises:
        FileNotFoundError: The file or the notebook is missing.
        ParameterError: See :func:`read_parameter_file`, :func:`validate_parameters` and
            :func:`check_study_parameters`; also when the notebook does not declare the injected
            parameters.
    """
    specs = notebook_parameters(notebook)
    missing = [k for k in INJECTED if k not in specs]
    if missing:
        raise ParameterError(
            f"{display_path(notebook)}: the parameters cell must declare "
            f"{', '.join(repr(k) for k in missing)} (the runner sets them)"
        )
    shown = display_path(params_file)
    merged = validate_parameters(read_parameter_file(params_file), specs, source=shown)
    overridden = validate_parameters(overrides, specs, source="-p") if overrides else {}
    merged.update(overridden)
    # Nested checks see what the run will see: the notebook's defaults under file and overrides.
    defaults_from = f"{display_path(notebook)} (default)"
    effective: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, spec in specs.items():
        is_literal, value = _literal(spec.default)
        if name not in INJECTED and is_literal:
            effective[name], sources[name] = value, defaults_from
    for name, value in merged.items():
        effective[name] = value
        sources[name] = "-p" if name in overridden else shown
    check_study_parameters(effective, source=sources)
    return merged
