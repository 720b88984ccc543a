"""Output folders: safe names, one run at a time (a lock), and no process outliving ``mibench``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from filelock import FileLock

from mibench_lib.studies.params import ParameterError
from mibench_lib.studies.runner import (
    MARKER,
    OutputLockedError,
    list_configs,
    lock_path,
    run_all,
    run_config,
)

STUDY = "fixture_study"
ROOT = Path(__file__).resolve().parents[2]

# A study whose notebook records its kernel's pid, then waits until a file appears (or a limit).
SLOW = "slow_study"
SLOW_PARAMETERS = """\
study = "x"
config = "y"
out_dir = ""
seeds = [0]
release = ""  # the notebook waits until this file exists (empty: no wait)
wait_limit_s = 120.0
"""
SLOW_CODE = """\
import os
import time
from pathlib import Path

from mibench_lib.studies.records import append_rows

Path(out_dir, "kernel.pid").write_text(str(os.getpid()))
deadline = time.monotonic() + wait_limit_s
while release and not Path(release).exists() and time.monotonic() < deadline:
    time.sleep(0.1)
append_rows(out_dir, [{"seed": s, "value": s * 10} for s in seeds])
"""

# Runs the mibench command line against the temporary tree (its notebooks and code folders).
MIBENCH = textwrap.dedent(
    """\
    import sys
    from pathlib import Path
    from mibench_lib.studies import cli, runner
    runner.NOTEBOOKS_DIR = Path(sys.argv[1])
    runner.CODE_DIR = Path(sys.argv[2])
    sys.exit(cli.main(sys.argv[3:]))
    """
)


def _mibench(tree, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", MIBENCH, str(tree.notebooks), str(tree.code), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process reusing the pid
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("stem", [".", "..", "-x", "a b", "_ok?"])
def test_unsafe_configuration_names_are_refused_before_anything_moves(tree, stem):
    out = tree.outputs / STUDY / "tiny"
    out.mkdir(parents=True)
    (out / MARKER).write_text("{}")
    path = tree.parameters / STUDY / f"{stem}.yaml"
    path.write_text("n: 1\n")
    with pytest.raises(ParameterError, match=r"configuration name .* is not a plain folder name"):
        run_config(path, **tree.run_kwargs())
    assert (out / MARKER).is_file()  # the finished study folder stays where it was
    assert sorted(p.name for p in tree.outputs.iterdir()) == [STUDY]
    assert sorted(p.name for p in (tree.outputs / STUDY).iterdir()) == ["tiny"]


def test_unsafe_study_name_is_refused(tree):
    folder = tree.parameters / ".hidden"
    folder.mkdir()
    (folder / "a.yaml").write_text("n: 1\n")
    with pytest.raises(
        ParameterError, match=r"study name '\.hidden' \(the parameter file's folder\)"
    ):
        run_config(folder / "a.yaml", **tree.run_kwargs())


def test_hidden_files_are_not_configurations_and_odd_names_fail_in_run_all(tree):
    tree.config(".", "n: 1\n")  # ..yaml
    tree.config("..", "n: 1\n")  # ...yaml
    tree.config(".#draft", "n: 1\n")  # an editor's lock file
    tree.config("a b", "n: 1\n")
    assert list_configs(STUDY, parameters_dir=tree.parameters) == ["a b"]
    kwargs = {k: v for k, v in tree.run_kwargs().items() if k != "progress"}
    (result,) = run_all(parameters_dir=tree.parameters, **kwargs)
    assert result.status == "failed" and "not a plain folder name" in result.detail
    assert not tree.outputs.exists()


# ----------------------------------------------------------------------------- the lock


def test_lock_lives_outside_the_output_folder(tree):
    out = tree.outputs / STUDY / "a"
    assert lock_path(out) == tree.outputs / ".locks" / STUDY / "a.lock"


def test_a_held_output_folder_is_refused_at_once_naming_the_holder(tree):
    path = tree.config("a", "n: 1\n")
    out = tree.outputs / STUDY / "a"
    lock = lock_path(out)
    lock.parent.mkdir(parents=True)
    owner = {"pid": 4242, "host": "box", "started": "2030-01-01T00:00:00+00:00", "command": "x"}
    lock.with_suffix(".owner.json").write_text(json.dumps(owner))
    with FileLock(str(lock), thread_local=False):  # another run holds it
        start = time.monotonic()
        with pytest.raises(OutputLockedError, match=r"in use by pid 4242 on box") as err:
            run_config(path, **tree.run_kwargs())
        assert time.monotonic() - start < 30  # refused, not waited
        assert "--wait" in str(err.value)
        with pytest.raises(OutputLockedError, match=r"still in use .* after 0\.3 s"):
            run_config(path, lock_timeout_s=0.3, **tree.run_kwargs())
    assert not out.exists()  # nothing was written


@pytest.mark.notebook
def test_two_runs_into_one_folder_never_duplicate_rows(tree, tmp_path):
    tree.add_study(SLOW, SLOW_PARAMETERS, SLOW_CODE)
    release = tmp_path / "release"
    path = tree.parameters / SLOW / "a.yaml"
    path.write_text(f"seeds: [0, 1]\nrelease: {release}\n")
    out = tree.outputs / SLOW / "a"
    args = ["run", str(path), "--out-root", str(tree.outputs), "--no-progress"]

    first = _mibench(tree, *args)
    try:
        _wait_for(lambda: (out / "kernel.pid").exists(), 180, "the first run's kernel")
        second = _mibench(tree, *args)  # refused: the first holds the folder
        _, err = second.communicate(timeout=180)
        assert second.returncode == 1, err
        assert err.startswith("mibench: run refused: slow_study/a: the output folder")
        assert f"in use by pid {first.pid}" in err

        waiting = _mibench(tree, *args, "--wait")  # waits, then finds the run complete
        time.sleep(2)
        assert waiting.poll() is None  # still waiting
        release.touch()
        _, first_err = first.communicate(timeout=180)
        assert first.returncode == 0, first_err
        _, wait_err = waiting.communicate(timeout=180)
        assert waiting.returncode == 0, wait_err
        assert "skipped slow_study/a" in wait_err
    finally:
        release.touch()
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    assert (out / "results.csv").read_text().splitlines() == ["seed,value", "0,0", "1,10"]
    assert (out / MARKER).is_file()


# ----------------------------------------------------------------------------- process lifetime


@pytest.mark.notebook
def test_killing_mibench_ends_its_notebook_kernel(tree, tmp_path):
    tree.add_study(SLOW, SLOW_PARAMETERS, SLOW_CODE)
    path = tree.parameters / SLOW / "k.yaml"
    path.write_text(f"release: {tmp_path / 'never'}\nwait_limit_s: 600.0\n")
    out = tree.outputs / SLOW / "k"
    proc = _mibench(tree, "run", str(path), "--out-root", str(tree.outputs), "--no-progress")
    try:
        _wait_for(lambda: (out / "kernel.pid").exists(), 180, "the kernel")
        kernel = int((out / "kernel.pid").read_text())
        assert _alive(kernel)
        proc.send_signal(signal.SIGKILL)  # no cleanup runs in mibench
        proc.wait(timeout=30)
        _wait_for(lambda: not _alive(kernel), 60, f"kernel {kernel} to end")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / MARKER).exists()


POOL_STUDY = "pool_study"
POOL_PARAMETERS = """\
study = "x"
config = "y"
out_dir = ""
cache_dir = ""
"""
POOL_CODE = """\
import os
import time
from pathlib import Path

from mibench_lib.cache import ArtifactCache
from mibench_lib.studies.harness import prepare_setting
from mibench_lib.studies.pool import StudyPool

setting = prepare_setting(
    cache=ArtifactCache(cache_dir),
    dataset="digits",
    dataset_kwargs={"resolution": 16},
    classes=[0],
    samples_per_class=1,
    model_seed=0,
    evaluator_arch="mnist_eval",
    evaluator_train={"epochs": 1},
    face_arch="mnist_resnet",
    face_train={"epochs": 1},
    face_weights="",
    gan={"latent_dim": 16, "width": 8, "critic_width": 8},
    gan_train={"epochs": 1},
    attacks=["miface"],
    attack_kwargs={},
    query_budgets={},
    inception_weights="",
    device="cpu",
    out_dir=None,
    progress=False,
    eager=False,
)
pool = StudyPool(setting, workers=2)
pool.wait([pool.submit(getattr, "device") for _ in range(2)])
pids = [os.getpid(), *pool._executor._processes]
Path(out_dir, "pids").write_text(" ".join(str(p) for p in pids))
time.sleep(600)
"""


@pytest.mark.notebook
@pytest.mark.slow
def test_killing_mibench_ends_the_kernel_and_its_pool_workers(tree, tmp_path):
    tree.add_study(POOL_STUDY, POOL_PARAMETERS, POOL_CODE)
    path = tree.parameters / POOL_STUDY / "p.yaml"
    path.write_text(f"cache_dir: {tmp_path / 'cache'}\n")
    out = tree.outputs / POOL_STUDY / "p"
    proc = _mibench(tree, "run", str(path), "--out-root", str(tree.outputs), "--no-progress")
    try:
        _wait_for(lambda: (out / "pids").exists(), 300, "the kernel's pool")
        kernel, *workers = (int(p) for p in (out / "pids").read_text().split())
        assert len(workers) == 2 and all(_alive(p) for p in (kernel, *workers))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in (kernel, *workers):
            _wait_for(lambda pid=pid: not _alive(pid), 60, f"process {pid} to end")
    finally:
        if proc.poll() is None:
            proc.kill()


CHILD = textwrap.dedent(
    """\
    import multiprocessing, os, sys, time
    from mibench_lib.studies import runner

    def child(parent, use_signal):
        if not use_signal:
            runner._set_parent_death_signal = lambda: False  # only the watchdog thread is left
        runner.die_with_parent(parent, poll_s=0.2)
        time.sleep(600)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        p = ctx.Process(target=child, args=(os.getpid(), sys.argv[1] == "signal"))
        p.start()
        print(p.pid, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("mode", ["signal", "watchdog"])
def test_a_worker_ends_when_its_parent_is_killed(tmp_path, mode):
    script = tmp_path / "parent.py"
    script.write_text(CHILD)
    parent = subprocess.Popen(
        [sys.executable, str(script), mode], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)  # let the child import and arm its watch
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        _wait_for(lambda: not _alive(child), 60, f"worker {child} to end")
    finally:
        if parent.poll() is None:
            parent.kill()
