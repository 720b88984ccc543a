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
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

import torch

from mibench_lib.progress import tqdm
from mibench_lib.studies.harness import ARTIFACTS, StudySetting, prepare_setting

__all__ = ["StudyPool", "default_workers"]

#: Upper bound of the automatic worker count (an explicit ``workers`` may exceed it).
MAX_AUTO_WORKERS = 8

_SETTING: StudySetting | None = None  # the worker process's setting, built by _init_worker


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


def _init_worker(recipe: dict[str, Any], threads: int) -> None:
    global _SETTING
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    _SETTING = prepare_setting(**{**recipe, "progress": False}, eager=False)


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _SETTING is None:  # pragma: no cover - only reachable if the initializer failed
        raise RuntimeError("study worker has no setting")
    return fn(_SETTING, *args, **kwargs)


class StudyPool:
    """``workers`` processes running ``fn(setting, ...)`` jobs of one study.

    Args:
        setting: The notebook's setting (its ``recipe`` rebuilds it in each worker).
        workers: Number of processes; 1 runs every job in this process at submission.

    Example:
        >>> from mibench_lib.studies.jobs import build_artifact
        >>> pool = StudyPool(setting, workers=2)          # doctest: +SKIP
        >>> hit = pool.submit(build_artifact, "prior")    # doctest: +SKIP
        >>> pool.close()                                  # doctest: +SKIP
    """

    def __init__(self, setting: StudySetting, *, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.setting = setting
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        if workers > 1:
            threads = max(1, torch.get_num_threads() // workers)
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(setting.recipe, threads),
            )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(setting, *args, **kwargs)``; ``fn`` must be a module-level function."""
        if self._closed:
            raise RuntimeError("this StudyPool is closed")
        if self._executor is not None:
            return self._executor.submit(_call, fn, args, kwargs)
        future: Future = Future()
        try:
            future.set_result(fn(self.setting, *args, **kwargs))
        except Exception as err:  # delivered by future.result(), exactly as from a worker
            future.set_exception(err)
        return future

    def warm_up(self) -> list[Future]:
        """Queue the builds of the GAN prior, evaluator and extractor (GAN first: the longest)."""
        from mibench_lib.studies.jobs import build_artifact

        return [self.submit(build_artifact, name) for name in ARTIFACTS]

    def results(
        self, futures: dict[Future, Any], *, desc: str = "jobs", progress: bool = True
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(futures[f], f.result())`` as jobs finish, with a progress bar.

        The first failing job cancels everything still queued (running jobs finish) and its
        exception is raised here; results yielded before it are the caller's to keep.
        """
        bar = tqdm(total=len(futures), desc=desc, disable=not progress)
        try:
            for future in as_completed(futures):
                result = future.result()
                bar.update(1)
                yield futures[future], result
        except BaseException:
            self.close(cancel=True)
            raise
        finally:
            bar.close()

    def wait(self, futures: Iterable[Future]) -> list[Any]:
        """The results of ``futures`` in their order (raising the first error, as :meth:`results`)."""
        futures = list(futures)
        try:
            return [f.result() for f in futures]
        except BaseException:
            self.close(cancel=True)
            raise

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
