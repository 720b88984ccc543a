"""The process pool gives the same rows as running every job in the notebook's own process."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mibench_lib.cache import ArtifactCache
from mibench_lib.studies.harness import prepare_setting
from mibench_lib.studies.jobs import (
    TargetRef,
    attack_order,
    attack_target,
    build_artifact,
    build_target,
    load_target,
)
from mibench_lib.studies.pool import StudyJobError, StudyPool, default_workers

ATTACK_KWARGS = {
    "gmi": {"steps": 4, "restarts": 2, "select": "all"},
    "miface": {"max_iter": 6, "window": 3},
}


def _setting(tmp_path, **overrides):
    kwargs = {
        "cache": ArtifactCache(tmp_path / "cache"),
        "dataset": "digits",
        "dataset_kwargs": {"resolution": 16},
        "classes": [0, 1],
        "samples_per_class": 1,
        "model_seed": 0,
        "evaluator_arch": "mnist_eval",
        "evaluator_train": {"epochs": 1, "batch_size": 64, "lr": 0.002},
        "face_arch": "mnist_resnet",
        "face_train": {"epochs": 1, "batch_size": 64, "lr": 0.002},
        "face_weights": "",
        "gan": {"latent_dim": 16, "width": 8, "critic_width": 8},
        "gan_train": {"epochs": 1, "batch_size": 64, "n_critic": 5, "gp_weight": 10.0},
        "attacks": ["gmi", "miface"],
        "attack_kwargs": ATTACK_KWARGS,
        "query_budgets": {},
        "inception_weights": "",
        "device": "cpu",
        "out_dir": tmp_path / "out",
        "progress": False,
    }
    return prepare_setting(**{**kwargs, **overrides}, eager=False)


def _run(pool, refs):
    pool.wait(pool.warm_up())
    pool.wait([pool.submit(build_target, ref) for ref in refs])
    futures = {
        pool.submit(
            attack_target, ref, name, seed=ref.seed, tag=f"{name}_{i}", through_defense=True
        ): (
            i,
            name,
        )
        for name in attack_order(["gmi", "miface"])
        for i, ref in enumerate(refs)
    }
    return dict(pool.results(futures, progress=False))


@pytest.mark.slow
def test_two_workers_give_the_rows_of_one_process(tmp_path):
    refs = [
        TargetRef("mnist_cnn", {"epochs": 1, "batch_size": 64, "lr": 0.002}, seed=0),
        TargetRef(
            "mnist_cnn",
            {"epochs": 1, "batch_size": 64, "lr": 0.002},
            seed=1,
            defense_name="rounding",
            defense_kwargs={"decimals": 1},
        ),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the workers get one thread each, like the in-process run below
    try:
        with StudyPool(_setting(tmp_path), workers=2) as pool:
            parallel = _run(pool, refs)
        torch.set_num_threads(1)
        setting = _setting(tmp_path)
        serial = _run(StudyPool(setting, workers=1), refs)
    finally:
        torch.set_num_threads(threads)
    # the workers built every artifact; the in-process run only loaded them
    assert setting.prior.cache_hit and setting.evaluator.cache_hit
    assert load_target(setting, refs[0]).cache_hit
    assert sorted(parallel) == sorted(serial) == [(i, a) for i in (0, 1) for a in ("gmi", "miface")]
    for key, row in serial.items():
        for col, value in row.items():
            if col == "wall_time_s":
                continue
            other = parallel[key][col]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(other), (key, col)
            else:
                assert other == value, (key, col)
    assert (tmp_path / "out" / "reconstructions" / "gmi_0.safetensors").exists()


def test_in_process_pool_delivers_errors_through_the_future(tmp_path):
    pool = StudyPool(_setting(tmp_path), workers=1)
    future = pool.submit(build_artifact, "no_such_artifact")
    with pytest.raises(StudyJobError, match="unknown study artifact") as err:
        pool.wait([future])
    assert str(err.value).startswith(
        "job build_artifact('no_such_artifact') failed: ValueError: unknown study artifact"
    )
    assert isinstance(err.value.__cause__, ValueError)  # the job's own error, with its traceback
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(build_artifact, "prior")


# Cheap module-level jobs (worker processes import this module to unpickle them).
def _echo(setting, value, *, delay_s: float = 0.0):
    time.sleep(delay_s)
    return value


def _fail(setting, value, *, delay_s: float = 0.0):
    time.sleep(delay_s)
    raise RuntimeError(f"query budget exhausted for {value}")


def _pid(setting):
    return os.getpid()


def test_a_failing_job_is_named_and_the_other_rows_are_kept_in_process(tmp_path):
    pool = StudyPool(_setting(tmp_path), workers=1)
    futures = {
        pool.submit(_echo, "row a"): {"attack": "a"},
        pool.submit(_fail, "gmi", delay_s=0.0): {"attack": "gmi", "seed": 0},
        pool.submit(_echo, "row b"): {"attack": "b"},
    }
    kept = []
    with pytest.raises(StudyJobError) as err:
        for key, row in pool.results(futures, progress=False):
            kept.append((key["attack"], row))
    assert sorted(kept) == [("a", "row a"), ("b", "row b")]  # every finished row was handed over
    message = str(err.value)
    assert message.splitlines()[0] == (
        "job _fail('gmi', delay_s=0.0) (key {'attack': 'gmi', 'seed': 0}) failed: "
        "RuntimeError: query budget exhausted for gmi"
    )
    assert [job for job, _, _ in err.value.failures] == ["_fail('gmi', delay_s=0.0)"]


@pytest.mark.slow
def test_a_failing_job_in_a_worker_keeps_running_rows_and_cancels_queued_ones(tmp_path):
    with StudyPool(_setting(tmp_path), workers=2) as pool:
        pool.wait([pool.submit(_echo, None), pool.submit(_echo, None)])  # both workers started
        futures = {pool.submit(_echo, "slow row", delay_s=3.0): "slow"}
        futures[pool.submit(_fail, "gmi", delay_s=0.5)] = "failing"
        for i in range(6):  # queued behind the two running jobs
            futures[pool.submit(_echo, f"queued {i}", delay_s=3.0)] = f"queued {i}"
        kept = []
        with pytest.raises(StudyJobError) as err:
            for key, row in pool.results(futures, progress=False):
                kept.append((key, row))
    assert ("slow", "slow row") in kept  # running when the other failed: finished and handed over
    assert "job _fail('gmi', delay_s=0.5) (key 'failing') failed: RuntimeError" in str(err.value)
    assert err.value.cancelled >= 1 and "cancelled" in str(err.value)
    assert len(kept) + err.value.cancelled + 1 == 8  # every job: a row, cancelled or the failure


@pytest.mark.slow
def test_keep_going_runs_every_job_and_reports_all_failures(tmp_path):
    with StudyPool(_setting(tmp_path), workers=2) as pool:
        futures = {pool.submit(_fail, i): i for i in range(2)}
        futures.update({pool.submit(_echo, f"row {i}"): f"ok {i}" for i in range(3)})
        kept = []
        with pytest.raises(StudyJobError) as err:
            for key, row in pool.results(futures, progress=False, keep_going=True):
                kept.append((key, row))
    assert sorted(kept) == [("ok 0", "row 0"), ("ok 1", "row 1"), ("ok 2", "row 2")]
    assert sorted(key for _, key, _ in err.value.failures) == [0, 1]
    assert err.value.cancelled == 0


POOL_SCRIPT = textwrap.dedent(
    """    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import torch
    from test_study_pool import _pid, _setting
    from mibench_lib.studies.pool import StudyPool

    if __name__ == "__main__":
        pool = StudyPool(_setting(Path(sys.argv[1])), workers=2)
        futures = [pool.submit(_pid) for _ in range(2)]
        pool.wait(futures)
        print(" ".join(str(p) for p in pool._executor._processes), flush=True)
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_workers_end_when_the_process_owning_the_pool_is_killed(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(POOL_SCRIPT)
    owner = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        line = owner.stdout.readline()
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers), line
        owner.send_signal(signal.SIGKILL)  # like killing the kernel (or mibench) outright
        owner.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "workers outlived their owner"
    finally:
        if owner.poll() is None:
            owner.kill()


def test_attack_order_puts_prior_free_attacks_first():
    assert attack_order(["gmi", "brep_mi", "miface"]) == ["miface", "gmi", "brep_mi"]
    assert attack_order(["random_latent", "miface"]) == ["miface", "random_latent"]


def test_default_workers(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_workers("cpu") == 2
    assert default_workers("cpu", 3) == 3
    assert default_workers("cuda") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert default_workers("cpu") == 8  # each worker holds its own copy of the data
    assert default_workers("cpu", 16) == 16
    with pytest.raises(ValueError, match="workers"):
        default_workers("cpu", -1)


def _threads_seen(setting) -> int:
    return torch.get_num_threads()


def test_in_process_jobs_use_the_workers_thread_count(tmp_path):
    """workers=1 runs jobs in this process with the threads a worker has, then restores them."""
    from mibench_lib.studies.pool import JOB_THREADS

    pool = StudyPool(_setting(tmp_path), workers=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert pool.submit(_threads_seen).result() == JOB_THREADS == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        pool.close()
