"""Run every configuration as a submitit job: on this machine or on a Slurm cluster.

``mibench run-all --executor local`` and ``--executor slurm`` run the configurations that
:func:`mibench_lib.studies.runner.run_all` would run, one submitit job per configuration. Each
job calls :func:`mibench_lib.studies.runner.run_config` with the arguments ``run_all`` passes
(output root, ``force``, kernel, cell timeout, lock timeout), in a fresh Python process, and
returns a :class:`~mibench_lib.studies.runner.ConfigResult`; a failed run fails the job. Every
folder the job needs travels in its arguments (the parameter file, the notebooks folder, the
output root, the source tree hashed into the completion marker), so a job never depends on the
submitting process's state.

- Configurations already complete (same completion test as the runner, :func:`is_complete`)
  are reported as ``skipped`` without a job. The runner checks again inside the job, under the
  output folder's lock, so a configuration finished in between is skipped there too.
- ``local`` runs at most ``jobs`` configurations at a time on this machine and, like ``run_all``,
  reports configurations this machine cannot run (see
  :func:`~mibench_lib.studies.runner.unmet_requirements`) as ``unavailable``. ``slurm`` submits
  them all as one job array: the compute nodes hold the data and the GPUs the login node lacks.
  Each job checks the requirements on its own node and fails with the reason when one is unmet.
- submitit keeps each job's pickled call and result and its logs in ``<out_root>/.submitit/``:
  ``<job id>_0_log.out`` and ``<job id>_0_log.err`` (for an array the job id is
  ``<array id>_<index>``). A failed configuration's status line names its ``.err`` log.
- Resuming is the runner's: a configuration interrupted or failed in a job has no completion
  marker, so submitting again runs it again (a notebook that records finished rows picks up
  where it stopped) while complete ones are skipped. Rows never depend on the node that ran them.

The artifact cache and the runner's output locks are :class:`filelock.FileLock` files, i.e.
``flock(2)`` locks; :func:`check_shared_locks` checks that they exclude a second process in a
folder and reads the folder's mount options for what makes them local to one node (NFS
``nolock`` or ``local_lock=flock|all``, Lustre ``localflock`` or ``noflock``, a local
filesystem). ``run-all --executor slurm`` runs it on the output root and the cache folders first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mibench_lib.studies import runner
from mibench_lib.studies.params import (
    ParameterError,
    display_path,
    load_parameters,
    read_parameter_file,
    safe_load,
)
from mibench_lib.studies.runner import ConfigResult, RunFailedError

__all__ = [
    "SUBMITIT_DIR",
    "ClusterConfig",
    "ClusterConfigError",
    "ClusterRun",
    "LockCheck",
    "Submission",
    "SubmissionError",
    "UnmetRequirementsError",
    "cache_folders",
    "check_shared_locks",
    "is_complete",
    "load_cluster_config",
    "run_job",
    "submit_all",
]

logger = logging.getLogger(__name__)

#: Folder of submitit's job files and logs, inside the output root.
SUBMITIT_DIR = ".submitit"
#: Wall-clock limit of a ``local`` job when none is given: one week.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
Executor = Literal["local", "slurm"]


class ClusterConfigError(ParameterError):
    """A cluster file or option is not valid; the message names the file and the field."""


class SubmissionError(RuntimeError):
    """submitit could not submit the jobs (``sbatch`` refused them, or could not be run)."""


class UnmetRequirementsError(RunFailedError):
    """The node running a job lacks a folder, file or GPU the configuration names."""


# ----------------------------------------------------------------------------- cluster options


class ClusterConfig(BaseModel):
    """Slurm resources of every job of the array (submitit's parameter names).

    Attributes:
        slurm_partition: Partition (``--partition``); None: the cluster's default.
        timeout_min: Wall-clock limit of each job in minutes (``--time``). Required for Slurm
            (submitit would otherwise ask for 5 minutes); for ``local`` jobs it defaults to
            :data:`LOCAL_TIMEOUT_MIN`.
        gpus_per_node: GPUs of each job (``--gpus-per-node``).
        mem_gb: Memory of each job in GB (``--mem``).
        cpus_per_task: CPU cores of each job (``--cpus-per-task``); the job's kernel gets as many
            threads.
        slurm_array_parallelism: Jobs of the array running at the same time (``--array=...%N``).
        slurm_additional_parameters: Further ``#SBATCH`` options, e.g. ``{account: proj,
            qos: normal, constraint: a100}``.
        slurm_setup: Shell lines run before the job, e.g. ``["module load cuda/12.4"]``.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    slurm_partition: str | None = None
    timeout_min: int | None = Field(default=None, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=0)
    mem_gb: float | None = Field(default=None, gt=0)
    cpus_per_task: int | None = Field(default=None, ge=1)
    slurm_array_parallelism: int | None = Field(default=None, ge=1)
    slurm_additional_parameters: dict[str, str | int | float | bool] | None = None
    slurm_setup: list[str] | None = None

    def executor_parameters(self) -> dict[str, Any]:
        """The values set, as keyword arguments of ``submitit.AutoExecutor.update_parameters``."""
        return self.model_dump(exclude_none=True)


_EXPECTED = {
    "int_type": "int",
    "float_type": "float",
    "string_type": "str",
    "bool_type": "bool",
    "list_type": "list",
    "dict_type": "dict",
}


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _validate(values: Mapping[str, Any], source: str) -> ClusterConfig:
    try:
        return ClusterConfig.model_validate(dict(values))
    except ValidationError as err:
        allowed = ", ".join(ClusterConfig.model_fields)
        messages = []
        for e in err.errors():
            where = ".".join(str(part) for part in e["loc"])
            if e["type"] == "extra_forbidden":
                messages.append(f"unknown key '{where}'; allowed: {allowed}")
            elif (expected := _EXPECTED.get(e["type"])) is not None:
                messages.append(f"field '{where}' expects {expected}, got {_describe(e['input'])}")
            else:
                messages.append(f"field '{where}': {e['msg']}, got {_describe(e['input'])}")
        raise ClusterConfigError(f"{source}: {'; '.join(messages)}") from err


def load_cluster_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ClusterConfig:
    """Read a cluster file (see ``docs/cluster.example.yaml``), then apply ``overrides``.

    Args:
        path: YAML mapping of :class:`ClusterConfig` fields; None for none.
        overrides: Fields set on the command line; None values leave the file's.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ClusterConfigError: The file does not parse or is not a mapping, or a key is unknown or a
            value of the wrong type (the message names the file and each field).
    """
    values: dict[str, Any] = {}
    source = "cluster options"
    if path is not None:
        p = Path(path)
        source = display_path(p)
        if not p.is_file():
            raise FileNotFoundError(f"cluster file {source} does not exist")
        try:
            data = safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, ValueError, OverflowError) as err:
            raise ClusterConfigError(f"{source}: not valid YAML: {err}") from err
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ClusterConfigError(
                f"{source}: expected a mapping of cluster options, got {type(data).__name__}"
            )
        values.update(data)
    set_here = {k: v for k, v in (overrides or {}).items() if v is not None}
    if set_here:
        source = f"{source} with the command-line options" if path is not None else source
    values.update(set_here)
    return _validate(values, source)


# ----------------------------------------------------------------------------- completion


def is_complete(
    params_file: str | Path,
    *,
    notebooks_dir: str | Path | None = None,
    out_root: str | Path | None = None,
    code_dir: str | Path | None = None,
    code_hash: str | None = None,
) -> bool:
    """Whether ``run_config`` would skip this parameter file as complete.

    The runner's own test: the output folder's completion marker holds the hash of the notebook,
    the injected parameters and the source tree that this run would have.

    Args:
        params_file: ``<parameters_dir>/<study>/<config>.yaml``.
        notebooks_dir: As in :func:`~mibench_lib.studies.runner.run_config`.
        out_root: As in :func:`~mibench_lib.studies.runner.run_config`.
        code_dir: As in :func:`~mibench_lib.studies.runner.run_config`.
        code_hash: ``source_tree_hash(code_dir)`` when already computed.

    Raises:
        FileNotFoundError: The parameter file or its notebook does not exist.
        ParameterError: The parameters do not fit the notebook.
        ValueError: The completion marker is not JSON (the message names it).
    """
    target = runner.locate(params_file, notebooks_dir=notebooks_dir, out_root=out_root)
    marker = target.out_dir / runner.MARKER
    if not marker.is_file():
        return False
    params = load_parameters(target.params_file, target.notebook)
    if code_hash is None:
        code_hash = runner.source_tree_hash(code_dir if code_dir else runner.CODE_DIR)
    digest = runner.run_digest(target, params, code_hash)
    try:
        recorded = json.loads(marker.read_text())
    except ValueError as err:
        raise ValueError(
            f"{display_path(marker)}: unreadable completion marker ({err}); delete it to run "
            "the configuration again"
        ) from err
    return isinstance(recorded, dict) and recorded.get("hash") == digest["hash"]


# ----------------------------------------------------------------------------- the job


def _set_environment(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def run_job(
    params_file: str,
    *,
    notebooks_dir: str,
    out_root: str,
    code_dir: str,
    kernel_name: str = "python3",
    timeout_s: int | None = None,
    force: bool = False,
    lock_timeout_s: float | None = 0,
    threads: int | None = None,
    environment: Mapping[str, str | None] | None = None,
) -> ConfigResult:
    """What one submitit job runs: check the node, then ``run_config`` one parameter file.

    Args:
        params_file: Absolute ``<parameters_dir>/<study>/<config>.yaml``.
        notebooks_dir: Folder holding ``<study>.ipynb``.
        out_root: Folder holding ``<study>/<config>/``.
        code_dir: Source tree hashed into the completion marker.
        kernel_name: As in :func:`~mibench_lib.studies.runner.run_config`.
        timeout_s: As in :func:`~mibench_lib.studies.runner.run_config`.
        force: As in :func:`~mibench_lib.studies.runner.run_config`.
        lock_timeout_s: As in :func:`~mibench_lib.studies.runner.run_config`.
        threads: ``OMP_NUM_THREADS`` (and MKL's, OpenBLAS's) of the kernel; None keeps the
            inherited value, or takes ``SLURM_CPUS_PER_TASK`` on a Slurm node when none is set.
        environment: Variables to set (None: unset) first, e.g. the submitting process's
            ``CUDA_VISIBLE_DEVICES``, which submitit's local executor replaces.

    Returns:
        ``ran``, or ``skipped`` when the output folder was already complete.

    Raises:
        UnmetRequirementsError: This node lacks a path or the GPU the configuration names.
        RunFailedError: The notebook failed (the message names the executed notebook), or
            another run holds the output folder.
        ParameterError: The parameters do not fit the notebook.
    """
    run_options = {
        "notebooks_dir": notebooks_dir,
        "out_root": out_root,
        "code_dir": code_dir,
        "kernel_name": kernel_name,
        "timeout_s": timeout_s,
        "lock_timeout_s": lock_timeout_s,
    }
    _set_environment(environment or {})
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        threads = int(slurm_cpus) if slurm_cpus.isdigit() else None
    if threads is not None:
        _set_environment({var: str(threads) for var in _THREAD_VARS})
    path = Path(params_file)
    with runner.progress_to_stderr("mibench: %(asctime)s %(message)s"):
        return _run_job(path, force=force, run_options=run_options)


def _run_job(path: Path, *, force: bool, run_options: Mapping[str, Any]) -> ConfigResult:
    study, config = path.parent.name, path.stem
    unmet = runner.unmet_requirements(read_parameter_file(path))
    if unmet:
        raise UnmetRequirementsError(
            f"{study}/{config} cannot run on {socket.gethostname()}: {'; '.join(unmet)}"
        )
    start = time.perf_counter()
    folders = {k: run_options[k] for k in ("notebooks_dir", "out_root", "code_dir")}
    skipped = not force and is_complete(path, **folders)
    out = runner.run_config(path, progress=False, force=force, **run_options)
    return ConfigResult(
        study,
        config,
        path,
        "skipped" if skipped else "ran",
        out,
        detail="already complete" if skipped else "",
        wall_s=time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------- submission


@dataclass(frozen=True)
class Submission:
    """One configuration submitted as a job.

    Attributes:
        study: Notebook name.
        config: Parameter-file stem.
        job_id: submitit's job id (``<array id>_<index>`` in a Slurm array; the controller's pid
            for ``local``).
        stdout: The job's output log.
        stderr: The job's error log (tracebacks land here).
    """

    study: str
    config: str
    job_id: str
    stdout: Path
    stderr: Path


@dataclass(frozen=True)
class ClusterRun:
    """What :func:`submit_all` did.

    Attributes:
        results: One result per configuration, in study and configuration order; without
            waiting, only those settled before submission (skipped, unavailable, failed).
        submitted: The jobs, in submission order.
        folder: submitit's folder ``<out_root>/.submitit``.
        lock_checks: The checks of :func:`check_shared_locks` run before a Slurm submission.
    """

    results: list[ConfigResult]
    submitted: list[Submission] = field(default_factory=list)
    folder: Path | None = None
    lock_checks: list[LockCheck] = field(default_factory=list)


@dataclass(frozen=True)
class _Todo:
    index: int
    params_file: Path
    study: str
    config: str


def _plan(
    *,
    study: str | None,
    par_dir: Path,
    notebooks_dir: Path,
    out_root: Path,
    code_dir: Path,
    include_tiny: bool,
    force: bool,
    filter_unavailable: bool,
) -> tuple[list[ConfigResult | None], list[_Todo]]:
    """Results settled before submission, and the configurations to submit."""
    known = runner.list_studies(notebooks_dir=notebooks_dir, parameters_dir=par_dir)
    if study is not None and study not in known:
        raise ValueError(f"unknown study {study!r}; known studies: {', '.join(known) or 'none'}")
    code_hash = runner.source_tree_hash(code_dir)
    results: list[ConfigResult | None] = []
    todo: list[_Todo] = []
    for name in [study] if study is not None else known:
        for config in runner.list_configs(name, parameters_dir=par_dir, include_tiny=include_tiny):
            path = par_dir / name / f"{config}.yaml"
            try:
                # Like run_all, a configuration this machine cannot run is unavailable here before
                # anything else; on Slurm the node checks instead.
                unmet = runner.unmet_requirements(read_parameter_file(path))
                if unmet and filter_unavailable:
                    detail = "; ".join(unmet)
                    results.append(ConfigResult(name, config, path, "unavailable", None, detail))
                    logger.info("skipped %s/%s: %s", name, config, detail)
                    continue
                # Checked here, not after waiting in the queue: a typo fails at once.
                target = runner.locate(path, notebooks_dir=notebooks_dir, out_root=out_root)
                load_parameters(target.params_file, target.notebook)
                complete = not force and is_complete(
                    path, notebooks_dir=notebooks_dir, out_root=out_root, code_hash=code_hash
                )
            except ValueError as err:  # ParameterError or an unreadable marker: the run would fail
                results.append(ConfigResult(name, config, path, "failed", None, detail=str(err)))
                continue
            if complete:
                out = out_root / name / config
                results.append(ConfigResult(name, config, path, "skipped", out, "already complete"))
                logger.info("skipped %s/%s: complete in %s", name, config, display_path(out))
                continue
            todo.append(_Todo(len(results), path, name, config))
            results.append(None)
    return results, todo


_TRACE = re.compile(r"with trace:\n-{22}\n(?P<trace>.*)\n-{22}\nYou can check", re.DOTALL)


def _failure_reason(err: Exception) -> str:
    """The exception line of a failed job's traceback, or the first lines of submitit's message.

    submitit's :class:`~submitit.core.utils.FailedJobError` embeds the job's traceback between
    two lines of 22 dashes; its last line is the exception, as ``module.Class: message``.
    """
    text = str(err)
    found = _TRACE.search(text)
    if found is not None:
        lines = [line for line in found["trace"].splitlines() if line.strip()]
        if lines:
            # "mibench_lib.studies.runner.RunFailedError: ..." -> "RunFailedError: ..."
            return re.sub(r"^(?:\w+\.)+(?=\w+: )", "", lines[-1])
    return " ".join(text.splitlines()[:2]) or type(err).__name__


def _collect(job: Any, todo: _Todo) -> ConfigResult:
    """The job's result, or a ``failed`` result naming its error log."""
    from submitit.core.utils import UncompletedJobError

    log = display_path(job.paths.stderr)
    try:
        result = job.result()
    except UncompletedJobError as err:  # FailedJobError too: reported with the others
        detail = f"{_failure_reason(err)}; log: {log}"
        return ConfigResult(todo.study, todo.config, todo.params_file, "failed", None, detail)
    if not isinstance(result, ConfigResult):
        detail = f"job returned {type(result).__name__}, not a ConfigResult; log: {log}"
        return ConfigResult(todo.study, todo.config, todo.params_file, "failed", None, detail)
    return result


def _submission(job: Any, todo: _Todo) -> Submission:
    return Submission(todo.study, todo.config, str(job.job_id), job.paths.stdout, job.paths.stderr)


def _make_executor(kind: Executor, folder: Path) -> Any:
    import submitit

    return submitit.AutoExecutor(folder=folder, cluster=kind)


def cache_folders(configs: Iterable[Path] = ()) -> list[Path]:
    """The artifact cache folders the notebooks of these parameter files would use.

    ``$MIBENCH_CACHE`` (else ``.mibench-cache``), and every non-empty ``cache_dir`` of the files,
    relative paths taken from the repository root, the notebooks' working directory.
    """
    from mibench_lib.cache import default_cache_dir

    folders = [default_cache_dir()]
    for path in configs:
        value = read_parameter_file(path).get("cache_dir")
        if isinstance(value, str) and value:
            folders.append(Path(value).expanduser())
    resolved = [p if p.is_absolute() else runner.REPO_ROOT / p for p in folders]
    return list(dict.fromkeys(p.absolute() for p in resolved))


def submit_all(
    executor: Executor,
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
    cluster: ClusterConfig | None = None,
    wait: bool = True,
    poll_s: float | None = None,
    check_locks: bool | None = None,
) -> ClusterRun:
    """Run every configuration of one study (or of all) as submitit jobs.

    Args:
        executor: ``"local"`` (this machine, ``jobs`` at a time) or ``"slurm"`` (one job array).
        study: Only this study; None for every study.
        jobs: ``local``: configurations running at a time, each kernel getting
            ``cpu_count // jobs`` threads when above 1. ``slurm``: ignored (see
            ``cluster.slurm_array_parallelism``).
        out_root: As in :func:`~mibench_lib.studies.runner.run_all`.
        include_tiny: As in :func:`~mibench_lib.studies.runner.run_all`.
        force: As in :func:`~mibench_lib.studies.runner.run_all`.
        notebooks_dir: As in :func:`~mibench_lib.studies.runner.run_all`.
        parameters_dir: As in :func:`~mibench_lib.studies.runner.run_all`.
        kernel_name: As in :func:`~mibench_lib.studies.runner.run_all`.
        timeout_s: As in :func:`~mibench_lib.studies.runner.run_all` (per cell).
        code_dir: As in :func:`~mibench_lib.studies.runner.run_all`.
        lock_timeout_s: As in :func:`~mibench_lib.studies.runner.run_all`.
        cluster: Resources of each job; ``timeout_min`` is required for Slurm.
        wait: Wait for every job and return its result; False returns once submitted.
        poll_s: Seconds between checks of the jobs; default 1 (``local``) or 15 (``slurm``).
        check_locks: Run :func:`check_shared_locks` on the output root and the cache folders
            before submitting (logged as warnings); default True for ``slurm``.

    Returns:
        The results, the submitted jobs and the lock checks.

    Raises:
        ValueError: ``jobs`` is below 1, ``study`` is unknown, or ``executor`` is neither.
        ClusterConfigError: Slurm without ``timeout_min``.
        SubmissionError: submitit could not submit (e.g. ``sbatch`` refused).
    """
    if executor not in ("local", "slurm"):
        raise ValueError(f"executor must be 'local' or 'slurm', got {executor!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    cluster = cluster if cluster is not None else ClusterConfig()
    if executor == "slurm" and cluster.timeout_min is None:
        raise ClusterConfigError(
            "Slurm jobs need a time limit: pass --time-min MINUTES or set timeout_min in the "
            "cluster file (submitit would otherwise ask for 5 minutes)"
        )
    # Defaults are read now, in this process: a job's process only sees its arguments.
    nb_dir = Path(notebooks_dir if notebooks_dir is not None else runner.NOTEBOOKS_DIR).absolute()
    par_dir = Path(
        parameters_dir if parameters_dir is not None else runner.PARAMETERS_DIR
    ).absolute()
    root = Path(out_root if out_root is not None else runner.OUTPUTS_DIR).absolute()
    code = Path(code_dir if code_dir is not None else runner.CODE_DIR).absolute()
    results, todo = _plan(
        study=study,
        par_dir=par_dir,
        notebooks_dir=nb_dir,
        out_root=root,
        code_dir=code,
        include_tiny=include_tiny,
        force=force,
        filter_unavailable=executor == "local",
    )
    folder = root / SUBMITIT_DIR
    if not todo:
        return ClusterRun([r for r in results if r is not None], folder=folder)

    checks: list[LockCheck] = []
    if check_locks if check_locks is not None else executor == "slurm":
        for place in [root, *cache_folders(t.params_file for t in todo)]:
            check = check_shared_locks(place)
            checks.append(check)
            for problem in check.problems:
                logger.warning(
                    "WARNING: locks in %s may not hold across nodes: %s",
                    display_path(place),
                    problem,
                )

    folder.mkdir(parents=True, exist_ok=True)
    ex = _make_executor(executor, folder)
    parameters = cluster.executor_parameters()
    if executor == "local":
        parameters.setdefault("timeout_min", LOCAL_TIMEOUT_MIN)
    ex.update_parameters(name="mibench", **parameters)
    call = {
        "notebooks_dir": str(nb_dir),
        "out_root": str(root),
        "code_dir": str(code),
        "kernel_name": kernel_name,
        "timeout_s": timeout_s,
        "force": force,
        "lock_timeout_s": lock_timeout_s,
    }
    if executor == "local":
        # submitit sets CUDA_VISIBLE_DEVICES from its own gpus_per_node (none by default): give
        # each job the GPUs this process sees, as the pool executor does.
        call["environment"] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
        call["threads"] = None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
        submitted = _run_local(ex, todo, results, call, jobs, 1.0 if poll_s is None else poll_s)
    else:
        running = _submit_array(ex, todo, call)
        submitted = [s for _, _, s in running]
        if wait:
            _wait(running, results, 15.0 if poll_s is None else poll_s)
    return ClusterRun([r for r in results if r is not None], submitted, folder, checks)


_Running = tuple[Any, _Todo, Submission]


def _submit_array(ex: Any, todo: Sequence[_Todo], call: Mapping[str, Any]) -> list[_Running]:
    try:
        with ex.batch():
            pending = [(ex.submit(run_job, str(t.params_file), **call), t) for t in todo]
    except Exception as err:  # sbatch missing or refusing: one clear line, the cause chained
        jobs = f"{len(todo)} job{'' if len(todo) == 1 else 's'}"
        raise SubmissionError(f"submitting {jobs} failed: {err}") from err
    running = []
    for job, item in pending:
        submission = _submission(job, item)
        logger.info("submitted %s/%s as job %s", item.study, item.config, submission.job_id)
        running.append((job, item, submission))
    return running


def _collect_finished(
    running: list[_Running], results: list[ConfigResult | None]
) -> list[_Running]:
    """Record the results of the finished jobs; return those still running."""
    still = []
    for job, item, submission in running:
        if job.done():
            results[item.index] = _log(_collect(job, item))
        else:
            still.append((job, item, submission))
    return still


def _run_local(
    ex: Any,
    todo: Sequence[_Todo],
    results: list[ConfigResult | None],
    call: Mapping[str, Any],
    jobs: int,
    poll_s: float,
) -> list[Submission]:
    """Keep ``jobs`` local jobs running until every configuration has run; end them if stopped."""
    queue = deque(todo)
    running: list[_Running] = []
    submitted: list[Submission] = []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                item = queue.popleft()
                job = ex.submit(run_job, str(item.params_file), **call)
                submission = _submission(job, item)
                logger.info("started %s/%s as job %s", item.study, item.config, job.job_id)
                running.append((job, item, submission))
                submitted.append(submission)
            still = _collect_finished(running, results)
            if len(still) == len(running):
                time.sleep(poll_s)
            running = still
    finally:
        for job, _, _ in running:  # interrupted: local jobs end with this process
            job.cancel(check=False)
    return submitted


def _wait(running: list[_Running], results: list[ConfigResult | None], poll_s: float) -> None:
    """Wait for the Slurm jobs; if interrupted, say how to follow them (they go on)."""
    try:
        while running:
            still = _collect_finished(running, results)
            if len(still) == len(running):
                time.sleep(poll_s)
            running = still
    except KeyboardInterrupt:
        ids = sorted({s.job_id.split("_")[0] for _, _, s in running})
        logger.warning(
            "stopped waiting; the jobs go on (squeue -j %s). Run the same command again once "
            "they have finished: complete configurations are skipped, the others resubmitted",
            ",".join(ids),
        )
        raise


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


# ----------------------------------------------------------------------------- shared locks

#: Filesystems of one machine's disks or memory: other nodes do not see their files or locks.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat", "ramfs"}
)

# Held by a separate process: POSIX locks (which NFS uses for flock) never exclude their own
# process, so the contender must be another one.
_HOLDER = textwrap.dedent(
    """
    import sys
    from filelock import FileLock

    lock = FileLock(sys.argv[1], thread_local=False)
    lock.acquire(timeout=float(sys.argv[2]))
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    """
)


@dataclass(frozen=True)
class LockCheck:
    """Whether ``filelock`` locks in a folder exclude other processes, and other nodes.

    Attributes:
        folder: The folder checked.
        fstype: Its filesystem type (from ``/proc/self/mounts``), or None where unknown.
        mount_point: The mount it lies on, or None where unknown.
        options: The mount's options.
        between_processes: A second process could not take the lock while a first held it, and
            took it once released.
        problems: Why the locks may not exclude processes on other nodes; empty when none is
            known. A filesystem not recognised here gives none: cross-node locking is then
            neither confirmed nor refuted.
    """

    folder: Path
    fstype: str | None
    mount_point: Path | None
    options: tuple[str, ...]
    between_processes: bool
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Locks exclude between processes here, and nothing known makes them node-local."""
        return self.between_processes and not self.problems


def _unescape_mount(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _mount_table() -> str:
    return Path("/proc/self/mounts").read_text()


def _mount_of(folder: Path) -> tuple[Path, str, tuple[str, ...]] | None:
    """``(mount point, fstype, options)`` of the mount ``folder`` lies on, or None."""
    try:
        table = _mount_table()
    except OSError:  # not Linux: no mount table to read
        return None
    real = Path(os.path.realpath(folder))
    best: tuple[Path, str, tuple[str, ...]] | None = None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = Path(_unescape_mount(fields[1]))
        if real == point or point in real.parents:
            # Later lines mount over earlier ones; the deepest mount point wins.
            if best is None or len(point.parts) >= len(best[0].parts):
                best = (point, fields[2], tuple(fields[3].split(",")))
    return best


def _mount_problems(fstype: str, options: Sequence[str]) -> list[str]:
    opts = set(options)
    local_lock = next((o.split("=", 1)[1] for o in opts if o.startswith("local_lock=")), None)
    problems = []
    if fstype in ("nfs", "nfs4"):
        if "nolock" in opts:
            problems.append(
                "NFS mounted with 'nolock': locks exclude only processes on the same node"
            )
        elif local_lock in ("flock", "all"):
            problems.append(
                f"NFS mounted with 'local_lock={local_lock}': flock locks are local to each "
                "node; remount with local_lock=none"
            )
    elif fstype == "lustre":
        if "localflock" in opts:
            problems.append("Lustre mounted with 'localflock': locks are local to each node")
        elif "noflock" in opts:
            problems.append(
                "Lustre mounted with 'noflock': flock fails and filelock falls back to lock "
                "files that a killed job leaves behind; remount with -o flock"
            )
    elif fstype == "beegfs":
        problems.append(
            "BeeGFS shares flock locks between nodes only with tuneUseGlobalFileLocks=true in "
            "beegfs-client.conf (default false); check it there"
        )
    elif fstype in LOCAL_FILESYSTEMS:
        problems.append(
            f"{fstype} is a local filesystem: other nodes see neither these files nor their "
            "locks (fine only if every job runs on this node)"
        )
    return problems


def check_shared_locks(folder: str | Path, *, timeout_s: float = 30.0) -> LockCheck:
    """Check that a lock file in ``folder`` held by one process keeps another one out.

    A child process takes a :class:`filelock.FileLock` (``flock``) on a fresh file in
    ``folder``; this process must fail to take it, then succeed once the child released it.
    That proves the locks work between processes of this node. Whether they also hold between
    nodes depends on the filesystem, which this node alone cannot test: the mount's type and
    options are read instead, and what is known to make locks node-local is reported (see
    :class:`LockCheck`). The folder is created if missing; the lock file is removed.

    Args:
        folder: E.g. the output root or the artifact cache.
        timeout_s: Seconds to wait for the child process at each step.

    Returns:
        The outcome; ``.ok`` is False with the reasons in ``.problems``.
    """
    from filelock import FileLock, Timeout

    place = Path(folder).absolute()
    place.mkdir(parents=True, exist_ok=True)
    mount = _mount_of(place)
    fstype, point, options = (mount[1], mount[0], mount[2]) if mount else (None, None, ())
    problems = _mount_problems(fstype, options) if fstype else []
    path = place / f".mibench-lockcheck-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), str(timeout_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    between = False
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline().strip()
        if line != "held":
            holder.wait(timeout=timeout_s)
            problems.append(
                f"a process could not take a lock in {place}: {holder.stderr.read().strip()}"
            )
        else:
            contender = FileLock(str(path), thread_local=False)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    contender.acquire(timeout=0)
                except Timeout:
                    refused = True
                else:
                    refused = False
                    contender.release()
            for w in caught:
                if "SoftFileLock" in str(w.message):
                    problems.append(
                        "flock is not supported here: filelock falls back to lock files that "
                        "a killed job leaves behind (delete the stale *.lock files by hand)"
                    )
            holder.stdin.write("\n")
            holder.stdin.flush()
            released = holder.stdout.readline().strip() == "released"
            holder.wait(timeout=timeout_s)
            try:
                contender.acquire(timeout=timeout_s)
            except Timeout:
                taken = False
            else:
                taken = True
                contender.release()
            between = refused and released and taken
            if not refused:
                problems.append(
                    "a second process took a lock that another process held: file locks do "
                    "not exclude anything on this filesystem"
                )
            elif not taken:
                problems.append(f"a released lock could not be taken again within {timeout_s} s")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
        path.unlink(missing_ok=True)
    return LockCheck(place, fstype, point, options, between, tuple(problems))
