"""Put the results of several output folders side by side: two machines, two versions of the code.

Every configuration run leaves ``outputs/<study>/<config>/`` (see :mod:`mibench_lib.studies.runner`)
with a tidy ``results.csv``, ``parameters.yaml``, ``environment.json`` and, on success,
``_complete.json``. :func:`gather_results` stacks the ``results.csv`` of several such folders and
adds who produced each row:

- ``source``: a short label, unique among the folders: ``<study>/<config>``, and where two folders
  share that, the label gets the first of these that tells them apart: the out-root's name
  (``outputs-gpu``, ``_previous``), the git commit, the device, the folder's own name, a longer
  piece of the out-root's path;
- ``study``, ``config``: from ``parameters.yaml`` (else the folder names);
- ``commit``: the short git hash from ``environment.json``, with ``-dirty`` when the working tree
  had uncommitted changes;
- ``device``: ``cpu``, or the CUDA device's name;
- ``complete``: whether the run finished (``_complete.json`` exists). An unfinished run is kept, with
  an :class:`IncompleteRunWarning` and a note in the table, never silently.

:func:`compare_table` summarises each (source, attack, grid point) with the intervals of
:mod:`mibench_lib.stats` (mean ± std over seeds and the 95 % interval); :func:`plot_compare` draws
the same numbers for one metric, one colour per source. ``mibench compare FOLDER ...`` prints the
table and, with ``--out DIR``, writes ``compare.csv``, ``compare.md`` and ``compare.png``.

Rows are compared where their attack and grid columns match. The grid columns are those of
:data:`GRID_COLUMNS` that any source has (a source without one shows an empty cell there), so a
condition is never averaged together with another one; a source whose rows still repeat a
(attack, grid point, seed) is refused, as its seeds could not be told apart.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mibench_lib.stats import summary_table, tidy_summary
from mibench_lib.studies.params import display_path, safe_load

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "DEFAULT_METRICS",
    "GRID_COLUMNS",
    "SOURCE_COLUMNS",
    "CompareError",
    "IncompleteRunWarning",
    "compare_markdown",
    "compare_notes",
    "compare_table",
    "gather_results",
    "plot_compare",
    "save_compare",
]

RESULTS = "results.csv"
PARAMETERS = "parameters.yaml"
ENVIRONMENT = "environment.json"
MARKER = "_complete.json"  # the runner's completion marker (runner.MARKER; not imported: papermill)

#: Columns :func:`gather_results` puts in front of each folder's rows, in this order.
SOURCE_COLUMNS: tuple[str, ...] = ("source", "study", "config", "commit", "device", "complete")
#: The studies' grid columns: with ``attack`` and ``seed`` they key a row of ``results.csv``
#: (predictive_power: threshold; defenses: defense_label; adversarial_robustness: norm, eps;
#: resolution: resolution). A folder written by the study engine names its own in
#: ``results_key.json``; these are the fallback for older folders.
GRID_COLUMNS: tuple[str, ...] = ("threshold", "defense_label", "norm", "eps", "resolution")
#: Metrics :func:`compare_table` reports when none are named (those the results have).
DEFAULT_METRICS: tuple[str, ...] = ("acc1", "acc5", "delta_eval", "delta_face", "fid_eval")
_WHAT = f"{RESULTS}, {PARAMETERS}, {ENVIRONMENT} and {MARKER}"


class CompareError(ValueError):
    """Folders or columns that cannot be compared; the one-line message names the culprit."""


class IncompleteRunWarning(UserWarning):
    """A folder without ``_complete.json`` (a run that failed, stopped or is still running)."""


# ----------------------------------------------------------------------------- reading one folder


def _results_folder(folder: str | Path) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"no folder {display_path(path)} to compare")
    if (path / RESULTS).is_file():
        return path
    configs = sorted(p.name for p in path.iterdir() if (p / RESULTS).is_file())
    hint = (
        f"; it holds the configurations {', '.join(configs)}: name one, e.g. "
        f"{display_path(path / configs[0])}"
        if configs
        else ""
    )
    raise FileNotFoundError(
        f"{display_path(path)} holds no {RESULTS}: give the output folder of one configuration "
        f"run, outputs/<study>/<config>, which holds {_WHAT}{hint}"
    )


def _read_parameters(folder: Path) -> dict[str, Any]:
    path = folder / PARAMETERS
    if not path.is_file():
        return {}
    try:
        params = safe_load(path.read_text(encoding="utf-8"))
    except Exception as err:  # yaml.YAMLError, DuplicateKeyError, ValueError: all unreadable
        raise CompareError(f"{display_path(path)} is not readable YAML: {_one_line(err)}") from err
    return params if isinstance(params, dict) else {}


def _read_environment(folder: Path) -> dict[str, Any]:
    path = folder / ENVIRONMENT
    if not path.is_file():
        return {}
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CompareError(f"{display_path(path)} is not valid JSON: {err}") from err
    return env if isinstance(env, dict) else {}


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _commit(env: dict[str, Any]) -> str | None:
    """``abc1234`` or ``abc1234-dirty``; None when the run was not in a git checkout."""
    commit = env.get("git_commit")
    if not commit:
        return None
    return str(commit)[:7] + ("-dirty" if env.get("git_dirty") else "")


def _device(params: dict[str, Any], env: dict[str, Any]) -> str | None:
    """What the run computed on: ``cpu``, the CUDA device's name, or None when unknown.

    The parameter ``device`` says what was asked (``auto`` takes CUDA when there is one);
    ``environment.json`` says whether CUDA was there and what it was called.
    """
    asked = str(params.get("device", "auto"))
    if asked.startswith("cuda"):
        return str(env.get("cuda_device") or asked)
    if asked == "auto":
        if "cuda_available" not in env:
            return None
        return str(env.get("cuda_device") or "cuda") if env["cuda_available"] else "cpu"
    return asked


def _read_results(folder: Path) -> pd.DataFrame:
    path = folder / RESULTS
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError as err:
        raise CompareError(f"{display_path(path)} is empty: the run recorded no row yet") from err
    except pd.errors.ParserError as err:
        raise CompareError(f"{display_path(path)} is not a readable CSV: {_one_line(err)}") from err
    if df.empty:
        raise CompareError(f"{display_path(path)} has a header but no row: nothing to compare")
    return df


def _out_root(folder: Path, study: str) -> Path:
    """The out-root of ``<root>/<study>/<config>``; the parent folder for any other layout."""
    folder = folder.resolve()
    return folder.parent.parent if folder.parent.name == study else folder.parent


# ----------------------------------------------------------------------------- labels


def _tail(path: Path, parts: int) -> str:
    return "/".join(path.parts[-parts:])


def _disambiguate(
    bases: list[str], folders: list[Path], roots: list[Path], info: list[dict[str, Any]]
) -> list[str]:
    """Unique labels: a base shared by several folders gets what tells those folders apart."""
    labels = list(bases)
    for base in dict.fromkeys(bases):
        idx = [i for i, b in enumerate(bases) if b == base]
        if len(idx) < 2:
            continue
        tellers = [
            [roots[i].name for i in idx],
            [info[i]["commit"] for i in idx],
            [info[i]["device"] for i in idx],
            [folders[i].resolve().name for i in idx],  # a renamed copy of a config folder
        ]
        depth = max(len(roots[i].parts) for i in idx)
        tellers += [[_tail(roots[i], k) for i in idx] for k in range(2, depth + 1)]
        for values in tellers:
            if all(v is not None for v in values) and len(set(values)) == len(values):
                for i, value in zip(idx, values, strict=True):
                    labels[i] = f"{base} ({value})"
                break
        else:  # e.g. <root>/x/<config> and <root>/y/<config>, both saying study x
            for n, i in enumerate(idx, start=1):
                labels[i] = f"{base} ({n})"
    return labels


# ----------------------------------------------------------------------------- gathering


def gather_results(folders: Sequence[str | Path]) -> pd.DataFrame:
    """Stack the ``results.csv`` of several output folders, with columns naming each row's source.

    Args:
        folders: Output folders ``<out_root>/<study>/<config>`` (or any folders holding a
            ``results.csv``), in the order the comparison should show them. ``parameters.yaml``
            and ``environment.json`` are read when present; without them ``study`` and ``config``
            come from the folder names and ``commit`` and ``device`` are missing.

    Returns:
        All rows, the :data:`SOURCE_COLUMNS` (``source``, ``study``, ``config``, ``commit``,
        ``device``, ``complete``) first, then each results file's columns (a column some files
        lack is empty in their rows). ``source`` is unique per folder (see the module docstring).

    Raises:
        FileNotFoundError: A folder does not exist or holds no ``results.csv`` (the message
            names it and says what an output folder holds).
        CompareError: No folder was given, a folder was given twice, a file is unreadable or
            empty, or ``results.csv`` already has a source column with other values.

    Warns:
        IncompleteRunWarning: A folder has no ``_complete.json``; its rows are kept with
            ``complete`` False.

    Example:
        >>> import tempfile
        >>> from mibench_lib.studies.records import append_rows
        >>> out = Path(tempfile.mkdtemp()) / "outputs" / "study" / "default"
        >>> _ = append_rows(out, [{"attack": "gmi", "seed": 0, "acc1": 0.5}])
        >>> _ = (out / "_complete.json").write_text("{}")
        >>> gather_results([out])[["source", "attack", "acc1", "complete"]].to_dict("records")
        [{'source': 'study/default', 'attack': 'gmi', 'acc1': 0.5, 'complete': True}]
    """
    if not folders:
        raise CompareError("no output folder given to compare")
    paths = [_results_folder(f) for f in folders]
    seen: dict[Path, Path] = {}
    for path in paths:
        if (key := path.resolve()) in seen:
            raise CompareError(
                f"{display_path(path)} is given twice (as {display_path(seen[key])} too)"
            )
        seen[key] = path

    frames, info, roots = [], [], []
    for path in paths:
        params, env = _read_parameters(path), _read_environment(path)
        study = str(params.get("study") or path.resolve().parent.name)
        config = str(params.get("config") or path.resolve().name)
        complete = (path / MARKER).is_file()
        if not complete:
            warnings.warn(
                f"{display_path(path)} has no {MARKER}: the run did not finish (failed, stopped or "
                "still running); its rows are compared with complete=False",
                IncompleteRunWarning,
                stacklevel=2,
            )
        frames.append(_read_results(path))
        info.append(
            {
                "study": study,
                "config": config,
                "commit": _commit(env),
                "device": _device(params, env),
                "complete": complete,
            }
        )
        roots.append(_out_root(path, study))

    labels = _disambiguate([f"{i['study']}/{i['config']}" for i in info], paths, roots, info)
    tagged = []
    for path, df, label, meta in zip(paths, frames, labels, info, strict=True):
        added = {"source": label, **meta}
        for col, value in added.items():
            if col in df.columns and not (df[col].astype(str) == str(value)).all():
                raise CompareError(
                    f"{display_path(path / RESULTS)} has its own column {col!r}, which compare "
                    f"adds to name the source; rename it there"
                )
        rest = df.drop(columns=[c for c in SOURCE_COLUMNS if c in df.columns])
        head = pd.DataFrame({col: [added[col]] * len(df) for col in SOURCE_COLUMNS})
        tagged.append(pd.concat([head, rest.reset_index(drop=True)], axis=1))
    out = pd.concat(tagged, ignore_index=True, sort=False)
    out["complete"] = out["complete"].astype(bool)
    grid = [c for path in paths for c in _key_columns(path)]
    out.attrs["grid_columns"] = list(dict.fromkeys([*grid, *GRID_COLUMNS]))
    return out


def _key_columns(path: Path) -> list[str]:
    """The grid columns a study engine run recorded in ``results_key.json`` (none if absent)."""
    import json

    file = path / "results_key.json"
    if not file.is_file():
        return []
    try:
        key = json.loads(file.read_text(encoding="utf-8"))["key"]
    except (ValueError, KeyError, TypeError) as err:
        raise CompareError(f"{display_path(file)} is not a results key file: {err}") from err
    return [str(c) for c in key if c not in ("attack", "seed")]


# ----------------------------------------------------------------------------- tables


def _check_gathered(df: pd.DataFrame) -> None:
    missing = [c for c in ("source", "attack") if c not in df.columns]
    if missing:
        raise CompareError(
            f"no column {missing}: pass the output of gather_results; the columns are "
            f"{list(df.columns)}"
        )


def _condition_columns(df: pd.DataFrame, by: Sequence[str] | None) -> list[str]:
    """``by``, checked; None: ``attack`` and the grid columns any source has."""
    if by is None:
        grid = df.attrs.get("grid_columns", GRID_COLUMNS)
        return ["attack", *[c for c in grid if c in df.columns and df[c].notna().any()]]
    by = list(dict.fromkeys(by))
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise CompareError(f"no column {missing} to group by; the columns are {list(df.columns)}")
    if "source" in by:
        raise CompareError("by names 'source'; the table is always split by source")
    return by


def _metrics(df: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        chosen = [m for m in DEFAULT_METRICS if m in df.columns and df[m].notna().any()]
        if not chosen:
            raise CompareError(
                f"none of the default metrics {list(DEFAULT_METRICS)} is in the results; name "
                f"some of the columns {list(df.columns)}"
            )
        return chosen
    chosen = list(dict.fromkeys(metrics))
    if not chosen:
        raise CompareError("no metric given")
    missing = [m for m in chosen if m not in df.columns]
    if missing:
        raise CompareError(f"no metric column {missing}; the columns are {list(df.columns)}")
    not_numeric = [m for m in chosen if not pd.api.types.is_numeric_dtype(df[m])]
    if not_numeric:
        raise CompareError(f"metric columns must be numeric, got non-numeric {not_numeric}")
    return chosen


def _check_seeds_unique(df: pd.DataFrame, by: list[str]) -> None:
    """Each (source, condition, seed) must be one row: a seed is one draw of the intervals."""
    if "seed" not in df.columns:
        return
    key = ["source", *by, "seed"]
    repeated = df[df.duplicated(key, keep=False)]
    if repeated.empty:
        return
    first = repeated.iloc[0]
    # Candidates: the known grid columns and any text column (labels, names), where they vary
    # inside a repeated key; metric values vary too but never name a condition.
    candidates = [
        c
        for c in repeated.columns
        if c not in (*key, *SOURCE_COLUMNS)
        and (
            c in df.attrs.get("grid_columns", GRID_COLUMNS)
            or not pd.api.types.is_numeric_dtype(repeated[c])
        )
    ]
    grouped = repeated.groupby(key, dropna=False)
    varying = [c for c in candidates if grouped[c].nunique(dropna=False).gt(1).any()]
    shared = ", ".join(f"{c}={first[c]}" for c in key[1:])
    raise CompareError(
        f"{first['source']}: several rows share {shared}; group by the column that tells them "
        f"apart (by=[...], e.g. one of {varying})"
    )


def compare_table(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    by: Sequence[str] | None = None,
    *,
    digits: int = 2,
) -> pd.DataFrame:
    """Mean ± std and 95 % interval of each metric per (source, attack, grid point).

    Uses :func:`mibench_lib.stats.summary_table`: accuracies get the two-stage bootstrap over
    seeds and entries (``n_images``), other metrics a t-interval over seeds.

    Args:
        df: Rows of :func:`gather_results`.
        metrics: Metric columns; None: those of :data:`DEFAULT_METRICS` the results have.
        by: Columns naming a condition besides ``source``; None: ``attack`` and the
            :data:`GRID_COLUMNS` any source has.
        digits: Decimal places of the numbers.

    Returns:
        One row per (condition, source) that has rows, sorted by condition and then by the
        sources' order in ``df`` (so the sources of one condition sit side by side): ``source``,
        the ``by`` columns, one ``"mean ± std [lo, hi]"`` column per metric, ``n`` (seeds), and
        ``complete`` when some source did not finish. ``table.attrs["notes"]`` holds
        :func:`compare_notes`.

    Raises:
        CompareError: A metric or ``by`` column is missing or a metric is not numeric, or a
            source repeats a (condition, seed) (the message names the column to add to ``by``).
    """
    _check_gathered(df)
    chosen = _metrics(df, metrics)
    by = _condition_columns(df, by)
    _check_seeds_unique(df, by)
    table = summary_table(df, [*by, "source"], chosen, digits=digits)
    order = {s: i for i, s in enumerate(dict.fromkeys(df["source"]))}
    table = table.sort_values(
        [*by, "source"],
        key=lambda col: col.map(order) if col.name == "source" else col,
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)
    columns = ["source", *by, *chosen, "n"]
    if "complete" in df.columns and not df["complete"].all():
        done = df.groupby("source", sort=False)["complete"].all()
        table["complete"] = table["source"].map(done).astype(bool)
        columns.append("complete")
    table = table[columns]
    table.attrs["notes"] = compare_notes(df)
    return table


def compare_notes(df: pd.DataFrame) -> list[str]:
    """What a reader of the comparison must know: unfinished runs, mixed studies, unknown origins.

    Args:
        df: Rows of :func:`gather_results`.

    Returns:
        One sentence per finding; empty when the sources are complete runs of one study with a
        recorded commit.
    """
    notes = []
    sources = df.drop_duplicates("source")
    if "complete" in df.columns:
        unfinished = sources.loc[~sources["complete"].astype(bool), "source"].tolist()
        if unfinished:
            notes.append(
                f"incomplete run (no {MARKER}; failed, stopped or still running): "
                f"{', '.join(unfinished)}"
            )
    if "study" in df.columns and sources["study"].nunique() > 1:
        studies = ", ".join(dict.fromkeys(sources["study"]))
        notes.append(
            f"the sources come from different studies ({studies}): their rows line up only "
            "where attack and grid columns match"
        )
    if "commit" in df.columns:
        unknown = sources.loc[sources["commit"].isna(), "source"].tolist()
        if unknown:
            notes.append(f"no git commit recorded ({ENVIRONMENT} missing?): {', '.join(unknown)}")
    return notes


def compare_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, followed by its notes (``table.attrs["notes"]``) as a list.

    A grid column a source does not have is an empty cell.
    """
    text = table.astype(object).where(table.notna(), None).to_markdown(index=False, missingval="")
    notes = table.attrs.get("notes") or []
    if notes:
        text += "\n\nNotes:\n" + "\n".join(f"- {note}" for note in notes)
    return text


# ----------------------------------------------------------------------------- figure


def _key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A condition as a dict key: NaN (a grid column a source lacks) never equals itself."""
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)


def _group_label(key: tuple[Any, ...], by: list[str]) -> str:
    parts = []
    for col, value in zip(by, key, strict=True):
        if value is None:
            continue
        parts.append(str(value) if col == "attack" else f"{col}={value}")
    return "\n".join(parts) or "-"


def plot_compare(
    df: pd.DataFrame,
    metric: str = "acc1",
    *,
    by: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Mean of ``metric`` per condition, one colour per source, with 95 % interval error bars.

    Conditions (an attack, and its grid point when the study has grid columns) sit along x; the
    sources' points of one condition are set side by side around it. Intervals are those of
    :func:`compare_table`; accuracy axes span [0, 1].

    Args:
        df: Rows of :func:`gather_results`.
        metric: A numeric column.
        by: Condition columns, as in :func:`compare_table`.
        ax: Axes to draw on; None makes a figure sized to the number of conditions.

    Returns:
        The Axes: one error-bar series (``ax.containers``) per source, labelled with it.

    Raises:
        CompareError: As :func:`compare_table`.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    from mibench_lib.plots import _accuracy_axis, _half_widths

    _check_gathered(df)
    (metric,) = _metrics(df, [metric])
    by = _condition_columns(df, by)
    _check_seeds_unique(df, by)
    tidy = tidy_summary(df, [*by, "source"], [metric])
    keys = list(dict.fromkeys(_key(k) for k in tidy[by].itertuples(index=False, name=None)))
    position = {k: i for i, k in enumerate(keys)}
    sources = list(dict.fromkeys(df["source"]))
    if ax is None:
        ax = plt.subplots(figsize=(max(5.5, 0.25 + 0.55 * len(keys) * max(1, len(sources))), 4))[1]
    palette = sns.color_palette(n_colors=max(1, len(sources)))
    markers = "osD^vP*X"
    width = 0.7 / max(1, len(sources))  # the points of one condition span 70 % of a slot
    # Points of one condition are centred on its tick, counting only the sources that have it.
    present: dict[tuple[Any, ...], list[str]] = {}
    for row in tidy[[*by, "source"]].itertuples(index=False, name=None):
        present.setdefault(_key(row[:-1]), []).append(row[-1])
    x_of = {
        (cond, source): position[cond] + (j - (len(names) - 1) / 2) * width
        for cond, names in present.items()
        for j, source in enumerate(sorted(names, key=sources.index))
    }
    for i, source in enumerate(sources):
        part = tidy[tidy["source"] == source]
        xs = [x_of[_key(k), source] for k in part[by].itertuples(index=False, name=None)]
        ax.errorbar(
            xs,
            part["mean"].to_numpy(dtype=float),
            yerr=np.nan_to_num(_half_widths(part)),
            label=str(source),
            color=palette[i % len(palette)],
            marker=markers[i % len(markers)],
            linestyle="none",
            capsize=3,
        )
    ax.set_xticks(range(len(keys)), [_group_label(k, by) for k in keys])
    if len(keys) > 4:
        ax.tick_params(axis="x", labelrotation=30)
    _accuracy_axis(ax, metric)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean and 95 % interval per source")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return ax


# ----------------------------------------------------------------------------- files


def save_compare(
    df: pd.DataFrame,
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    plot_metric: str | None = None,
) -> dict[str, Path]:
    """Write ``compare.csv``, ``compare.md`` (table and notes) and ``compare.png`` to ``out_dir``.

    Args:
        df: Rows of :func:`gather_results`.
        out_dir: Folder to write to (created if missing).
        metrics: As in :func:`compare_table`.
        plot_metric: Metric of the figure; None: the table's first metric.

    Returns:
        ``{"csv": path, "md": path, "png": path}``.

    Raises:
        CompareError: As :func:`compare_table`, or ``out_dir`` is a file.
    """
    import matplotlib.pyplot as plt

    table = compare_table(df, metrics)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise CompareError(f"--out {display_path(folder)} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"compare.{ext}" for ext in ("csv", "md", "png")}
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(compare_markdown(table) + "\n", encoding="utf-8")
    metric = plot_metric or _metrics(df, metrics)[0]
    ax = plot_compare(df, metric)
    try:
        ax.figure.savefig(paths["png"], dpi=150, bbox_inches="tight")
    finally:
        plt.close(ax.figure)
    return paths
