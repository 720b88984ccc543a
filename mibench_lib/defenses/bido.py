"""BiDO: bilateral dependency optimisation of hidden representations.

Peng, Liu, Zhang, Lan, Ye, Liu and Han, "Bilateral Dependency Optimization: Defending Against
Model-inversion Attacks", KDD 2022, https://arxiv.org/abs/2206.05483.

Training adds, for every constrained hidden layer l with representation Z_l (flattened),

    loss = CE + lambda_x * sum_l d(X, Z_l) - lambda_y * sum_l d(Z_l, Y),

where X is the flattened input batch, Y the one-hot labels and d a kernel dependence measure
computed on the batch: minimising d(X, Z_l) removes input detail an inverter could recover,
maximising d(Z_l, Y) keeps the label information the task needs. Two measures (m = batch size,
H = I - 11^T / m):

- ``"hsic"``: the normalised HSIC of the official code, ``trace(R_A R_B)`` with
  ``R = K~ (K~ + eps m I)^-1``, ``K~ = K H`` and ``eps = 1e-5``;
- ``"coco"``: the constrained covariance, ``sqrt(||K~ L~||_F) / m`` with doubly centred kernels
  ``K~ = H K H``.

X and Z use a Gaussian kernel whose variance scales with the dimension, ``exp(-||a_i - a_j||^2 /
(2 sigma^2 dim))`` with sigma = 5; Y uses the linear kernel ``Y Y^T`` (the official training
default). Kernels are computed in float64: R inverts a matrix whose smallest eigenvalue is only
``eps m``.

Paper defaults (official README): CelebA with HSIC (lambda_x, lambda_y) = (0.05, 0.5) against
GMI/KEDMI and (0.1, 2) against VMI; MNIST with COCO (1, 50). The constrained layers are the outputs
of VGG16's five conv blocks (the last one flattened after its BatchNorm1d), and of all conv blocks
of the MNIST target (three, as here). Unlike the official training script, asking for COCO here
trains COCO.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.defenses._defense import Defense

MEASURES = ("hsic", "coco")
NHSIC_EPS = 1e-5
"""Ridge of the normalised HSIC, relative to the batch size: (K~ + eps m I)^-1."""


def gaussian_kernel(a: Tensor, *, sigma: float) -> Tensor:
    """Gaussian kernel matrix with dimension-scaled variance, ``exp(-||a_i - a_j||^2 / (2 s^2 d))``.

    Args:
        a: (m, ...) batch; flattened to (m, d).
        sigma: Bandwidth s > 0 per dimension.

    Returns:
        (m, m) symmetric kernel matrix, ones on the diagonal, in ``a``'s dtype.
    """
    a = a.flatten(1)
    # Distances do not change under a shift; centring first avoids cancellation in the expansion.
    a = a - a.mean(dim=0, keepdim=True)
    sq = (a * a).sum(dim=1)
    dist = (sq[:, None] + sq[None, :] - 2 * a @ a.T).clamp_min(0)
    return torch.exp(-dist / (2 * sigma**2 * a.shape[1]))


def linear_kernel(a: Tensor) -> Tensor:
    """Linear kernel matrix ``A A^T`` of an (m, ...) batch flattened to (m, d)."""
    a = a.flatten(1)
    return a @ a.T


def _nhsic_resolvent(k: Tensor) -> Tensor:
    """R = K~ (K~ + eps m I)^-1 with K~ = K H; K~ commutes with the inverse, so solve for it."""
    m = k.shape[0]
    kc = k - k.mean(dim=1, keepdim=True)  # K H: subtract each row's mean
    eye = torch.eye(m, dtype=k.dtype, device=k.device)
    return torch.linalg.solve(kc + NHSIC_EPS * m * eye, kc)


def _double_centre(k: Tensor) -> Tensor:
    """H K H: subtract row and column means, add back the grand mean."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def _nhsic_combine(ra: Tensor, rb: Tensor) -> Tensor:
    return (ra * rb.T).sum()  # trace(R_a R_b) without the matrix product


def _coco_combine(ka: Tensor, kb: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(ka @ kb).sqrt() / ka.shape[0]


_PREPARE: dict[str, Callable[[Tensor], Tensor]] = {
    "hsic": _nhsic_resolvent,
    "coco": _double_centre,
}
_COMBINE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "hsic": _nhsic_combine,
    "coco": _coco_combine,
}


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {list(MEASURES)}, got {measure!r}")


def bido_dependence(
    a: Tensor,
    b: Tensor,
    *,
    measure: str = "hsic",
    sigma: float = 5.0,
    b_kernel: str = "gaussian",
) -> Tensor:
    """Kernel dependence d(A, B) between two batches with paired rows (see module docstring).

    Args:
        a: (m, ...) batch, Gaussian kernel.
        b: (m, ...) batch paired row by row with ``a``.
        measure: ``"hsic"`` (normalised HSIC) or ``"coco"`` (constrained covariance).
        sigma: Gaussian bandwidth per dimension.
        b_kernel: ``"gaussian"`` or ``"linear"`` (the latter for one-hot labels).

    Returns:
        Scalar tensor in ``a``'s dtype, differentiable in both inputs.

    Raises:
        ValueError: unknown ``measure`` or ``b_kernel``, different or too small batch sizes.

    Example:
        >>> z = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
        >>> bool(bido_dependence(z, z) > bido_dependence(z, torch.randn(16, 8)))
        True
    """
    _check_measure(measure)
    if b_kernel not in ("gaussian", "linear"):
        raise ValueError(f"b_kernel must be 'gaussian' or 'linear', got {b_kernel!r}")
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(
            f"a and b need the same batch size >= 2, got {a.shape[0]} and {b.shape[0]}"
        )
    b = b.double()
    ka = gaussian_kernel(a.double(), sigma=sigma)
    kb = gaussian_kernel(b, sigma=sigma) if b_kernel == "gaussian" else linear_kernel(b)
    prep, comb = _PREPARE[measure], _COMBINE[measure]
    return comb(prep(ka), prep(kb)).to(a.dtype)


def bido_terms(
    images: Tensor,
    labels: Tensor,
    hiddens: Sequence[Tensor],
    *,
    num_classes: int,
    measure: str = "hsic",
    sigma: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """Per-layer dependences d(X, Z_l) and d(Z_l, Y) of one batch.

    The input and label kernels are built once and shared by all layers.

    Args:
        images: (m, C, H, W) input batch X (flattened).
        labels: (m,) int64 labels, one-hot encoded with ``num_classes`` columns for Y.
        hiddens: L tensors (m, ...), the hidden representations Z_l.
        num_classes: Width of the one-hot code.
        measure, sigma: As in :func:`bido_dependence`.

    Returns:
        ``(d_xz, d_zy)``, two float64 tensors of shape (L,).
    """
    _check_measure(measure)
    m = images.shape[0]
    if m < 2 or labels.shape != (m,) or any(h.shape[0] != m for h in hiddens):
        raise ValueError(
            f"images, labels and hiddens need one batch size >= 2, got {m}, "
            f"{tuple(labels.shape)} and {[h.shape[0] for h in hiddens]}"
        )
    prep, comb = _PREPARE[measure], _COMBINE[measure]
    px = prep(gaussian_kernel(images.double(), sigma=sigma))
    py = prep(linear_kernel(F.one_hot(labels, num_classes).double()))
    d_xz, d_zy = [], []
    for z in hiddens:
        pz = prep(gaussian_kernel(z.double(), sigma=sigma))
        d_xz.append(comb(px, pz))
        d_zy.append(comb(pz, py))
    return torch.stack(d_xz), torch.stack(d_zy)


def default_bido_layers(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of the layers BiDO constrains by default.

    - ``VGG16_64``: the outputs of the five conv blocks: the first four max-pools of ``feature``
      and, for the fifth block, the flattened BatchNorm1d output ``bn`` (as the official code);
    - ``MnistCNN``: each of its strided conv-BN-ReLU blocks (``body.0-2``);
    - ``MnistEvaluator``: the output of each conv stage, i.e. every max-pool of ``body``;
    - ``MnistResNet``: each residual block (``body.1-3``), not the stem convolution.

    Raises:
        ValueError: any other architecture (pass ``layers`` to :func:`bido_defense`).
    """
    from mibench_lib.models.small_cnn import MnistCNN, MnistEvaluator, MnistResNet
    from mibench_lib.models.vgg16 import VGG16_64

    if isinstance(model, VGG16_64):
        pools = [i for i, m in enumerate(model.feature) if isinstance(m, nn.MaxPool2d)]
        return [f"feature.{i}" for i in pools[:4]] + ["bn"]
    if isinstance(model, MnistCNN):
        return [f"body.{i}" for i, m in enumerate(model.body) if isinstance(m, nn.Sequential)]
    if isinstance(model, MnistEvaluator):
        return [f"body.{i}" for i, m in enumerate(model.body) if isinstance(m, nn.MaxPool2d)]
    if isinstance(model, MnistResNet):
        return [f"body.{i}" for i, m in enumerate(model.body) if hasattr(m, "shortcut")]
    raise ValueError(
        f"no default BiDO layers for {type(model).__name__}; pass layers=[...] with module names "
        "from model.named_modules()"
    )


class _HiddenRecorder:
    """The constrained layers' outputs from the latest training-mode forward pass."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.outputs: dict[str, Tensor] = {}

    def take(self, batch_size: int) -> list[Tensor]:
        """The recorded outputs in layer order, then forgotten (one forward pass, one loss)."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(
                f"no hidden outputs recorded for layers {missing}: run a training-mode forward "
                "pass of the model before the BiDO loss"
            )
        out, self.outputs = [self.outputs[n] for n in self.names], {}
        if any(h.shape[0] != batch_size for h in out):
            raise RuntimeError(
                f"recorded hidden outputs have batch sizes {[h.shape[0] for h in out]}, "
                f"but the loss got {batch_size} images"
            )
        return out


class _Capture:
    """Forward hook storing one layer's output in training mode (a class so deepcopy copies it)."""

    def __init__(self, recorder: _HiddenRecorder, name: str) -> None:
        self.recorder = recorder
        self.name = name

    def __call__(self, module: nn.Module, args: tuple, output: object) -> None:
        if not module.training:
            return
        if not isinstance(output, Tensor):
            raise TypeError(
                f"BiDO layer {self.name!r} must output a tensor, got {type(output).__name__}"
            )
        self.recorder.outputs[self.name] = output


_RECORDER_ATTR = "_bido_recorder"


def _remove_captures(model: nn.Module) -> None:
    for m in model.modules():
        for key in [k for k, h in m._forward_hooks.items() if isinstance(h, _Capture)]:
            del m._forward_hooks[key]


def _find_recorder(model: nn.Module) -> _HiddenRecorder:
    for m in model.modules():  # also inside wrappers such as opacus' GradSampleModule
        rec = getattr(m, _RECORDER_ATTR, None)
        if isinstance(rec, _HiddenRecorder):
            return rec
    raise ValueError(
        f"the BiDO loss needs a model built by bido_defense().build, got {type(model).__name__}"
    )


def bido_defense(
    *,
    measure: str = "hsic",
    lambda_x: float = 0.05,
    lambda_y: float = 0.5,
    sigma: float = 5.0,
    layers: Sequence[str] | None = None,
) -> Defense:
    """BiDO: ``CE + lambda_x * sum_l d(X, Z_l) - lambda_y * sum_l d(Z_l, Y)`` (module docstring).

    ``build`` registers forward hooks on the constrained layers of the model (the model itself is
    returned unchanged: same class, same weights, same state dict). In training mode the hooks
    record each layer's output; ``loss`` consumes them. Eval-mode passes record nothing, so the
    trained model runs as before. Outputs are used as they leave the layer: do not name a layer
    whose output is later modified in place (e.g. followed by ``ReLU(inplace=True)``).

    Args:
        measure: ``"hsic"`` (normalised HSIC) or ``"coco"``.
        lambda_x: Weight >= 0 of the input-dependence penalty (the privacy knob). Official
            defaults: 0.05 (CelebA, HSIC); 1 for MNIST with COCO.
        lambda_y: Weight >= 0 of the label-dependence reward. Official: 0.5 (CelebA, HSIC); 50
            for MNIST with COCO.
        sigma: Gaussian-kernel bandwidth per dimension (official 5).
        layers: Module names (``model.named_modules()``) to constrain; None uses
            :func:`default_bido_layers` for the architecture.

    Returns:
        A :class:`Defense` named ``"bido"`` with ``build`` and ``loss`` hooks.

    Raises:
        ValueError: unknown ``measure``, negative or non-finite lambdas, ``sigma`` <= 0, empty or
            duplicate ``layers``; at build time, layer names missing from the model or an
            architecture without defaults.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> d = bido_defense(measure="coco", lambda_x=1, lambda_y=50, layers=["body.3", "body.7"])
        >>> model = d.build(tiny_classifier()).train()
        >>> x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
        >>> d.loss(model(x), y, model=model, images=x, epoch=0).ndim
        0
    """
    _check_measure(measure)
    for name, value in (("lambda_x", lambda_x), ("lambda_y", lambda_y)):
        if isinstance(value, bool) or not (
            isinstance(value, int | float) and math.isfinite(value) and value >= 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(sigma, bool) or not (
        isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0
    ):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"layers must be a sequence of module names, got {layers!r}")
        if len(layers) == 0 or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be non-empty and without duplicates, got {list(layers)}")
    lx, ly, sig = float(lambda_x), float(lambda_y), float(sigma)
    names = None if layers is None else list(layers)

    def build(model: nn.Module) -> nn.Module:
        chosen = default_bido_layers(model) if names is None else names
        modules = dict(model.named_modules())
        missing = [n for n in chosen if n not in modules]
        if missing:
            raise ValueError(
                f"layers {missing} are not modules of {type(model).__name__} "
                "(see model.named_modules())"
            )
        _remove_captures(model)  # building twice must not double the hooks
        recorder = _HiddenRecorder(chosen)
        for n in chosen:
            modules[n].register_forward_hook(_Capture(recorder, n))
        setattr(model, _RECORDER_ATTR, recorder)
        return model

    def loss(
        logits: Tensor, labels: Tensor, *, model: nn.Module, images: Tensor, epoch: int
    ) -> Tensor:
        hiddens = _find_recorder(model).take(images.shape[0])
        ce = F.cross_entropy(logits, labels)
        if lx == 0 and ly == 0:
            return ce
        d_xz, d_zy = bido_terms(
            images, labels, hiddens, num_classes=logits.shape[1], measure=measure, sigma=sig
        )
        return ce + (lx * d_xz.sum() - ly * d_zy.sum()).to(ce.dtype)

    return Defense(
        "bido",
        config={"measure": measure, "lambda_x": lx, "lambda_y": ly, "sigma": sig, "layers": names},
        knob="lambda_x",
        build=build,
        loss=loss,
    )
