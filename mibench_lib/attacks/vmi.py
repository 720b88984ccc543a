"""Variational model inversion (VMI): Wang, Fu, Li, Khisti, Zemel and Makhzani, "Variational Model
Inversion Attacks", NeurIPS 2021, https://arxiv.org/abs/2201.10787.

Algorithm. VMI recovers a *distribution* per target label rather than one image. For label ``y``
it fits a variational distribution ``q(z)`` over the latent space of a public GAN generator ``G``
(a normalizing flow, the "miner", on standard normal base noise ``u``: ``z = f^{-1}(u)``) to
minimise

    lambda_attack * E_{z~q}[ -log p_T(y | G(z)) ]  +  lambda_kl * KL(q || N(0, I))

where ``p_T`` is the white-box target's softmax. The KL term is the Monte-Carlo estimate
``E_{z~q}[log q(z) - log N(z; 0, I)]`` on a second, fresh batch of samples, with ``log q`` given
by the change-of-variables formula ``log q(z) = log N(f(z); 0, I) + log |det df/dz|`` (the flow is
run forward on its own samples). Both expectations use ``samples_per_step`` draws per step; the
flow's parameters take SGD steps with momentum. After training, ``samples`` draws of ``q``
through ``G`` are the attack's output for that label.

The flow (the DCGAN script's default ``flow_glow=0``: a stack of ``flow_steps`` coupling steps on
the flat latent vector). Step ``k`` maps ``x`` (the latent side) towards the base noise as

    [actnorm]  ->  permute  ->  split x = (x1, x2)  ->  x2 <- x2 + m_k(x1)        (additive)
                                                       x2 <- (x2 + t) * sigmoid(s + 2)  (affine)

with ``x1`` the first ``latent_dim // 2`` coordinates, ``m_k`` an MLP ``Linear(hidden) - ELU -
Linear(hidden) - ELU - LinearZeros`` (the last layer's weights, bias and log-scale start at zero
and its output is multiplied by ``exp(3 * logscale)``, so every flow starts as a mere
permutation of the coordinates and ``q = N(0, I)``) and, for the affine coupling, ``(t, s)``
the even and odd outputs of ``m_k``. Sampling runs the steps backwards. The additive coupling
is volume preserving (log-det 0).

Every label entry gets its own flow (its own parameters, permutations, optimiser state and
noise), as the official code runs one process per identity. All flows are trained together: the
parameters are stacked with a leading entry dimension and applied with batched matrix products,
so one step is one pass of ``G`` and the target over ``len(labels) * samples_per_step`` images.
The loss is the sum over entries of each entry's loss, so each flow receives exactly the gradient
of its own objective (and SGD acts element-wise), as in separate runs.

Relation to the official code (wangkua1/vmi: ``attack_dcgan.py``, ``likelihood_model.py``
``FlowMiner``, ``flow/model.py`` ``MLPFlowNet``/``Glow``, ``flow/modules.py``; the StyleGAN run
script ``run_scripts/neurips2021-celeba-stylegan-flow.sh``):

- Implemented: the DCGAN-prior variant (``attack_dcgan.py --method flow``) on the study's public
  generator. Its argparse defaults are the function defaults where they define the method:
  ``flow_K=5``, hidden width 100, ELU, additive coupling, SGD with momentum 0.9 and no weight
  decay, ``lr=2e-4``, ``batchSize=64``, ``lambda_attack=1``, label smoothing 0 (the entropy
  weight ``lambda_miner_entropy`` is parsed but never used by this script; there is no
  discriminator or prior term in its loss, so ``needs=("generator",)``).
- ``lambda_kl`` defaults to 1e-3, the value of the only shipped run script (StyleGAN; also the
  ``kl1e-3`` of a DCGAN run path left in ``likelihood_model.py``). The DCGAN script's argparse
  default is 0, which drops the KL term, i.e. the "variational" part of the method;
  :data:`OFFICIAL_SETTINGS` ``["dcgan_argparse"]`` reproduces those literal defaults.
- ``iterations`` defaults to 3140 = 20 epochs x 157 iterations (``range(0, 10000, 64)``): the run
  script samples from the miner saved at epoch 20. The DCGAN script instead trains up to 1000
  epochs and stops when the *evaluation* classifier's accuracy on the samples has not improved
  for 20 epochs: the evaluation model selecting the attack's budget is evaluation leakage, not
  part of the attack, and is not reproduced.
- Bug not reproduced: the MLP flow step's "reverse" permutation is ``Permute(shuffle=False)``,
  whose indices are ``arange(d)``, the identity. Every official step therefore couples the same
  halves: the first ``latent_dim // 2`` coordinates of ``z`` stay pure ``N(0, I)`` noise and the
  miner can only shift the second half given the first. Here each step permutes for real:
  ``permutation="shuffle"`` (the script's ``flow_permutation`` default, which the MLP flow
  ignores; one fixed random permutation per step and entry) or ``"reverse"``.
- ``coupling="affine"`` and ``actnorm=True`` are Glow's ``FlowStep`` components (the script's
  ``flow_coupling`` and ``flow_use_actnorm``, used only with ``flow_glow=1``), offered on the
  MLP flow: the affine scale is ``sigmoid(s + 2)`` and actnorm is initialised on the flow's
  forward pass over 100 ``N(0, I)`` latents per entry (Glow ``FlowMiner``'s initialisation).
  Glow's multi-scale structure (``flow_L > 1`` split priors) and its convolutional coupling
  blocks with inner actnorm are not implemented; both options are off by default.
- The generator and the target stay in eval mode. The official loop calls ``train()`` on the
  ``MineGAN`` wrapper, which also puts the DCGAN generator's BatchNorm in training mode: its
  images then use batch statistics and its running statistics drift during the attack. A frozen
  prior is the method; that drift is not reproduced.
- Parameter initialisation follows ``nn.Linear`` (uniform in ``+-1/sqrt(fan_in)``), drawn from
  ``rng``, different for every entry; the official runs all seed 2019, so every identity starts
  from the same miner. All noise comes from ``rng`` on the CPU (the official code uses the global
  CUDA generator).
- The KL batch is drawn even when ``lambda_kl`` is 0 (the official code skips it), so the noise
  stream does not depend on the loss weights.
- Float32 throughout, as the DCGAN script (the StyleGAN script runs its miner in float64; this
  flow does not need it: the additive coupling inverts to rounding error and has no
  log-determinant to accumulate).
- Images: the official DCGAN ends in tanh and the target gets ``G(z) / 2 + 0.5``; the study's
  generators already give [0, 1], which the target gets as is.
- Output: ``samples`` draws per entry (official 50 per identity), with the images of the final
  miner (the official sample files come from the epoch-20 miner).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib._checks import check_int, check_labels
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.byo import check_generator, check_target
from mibench_lib.generators.base import Generator
from mibench_lib.oracle import AccessDenied, TargetOracle

__all__ = ["OFFICIAL_SETTINGS", "vmi_attack"]

#: Latents per entry on which actnorm is initialised (Glow ``FlowMiner``: ``torch.randn(100, nz0)``).
ACTNORM_INIT_SAMPLES = 100

#: Keyword arguments reproducing official settings. ``"dcgan_argparse"``: ``attack_dcgan.py``'s
#: literal defaults, KL weight 0 included (no variational term), with the run script's 20 epochs
#: (the script's up to 1000 epochs, stopped early by the evaluation model, are not reproduced).
#: ``"stylegan_run_script"``: the optimisation settings of the shipped CelebA run script (lr 1e-4,
#: KL 1e-3, K 10, actnorm, 20 epochs), applied to this flat flow.
OFFICIAL_SETTINGS: dict[str, dict[str, Any]] = {
    "dcgan_argparse": {
        "iterations": 3140,
        "samples_per_step": 64,
        "lr": 2e-4,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lambda_attack": 1.0,
        "lambda_kl": 0.0,
        "label_smoothing": 0.0,
        "flow_steps": 5,
        "hidden": 100,
        "coupling": "additive",
        "permutation": "shuffle",
        "actnorm": False,
    },
    "stylegan_run_script": {
        "iterations": 3140,
        "samples_per_step": 64,
        "lr": 1e-4,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lambda_attack": 1.0,
        "lambda_kl": 1e-3,
        "label_smoothing": 0.0,
        "flow_steps": 10,
        "hidden": 100,
        "coupling": "additive",
        "permutation": "shuffle",
        "actnorm": True,
    },
}


def vmi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    generator: Generator,
    iterations: int = 3140,
    samples_per_step: int = 64,
    lr: float = 2e-4,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lambda_attack: float = 1.0,
    lambda_kl: float = 1e-3,
    label_smoothing: float = 0.0,
    flow_steps: int = 5,
    hidden: int = 100,
    coupling: Literal["additive", "affine"] = "additive",
    permutation: Literal["shuffle", "reverse"] = "shuffle",
    actnorm: bool = False,
    samples: int = 50,
    batch_size: int | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Fit one flow over the generator's latents per label entry, then sample it.

    One iteration draws, for every entry, ``samples_per_step`` base-noise vectors for the attack
    term and as many for the KL term (both from ``rng``, in that order), passes the first batch
    through the entry's flow, ``G`` and the target (one query per image), estimates the KL on the
    second, and takes one SGD step on every flow. The target and the generator are checked first
    against the contracts of :mod:`mibench_lib.byo` (not counted as queries, leaving every random
    state as it was), so a wrong model fails before the first query.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (each entry is an
            independent run with its own flow).
        generator: Public-data GAN generator on the oracle's device, (M, latent_dim) ->
            (M, C, H, W) in [0, 1], with a ``latent_dim`` attribute >= 2 (see
            :func:`mibench_lib.byo.as_generator`). Run in eval mode, never updated.
        iterations: SGD steps (default 3140: the run script's 20 epochs of 157 iterations; 0
            samples the initial flows, i.e. ``N(0, I)``).
        samples_per_step: Draws per entry and step for each of the two Monte-Carlo terms
            (official ``batchSize`` 64).
        lr: SGD learning rate (DCGAN script 2e-4; StyleGAN run script 1e-4).
        momentum: SGD (heavy-ball) momentum in [0, 1) (official 0.9).
        weight_decay: SGD weight decay, >= 0 (official 0).
        lambda_attack: Weight of the attack term, the mean negative log-likelihood of the label
            (official 1).
        lambda_kl: Weight of the Monte-Carlo ``KL(q || N(0, I))`` (run script 1e-3; DCGAN
            argparse 0, see the module docstring).
        label_smoothing: ``s`` in [0, 1): the attack term is the cross-entropy with the
            smoothed target ``1 - s`` on the label and ``s / (K - 1)`` on every other class
            (official 0).
        flow_steps: Coupling steps ``K`` of each flow (DCGAN script 5).
        hidden: Width of the coupling MLPs (official 100).
        coupling: ``"additive"`` (official) or ``"affine"`` (Glow's ``sigmoid(s + 2)`` scale).
        permutation: Fixed permutation before each coupling: ``"shuffle"`` (a random one per
            step and entry, official flag default) or ``"reverse"``.
        actnorm: Glow's actnorm before each permutation, initialised on 100 ``N(0, I)``
            latents per entry (off in the DCGAN script's flow).
        samples: Draws per entry returned (official 50).
        batch_size: Most images put through ``G`` and the target at once; ``None``: all
            ``N * samples_per_step`` of a step (fastest on a CPU). Chunking changes memory only:
            the flows' gradients are accumulated over the chunks of each step.
        rng: CPU generator for every random draw (initial flows, permutations, noise); tensors
            are moved to the oracle's device afterwards. ``None`` uses torch's global generator.
        on_step: Progress hook ``on_step(step, iterations, info)``, called every 10 steps and at
            the last one, with that step's mean (over entries) total loss, attack term, KL
            estimate and the fraction of its images the target assigns to their label.

    Returns:
        InversionResult with ``N * samples`` images on the CPU in [0, 1], laid out sample-major
        (image ``s * N + i`` is draw ``s`` of entry ``i``, as GMI's restarts), their labels, the
        latents ``z`` they come from, ``losses`` (per step, mean over entries of
        ``lambda_attack * attack + lambda_kl * KL`` before the update), ``queries`` (exactly
        ``(iterations * samples_per_step + samples) * N``) and ``extras``:

        - ``"target_prob"``: (N * samples,) target probability of the label for each image;
        - ``"entry"``: (N * samples,) index of the label entry of each image;
        - ``"sample"``: (N * samples,) draw index of each image within its entry;
        - ``"kl"``: (N,) Monte-Carlo ``KL(q_i || N(0, I))`` of each final flow on its returned
          draws (no queries);
        - ``"attack_loss"``, ``"kl_loss"``, ``"target_acc"``: per-step means over entries of
          the attack term, the KL estimate and the fraction of images classified as the label.

    Raises:
        AccessDenied: the oracle is not white-box (VMI needs the target's gradients).
        ValueError: bad labels, a negative ``iterations``, a non-positive count or ``lr``,
            ``momentum`` or ``label_smoothing`` outside [0, 1), a negative weight, an unknown
            ``coupling`` or ``permutation``, a generator with ``latent_dim < 2``, or a target or
            generator that breaks its contract (:mod:`mibench_lib.byo`).
        TypeError: a target or generator without its attributes.
        QueryBudgetExceeded: the oracle's budget runs out.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier, tiny_generator
        >>> res = vmi_attack(TargetOracle(tiny_classifier()), torch.tensor([0, 3]),
        ...                  generator=tiny_generator(), iterations=3, samples_per_step=4,
        ...                  samples=5, rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.queries, res.labels[:4].tolist()
        (torch.Size([10, 1, 8, 8]), 34, [0, 3, 0, 3])
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"vmi_attack needs the target's gradients (a 'white-box' oracle), got access "
            f"{oracle.access!r}"
        )
    check_labels(labels, oracle.num_classes)
    check_int("iterations", iterations, 0)
    check_int("samples_per_step", samples_per_step, 1)
    check_int("samples", samples, 1)
    check_int("flow_steps", flow_steps, 1)
    check_int("hidden", hidden, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    _check_real("lr", lr, low=0.0, low_open=True)
    _check_real("momentum", momentum, low=0.0, high=1.0)
    _check_real("weight_decay", weight_decay, low=0.0)
    _check_real("lambda_attack", lambda_attack, low=0.0)
    _check_real("lambda_kl", lambda_kl, low=0.0)
    _check_real("label_smoothing", label_smoothing, low=0.0, high=1.0)
    if coupling not in ("additive", "affine"):
        raise ValueError(f"coupling must be 'additive' or 'affine', got {coupling!r}")
    if permutation not in ("shuffle", "reverse"):
        raise ValueError(f"permutation must be 'shuffle' or 'reverse', got {permutation!r}")
    if not isinstance(actnorm, bool):
        raise ValueError(f"actnorm must be True or False, got {actnorm!r}")
    if label_smoothing > 0 and oracle.num_classes < 2:
        raise ValueError(
            f"label_smoothing > 0 needs at least 2 classes, got num_classes={oracle.num_classes}"
        )
    # Every network against its contract before any work (no queries, no random draws used).
    check_target(oracle.module)
    check_generator(generator, image_shape=oracle.input_shape)
    dim = int(generator.latent_dim)
    if dim < 2:
        raise ValueError(
            f"VMI's coupling flow splits the latent in two halves: the generator's latent_dim "
            f"must be >= 2, got {dim}"
        )

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n, b = labels.numel(), samples_per_step
    chunk = n * b if batch_size is None else batch_size
    y_step = labels.to(device).repeat_interleave(b)  # entry-major, matching u.reshape(n * b, d)

    flows = _init_flows(
        n,
        dim,
        steps=flow_steps,
        hidden=hidden,
        coupling=coupling,
        permutation=permutation,
        actnorm=actnorm,
        rng=rng,
    ).to(device)
    params = flows.parameters()
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    history: dict[str, list[float]] = {
        k: [] for k in ("loss", "attack_loss", "kl_loss", "target_acc")
    }

    with eval_mode(generator, oracle.module):
        for step in range(iterations):
            # drawn on CPU for device-independence: attack batch first, then the KL batch
            u = torch.randn(n, b, dim, generator=rng).to(device)
            u_kl = torch.randn(n, b, dim, generator=rng).to(device)
            z = flows.sample(u)  # (n, b, dim), graph on the flow parameters only
            grad_z, nll, hits = _attack_term(
                oracle,
                generator,
                z.detach().reshape(n * b, dim),
                y_step,
                chunk=chunk,
                scale=lambda_attack / b,
                label_smoothing=label_smoothing,
            )
            z_kl = flows.sample(u_kl)
            kl = (flows.log_prob(z_kl) - _standard_normal_log_prob(z_kl)).mean(dim=1)  # (n,)
            # d(sum_i loss_i)/d(theta): the attack part through the saved dL/dz (G and T are
            # not run again), the KL part directly; w.r.t. the flows' parameters only, so the
            # frozen networks never accumulate parameter gradients.
            surrogate = (z * grad_z.view(n, b, dim)).sum() + lambda_kl * kl.sum()
            grads = torch.autograd.grad(surrogate, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()

            attack = nll.view(n, b).mean(dim=1).double()
            kl_d = kl.detach().double()
            terms = {
                "loss": float((lambda_attack * attack + lambda_kl * kl_d).mean()),
                "attack_loss": float(attack.mean()),
                "kl": float(kl_d.mean()),
                "target_acc": float(hits.double().mean()),
            }
            history["loss"].append(terms["loss"])
            history["attack_loss"].append(terms["attack_loss"])
            history["kl_loss"].append(terms["kl"])
            history["target_acc"].append(terms["target_acc"])
            if on_step is not None and ((step + 1) % 10 == 0 or step + 1 == iterations):
                on_step(step + 1, iterations, terms)

        with torch.no_grad():
            u = torch.randn(n, samples, dim, generator=rng).to(device)
            z = flows.sample(u)  # (n, samples, dim)
            kl_final = (flows.log_prob(z) - _standard_normal_log_prob(z)).mean(dim=1)
            z = z.transpose(0, 1).reshape(samples * n, dim)  # sample-major
            y = labels.to(device).repeat(samples)
            images, probs = [], []
            for lo in range(0, samples * n, chunk):
                x = generator(z[lo : lo + chunk])
                logits = oracle(x).float()  # the output pass: counted as queries
                probs.append(F.softmax(logits, dim=1).gather(1, y[lo : lo + chunk, None])[:, 0])
                images.append(x)

    losses = history.pop("loss")
    return InversionResult(
        attack="vmi",
        images=torch.cat(images).cpu(),
        labels=y.cpu(),
        latents=z.cpu(),
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "target_prob": torch.cat(probs).cpu(),
            "entry": torch.arange(n).repeat(samples),
            "sample": torch.arange(samples).repeat_interleave(n),
            "kl": kl_final.cpu(),
            **history,
        },
    )


def _check_real(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """A finite real in ``[low, high)`` (``(low, high)`` with ``low_open``)."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (high is None or value < high)
    )
    if not ok:
        lo = "(" if low_open else "["
        hi = f"{high})" if high is not None else "inf)"
        raise ValueError(f"{name} must be a finite number in {lo}{low}, {hi}, got {value!r}")


def _attack_term(
    oracle: TargetOracle,
    generator: Generator,
    z: Tensor,
    y: Tensor,
    *,
    chunk: int,
    scale: float,
    label_smoothing: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image attack NLL, its hits and ``scale * d nll / d z``, in chunks of ``chunk`` images.

    ``z`` is detached: the gradient stops here and is carried back into the flows by the caller,
    so only one chunk of generator and target activations is alive at a time.
    """
    grad = torch.empty_like(z)
    nll = torch.empty(z.shape[0], device=z.device)
    hits = torch.empty(z.shape[0], dtype=torch.bool, device=z.device)
    k = oracle.num_classes
    for lo in range(0, z.shape[0], chunk):
        part = slice(lo, lo + chunk)
        zc = z[part].clone().requires_grad_(True)
        lsm = F.log_softmax(oracle(generator(zc)).float(), dim=1)  # queries
        yc = y[part]
        own = lsm.gather(1, yc[:, None])[:, 0]
        if label_smoothing > 0:
            # official LabelSmoothingLoss: 1 - s on the label, s / (K - 1) on every other class
            others = lsm.sum(dim=1) - own
            loss = -(1 - label_smoothing) * own - label_smoothing / (k - 1) * others
        else:
            loss = -own
        (grad[part],) = torch.autograd.grad(loss.sum() * scale, zc)
        nll[part] = loss.detach()
        hits[part] = lsm.detach().argmax(dim=1) == yc
    return grad, nll, hits


def _standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) summed over the last dimension."""
    return -0.5 * (x * x).sum(dim=-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


@dataclass
class _Flows:
    """``E`` independent coupling flows over ``dim``-d vectors, parameters stacked along entries.

    ``layers[k]`` holds step ``k``'s tensors, each with a leading entry dimension ``E``:
    ``w1 (E, d1, H)``, ``b1 (E, H)``, ``w2 (E, H, H)``, ``b2 (E, H)``, ``w3 (E, H, o)``,
    ``b3 (E, o)``, ``logs3 (E, o)`` (``o = d2`` additive, ``2 d2`` affine; ``d1 = dim // 2``,
    ``d2 = dim - d1``) and, with actnorm, ``an_bias (E, dim)`` and ``an_logs (E, dim)``.
    ``perm[k]`` (E, dim) is step ``k``'s permutation, ``inv[k]`` its inverse. Inputs are
    (E, B, dim): batch ``B`` of each entry through that entry's flow.
    """

    layers: list[dict[str, Tensor]]
    perm: list[Tensor]
    inv: list[Tensor]
    coupling: str
    d1: int

    def parameters(self) -> list[Tensor]:
        """Every trainable tensor, in a fixed order."""
        return [t for layer in self.layers for _, t in sorted(layer.items())]

    def to(self, device: torch.device | str) -> _Flows:
        """A copy on ``device`` whose parameters are fresh leaves requiring gradients."""
        return _Flows(
            layers=[
                {k: t.to(device).detach().requires_grad_(True) for k, t in layer.items()}
                for layer in self.layers
            ],
            perm=[p.to(device) for p in self.perm],
            inv=[p.to(device) for p in self.inv],
            coupling=self.coupling,
            d1=self.d1,
        )

    def _net(self, layer: dict[str, Tensor], x1: Tensor) -> Tensor:
        """The coupling MLP of one step on (E, B, d1): ``(h w3 + b3) * exp(3 logs3)``."""
        h = F.elu(torch.baddbmm(layer["b1"].unsqueeze(1), x1, layer["w1"]))
        h = F.elu(torch.baddbmm(layer["b2"].unsqueeze(1), h, layer["w2"]))
        out = torch.baddbmm(layer["b3"].unsqueeze(1), h, layer["w3"])
        return out * torch.exp(3.0 * layer["logs3"]).unsqueeze(1)

    @staticmethod
    def _permute(x: Tensor, index: Tensor) -> Tensor:
        return x.gather(2, index.unsqueeze(1).expand_as(x))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latents (E, B, dim) -> base noise (E, B, dim) and ``log |det d noise / d x|`` (E, B)."""
        logdet = x.new_zeros(x.shape[:2])
        for k, layer in enumerate(self.layers):
            if "an_bias" in layer:
                x = (x + layer["an_bias"].unsqueeze(1)) * torch.exp(layer["an_logs"]).unsqueeze(1)
                logdet = logdet + layer["an_logs"].sum(dim=1, keepdim=True)
            x = self._permute(x, self.perm[k])
            x1, x2 = x[..., : self.d1], x[..., self.d1 :]
            h = self._net(layer, x1)
            if self.coupling == "additive":
                x2 = x2 + h
            else:
                scale = torch.sigmoid(h[..., 1::2] + 2.0)
                x2 = (x2 + h[..., 0::2]) * scale
                logdet = logdet + torch.log(scale).sum(dim=-1)
            x = torch.cat((x1, x2), dim=-1)
        return x, logdet

    def sample(self, u: Tensor) -> Tensor:
        """Base noise (E, B, dim) -> latents (E, B, dim): the steps inverted, last first."""
        x = u
        for k in reversed(range(len(self.layers))):
            layer = self.layers[k]
            x1, x2 = x[..., : self.d1], x[..., self.d1 :]
            h = self._net(layer, x1)
            if self.coupling == "additive":
                x2 = x2 - h
            else:
                x2 = x2 / torch.sigmoid(h[..., 1::2] + 2.0) - h[..., 0::2]
            x = self._permute(torch.cat((x1, x2), dim=-1), self.inv[k])
            if "an_bias" in layer:
                x = x * torch.exp(-layer["an_logs"]).unsqueeze(1) - layer["an_bias"].unsqueeze(1)
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) (E, B) by the change of variables: ``log N(f(x); 0, I) + log |det f'(x)|``."""
        u, logdet = self.encode(x)
        return _standard_normal_log_prob(u) + logdet


def _init_flows(
    entries: int,
    dim: int,
    *,
    steps: int,
    hidden: int,
    coupling: str,
    permutation: str,
    actnorm: bool,
    rng: torch.Generator | None,
    dtype: torch.dtype | None = None,
) -> _Flows:
    """``entries`` fresh flows on the CPU (``q = N(0, I)``), every draw from ``rng``.

    Per step and entry, in this order: the permutation, then the two hidden layers'
    ``nn.Linear``-style uniform weights and biases; the zero-initialised last layer draws nothing.
    With actnorm, 100 ``N(0, I)`` latents per entry are then run forward through the flows and
    each actnorm is set so that its output over them has zero mean and unit variance per
    coordinate (Glow's data-dependent initialisation).
    """
    dtype = dtype or torch.get_default_dtype()
    d1 = dim // 2
    d2 = dim - d1
    out = d2 if coupling == "additive" else 2 * d2

    def uniform(*shape: int, fan_in: int) -> Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(*shape, generator=rng, dtype=dtype) * 2 - 1) * bound

    layers: list[dict[str, Tensor]] = []
    perm: list[Tensor] = []
    for _ in range(steps):
        if permutation == "shuffle":
            p = torch.rand(entries, dim, generator=rng).argsort(dim=1)
        else:
            p = torch.arange(dim - 1, -1, -1).expand(entries, dim).clone()
        perm.append(p)
        layers.append(
            {
                "w1": uniform(entries, d1, hidden, fan_in=d1),
                "b1": uniform(entries, hidden, fan_in=d1),
                "w2": uniform(entries, hidden, hidden, fan_in=hidden),
                "b2": uniform(entries, hidden, fan_in=hidden),
                "w3": torch.zeros(entries, hidden, out, dtype=dtype),
                "b3": torch.zeros(entries, out, dtype=dtype),
                "logs3": torch.zeros(entries, out, dtype=dtype),
            }
        )
    flows = _Flows(layers, perm, [p.argsort(dim=1) for p in perm], coupling, d1)
    if actnorm:
        x = torch.randn(entries, ACTNORM_INIT_SAMPLES, dim, generator=rng, dtype=dtype)
        for layer in flows.layers:  # identity actnorm first, then fitted step by step
            layer["an_bias"] = torch.zeros(entries, dim, dtype=dtype)
            layer["an_logs"] = torch.zeros(entries, dim, dtype=dtype)
        with torch.no_grad():
            for k, layer in enumerate(flows.layers):
                bias = -x.mean(dim=1)
                std = ((x + bias.unsqueeze(1)) ** 2).mean(dim=1).sqrt()
                layer["an_bias"] = bias
                layer["an_logs"] = torch.log(1.0 / (std + 1e-6))
                # the rest of step k on the initialisation batch (actnorm is now fitted)
                step = _Flows([layer], [flows.perm[k]], [flows.inv[k]], coupling, d1)
                x, _ = step.encode(x)
    return flows


#: What the study engine needs to know: access level and public artifacts.
SPEC = AttackSpec(
    "vmi",
    vmi_attack,
    access="white-box",
    needs=("generator",),
    quick={"iterations": 3, "samples_per_step": 4, "samples": 1},
)
