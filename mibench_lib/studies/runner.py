"""Run study notebooks with papermill, one output folder per parameter file.

A *study* is a notebook ``notebooks/<study>.ipynb``; a *configuration* is a parameter file
``parameters/<study>/<config>.yaml``. Running a configuration leaves everything about the run in
``outputs/<study>/<config>/``:

- ``<study>.ipynb``: the executed notebook (partial, with the traceback, if a cell failed);
- ``parameters.yaml``: exactly the parameters injected (``study``, ``config``, ``out_dir`` too);
- ``environment.json``: package versions, platform, threads, CUDA device, git commit and dirty flag,
  start and end time and wall time;
- ``_complete.json``: written last, only on success. It holds a hash of the notebook file, the
  parameters and the ``mibench_lib`` source tree; a later run with the same hash is skipped.
- whatever the notebook writes there (see :mod:`mibench_lib.studies.records`).

An interrupted or failed run leaves no marker. Running it again with the same parameters reuses the
folder, so a notebook that records finished rows can resume. When the parameters changed, when the
previous run had completed (so the code or notebook changed since), or with ``force``, the old
folder is first moved to ``<out_root>/_previous/<study>/<config>/`` so no stale result survives
into the new run.

One run at a time per output folder: a run holds the lock
``<out_root>/.locks/<study>/<config>.lock`` (outside the folder it may move aside) from before it
reads the completion marker until it writes it. A second run of the same configuration into the
same ``out_root`` refuses at once with :class:`OutputLockedError`, naming the process that holds it,
or with ``lock_timeout_s`` waits for it (and then usually finds the run complete and skips it).

Study and configuration names (the parameter file's folder and stem) must match
:data:`SAFE_NAME` (``[A-Za-z0-9][A-Za-z0-9_.-]*``): a file named ``..yaml`` would otherwise name the
output folder ``<out_root>/<study>/.``, and moving that aside would move the whole study folder.

``run_all`` runs every configuration except ``tiny.yaml`` (the CI smoke test) and files whose name
starts with ``_`` or ``.``. It also skips, and reports with the reason, configurations this machine cannot
run (see :func:`unmet_requirements`): those naming a local path that does not exist in a key
``root``, ``*_root``, ``*_path`` or ``*_weights`` (top level, or inside a dict value such as
``dataset_kwargs: {root: data/celeba}``), and those asking for ``device: cuda`` without CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from mibench_lib.progress import HEADLESS_ENV
from mibench_lib.studies.params import (
    ParameterError,
    display_path,
    load_parameters,
    read_parameter_file,
    safe_dump,
    safe_load,
)

__all__ = [
    "CODE_DIR",
    "LOCKS",
    "MARKER",
    "NOTEBOOKS_DIR",
    "OUTPUTS_DIR",
    "OUTSIDE_KERNEL",
    "PARAMETERS_DIR",
    "PREVIOUS",
    "REPO_ROOT",
    "ROOT_ENV",
    "SAFE_NAME",
    "STUDY_FILES_FROM",
    "ConfigResult",
    "OutputLockedError",
    "RunFailedError",
    "RunTarget",
    "check_safe_name",
    "collect_environment",
    "die_with_parent",
    "list_configs",
    "list_studies",
    "locate",
    "lock_path",
    "progress_to_stderr",
    "run_all",
    "run_config",
    "run_digest",
    "source_tree_hash",
    "study_root",
    "unmet_requirements",
]

logger = logging.getLogger(__name__)

CODE_DIR: Path = Path(__file__).resolve().parents[1]
#: Environment variable naming a folder with ``notebooks/`` and ``parameters/`` (a clone).
ROOT_ENV = "MIBENCH_ROOT"


def _is_study_root(folder: Path) -> bool:
    return (folder / "notebooks").is_dir() and (folder / "parameters").is_dir()


def study_root() -> tuple[Path, Path, Path, str]:
    """Where the study files are: ``(root, notebooks dir, parameters dir, how it was found)``.

    Looked up in this order:

    1. ``$MIBENCH_ROOT``, a folder holding ``notebooks/`` and ``parameters/`` (an error if it does
       not);
    2. the source checkout this package runs from (a clone, or ``pip install -e .``);
    3. the copies installed with the package (``pip install .``: ``mibench_lib/_study/``), with
       the current directory as root (outputs, relative data paths and the cache live there).

    ``root`` is the notebooks' working directory, the base of relative paths in parameter files
    and the parent of ``outputs/``.

    Raises:
        FileNotFoundError: ``$MIBENCH_ROOT`` is set to a folder without both sub-folders.
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env).absolute()
        if not _is_study_root(root):
            raise FileNotFoundError(
                f"${ROOT_ENV}={env} must be a folder holding notebooks/ and parameters/ "
                "(a clone of mibench)"
            )
        return root, root / "notebooks", root / "parameters", f"${ROOT_ENV}"
    checkout = CODE_DIR.parent
    if _is_study_root(checkout):
        return checkout, checkout / "notebooks", checkout / "parameters", "the source checkout"
    bundled = CODE_DIR / "_study"
    return Path.cwd(), bundled / "notebooks", bundled / "parameters", "the installed package"


REPO_ROOT, NOTEBOOKS_DIR, PARAMETERS_DIR, STUDY_FILES_FROM = study_root()
OUTPUTS_DIR: Path = REPO_ROOT / "outputs"
MARKER = "_complete.json"
PREVIOUS = "_previous"
LOCKS = ".locks"
TINY = "tiny"
#: What a study or configuration name may look like: it becomes a folder name under ``out_root``.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

Status = Literal["ran", "skipped", "unavailable", "failed"]
_PATH_SUFFIXES = ("_root", "_path", "_weights")


class RunFailedError(RuntimeError):
    """A notebook cell raised, timed out or killed the kernel; the message names the notebook."""


class OutputLockedError(RunFailedError):
    """Another run holds the output folder's lock; the message names it and the lock file."""


@dataclass(frozen=True)
class ConfigResult:
    """What happened to one configuration in :func:`run_all`.

    Attributes:
        study: Notebook name.
        config: Parameter-file stem.
        params_file: The parameter file.
        status: ``"ran"``, ``"skipped"`` (already complete), ``"unavailable"`` (needs local data
            or a GPU this machine lacks, see :func:`unmet_requirements`) or ``"failed"``.
        out_dir: The output folder, or None when the run never started.
        detail: Why it was skipped or how it failed; empty after a plain run.
        wall_s: Seconds spent on it.
    """

    study: str
    config: str
    params_file: Path
    status: Status
    out_dir: Path | None
    detail: str = ""
    wall_s: float = 0.0


# ----------------------------------------------------------------------------- discovery


def list_studies(
    *, notebooks_dir: str | Path | None = None, parameters_dir: str | Path | None = None
) -> list[str]:
    """Names of the notebooks ``<notebooks_dir>/<study>.ipynb`` that have a parameters folder."""
    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    par_dir = Path(parameters_dir) if parameters_dir is not None else PARAMETERS_DIR
    return sorted(p.stem for p in nb_dir.glob("*.ipynb") if (par_dir / p.stem).is_dir())


def list_configs(
    study: str, *, parameters_dir: str | Path | None = None, include_tiny: bool = True
) -> list[str]:
    """Configuration names (file stems) of ``<parameters_dir>/<study>/*.yaml``, sorted.

    Files starting with ``_`` (shared fragments) or ``.`` (hidden, e.g. an editor's) are not
    configurations; ``tiny`` is left out unless ``include_tiny``.

    Raises:
        FileNotFoundError: The study has no parameters folder.
    """
    folder = (Path(parameters_dir) if parameters_dir is not None else PARAMETERS_DIR) / study
    if not folder.is_dir():
        raise FileNotFoundError(f"no parameters folder {display_path(folder)} for study {study!r}")
    return sorted(
        p.stem
        for p in folder.glob("*.yaml")
        if not p.name.startswith(("_", ".")) and (include_tiny or p.stem != TINY)
    )


def _names_path(key: str) -> bool:
    return key == "root" or key.endswith(_PATH_SUFFIXES)


def unmet_requirements(params: Mapping[str, Any], *, root: Path = REPO_ROOT) -> list[str]:
    """Why this machine cannot run a configuration; empty when it can.

    A configuration needs every local path it names in a key ``root``, ``*_root``, ``*_path`` or
    ``*_weights``, at the top level or one level down inside a dict value (reported as
    ``dataset_kwargs.root``); empty strings name nothing. Relative paths are taken from ``root``,
    the notebooks' working directory. ``device: cuda`` (or ``cuda:N``) needs CUDA.

    Args:
        params: A parameter file's values.
        root: Folder relative paths start from.

    Returns:
        One line per unmet requirement, e.g. ``"dataset_kwargs.root: data/celeba not found"``.
    """
    named: list[tuple[str, Any]] = []
    for key, value in params.items():
        if isinstance(value, dict):
            named += [
                (f"{key}.{k}", v) for k, v in value.items() if isinstance(k, str) and _names_path(k)
            ]
        elif _names_path(key):
            named.append((key, value))
    unmet = []
    for key, value in named:
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            if not (path if path.is_absolute() else root / path).exists():
                unmet.append(f"{key}: {value} not found")
    device = params.get("device")
    if isinstance(device, str) and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            unmet.append(f"device: {device} but CUDA is not available")
    return unmet


# ----------------------------------------------------------------------------- hashing


#: Modules that run outside the notebook's kernel (the command line, this runner, the report, the
#: cluster submission, side-by-side comparison, the explorer): they cannot change what a notebook computes, so
#: editing them leaves finished runs current. ``tests/studies/test_study_runner.py`` checks that no
#: study notebook imports them.
OUTSIDE_KERNEL: frozenset[str] = frozenset(
    f"studies/{name}.py"
    for name in ("__main__", "cli", "cluster", "compare", "explore", "report", "runner")
)


def source_tree_hash(root: str | Path = CODE_DIR) -> str:
    """SHA-256 over the relative paths and bytes of every ``*.py`` file below ``root``.

    Files named in :data:`OUTSIDE_KERNEL` (relative to ``root``) are left out.
    """
    base = Path(root)
    digest = hashlib.sha256()
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if (
            "__pycache__" in rel.parts
            or rel.parts[0] == "_study"
            or rel.as_posix() in OUTSIDE_KERNEL
        ):
            continue  # _study: the notebooks and parameters an installed package carries
        digest.update(path.relative_to(base).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _run_hash(notebook: Path, params: Mapping[str, Any], code_hash: str) -> dict[str, str]:
    # out_dir is left out so that moving the outputs folder does not invalidate finished runs.
    stable = {k: v for k, v in params.items() if k != "out_dir"}
    parts = {
        "notebook": hashlib.sha256(notebook.read_bytes()).hexdigest(),
        "parameters": hashlib.sha256(
            json.dumps(stable, sort_keys=True, default=str).encode()
        ).hexdigest(),
        "code": code_hash,
    }
    parts["hash"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def run_digest(target: RunTarget, params: Mapping[str, Any], code_hash: str) -> dict[str, str]:
    """The hashes a completed run of ``target`` with ``params`` records in its marker.

    ``{"notebook", "parameters", "code", "hash"}``: the notebook file, the injected parameters
    (``study``, ``config`` and the validated ``params``; ``out_dir`` is left out so that moving the
    outputs keeps runs current) and the source tree (``code_hash``, see :func:`source_tree_hash`).
    The runner skips a run whose marker holds the same ``hash``; the report and the cluster
    executor ask the same question through this function.
    """
    injected = {"study": target.study, "config": target.config, "out_dir": str(target.out_dir)}
    return _run_hash(target.notebook, {**injected, **params}, code_hash)


# ----------------------------------------------------------------------------- environment


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the repository, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError:  # git is not installed: no commit to record
        return None
    return done.stdout if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def collect_environment() -> dict[str, Any]:
    """Versions, platform, threads, CUDA device and git state of this process, as JSON values.

    ``git_commit`` and ``git_dirty`` are None outside a git checkout. ``torch_threads`` is what
    torch uses in this process; ``omp_num_threads`` is the variable the notebook kernel inherits.
    """
    import torch

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit is not None else None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "papermill": _version("papermill"),
        "mibench": _version("mibench"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda,
        "git_commit": commit.strip() if commit is not None else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


# ----------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunTarget:
    """Where a parameter file leads: its study notebook and output folder.

    Attributes:
        params_file: Absolute path of ``<parameters_dir>/<study>/<config>.yaml``.
        study: The parameter file's folder name, which is also the notebook's name.
        config: The parameter file's stem.
        notebook: Absolute path of ``<notebooks_dir>/<study>.ipynb``.
        out_dir: Absolute path of ``<out_root>/<study>/<config>``.
    """

    params_file: Path
    study: str
    config: str
    notebook: Path
    out_dir: Path


def locate(
    params_file: str | Path,
    *,
    notebooks_dir: str | Path | None = None,
    out_root: str | Path | None = None,
) -> RunTarget:
    """Find the notebook and the output folder of a parameter file.

    Raises:
        FileNotFoundError: The parameter file or its study notebook does not exist.
        ParameterError: The file is not a ``.yaml`` file, or its folder or stem is not a
            :data:`SAFE_NAME` (``..yaml`` would make the output folder ``<out_root>/<study>/.``).
    """
    given = Path(params_file)
    tried = [given.absolute()]
    if not given.is_absolute():  # outside a clone: the study files the package found
        tried += [PARAMETERS_DIR.parent / given, PARAMETERS_DIR / given]
    params_path = next((p for p in tried if p.is_file()), tried[0])
    if not params_path.is_file():
        where = ", ".join(display_path(p) for p in dict.fromkeys(tried))
        raise FileNotFoundError(
            f"parameter file {params_file} does not exist (looked at {where}; study files come "
            f"from {STUDY_FILES_FROM}: {display_path(PARAMETERS_DIR)})"
        )
    if params_path.suffix not in {".yaml", ".yml"}:
        raise ParameterError(f"{display_path(params_path)}: expected a .yaml parameter file")
    study, config = params_path.parent.name, params_path.stem
    check_safe_name(study, "study", params_path, "the parameter file's folder")
    check_safe_name(config, "configuration", params_path, "the parameter file's stem")
    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    notebook = (nb_dir / f"{study}.ipynb").absolute()
    if not notebook.is_file():
        raise FileNotFoundError(
            f"no notebook {display_path(notebook)} for parameter file "
            f"{display_path(params_path)} (the folder name is the study)"
        )
    out = (Path(out_root) if out_root is not None else OUTPUTS_DIR).absolute() / study / config
    return RunTarget(params_path, study, config, notebook, out)


def check_safe_name(
    name: str, what: str, params_file: str | Path | None = None, origin: str = ""
) -> None:
    """Refuse a study or configuration name that is not a plain folder name (see :data:`SAFE_NAME`).

    Args:
        name: The study or configuration name.
        what: ``"study"`` or ``"configuration"``, for the message.
        params_file: The parameter file it comes from, for the message.
        origin: Where the name comes from, for the message (``"the parameter file's stem"``).

    Raises:
        ParameterError: ``name`` is empty, ``.`` or ``..``, starts with a dot, dash or
            underscore, or holds anything but letters, digits, ``_``, ``.`` and ``-``.

    Example:
        >>> check_safe_name("celeba64", "configuration")
        >>> check_safe_name("..", "configuration")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ParameterError: configuration name '..' is not a plain folder name: ...
    """
    if SAFE_NAME.fullmatch(name) is None:
        where = f"{display_path(params_file)}: " if params_file is not None else ""
        origin = f" ({origin})" if origin else ""
        raise ParameterError(
            f"{where}{what} name {name!r}{origin} is not a plain folder name: use letters, "
            "digits, '_', '.' and '-', starting with a letter or digit"
        )


def lock_path(out: Path) -> Path:
    """The lock file of the output folder ``<out_root>/<study>/<config>``.

    It lives in ``<out_root>/.locks/<study>/<config>.lock``: outside the folder, which a run may
    move aside to ``_previous`` while holding the lock.
    """
    return out.parent.parent / LOCKS / out.parent.name / f"{out.name}.lock"


def _holder(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
    except (OSError, ValueError):
        return "another mibench process"
    return (
        f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
        f"{info.get('command', '')}".rstrip(": ")
    )


@contextlib.contextmanager
def _output_lock(out: Path, study: str, config: str, timeout_s: float | None) -> Iterator[None]:
    """Hold the output folder's lock; refuse (``timeout_s=0``) or wait (seconds; None: forever)."""
    from filelock import FileLock, Timeout

    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = path.with_suffix(".owner.json")
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout_s is not None and timeout_s <= 0:
            raise OutputLockedError(
                f"{study}/{config}: the output folder {display_path(out)} is in use by "
                f"{_holder(owner)} (lock {display_path(path)}); wait for that run to finish "
                "(or pass --wait), or choose another --out-root"
            ) from None
        logger.info("waiting for %s/%s: %s holds %s", study, config, _holder(owner), path)
        try:
            lock.acquire(timeout=-1 if timeout_s is None else timeout_s)
        except Timeout:
            raise OutputLockedError(
                f"{study}/{config}: the output folder {display_path(out)} is still in use by "
                f"{_holder(owner)} after {timeout_s:g} s (lock {display_path(path)})"
            ) from None
    try:
        _write_json(
            owner,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _now(),
                "command": " ".join(sys.argv),
            },
        )
        yield
    finally:
        lock.release()


def _previous_parameters(out: Path) -> dict[str, Any] | None:
    path = out / "parameters.yaml"
    if not path.is_file():
        return None
    data = safe_load(path.read_text())
    return data if isinstance(data, dict) else None


def _move_aside(out: Path) -> None:
    """Move ``<out_root>/<study>/<config>`` to ``<out_root>/_previous/<study>/<config>``.

    Outside the study folder, so summaries globbing ``<study>/*/`` never read stale results.
    Only one previous generation is kept.
    """
    previous = out.parent.parent / PREVIOUS / out.parent.name / out.name
    if previous.exists():
        shutil.rmtree(previous)
    previous.parent.mkdir(parents=True, exist_ok=True)
    out.rename(previous)
    logger.info("moved the previous outputs of %s to %s", out.name, display_path(previous))


def _run_config(
    params_file: str | Path,
    *,
    overrides: Mapping[str, Any] | None,
    out_root: str | Path | None,
    notebooks_dir: str | Path | None,
    kernel_name: str,
    timeout_s: int | None,
    progress: bool,
    force: bool,
    code_dir: str | Path | None,
    lock_timeout_s: float | None = 0,
) -> tuple[Path, bool]:
    """:func:`run_config`, also returning whether the run was skipped as complete."""
    target = locate(params_file, notebooks_dir=notebooks_dir, out_root=out_root)
    params = load_parameters(target.params_file, target.notebook, overrides=overrides)
    with _output_lock(target.out_dir, target.study, target.config, lock_timeout_s):
        return _run_locked(
            target,
            params,
            kernel_name=kernel_name,
            timeout_s=timeout_s,
            progress=progress,
            force=force,
            code_dir=code_dir,
        )


def _run_locked(
    target: RunTarget,
    params: Mapping[str, Any],
    *,
    kernel_name: str,
    timeout_s: int | None,
    progress: bool,
    force: bool,
    code_dir: str | Path | None,
) -> tuple[Path, bool]:
    """The part of :func:`_run_config` that needs the output folder to itself."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    study, config, notebook, out = target.study, target.config, target.notebook, target.out_dir
    full = {"study": study, "config": config, "out_dir": str(out), **params}
    digest = run_digest(target, params, source_tree_hash(code_dir if code_dir else CODE_DIR))

    marker = out / MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded.get("hash") == digest["hash"] and not force:
            logger.info("skipped %s/%s: complete in %s", study, config, display_path(out))
            return out, True
        _move_aside(out)
    elif out.is_dir() and (force or _previous_parameters(out) not in (None, full)):
        _move_aside(out)

    out.mkdir(parents=True, exist_ok=True)
    (out / "parameters.yaml").write_text(safe_dump(full))
    env = collect_environment()
    env["kernel_name"] = kernel_name
    env["started"] = _now()
    env["finished"] = None
    env["wall_s"] = None
    env["status"] = "running"
    _write_json(out / "environment.json", env)

    executed = out / f"{study}.ipynb"
    logger.info("running %s/%s -> %s", study, config, display_path(out))
    start = time.perf_counter()
    status = "failed"
    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level
    # Parameters were checked above, more strictly than papermill does; its warnings about lines
    # its pattern cannot read ("unknown parameter") would only be false alarms here.
    papermill_log.setLevel(logging.ERROR)
    previous_headless = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"  # inherited by the kernel: text progress bars, no widgets
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=full,
            kernel_name=kernel_name,
            cwd=str(REPO_ROOT),
            progress_bar=progress,
            execution_timeout=timeout_s,
        )
        status = "complete"
    except PapermillExecutionError as err:
        raise RunFailedError(
            f"{study}/{config} failed in cell {err.exec_count}: {err.ename}: {err.evalue}; "
            f"see the executed notebook {display_path(executed)}"
        ) from err
    except (CellTimeoutError, DeadKernelError) as err:
        raise RunFailedError(
            f"{study}/{config} stopped: {type(err).__name__}: {err}; "
            f"see the executed notebook {display_path(executed)}"
        ) from err
    finally:
        papermill_log.setLevel(level)
        if previous_headless is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = previous_headless
        wall = time.perf_counter() - start
        env.update(finished=_now(), wall_s=round(wall, 3), status=status)
        _write_json(out / "environment.json", env)

    _write_json(marker, {**digest, "finished": env["finished"], "wall_s": env["wall_s"]})
    logger.info("finished %s/%s in %.1f s", study, config, wall)
    return out, False


def run_config(
    params_file: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    out_root: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    kernel_name: str = "python3",
    timeout_s: int | None = None,
    progress: bool = True,
    force: bool = False,
    code_dir: str | Path | None = None,
    lock_timeout_s: float | None = 0,
) -> Path:
    """Validate one parameter file, execute its study notebook and return the output folder.

    The study is the name of the file's folder and the configuration its stem:
    ``parameters/predictive_power/default.yaml`` runs ``notebooks/predictive_power.ipynb`` into
    ``<out_root>/predictive_power/default/``. The notebook runs with the repository root as its
    working directory. See the module docstring for what the folder holds and when a run is skipped
    or resumed.

    Args:
        params_file: ``<parameters_dir>/<study>/<config>.yaml``.
        overrides: Values replacing those of the file (``-p key value`` on the command line);
            checked against the notebook like the file.
        out_root: Folder holding ``<study>/<config>/``; default ``<repo>/outputs``.
        notebooks_dir: Folder holding ``<study>.ipynb``; default ``<repo>/notebooks``.
        kernel_name: Jupyter kernel to execute with.
        timeout_s: Limit per cell in seconds; None for none.
        progress: Show papermill's cell progress bar.
        force: Run even if a matching completion marker exists; the old folder is moved to
            ``<out_root>/_previous/<study>/<config>``.
        code_dir: Source tree whose hash enters the completion marker; default ``mibench_lib``.
        lock_timeout_s: When another run holds the output folder: 0 refuses at once, a positive
            number waits that many seconds, None waits until it is free.

    Returns:
        The absolute output folder ``<out_root>/<study>/<config>``.

    Raises:
        FileNotFoundError: The parameter file or the notebook does not exist.
        ParameterError: The parameters do not fit the notebook (nothing is written then).
        RunFailedError: A cell raised or timed out, or the kernel died; the message gives the path
            of the partially executed notebook and no completion marker is written.
        OutputLockedError: Another run holds the output folder (a :class:`RunFailedError`).
    """
    out, _ = _run_config(
        params_file,
        overrides=overrides,
        out_root=out_root,
        notebooks_dir=notebooks_dir,
        kernel_name=kernel_name,
        timeout_s=timeout_s,
        progress=progress,
        force=force,
        code_dir=code_dir,
        lock_timeout_s=lock_timeout_s,
    )
    return out


# ----------------------------------------------------------------------------- process lifetime

#: Signal the Linux kernel sends a worker when its parent dies (see :func:`die_with_parent`).
PARENT_DEATH_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_EXIT = 70
"""Exit status of a worker that ended because its parent had ended."""


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(ORPHAN_EXIT)
        time.sleep(poll_s)


def _on_parent_death(signum: int, frame: object) -> None:
    # Linux also sends it when the *thread* that started this process ends while the process
    # lives on (the worker is then handed to a sibling thread): exit only if the parent is gone.
    if os.getppid() != _WATCHED_PARENT:
        os._exit(ORPHAN_EXIT)


_WATCHED_PARENT = -1


def _set_parent_death_signal() -> bool:
    """Ask Linux to send :data:`PARENT_DEATH_SIGNAL` when the parent dies; False if it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False  # Python signal handlers can only be set from the main thread
    signal.signal(PARENT_DEATH_SIGNAL, _on_parent_death)
    return prctl(_PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) == 0


def die_with_parent(parent_pid: int | None = None, *, poll_s: float = 1.0) -> None:
    """End this process as soon as its parent process ends, however the parent ended.

    For worker processes (study pool workers, ``run-all`` jobs): a parent killed with SIGKILL runs
    no cleanup, and a worker blocked on its task queue would otherwise wait forever, holding its
    memory. On Linux the kernel signals the worker at once (``prctl(PR_SET_PDEATHSIG)``); on every
    platform a daemon thread also checks ``os.getppid()`` every ``poll_s`` seconds. Either way the
    worker leaves with ``os._exit`` (status :data:`ORPHAN_EXIT`): its work is lost, as the parent
    that wanted it is gone.

    Call it first thing in the child, with the parent's pid as the parent saw it
    (``os.getpid()`` passed down), so that a parent that died before the call is noticed too.

    Args:
        parent_pid: The pid to outlive; None takes the current ``os.getppid()``.
        poll_s: Seconds between checks of the watchdog thread.
    """
    global _WATCHED_PARENT
    parent = os.getppid() if parent_pid is None else int(parent_pid)
    _WATCHED_PARENT = parent
    _set_parent_death_signal()
    threading.Thread(
        target=_watch_parent, args=(parent, poll_s), name="mibench-parent-watch", daemon=True
    ).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(ORPHAN_EXIT)


# ----------------------------------------------------------------------------- many runs


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    """Give each parallel job an equal share of the cores; kernels inherit these variables.

    The job ends with the ``mibench`` process that started it; its notebook kernel ends with it
    in turn (ipykernel watches the pid in ``JPY_PARENT_PID``, which jupyter_client sets).
    """
    if parent_pid is not None:
        die_with_parent(parent_pid)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def _run_one(
    params_file: Path,
    study: str,
    config: str,
    options: dict[str, Any],
) -> ConfigResult:
    """One job of :func:`run_all`: every error becomes a ``failed`` result reported at the end."""
    start = time.perf_counter()
    try:
        out, skipped = _run_config(params_file, overrides=None, progress=False, **options)
    except Exception as err:  # reported with the others once every job has finished
        return ConfigResult(
            study,
            config,
            params_file,
            "failed",
            None,
            detail=f"{type(err).__name__}: {err}",
            wall_s=time.perf_counter() - start,
        )
    return ConfigResult(
        study,
        config,
        params_file,
        "skipped" if skipped else "ran",
        out,
        detail="already complete" if skipped else "",
        wall_s=time.perf_counter() - start,
    )


@contextlib.contextmanager
def progress_to_stderr(fmt: str = "mibench: %(message)s") -> Iterator[None]:
    """Send the runner's progress lines (running, finished, skipped) to stderr while inside."""
    log = logging.getLogger("mibench_lib.studies")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


def _log(result: ConfigResult) -> ConfigResult:
    logger.info(
        "%s/%s: %s in %.1f s %s",
        result.study,
        result.config,
        result.status,
        result.wall_s,
        result.detail,
    )
    return result


def run_all(
    *,
    study: str | None = None,
    jobs: int = 1,
    out_root: str | Path | None = None,
    include_tiny: bool = False,
    force: bool = False,
    notebooks_dir: str | Path | None = None,
    parameters_dir: str | Path | None = None,
    kernel_name: str = "python3",
    timeout_s: int | None = None,
    code_dir: str | Path | None = None,
    lock_timeout_s: float | None = 0,
) -> list[ConfigResult]:
    """Run every configuration of one study (or of all studies), ``jobs`` at a time.

    Completed configurations are skipped, configurations this machine cannot run are reported as
    ``unavailable`` (see :func:`unmet_requirements`), and a failing one does not stop the others:
    check the ``status`` of the results. With ``jobs > 1`` each job is a separate process whose
    kernel gets ``cpu_count // jobs`` threads.

    Args:
        study: Only this study; None for every study of :func:`list_studies`.
        jobs: Configurations run at the same time (at least 1).
        out_root: As in :func:`run_config`.
        include_tiny: Also run ``tiny.yaml``.
        force: Re-run completed configurations.
        notebooks_dir: As in :func:`run_config`.
        parameters_dir: Folder holding ``<study>/<config>.yaml``; default ``<repo>/parameters``.
        kernel_name: As in :func:`run_config`.
        timeout_s: As in :func:`run_config`.
        code_dir: As in :func:`run_config`.
        lock_timeout_s: As in :func:`run_config`: a configuration another run is writing is
            reported as ``failed`` (0), or waited for.

    Returns:
        One :class:`ConfigResult` per configuration, in study and configuration order.

    Raises:
        ValueError: ``jobs`` is below 1, or ``study`` is not a known study.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    par_dir = Path(parameters_dir) if parameters_dir is not None else PARAMETERS_DIR
    known = list_studies(notebooks_dir=notebooks_dir, parameters_dir=par_dir)
    if study is not None and study not in known:
        raise ValueError(f"unknown study {study!r}; known studies: {', '.join(known) or 'none'}")
    studies = [study] if study is not None else known

    results: list[ConfigResult | None] = []
    todo: list[tuple[int, Path, str, str]] = []
    for name in studies:
        for config in list_configs(name, parameters_dir=par_dir, include_tiny=include_tiny):
            path = par_dir / name / f"{config}.yaml"
            try:
                unmet = unmet_requirements(read_parameter_file(path))
            except ParameterError as err:
                # The run would fail the same way; report it with the others.
                results.append(ConfigResult(name, config, path, "failed", None, detail=str(err)))
                continue
            if unmet:
                detail = "; ".join(unmet)
                results.append(ConfigResult(name, config, path, "unavailable", None, detail))
                logger.info("skipped %s/%s: %s", name, config, detail)
                continue
            todo.append((len(results), path, name, config))
            results.append(None)

    options = {
        "out_root": out_root,
        "notebooks_dir": notebooks_dir,
        "kernel_name": kernel_name,
        "timeout_s": timeout_s,
        "force": force,
        "code_dir": code_dir,
        "lock_timeout_s": lock_timeout_s,
    }
    if jobs == 1 or len(todo) <= 1:
        for index, path, name, config in todo:
            results[index] = _log(_run_one(path, name, config, options))
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(todo)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads, os.getpid()),
        ) as pool:
            futures = {
                pool.submit(_run_one, path, name, config, options): index
                for index, path, name, config in todo
            }
            for future in as_completed(futures):
                results[futures[future]] = _log(future.result())
    return [r for r in results if r is not None]
