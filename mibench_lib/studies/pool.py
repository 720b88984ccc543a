"""Run a study's independent jobs on every core: worker processes that each hold the setting.

Most of a study is small networks on small batches (a GMI step is a few dozen 32 px convolutions),
where one process gains little from a second intra-op thread. Two processes with one thread each
run two jobs in the time one two-thread process runs about 1.4 of them, and they can overlap the
long GAN training with target training and the prior-free attacks. A :class:`StudyPool` starts
``workers`` processes (``spawn``: safe with OpenMP and CUDA), rebuilds the study setting in each
from its recipe (lazily: the evaluator, extractor and GAN come from the shared artifact cache, whose
per-key lock makes every artifact be built exactly once), and runs module-level job functions
``fn(setting, *args)`` from :mod:`mibench_lib.studies.jobs`.

With ``workers=1`` jobs run in the calling process as they are submitted, in the notebook's own
setting: the same code path for interactive debugging, for tests and for CUDA, where one process
should own the GPU. Rows must not depend on the worker count; every job seeds itself.

A failing job is never swallowed: :meth:`StudyPool.results` and :meth:`StudyPool.wait` raise a
:class:`StudyJobError` that names the job (its function and arguments) and chains the job's own
exception, once the jobs already running have finished and their results have been handed over
(so a notebook appending rows as they come keeps every finished row); jobs still queued are
cancelled and computed by the next run. Worker processes end with the process that started them
(see :func:`~mibench_lib.studies.runner.die_with_parent`): killing ``mibench`` or the notebook
kernel leaves no worker behind.
"""

from __future__ import annotations

import multiprocessing
import os
import reprlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

import torch

from mibench_lib.progress import tqdm
from mibench_lib.studies.harness import ARTIFACTS, StudySetting, prepare_setting

__all__ = ["StudyJobError", "StudyPool", "default_workers", "describe_job"]

#: Upper bound of the automatic worker count (an explicit ``workers`` may exceed it).
MAX_AUTO_WORKERS = 8

_RECIPES: dict[str, dict[str, Any]] = {}  # the worker process's setting recipes, by variant
_SETTINGS: dict[str, StudySetting] = {}  # the worker process's settings, built on first use

#: Torch threads of every job, in a worker or in the notebook's process (``workers=1``). CPU
#: kernels sum in an order that depends on the thread count, so trained weights and attack results
#: agree to the last bit only at equal thread counts: fixing it makes every row independent of the
#: worker count and of the machine's number of cores. Parallelism comes from the workers.
JOB_THREADS = 1


def default_workers(device: torch.device | str, requested: int = 0) -> int:
    """Processes a study should use: ``requested``, or with 0 one per thread torch would use.

    On an accelerator one process owns it (1). On the CPU ``torch.get_num_threads()`` honours
    ``OMP_NUM_THREADS``, so a notebook run by ``mibench run-all -j 2`` on 2 cores gets 1 worker.
    The automatic choice stops at :data:`MAX_AUTO_WORKERS`: every worker loads its own copy of the
    dataset, which for faces is gigabytes.
    """
    if requested < 0:
        raise ValueError(f"workers must be >= 0 (0: automatic), got {requested}")
    if requested:
        return requested
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), MAX_AUTO_WORKERS))


class StudyJobError(RuntimeError):
    """One or more pool jobs raised; the message names each failed job and its error.

    Attributes:
        failures: ``(job description, caller's key or None, exception)`` per failed job, in the
            order they finished; the first exception is also the ``__cause__``.
        cancelled: Jobs still queued at the first failure, cancelled (the next run computes them).
    """

    def __init__(
        self, failures: list[tuple[str, Any, BaseException]], *, cancelled: int = 0
    ) -> None:
        self.failures = failures
        self.cancelled = cancelled
        lines = []
        for job, key, err in failures[:5]:
            where = f" (key {_short(key)})" if key is not None else ""
            lines.append(f"job {job}{where} failed: {type(err).__name__}: {err}")
        if len(failures) > 5:
            lines.append(f"... and {len(failures) - 5} more failed jobs")
        if cancelled:
            lines.append(
                f"{cancelled} queued job(s) cancelled; the results already handed over are "
                "kept, and a rerun computes the rest"
            )
        super().__init__("\n".join(lines))


_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 200
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = 8


def _short(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 300 else text[:297] + "..."


def describe_job(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``fn(arg, ..., key=value)`` as a short readable call, naming a job in error messages.

    Example:
        >>> describe_job(divmod, (7,), {"tag": "gmi_s0"})
        "divmod(7, tag='gmi_s0')"
    """
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _init_worker(
    recipes: dict[str, dict[str, Any]], threads: int, parent_pid: int | None = None
) -> None:
    global _RECIPES
    if parent_pid is not None:
        from mibench_lib.studies.runner import die_with_parent

        die_with_parent(parent_pid)  # never outlive the kernel (or script) that owns the pool
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    _RECIPES = recipes
    _SETTINGS.clear()


def _worker_setting(variant: str) -> StudySetting:
    """The worker's setting of ``variant``, prepared on its first job (its data loaded once)."""
    if variant not in _SETTINGS:
        if variant not in _RECIPES:  # pragma: no cover - only reachable if the initializer failed
            raise RuntimeError(f"study worker has no setting {variant!r}")
        _SETTINGS[variant] = prepare_setting(
            **{**_RECIPES[variant], "progress": False}, eager=False
        )
    return _SETTINGS[variant]


def _call(
    variant: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return fn(_worker_setting(variant), *args, **kwargs)


class StudyPool:
    """``workers`` processes running ``fn(setting, ...)`` jobs of one study.

    A study may hold several settings (*variants*, e.g. one per target resolution, each with its
    own data, evaluator and GAN prior): a job names the variant whose setting it gets, and a
    worker prepares each variant's setting on its first job there.

    Args:
        setting: The notebook's setting, or a mapping variant name -> setting (their ``recipe``
            rebuilds them in each worker). A single setting is the variant ``""``.
        workers: Number of processes; 1 runs every job in this process at submission.

    Example:
        >>> from mibench_lib.studies.jobs import build_artifact
        >>> pool = StudyPool(setting, workers=2)          # doctest: +SKIP
        >>> hit = pool.submit(build_artifact, "prior")    # doctest: +SKIP
        >>> pool.close()                                  # doctest: +SKIP
    """

    def __init__(
        self, setting: StudySetting | Mapping[str, StudySetting], *, workers: int = 1
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.settings: dict[str, StudySetting] = (
            dict(setting) if isinstance(setting, Mapping) else {"": setting}
        )
        if not self.settings:
            raise ValueError("a StudyPool needs at least one setting")
        self.setting = next(iter(self.settings.values()))
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        # What each future computes, for error messages (forgotten with the future).
        self._jobs: weakref.WeakKeyDictionary[Future, str] = weakref.WeakKeyDictionary()
        if workers > 1:
            recipes = {name: s.recipe for name, s in self.settings.items()}
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(recipes, JOB_THREADS, os.getpid()),
            )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(setting, *args, **kwargs)`` on the first setting (see :meth:`submit_in`)."""
        return self.submit_in(next(iter(self.settings)), fn, *args, **kwargs)

    def submit_in(
        self, variant: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future:
        """Queue ``fn(settings[variant], *args, **kwargs)``; ``fn`` must be a module-level function."""
        if self._closed:
            raise RuntimeError("this StudyPool is closed")
        if variant not in self.settings:
            raise KeyError(f"no setting {variant!r} in this pool; known: {list(self.settings)}")
        if self._executor is not None:
            future = self._executor.submit(_call, variant, fn, args, kwargs)
        else:
            future = Future()
            previous = torch.get_num_threads()
            torch.set_num_threads(JOB_THREADS)  # as in a worker: rows independent of the count
            try:
                future.set_result(fn(self.settings[variant], *args, **kwargs))
            except Exception as err:  # delivered by future.result(), exactly as from a worker
                future.set_exception(err)
            finally:
                torch.set_num_threads(previous)
        label = describe_job(fn, args, kwargs)
        self._jobs[future] = label if len(self.settings) == 1 else f"[{variant}] {label}"
        return future

    def job(self, future: Future) -> str:
        """The job ``future`` computes, as ``fn(args...)`` (see :func:`describe_job`)."""
        return self._jobs.get(future, "<a job of another pool>")

    def warm_up(self) -> list[Future]:
        """Queue the builds of every setting's GAN prior, evaluator and extractor (GANs first)."""
        from mibench_lib.studies.jobs import build_artifact

        return [
            self.submit_in(variant, build_artifact, name)
            for name in ARTIFACTS
            for variant in self.settings
        ]

    def results(
        self,
        futures: dict[Future, Any],
        *,
        desc: str = "jobs",
        progress: bool = True,
        keep_going: bool = False,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(futures[f], f.result())`` as jobs finish, with a progress bar.

        A failing job is not yielded. At the first failure every job still queued is cancelled
        (unless ``keep_going``: then every job runs); the jobs already running finish and their
        results are still yielded, so the caller keeps every finished row. Then a
        :class:`StudyJobError` naming each failed job (function, arguments and the caller's key)
        is raised, chained to the first job's exception, and the pool is closed.

        Args:
            futures: Futures of this pool mapped to the caller's key for each (e.g. the columns
                its row gets).
            desc: Progress-bar label.
            progress: Show the progress bar.
            keep_going: Run every queued job even after a failure.

        Raises:
            StudyJobError: A job raised.
        """
        failures: list[tuple[str, Any, BaseException]] = []
        cancelled = 0
        bar = tqdm(total=len(futures), desc=desc, disable=not progress)
        try:
            for future in as_completed(futures):
                bar.update(1)
                if future.cancelled():
                    continue
                err = future.exception()
                if err is None:
                    yield futures[future], future.result()
                    continue
                failures.append((self.job(future), futures[future], err))
                if len(failures) == 1 and not keep_going:
                    cancelled = sum(f.cancel() for f in futures)
        except BaseException:  # the caller stopped early, or an interrupt: stop the workers
            self.close(cancel=True)
            raise
        finally:
            bar.close()
        if failures:
            self.close(cancel=True)
            raise StudyJobError(failures, cancelled=cancelled) from failures[0][2]

    def wait(self, futures: Iterable[Future]) -> list[Any]:
        """The results of ``futures`` in their order.

        As :meth:`results`: at the first failure the queued jobs are cancelled, the running ones
        finish, and a :class:`StudyJobError` names every failed job.

        Raises:
            StudyJobError: A job raised.
        """
        futures = list(futures)
        for _ in self.results(dict.fromkeys(futures), progress=False):
            pass
        return [f.result() for f in futures]

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (after their queued jobs, or with ``cancel`` after the running ones)."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None

    def __enter__(self) -> StudyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)
