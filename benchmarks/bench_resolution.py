"""Time every piece of a study at several target resolutions, on one torch thread.

Usage::

    python benchmarks/bench_resolution.py                       # 16, 32, 64 px, default recipes
    python benchmarks/bench_resolution.py --resolutions 64 --gan-width 4 --gmi-steps 300
    python benchmarks/bench_resolution.py --quick               # smoke run: about a minute for all three

For each resolution the study's own code paths run once, cold, in a throwaway artifact cache:
``load_dataset(dataset, resolution=R)``; the evaluator, the delta_face extractor and the GAN prior
as a :class:`~mibench_lib.studies.harness.StudySetting` builds them; one target as a study job
loads it (:func:`~mibench_lib.studies.jobs.load_target`, undefended, one seed); then each attack
through its oracle (:func:`~mibench_lib.studies.harness.run_attack`) and the scoring of its
reconstructions (:func:`~mibench_lib.studies.harness.score`), timed apart. The first scoring of a
resolution (GMI's, in the default order) includes the one-off features of the private training
images that every later scoring reuses, as the first scoring in each study worker does.

The recipes come from ``--config`` (default ``parameters/predictive_power/default.yaml``) with the
command-line overrides on top. The GAN is trained for ``--gan-epochs`` epochs only (default 2) and
its time extrapolated linearly to the configured ``gan_train.epochs`` (column ``gan_s``; the
measured part is ``gan_meas_s``); the attacks then use that briefly trained prior, so GMI and
BREP-MI accuracies are those of a ``--gan-epochs`` prior unless it is set to the full count.

``study_cpu_s`` adds the pieces up the way a study of ``--seeds`` seeds spends them: evaluator,
extractor and (extrapolated) GAN once, target, attacks and scoring once per seed. It is CPU time
on one thread: divide by the worker count for a lower bound of the wall time.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mibench_lib.attacks import ATTACK_ACCESS  # noqa: E402
from mibench_lib.cache import ArtifactCache  # noqa: E402
from mibench_lib.oracle import TargetOracle  # noqa: E402
from mibench_lib.studies.harness import prepare_setting, run_attack, score  # noqa: E402
from mibench_lib.studies.jobs import TargetRef, load_target  # noqa: E402

ATTACK_ORDER = ("gmi", "brep_mi", "miface")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def apply_overrides(params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The study parameters with the command-line overrides applied (a deep copy)."""
    p = copy.deepcopy(params)
    for key, value in (
        ("target_train", args.target_epochs),
        ("evaluator_train", args.evaluator_epochs),
        ("face_train", args.face_epochs),
    ):
        if value is not None:
            p[key]["epochs"] = value
    if args.target_eval_every is not None:
        p["target_train"].pop("eval_every", None)
        if args.target_eval_every:
            p["target_train"]["eval_every"] = args.target_eval_every
    if args.gan_width is not None:
        p["gan"] = {**p["gan"], "width": args.gan_width, "critic_width": args.gan_width}
    if args.gan_full_epochs is not None:
        p["gan_train"]["epochs"] = args.gan_full_epochs
    kw = p["attack_kwargs"]
    if args.gmi_steps is not None:
        kw["gmi"]["steps"] = args.gmi_steps
    if args.gmi_restarts is not None:
        kw["gmi"]["restarts"] = args.gmi_restarts
    if args.brep_max_iters is not None:
        kw["brep_mi"]["max_iters"] = args.brep_max_iters
    if args.brep_stale is not None:
        kw["brep_mi"]["max_stale_iters"] = args.brep_stale
    if args.miface_max_iter is not None:
        kw["miface"]["max_iter"] = args.miface_max_iter
    return p


def bench_resolution(
    params: dict[str, Any],
    resolution: int,
    *,
    attacks: list[str],
    gan_epochs: int,
    seed: int,
    seeds: int,
    cache_dir: Path,
) -> dict[str, Any]:
    """Build every piece of one resolution cold and return times (s) and qualities as one row."""
    gan_train = {**params["gan_train"], "epochs": gan_epochs}
    setting = prepare_setting(
        cache=ArtifactCache(cache_dir),
        dataset=params["dataset"],
        dataset_kwargs={**params["dataset_kwargs"], "resolution": resolution},
        classes=list(params["classes"]),
        samples_per_class=params["samples_per_class"],
        model_seed=params["model_seed"],
        evaluator_arch=params["evaluator_arch"],
        evaluator_train=params["evaluator_train"],
        face_arch=params["face_arch"],
        face_train=params["face_train"],
        face_weights="",
        gan=params["gan"],
        gan_train=gan_train,
        attacks=attacks,
        attack_kwargs=params["attack_kwargs"],
        query_budgets={},
        inception_weights="",
        device="cpu",
        out_dir=None,
        progress=False,
        eager=False,
    )
    row: dict[str, Any] = {"res": resolution}
    evaluator, row["evaluator_s"] = timed(lambda: setting.evaluator)
    face, row["face_s"] = timed(lambda: setting.face)
    prior, row["gan_meas_s"] = timed(lambda: setting.prior)
    full_epochs = int(params["gan_train"]["epochs"])
    row["gan_s"] = row["gan_meas_s"] / gan_epochs * full_epochs
    ref = TargetRef(params["target_arch"], params["target_train"], seed)
    target, row["target_s"] = timed(lambda: load_target(setting, ref))
    row.update(
        target_acc=target.natural_acc,
        evaluator_acc=evaluator.test_acc,
        face_acc=face.test_acc,
        gan_w=prior.meta["final_wasserstein"],
    )
    per_seed = row["target_s"]
    for name in attacks:
        oracle = TargetOracle(target.model, access=ATTACK_ACCESS[name])
        result, row[f"{name}_s"] = timed(
            lambda name=name, oracle=oracle: run_attack(setting, name, oracle, seed=seed)
        )
        scores, row[f"{name}_score_s"] = timed(
            lambda result=result: score(setting, result, target.model)
        )
        per_seed += row[f"{name}_s"] + row[f"{name}_score_s"]
        row[f"{name}_acc1"] = scores["acc1"]
        row[f"{name}_queries"] = result.queries
        if name == "gmi" and "acc1_selected" in scores:
            row["gmi_acc1_sel"] = scores["acc1_selected"]
        if name == "brep_mi":
            row["brep_mi_iters"] = float(result.extras["iterations"].float().mean())
            row["brep_mi_start"] = float(result.extras["found_start"].float().mean())
        if name == "miface":
            row["miface_steps"] = float(result.extras["stop_step"].float().mean())
    row["study_cpu_s"] = row["evaluator_s"] + row["face_s"] + row["gan_s"] + seeds * per_seed
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="parameters/predictive_power/default.yaml")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--attacks", nargs="+", default=list(ATTACK_ORDER), choices=ATTACK_ORDER)
    ap.add_argument("--seed", type=int, default=0, help="seed of the target and the attacks")
    ap.add_argument("--seeds", type=int, default=3, help="seeds a study runs (study_cpu_s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a study job uses 1)")
    ap.add_argument("--gan-epochs", type=int, default=2, help="GAN epochs actually trained")
    ap.add_argument("--gan-full-epochs", type=int, help="extrapolate to (default: the config's)")
    ap.add_argument("--gan-width", type=int, help="generator and critic width")
    ap.add_argument("--target-epochs", type=int)
    ap.add_argument(
        "--target-eval-every", type=int, help="test-accuracy interval in steps; 0: epoch ends only"
    )
    ap.add_argument("--evaluator-epochs", type=int)
    ap.add_argument("--face-epochs", type=int)
    ap.add_argument("--gmi-steps", type=int)
    ap.add_argument("--gmi-restarts", type=int)
    ap.add_argument("--brep-max-iters", type=int, help="cap on BREP-MI iterations per label")
    ap.add_argument("--brep-stale", type=int, help="BREP-MI max_stale_iters")
    ap.add_argument("--miface-max-iter", type=int)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 epoch each, 1 GAN epoch, 20 GMI steps, 20 BREP-MI / MIFace iterations",
    )
    ap.add_argument("--json", type=Path, help="also write the rows and settings here")
    args = ap.parse_args(argv)
    if args.quick:
        quick = dict(
            target_epochs=1,
            evaluator_epochs=1,
            face_epochs=1,
            gan_epochs=1,
            gmi_steps=20,
            brep_max_iters=20,
            miface_max_iter=20,
        )
        for key, value in quick.items():
            if getattr(args, key) in (None, ap.get_default(key)):
                setattr(args, key, value)
    if args.gan_epochs < 1:
        ap.error(f"--gan-epochs must be >= 1, got {args.gan_epochs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    params = apply_overrides(yaml.safe_load((ROOT / args.config).read_text()), args)
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.resolutions:
            rows.append(
                bench_resolution(
                    params,
                    res,
                    attacks=list(args.attacks),
                    gan_epochs=args.gan_epochs,
                    seed=args.seed,
                    seeds=args.seeds,
                    cache_dir=Path(tmp) / f"cache{res}",
                )
            )
            elapsed = time.perf_counter() - t0
            print(f"{res} px done after {elapsed:.0f} s", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows).set_index("res")
    times = [c for c in df.columns if c.endswith("_s")]
    print(
        f"{args.config}; {args.threads} torch thread(s); GAN {args.gan_epochs} epoch(s) measured,"
        f" gan_s extrapolated to {params['gan_train']['epochs']}; gan {params['gan']};"
        f" target {params['target_train']}; evaluator epochs {params['evaluator_train']['epochs']};"
        f" face epochs {params['face_train']['epochs']}"
    )
    for name in args.attacks:
        print(f"  {name}: {params['attack_kwargs'][name]}")
    print("\nWall time (s)")
    print(df[times].round(1).to_string())
    print("\nQuality")
    print(df[[c for c in df.columns if c not in times]].round(3).to_string())
    if args.json:
        record = {
            "config": args.config,
            "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "params": params,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
