"""Query-access attacks: queries per second against a bare loop over the same target.

Usage: ``python benchmarks/bench_query_attacks.py [--only brep_mi] [--threads 1] [--repeats 7]
[--chunks] [--mibench] [--check]``

A query-access attack spends its time in target queries (generator forward + target forward per
image), so its cost is measured as queries per second of its query phase against a hand-written
loop that sends the same batches to the same modules, with no oracle, under
``torch.inference_mode`` (``--check`` verifies, without timing, that a bare loop computes what
the attack computes, its random draws in the attack's order). Each figure is the *marginal* cost
of extra steps, ``(t(hi) - t(lo)) / (hi - lo)``, so set-up, start-point searches and final
passes are left out; it is the median of ``--repeats`` runs, attack and bare loop interleaved.
The ratio bare / attack queries per second is what the project holds to at most 1.2. The modules are the embedded
default's 32 px DCGAN generator (latent 100, width 8) and the ``mnist_cnn`` target (5 classes,
random weights: timing needs no training). Results go to
``benchmarks/results/query_attacks.json``.

The attacks are read from :data:`mibench_lib.attacks.SPECS` (every access level but white-box);
each needs a setup in :data:`SETUPS` (name -> function of the modules returning a
:class:`QueryCase`). A registered attack without one is reported as ``"no setup"``, an expected
one absent from the registry as ``"not registered"``, and one whose attack stage makes no queries
(``queries_in_attack=False``: LOKT spends them all on its priors) is skipped.

``--mibench`` times BREP-MI against a bare loop doing the per-iteration work of MIBench's
``BrepOptimization`` (ffhibnese/Model-Inversion-Attack-ToolBox): one generator + target call per
sphere point index (``sphere_points`` calls of one image per entry), +1/-1 label scores, the step,
the radius rule; no acceptance check, so 32 queries per entry per iteration against BREP-MI's 33.
The two are compared per query.

``--chunks`` measures BREP-MI's iteration (``_iteration``: 25 entries x 33 queries) for each
``query_batch`` and where the rest of its time goes (generator, target, the oracle's copies and
checks, the sphere draw, the label compare), and writes ``benchmarks/results/brep_chunks.json``
(one entry per thread count): the measurement behind BREP-MI's default ``query_batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mibench_lib.attacks import SPECS
from mibench_lib.attacks.brep_mi import _iteration, _sphere
from mibench_lib.generators.dcgan import DCGANGenerator
from mibench_lib.models import MODELS
from mibench_lib.oracle import TargetOracle, _plain_copy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAPE = (1, 32, 32)
ENTRIES = 25  # 5 labels x 5 entries, as bench_attack_steps.py
#: Query-access attacks expected in the registry (being written in parallel); each needs a setup.
EXPECTED = ("brep_mi", "rlb_mi", "mirror", "c2fmi", "lokt", "secretgen")
CHUNKS: tuple[int | None, ...] = (32, 64, 100, 128, 200, 256, 400, 800, None)
#: One run of ``steps`` steps; returns the number of target queries it made.
Runner = Callable[[int], int]


@dataclass
class QueryCase:
    """An attack and its bare loop, as functions of the step count returning queries made."""

    attack: Runner
    bare: Runner
    doc: str
    #: ``check(steps)``: largest gap between what the attack and the bare loop computed (their
    #: random draws in the same order), for ``--check``; None when not written.
    check: Callable[[int], float] | None = None


def _modules() -> dict:
    torch.manual_seed(0)
    target = MODELS["mnist_cnn"](num_classes=5, input_shape=SHAPE).eval()
    gen = DCGANGenerator(latent_dim=100, output_shape=SHAPE, width=8).eval()
    for m in (target, gen):
        m.requires_grad_(False)
    return {"target": target, "generator": gen}


def _labelled_latents(m: dict, n: int = ENTRIES) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clamped Gaussian latents and the target's labels of them (valid BREP start points)."""
    z = torch.randn(n, 100, generator=torch.Generator().manual_seed(1)).clamp(-1.5, 1.5)
    with torch.inference_mode():
        y = m["target"](m["generator"](z)).argmax(dim=1)
    return z, y.clone()


# -- BREP-MI -----------------------------------------------------------------------------------------
def brep_mi_setup(m: dict, query_batch: int | None = 256) -> QueryCase:
    """BREP-MI: 25 entries x (32 sphere points + 1 acceptance check) per iteration, the sphere
    in chunks of ``query_batch`` images; the bare loop sends the same batches."""
    gen, target = m["generator"], m["target"]
    z0, y = _labelled_latents(m)
    last: dict[str, torch.Tensor] = {}

    def attack(steps: int) -> int:
        oracle = TargetOracle(target, access="label")
        res = SPECS["brep_mi"].run(oracle, y, generator=gen, start_latents=z0, max_iters=steps,
                                   query_batch=query_batch,
                                   rng=torch.Generator().manual_seed(0))  # fmt: skip
        last["attack"] = res.extras["last_latents"]
        return oracle.queries

    def bare(steps: int) -> int:
        rng = torch.Generator().manual_seed(0)
        z, radius, sent = z0.clone(), torch.full((ENTRIES,), 2.0), 0
        with torch.inference_mode():
            sent += int(target(gen(z)).argmax(dim=1).numel())  # the start check
            for _ in range(steps):
                gauss = torch.randn(ENTRIES, 32, 100, generator=rng)
                offsets = gauss * (radius[:, None, None] / gauss.norm(dim=2, keepdim=True))
                points = (z[:, None, :] + offsets).reshape(-1, 100)
                parts = points.split(query_batch) if query_batch else (points,)
                pred = torch.cat([target(gen(p)).argmax(dim=1) for p in parts])
                sent += pred.numel()
                score = (pred.view(ENTRIES, 32) == y[:, None]).float() * 2 - 1
                grew = score.sum(dim=1) > 24
                radius = torch.where(grew, radius * 1.3, radius)
                step = (radius / 3).clamp(max=3.0)
                direction = (((score - 1) / 2)[:, :, None] * offsets).mean(dim=1)
                cand = (z + step[:, None] * direction / radius[:, None]).clamp(-1.5, 1.5)
                ok = target(gen(cand)).argmax(dim=1) == y
                sent += ok.numel()
                z = torch.where(ok[:, None], cand, z)
        last["bare"] = z
        return sent

    def check(steps: int) -> float:
        attack(steps), bare(steps)
        return float((last["attack"] - last["bare"]).abs().max())

    return QueryCase(attack, bare, brep_mi_setup.__doc__ or "", check)


def mibench_brep_loop(m: dict) -> Runner:
    """MIBench's ``BrepOptimization`` iteration, written out: for each of the 32 sphere point
    indices one generator + target call on the 25 entries' points, +1/-1 label scores, the
    step ``min(R / 3, 3)`` along the score-weighted mean direction, R x 1.3 when the mean score
    exceeds 0.5; under ``torch.no_grad`` as there. 32 queries per entry per iteration."""
    gen, target = m["generator"], m["target"]
    z0, y = _labelled_latents(m)

    def run(steps: int) -> int:
        z, radius, sent = z0.clone(), torch.full((ENTRIES,), 2.0), 0
        with torch.no_grad():
            for _ in range(steps):
                step = (radius * 0.333).clamp(max=3.0)
                dirs = torch.randn(32, ENTRIES, 100)
                dirs = dirs / (dirs.pow(2).sum(dim=-1, keepdim=True).sqrt() + 1e-5)
                points = z + dirs * radius[None, :, None]
                scores = []
                for i in range(32):
                    pred = target(gen(points[i])).argmax(dim=-1)
                    scores.append(torch.where(pred == y, 1.0, -1.0))
                    sent += pred.numel()
                score = torch.stack(scores)
                z = z + (score[:, :, None] * dirs).mean(dim=0) * step[:, None]
                radius = torch.where(score.mean(dim=0) > 0.5, radius * 1.3, radius)
        return sent

    return run


def replay_setup(
    name: str, steps_kw: str, doc: str, **kwargs: object
) -> Callable[[dict], QueryCase]:
    """A setup for any attack that takes the DCGAN ``generator``: the bare loop replays the
    batch sizes the target received during the attack run of the same step count (random
    latents through generator and target under ``torch.inference_mode``), so it is the attack's
    query traffic without its search logic (their ratio is the attack's cost per query of
    everything else it does)."""

    def setup(m: dict) -> QueryCase:
        gen, target = m["generator"], m["target"]
        _, y = _labelled_latents(m)
        sizes: dict[int, list[int]] = {}

        def attack(steps: int) -> int:
            seen: list[int] = []
            hook = target.register_forward_hook(lambda mod, i, o: seen.append(i[0].shape[0]))
            try:
                oracle = TargetOracle(target, access=SPECS[name].access)
                SPECS[name].run(oracle, y, generator=gen, rng=torch.Generator().manual_seed(0),
                                **{steps_kw: steps}, **kwargs)  # fmt: skip
            finally:
                hook.remove()
            sizes[steps] = seen
            return oracle.queries

        def bare(steps: int) -> int:
            if steps not in sizes:
                attack(steps)
            rng = torch.Generator().manual_seed(0)
            with torch.inference_mode():
                for n in sizes[steps]:
                    target(gen(torch.randn(n, gen.latent_dim, generator=rng))).softmax(dim=1)
            return sum(sizes[steps])

        return QueryCase(attack, bare, doc)

    return setup


#: Registry name -> setup. A new query attack: add a function of the modules (``_modules()``)
#: returning a QueryCase whose attack runs ``steps`` steps of its query phase through a
#: TargetOracle and whose bare loop sends the same batches to the same generator and target
#: under ``torch.inference_mode`` (both return the queries they made: they must agree).
SETUPS: dict[str, Callable[[dict], QueryCase]] = {
    "brep_mi": brep_mi_setup,
    # before learn_start (256) no SAC update runs: the episodes are the query phase alone
    # (policy sample, generator, oracle, reward, replay write, test rollout)
    "rlb_mi": replay_setup(
        "rlb_mi",
        "episodes",
        "RLB-MI: 25 agents, episodes before learn_start (no SAC update): the query phase alone; "
        "the bare loop replays the target's batch sizes",
    ),
}


# -- timing ------------------------------------------------------------------------------------------
def marginal(run: Runner, lo: int, hi: int) -> tuple[float, float]:
    """(milliseconds, queries) per step from ``hi`` steps minus ``lo`` steps."""
    t0 = time.perf_counter()
    q_lo = run(lo)
    t1 = time.perf_counter()
    q_hi = run(hi)
    t2 = time.perf_counter()
    return 1000 * ((t2 - t1) - (t1 - t0)) / (hi - lo), (q_hi - q_lo) / (hi - lo)


def throughput(names: list[str], args: argparse.Namespace) -> dict:
    m = _modules()
    cases = {}
    for name in names:
        if name not in SPECS:
            print(f"{name:>10}: not registered", flush=True)
            continue
        if not SPECS[name].queries_in_attack:
            print(f"{name:>10}: no queries in its attack stage (all in its priors)", flush=True)
            cases[name] = {"status": "no queries in the attack stage"}
            continue
        if name not in SETUPS:
            print(f"{name:>10}: no setup (add one to SETUPS)", flush=True)
            cases[name] = {"status": "no setup"}
            continue
        case = SETUPS[name](m)
        case.attack(1), case.bare(1)  # warm-up
        a, b, qa, qb = [], [], set(), set()
        for _ in range(args.repeats):
            ms, q = marginal(case.attack, args.lo, args.hi)
            a.append(ms), qa.add(q)
            ms, q = marginal(case.bare, args.lo, args.hi)
            b.append(ms), qb.add(q)
        if qa != qb or len(qa) != 1:
            raise RuntimeError(f"{name}: attack sent {qa} queries per step, bare loop {qb}")
        q = qa.pop()
        ms_a, ms_b = statistics.median(a), statistics.median(b)
        cases[name] = {
            "queries_per_step": q,
            "attack_ms_per_step": round(ms_a, 2),
            "bare_ms_per_step": round(ms_b, 2),
            "attack_queries_per_s": round(1000 * q / ms_a),
            "bare_queries_per_s": round(1000 * q / ms_b),
            "ratio": round(ms_a / ms_b, 3),
            "doc": case.doc,
        }
        print(f"{name:>10}: {q:g} queries/step, attack {1000 * q / ms_a:7.0f} q/s, bare "
              f"{1000 * q / ms_b:7.0f} q/s, ratio {ms_a / ms_b:.2f}", flush=True)  # fmt: skip
    return cases


def versus_mibench(args: argparse.Namespace) -> dict:
    m = _modules()
    ours = SETUPS["brep_mi"](m).attack
    theirs = mibench_brep_loop(m)
    ours(1), theirs(1)
    a, b, qa, qb = [], [], 0.0, 0.0
    for _ in range(args.repeats):
        ms, qa = marginal(ours, args.lo, args.hi)
        a.append(ms)
        ms, qb = marginal(theirs, args.lo, args.hi)
        b.append(ms)
    ms_a, ms_b = statistics.median(a), statistics.median(b)
    ratio = (ms_a / qa) / (ms_b / qb)
    print(f"brep_mi vs MIBench: {ms_a:.1f} ms/iter ({qa:g} queries) against {ms_b:.1f} ms/iter "
          f"({qb:g} queries): per query ratio {ratio:.2f}", flush=True)  # fmt: skip
    return {
        "brep_mi_ms_per_iter": round(ms_a, 2),
        "brep_mi_queries_per_iter": qa,
        "mibench_loop_ms_per_iter": round(ms_b, 2),
        "mibench_loop_queries_per_iter": qb,
        "ratio_per_query": round(ratio, 3),
        "doc": mibench_brep_loop.__doc__,
    }


# -- BREP-MI's chunk size ----------------------------------------------------------------------------
def chunk_sweep(args: argparse.Namespace) -> dict:
    """ms per ``_iteration`` for every chunk size, and its parts, interleaved rounds."""
    m = _modules()
    gen, target = m["generator"], m["target"]
    oracle = TargetOracle(target, access="label")
    z, y = _labelled_latents(m)
    radius = torch.full((ENTRIES,), 2.0)
    latents = torch.randn(ENTRIES * 32, 100)
    images = torch.rand(ENTRIES * 32, *SHAPE)

    def parts(x: torch.Tensor, c: int | None) -> tuple[torch.Tensor, ...]:
        return x.split(c) if c else (x,)

    def iteration(c: int | None) -> None:
        with torch.no_grad():
            _iteration(oracle, gen, z, y, radius, sphere_points=32, expansion=1.3,
                       point_clamp=1.5, repulsion_only=True, rng=None, chunk=c)  # fmt: skip

    def generator(c: int | None) -> None:
        with torch.no_grad():
            [gen(p) for p in parts(latents, c)]

    def bare_target(c: int | None) -> None:
        with torch.inference_mode():
            [target(p).argmax(dim=1) for p in parts(images, c)]

    def oracle_target(c: int | None) -> None:
        with torch.no_grad():
            [oracle(p) for p in parts(images, c)]

    timed = {"iteration": iteration, "generator": generator, "target": bare_target,
             "target_via_oracle": oracle_target}  # fmt: skip
    samples: dict = {c: {k: [] for k in timed} for c in CHUNKS}
    for c in CHUNKS:
        iteration(c)
    for _ in range(args.rounds):
        for c in CHUNKS:
            for k, f in timed.items():
                t0 = time.perf_counter()
                f(c)
                samples[c][k].append(1000 * (time.perf_counter() - t0))
    rows = {}
    for c in CHUNKS:
        row = {f"{k}_ms": round(statistics.median(v), 2) for k, v in samples[c].items()}
        row["iteration_min_ms"] = round(min(samples[c]["iteration"]), 2)
        rows[str(c)] = row
        print(f"query_batch {c!s:>5}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()),
              flush=True)  # fmt: skip

    def small(f: Callable[[], object], n: int = 50) -> float:
        f()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(ts), 3)

    cpu = torch.device("cpu")
    pred = torch.randint(0, 5, (ENTRIES * 32,))
    with torch.no_grad():
        overhead = {
            "sphere_draw_ms": small(lambda: _sphere(z, radius, 32, None)),
            "plain_copy_800_ms": small(lambda: _plain_copy(images, cpu)),
            "label_compare_ms": small(lambda: pred.view(ENTRIES, 32) == y[:, None]),
            "acceptance_check_25_ms": small(lambda: oracle(gen(z))),
            "acceptance_check_25_bare_ms": small(lambda: target(gen(z)).argmax(dim=1)),
        }
    print("overhead: " + ", ".join(f"{k} {v}" for k, v in overhead.items()), flush=True)
    best = min(rows, key=lambda c: rows[c]["iteration_ms"])
    return {"rounds": args.rounds, "per_query_batch": rows, "overhead": overhead,
            "fastest_median": best}  # fmt: skip


def _write(path: Path, key: str, value: object) -> None:
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update({"machine": platform.machine(), "torch": torch.__version__})
    record[key] = value
    # the machine may be shared: the load when each entry was written (1, 5, 15 minutes)
    record.setdefault("load_average", {})[key] = [round(x, 2) for x in os.getloadavg()]
    path.write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated attacks (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=15, help="--chunks: interleaved rounds")
    ap.add_argument("--lo", type=int, default=2)
    ap.add_argument("--hi", type=int, default=12)
    ap.add_argument("--chunks", action="store_true", help="BREP-MI's query_batch sweep")
    ap.add_argument("--mibench", action="store_true", help="BREP-MI against MIBench's loop")
    ap.add_argument("--check", action="store_true",
                    help="no timing: check that each bare loop computes what the attack does")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        m = _modules()
        for name in [n for n in args.only.split(",") if n] or list(SETUPS):
            check = SETUPS[name](m).check
            gap = float("nan") if check is None else check(4)
            print(f"{name:>10}: largest gap after 4 steps {gap:.1e} "
                  f"{'(same work)' if gap < 1e-5 else '(DIFFERENT or unchecked)'}")  # fmt: skip
        return
    threads = f"{torch.get_num_threads()}_threads"
    if args.chunks:
        _write(RESULTS / "brep_chunks.json", threads, chunk_sweep(args))
        return
    out = RESULTS / "query_attacks.json"
    if args.mibench:
        _write(out, f"brep_mi_vs_mibench_{threads}", versus_mibench(args))
        return
    query_attacks = [n for n, s in SPECS.items() if s.access != "white-box"]
    names = [n for n in args.only.split(",") if n] or list(
        dict.fromkeys([*query_attacks, *EXPECTED])
    )
    record = json.loads(out.read_text()) if out.exists() else {}
    cases = record.get(threads, {})
    cases.update(throughput(names, args))
    _write(out, threads, cases)


if __name__ == "__main__":
    main()
