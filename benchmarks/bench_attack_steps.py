"""Each attack's cost per step against a bare PyTorch loop doing the same work.

Usage: ``python benchmarks/bench_attack_steps.py [--only gmi,kedmi] [--threads 2]``

For every attack family the attack function and a hand-written loop run on the same modules (the
embedded default's 32 px DCGAN generator and WGAN critic, the ``mnist_cnn`` target, 5 labels) and
the same batch. A run's cost per step is measured as the *marginal* time of extra steps,
``(t(hi) - t(lo)) / (hi - lo)``, so set-up, contract checks and the final selection pass are
left out; each figure is the median of ``--repeats`` runs, attack and bare loop interleaved.
The ratio attack / bare is what the project holds to at most 1.2. Results go to
``benchmarks/results/attack_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mibench_lib.attacks import SPECS
from mibench_lib.generators.dcgan import DCGANGenerator, WGANCritic
from mibench_lib.models import MODELS
from mibench_lib.oracle import TargetOracle

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 32, 32)
LABELS = torch.arange(5)
Runner = Callable[[int], None]


def _modules() -> dict:
    torch.manual_seed(0)
    target = MODELS["mnist_cnn"](num_classes=5, input_shape=SHAPE).eval()
    gen = DCGANGenerator(latent_dim=100, output_shape=SHAPE, width=8).eval()
    critic = WGANCritic(input_shape=SHAPE, width=8).eval()
    for m in (target, gen, critic):
        m.requires_grad_(False)
    return {"target": target, "generator": gen, "discriminator": critic}


def _attack(name: str, steps_kw: str, m: dict, **kwargs) -> Runner:
    """The registered attack with ``steps_kw`` steps, as a function of the step count."""

    def run(steps: int) -> None:
        oracle = TargetOracle(m["target"])
        SPECS[name].run(oracle, LABELS, rng=torch.Generator().manual_seed(0),
                        **{steps_kw: steps}, **kwargs)  # fmt: skip

    return run


# -- one bare loop per family ----------------------------------------------------------------------
def gmi_case(m: dict) -> tuple[Runner, Runner]:
    """GMI: 5 labels x 5 restarts, -D(G(z)) + 100 CE(T(G(z)), y), Nesterov SGD, clamp."""
    gen, critic, target = m["generator"], m["discriminator"], m["target"]

    def bare(steps: int) -> None:
        y = LABELS.repeat(5)
        z = torch.randn(25, 100, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        opt = torch.optim.SGD([z], lr=0.01, momentum=0.9, nesterov=True)
        for _ in range(steps):
            images = gen(z)
            loss = -critic(images) + 100 * F.cross_entropy(target(images), y, reduction="none")
            (z.grad,) = torch.autograd.grad(loss.sum() / 5, z)
            opt.step()
            with torch.no_grad():
                z.clamp_(-1, 1)

    attack = _attack("gmi", "steps", m, generator=gen, discriminator=critic,
                     lr=0.01, loss_divisor=5, restarts=5, select="all")  # fmt: skip
    return attack, bare


def miface_case(m: dict) -> tuple[Runner, Runner]:
    """MIFace: gradient descent on 1 - p_y in pixel space, from the zero image."""
    target = m["target"]

    def bare(steps: int) -> None:
        x = torch.zeros(5, *SHAPE)
        for _ in range(steps):
            x.requires_grad_(True)
            cost = 1 - F.softmax(target(x), dim=1).gather(1, LABELS[:, None]).squeeze(1)
            (g,) = torch.autograd.grad(cost.sum(), x)
            with torch.no_grad():
                x = (x - 0.1 * g).clamp(0, 1)

    # threshold 1.0: no sample stops early, every step does the full batch's work
    return _attack("miface", "max_iter", m, threshold=1.0, window=10**6), bare


def deepinversion_case(m: dict) -> tuple[Runner, Runner]:
    """DeepInversion: pixels, jitter, CE + BN-statistics prior + TV-L2, Adam."""
    target = m["target"]
    bns = [b for b in target.modules() if isinstance(b, torch.nn.BatchNorm2d)]

    def bare(steps: int) -> None:
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(module, inputs):
            x = inputs[0]
            stats.append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))

        handles = [b.register_forward_pre_hook(hook) for b in bns]
        rng = torch.Generator().manual_seed(0)
        v = torch.randn(5, *SHAPE, generator=rng).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=0.05)
        try:
            for _ in range(steps):
                dh, dw = torch.randint(-2, 3, (2,), generator=rng).tolist()
                vj = torch.roll(v, shifts=(dh, dw), dims=(2, 3))
                stats.clear()
                loss = F.cross_entropy(target(vj * 0.5 + 0.5), LABELS)
                for b, (mu, var) in zip(bns, stats, strict=True):
                    loss = loss + 10 * (
                        torch.norm(b.running_mean - mu) + torch.norm(b.running_var - var)
                    )
                d1 = vj[:, :, :, :-1] - vj[:, :, :, 1:]
                d2 = vj[:, :, :-1, :] - vj[:, :, 1:, :]
                loss = loss + 2.5e-5 * (d1.norm() + d2.norm())
                (v.grad,) = torch.autograd.grad(loss, v)
                opt.step()
        finally:
            for h in handles:
                h.remove()

    attack = _attack("deepinversion", "iterations", m, lr=0.05, betas=(0.9, 0.999),
                     schedule="constant", warmup=0, clip=False, jitter=2, flip=False,
                     r_feature=10.0, first_bn_multiplier=1.0, tv_l2=2.5e-5, l2=0.0,
                     mean=0.5, std=0.5)  # fmt: skip
    return attack, bare


CASES: dict[str, Callable[[dict], tuple[Runner, Runner]]] = {
    "gmi": gmi_case,
    "miface": miface_case,
    "deepinversion": deepinversion_case,
}


def marginal_ms(run: Runner, lo: int, hi: int) -> float:
    """Milliseconds per step from the time of ``hi`` steps minus that of ``lo`` steps."""
    times = []
    for steps in (lo, hi):
        t0 = time.perf_counter()
        run(steps)
        times.append(time.perf_counter() - t0)
    return 1000 * (times[1] - times[0]) / (hi - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated cases (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lo", type=int, default=10)
    ap.add_argument("--hi", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attack_steps.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(CASES)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    record.update({"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                   "torch": torch.__version__, "steps": [args.lo, args.hi]})  # fmt: skip
    cases = record.setdefault("cases", {})
    for name in names:
        attack, bare = CASES[name](_modules())
        attack(2), bare(2)  # warm-up
        a, b = [], []
        for _ in range(args.repeats):
            a.append(marginal_ms(attack, args.lo, args.hi))
            b.append(marginal_ms(bare, args.lo, args.hi))
        ms_a, ms_b = statistics.median(a), statistics.median(b)
        cases[name] = {"attack_ms_per_step": round(ms_a, 2), "bare_ms_per_step": round(ms_b, 2),
                       "ratio": round(ms_a / ms_b, 3), "doc": CASES[name].__doc__}  # fmt: skip
        print(f"{name:>14}: attack {ms_a:7.2f} ms/step, bare {ms_b:7.2f} ms/step, "
              f"ratio {ms_a / ms_b:.2f}", flush=True)  # fmt: skip
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
