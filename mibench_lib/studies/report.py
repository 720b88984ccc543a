"""A static HTML site over an outputs folder, and README tables generated from its results.

:func:`build_report` turns ``<out_root>`` (see :mod:`mibench_lib.studies.runner` for what a
configuration folder holds) into a site that needs no server and loads nothing from the network:

- ``<out_root>/index.html``: one line per study listing its configurations with their status, a
  sentence at the top naming what is missing or stale, and each study's headline table (see
  :data:`HEADLINE`) for every configuration that completed;
- ``<out_root>/<study>/<config>/report.html``: status, the environment record, the parameters as
  written, every ``table_*.csv`` as a table with links to its ``.csv/.md/.tex``, every
  ``fig_*.png`` with a link to its ``.pdf``, and links to every file of the folder;
- ``<out_root>/<study>/<config>/<study>.html``: the executed notebook rendered by nbconvert
  (``basic`` template, images embedded, widget state and scripts dropped); it is converted again
  only when the ``.ipynb`` is newer than the ``.html``;
- ``<out_root>/explore.html`` from ``<out_root>/explore.ipynb`` when that exists;
- ``<out_root>/report.css``, shared by every page.

Every link is relative, so the folder can be zipped or served as it is. Parameter values, CSV
cells and notebook text are user data: everything is escaped.

The status of a configuration comes from the runner's own completion marker and hashing:

- ``current``: ``_complete.json`` holds the hash the runner would compute now from the parameter
  file, the notebook and the library source;
- ``stale``: the marker's hash differs; the detail says which parts changed (``notebook``,
  ``parameters``, ``code``), e.g. ``stale: parameters changed (n_train)`` naming the keys whose
  values differ from the folder's ``parameters.yaml``;
- ``invalid``: a marker exists but the parameter file no longer validates (the detail says why);
- ``incomplete``: a folder without a marker: a run that failed, was interrupted or is running;
- ``missing``: a parameter file other than ``tiny.yaml`` without an output folder;
- ``orphan``: an output folder whose parameter file (or notebook) is gone.

README blocks: a README may hold

.. code-block:: markdown

    <!-- mibench:table leaderboard/default/table_leaderboard columns=attack,acc1 -->
    ...
    <!-- /mibench:table -->

whose body :func:`update_readme` generates from a snapshot of the table
(``<snapshot_dir>/<study>/<config>/<table>.csv`` and that folder's ``environment.json``), which
:func:`publish_snapshot` copies from the outputs, only for configurations that are current.
Options (space-separated, shell-quoted when a value holds spaces): ``columns=a,b`` (a subset, in
that order), ``rows=column:value|value`` (keep the rows whose column has one of these values) and
``rename=old:new,...`` (header names shown).

:func:`check_site` opens the built site in headless Chromium (playwright, imported only there) and
lists every console error, failed request, broken image and dangling link, and every table whose
cells differ from the CSV it was rendered from.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shlex
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

from mibench_lib.studies import runner
from mibench_lib.studies.params import (
    ParameterError,
    display_path,
    load_parameters,
    read_parameter_file,
    safe_load,
)
from mibench_lib.studies.runner import (
    MARKER,
    SAFE_NAME,
    list_configs,
    list_studies,
    locate,
    run_digest,
    source_tree_hash,
    unmet_requirements,
)

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "DEFAULT_HEADLINE",
    "HEADLINE",
    "ConfigStatus",
    "ReportError",
    "ReportSummary",
    "TableBlock",
    "block_table",
    "build_report",
    "build_report_summary",
    "check_site",
    "config_status",
    "config_statuses",
    "format_summary",
    "headline_table",
    "parse_blocks",
    "publish_snapshot",
    "readme_sources",
    "render_notebook",
    "update_readme",
]

#: The headline table of a study, by file stem; others use :data:`DEFAULT_HEADLINE`, and a folder
#: without that shows its first ``table_*.csv``.
HEADLINE: dict[str, str] = {"leaderboard": "table_leaderboard"}
DEFAULT_HEADLINE = "table_results_mean_std"

#: Debian's Chromium, which :func:`check_site` drives (never a browser playwright downloads).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

PAGE = "report.html"
INDEX = "index.html"
#: The snapshot of the tables the README cites, relative to the clone (tracked in git).
SNAPSHOT_DIR = "docs/results"
CSS = "report.css"
EXPLORE = "explore"

State = Literal["current", "stale", "invalid", "incomplete", "missing", "orphan"]
#: Order in which the index's first sentence names the states.
_STATE_ORDER: tuple[State, ...] = ("missing", "stale", "invalid", "incomplete", "orphan", "current")
#: Output formats a static page can show without a Jupyter frontend.
_STATIC_MIMES = frozenset(
    {
        "text/plain",
        "text/html",
        "text/markdown",
        "text/latex",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/svg+xml",
    }
)


class ReportError(ValueError):
    """A README block, a snapshot or a table cannot be used; the message says which and why."""


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ConfigStatus:
    """Where one configuration stands.

    Attributes:
        study: The study (notebook) name.
        config: The configuration (parameter-file stem).
        state: ``current``, ``stale``, ``invalid``, ``incomplete``, ``missing`` or ``orphan``
            (see the module docstring).
        detail: One line: what changed, why the run is incomplete or cannot run here, or empty.
        out_dir: The output folder, or None when it does not exist.
        params_file: The parameter file, or None when it is gone.
    """

    study: str
    config: str
    state: State
    detail: str = ""
    out_dir: Path | None = None
    params_file: Path | None = None

    @property
    def name(self) -> str:
        """``<study>/<config>``."""
        return f"{self.study}/{self.config}"

    @property
    def label(self) -> str:
        """The state with its detail, e.g. ``"stale: code changed"``."""
        return f"{self.state}: {self.detail}" if self.detail else self.state

    @property
    def complete(self) -> bool:
        """Whether the folder holds the runner's completion marker (whatever its hash)."""
        return self.out_dir is not None and (self.out_dir / MARKER).is_file()


def _dirs(folder: Path) -> list[Path]:
    """Sub-folders that can be studies or configurations: not ``_previous``, ``.locks`` and kin."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is absent.

    Raises:
        ReportError: The file is not a JSON object (named in the message).
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ReportError(f"{display_path(path)} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ReportError(f"{display_path(path)} holds {type(data).__name__}, not a JSON object")
    return data


def _incomplete_detail(out: Path) -> str:
    try:
        env = _read_json(out / "environment.json")
    except ReportError as err:
        return str(err)
    if env is None:
        return "no environment.json: the run never started properly"
    status = env.get("status")
    if status == "failed":
        return "the run failed; see the executed notebook"
    if status == "running":
        return f"interrupted or still running (started {env.get('started')})"
    return f"no {MARKER} (run status {status!r})"


def _changed_keys(out: Path, full: Mapping[str, Any]) -> str:
    """Keys whose value differs between the folder's ``parameters.yaml`` and ``full``."""
    path = out / "parameters.yaml"
    if not path.is_file():
        return ""
    recorded = safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recorded, dict):
        return ""
    keys = sorted(
        str(k)
        for k in set(recorded) | set(full)
        if k != "out_dir" and (k not in recorded or k not in full or recorded[k] != full[k])
    )
    return ", ".join(keys)


class _CodeHash:
    """The library's source hash, computed once per report (it reads every module)."""

    def __init__(self, code_dir: Path) -> None:
        self.code_dir = code_dir
        self._value: str | None = None

    def __call__(self) -> str:
        if self._value is None:
            self._value = source_tree_hash(self.code_dir)
        return self._value


def _status(
    study: str,
    config: str,
    out_root: Path,
    par_dir: Path,
    nb_dir: Path,
    code_hash: _CodeHash,
) -> ConfigStatus:
    out = out_root / study / config
    params_file = par_dir / study / f"{config}.yaml"
    notebook = nb_dir / f"{study}.ipynb"
    out_dir = out if out.is_dir() else None
    if not params_file.is_file():
        state: State = "orphan" if out_dir is not None else "missing"
        return ConfigStatus(
            study, config, state, f"{display_path(params_file)} is gone", out_dir, None
        )
    if out_dir is None:
        try:
            unmet = unmet_requirements(read_parameter_file(params_file))
        except ParameterError as err:
            return ConfigStatus(
                study,
                config,
                "missing",
                f"the parameter file does not validate: {_first_line(err)}",
                None,
                params_file,
            )
        detail = f"cannot run on this machine: {'; '.join(unmet)}" if unmet else ""
        return ConfigStatus(study, config, "missing", detail, None, params_file)
    if not notebook.is_file():
        return ConfigStatus(
            study, config, "orphan", f"{display_path(notebook)} is gone", out_dir, params_file
        )
    try:
        recorded = _read_json(out / MARKER)
    except ReportError as err:
        return ConfigStatus(study, config, "stale", str(err), out_dir, params_file)
    if recorded is None:
        return ConfigStatus(
            study, config, "incomplete", _incomplete_detail(out), out_dir, params_file
        )
    try:
        target = locate(params_file, notebooks_dir=nb_dir, out_root=out_root)
        params = load_parameters(target.params_file, target.notebook)
    except (ParameterError, FileNotFoundError) as err:
        return ConfigStatus(
            study,
            config,
            "invalid",
            f"the parameter file no longer validates: {_first_line(err)}",
            out_dir,
            params_file,
        )
    digest = run_digest(target, params, code_hash())
    if recorded.get("hash") == digest["hash"]:
        return ConfigStatus(study, config, "current", "", out_dir, params_file)
    changed = [
        part for part in ("notebook", "parameters", "code") if recorded.get(part) != digest[part]
    ]
    if not changed:
        detail = f"{MARKER} holds another hash than its parts give (another runner version)"
    else:
        full = {"study": study, "config": config, **params}
        keys = _changed_keys(out, full) if "parameters" in changed else ""
        detail = f"{' and '.join(changed)} changed" + (f" ({keys})" if keys else "")
    return ConfigStatus(study, config, "stale", detail, out_dir, params_file)


def _roots(
    parameters_dir: str | Path | None,
    notebooks_dir: str | Path | None,
    code_dir: str | Path | None,
) -> tuple[Path, Path, _CodeHash]:
    # the runner's folders as they are now (read at each call, like the runner's own defaults)
    par_dir = Path(parameters_dir) if parameters_dir is not None else runner.PARAMETERS_DIR
    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else runner.NOTEBOOKS_DIR
    code = Path(code_dir) if code_dir is not None else runner.CODE_DIR
    return par_dir, nb_dir, _CodeHash(code)


def config_status(
    out_root: str | Path,
    study: str,
    config: str,
    *,
    parameters_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    code_dir: str | Path | None = None,
) -> ConfigStatus:
    """The status of one configuration (see the module docstring).

    Args:
        out_root: Folder holding ``<study>/<config>/``.
        study: Study name.
        config: Configuration name.
        parameters_dir: Folder holding ``<study>/<config>.yaml``; default ``<repo>/parameters``.
        notebooks_dir: Folder holding ``<study>.ipynb``; default ``<repo>/notebooks``.
        code_dir: Source tree whose hash the runner recorded; default ``mibench_lib``.

    Returns:
        Its :class:`ConfigStatus`.
    """
    par_dir, nb_dir, code_hash = _roots(parameters_dir, notebooks_dir, code_dir)
    return _status(study, config, Path(out_root).absolute(), par_dir, nb_dir, code_hash)


def _config_statuses(
    out_root: Path, par_dir: Path, nb_dir: Path, code_hash: _CodeHash
) -> list[ConfigStatus]:
    names: set[tuple[str, str]] = set()
    for study_dir in _dirs(out_root):
        names.update((study_dir.name, c.name) for c in _dirs(study_dir))
    for study in list_studies(notebooks_dir=nb_dir, parameters_dir=par_dir):
        for config in list_configs(study, parameters_dir=par_dir, include_tiny=False):
            names.add((study, config))
    return [
        _status(study, config, out_root, par_dir, nb_dir, code_hash)
        for study, config in sorted(names, key=lambda sc: (sc[0], sc[1] != "default", sc[1]))
    ]


def config_statuses(
    out_root: str | Path,
    *,
    parameters_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    code_dir: str | Path | None = None,
) -> list[ConfigStatus]:
    """The status of every output folder and every parameter file without one.

    Output folders are ``<out_root>/<study>/<config>/``, leaving out names starting with ``_`` or
    ``.`` (``_previous``, ``.locks``); parameter files are those :func:`~runner.list_configs`
    lists for each study of :func:`~runner.list_studies`, ``tiny.yaml`` excepted.

    Args:
        out_root: Folder holding ``<study>/<config>/``.
        parameters_dir: As in :func:`config_status`.
        notebooks_dir: As in :func:`config_status`.
        code_dir: As in :func:`config_status`.

    Returns:
        One :class:`ConfigStatus` per configuration, by study, ``default`` first, then by name.
    """
    par_dir, nb_dir, code_hash = _roots(parameters_dir, notebooks_dir, code_dir)
    return _config_statuses(Path(out_root).absolute(), par_dir, nb_dir, code_hash)


# ----------------------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(*parts: str) -> str:
    """A relative URL from path segments, each percent-quoted, then escaped for an attribute."""
    return _e("/".join(quote(p) for p in parts))


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file as the strings it holds; blank lines are skipped.

    Raises:
        ReportError: The file is empty or a row has another number of fields than the header.
    """
    with path.open(newline="", encoding="utf-8") as f:
        records = [r for r in csv.reader(f) if r]
    if not records:
        raise ReportError(f"{display_path(path)} is empty")
    header, rows = records[0], records[1:]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ReportError(
                f"{display_path(path)}: record {number} has {len(row)} fields where the header "
                f"has {len(header)}"
            )
    return header, rows


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]], source: str) -> str:
    """An HTML table whose cells hold exactly the given strings (escaped).

    Written by hand rather than by ``DataFrame.to_html``, which strips leading spaces and shows a
    newline inside a cell as ``\\n``: here a cell's text is the CSV field, character for character,
    and :func:`check_site` compares the two. ``source`` is the CSV's URL relative to the page.
    """
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="table-wrap"><table class="dataframe" data-source="{_e(source)}">\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>"
    )


def _page(title: str, css: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'  # no /favicon.ico request
        f'<link rel="stylesheet" href="{_e(css)}">\n</head>\n<body>\n{body}\n</body>\n</html>\n'
    )


def _badge(status: ConfigStatus) -> str:
    return f'<span class="badge badge-{status.state}">{_e(status.label)}</span>'


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a page."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _css() -> str:
    from pygments.formatters import HtmlFormatter

    highlight = HtmlFormatter(style="default").get_style_defs(".highlight")
    return _BASE_CSS + "\n/* notebook code, pygments 'default' style */\n" + highlight + "\n"


_BASE_CSS = """\
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #1b1f24; line-height: 1.45; }
nav { font-size: 0.9rem; margin-bottom: 1rem; color: #57606a; }
a { color: #0969da; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2rem; } h3 { font-size: 1.05rem; }
.summary { font-size: 1.05rem; padding: 0.6rem 0.9rem; background: #f6f8fa;
           border-left: 4px solid #d0d7de; }
.badge { display: inline-block; font-size: 0.8rem; padding: 0.05rem 0.5rem; border-radius: 1rem;
         font-weight: 600; margin-left: 0.4rem; vertical-align: middle; }
.badge-current { background: #dafbe1; color: #116329; }
.badge-stale { background: #fff1c2; color: #7d4e00; }
.badge-invalid { background: #ffebe9; color: #a40e26; }
.badge-incomplete { background: #ddf4ff; color: #0550ae; }
.badge-missing { background: #ffebe9; color: #a40e26; }
.badge-orphan { background: #eaeef2; color: #424a53; }
ul.configs { list-style: none; padding-left: 0; } ul.configs li { margin: 0.25rem 0; }
.table-wrap { overflow-x: auto; margin: 0.5rem 0 1rem; }
table.dataframe, table.env { border-collapse: collapse; font-size: 0.85rem; }
table.dataframe th, table.dataframe td, table.env th, table.env td {
    border: 1px solid #d0d7de; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
table.dataframe thead th { background: #f6f8fa; position: sticky; top: 0; }
table.dataframe tbody tr:nth-child(even) { background: #fafbfc; }
table.env th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
pre { background: #f6f8fa; padding: 0.6rem 0.8rem; overflow-x: auto; font-size: 0.85rem; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto;
    border: 1px solid #eaeef2; } figcaption { font-size: 0.9rem; color: #57606a; }
.files { columns: 3 18rem; font-size: 0.9rem; }
.problem { color: #a40e26; }
/* nbconvert's "basic" (classic) notebook markup */
.cell { margin: 0.6rem 0; } .prompt { display: none; }
.anchor-link { visibility: hidden; margin-left: 0.3rem; text-decoration: none; }
:hover > .anchor-link { visibility: visible; }
.input_area { border: 1px solid #d0d7de; border-radius: 4px; background: #f6f8fa; }
.input_area pre { margin: 0; background: transparent; }
.output_area pre { background: #fff; border-left: 3px solid #eaeef2; }
.output_stderr pre { background: #fff8f8; }
.output_png img, .output_jpeg img { max-width: 100%; height: auto; }
.rendered_html table { border-collapse: collapse; font-size: 0.85rem; }
.rendered_html th, .rendered_html td { border: 1px solid #d0d7de; padding: 0.2rem 0.5rem; }
"""


# ----------------------------------------------------------------------------- notebooks


def _static_notebook(nb: Any) -> Any:
    """Drop what needs a Jupyter frontend: widget state and views, scripts, scripted HTML.

    Images without alternative text get one naming their cell (nbconvert would otherwise put a
    placeholder there and warn).
    """
    nb.metadata.pop("widgets", None)
    number = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        number += 1
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data is not None:
                for mime in list(data):
                    html_text = data[mime] if mime == "text/html" else ""
                    if isinstance(html_text, list):
                        html_text = "".join(html_text)
                    if mime not in _STATIC_MIMES or "<script" in html_text.lower():
                        del data[mime]
                if not data:
                    continue
                for mime in ("image/png", "image/jpeg"):
                    if mime not in data or cell.metadata.get("alt"):
                        continue
                    meta = output.setdefault("metadata", {}).setdefault(mime, {})
                    meta.setdefault("alt", f"Image output of code cell {number}")
            kept.append(output)
        cell["outputs"] = kept
    return nb


def render_notebook(
    ipynb: str | Path,
    html_path: str | Path,
    *,
    title: str,
    nav: str,
    css_href: str,
    force: bool = False,
) -> bool:
    """Render an executed notebook to a static HTML page, unless the page is up to date.

    nbconvert's ``HTMLExporter`` with the ``basic`` template (no scripts, no MathJax, no
    require.js) and ``embed_images`` (images inline as data URIs); widget state and outputs that
    need a frontend are dropped first (a ``text/plain`` alternative stays). The page is written
    only when it is missing or older than the notebook, or with ``force``.

    Args:
        ipynb: The executed notebook.
        html_path: Where the page goes.
        title: The page title (escaped here).
        nav: HTML for the navigation line above the notebook (already escaped).
        css_href: Relative URL of the stylesheet.
        force: Render even when the page is newer than the notebook.

    Returns:
        True when the page was written, False when it was up to date.

    Raises:
        ReportError: The notebook cannot be read (e.g. a run is writing it right now).
    """
    import nbformat
    from nbconvert import HTMLExporter

    src, dst = Path(ipynb), Path(html_path)
    if not force and dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return False
    try:
        nb = nbformat.read(src, as_version=4)
    except (ValueError, OSError) as err:  # NotJSONError and friends are ValueErrors
        raise ReportError(f"cannot read the notebook {display_path(src)}: {err}") from err
    exporter = HTMLExporter(template_name="basic", embed_images=True)
    body, _ = exporter.from_notebook_node(
        _static_notebook(nb), resources={"metadata": {"path": str(src.parent)}}
    )
    _write_text(
        dst, _page(title, css_href, f'<nav>{nav}</nav>\n<main class="notebook">\n{body}\n</main>')
    )
    return True


def _notebook_page(study: str) -> str:
    """File name of the rendered notebook; never the configuration page's own name."""
    name = f"{study}.html"
    return f"{study}.notebook.html" if name == PAGE else name


# ----------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`build_report_summary` did.

    Attributes:
        index: ``<out_root>/index.html``.
        pages: Every HTML page and stylesheet written by this build (notebook pages only when
            they were rendered again).
        rendered: Notebook pages converted by this build.
        reused: Notebook pages left as they were, being newer than their notebook.
        statuses: The status of every configuration, as on the index.
        problems: Things the pages show instead of content (an unreadable table or notebook),
            one line each; empty when everything rendered.
    """

    index: Path
    pages: tuple[Path, ...]
    rendered: tuple[Path, ...]
    reused: tuple[Path, ...]
    statuses: tuple[ConfigStatus, ...]
    problems: tuple[str, ...] = field(default=())


def headline_table(study: str, out_dir: str | Path) -> Path | None:
    """The CSV of a configuration's headline table: :data:`HEADLINE`, else
    :data:`DEFAULT_HEADLINE`, else the first ``table_*.csv``; None when it has no table."""
    folder = Path(out_dir)
    for stem in (HEADLINE.get(study), DEFAULT_HEADLINE):
        if stem and (folder / f"{stem}.csv").is_file():
            return folder / f"{stem}.csv"
    tables = sorted(folder.glob("table_*.csv"))
    return tables[0] if tables else None


def _table_block(csv_path: Path, source: str, problems: list[str]) -> str:
    try:
        header, rows = _read_csv(csv_path)
    except (ReportError, csv.Error, UnicodeDecodeError) as err:
        problems.append(f"{display_path(csv_path)}: {err}")
        return f'<p class="problem">Cannot show this table: {_e(err)}</p>'
    return _html_table(header, rows, source)


def _wall(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return str(seconds)
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    human = f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"
    return f"{seconds:.1f} s ({human})"


_ENV_ROWS: tuple[tuple[str, str], ...] = (
    ("git_commit", "git commit"),
    ("git_dirty", "uncommitted changes"),
    ("python", "Python"),
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("papermill", "papermill"),
    ("mibench", "mibench"),
    ("cuda_device", "device"),
    ("cuda_version", "CUDA (torch build)"),
    ("torch_threads", "threads"),
    ("started", "started"),
    ("finished", "finished"),
    ("wall_s", "wall time"),
    ("status", "run status"),
    ("platform", "platform"),
    ("kernel_name", "kernel"),
)
_ENV_SHOWN_WITH = {"cuda_available", "cpu_count", "omp_num_threads"}


def _env_table(env: Mapping[str, Any]) -> str:
    rows = []
    for key, label in _ENV_ROWS:
        if key == "cuda_device":
            value = env.get("cuda_device") or (
                "CPU" if not env.get("cuda_available") else "CUDA (device name not recorded)"
            )
        elif key == "torch_threads":
            value = (
                f"torch {env.get('torch_threads')}, OMP_NUM_THREADS "
                f"{env.get('omp_num_threads')}, {env.get('cpu_count')} CPUs"
            )
        elif key == "wall_s":
            value = _wall(env.get("wall_s"))
        elif key not in env:
            continue
        else:
            value = env[key]
        rows.append(f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>")
    shown = {k for k, _ in _ENV_ROWS} | _ENV_SHOWN_WITH
    rows += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in env.items() if k not in shown]
    return '<table class="env">\n' + "\n".join(rows) + "\n</table>"


def _config_page(
    status: ConfigStatus, out: Path, problems: list[str], notebook_html: Path | None
) -> str:
    study, config = status.study, status.config
    parts: list[str] = [
        f'<nav><a href="../../{INDEX}">index</a> › {_e(study)} › {_e(config)}</nav>',
        f"<h1>{_e(status.name)} {_badge(status)}</h1>",
    ]
    if status.params_file is not None:
        parts.append(f"<p>Parameter file: <code>{_e(display_path(status.params_file))}</code></p>")

    executed = out / f"{study}.ipynb"
    links = []
    if executed.is_file():
        links.append(f'<a href="{_href(executed.name)}">executed notebook (.ipynb)</a>')
    if notebook_html is not None and notebook_html.is_file():
        links.append(f'<a href="{_href(notebook_html.name)}">executed notebook (HTML)</a>')
    if (out / "results.csv").is_file():
        links.append('<a href="results.csv">results.csv</a>')
    if links:
        parts.append("<p>" + " · ".join(links) + "</p>")

    parts.append("<h2>Environment</h2>")
    try:
        env = _read_json(out / "environment.json")
    except ReportError as err:
        problems.append(str(err))
        env = None
        parts.append(f'<p class="problem">{_e(err)}</p>')
    if env is not None:
        parts.append(_env_table(env))
    elif not (out / "environment.json").exists():
        parts.append("<p>No environment.json in this folder.</p>")

    parts.append("<h2>Parameters</h2>")
    params_yaml = out / "parameters.yaml"
    if params_yaml.is_file():
        text = params_yaml.read_text(encoding="utf-8", errors="replace")
        parts.append(f'<p><a href="parameters.yaml">parameters.yaml</a></p><pre>{_e(text)}</pre>')
    else:
        parts.append("<p>No parameters.yaml in this folder.</p>")

    tables = sorted(out.glob("table_*.csv"))
    if tables:
        parts.append("<h2>Tables</h2>")
    for table in tables:
        fmt = [
            f'<a href="{_href(table.with_suffix(ext).name)}">{ext[1:]}</a>'
            for ext in (".csv", ".md", ".tex")
            if table.with_suffix(ext).is_file()
        ]
        parts.append(f'<h3 id="{_e(table.stem)}">{_e(table.stem)} ({" · ".join(fmt)})</h3>')
        parts.append(_table_block(table, quote(table.name), problems))

    figures = sorted(out.glob("fig_*.png"))
    if figures:
        parts.append("<h2>Figures</h2>")
    for fig in figures:
        pdf = fig.with_suffix(".pdf")
        caption = _e(fig.stem)
        if pdf.is_file():
            caption += f' · <a href="{_href(pdf.name)}">PDF</a>'
        alt = f"Figure {fig.stem.removeprefix('fig_').replace('_', ' ')} of {status.name}"
        parts.append(
            f'<figure id="{_e(fig.stem)}"><img src="{_href(fig.name)}" alt="{_e(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    parts.append("<h2>Files</h2>")
    files = []
    for path in sorted(out.iterdir()):
        if path.name.startswith(".") or path.name == PAGE:
            continue
        if path.is_dir():
            count = sum(1 for p in path.rglob("*") if p.is_file())
            files.append(f"<li>{_e(path.name)}/ ({count} files)</li>")
        else:
            size = path.stat().st_size
            files.append(
                f'<li><a href="{_href(path.name)}">{_e(path.name)}</a> ({size:,} bytes)</li>'
            )
    parts.append('<ul class="files">' + "".join(files) + "</ul>")
    return _page(f"{status.name}: {status.label}", f"../../{CSS}", "\n".join(parts))


def _summary_sentence(statuses: Sequence[ConfigStatus]) -> str:
    if not statuses:
        return "No configurations: neither output folders nor parameter files were found."
    by_state: dict[str, list[ConfigStatus]] = {}
    for s in statuses:
        by_state.setdefault(s.state, []).append(s)
    if set(by_state) == {"current"}:
        n = len(statuses)
        return f"All {n} configuration{'s' if n != 1 else ''} are current."
    clauses = []
    for state in _STATE_ORDER:
        group = by_state.get(state, [])
        if not group:
            continue
        if state == "current":
            clauses.append(f"{len(group)} current")
            continue
        # A stale one says what changed, without the parameter keys (its badge has them).
        names = ", ".join(
            s.name + (f" ({s.detail.split(' (')[0]})" if state == "stale" else "") for s in group
        )
        clauses.append(f"{len(group)} {state}: {names}")
    n_first = len(by_state.get(next(s for s in _STATE_ORDER if s in by_state), []))
    noun = "configuration" if n_first == 1 else "configurations"
    first, *rest = clauses
    count, _, tail = first.partition(" ")
    return "; ".join([f"{count} {noun} {tail}", *rest]) + "."


def _index_page(
    statuses: Sequence[ConfigStatus], out_root: Path, explore: bool, problems: list[str]
) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    parts = [
        "<h1>mibench results</h1>",
        f'<p class="summary">{_e(_summary_sentence(statuses))}</p>',
        f"<p>Built {_e(now)} from <code>{_e(out_root.name)}/</code>.</p>",
    ]
    if explore:
        parts.append(f'<p><a href="{EXPLORE}.html">Explorer notebook</a> (all studies)</p>')
    by_study: dict[str, list[ConfigStatus]] = {}
    for s in statuses:
        by_study.setdefault(s.study, []).append(s)
    for study, group in by_study.items():
        items = []
        for s in group:
            name = _e(s.config)
            if s.out_dir is not None:
                name = f'<a href="{_href(s.study, s.config, PAGE)}">{name}</a>'
            items.append(f"<li>{name} {_badge(s)}</li>")
        parts.append(f'<h2 id="{_e(study)}">{_e(study)}</h2>')
        parts.append('<ul class="configs">' + "".join(items) + "</ul>")
        for s in group:
            if not s.complete or s.out_dir is None:
                continue
            table = headline_table(study, s.out_dir)
            if table is None:
                continue
            source = f"{quote(study)}/{quote(s.config)}/{quote(table.name)}"
            parts.append(
                f"<h3>{_e(s.name)}: {_e(table.stem)} {_badge(s)} "
                f'(<a href="{_e(source)}">csv</a>)</h3>'
            )
            parts.append(_table_block(table, source, problems))
    return _page("mibench results", CSS, "\n".join(parts))


def build_report_summary(
    out_root: str | Path,
    *,
    parameters_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    code_dir: str | Path | None = None,
    force: bool = False,
) -> ReportSummary:
    """Write the site (see the module docstring) and say what was written.

    Args:
        out_root: The outputs folder; pages are written inside it.
        parameters_dir: Folder holding ``<study>/<config>.yaml``; default ``<repo>/parameters``.
        notebooks_dir: Folder holding ``<study>.ipynb``; default ``<repo>/notebooks``.
        code_dir: Source tree whose hash the runner recorded; default ``mibench_lib``.
        force: Render every notebook again, even those whose page is newer.

    Returns:
        A :class:`ReportSummary`.

    Raises:
        FileNotFoundError: ``out_root`` is not a folder.
    """
    root = Path(out_root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"no outputs folder {display_path(root)}: run a study first")
    par_dir, nb_dir, code_hash = _roots(parameters_dir, notebooks_dir, code_dir)
    statuses = _config_statuses(root, par_dir, nb_dir, code_hash)
    pages: list[Path] = []
    rendered: list[Path] = []
    reused: list[Path] = []
    problems: list[str] = []

    css = root / CSS
    _write_text(css, _css())
    pages.append(css)

    def notebook(ipynb: Path, page: Path, title: str, nav: str, css_href: str) -> Path | None:
        if not ipynb.is_file():
            return None
        try:
            wrote = render_notebook(
                ipynb, page, title=title, nav=nav, css_href=css_href, force=force
            )
        except ReportError as err:
            problems.append(str(err))
            return page if page.is_file() else None
        (rendered if wrote else reused).append(page)
        if wrote:
            pages.append(page)
        return page

    for s in statuses:
        if s.out_dir is None:
            continue
        nav = (
            f'<a href="../../{INDEX}">index</a> › <a href="{PAGE}">{_e(s.name)}</a> › '
            f'executed notebook (<a href="{_href(s.study + ".ipynb")}">.ipynb</a>)'
        )
        nb_page = notebook(
            s.out_dir / f"{s.study}.ipynb",
            s.out_dir / _notebook_page(s.study),
            f"{s.name}: executed notebook",
            nav,
            f"../../{CSS}",
        )
        page = s.out_dir / PAGE
        _write_text(page, _config_page(s, s.out_dir, problems, nb_page))
        pages.append(page)

    explore = notebook(
        root / f"{EXPLORE}.ipynb",
        root / f"{EXPLORE}.html",
        "mibench explorer",
        f'<a href="{INDEX}">index</a> › explorer (<a href="{EXPLORE}.ipynb">.ipynb</a>)',
        CSS,
    )
    has_explore = explore is not None or (root / f"{EXPLORE}.html").is_file()
    index = root / INDEX
    _write_text(index, _index_page(statuses, root, has_explore, problems))
    pages.append(index)
    return ReportSummary(
        index, tuple(pages), tuple(rendered), tuple(reused), tuple(statuses), tuple(problems)
    )


def build_report(
    out_root: str | Path,
    *,
    parameters_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    code_dir: str | Path | None = None,
) -> Path:
    """Write the static site over ``out_root`` and return ``<out_root>/index.html``.

    See the module docstring for the pages; :func:`build_report_summary` does the same and also
    returns the pages written and each configuration's status (what ``mibench report`` prints).

    Args:
        out_root: The outputs folder; pages are written inside it.
        parameters_dir: Folder holding ``<study>/<config>.yaml``; default ``<repo>/parameters``.
        notebooks_dir: Folder holding ``<study>.ipynb``; default ``<repo>/notebooks``.
        code_dir: Source tree whose hash the runner recorded; default ``mibench_lib``.

    Returns:
        The index page.
    """
    return build_report_summary(
        out_root, parameters_dir=parameters_dir, notebooks_dir=notebooks_dir, code_dir=code_dir
    ).index


def format_summary(summary: ReportSummary) -> str:
    """Lines for a terminal: the index, one line per configuration, pages and problems."""
    width = max((len(s.name) for s in summary.statuses), default=0)
    lines = [f"{s.name:<{width}}  {s.label}" for s in summary.statuses]
    lines.append(
        f"wrote {len(summary.pages)} files ({len(summary.rendered)} notebooks rendered, "
        f"{len(summary.reused)} up to date); open {display_path(summary.index)}"
    )
    lines += [f"problem: {p}" for p in summary.problems]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- README blocks

_START = re.compile(r"^\s*<!--\s*mibench:table\b(?P<spec>.*?)-->\s*$")
_END = re.compile(r"^\s*<!--\s*/mibench:table\s*-->\s*$")
_OPEN = re.compile(r"<!--\s*/?mibench:")


@dataclass(frozen=True)
class TableBlock:
    """One ``<!-- mibench:table ... -->`` block of a README.

    Attributes:
        line: 1-based line number of the opening comment.
        end_line: 1-based line number of the closing comment.
        study: Study of the source.
        config: Configuration of the source.
        table: Table file stem, e.g. ``table_leaderboard``.
        columns: Columns to show, in order; None for all.
        rows: ``(column, values)`` keeping the rows whose column holds one of these values.
        rename: Header names shown instead of the CSV's.
    """

    line: int
    end_line: int
    study: str
    config: str
    table: str
    columns: tuple[str, ...] | None = None
    rows: tuple[str, tuple[str, ...]] | None = None
    rename: tuple[tuple[str, str], ...] = ()

    @property
    def source(self) -> str:
        """``<study>/<config>/<table>``."""
        return f"{self.study}/{self.config}/{self.table}"


def _parse_spec(spec: str, where: str, line: int, end_line: int) -> TableBlock:
    try:
        words = shlex.split(spec)
    except ValueError as err:
        raise ReportError(f"{where}: cannot split the block options: {err}") from err
    if not words:
        raise ReportError(f"{where}: the block names no table; write <study>/<config>/<table>")
    source, *options = words
    pieces = source.removesuffix(".csv").split("/")
    if len(pieces) != 3 or not all(SAFE_NAME.fullmatch(p) for p in pieces):
        raise ReportError(
            f"{where}: the source {source!r} is not <study>/<config>/<table>, e.g. "
            "leaderboard/default/table_leaderboard"
        )
    study, config, table = pieces
    columns: tuple[str, ...] | None = None
    rows: tuple[str, tuple[str, ...]] | None = None
    rename: list[tuple[str, str]] = []
    seen: set[str] = set()
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or not value:
            raise ReportError(f"{where}: option {option!r} is not key=value")
        if key in seen:
            raise ReportError(f"{where}: option {key!r} is given twice")
        seen.add(key)
        if key == "columns":
            columns = tuple(c for c in value.split(","))
            if "" in columns:
                raise ReportError(f"{where}: columns={value!r} holds an empty column name")
        elif key == "rows":
            column, colon, values = value.partition(":")
            if not colon or not column or not values:
                raise ReportError(f"{where}: rows={value!r} is not column:value|value")
            rows = (column, tuple(values.split("|")))
        elif key == "rename":
            for pair in value.split(","):
                old, colon, new = pair.partition(":")
                if not colon or not old or not new:
                    raise ReportError(f"{where}: rename pair {pair!r} is not old:new")
                rename.append((old, new))
        else:
            raise ReportError(
                f"{where}: unknown option {key!r}; the options are columns=, rows= and rename="
            )
    return TableBlock(line, end_line, study, config, table, columns, rows, tuple(rename))


def parse_blocks(text: str, *, name: str = "README.md") -> list[TableBlock]:
    """The table blocks of a README's text, in order.

    Args:
        text: The README.
        name: How messages name the file.

    Returns:
        One :class:`TableBlock` per block.

    Raises:
        ReportError: A block is not closed, is nested, has a closing comment without an opening
            one, names no valid source or has an unknown or malformed option; the message gives
            the line number.

    Example:
        >>> text = "<!-- mibench:table lb/default/table_lb columns=attack,acc1 -->\\n"
        >>> block, = parse_blocks(text + "old table\\n<!-- /mibench:table -->\\n")
        >>> block.source, block.columns, (block.line, block.end_line)
        ('lb/default/table_lb', ('attack', 'acc1'), (1, 3))
    """
    blocks: list[TableBlock] = []
    start: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if _END.match(line):
            if start is None:
                raise ReportError(
                    f"{name}:{number}: closing <!-- /mibench:table --> without a block"
                )
            blocks.append(_parse_spec(start[1], f"{name}:{start[0]}", start[0], number))
            start = None
        elif (m := _START.match(line)) is not None:
            if start is not None:
                raise ReportError(
                    f"{name}:{number}: a block opens inside the block of line {start[0]}; "
                    "close that one first with <!-- /mibench:table -->"
                )
            start = (number, m.group("spec"))
        elif _OPEN.search(line):
            raise ReportError(
                f"{name}:{number}: a mibench comment that is not <!-- mibench:table <source> "
                "[options] --> or <!-- /mibench:table --> on a line of its own"
            )
    if start is not None:
        raise ReportError(
            f"{name}:{start[0]}: the block is never closed; add <!-- /mibench:table -->"
        )
    return blocks


def readme_sources(readme_path: str | Path) -> list[str]:
    """The ``<study>/<config>/<table>`` sources of a README's blocks, each once, in order."""
    path = Path(readme_path)
    blocks = parse_blocks(path.read_text(encoding="utf-8"), name=display_path(path))
    return list(dict.fromkeys(b.source for b in blocks))


def _md_cell(text: str) -> str:
    return (
        text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")
    )


def _block_body(block: TableBlock, snapshot: Path, where: str) -> str:
    table, commit = block_table(block, snapshot, where)
    note = (
        f"<sub>generated by mibench report from outputs/{block.study}/{block.config}/"
        f"{block.table}.csv (commit {commit})</sub>"
    )
    return "\n" + table + "\n\n" + note + "\n\n"


def block_table(block: TableBlock, root: str | Path, where: str = "") -> tuple[str, str]:
    """The Markdown table of a README block, read from ``root`` (a snapshot or an outputs folder).

    Args:
        block: A block of :func:`parse_blocks`.
        root: Folder holding ``<study>/<config>/<table>.csv`` and its ``environment.json``.
        where: Prefix of error messages (``"README.md:12"``).

    Returns:
        The table's lines and the run's short commit (``"abc1234"``, ``", uncommitted changes"``
        appended when the run was dirty).

    Raises:
        ReportError: A missing file, column or row value (the message starts with ``where``).
    """
    where = where or f"{block.study}/{block.config}/{block.table}"
    folder = Path(root) / block.study / block.config
    csv_path = folder / f"{block.table}.csv"
    if not csv_path.is_file():
        raise ReportError(
            f"{where}: no {display_path(csv_path)}; publish it with publish_snapshot "
            "(mibench report --publish) or fix the block's source"
        )
    try:
        header, rows = _read_csv(csv_path)
    except ReportError as err:
        raise ReportError(f"{where}: {err}") from err
    columns = list(block.columns) if block.columns is not None else header
    missing = [c for c in columns if c not in header]
    if missing:
        raise ReportError(
            f"{where}: {display_path(csv_path)} has no column {missing}; its columns are {header}"
        )
    if block.rows is not None:
        column, values = block.rows
        if column not in header:
            raise ReportError(
                f"{where}: rows= names the column {column!r}, which {display_path(csv_path)} "
                f"lacks; its columns are {header}"
            )
        i = header.index(column)
        present = {r[i] for r in rows}
        absent = [v for v in values if v not in present]
        if absent:
            raise ReportError(
                f"{where}: rows= value {absent} matches no row of column {column!r}; "
                f"its values are {sorted(present)}"
            )
        rows = [r for r in rows if r[i] in values]
    renames = dict(block.rename)
    unknown = [old for old in renames if old not in columns]
    if unknown:
        raise ReportError(f"{where}: rename= names {unknown}, not among the columns {columns}")
    env_path = folder / "environment.json"
    try:
        env = _read_json(env_path)
    except ReportError as err:
        raise ReportError(f"{where}: {err}") from err
    if env is None:
        raise ReportError(f"{where}: no {display_path(env_path)}; publish the snapshot again")
    commit = env.get("git_commit")
    short = str(commit)[:7] if commit else "unknown"
    if env.get("git_dirty"):
        short += ", uncommitted changes"
    index = [header.index(c) for c in columns]
    lines = [
        "| " + " | ".join(_md_cell(renames.get(c, c)) for c in columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
        *("| " + " | ".join(_md_cell(r[i]) for i in index) + " |" for r in rows),
    ]
    return "\n".join(lines), short


def update_readme(
    readme_path: str | Path, snapshot_dir: str | Path, *, check: bool = False
) -> list[str]:
    """Regenerate the bodies of a README's table blocks from a snapshot of the results.

    Each block's body becomes the Markdown table of
    ``<snapshot_dir>/<study>/<config>/<table>.csv`` (values exactly as in the file, ``|``
    escaped), after the block's options, and a ``<sub>`` line naming the source and the commit
    from that folder's ``environment.json``.

    Args:
        readme_path: The README.
        snapshot_dir: The snapshot folder (see :func:`publish_snapshot`).
        check: Only compare: write nothing.

    Returns:
        The blocks whose body differs from the generated one, as ``"README.md:12 <source>"``
        (with ``check=False``, those rewritten); empty when the README is in sync.

    Raises:
        ReportError: See :func:`parse_blocks`; also a block naming a missing CSV, column or row
            value, or a snapshot without ``environment.json`` (the message gives the line).
    """
    path = Path(readme_path)
    name = display_path(path)
    text = path.read_text(encoding="utf-8")
    blocks = parse_blocks(text, name=name)
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    differ: list[str] = []
    position = 0
    for block in blocks:
        where = f"{name}:{block.line}"
        body = _block_body(block, Path(snapshot_dir), where)
        out += lines[position : block.line]
        old = "".join(lines[block.line : block.end_line - 1])
        if old != body:
            differ.append(f"{where} {block.source}")
        out.append(body)
        position = block.end_line - 1
    out += lines[position:]
    if differ and not check:
        _write_text(path, "".join(out))
    return differ


def publish_snapshot(
    out_root: str | Path,
    snapshot_dir: str | Path,
    sources: Iterable[str],
    *,
    parameters_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    code_dir: str | Path | None = None,
) -> list[Path]:
    """Copy the tables the README cites, with their ``environment.json``, into a snapshot.

    For each source ``<study>/<config>/<table>``, ``<out_root>/<study>/<config>/<table>.csv`` and
    that folder's ``environment.json`` are copied byte for byte to the same place under
    ``snapshot_dir``. Every configuration must be current (see :func:`config_status`), and every
    file present, before anything is copied.

    Args:
        out_root: The outputs folder.
        snapshot_dir: Where the snapshot lives (``docs/results``, tracked in git).
        sources: ``<study>/<config>/<table>`` strings, e.g. from :func:`readme_sources`.
        parameters_dir: As in :func:`config_status`.
        notebooks_dir: As in :func:`config_status`.
        code_dir: As in :func:`config_status`.

    Returns:
        The files written.

    Raises:
        ReportError: A source is malformed, its configuration is not current (the message names
            it and its status) or a file is missing.
    """
    root, snapshot = Path(out_root).absolute(), Path(snapshot_dir)
    par_dir, nb_dir, code_hash = _roots(parameters_dir, notebooks_dir, code_dir)
    wanted: dict[tuple[str, str], list[str]] = {}
    for source in sources:
        pieces = source.removesuffix(".csv").split("/")
        if len(pieces) != 3 or not all(SAFE_NAME.fullmatch(p) for p in pieces):
            raise ReportError(f"source {source!r} is not <study>/<config>/<table>")
        wanted.setdefault((pieces[0], pieces[1]), []).append(pieces[2])
    copies: list[tuple[Path, Path]] = []
    for (study, config), tables in wanted.items():
        status = _status(study, config, root, par_dir, nb_dir, code_hash)
        if status.state != "current":
            raise ReportError(
                f"{study}/{config} is {status.label}; run `mibench run "
                f"parameters/{study}/{config}.yaml` until it is current: nothing was published"
            )
        folder = root / study / config
        for name in [*dict.fromkeys(f"{t}.csv" for t in tables), "environment.json"]:
            src = folder / name
            if not src.is_file():
                raise ReportError(
                    f"{study}/{config}: no {display_path(src)}; nothing was published"
                )
            copies.append((src, snapshot / study / config / name))
    written = []
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    return written


# ----------------------------------------------------------------------------- browser check


#: Tag and absolute URL of every element with an href or src (an SVG's href is an object: left out).
_TARGETS_JS = (
    "els => els.map(e => [e.tagName.toLowerCase(), "
    "typeof e.href === 'string' ? e.href : (typeof e.src === 'string' ? e.src : '')])"
)


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves a folder; the crawl reports failures itself, so no request log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def _rows_match(found: list[list[str]], header: list[str], rows: list[list[str]]) -> list[str]:
    expected = [header, *rows]
    issues = []
    if len(found) != len(expected):
        issues.append(f"{len(found) - 1} rows shown where the CSV has {len(rows)}")
    for number, (got, want) in enumerate(zip(found, expected, strict=False)):
        if got != want:
            what = "header" if number == 0 else f"row {number}"
            issues.append(f"{what} shows {got} where the CSV has {want}")
            break
    return issues


def check_site(
    root: str | Path,
    *,
    screenshot_dir: str | Path | None = None,
    start: str = INDEX,
    executable_path: str = CHROMIUM,
) -> list[str]:
    """Crawl a built report in headless Chromium and list every problem found.

    ``root`` is served over HTTP on ``127.0.0.1`` (a thread, a free port). From ``start``, every
    same-site HTML page reachable by ``<a href>`` is opened; every other same-site target of an
    ``href`` or ``src`` (CSV, PDF, notebook) is requested with ``HEAD``. Problems are: a console
    error or uncaught page error, a request that failed or answered 400 or more, an ``<img>``
    with ``naturalWidth == 0``, a link to a missing target, a resource from another site, and a
    table whose ``data-source`` CSV holds other text than its cells (header and every row).

    Args:
        root: The built site (``out_root``).
        screenshot_dir: When given, a full-page PNG of every HTML page goes there, named after
            the page's path (``study__config__report.png``).
        start: The first page, relative to ``root``.
        executable_path: The Chromium binary (playwright's own browsers are never downloaded).

    Returns:
        One line per problem, ``"<page>: <what>"``; empty when the site is sound.

    Raises:
        FileNotFoundError: ``root/start`` or the Chromium binary does not exist.
    """
    from playwright.sync_api import sync_playwright

    site = Path(root).absolute()
    if not (site / start).is_file():
        raise FileNotFoundError(f"no {display_path(site / start)}: build the report first")
    if not Path(executable_path).is_file():
        raise FileNotFoundError(
            f"no Chromium at {executable_path}; install it (Debian: apt-get install chromium)"
        )
    shots = Path(screenshot_dir) if screenshot_dir is not None else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(site)))
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, name="report-server", daemon=True)
    thread.start()
    problems: list[str] = []
    head_cache: dict[str, int] = {}
    opener = build_opener(ProxyHandler({}))  # the site is local: never through a proxy

    def rel(url: str) -> str:
        return unquote(url[len(base) :]) if url.startswith(base) else url

    def head(url: str) -> int:
        if url not in head_cache:
            try:
                with opener.open(Request(url, method="HEAD"), timeout=10) as response:
                    head_cache[url] = response.status
            except OSError as err:  # HTTPError carries the status; others mean no answer
                head_cache[url] = getattr(err, "code", None) or 599
        return head_cache[url]

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable_path, args=list(CHROMIUM_ARGS))
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            current = [start]
            page.on(
                "console",
                lambda m: (
                    m.type == "error" and problems.append(f"{current[0]}: console error: {m.text}")
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"{current[0]}: page error: {e}"))
            page.on(
                "requestfailed",
                lambda r: problems.append(
                    f"{current[0]}: request failed: {rel(r.url)} ({r.failure})"
                ),
            )
            page.on(
                "response",
                lambda r: (
                    r.status >= 400
                    and problems.append(f"{current[0]}: HTTP {r.status} for {rel(r.url)}")
                ),
            )
            queue, seen = [base + start], {base + start}
            while queue:
                url = queue.pop(0)
                current[0] = rel(url)
                page.goto(url, wait_until="load")
                for src in page.eval_on_selector_all(
                    "img", "els => els.filter(e => !e.naturalWidth).map(e => e.getAttribute('src'))"
                ):
                    problems.append(f"{current[0]}: image not shown: {src}")
                for tag, target in page.eval_on_selector_all("[href], [src]", _TARGETS_JS):
                    if not target or target.startswith(("data:", "mailto:", "javascript:")):
                        continue
                    address = urldefrag(target).url
                    if not address.startswith(base):
                        if tag != "a":
                            problems.append(f"{current[0]}: resource from another site: {target}")
                        continue
                    path = urlsplit(address).path
                    if tag == "a" and (path.endswith(".html") or path.endswith("/")):
                        if address not in seen:
                            seen.add(address)
                            queue.append(address)
                    elif tag == "a" and head(address) >= 400:
                        problems.append(
                            f"{current[0]}: link to a missing target: {rel(address)} "
                            f"(HTTP {head(address)})"
                        )
                tables = page.eval_on_selector_all(
                    "table[data-source]",
                    "els => els.map(t => [t.dataset.source, [...t.querySelectorAll('tr')]"
                    ".map(tr => [...tr.querySelectorAll('th, td')].map(c => c.textContent))])",
                )
                for source, found in tables:
                    csv_url = urljoin(url, source)
                    csv_path = site / unquote(urlsplit(csv_url).path).lstrip("/")
                    try:
                        header, rows = _read_csv(csv_path)
                    except (ReportError, OSError) as err:
                        problems.append(f"{current[0]}: table from {rel(csv_url)}: {err}")
                        continue
                    problems += [
                        f"{current[0]}: table from {rel(csv_url)}: {issue}"
                        for issue in _rows_match(found, header, rows)
                    ]
                if shots is not None:
                    name = current[0].removesuffix(".html").replace("/", "__") or "index"
                    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return problems
