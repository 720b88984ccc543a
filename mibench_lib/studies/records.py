"""Write a study's results into its output folder: tidy CSV rows, figures and tables.

Notebooks call these helpers with the ``out_dir`` the runner injects. Results are appended as tidy
rows (one per attack x checkpoint x seed, say) as soon as they exist, so a run that stops halfway
keeps what it finished; on the next run :func:`completed_keys` tells the notebook which rows to
skip. Figures and tables carry fixed name prefixes (``fig_``, ``table_``) so summaries find them.

A row is one line ending in a newline. A run killed while writing (power loss, a full disk) can
leave a torn last line: cut short, without its newline or with too few fields. Both
:func:`append_rows` and :func:`completed_keys` drop such a line first (the file is rewritten
atomically without it and a :class:`TornRowWarning` says so), so its key counts as not done and the
row is computed again, once. A malformed line anywhere else was not written by these helpers and
is an error naming the file and line.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "TornRowWarning",
    "append_rows",
    "completed_keys",
    "mean_std_table",
    "repair_torn_tail",
    "save_figure",
    "save_table",
]


class TornRowWarning(RuntimeWarning):
    """A torn last line of a results file was dropped; its row will be computed again."""


def _check_name(name: str, what: str) -> None:
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ValueError(f"{what} must be a plain file-name part, got {name!r}")


def _replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(text.encode("utf-8", errors="surrogateescape"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _records(lines: list[str]) -> list[tuple[int, int, list[str] | None]]:
    """(first line, end line, fields or None when unparsable) of each CSV record of ``lines``."""
    out: list[tuple[int, int, list[str] | None]] = []
    reader = csv.reader(lines, strict=True)
    start = 0
    while start < len(lines):
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:  # e.g. a quoted field cut short by the end of the file
            out.append((start, len(lines), None))
            break
        out.append((start, reader.line_num, fields))
        start = reader.line_num
    return out


def repair_torn_tail(path: str | Path) -> int:
    """Drop a torn last line of the CSV file ``path``; return how many lines were dropped.

    The last record is torn when the file does not end with a newline, or when it does not have
    as many fields as the header. The file is then rewritten atomically without it (a header
    that is itself torn leaves an empty file) and a :class:`TornRowWarning` names the file and the
    line. Blank trailing lines are left alone.

    Raises:
        ValueError: A line other than the last has the wrong number of fields (the file was not
            written by :func:`append_rows`; the message names the file and the line).

    Example:
        >>> import tempfile, warnings
        >>> from pathlib import Path
        >>> f = Path(tempfile.mkdtemp()) / "results.csv"
        >>> _ = f.write_text("attack,seed,acc\\ngmi,0,0.5\\ngmi,1,0.")
        >>> with warnings.catch_warnings(record=True):
        ...     repair_torn_tail(f)
        1
        >>> f.read_text()
        'attack,seed,acc\\ngmi,0,0.5\\n'
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return 0
    # A write cut inside a multi-byte character still reads; only the kept lines are written back.
    text = p.read_bytes().decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    # "a\nb\n" splits into ["a", "b", ""]: give each line back its newline, the last has none.
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    records = _records(lines)
    if not records:
        return 0
    width = len(records[0][2] or [])
    cut = not lines[-1].endswith("\n")  # the last record ran into the end of the file
    torn_from: int | None = None
    for i, (first, _, fields) in enumerate(records):
        last = i == len(records) - 1
        if fields == []:
            continue  # a blank line (pandas skips it)
        if fields is None or (last and cut) or len(fields) != width:
            if not last:
                raise ValueError(
                    f"{p}: line {first + 1} has {len(fields or [])} fields where the header has "
                    f"{width}; this file was not written by append_rows: fix or remove that line"
                )
            torn_from = first
    if torn_from is None:
        return 0
    dropped = "".join(lines[torn_from:])
    _replace_atomically(p, "".join(lines[:torn_from]))
    shown = dropped if len(dropped) <= 80 else dropped[:77] + "..."
    warnings.warn(
        f"{p}: dropped the torn line {torn_from + 1} ({shown!r}) left by an interrupted write; "
        "its row will be computed again",
        TornRowWarning,
        stacklevel=3,
    )
    return len(lines) - torn_from


def _read_header(path: Path) -> list[str] | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), None)


def append_rows(
    out_dir: str | Path,
    rows: Iterable[Mapping[str, Any]],
    *,
    filename: str = "results.csv",
) -> Path:
    """Append tidy rows to ``<out_dir>/<filename>``, writing the header when the file is new.

    Columns are the union of all rows' keys, in order of first appearance: a row without some
    column leaves that cell empty, and a row bringing a new column rewrites the file once with the
    column added (empty in the earlier rows). Rows are flushed to disk before returning, so an
    interrupted run keeps them; a torn last line left by an earlier interrupted write is dropped
    first (see :func:`repair_torn_tail`).

    Args:
        out_dir: The run's output folder (created if missing).
        rows: Mappings from column name to a scalar value.
        filename: CSV file name inside ``out_dir``.

    Returns:
        The CSV path.

    Raises:
        ValueError: ``filename`` is not a plain name, or a column name is not a non-empty string.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = append_rows(d, [{"attack": "gmi", "seed": 0, "acc": 0.5}])
        >>> _ = append_rows(d, [{"attack": "gmi", "seed": 1, "acc": 0.7}])
        >>> sorted(completed_keys(d, ["attack", "seed"]))
        [('gmi', 0), ('gmi', 1)]
    """
    _check_name(filename, "filename")
    rows = [dict(r) for r in rows]
    folder = Path(out_dir)
    path = folder / filename
    if not rows:
        return path
    repair_torn_tail(path)  # a row torn by an interrupted write must not glue onto the next one
    header = _read_header(path) or []
    columns = list(header)
    for row in rows:
        for key in row:
            if not isinstance(key, str) or not key:
                raise ValueError(f"column names must be non-empty strings, got {key!r}")
            if key not in columns:
                columns.append(key)
    folder.mkdir(parents=True, exist_ok=True)
    if header and columns != header:
        # A new column: rewrite the file once so that every line has every column.
        with path.open(newline="", encoding="utf-8") as f:
            old = list(csv.DictReader(f))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(old)
        _replace_atomically(path, buffer.getvalue())
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        if not header:
            writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    return path


def completed_keys(
    out_dir: str | Path,
    key_columns: Sequence[str],
    *,
    filename: str = "results.csv",
) -> set[tuple[Any, ...]]:
    """The key tuples already present in ``<out_dir>/<filename>``, for resuming a run.

    Values come back as pandas parses them (ints, floats, bools and strings as Python objects),
    so a notebook compares them with the keys of the rows it is about to compute, e.g.
    ``if (attack, step, seed) in done: continue``. A torn last line is dropped first (see
    :func:`repair_torn_tail`), so its row counts as not done.

    Args:
        out_dir: The run's output folder.
        key_columns: Columns that identify a row, e.g. ``["attack", "checkpoint", "seed"]``.
        filename: CSV file name inside ``out_dir``.

    Returns:
        The set of key tuples (in ``key_columns`` order); empty when the file does not exist yet.

    Raises:
        TypeError: ``key_columns`` is a string rather than a sequence of names.
        ValueError: A key column is not in the file (the message lists the columns present).
    """
    import pandas as pd

    if isinstance(key_columns, str):
        raise TypeError(
            f"key_columns must be a list of column names, got the string {key_columns!r}"
        )
    _check_name(filename, "filename")
    path = Path(out_dir) / filename
    repair_torn_tail(path)  # a torn last row is not done: it is computed again
    if _read_header(path) is None:
        return set()
    df = pd.read_csv(path)
    missing = [c for c in key_columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path.name} has no column {missing}; its columns are {list(df.columns)}")
    return set(zip(*(df[c].tolist() for c in key_columns), strict=True))


def save_figure(
    fig: Figure, out_dir: str | Path, name: str, *, dpi: int = 150
) -> tuple[Path, Path]:
    """Save ``fig`` as ``fig_<name>.png`` (``dpi``) and ``fig_<name>.pdf`` in ``out_dir``.

    Returns:
        The PNG and PDF paths.

    Raises:
        ValueError: ``name`` is not a plain file-name part.
    """
    _check_name(name, "name")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    png, pdf = folder / f"fig_{name}.png", folder / f"fig_{name}.pdf"
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight")
    return png, pdf


def save_table(
    df: pd.DataFrame, out_dir: str | Path, name: str, *, index: bool = False
) -> dict[str, Path]:
    """Save ``df`` as ``table_<name>.md`` (Markdown), ``.tex`` (booktabs LaTeX) and ``.csv``.

    LaTeX special characters in cells and headers are escaped, and ``±`` becomes ``$\\pm$``.

    Args:
        df: The table.
        out_dir: The run's output folder (created if missing).
        name: File-name part, e.g. ``"attack_accuracy"``.
        index: Also write the DataFrame index.

    Returns:
        ``{"md": path, "tex": path, "csv": path}``.

    Raises:
        ValueError: ``name`` is not a plain file-name part.
    """
    _check_name(name, "name")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"table_{name}.{ext}" for ext in ("md", "tex", "csv")}
    paths["md"].write_text(df.to_markdown(index=index) + "\n", encoding="utf-8")
    latex = df.to_latex(index=index, escape=True).replace("±", r"$\pm$")
    paths["tex"].write_text(latex, encoding="utf-8")
    df.to_csv(paths["csv"], index=index)
    return paths


def _mean_std(mean: float, std: float, digits: int) -> str:
    if math.isnan(std):  # a single value (or none) has no sample standard deviation
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def mean_std_table(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    value_cols: Sequence[str],
    *,
    digits: int = 3,
) -> pd.DataFrame:
    """Summarise ``value_cols`` over the rows of each group as ``"mean ± std"`` strings.

    The std is the sample standard deviation (``ddof=1``) over the group's rows, typically seeds.
    A group with a single row shows only its mean, since its spread is unknown, not zero.

    Args:
        df: Tidy results, one row per run (e.g. per seed).
        group_cols: Columns defining a table row, e.g. ``["attack", "defense"]``.
        value_cols: Numeric columns to summarise.
        digits: Decimal places of mean and std.

    Returns:
        One row per group, sorted by the group columns: the group columns, one string column per
        value column, and ``n``, the number of rows in the group.

    Raises:
        ValueError: A column is missing (the message lists the columns present) or a value column
            is not numeric.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"attack": ["gmi"] * 3, "acc": [0.5, 0.6, 0.7]})
        >>> mean_std_table(df, ["attack"], ["acc"], digits=2).to_dict("records")
        [{'attack': 'gmi', 'acc': '0.60 ± 0.10', 'n': 3}]
    """
    import pandas as pd

    missing = [c for c in [*group_cols, *value_cols] if c not in df.columns]
    if missing:
        raise ValueError(f"no column {missing}; the columns are {list(df.columns)}")
    not_numeric = [c for c in value_cols if not pd.api.types.is_numeric_dtype(df[c])]
    if not_numeric:
        raise ValueError(f"value columns must be numeric, got non-numeric {not_numeric}")
    grouped = df.groupby(list(group_cols), sort=True, dropna=False)
    means = grouped[list(value_cols)].mean()
    stds = grouped[list(value_cols)].std(ddof=1)
    table = pd.DataFrame(index=means.index)
    for col in value_cols:
        table[col] = [_mean_std(m, s, digits) for m, s in zip(means[col], stds[col], strict=True)]
    table["n"] = grouped.size()
    return table.reset_index()
