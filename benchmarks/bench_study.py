"""Time the predictive-power study on the embedded default: cold cache, rerun, attack-only change.

Usage: ``python benchmarks/bench_study.py [--config parameters/predictive_power/default.yaml]``

Three runs of ``mibench run`` in fresh temporary cache and output folders:

1. **cold**: empty artifact cache, nothing computed yet (trains evaluator, delta_face extractor,
   GAN and one target per seed, then runs every attack);
2. **rerun**: identical parameters: the completed configuration is skipped;
3. **attack change**: only attack parameters differ (MIFace's step size; only MIFace is run): the
   notebook reruns the attack but every trained model comes from the cache (checked: no new cache
   file appears).

Where the cold time goes is read back from the run itself: training wall times from the cache
metadata, attack wall times from ``results.csv``. Results go to ``benchmarks/results/``.

``--summarize WORKDIR`` only reads back a cold run made by hand with
``mibench run CONFIG -p cache_dir WORKDIR/cache --out-root WORKDIR/outputs`` (no reruns); with
``--wall-s`` it also records the wall time measured around that command.

A study runs its jobs in ``workers`` processes (one per CPU thread by default), so the per-kind
training and per-attack times, summed over jobs, add up to more than the wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="parameters/predictive_power/default.yaml")
    ap.add_argument(
        "--workdir", default=None, help="keep cache and outputs here (default: a temp dir)"
    )
    ap.add_argument(
        "--summarize", default=None, help="only summarise a finished cold run in this workdir"
    )
    ap.add_argument(
        "--wall-s", type=float, default=None, help="with --summarize: measured command wall time"
    )
    args = ap.parse_args()
    if args.summarize:
        return summarize(Path(args.config), Path(args.summarize), args.wall_s)
    cfg = Path(args.config)
    params = yaml.safe_load((ROOT / cfg).read_text())
    mibench = str(Path(sys.executable).with_name("mibench"))
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.workdir or scratch)
        if any(tmp.glob("*")):
            raise SystemExit(f"{tmp} is not empty: the cold run needs an empty cache")
        cache, out_root = Path(tmp) / "cache", Path(tmp) / "outputs"
        base = [
            mibench,
            "run",
            str(cfg),
            "--out-root",
            str(out_root),
            "-p",
            "cache_dir",
            str(cache),
            "-p",
            "progress",
            "false",
        ]
        cold = run(base)
        out = out_root / cfg.parent.name / cfg.stem
        df = pd.read_csv(out / "results.csv")
        env = json.loads((out / "environment.json").read_text())
        rerun = run(base)
        files_before = sorted(p.name for p in cache.rglob("*.safetensors"))
        changed = dict(params["attack_kwargs"])
        changed["miface"] = {**changed.get("miface", {}), "lr": 0.05}
        attack_change = run(
            [*base, "-p", "attack_kwargs", json.dumps(changed), "-p", "attacks", '["miface"]']
        )
        files_after = sorted(p.name for p in cache.rglob("*.safetensors"))
        training = training_times(cache)
    attack_time = df.groupby("attack")["wall_time_s"].sum().round(1).to_dict()
    report = {
        "config": str(cfg),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "cold_s": round(cold, 1),
        "rerun_s": round(rerun, 1),
        "attack_change_s": round(attack_change, 1),
        "models_reused_on_attack_change": files_before == files_after,
        "training_s_by_kind": training,
        "attack_s_by_attack": attack_time,
        "notebook_wall_s": env.get("wall_s"),
    }
    dest = ROOT / "benchmarks" / "results" / f"{cfg.parent.name}_{cfg.stem}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def training_times(cache: Path) -> dict[str, float]:
    """Seconds spent training each kind of cached artifact (from the cache metadata)."""
    out: dict[str, float] = {}
    for meta_file in cache.rglob("*.json"):
        meta = json.loads(meta_file.read_text())
        info = meta["metadata"]  # target priors: the build seconds the study measured
        seconds = float(info.get("build_s", info.get("wall_time_s", 0.0)))
        out[meta["kind"]] = round(out.get(meta["kind"], 0.0) + seconds, 1)
    return out


def summarize(cfg: Path, workdir: Path, wall_s: float | None = None) -> int:
    """Report of a cold run made by hand (see module docstring)."""
    out = workdir / "outputs" / cfg.parent.name / cfg.stem
    env = json.loads((out / "environment.json").read_text())
    df = pd.read_csv(out / "results.csv")
    # rows reported under a second defense (same_run_as) were not computed again
    computed = df[df["same_run_as"].isna()] if "same_run_as" in df else df
    report = {
        "config": str(cfg),
        "machine": f"{platform.machine()}, {env.get('cpu_count')} cores, "
        f"{env.get('torch_threads')} torch threads",
        "torch": env.get("torch"),
        "cold_s": wall_s if wall_s is not None else env.get("wall_s"),
        "notebook_wall_s": env.get("wall_s"),
        "training_s_by_kind": training_times(workdir / "cache"),
        "attack_s_by_attack": computed.groupby("attack")["wall_time_s"].sum().round(1).to_dict(),
        "attack_runs_computed": len(computed),
        "rows": len(df),
        "note": "training and attack seconds are summed over jobs, which run in parallel workers",
    }
    dest = ROOT / "benchmarks" / "results" / f"{cfg.parent.name}_{cfg.stem}.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
