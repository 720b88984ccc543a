"""Browse finished study outputs: reconstructions beside private images, metrics, the figure.

``notebooks/explore.ipynb`` calls :func:`explore`. In JupyterLab it shows an :class:`Explorer`:
dropdowns for study, configuration (``<out_root>/<study>/<config>/`` folders holding
``results.csv``), attack, the arm's other key columns (those ``results_key.json`` lists besides
``attack`` and ``seed``: ``threshold``, ``defense_label``, ``norm`` and ``eps``, ...), private class
and seed. For the selection it shows

1. a grid: private training images of the class above the run's reconstructions of that class,
2. the run's row(s) of ``results.csv`` as a small table,
3. the run's place among every run of the configuration: its headline metrics (``acc1``, and
   ``delta_eval`` when present) per arm, one colour per attack, the selected run starred.

Each control updates the options of those after it. Under papermill (headless, see
:func:`mibench_lib.progress.headless`) there is no widget frontend: :func:`static_overview`
renders the same three views, for one default selection per configuration, as plain PNG, Markdown
and HTML outputs; :func:`execute_explorer` runs the notebook that way (the HTML report's page).

Reconstructions are read with :func:`safetensors.torch.load_file` from
``reconstructions/<tag>.safetensors``, ``tag`` being :func:`~mibench_lib.studies.jobs.run_tag` of
the row's key; key values read back from CSV may differ in type from those the study passed
(``1000.0`` for ``1000``), so every numeric form is tried against the files present. The private
images come from the data split rebuilt from the run's ``parameters.yaml`` (cached per dataset and
keyword arguments); when the local dataset is absent the reconstructions are shown alone with a
note.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file
from torch import Tensor

from mibench_lib.data import MISplit, load_dataset
from mibench_lib.progress import HEADLESS_ENV, headless
from mibench_lib.studies.jobs import key_label, run_tag
from mibench_lib.studies.params import display_path, safe_load
from mibench_lib.studies.runner import NOTEBOOKS_DIR, OUTPUTS_DIR, REPO_ROOT

__all__ = [
    "EXPLORER_NOTEBOOK",
    "HEADLINE",
    "Configuration",
    "Explorer",
    "Run",
    "RunView",
    "attack_options",
    "config_classes",
    "default_run",
    "execute_explorer",
    "explore",
    "figure_png",
    "key_options",
    "list_configurations",
    "load_reconstructions",
    "metrics_table",
    "open_configuration",
    "plot_placement",
    "plot_run_grid",
    "private_images",
    "private_split",
    "reconstruction_path",
    "resolve_out_root",
    "run_rows",
    "seed_options",
    "static_overview",
    "view_run",
]

logger = logging.getLogger(__name__)

#: The explorer notebook :func:`execute_explorer` runs.
EXPLORER_NOTEBOOK: Path = NOTEBOOKS_DIR / "explore.ipynb"
#: Metrics of the placement figure, one panel each when the configuration has them.
HEADLINE: dict[str, str] = {
    "acc1": "Acc@1 (evaluator)",
    "delta_eval": "delta_eval (lower: closer)",
}
_RESULTS = "results.csv"
_KEY_FILE = "results_key.json"
_RUN_COLUMNS = ("attack", "seed")
_PATH_SUFFIXES = ("_root", "_path")
_MAX_IMAGES = 8  # images per grid row
_TEXT_CUT = 160  # characters of a long text cell in the metrics table


# ----------------------------------------------------------------------------- finding outputs


def resolve_out_root(out_root: str | Path = "") -> Path:
    """The outputs folder to browse, as an absolute path.

    Args:
        out_root: Empty: the repository's ``outputs/``. A relative path is taken from the working
            directory when it exists there, else from the repository root (the working directory
            of papermill runs; JupyterLab's is the notebook's folder).

    Raises:
        FileNotFoundError: The folder does not exist.
    """
    if not str(out_root):
        path = OUTPUTS_DIR
    else:
        path = Path(out_root).expanduser()
        if not path.is_absolute():
            path = path.absolute() if path.exists() else REPO_ROOT / path
    if not path.is_dir():
        raise FileNotFoundError(
            f"outputs folder {display_path(path)} does not exist; pass out_root= the folder that "
            "holds <study>/<config>/results.csv (run `mibench run parameters/<study>/<config>.yaml`)"
        )
    return path.resolve()


def _visible(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(("_", "."))


def list_configurations(out_root: str | Path = "") -> dict[str, list[str]]:
    """Study -> its configurations under ``out_root`` that hold ``results.csv``, sorted.

    Folders starting with ``_`` or ``.`` (``_previous``, ``.locks``) are skipped, and so are
    configurations without results yet (a run that has not finished an attack).
    """
    root = resolve_out_root(out_root)
    found: dict[str, list[str]] = {}
    for study in sorted(filter(_visible, root.iterdir())):
        configs = [
            c.name
            for c in sorted(filter(_visible, study.iterdir()))
            if (c / _RESULTS).is_file() and (c / _KEY_FILE).is_file()
        ]
        if configs:
            found[study.name] = configs
    return found


def _python(value: Any) -> Any:
    """A numpy scalar as the Python scalar it holds (dropdown values, JSON, ``run_tag``)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Configuration:
    """One finished configuration's folder, read.

    Attributes:
        study: Study name (the folder above).
        config: Configuration name (the folder).
        path: ``<out_root>/<study>/<config>``.
        key: The arm key columns: ``results_key.json``'s ``key`` without ``attack`` and ``seed``.
        results: ``results.csv``.
        params: ``parameters.yaml`` (empty when the folder has none).
        tags: Stems of the files in ``reconstructions/``.
    """

    study: str
    config: str
    path: Path
    key: tuple[str, ...]
    results: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """``study/config``."""
        return f"{self.study}/{self.config}"


def open_configuration(out_root: str | Path, study: str, config: str) -> Configuration:
    """Read ``<out_root>/<study>/<config>``: results, key columns, parameters, saved tags.

    Raises:
        FileNotFoundError: The folder lacks ``results.csv`` or ``results_key.json``.
        ValueError: ``results_key.json`` has no ``key`` list naming ``attack`` and ``seed``, or
            ``results.csv`` lacks one of its columns.
    """
    path = resolve_out_root(out_root) / study / config
    for name in (_RESULTS, _KEY_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{display_path(path / name)} does not exist: {study}/{config} has no results yet"
            )
    key_file = path / _KEY_FILE
    key = json.loads(key_file.read_text()).get("key")
    if not isinstance(key, list) or not set(_RUN_COLUMNS) <= set(key):
        raise ValueError(
            f"{display_path(key_file)}: expected {{'key': [..., 'attack', 'seed']}}, got key={key!r}"
        )
    results = pd.read_csv(path / _RESULTS)
    missing = [c for c in key if c not in results]
    if missing:
        raise ValueError(
            f"{display_path(path / _RESULTS)} lacks the key column(s) {missing} that "
            f"{_KEY_FILE} names"
        )
    params_file = path / "parameters.yaml"
    params = safe_load(params_file.read_text()) if params_file.is_file() else {}
    recon = path / "reconstructions"
    tags = frozenset(p.stem for p in recon.glob("*.safetensors")) if recon.is_dir() else frozenset()
    return Configuration(
        study=study,
        config=config,
        path=path,
        key=tuple(c for c in key if c not in _RUN_COLUMNS),
        results=results,
        params=dict(params or {}),
        tags=tags,
    )


# ----------------------------------------------------------------------------- selections


@dataclass(frozen=True)
class Run:
    """One run of a configuration: the arm's key values, the attack and the seed.

    Attributes:
        key: Arm key column -> value, in the configuration's key order.
        attack: Attack (or baseline) name.
        seed: The run's seed.
    """

    key: Mapping[str, Any]
    attack: str
    seed: int

    def label(self) -> str:
        """E.g. ``threshold 0.5, gmi, seed 0``."""
        parts = [f"{k} {key_label({k: v})}" for k, v in self.key.items()]
        return ", ".join([*parts, self.attack, f"seed {self.seed}"])


def _sort_values(values: Sequence[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:  # mixed types in one column: order by text
        return sorted(values, key=str)


def _unique(series: pd.Series) -> list[Any]:
    return _sort_values([_python(v) for v in series.dropna().unique()])


def _match(df: pd.DataFrame, values: Mapping[str, Any]) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for col, value in values.items():
        mask &= df[col] == value
    return df[mask]


def attack_options(conf: Configuration) -> list[str]:
    """Attacks with rows: the parameters' ``attacks`` first, then ``baselines``, then the rest."""
    present = set(conf.results["attack"].dropna().astype(str))
    ordered = [*conf.params.get("attacks", []), *conf.params.get("baselines", [])]
    first = [a for a in dict.fromkeys(ordered) if a in present]
    return first + sorted(present - set(first))


def key_options(
    conf: Configuration, attack: str, chosen: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """Options of each key column for ``attack``, each given the values chosen before it.

    Args:
        conf: The configuration.
        attack: The chosen attack.
        chosen: Key column -> chosen value; a column's options are the values found in the rows
            of ``attack`` whose earlier key columns equal their chosen values (the first option
            stands in for a choice missing or not among the options).

    Returns:
        Key column -> sorted values, in key order.
    """
    rows = conf.results[conf.results["attack"] == attack]
    options: dict[str, list[Any]] = {}
    for col in conf.key:
        values = _unique(rows[col])
        options[col] = values
        pick = chosen.get(col)
        if pick not in values and values:
            pick = values[0]
        rows = rows[rows[col] == pick]
    return options


def seed_options(conf: Configuration, attack: str, key: Mapping[str, Any]) -> list[int]:
    """Seeds of the rows of ``attack`` with this arm key."""
    rows = _match(conf.results, {"attack": attack, **key})
    return [int(s) for s in _unique(rows["seed"])]


def run_rows(conf: Configuration, run: Run) -> pd.DataFrame:
    """The rows of ``results.csv`` of ``run`` (normally one)."""
    return _match(conf.results, {**run.key, "attack": run.attack, "seed": run.seed})


def _forms(value: Any) -> list[Any]:
    """The values a CSV cell may have been written from: ``1000.0`` -> 1000.0, 1000; ``"0.3"``."""
    value = _python(value)
    forms = [value]
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return forms
        forms.append(number)
        value = number
    if isinstance(value, float) and value.is_integer():
        forms.append(int(value))
    elif isinstance(value, int) and not isinstance(value, bool):
        forms.append(float(value))
    return list(dict.fromkeys(forms))


def _tags(run: Run) -> list[str]:
    names = list(run.key)
    tags = [
        run_tag(dict(zip(names, values, strict=True)), run.attack, int(run.seed))
        for values in itertools.product(*(_forms(run.key[n]) for n in names))
    ]
    return list(dict.fromkeys(tags))


def reconstruction_path(conf: Configuration, run: Run) -> Path | None:
    """The ``reconstructions/<tag>.safetensors`` of ``run``, or None when it saved none.

    Every form the key values may have had when the study named the file is tried (``run_tag``
    writes a float as ``%g`` and an int as digits), against the files present.
    """
    for tag in _tags(run):
        if tag in conf.tags:
            return conf.path / "reconstructions" / f"{tag}.safetensors"
    return None


@lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int) -> tuple[Tensor, Tensor]:
    saved = load_file(path)
    missing = {"images", "labels"} - set(saved)
    if missing:
        raise ValueError(f"{display_path(path)} lacks the tensor(s) {sorted(missing)}")
    return saved["images"], saved["labels"]


def load_reconstructions(path: str | Path) -> tuple[Tensor, Tensor]:
    """(images (N, C, H, W) in [0, 1], labels (N,)) of a saved run (safetensors; cached)."""
    p = Path(path)
    return _load(str(p), p.stat().st_mtime_ns)


def config_classes(conf: Configuration) -> list[int]:
    """The private classes the configuration attacked: the labels of a saved run.

    Every run of a configuration inverts the same labels; without any saved run, the parameters'
    ``classes`` (empty when they say "all").
    """
    for tag in sorted(conf.tags):
        _, labels = load_reconstructions(conf.path / "reconstructions" / f"{tag}.safetensors")
        return sorted({int(c) for c in labels.tolist()})
    return [int(c) for c in conf.params.get("classes", [])]


def default_run(conf: Configuration) -> Run | None:
    """The first run with saved reconstructions: first attack, first key values, first seed.

    None when the configuration saved no reconstructions (then the first row's run, if any, is
    still a valid :class:`Run` for the table and figure: see :func:`view_run`).
    """
    first: Run | None = None
    for attack in attack_options(conf):
        rows = conf.results[conf.results["attack"] == attack]
        rows = rows.sort_values([*conf.key, "seed"], kind="stable")
        for record in rows[[*conf.key, "seed"]].to_dict("records"):
            run = Run({k: _python(record[k]) for k in conf.key}, attack, int(record["seed"]))
            first = first or run
            if reconstruction_path(conf, run) is not None:
                return run
    return first


# ----------------------------------------------------------------------------- private data


_SPLITS: dict[str, MISplit] = {}


def _absolute_paths(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Relative ``root``/``*_root``/``*_path`` values taken from the repository root."""
    out = dict(kwargs)
    for k, v in kwargs.items():
        named = k == "root" or k.endswith(_PATH_SUFFIXES)
        if named and isinstance(v, str) and v and not Path(v).expanduser().is_absolute():
            out[k] = str(REPO_ROOT / v)
    return out


def dataset_recipe(params: Mapping[str, Any], key: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(dataset name, loader keyword arguments) of a run's data split.

    A study with per-resolution variants (``resolutions`` in its parameters, ``resolution`` in the
    arm key) builds each variant's data with ``dataset_kwargs.resolution`` set and the
    ``per_resolution`` overrides applied, as ``notebooks/resolution.py`` does.

    Raises:
        KeyError: The parameters name no ``dataset``.
    """
    if "dataset" not in params:
        raise KeyError("parameters.yaml names no 'dataset'")
    dataset = str(params["dataset"])
    kwargs = dict(params.get("dataset_kwargs") or {})
    if "resolution" in key and "resolutions" in params:
        r = int(float(key["resolution"]))
        per = params.get("per_resolution") or {}
        extra = next((v for k, v in per.items() if str(k) == str(r)), {})
        variant = {"dataset_kwargs": {"resolution": r}, **extra}
        dataset = str(variant.get("dataset", dataset))
        kwargs = {**kwargs, **variant["dataset_kwargs"]}
    return dataset, _absolute_paths(kwargs)


def private_split(dataset: str, kwargs: Mapping[str, Any]) -> MISplit:
    """:func:`~mibench_lib.data.load_dataset` ``(dataset, **kwargs)``, cached per arguments."""
    cache_key = json.dumps([dataset, kwargs], sort_keys=True, default=str)
    if cache_key not in _SPLITS:
        _SPLITS[cache_key] = load_dataset(dataset, **kwargs)
    return _SPLITS[cache_key]


def private_images(
    conf: Configuration, key: Mapping[str, Any], cls: int, n: int
) -> tuple[Tensor | None, str, str]:
    """The first ``n`` private training images of class ``cls`` for an arm, or why there are none.

    Returns:
        (images (k, C, H, W) or None, class name, note). The note is empty when the images are
        there; otherwise it says in one line why not (the local dataset is absent, ...).
    """
    try:
        dataset, kwargs = dataset_recipe(conf.params, key)
        split = private_split(dataset, kwargs)
    except (OSError, KeyError, TypeError, ValueError) as err:
        # FileNotFoundError and DatasetNotFoundError: the local data is not on this machine
        return None, str(cls), f"Private images not shown ({type(err).__name__}: {err})."
    name = split.class_names[cls] if 0 <= cls < len(split.class_names) else str(cls)
    index = torch.nonzero(split.private_train.labels == cls).flatten()[:n]
    if index.numel() == 0:
        return None, name, f"Private images not shown: {dataset} has no private class {cls}."
    return split.private_train.subset(index).images, name, ""


# ----------------------------------------------------------------------------- views


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _hw(image: Tensor) -> np.ndarray:
    image = image.detach().cpu().float().clamp(0, 1)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def plot_run_grid(rows: Mapping[str, Tensor], *, title: str = "") -> Figure:
    """One row of images per entry (e.g. private samples, then reconstructions); no pyplot.

    Args:
        rows: Row label -> (N, C, H, W) images in [0, 1]; at most 8 of each are drawn.
        title: Figure title.
    """
    ncols = max(1, *(min(len(v), _MAX_IMAGES) for v in rows.values()))
    fig = Figure(figsize=(0.9 * ncols + 1.6, 1.0 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for j in range(ncols):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(images):
                ax.imshow(_hw(images[j]), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _arms(conf: Configuration) -> list[tuple[Any, ...]]:
    if not conf.key:
        return [()]
    arms = conf.results[list(conf.key)].drop_duplicates()
    tuples = [tuple(_python(v) for v in row) for row in arms.itertuples(index=False)]
    return _sort_values(tuples)


def plot_placement(
    conf: Configuration, run: Run | None, metrics: Mapping[str, str] | None = None
) -> Figure | None:
    """Every run's headline metrics per arm (one colour per attack), ``run`` starred.

    One panel per metric of ``metrics`` (default :data:`HEADLINE`) that the configuration has;
    the x axis holds the arms (key values), the attacks side by side within each. The selected
    run is a red star (a ``Line2D`` with gid ``"selected"``) at its row's value.

    Returns:
        The figure, or None when the configuration has none of the metrics.
    """
    metrics = HEADLINE if metrics is None else metrics
    df = conf.results
    present = [
        m for m in metrics if m in df and pd.to_numeric(df[m], errors="coerce").notna().any()
    ]
    if not present:
        return None
    arms = _arms(conf)
    position = {arm: i for i, arm in enumerate(arms)}
    attacks = attack_options(conf)
    width = 0.8 / max(1, len(attacks))
    offset = {a: (i - (len(attacks) - 1) / 2) * width for i, a in enumerate(attacks)}
    cmap = "tab10" if len(attacks) <= 10 else "tab20"
    palette = matplotlib.colormaps[cmap]
    colors = {a: palette(i % palette.N) for i, a in enumerate(attacks)}

    def x_of(frame: pd.DataFrame) -> np.ndarray:
        keys = [tuple(_python(v) for v in r) for r in frame[list(conf.key)].itertuples(index=False)]
        return np.array([position[k] if conf.key else 0 for k in keys], dtype=float)

    fig = Figure(figsize=(max(6.0, 0.7 * len(arms) + 3.5), 2.6 * len(present) + 0.6))
    axes = fig.subplots(len(present), 1, squeeze=False, sharex=True)[:, 0]
    chosen = run_rows(conf, run) if run is not None else df.iloc[0:0]
    for ax, metric in zip(axes, present, strict=True):
        values = pd.to_numeric(df[metric], errors="coerce")
        for attack in attacks:
            mine = (df["attack"] == attack) & values.notna()
            if mine.any():
                ax.scatter(
                    x_of(df[mine]) + offset[attack],
                    values[mine],
                    s=18,
                    color=colors[attack],
                    alpha=0.75,
                    label=attack,
                )
        picked = pd.to_numeric(chosen[metric], errors="coerce").dropna()
        if len(picked):
            ax.plot(
                x_of(chosen.loc[picked.index]) + offset[run.attack],
                picked.to_numpy(),
                linestyle="none",
                marker="*",
                markersize=16,
                markerfacecolor="none",
                markeredgecolor="red",
                markeredgewidth=1.6,
                gid="selected",
                label="selected run",
            )
        ax.set_ylabel(metrics[metric], fontsize=8)
        if metric.startswith("acc"):
            ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(arms)))
    axes[-1].set_xticklabels(
        [key_label(dict(zip(conf.key, arm, strict=True))) for arm in arms],
        rotation=30 if len(arms) > 4 else 0,
        ha="right" if len(arms) > 4 else "center",
        fontsize=8,
    )
    axes[-1].set_xlabel(", ".join(conf.key) or "(one arm)")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    title = f"{conf.name}: every run (dots), the selected run (red star)"
    if run is not None:
        title += f"\n{run.label()}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _cell(value: Any) -> Any:
    value = _python(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    text = str(value)
    return text if len(text) <= _TEXT_CUT else text[:_TEXT_CUT] + " …"


def metrics_table(conf: Configuration, run: Run) -> pd.DataFrame:
    """The run's row(s) of ``results.csv``, one column per row, empty fields left out.

    Returns:
        Index: the results columns with a value; columns: ``seed <s>`` (``#i`` appended when a
        seed has several rows); cells: values (floats to 4 significant digits, long texts cut).
    """
    rows = run_rows(conf, run).dropna(axis=1, how="all")
    table = rows.T.map(_cell)
    table.columns = [
        f"seed {s}" + (f" #{i}" if (rows["seed"] == s).sum() > 1 else "")
        for i, s in enumerate(rows["seed"])
    ]
    table.index.name = "column"
    return table


@dataclass(frozen=True)
class RunView:
    """What the explorer shows for one selection.

    Attributes:
        run: The selection.
        cls: The private class shown.
        grid: PNG of private images above reconstructions (None: the run saved none).
        notes: Lines saying what is missing and why.
        metrics: :func:`metrics_table` of the run.
        placement: PNG of :func:`plot_placement` (None: no headline metric).
    """

    run: Run
    cls: int | None
    grid: bytes | None
    notes: tuple[str, ...]
    metrics: pd.DataFrame
    placement: bytes | None


def view_run(conf: Configuration, run: Run, cls: int | None, *, dpi: int = 80) -> RunView:
    """Render the three views of ``run`` for private class ``cls`` (None: reconstructions' first)."""
    notes: list[str] = []
    grid = None
    path = reconstruction_path(conf, run)
    if path is None:
        why = ""
        rows = run_rows(conf, run)
        if "unavailable" in rows and rows["unavailable"].notna().any():
            why = f" ({_cell(rows['unavailable'].dropna().iloc[0])})"
        notes.append(
            f"No reconstructions saved for {run.label()}: expected "
            f"`reconstructions/{_tags(run)[0]}.safetensors` in `{display_path(conf.path)}`{why}."
        )
    else:
        images, labels = load_reconstructions(path)
        if cls is None and labels.numel():
            cls = int(labels[0])
        mine = images[labels == cls]
        if len(mine) == 0:
            notes.append(f"{run.label()} reconstructed no image of class {cls}.")
        else:
            n = min(_MAX_IMAGES, max(len(mine), 4))
            private, name, note = private_images(conf, run.key, int(cls), n)
            rows = {} if private is None else {"private (real)": private}
            rows[f"{run.attack} (seed {run.seed})"] = mine[:_MAX_IMAGES]
            if note:
                notes.append(note)
            grid = figure_png(plot_run_grid(rows, title=f"{conf.name}: class {name}"), dpi)
    placement = plot_placement(conf, run)
    return RunView(
        run=run,
        cls=cls,
        grid=grid,
        notes=tuple(notes),
        metrics=metrics_table(conf, run),
        placement=None if placement is None else figure_png(placement, dpi),
    )


# ----------------------------------------------------------------------------- the widgets


class Explorer:
    """The interactive browser: dropdowns, then the grid, the metrics and the placement figure.

    ``box`` is the widget to display. Changing a control refreshes the options of the controls
    after it (configuration per study, key values and seeds per attack, ...) and renders once.
    Rendering errors are shown in the note line (and logged) instead of vanishing into the
    frontend's log.

    Args:
        out_root: As in :func:`resolve_out_root`.
        study: Preselect this study ("" for the first).
        config: Preselect this configuration ("" for the first).
        dpi: Resolution of the figures.

    Raises:
        ValueError: ``study`` or ``config`` is not a finished configuration under ``out_root``.
    """

    def __init__(
        self, out_root: str | Path = "", *, study: str = "", config: str = "", dpi: int = 80
    ) -> None:
        import ipywidgets as widgets

        self._w = widgets
        self.out_root = resolve_out_root(out_root)
        self.catalog = list_configurations(self.out_root)
        self.dpi = dpi
        self.conf: Configuration | None = None
        self.view: RunView | None = None
        self._busy = False
        self._configs: dict[tuple[str, str], Configuration] = {}
        wide = widgets.Layout(width="max-content")
        style = {"description_width": "initial"}

        def dropdown(description: str) -> widgets.Dropdown:
            return widgets.Dropdown(description=description, layout=wide, style=style)

        self.study = dropdown("study")
        self.config = dropdown("configuration")
        self.attack = dropdown("attack")
        self.keys: dict[str, widgets.Dropdown] = {}
        self.key_box = widgets.HBox()
        self.cls = dropdown("class")
        self.seed = dropdown("seed")
        self.note = widgets.HTML()
        self.grid = widgets.Image(format="png")
        self.metrics = widgets.HTML()
        self.placement = widgets.Image(format="png")
        self.box = widgets.VBox(
            [
                widgets.HBox([self.study, self.config, self.attack]),
                self.key_box,
                widgets.HBox([self.cls, self.seed]),
                self.note,
                self.grid,
                widgets.HBox([self.metrics, self.placement]),
            ]
        )
        for level, control in enumerate((self.study, self.config, self.attack)):
            control.observe(lambda _, level=level: self._changed(level), names="value")
        self.cls.observe(lambda _: self._changed(4), names="value")
        self.seed.observe(lambda _: self._changed(4), names="value")

        if study and study not in self.catalog:
            raise ValueError(
                f"no finished configuration of study {study!r} under {self.out_root}; "
                f"studies with results: {list(self.catalog)}"
            )
        if not self.catalog:
            self.note.value = (
                f"No finished configuration under <code>{html.escape(str(self.out_root))}</code>: "
                "run <code>mibench run parameters/&lt;study&gt;/&lt;config&gt;.yaml</code> first."
            )
            return
        study = study or next(iter(self.catalog))
        if config and config not in self.catalog[study]:
            raise ValueError(
                f"no finished configuration {config!r} of study {study!r} under {self.out_root}; "
                f"finished: {self.catalog[study]}"
            )
        with self._hold():
            self.study.options = list(self.catalog)
            self.study.value = study
            self._refresh(0)
            if config:
                self.config.value = config
                self._refresh(1)
        self._render_safely()

    # -- state ---------------------------------------------------------------------------------
    @contextmanager
    def _hold(self) -> Iterator[None]:
        """Option and value changes inside do not trigger renders."""
        busy, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = busy

    @staticmethod
    def _set(control: Any, options: Sequence[Any], labels: Sequence[str] | None = None) -> None:
        """New options for ``control``, keeping its value when it is still one of them."""
        previous = control.value
        pairs = list(zip(labels or [key_label({"": v}) for v in options], options, strict=True))
        control.options = pairs
        values = [v for _, v in pairs]
        control.value = previous if previous in values else (values[0] if values else None)

    def _configuration(self, study: str, config: str) -> Configuration:
        if (study, config) not in self._configs:
            self._configs[study, config] = open_configuration(self.out_root, study, config)
        return self._configs[study, config]

    def _refresh(self, level: int) -> None:
        """Recompute the options of every control after ``level``.

        Levels: 0 study, 1 configuration, 2 attack, 3 key columns, 4 class and seed.
        """
        if level < 1:
            self._set(self.config, self.catalog[self.study.value])
        if level < 2:
            self.conf = self._configuration(self.study.value, self.config.value)
            for control in self.keys.values():
                control.close()
            self.keys = {}
            for col in self.conf.key:
                control = self._w.Dropdown(
                    description=col,
                    layout=self._w.Layout(width="max-content"),
                    style={"description_width": "initial"},
                )
                control.observe(lambda _: self._changed(3), names="value")
                self.keys[col] = control
            self.key_box.children = list(self.keys.values())
            self._set(self.attack, attack_options(self.conf))
            self._set(self.cls, config_classes(self.conf))
        if level < 4:
            assert self.conf is not None
            chosen = {c: control.value for c, control in self.keys.items()}
            for col, control in self.keys.items():
                # one column at a time: each column's options follow the choices before it
                self._set(control, key_options(self.conf, self.attack.value, chosen)[col])
                chosen[col] = control.value
            self._set(self.seed, seed_options(self.conf, self.attack.value, self.selected_key))

    @property
    def selected_key(self) -> dict[str, Any]:
        """The arm key columns' chosen values."""
        return {col: control.value for col, control in self.keys.items()}

    @property
    def selected(self) -> Run | None:
        """The selected run (None before any configuration is open or when it has no rows)."""
        if self.conf is None or self.attack.value is None or self.seed.value is None:
            return None
        return Run(self.selected_key, self.attack.value, int(self.seed.value))

    def _changed(self, level: int) -> None:
        if self._busy:
            return
        with self._hold():
            self._refresh(level)
        self._render_safely()

    # -- rendering -----------------------------------------------------------------------------
    def _render_safely(self) -> None:
        try:
            self.render()
        except Exception as err:  # shown under the controls, and logged with its traceback
            logger.exception("explorer: rendering %s failed", self.selected)
            self.note.value = f"<b>Error</b> rendering this selection: {type(err).__name__}: {err}"

    def render(self) -> None:
        """Draw the selected run into the grid, metrics and placement widgets."""
        run = self.selected
        if self.conf is None or run is None:
            return
        view = view_run(self.conf, run, self.cls.value, dpi=self.dpi)
        self.view = view
        self.note.value = "<br>".join(html.escape(n) for n in view.notes)
        self.grid.value = view.grid or b""
        self.grid.layout.display = None if view.grid else "none"
        self.metrics.value = view.metrics.to_html()
        self.placement.value = view.placement or b""
        self.placement.layout.display = None if view.placement else "none"


# ----------------------------------------------------------------------------- static pages


def static_overview(
    out_root: str | Path = "",
    *,
    study: str = "",
    config: str = "",
    max_configs: int = 12,
    dpi: int = 72,
) -> list[str]:
    """Display one default selection of each finished configuration as plain outputs.

    For each configuration (only ``study`` and/or ``config`` when given, at most ``max_configs``):
    a heading, the grid of :func:`default_run` (first attack, first key values, first seed) for
    its first class, the metrics table and the placement figure, as Markdown, PNG and HTML
    outputs (no widget JavaScript: what papermill and the HTML report can show).

    Returns:
        The ``study/config`` names shown.

    Raises:
        ValueError: ``study``/``config`` names nothing finished, or ``max_configs`` < 1.
    """
    from IPython.display import HTML, Image, Markdown, display

    if max_configs < 1:
        raise ValueError(f"max_configs must be at least 1, got {max_configs}")
    root = resolve_out_root(out_root)
    catalog = list_configurations(root)
    chosen = [
        (s, c)
        for s, configs in catalog.items()
        for c in configs
        if (not study or s == study) and (not config or c == config)
    ]
    if not chosen:
        if study or config:
            raise ValueError(
                f"no finished configuration {study or '*'}/{config or '*'} under {root}; "
                f"finished: {[f'{s}/{c}' for s, cs in catalog.items() for c in cs]}"
            )
        display(Markdown(f"No finished configuration under `{root}` yet."))
        return []
    shown = []
    for s, c in chosen[:max_configs]:
        conf = open_configuration(root, s, c)
        run = default_run(conf)
        display(Markdown(f"## {conf.name}"))
        if run is None:
            display(Markdown("`results.csv` has no rows yet."))
            continue
        classes = config_classes(conf)
        view = view_run(conf, run, classes[0] if classes else None, dpi=dpi)
        display(
            Markdown(
                f"Selected run: **{run.label()}**, class {view.cls} (first attack, first "
                f"class, first seed; {len(conf.results)} rows in `results.csv`). Open this notebook "
                "in JupyterLab to browse every run."
            )
        )
        for note in view.notes:
            display(Markdown(f"*{note}*"))
        if view.grid is not None:
            display(Image(data=view.grid, format="png"))
        display(HTML(view.metrics.to_html()))
        if view.placement is not None:
            display(Image(data=view.placement, format="png"))
        shown.append(conf.name)
    if len(chosen) > max_configs:
        rest = [f"{s}/{c}" for s, c in chosen[max_configs:]]
        display(Markdown(f"{len(rest)} more configuration(s) not shown (max_configs): {rest}"))
    return shown


def explore(
    out_root: str | Path = "",
    *,
    study: str = "",
    config: str = "",
    max_configs: int = 12,
    mode: str = "auto",
) -> Explorer | None:
    """What the explorer notebook runs: the widgets in JupyterLab, static pages when headless.

    Args:
        out_root: As in :func:`resolve_out_root`.
        study: Only this study (static) or preselect it (widgets); "" for all.
        config: Likewise for the configuration.
        max_configs: At most this many configurations on the static pages.
        mode: ``"auto"`` (static when :func:`~mibench_lib.progress.headless`, else widgets),
            ``"widgets"`` or ``"static"``.

    Returns:
        The displayed :class:`Explorer`, or None for static pages.
    """
    if mode not in ("auto", "widgets", "static"):
        raise ValueError(f"mode must be 'auto', 'widgets' or 'static', got {mode!r}")
    if mode == "static" or (mode == "auto" and headless()):
        static_overview(out_root, study=study, config=config, max_configs=max_configs)
        return None
    from IPython.display import display

    explorer = Explorer(out_root, study=study, config=config)
    display(explorer.box)
    return explorer


def execute_explorer(
    out_root: str | Path,
    output_path: str | Path,
    *,
    study: str = "",
    config: str = "",
    max_configs: int = 12,
    kernel_name: str = "python3",
    timeout_s: int | None = 600,
) -> Path:
    """Run ``notebooks/explore.ipynb`` headless with papermill: the static pages of ``out_root``.

    The kernel inherits ``MIBENCH_HEADLESS=1`` (as in :func:`~mibench_lib.studies.runner.run_config`)
    and runs in the repository root.

    Args:
        out_root: The outputs folder to show.
        output_path: Where the executed notebook is written.
        study, config, max_configs: As in :func:`static_overview`.
        kernel_name: Jupyter kernel to execute with.
        timeout_s: Limit per cell in seconds; None for none.

    Returns:
        ``output_path`` as an absolute path.

    Raises:
        papermill.PapermillExecutionError: A cell raised (the executed notebook shows where).
    """
    import papermill

    root = resolve_out_root(out_root)
    output = Path(output_path).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"  # inherited by the kernel: the static pages
    try:
        papermill.execute_notebook(
            str(EXPLORER_NOTEBOOK),
            str(output),
            parameters={
                "out_root": str(root),
                "study": study,
                "config": config,
                "max_configs": max_configs,
            },
            kernel_name=kernel_name,
            cwd=str(REPO_ROOT),
            progress_bar=False,
            execution_timeout=timeout_s,
        )
    finally:
        if previous is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = previous
    return output
