"""Read study parameter files and check them against the notebook's ``parameters`` cell.

A study notebook declares its parameters, with their types and defaults, in the cell tagged
``parameters``; ``papermill.inspect_notebook`` reads them. A parameter file
``parameters/<study>/<config>.yaml`` is a flat YAML mapping of some of those names to values, and
``-p key value`` pairs from the command line override it. papermill itself only logs a warning for a
name the notebook does not declare and converts nothing, so a typo would run the defaults silently;
here an unknown name or a value of the wrong type is a :class:`ParameterError` that names the file,
the field and the expected type.

The runner injects ``study``, ``config`` and ``out_dir`` itself (see :data:`INJECTED`), so a
parameter file cannot point a run at the wrong output folder.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, create_model

__all__ = [
    "INJECTED",
    "ParameterError",
    "ParameterSpec",
    "display_path",
    "load_parameters",
    "notebook_parameters",
    "parse_overrides",
    "read_parameter_file",
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


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-3`` as a float (YAML 1.2), not as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that reads exponent floats without a dot (``1e-3``) as floats."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no object construction


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
    ``None`` default or an optional annotation makes the parameter nullable. Assignments that
    papermill's line parser skips (such as ``x: str | None = None``) are read from the cell's
    syntax tree instead, so every top-level assignment of the cell is a parameter.

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
        if name not in specs:
            specs[name] = _spec(name, annotation, default, "")
    order = [*assigned, *(name for name in specs if name not in assigned)]
    return {name: specs[name] for name in order}


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    """Read one flat YAML parameter file; an empty file is an empty mapping.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ParameterError: The YAML does not parse (the message names file and line), or its top
            level is not a mapping with string keys.
    """
    p = Path(path)
    shown = display_path(p)
    if not p.is_file():
        raise FileNotFoundError(f"parameter file {shown} does not exist")
    try:
        data = safe_load(p.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        problem = err.problem or err.context or "invalid YAML"
        raise ParameterError(f"{where}: invalid YAML: {problem}") from err
    except yaml.YAMLError as err:
        raise ParameterError(f"{shown}: invalid YAML: {err}") from err
    if data is None:
        return {}
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
        ParameterError: A value does not parse as YAML.
    """
    out: dict[str, Any] = {}
    for key, text in pairs:
        try:
            out[key] = safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ParameterError(f"-p {key} {text!r}: invalid YAML value: {err}") from err
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


def load_parameters(
    params_file: str | Path,
    notebook: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read, validate and merge a parameter file and overrides for a notebook.

    The file is checked first, then the overrides on their own, so each message names where the
    bad value came from. Overrides win over the file (a shallow update, as ``papermill -f ... -p``).

    Args:
        params_file: ``parameters/<study>/<config>.yaml``.
        notebook: The study notebook whose ``parameters`` cell declares the names.
        overrides: Values from ``-p key value`` (see :func:`parse_overrides`).

    Returns:
        The merged parameters, without the injected ``study``, ``config`` and ``out_dir``.

    Raises:
        FileNotFoundError: The file or the notebook is missing.
        ParameterError: See :func:`read_parameter_file` and :func:`validate_parameters`; also when
            the notebook does not declare the injected parameters.
    """
    specs = notebook_parameters(notebook)
    missing = [k for k in INJECTED if k not in specs]
    if missing:
        raise ParameterError(
            f"{display_path(notebook)}: the parameters cell must declare "
            f"{', '.join(repr(k) for k in missing)} (the runner sets them)"
        )
    merged = validate_parameters(
        read_parameter_file(params_file), specs, source=display_path(params_file)
    )
    if overrides:
        merged.update(validate_parameters(overrides, specs, source="-p"))
    return merged
