"""``mibench run-all --executor local|slurm``: submitit jobs, cluster options and shared locks."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import pytest

from mibench_lib.studies import cli, cluster, runner
from mibench_lib.studies.cluster import (
    ClusterConfig,
    ClusterConfigError,
    UnmetRequirementsError,
    check_shared_locks,
    load_cluster_config,
)

STUDY = "fixture_study"


@pytest.fixture
def repo(tree, monkeypatch, tmp_path):
    """Point the runner's default folders at the temporary tree, the cache at tmp_path."""
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", tree.notebooks)
    monkeypatch.setattr(runner, "PARAMETERS_DIR", tree.parameters)
    monkeypatch.setattr(runner, "OUTPUTS_DIR", tree.outputs)
    monkeypatch.setattr(runner, "CODE_DIR", tree.code)
    monkeypatch.setenv("MIBENCH_CACHE", str(tmp_path / "cache"))
    return tree


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _status_lines(text: str) -> dict[str, str]:
    """``{config: status}`` from run-all's status lines."""
    lines = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith(f"{STUDY}/"):
            lines[parts[1].split("/", 1)[1]] = parts[0]
    return lines


# ----------------------------------------------------------------------------- local executor


@pytest.mark.notebook
def test_local_executor_runs_fails_names_the_log_and_resumes(repo, tmp_path, capsys):
    # One test, as each job is a fresh Python process (a few seconds to import torch).
    repo.config("a", "seeds: [0, 1]\nn: 2\nscale: 0.5\n")
    bad = repo.config("bad", "n: 1\nfail: true\n")
    repo.config("c", "data_root: /nonexistent/celeba\n")  # unavailable here
    repo.config("tiny", "n: 1\n")  # never run by run-all

    assert cli.main(["run-all", "--executor", "local", "--jobs", "2"]) == 1
    out, err = capsys.readouterr()
    assert _status_lines(out) == {"a": "ran", "bad": "failed", "c": "unavailable"}
    assert "3 configurations: 1 ran, 0 already complete, 1 unavailable here, 1 failed" in out
    # The failure names the error and the job's log, which holds the traceback.
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {STUDY}/bad: RunFailedError: ")
    assert "fixture asked to fail" in failed[0]
    log = Path.cwd() / failed[0].rsplit("log: ", 1)[1]  # shown relative to the cwd if below it
    assert log.name.endswith("_0_log.err") and log.parent.name == ".submitit"
    assert "fixture asked to fail" in log.read_text()
    folder = repo.outputs / ".submitit"
    assert len(list(folder.glob("*_0_log.out"))) == 2
    assert len(list(folder.glob("*_0_result.pkl"))) == 2
    assert any(f"finished {STUDY}/a" in p.read_text() for p in folder.glob("*_0_log.err"))
    assert (repo.outputs / STUDY / "a" / runner.MARKER).is_file()
    assert not (repo.outputs / STUDY / "bad" / runner.MARKER).exists()
    assert not (repo.outputs / STUDY / "tiny").exists()

    # The pool executor writes the same rows.
    pool_root = tmp_path / "pool"
    assert cli.main(["run-all", "--out-root", str(pool_root), "--study", STUDY]) == 1
    capsys.readouterr()
    rows = _rows(repo.outputs / STUDY / "a")
    assert rows == _rows(pool_root / STUDY / "a")
    assert [r["value"] for r in rows] == ["0.0", "0.5", "10.0", "10.5"]

    # Fixed and run again: the failed configuration runs in a new job, the complete one is
    # skipped without a job.
    bad.write_text("n: 1\nfail: false\n")
    assert cli.main(["run-all", "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert _status_lines(out) == {"a": "skipped", "bad": "ran", "c": "unavailable"}
    assert (repo.outputs / STUDY / "bad" / runner.MARKER).is_file()
    assert len(list(folder.glob("*_0_log.out"))) == 3

    # The completion test is the runner's: changed parameters make the folder incomplete.
    where = {"notebooks_dir": repo.notebooks, "out_root": repo.outputs, "code_dir": repo.code}
    assert cluster.is_complete(bad, **where)
    bad.write_text("n: 2\nfail: false\n")
    assert not cluster.is_complete(bad, **where)


def test_job_refuses_a_node_without_the_configurations_data(repo):
    path = repo.config("celeba", "data_root: /nonexistent/celeba\n")
    with pytest.raises(UnmetRequirementsError, match="data_root: /nonexistent/celeba not found"):
        cluster.run_job(
            str(path),
            notebooks_dir=str(repo.notebooks),
            out_root=str(repo.outputs),
            code_dir=str(repo.code),
        )
    assert not (repo.outputs / STUDY / "celeba").exists()


# ----------------------------------------------------------------------------- slurm executor


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``srun`` and ``sbatch`` stand-ins on PATH; sbatch keeps each script it is given."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    record.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" "{record}/$(basename "$1")"\necho "Submitted batch job 4242"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_slurm_submits_one_array_with_options_over_the_file(
    repo, fake_slurm, tmp_path, monkeypatch, capsys
):
    # The submitting node sees the outputs and the cache on an NFS mount without NLM locking.
    monkeypatch.setattr(cluster, "_mount_table", lambda: "srv:/e / nfs rw,vers=3,nolock 0 0\n")
    repo.config("a", "n: 1\n")
    repo.config("celeba", "data_root: /nonexistent/celeba\n")  # checked on the node instead
    conf = tmp_path / "cluster.yaml"
    conf.write_text(
        "slurm_partition: cpu\ntimeout_min: 60\nmem_gb: 16\ncpus_per_task: 4\n"
        "slurm_additional_parameters: {account: proj7}\nslurm_setup: ['module load cuda']\n"
    )
    argv = ["run-all", "--executor", "slurm", "--cluster-config", str(conf), "--no-wait"]
    argv += ["--partition", "gpu", "--gpus", "1", "--time-min", "120", "--jobs", "2"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    for place in (repo.outputs, tmp_path / "cache"):
        assert f"WARNING: locks in {place} may not hold across nodes: NFS mounted with " in err
    assert err.count("'nolock'") == 2
    assert f"submitted    {STUDY}/a  job 4242_0" in out
    assert f"submitted    {STUDY}/celeba  job 4242_1" in out
    assert "2 jobs submitted" in out and "squeue -j 4242" in out
    (script,) = list(fake_slurm.iterdir())
    sbatch = script.read_text()
    for line in (
        "#SBATCH --partition=gpu",  # the option wins over the file
        "#SBATCH --time=120",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem=16GB",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --array=0-1%2",
        "#SBATCH --account=proj7",
        "module load cuda",
    ):
        assert line in sbatch, line
    assert f"--output={repo.outputs / '.submitit'}/%A_%a_0_log.out" in sbatch
    assert len(list((repo.outputs / ".submitit").glob("4242_*_submitted.pkl"))) == 2


def test_slurm_reports_a_bad_parameter_file_and_submits_the_rest(repo, fake_slurm, capsys):
    repo.config("a", "n: 1\n")
    repo.config("typo", "sedes: [0]\n")
    argv = ["run-all", "--executor", "slurm", "--time-min", "30", "--no-wait"]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert f"submitted    {STUDY}/a  job 4242\n" in out and "1 job submitted" in out
    assert f"FAILED {STUDY}/typo: " in err and "unknown parameter 'sedes'" in err
    (script,) = list(fake_slurm.iterdir())
    assert "--array" not in script.read_text()  # a single job


def test_slurm_needs_a_time_limit_and_only_slurm_takes_slurm_options(repo, capsys):
    repo.config("a", "n: 1\n")
    assert cli.main(["run-all", "--executor", "slurm"]) == 2
    assert "need a time limit: pass --time-min" in capsys.readouterr().err
    assert cli.main(["run-all", "--partition", "gpu"]) == 2
    assert "--partition needs --executor slurm (got pool)" in capsys.readouterr().err
    assert cli.main(["run-all", "--executor", "local", "--no-wait"]) == 2
    assert "--no-wait needs --executor slurm (got local)" in capsys.readouterr().err
    assert not (repo.outputs / ".submitit").exists()


def test_slurm_submission_failure_is_one_line(repo, tmp_path, monkeypatch, capsys):
    repo.config("a", "n: 1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"srun": "exit 0", "sbatch": "echo 'invalid partition' >&2; exit 1"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert cli.main(["run-all", "--executor", "slurm", "--time-min", "5", "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert "mibench: submitting 1 job failed" in err and "invalid partition" in err


# ----------------------------------------------------------------------------- cluster file


def test_cluster_file_errors_name_the_file_and_field(tmp_path):
    conf = tmp_path / "cluster.yaml"
    cases = {
        "partition: gpu\n": "unknown key 'partition'; allowed: slurm_partition, timeout_min",
        "timeout_min: 2h\n": "field 'timeout_min' expects int, got str '2h'",
        "mem_gb: -4\n": "field 'mem_gb': Input should be greater than 0",
        "slurm_setup: module load cuda\n": "field 'slurm_setup' expects list",
        "- timeout_min: 5\n": "expected a mapping of cluster options, got list",
        "timeout_min: 5\ntimeout_min: 6\n": "duplicate key 'timeout_min'",
    }
    for text, expected in cases.items():
        conf.write_text(text)
        with pytest.raises(ClusterConfigError) as err:
            load_cluster_config(conf)
        assert str(err.value).startswith(str(conf)) and expected in str(err.value), text
    with pytest.raises(FileNotFoundError, match=r"cluster file .*missing\.yaml does not exist"):
        load_cluster_config(tmp_path / "missing.yaml")


def test_cluster_options_override_the_file(tmp_path):
    conf = tmp_path / "cluster.yaml"
    conf.write_text("slurm_partition: cpu\ntimeout_min: 60\nmem_gb: 8\n")
    config = load_cluster_config(conf, {"slurm_partition": "gpu", "mem_gb": None})
    assert config == ClusterConfig(slurm_partition="gpu", timeout_min=60, mem_gb=8)
    assert config.executor_parameters() == {
        "slurm_partition": "gpu",
        "timeout_min": 60,
        "mem_gb": 8,
    }
    # The parameter names are submitit's own: AutoExecutor accepts every field.
    import submitit

    full = ClusterConfig(
        slurm_partition="p",
        timeout_min=1,
        gpus_per_node=1,
        mem_gb=1.5,
        cpus_per_task=2,
        slurm_array_parallelism=3,
        slurm_additional_parameters={"account": "x"},
        slurm_setup=["true"],
    )
    submitit.AutoExecutor(folder=tmp_path / "s", cluster="local").update_parameters(
        **full.executor_parameters()
    )


def test_example_cluster_file_is_valid():
    example = Path(__file__).resolve().parents[2] / "docs" / "cluster.example.yaml"
    config = load_cluster_config(example)
    assert config.timeout_min is not None and config.gpus_per_node == 1


# ----------------------------------------------------------------------------- shared locks


def test_check_shared_locks_between_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "_mount_table", lambda: "srv:/export / nfs4 rw,vers=4.2 0 0\n")
    check = check_shared_locks(tmp_path / "new")
    assert check.between_processes and check.ok, check.problems
    assert check.fstype == "nfs4" and check.mount_point == Path("/")
    assert list((tmp_path / "new").iterdir()) == []  # the lock file is gone

    # A holder that takes no lock: the second process gets in, and the check says so.
    fake = "import sys\nprint('held', flush=True)\nsys.stdin.readline()\nprint('released')\n"
    monkeypatch.setattr(cluster, "_HOLDER", fake)
    broken = check_shared_locks(tmp_path)
    assert not broken.between_processes and not broken.ok
    assert "a second process took a lock that another process held" in broken.problems[0]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("srv:/e /mnt nfs rw,vers=3,nolock 0 0", "'nolock': locks exclude only processes"),
        ("srv:/e /mnt nfs rw,vers=3,local_lock=flock 0 0", "'local_lock=flock'"),
        ("srv:/e /mnt nfs4 rw,vers=4.2,local_lock=all 0 0", "'local_lock=all'"),
        ("mgs@tcp:/fs /mnt lustre rw,localflock 0 0", "'localflock'"),
        ("mgs@tcp:/fs /mnt lustre rw,noflock 0 0", "remount with -o flock"),
        ("/dev/sda1 /mnt ext4 rw 0 0", "ext4 is a local filesystem"),
        ("srv:/e /mnt nfs4 rw,vers=4.2,local_lock=none 0 0", None),
        ("mgs@tcp:/fs /mnt lustre rw,flock 0 0", None),
    ],
)
def test_mount_options_that_make_locks_node_local(tmp_path, monkeypatch, line, expected):
    monkeypatch.setattr(cluster, "_mount_table", lambda: f"/dev/x / ext4 rw 0 0\n{line}\n")
    assert cluster._mount_of(Path("/mnt/outputs/x"))[0] == Path("/mnt")
    fstype, options = line.split()[2], line.split()[3].split(",")
    problems = cluster._mount_problems(fstype, options)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0]
