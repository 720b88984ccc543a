"""The ``mibench`` command line: run, validate, list and compare studies, and list the registries.

Usage::

    mibench run parameters/<study>/<config>.yaml [-p KEY VALUE ...] [--force] [--out-root DIR]
        [--wait]
    mibench run-all [--study S] [--jobs N] [--force] [--include-tiny] [--out-root DIR] [--wait]
        [--executor pool|local|slurm] [--time-min M] [--partition P] [--gpus G] [--mem-gb M]
        [--cpus C] [--cluster-config FILE] [--no-wait]
    mibench validate parameters/<study>/<config>.yaml [-p KEY VALUE ...]
    mibench list
    mibench compare FOLDER [FOLDER ...] [--metrics M [M ...]] [--out DIR]
    mibench report [--out-root DIR] [--force] [--no-explorer] [--publish] [--check-readme]

``python -m mibench_lib.studies`` is the same command. A bad parameter file or a missing file is
reported on stderr (one line per problem) with exit status 2; a failed run is one line naming the
executed notebook and status 1. A run whose output folder another run is writing is refused with
status 1 (one line naming that run), or with ``--wait`` waits for it. ``run-all --executor local``
or ``slurm`` runs each configuration as a submitit job (see :mod:`mibench_lib.studies.cluster`);
a failed job's status line names its log. ``compare`` puts the
``results.csv`` of several output folders side by side (see :mod:`mibench_lib.studies.compare`);
a folder it cannot read is reported as one line with status 2. ``report`` builds the static site
``<out-root>/index.html`` (see :mod:`mibench_lib.studies.report`); ``--publish`` also copies the
tables the README cites into ``docs/results/`` and rewrites the README's table blocks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from mibench_lib.studies.params import ParameterError, display_path

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """A command-line argument that makes no sense (reported as one line, status 2)."""


def _say(text: str, stream: TextIO | None = None) -> None:
    (stream if stream is not None else sys.stdout).write(text + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mibench`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="mibench", description="Run and inspect mibench study notebooks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-p",
            "--parameter",
            nargs=2,
            action="append",
            default=[],
            metavar=("KEY", "VALUE"),
            help="override one parameter; VALUE is read as YAML (10, 0.5, '[0, 1]', gmi)",
        )

    run = sub.add_parser("run", help="run one parameter file")
    run.add_argument("params_file", help="parameters/<study>/<config>.yaml")
    add_overrides(run)
    run.add_argument("--force", action="store_true", help="run even if already complete")
    run.add_argument("--out-root", default=None, help="output root (default: <repo>/outputs)")
    run.add_argument("--timeout", type=int, default=None, help="limit per cell in seconds")
    run.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    run.add_argument("--no-progress", action="store_true", help="hide the cell progress bar")
    run.add_argument(
        "--wait", action="store_true", help="wait while another run writes the output folder"
    )

    run_all = sub.add_parser("run-all", help="run every configuration (tiny.yaml excluded)")
    run_all.add_argument("--study", default=None, help="only this study")
    run_all.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="configurations run in parallel (default 1; with --executor slurm: the array's "
        "parallelism)",
    )
    run_all.add_argument("--force", action="store_true", help="re-run completed configurations")
    run_all.add_argument("--include-tiny", action="store_true", help="also run tiny.yaml")
    run_all.add_argument("--out-root", default=None, help="output root (default: <repo>/outputs)")
    run_all.add_argument("--timeout", type=int, default=None, help="limit per cell in seconds")
    run_all.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    run_all.add_argument(
        "--wait", action="store_true", help="wait for configurations another run is writing"
    )
    cluster = run_all.add_argument_group(
        "submitit executors",
        "run each configuration as a submitit job (see docs/cluster.example.yaml)",
    )
    cluster.add_argument(
        "--executor",
        choices=("pool", "local", "slurm"),
        default="pool",
        help="pool: processes of this command (default); local: submitit jobs on this machine, "
        "logs in <out-root>/.submitit; slurm: one Slurm job array",
    )
    cluster.add_argument(
        "--time-min", type=int, default=None, help="wall-clock limit of each job in minutes"
    )
    cluster.add_argument("--partition", default=None, help="Slurm partition")
    cluster.add_argument("--gpus", type=int, default=None, help="GPUs of each Slurm job")
    cluster.add_argument("--mem-gb", type=float, default=None, help="memory of each Slurm job")
    cluster.add_argument("--cpus", type=int, default=None, help="CPU cores of each Slurm job")
    cluster.add_argument(
        "--cluster-config",
        default=None,
        metavar="FILE",
        help="YAML of Slurm resources (submitit names: slurm_partition, timeout_min, "
        "gpus_per_node, mem_gb, cpus_per_task, ...); options override it",
    )
    cluster.add_argument(
        "--no-wait",
        action="store_true",
        help="submit the Slurm jobs, print their ids and return without waiting",
    )

    validate = sub.add_parser("validate", help="check a parameter file without running it")
    validate.add_argument("params_file", help="parameters/<study>/<config>.yaml")
    add_overrides(validate)

    sub.add_parser("list", help="list datasets, models, attacks, metrics, defenses and studies")

    report = sub.add_parser(
        "report",
        help="build the HTML report <out-root>/index.html from the outputs (and the README tables)",
    )
    report.add_argument("--out-root", default=None, help="output root (default: <repo>/outputs)")
    report.add_argument("--force", action="store_true", help="render every notebook again")
    report.add_argument(
        "--no-explorer",
        action="store_true",
        help="skip executing notebooks/explore.ipynb headless into <out-root>/explore.ipynb",
    )
    report.add_argument(
        "--publish",
        action="store_true",
        help="copy the tables the README cites into docs/results/ and rewrite its mibench:table "
        "blocks (every cited configuration must be current)",
    )
    report.add_argument(
        "--check-readme",
        action="store_true",
        help="exit 1 if a README mibench:table block differs from docs/results/ (writes nothing)",
    )

    compare = sub.add_parser(
        "compare", help="put the results of several output folders side by side"
    )
    compare.add_argument(
        "folders",
        nargs="+",
        metavar="FOLDER",
        help="outputs/<study>/<config> folders (any folder holding a results.csv)",
    )
    compare.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="METRIC",
        help="metric columns (default: those of acc1 acc5 delta_eval delta_face fid_eval present); "
        "the figure shows the first",
    )
    compare.add_argument(
        "--out", default=None, metavar="DIR", help="write compare.csv, compare.md and compare.png"
    )
    return parser


def _names(registry: Mapping[str, Any]) -> str:
    return ", ".join(sorted(registry)) or "none"


def _list() -> int:
    from mibench_lib.attacks import ATTACK_ACCESS, ATTACKS
    from mibench_lib.data import DATASETS
    from mibench_lib.metrics import METRICS
    from mibench_lib.models import MODELS
    from mibench_lib.studies.runner import (
        PARAMETERS_DIR,
        STUDY_FILES_FROM,
        list_configs,
        list_studies,
    )

    _say(f"datasets: {_names(DATASETS)}")
    _say(f"models: {_names(MODELS)}")
    _say("attacks:")
    for name in sorted(ATTACKS):
        _say(f"  {name} ({ATTACK_ACCESS.get(name, 'access unknown')})")
    _say(f"metrics: {_names(METRICS)}")
    try:
        defenses = importlib.import_module("mibench_lib.defenses")
    except ModuleNotFoundError as err:
        if err.name != "mibench_lib.defenses":  # a missing dependency inside it is a real error
            raise
        _say("defenses: none yet")
    else:
        _say(f"defenses: {_names(defenses.DEFENSES)}")
    _say(f"studies (from {STUDY_FILES_FROM}: {display_path(PARAMETERS_DIR.parent)}):")
    for study in list_studies():
        _say(f"  {study}: {', '.join(list_configs(study)) or 'no configurations'}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from mibench_lib.studies.params import load_parameters, parse_overrides
    from mibench_lib.studies.runner import locate

    target = locate(args.params_file)
    params = load_parameters(
        target.params_file, target.notebook, overrides=parse_overrides(args.parameter)
    )
    _say(
        f"{display_path(target.params_file)}: valid for {display_path(target.notebook)} "
        f"({len(params)} parameters set)"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from mibench_lib.studies.params import parse_overrides
    from mibench_lib.studies.runner import run_config

    out = run_config(
        args.params_file,
        overrides=parse_overrides(args.parameter),
        out_root=args.out_root,
        kernel_name=args.kernel,
        timeout_s=args.timeout,
        progress=not args.no_progress,
        force=args.force,
        lock_timeout_s=None if args.wait else 0,
    )
    _say(str(out))
    return EXIT_OK


#: run-all options of the submitit executors: (attribute, option, executors allowing it).
_EXECUTOR_OPTIONS = (
    ("time_min", "--time-min", ("local", "slurm")),
    ("partition", "--partition", ("slurm",)),
    ("gpus", "--gpus", ("slurm",)),
    ("mem_gb", "--mem-gb", ("slurm",)),
    ("cpus", "--cpus", ("slurm",)),
    ("cluster_config", "--cluster-config", ("slurm",)),
    ("no_wait", "--no-wait", ("slurm",)),
)


def _run_all(args: argparse.Namespace) -> int:
    from mibench_lib.studies.runner import list_studies, run_all

    jobs = 1 if args.jobs is None else args.jobs
    if jobs < 1:
        raise _UsageError(f"--jobs must be at least 1, got {jobs}")
    if args.study is not None and args.study not in (known := list_studies()):
        raise _UsageError(f"unknown study {args.study!r}; known studies: {', '.join(known)}")
    for attr, option, executors in _EXECUTOR_OPTIONS:
        if getattr(args, attr) not in (None, False) and args.executor not in executors:
            raise _UsageError(
                f"{option} needs --executor {' or '.join(executors)} (got {args.executor})"
            )
    options = {
        "study": args.study,
        "out_root": args.out_root,
        "include_tiny": args.include_tiny,
        "force": args.force,
        "kernel_name": args.kernel,
        "timeout_s": args.timeout,
        "lock_timeout_s": None if args.wait else 0,
    }
    if args.executor == "pool":
        return _report(run_all(jobs=jobs, **options))
    return _run_all_submitit(args, jobs, options)


def _run_all_submitit(args: argparse.Namespace, jobs: int, options: dict[str, Any]) -> int:
    from mibench_lib.studies.cluster import SubmissionError, load_cluster_config, submit_all

    overrides = {
        "timeout_min": args.time_min,
        "slurm_partition": args.partition,
        "gpus_per_node": args.gpus,
        "mem_gb": args.mem_gb,
        "cpus_per_task": args.cpus,
        "slurm_array_parallelism": args.jobs if args.executor == "slurm" else None,
    }
    cluster = load_cluster_config(args.cluster_config, overrides)
    try:
        run = submit_all(
            args.executor, jobs=jobs, cluster=cluster, wait=not args.no_wait, **options
        )
    except SubmissionError as err:
        _say(f"mibench: {err}", sys.stderr)
        return EXIT_FAILED
    if args.no_wait:
        for r in run.results:
            _say(f"{r.status:12s} {r.study}/{r.config}  {r.detail}".rstrip())
        for s in run.submitted:
            _say(f"{'submitted':12s} {s.study}/{s.config}  job {s.job_id}")
        arrays = ",".join(sorted({s.job_id.split("_")[0] for s in run.submitted}))
        n = len(run.submitted)
        _say(f"{n} job{'' if n == 1 else 's'} submitted; logs in {display_path(run.folder)}")
        if arrays:
            _say(
                f"check them with: squeue -j {arrays}   (finished: sacct -j {arrays}); run the "
                "same command again once they have finished to see every configuration's status"
            )
        failed = [r for r in run.results if r.status == "failed"]
        for r in failed:
            _say(f"FAILED {r.study}/{r.config}: {r.detail}", sys.stderr)
        return EXIT_FAILED if failed else EXIT_OK
    return _report(run.results)


def _report(results: Sequence[Any]) -> int:
    """Print one status line per configuration and the summary; 1 if any failed."""
    for r in results:
        _say(f"{r.status:12s} {r.study}/{r.config}  {r.detail}".rstrip())
    failed = [r for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("ran", "skipped", "unavailable")}
    _say(
        f"{len(results)} configurations: {counts['ran']} ran, {counts['skipped']} already "
        f"complete, {counts['unavailable']} unavailable here, {len(failed)} failed"
    )
    for r in failed:
        _say(f"FAILED {r.study}/{r.config}: {r.detail}", sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _build_report(args: argparse.Namespace) -> int:
    from mibench_lib.studies import report
    from mibench_lib.studies.runner import REPO_ROOT

    readme, snapshot = REPO_ROOT / "README.md", REPO_ROOT / report.SNAPSHOT_DIR
    if (args.publish or args.check_readme) and not readme.is_file():
        raise _UsageError(f"--publish and --check-readme need the clone's {display_path(readme)}")
    try:
        return _report_steps(args, report, readme, snapshot)
    except report.ReportError as err:
        raise _UsageError(str(err)) from err


def _report_steps(args: argparse.Namespace, report: Any, readme: Path, snapshot: Path) -> int:
    from mibench_lib.studies.runner import OUTPUTS_DIR

    if args.check_readme:
        differ = report.update_readme(readme, snapshot, check=True)
        for block in differ:
            _say(f"out of date: {block}", sys.stderr)
        if differ:
            _say("run `mibench report --publish` after the studies, and commit", sys.stderr)
        return EXIT_FAILED if differ else EXIT_OK
    out_root = Path(args.out_root) if args.out_root is not None else OUTPUTS_DIR
    if not out_root.is_dir():
        raise _UsageError(f"no outputs folder {display_path(out_root)}: run a study first")
    status = EXIT_OK
    if not args.no_explorer:
        from papermill.exceptions import PapermillExecutionError

        from mibench_lib.studies.explore import execute_explorer

        try:
            execute_explorer(out_root, out_root / "explore.ipynb")
        except PapermillExecutionError as err:
            _say(
                f"mibench: explorer failed in cell {err.exec_count}: {err.ename}: {err.evalue}; "
                f"see {display_path(out_root / 'explore.ipynb')}",
                sys.stderr,
            )
            status = EXIT_FAILED
    summary = report.build_report_summary(out_root, force=args.force)
    _say(report.format_summary(summary))
    if args.publish:
        written = report.publish_snapshot(out_root, snapshot, report.readme_sources(readme))
        changed = report.update_readme(readme, snapshot)
        _say(
            f"published {len(written)} files to {display_path(snapshot)}; "
            f"{len(changed)} README blocks rewritten"
        )
    return EXIT_FAILED if summary.problems else status


def _compare(args: argparse.Namespace) -> int:
    from mibench_lib.studies.compare import (
        CompareError,
        IncompleteRunWarning,
        compare_markdown,
        compare_table,
        gather_results,
        save_compare,
    )

    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise _UsageError(f"--out {display_path(args.out)} is a file, not a folder")
    try:
        with warnings.catch_warnings():
            # An unfinished run is named in the table's notes; no Python warning on top of it.
            warnings.simplefilter("ignore", IncompleteRunWarning)
            df = gather_results(args.folders)
        table = compare_table(df, args.metrics)
        _say(compare_markdown(table))
        if args.out is not None:
            paths = save_compare(df, args.out, args.metrics)
            _say(f"wrote {', '.join(display_path(p) for p in paths.values())}")
    except CompareError as err:
        raise _UsageError(str(err)) from err
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mibench``; returns the exit status.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success, 1 when a run failed (or was refused: another run holds its output folder),
        2 for a usage, parameter or missing-file error.
    """
    try:
        from mibench_lib.studies.runner import (
            OutputLockedError,
            RunFailedError,
            progress_to_stderr,
        )
    except FileNotFoundError as err:  # $MIBENCH_ROOT names no study folder
        _say(f"mibench: error: {err}", sys.stderr)
        return EXIT_USAGE

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has already printed the usage message
        return int(exit_.code or 0)

    commands = {
        "run": _run,
        "run-all": _run_all,
        "validate": _validate,
        "compare": _compare,
        "report": _build_report,
    }
    try:
        # progress lines of the runner (skipped, running, finished) go to stderr for this call
        with progress_to_stderr():
            if args.command == "list":
                return _list()
            return commands[args.command](args)
    except (ParameterError, FileNotFoundError, _UsageError) as err:
        _say(f"mibench: error: {err}", sys.stderr)
        return EXIT_USAGE
    except OutputLockedError as err:
        _say(f"mibench: run refused: {err}", sys.stderr)
        return EXIT_FAILED
    except RunFailedError as err:
        _say(f"mibench: run failed: {err}", sys.stderr)
        return EXIT_FAILED
