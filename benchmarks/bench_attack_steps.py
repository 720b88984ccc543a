"""Each attack's cost per step against a bare PyTorch loop doing the same work.

Usage: ``python benchmarks/bench_attack_steps.py [--only gmi,kedmi] [--threads 2] [--check]``

For every white-box attack family the registered attack and a hand-written loop run on the same
modules and the same batch: the embedded default's 32 px DCGAN generator (latent 100, width 8)
and WGAN critic, the ``mnist_cnn`` target, 5 labels; target-dependent priors are built with
random weights at the 32 px leaderboard's sizes (KEDMI's GAN with width and critic width 8 and
the official 64 x 50 minibatch discrimination, LOMMA's three default surrogate CNNs, PLG-MI's
conditional generator with latent 128 and 16 features); timing needs no training. A run's cost
per step is measured as the *marginal* time of extra steps, ``(t(hi) - t(lo)) / (hi - lo)``, so
set-up, contract checks, initial selections and final passes are left out; each figure is the
median of ``--repeats`` runs, attack and bare loop interleaved. The ratio attack / bare is what
the project holds to at most 1.2. Results go to ``benchmarks/results/attack_steps.json``.

Each bare loop draws its random numbers in the attack's order, so ``--check`` can verify, without
timing anything, that it computes the attack's per-step losses (to float rounding): the reference
does exactly the attack's work, no less.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import kornia.augmentation as K
import torch
import torch.nn.functional as F

from mibench_lib.attacks import SPECS, if_gmi, lomma
from mibench_lib.attacks.kedmi import KEDMIGAN, KEDMIDiscriminator
from mibench_lib.attacks.lomma import LOMMASurrogates
from mibench_lib.attacks.plg_mi import PLGGAN, ConditionalResNetGenerator
from mibench_lib.generators.dcgan import DCGANGenerator, WGANCritic
from mibench_lib.models import MODELS
from mibench_lib.oracle import TargetOracle

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 32, 32)
LABELS = torch.arange(5)
#: One run of ``steps`` steps; it may return what it found (checked by hand, never timed).
Runner = Callable[[int], object]


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

    def run(steps: int) -> object:
        oracle = TargetOracle(m["target"])
        return SPECS[name].run(oracle, LABELS, rng=torch.Generator().manual_seed(0),
                        **{steps_kw: steps}, **kwargs)  # fmt: skip

    return run


# -- one bare loop per family ----------------------------------------------------------------------
def gmi_case(m: dict) -> tuple[Runner, Runner]:
    """GMI: 5 labels x 5 restarts, -D(G(z)) + 100 CE(T(G(z)), y), Nesterov SGD, clamp."""
    gen, critic, target = m["generator"], m["discriminator"], m["target"]

    def bare(steps: int) -> list[torch.Tensor]:
        y = LABELS.repeat(5)
        z = torch.randn(25, 100, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        opt = torch.optim.SGD([z], lr=0.01, momentum=0.9, nesterov=True)
        history = []
        for _ in range(steps):
            images = gen(z)
            loss = -critic(images) + 100 * F.cross_entropy(target(images), y, reduction="none")
            (z.grad,) = torch.autograd.grad(loss.sum() / 5, z)
            opt.step()
            with torch.no_grad():
                z.clamp_(-1, 1)
            history.append(loss.detach())
        return history

    attack = _attack("gmi", "steps", m, generator=gen, discriminator=critic,
                     lr=0.01, loss_divisor=5, restarts=5, select="all")  # fmt: skip
    return attack, bare


def miface_case(m: dict) -> tuple[Runner, Runner]:
    """MIFace: gradient descent on 1 - p_y in pixel space from the zero image, keeping each
    sample's best iterate and testing its stopping rule (window 100, threshold) every step."""
    target = m["target"]

    def bare(steps: int) -> list[torch.Tensor]:
        x = torch.zeros(5, *SHAPE)
        best_x, best_cost = x.clone(), torch.full((5,), math.inf)
        active = torch.ones(5, dtype=torch.bool)
        recent: list[torch.Tensor] = []  # the last 100 costs
        history = []
        for _ in range(steps):
            if not active.any():
                break
            x.requires_grad_(True)
            prob = F.softmax(target(x), dim=1).gather(1, LABELS[:, None]).squeeze(1)
            cost = 1 - prob
            (g,) = torch.autograd.grad(cost.sum(), x)
            with torch.no_grad():
                x = x.detach()
                better = cost < best_cost
                best_x[better], best_cost[better] = x[better], cost[better]
                if recent:
                    active &= (cost < torch.stack(recent).amax(dim=0)) & (prob < 1.0)
                recent = [*recent[-99:], cost]
                x = torch.where(active[:, None, None, None], (x - 0.1 * g).clamp(0, 1), x)
            history.append(cost.detach())
        return history

    # threshold 1.0 (window 100, the default): no sample stops within the timed steps, every
    # step does the full batch's work
    return _attack("miface", "max_iter", m, threshold=1.0, window=100), bare


def deepinversion_case(m: dict) -> tuple[Runner, Runner]:
    """DeepInversion: pixels, jitter, CE + BN-statistics prior + TV-L2 (4 directions), Adam."""
    target = m["target"]
    bns = [b for b in target.modules() if isinstance(b, torch.nn.BatchNorm2d)]

    def bare(steps: int) -> list[torch.Tensor]:
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(module, inputs):
            x = inputs[0]
            stats.append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))

        handles = [b.register_forward_pre_hook(hook) for b in bns]
        rng = torch.Generator().manual_seed(0)
        v = torch.randn(5, *SHAPE, generator=rng).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=0.05)
        history = []
        try:
            for _ in range(steps):
                dh, dw = torch.randint(-2, 3, (2,), generator=rng).tolist()
                torch.rand((), generator=rng)  # the flip coin the attack draws even with no flip
                vj = torch.roll(v, shifts=(dh, dw), dims=(2, 3))
                stats.clear()
                loss = F.cross_entropy(target(vj * 0.5 + 0.5), LABELS)
                for b, (mu, var) in zip(bns, stats, strict=True):
                    loss = loss + 10 * (
                        torch.norm(b.running_mean - mu) + torch.norm(b.running_var - var)
                    )
                tv = (
                    (vj[:, :, :, :-1] - vj[:, :, :, 1:]).norm()
                    + (vj[:, :, :-1, :] - vj[:, :, 1:, :]).norm()
                    + (vj[:, :, 1:, :-1] - vj[:, :, :-1, 1:]).norm()
                    + (vj[:, :, :-1, :-1] - vj[:, :, 1:, 1:]).norm()
                )
                loss = loss + 2.5e-5 * tv
                (v.grad,) = torch.autograd.grad(loss, v)
                opt.step()
                history.append(loss.detach())
        finally:
            for h in handles:
                h.remove()
        return history

    attack = _attack("deepinversion", "iterations", m, lr=0.05, betas=(0.9, 0.999),
                     schedule="constant", warmup=0, clip=False, jitter=2, flip=False,
                     r_feature=10.0, first_bn_multiplier=1.0, tv_l2=2.5e-5, l2=0.0,
                     mean=0.5, std=0.5)  # fmt: skip
    return attack, bare


# -- target-dependent priors with random weights at the 32 px leaderboard's sizes ------------------
def _frozen(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.eval().requires_grad_(False)


def _kedmi_gan() -> KEDMIGAN:
    """KEDMI's GAN: DCGAN latent 100 width 8, K-way critic width 8, official MBD (64 x 50)."""
    torch.manual_seed(1)
    gen = DCGANGenerator(latent_dim=100, output_shape=SHAPE, width=8)
    disc = KEDMIDiscriminator(SHAPE, num_classes=5, width=8, mbd_kernels=64, mbd_kernel_dims=50)
    _frozen(gen, disc)
    return KEDMIGAN(gen, disc)


def _surrogates(target: torch.nn.Module) -> LOMMASurrogates:
    """LOMMA's three default surrogate CNNs, untrained, and a feature mean of the target's size."""
    torch.manual_seed(2)
    models = tuple(
        lomma.SurrogateCNN(5, input_shape=SHAPE, **lomma.SURROGATE_ARCHITECTURES[name])
        for name in ("lomma_b0", "lomma_b1", "lomma_b2")
    )
    _frozen(*models)
    return LOMMASurrogates(models, 0.1 * torch.randn(target.feature_dim))


@contextmanager
def _lomma_loss(
    target: torch.nn.Module, surrogates: LOMMASurrogates
) -> Iterator[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """LOMMA's identity loss ("ours", lam 1): mean -logit_y over target and surrogates + features.

    The target's feature is the input of its head, read by a pre-hook held for the whole run.
    """
    seen: list[torch.Tensor] = []
    handle = target.head.register_forward_pre_hook(lambda mod, inputs: seen.insert(0, inputs[0]))

    def loss(images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.clear()
        logits = [target(images), *(s(images) for s in surrogates.models)]
        per_model = torch.stack([-out.gather(1, y[:, None]).squeeze(1) for out in logits])
        reg = (seen[0] - surrogates.feature_mean).pow(2).mean(dim=1)
        return per_model.mean(dim=0) + reg

    try:
        yield loss
    finally:
        handle.remove()


# -- the remaining white-box families --------------------------------------------------------------
def kedmi_case(m: dict) -> tuple[Runner, Runner]:
    """KEDMI: 5 Gaussians (mu, log-var) by Adam, one draw each per step, realness + 100 CE."""
    target, gan = m["target"], _kedmi_gan()

    def bare(steps: int) -> list[torch.Tensor]:
        rng = torch.Generator().manual_seed(0)
        mu = torch.zeros(5, 100, requires_grad=True)
        log_var = torch.ones(5, 100, requires_grad=True)
        opt = torch.optim.Adam([mu, log_var], lr=0.02)
        history = []
        for _ in range(steps):
            z = mu + torch.exp(0.5 * log_var) * torch.randn(5, 100, generator=rng)
            images = gan.generator(z)
            _, d_logits = gan.discriminator(images)
            prior = F.softplus(-torch.logsumexp(d_logits, dim=1))
            loss = prior + 100 * F.cross_entropy(target(images), LABELS, reduction="none")
            mu.grad, log_var.grad = torch.autograd.grad(loss.sum() / 60, (mu, log_var))
            opt.step()
            history.append(loss.detach())
        return history

    attack = _attack("kedmi", "steps", m, kedmi_gan=gan, lr=0.02, lambda_iden=100.0,
                     samples=5, loss_divisor=60)  # fmt: skip
    return attack, bare


def lomma_gmi_case(m: dict) -> tuple[Runner, Runner]:
    """LOMMA on GMI: GMI's search (25 latents) with the logit loss over target + 3 surrogates
    and the feature regulariser."""
    gen, critic, target = m["generator"], m["discriminator"], m["target"]
    surrogates = _surrogates(target)

    def bare(steps: int) -> list[torch.Tensor]:
        y = LABELS.repeat(5)
        z = torch.randn(25, 100, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        opt = torch.optim.SGD([z], lr=0.01, momentum=0.9, nesterov=True)
        history = []
        with _lomma_loss(target, surrogates) as identity:
            for _ in range(steps):
                images = gen(z)
                loss = -critic(images) + 100 * identity(images, y)
                (z.grad,) = torch.autograd.grad(loss.sum() / 5, z)
                opt.step()
                with torch.no_grad():
                    z.clamp_(-1, 1)
                history.append(loss.detach())
        return history

    attack = _attack("lomma_gmi", "steps", m, generator=gen, discriminator=critic,
                     lomma_surrogates=surrogates, variant="ours", lam=1.0, lr=0.01,
                     loss_divisor=5, restarts=5, select="all")  # fmt: skip
    return attack, bare


def lomma_kedmi_case(m: dict) -> tuple[Runner, Runner]:
    """LOMMA on KEDMI: KEDMI's search (5 Gaussians, z clamped to [-1, 1]) with LOMMA's loss."""
    target, gan = m["target"], _kedmi_gan()
    surrogates = _surrogates(target)

    def bare(steps: int) -> list[torch.Tensor]:
        rng = torch.Generator().manual_seed(0)
        mu = torch.zeros(5, 100, requires_grad=True)
        log_var = torch.ones(5, 100, requires_grad=True)
        opt = torch.optim.Adam([mu, log_var], lr=0.02)
        history = []
        with _lomma_loss(target, surrogates) as identity:
            for _ in range(steps):
                z = mu + torch.exp(0.5 * log_var) * torch.randn(5, 100, generator=rng)
                images = gan.generator(z.clamp(-1, 1))
                _, d_logits = gan.discriminator(images)
                prior = F.softplus(-torch.logsumexp(d_logits, dim=1))
                loss = prior + 100 * identity(images, LABELS)
                mu.grad, log_var.grad = torch.autograd.grad(loss.sum() / 60, (mu, log_var))
                opt.step()
                history.append(loss.detach())
        return history

    attack = _attack("lomma_kedmi", "steps", m, kedmi_gan=gan, lomma_surrogates=surrogates,
                     variant="ours", lam=1.0, lr=0.02, lambda_iden=100.0, samples=5, clip=1.0,
                     loss_divisor=60)  # fmt: skip
    return attack, bare


def plg_mi_case(m: dict) -> tuple[Runner, Runner]:
    """PLG-MI: 5 labels x 5 latents of a cGAN (latent 128, 16 features), Adam on z, max-margin
    summed over 2 kornia-augmented views."""
    target = m["target"]
    torch.manual_seed(3)
    gen = ConditionalResNetGenerator(5, latent_dim=128, image_shape=SHAPE, num_features=16)
    _frozen(gen)
    augment = K.container.ImageSequential(
        K.RandomResizedCrop(SHAPE[1:], scale=(0.8, 1.0), ratio=(1.0, 1.0)),
        K.ColorJitter(brightness=0.2, contrast=0.2, p=1.0),
        K.RandomRotation(5.0),
    )

    def bare(steps: int) -> list[torch.Tensor]:
        y = LABELS.repeat(5)
        y2 = y.repeat(2)
        label_mask = F.one_hot(y2, 5).bool()
        rng = torch.Generator().manual_seed(0)
        z = torch.randn(25, 128, generator=rng).requires_grad_(True)
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=rng)))  # kornia's draws
        opt = torch.optim.Adam([z], lr=0.1)
        history = []
        for _ in range(steps):
            logits = target(augment(gen(z, y).repeat(2, 1, 1, 1)))
            own = logits.gather(1, y2[:, None]).squeeze(1)
            others = logits.masked_fill(label_mask, -math.inf).amax(dim=1)
            loss = (others - own).view(2, 25).sum(dim=0)
            (z.grad,) = torch.autograd.grad(loss.sum(), z)
            opt.step()
            history.append(loss.detach())
        return history

    attack = _attack("plg_mi", "steps", m, plg_cgan=PLGGAN(gen), lr=0.1, views=2, samples=5,
                     flip=False)  # fmt: skip
    return attack, bare


def vmi_case(m: dict) -> tuple[Runner, Runner]:
    """VMI: 5 additive coupling flows (K 5, hidden 100), 64 draws each per step through G and the
    target + a 64-draw KL estimate, SGD with momentum."""
    gen, target = m["generator"], m["target"]
    e, b, d, hidden, flow_steps = 5, 64, 100, 100, 5
    d1 = d // 2
    y = LABELS.repeat_interleave(b)

    def bare(steps: int) -> list[torch.Tensor]:
        rng = torch.Generator().manual_seed(0)
        layers, perms = [], []
        for _ in range(flow_steps):
            perms.append(torch.rand(e, d, generator=rng).argsort(dim=1))
            layers.append([
                (torch.rand(e, d1, hidden, generator=rng) * 2 - 1) / math.sqrt(d1),
                (torch.rand(e, hidden, generator=rng) * 2 - 1) / math.sqrt(d1),
                (torch.rand(e, hidden, hidden, generator=rng) * 2 - 1) / math.sqrt(hidden),
                (torch.rand(e, hidden, generator=rng) * 2 - 1) / math.sqrt(hidden),
                torch.zeros(e, hidden, d - d1),
                torch.zeros(e, d - d1),
                torch.zeros(e, d - d1),
            ])  # fmt: skip
        params = [p.requires_grad_(True) for layer in layers for p in layer]
        inverse = [p.argsort(dim=1) for p in perms]
        opt = torch.optim.SGD(params, lr=2e-4, momentum=0.9)

        def coupling(k: int, x1: torch.Tensor) -> torch.Tensor:
            w1, b1, w2, b2, w3, b3, logs3 = layers[k]
            h = F.elu(x1 @ w1 + b1[:, None])
            h = F.elu(h @ w2 + b2[:, None])
            return (h @ w3 + b3[:, None]) * torch.exp(3 * logs3)[:, None]

        def permute(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return x.gather(2, index[:, None].expand_as(x))

        def sample(u: torch.Tensor) -> torch.Tensor:  # noise -> latents
            for k in reversed(range(flow_steps)):
                u = torch.cat((u[..., :d1], u[..., d1:] - coupling(k, u[..., :d1])), dim=-1)
                u = permute(u, inverse[k])
            return u

        def encode(x: torch.Tensor) -> torch.Tensor:  # latents -> noise (log-det 0)
            for k in range(flow_steps):
                x = permute(x, perms[k])
                x = torch.cat((x[..., :d1], x[..., d1:] + coupling(k, x[..., :d1])), dim=-1)
            return x

        history = []
        for _ in range(steps):
            u = torch.randn(e, b, d, generator=rng)
            u_kl = torch.randn(e, b, d, generator=rng)
            z = sample(u)
            nll = F.cross_entropy(target(gen(z.reshape(e * b, d))), y, reduction="none")
            z_kl = sample(u_kl)
            kl = (-0.5 * encode(z_kl).pow(2).sum(-1) + 0.5 * z_kl.pow(2).sum(-1)).mean(dim=1)
            loss = nll.view(e, b).mean(dim=1) + 1e-3 * kl
            grads = torch.autograd.grad(loss.sum(), params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
            history.append(loss.detach())
        return history

    attack = _attack("vmi", "iterations", m, generator=gen, samples_per_step=b, samples=5,
                     lr=2e-4, momentum=0.9, lambda_kl=1e-3, flow_steps=flow_steps,
                     hidden=hidden)  # fmt: skip
    return attack, bare


def _if_gmi_case(m: dict, stage: int) -> tuple[Runner, Runner]:
    """IF-GMI stage ``stage`` alone: 5 labels x 5 samples, Adam (0.005, betas 0.1) on w (and from
    stage 1 on the feature entering block ``stage - 1``), a random crop, Poincare loss, L1-ball
    projections."""
    gen, target = m["generator"], m["target"]
    y = LABELS.repeat(5)
    xi = 1e-4
    v = (F.one_hot(y, 5).float() - xi).clamp(0, 1)
    radius = 1000.0 * (stage + 1)  # OFFICIAL_RADII[stage] for stages 0..5

    def project(delta: torch.Tensor) -> torch.Tensor:
        """Each row of ``delta`` onto the L1 ball of ``radius`` (Duchi et al.), if outside."""
        flat = delta.flatten(1)
        norms = flat.abs().double().sum(dim=1)
        if bool((norms <= radius).all()):
            return delta
        mu = flat.abs().double().sort(dim=1, descending=True).values
        cumsum = mu.cumsum(dim=1)
        j = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64)
        rho = ((mu * j > cumsum - radius) * j).amax(dim=1)
        theta = (cumsum.gather(1, rho.long()[:, None] - 1).squeeze(1) - radius) / rho
        shrunk = (flat.abs().double() - theta[:, None]).clamp_min(0) * flat.sign()
        return torch.where((norms <= radius)[:, None], flat, shrunk.float()).view_as(delta)

    def bare(steps: int) -> list[torch.Tensor]:
        rng = torch.Generator().manual_seed(0)
        w = torch.randn(25, 100, generator=rng)  # as the attack: the pool first, then the crops
        crops = []
        for _ in range(steps):
            side = round(math.sqrt(32 * 32 * (0.9 + 0.1 * float(torch.rand((), generator=rng)))))
            top = left = 0
            if side < 32:
                top = int(torch.randint(0, 33 - side, (), generator=rng))
                left = int(torch.randint(0, 33 - side, (), generator=rng))
            crops.append((top, left, side))
        with torch.no_grad():
            feature = gen.synthesize(w, stop=stage - 1) if stage else None
        tensors = [w.clone().requires_grad_(True)]
        if stage:
            tensors.append(feature.clone().requires_grad_(True))
        starts = [t.detach().clone() for t in tensors]
        opt = torch.optim.Adam(tensors, lr=0.005, betas=(0.1, 0.1))
        history = []
        for top, left, side in crops:
            if stage:
                images = gen.synthesize(tensors[0], start=stage - 1, features=tensors[1])
            else:
                images = gen.synthesize(tensors[0])
            if side < 32:
                images = F.interpolate(images[..., top : top + side, left : left + side],
                                       size=(32, 32), mode="bilinear", align_corners=False,
                                       antialias=True)  # fmt: skip
            logits = target(images)
            u = logits / logits.abs().sum(dim=1, keepdim=True)
            u2, v2 = u.pow(2).sum(dim=1), v.pow(2).sum(dim=1)
            loss = torch.arccosh(1 + 2 * (u - v).pow(2).sum(dim=1) / ((1 - u2) * (1 - v2)))
            grads = torch.autograd.grad(loss.sum(), tensors, allow_unused=True)
            for t, g in zip(tensors, grads, strict=True):
                t.grad = torch.zeros_like(t) if g is None else g  # w: none from stage 1 on
            opt.step()
            with torch.no_grad():
                for t, start in zip(tensors, starts, strict=True):
                    t.copy_(start + project(t - start))
            history.append(loss.detach())
        return history

    steps_of = (lambda s: (s,)) if stage == 0 else (lambda s: (0,) * stage + (s,))

    def attack(steps: int) -> object:
        return SPECS["if_gmi"].run(TargetOracle(target), LABELS, generator=gen,
                                   steps=steps_of(steps), lr=0.005, betas=(0.1, 0.1), pool=25,
                                   samples=5, rng=torch.Generator().manual_seed(0))  # fmt: skip

    return attack, bare


def if_gmi_stage0_case(m: dict) -> tuple[Runner, Runner]:
    """IF-GMI stage 0: Adam on w through the whole generator, crop, Poincare loss, L1 ball."""
    return _if_gmi_case(m, 0)


def if_gmi_stage1_case(m: dict) -> tuple[Runner, Runner]:
    """IF-GMI stage 1: Adam on w and the stem's output (through every block), crop, Poincare
    loss, L1 balls on both."""
    return _if_gmi_case(m, 1)


CASES: dict[str, Callable[[dict], tuple[Runner, Runner]]] = {
    "gmi": gmi_case,
    "miface": miface_case,
    "deepinversion": deepinversion_case,
    "kedmi": kedmi_case,
    "lomma_gmi": lomma_gmi_case,
    "lomma_kedmi": lomma_kedmi_case,
    "plg_mi": plg_mi_case,
    "vmi": vmi_case,
    "if_gmi_stage0": if_gmi_stage0_case,
    "if_gmi_stage1": if_gmi_stage1_case,
}


@contextmanager
def _pool_order() -> Iterator[None]:
    """IF-GMI starts from the first latents of its pool, as the bare loop does (``--check``)."""
    original = if_gmi._initial_selection

    def first_rows(*args, **kwargs):
        pick, score = original(*args, **kwargs)
        return torch.arange(len(pick)), score

    with mock.patch.object(if_gmi, "_initial_selection", first_rows):
        yield


def check(name: str, steps: int = 4) -> float:
    """Largest relative gap between the attack's per-step losses and the bare loop's.

    Every bare loop draws its random numbers in the attack's order, so both compute the same
    losses up to float rounding (about 1e-7) when they do the same work. MIFace records the cost
    after each update and its bare loop the cost before it: they are compared one step apart.
    """
    attack, bare = CASES[name](_modules())
    with _pool_order():
        theirs = torch.tensor(attack(steps).losses, dtype=torch.float64)  # type: ignore[attr-defined]
    ours = torch.stack([h.double().mean() for h in bare(steps)])  # type: ignore[union-attr]
    if name == "miface":
        theirs, ours = theirs[:-1], ours[1:]
    return float(((theirs - ours).abs() / ours.abs().clamp_min(1e-6)).max())


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
    ap.add_argument("--check", action="store_true",
                    help="no timing: check that each bare loop computes the attack's losses")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(CASES)
    if args.check:
        for name in names:
            gap = check(name)
            print(f"{name:>14}: largest relative loss gap {gap:.1e} "
                  f"{'(same work)' if gap < 1e-5 else '(DIFFERENT)'}", flush=True)  # fmt: skip
        return
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
