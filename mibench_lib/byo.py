"""Bring your own models: the contracts a target, a generator and a critic meet, and their checks.

Every attack in :mod:`mibench_lib.attacks` works on any model that meets these contracts, not only
on the zoo's. Each contract has an adapter (``as_*``) that turns a plain ``nn.Module`` (an
``nn.Sequential``, a torchvision model, a GAN from another code base) into one, and a check
(``check_*``) that runs it once on a tiny batch and raises an error saying what is wrong and how
to fix it. The attacks run the checks on entry, so a wrong model fails before any query.

**Target** (the classifier under attack): an ``nn.Module`` mapping float images in [0, 1] of shape
(N, C, H, W) to logits of shape (N, num_classes), with attributes ``num_classes`` (int >= 2) and
``input_shape`` ((C, H, W)). It is reached only through a :class:`~mibench_lib.oracle.TargetOracle`.
:func:`as_target` adds the attributes, and maps the [0, 1] images the library uses to the pixels
the module was trained on: ``pixel_range=(-1, 1)`` for models trained on ``x * 2 - 1``, and
``mean``/``std`` for torchvision-style normalisation. The logits must be raw scores (not
probabilities): white-box attacks apply the softmax themselves.

**Generator** (a GAN prior, trained on public data): an ``nn.Module`` mapping latents of shape
(N, latent_dim) to images in [0, 1] of shape (N, C, H, W), with an attribute ``latent_dim``. Its
images go to the target as they are, so (C, H, W) must be the target's ``input_shape``.
:func:`as_generator` adds ``latent_dim`` (and ``output_shape``) and maps the outputs of a tanh
generator to [0, 1] with ``pixel_range=(-1, 1)``.

**Critic** (the GAN's discriminator, for attacks that use it as a prior): an ``nn.Module`` mapping
images in [0, 1] of shape (N, C, H, W) to one unbounded score per image, shape (N,), higher meaning
more realistic. :func:`as_critic` squeezes an (N, 1) output to (N,) and, with
``pixel_range=(-1, 1)``, feeds the module the [-1, 1] images it was trained on.

The checks run the model once in eval mode without autograd (every submodule's train/eval flag
is restored afterwards), on inputs drawn from their own seeded generator, with torch's global
random state saved and restored around the call: a check changes neither a model's BatchNorm
statistics nor any later random draw, so an attack gives bit-identical results with and without
it. They do not go through an oracle and are not counted as queries.

Example:
    >>> from torch import nn
    >>> target = as_target(
    ...     nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), num_classes=3, input_shape=(1, 8, 8)
    ... )
    >>> generator = as_generator(
    ...     nn.Sequential(nn.Linear(4, 64), nn.Unflatten(1, (1, 8, 8)), nn.Tanh()),
    ...     latent_dim=4,
    ...     pixel_range=(-1, 1),
    ... )
    >>> generator.output_shape
    (1, 8, 8)
    >>> check_generator(nn.Sequential(nn.Linear(4, 64), nn.Unflatten(1, (1, 8, 8))))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: generator Sequential has no 'latent_dim' attribute: a generator exposes latent_dim ...
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mibench_lib.generators.base import Generator

__all__ = [
    "CriticWrapper",
    "GeneratorWrapper",
    "TargetWrapper",
    "as_critic",
    "as_generator",
    "as_target",
    "check_critic",
    "check_generator",
    "check_target",
]

#: Images / latents a check sends through the model: a tiny batch, so that a check costs little
#: even for a large face model, with more than one entry so that per-image shapes are visible.
_CHECK_TARGET_N = 2
_CHECK_GENERATOR_N = 4
_CHECK_CRITIC_N = 2
#: Tolerance on the [0, 1] range of generated images (float rounding of a sigmoid or a rescale).
_RANGE_TOL = 1e-5
_SEED = 0


# -- small validators ---------------------------------------------------------------------------
def _int_at_least(name: str, value: object, low: int) -> int:
    """``value`` as a plain ``int`` >= ``low`` (Python or NumPy integers; bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _image_shape(name: str, value: object) -> tuple[int, int, int]:
    """``value`` as a (C, H, W) tuple of positive ints."""
    try:
        shape = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        shape = ()
    if len(shape) != 3 or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape
    ):
        raise ValueError(f"{name} must be (C, H, W), three positive integers, got {value!r}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _pixel_range(value: object) -> tuple[float, float]:
    """``value`` as a (low, high) pair of finite floats with low < high."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"pixel_range must be a pair (low, high), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"pixel_range must be finite with low < high, got {value!r}")
    return lo, hi


def _channel_stats(name: str, value: object, channels: int) -> Tensor:
    """Per-channel ``mean`` or ``std`` as a (1, C, 1, 1) float tensor (one value: every channel)."""
    stats = torch.as_tensor(value, dtype=torch.float32).flatten()
    if stats.numel() not in (1, channels) or not torch.isfinite(stats).all():
        raise ValueError(
            f"{name} must be one finite number or one per channel ({channels}), got {value!r}"
        )
    return stats.expand(channels).reshape(1, channels, 1, 1).clone()


def _name(model: nn.Module) -> str:
    """The class name, with the wrapped module's for this module's wrappers."""
    if isinstance(model, (TargetWrapper, GeneratorWrapper, CriticWrapper)):
        return f"{type(model).__name__}({type(model.module).__name__})"
    return type(model).__name__


def _shape(out: object) -> str:
    return str(tuple(out.shape)) if isinstance(out, Tensor) else type(out).__name__


def _device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def _quietly(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode and no autograd, leaving every train flag and the global RNG as they were.

    The flags of *every* submodule are saved and restored (not only the outer module's), as in
    ``mibench_lib.attacks._frozen.eval_mode``; the global CPU RNG (and the CUDA one of
    ``device``) is forked, so a model that draws random numbers in its forward pass (a noisy
    defense, say) leaves no trace of the check in the attack's later draws.
    """
    modes = [(m, m.training) for m in module.modules()]
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        module.eval()
        try:
            yield
        finally:
            for m, mode in modes:
                m.training = mode


def _run(module: nn.Module, x: Tensor, what: str, described: str, hint: str) -> object:
    """``module(x)`` under :func:`_quietly`; a failure is re-raised naming what was sent."""
    device = _device(module)
    with _quietly(module, device):
        try:
            return module(x.to(device))
        except Exception as err:
            raise ValueError(
                f"{what} {_name(module)} failed on {described}: {type(err).__name__}: {err}. {hint}"
            ) from err


def _draws() -> torch.Generator:
    """A fresh CPU generator with a fixed seed: checks never touch the caller's random state."""
    return torch.Generator().manual_seed(_SEED)


# -- target -------------------------------------------------------------------------------------
class TargetWrapper(nn.Module):
    """A plain module made a target: ``num_classes``, ``input_shape`` and the [0, 1] pixel range.

    Built by :func:`as_target` (which also checks it). ``forward(x)`` maps ``x`` in [0, 1] to
    ``low + (high - low) * x`` (skipped for the default (0, 1)), then to ``(x - mean) / std`` per
    channel (skipped without ``mean``/``std``), and returns ``module`` of that; both maps are
    differentiable, so white-box attacks get the module's gradients through them.

    Attributes:
        module: The wrapped module.
        num_classes: K, the number of logits per image.
        input_shape: (C, H, W) of the images it takes.
        pixel_range: (low, high) range of pixels the module expects.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        pixel_range: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.num_classes = _int_at_least("num_classes", num_classes, 2)
        self.input_shape = _image_shape("input_shape", input_shape)
        self.pixel_range = _pixel_range(pixel_range)
        if (mean is None) != (std is None):
            raise ValueError(f"pass mean and std together, got mean={mean!r}, std={std!r}")
        self.mean: Tensor | None
        self.std: Tensor | None
        if mean is None:
            self.mean = self.std = None
        else:
            channels = self.input_shape[0]
            std_t = _channel_stats("std", std, channels)
            if (std_t <= 0).any():
                raise ValueError(f"std must be positive, got {std!r}")
            # not persistent: the wrapper's state_dict is the module's (prefixed "module.")
            self.register_buffer("mean", _channel_stats("mean", mean, channels), persistent=False)
            self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, num_classes) logits of ``module``."""
        lo, hi = self.pixel_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.module(x)

    def extra_repr(self) -> str:
        norm = "" if self.mean is None else ", mean/std per channel"
        return (
            f"num_classes={self.num_classes}, input_shape={self.input_shape}, "
            f"pixel_range={self.pixel_range}{norm}"
        )


def as_target(
    module: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    pixel_range: tuple[float, float] = (0.0, 1.0),
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> TargetWrapper:
    """Make a plain classifier module a target, then check it (:func:`check_target`).

    Args:
        module: (N, C, H, W) images in ``pixel_range`` (then normalised by ``mean``/``std``) ->
            (N, num_classes) logits.
        num_classes: Number of classes K (>= 2).
        input_shape: (C, H, W) of the images it takes.
        pixel_range: Pixel range the module was trained on: ``(0, 1)`` (default, no change) or,
            e.g., ``(-1, 1)`` for ``x * 2 - 1`` inputs, or ``(0, 255)``.
        mean: Per-channel mean subtracted after the pixel-range map (torchvision's ``Normalize``,
            e.g. ``(0.485, 0.456, 0.406)``); one number for every channel. Needs ``std``.
        std: Per-channel standard deviation divided by after subtracting ``mean``.

    Returns:
        A :class:`TargetWrapper` taking images in [0, 1], on the module's device; pass it to
        :class:`~mibench_lib.oracle.TargetOracle`.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: a bad argument, or a module that fails :func:`check_target` (the message says
            what to fix).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))  # trained on [-1, 1]
        >>> target = as_target(net, num_classes=5, input_shape=(3, 4, 4), pixel_range=(-1, 1))
        >>> target(torch.full((2, 3, 4, 4), 0.5)).shape, bool(
        ...     torch.equal(target(torch.full((1, 3, 4, 4), 0.5)), net(torch.zeros(1, 3, 4, 4))))
        (torch.Size([2, 5]), True)
    """
    target = TargetWrapper(
        module,
        num_classes=num_classes,
        input_shape=input_shape,
        pixel_range=pixel_range,
        mean=mean,
        std=std,
    ).to(_device(module))
    check_target(target)
    return target


def check_target(model: nn.Module) -> None:
    """Check that ``model`` meets the target contract, with one forward pass on 2 images.

    The images are uniform in [0, 1] (drawn from a fixed seed, not the global RNG) on the model's
    device; the model runs in eval mode without autograd, its flags and the global random state
    restored afterwards. Nothing is counted as a query.

    Args:
        model: The target: (N, C, H, W) in [0, 1] -> (N, num_classes) float logits, with
            ``num_classes`` and ``input_shape`` attributes.

    Raises:
        TypeError: not an ``nn.Module``, or ``num_classes``/``input_shape`` missing (wrap it with
            :func:`as_target`).
        ValueError: bad attribute values, a forward pass that fails, or an output that is not a
            finite float tensor of shape (N, num_classes); the message names the fix.

    Example:
        >>> from torch import nn
        >>> as_target(nn.Flatten(), num_classes=3, input_shape=(1, 2, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: target TargetWrapper(Flatten) must map (N, 1, 2, 2) images to (N, 3) logits ...
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"target must be a torch.nn.Module, got {type(model).__name__}")
    name = _name(model)
    for attr in ("num_classes", "input_shape"):
        if not hasattr(model, attr):
            raise TypeError(
                f"target {name} has no {attr!r} attribute: a target exposes num_classes and "
                "input_shape (C, H, W); wrap a plain module with mibench_lib.byo.as_target("
                "module, num_classes=K, input_shape=(C, H, W))"
            )
    k = _int_at_least(f"target {name}: num_classes", model.num_classes, 2)
    c, h, w = _image_shape(f"target {name}: input_shape", model.input_shape)
    x = torch.rand(_CHECK_TARGET_N, c, h, w, generator=_draws())
    n = _CHECK_TARGET_N
    out = _run(
        model,
        x,
        "target",
        f"{n} images of shape {tuple(x.shape)} in [0, 1]",
        "Is input_shape (C, H, W) the shape the model takes?",
    )
    fix = (
        "The target must return the logits tensor alone: wrap a model that returns a tuple or a "
        "dict in an nn.Module whose forward returns the logits."
    )
    if not isinstance(out, Tensor):
        raise ValueError(f"target {name} returned a {type(out).__name__}, not a Tensor. {fix}")
    if not out.is_floating_point():
        raise ValueError(
            f"target {name} returned {out.dtype} values: it must return float logits, not "
            "predicted labels"
        )
    if tuple(out.shape) != (n, k):
        if out.ndim == 2 and out.shape[0] == n and out.shape[1] > 1:
            hint = (
                f" Its output has {out.shape[1]} columns: set num_classes={out.shape[1]} or fix "
                "its last layer."
            )
        else:
            hint = (
                " Return one logit per class and image; a binary model with a single logit z "
                "can return torch.cat([-z / 2, z / 2], dim=1), whose softmax is "
                "(1 - sigmoid(z), sigmoid(z))."
            )
        raise ValueError(
            f"target {name} must map (N, {c}, {h}, {w}) images to (N, {k}) logits "
            f"(num_classes={k}); on N={n} images it returned shape {_shape(out)}.{hint}"
        )
    if not torch.isfinite(out).all():
        raise ValueError(
            f"target {name} returned non-finite logits (nan or inf) on images in [0, 1]: check "
            "its weights and the pixel range it expects (see as_target's pixel_range)"
        )


# -- generator ----------------------------------------------------------------------------------
class _ToUnitRange(nn.Module):
    """(y - low) / (high - low): maps outputs in [low, high] to [0, 1]."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, y: Tensor) -> Tensor:
        return (y - self.low) / (self.high - self.low)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


class GeneratorWrapper(Generator):
    """A plain module made a :class:`~mibench_lib.generators.base.Generator` with [0, 1] images.

    Built by :func:`as_generator` (which also checks it). The module is the generator's ``stem``;
    with a ``pixel_range`` other than (0, 1), one synthesis block maps its outputs to [0, 1].

    Attributes:
        module: The wrapped module (also ``stem``).
        latent_dim: Size of the latents it takes.
        output_shape: (C, H, W) of its images.
        pixel_range: (low, high) range of the module's own outputs.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        latent_dim: int,
        output_shape: tuple[int, int, int],
        pixel_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        super().__init__(
            _int_at_least("latent_dim", latent_dim, 1), _image_shape("output_shape", output_shape)
        )
        self.pixel_range = _pixel_range(pixel_range)
        self.stem = module
        if self.pixel_range != (0.0, 1.0):
            self.blocks.append(_ToUnitRange(*self.pixel_range))

    @property
    def module(self) -> nn.Module:
        """The wrapped module."""
        return self.stem


def as_generator(
    module: nn.Module,
    *,
    latent_dim: int,
    pixel_range: tuple[float, float] = (0.0, 1.0),
) -> GeneratorWrapper:
    """Make a plain generator module a generator with images in [0, 1], then check it.

    The module is run once on 2 latents to read its output shape, then the wrapper is checked
    with :func:`check_generator` (both in eval mode, without autograd, leaving the global random
    state as it was).

    Args:
        module: (N, latent_dim) latents -> (N, C, H, W) images in ``pixel_range``.
        latent_dim: Size of the latents.
        pixel_range: Range of the module's outputs: ``(0, 1)`` (default; e.g. a sigmoid output)
            or ``(-1, 1)`` for a tanh output, mapped to [0, 1] by ``(y + 1) / 2``.

    Returns:
        A :class:`GeneratorWrapper` with ``latent_dim`` and ``output_shape``, on the module's
        device.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: a bad argument, or a module that fails :func:`check_generator`.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 48), nn.Unflatten(1, (3, 4, 4)), nn.Tanh())
        >>> g = as_generator(net, latent_dim=4, pixel_range=(-1, 1))
        >>> g.latent_dim, g.output_shape, bool(0 <= g(torch.randn(5, 4)).min())
        (4, (3, 4, 4), True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    latent_dim = _int_at_least("latent_dim", latent_dim, 1)
    z = torch.randn(2, latent_dim, generator=_draws())
    out = _run(
        module,
        z,
        "generator",
        f"latents of shape {tuple(z.shape)}",
        "Is latent_dim the size of the latents the module takes?",
    )
    if not isinstance(out, Tensor) or out.ndim != 4:
        raise ValueError(
            f"generator {type(module).__name__} must return images (N, C, H, W); on latents of "
            f"shape {tuple(z.shape)} it returned {_shape(out)} (end a flat output with "
            "nn.Unflatten(1, (C, H, W)))"
        )
    generator = GeneratorWrapper(
        module,
        latent_dim=latent_dim,
        output_shape=tuple(out.shape[1:]),  # type: ignore[arg-type]
        pixel_range=pixel_range,
    ).to(_device(module))
    check_generator(generator)
    return generator


def check_generator(
    generator: nn.Module, image_shape: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    """Check that ``generator`` meets the generator contract, on 4 latents ``z ~ N(0, I)``.

    The latents come from a fixed seed (not the global RNG); the generator runs in eval mode
    without autograd, its flags and the global random state restored afterwards.

    Args:
        generator: (N, latent_dim) -> (N, C, H, W) images in [0, 1], with a ``latent_dim``
            attribute.
        image_shape: (C, H, W) its images must have (the target's ``input_shape``); ``None``
            checks only that they are images.

    Returns:
        The (C, H, W) shape of its images.

    Raises:
        TypeError: not an ``nn.Module``, or no ``latent_dim`` (wrap it with :func:`as_generator`).
        ValueError: a bad ``latent_dim``, a forward pass that fails, or images of the wrong shape,
            not finite or outside [0, 1]; outputs in [-1, 1] are named as such, with the fix
            ``as_generator(module, latent_dim=..., pixel_range=(-1, 1))``.

    Example:
        >>> from torch import nn
        >>> tanh = nn.Sequential(nn.Linear(4, 16), nn.Unflatten(1, (1, 4, 4)), nn.Tanh())
        >>> tanh.latent_dim = 4
        >>> check_generator(tanh)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: generator Sequential outputs lie in [...], not [0, 1]: it looks like a tanh ...
    """
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
    name = _name(generator)
    if not hasattr(generator, "latent_dim"):
        raise TypeError(
            f"generator {name} has no 'latent_dim' attribute: a generator exposes latent_dim "
            "(the size of its latents); wrap a plain module with mibench_lib.byo.as_generator("
            "module, latent_dim=D)"
        )
    dim = _int_at_least(f"generator {name}: latent_dim", generator.latent_dim, 1)
    if image_shape is not None:
        image_shape = _image_shape("image_shape", image_shape)
    n = _CHECK_GENERATOR_N
    z = torch.randn(n, dim, generator=_draws())
    out = _run(
        generator,
        z,
        "generator",
        f"latents of shape {tuple(z.shape)}",
        "Is latent_dim the size of the latents it takes?",
    )
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != n:
        raise ValueError(
            f"generator {name} must map (N, {dim}) latents to images (N, C, H, W); on N={n} "
            f"latents it returned {_shape(out)} (end a flat output with nn.Unflatten(1, (C, H, W)))"
        )
    if not out.is_floating_point():
        raise ValueError(f"generator {name} must return float images, got {out.dtype}")
    shape: tuple[int, int, int] = tuple(out.shape[1:])  # type: ignore[assignment]
    if image_shape is not None and shape != image_shape:
        raise ValueError(
            f"generator {name} makes images of shape {shape}, but the target takes {image_shape}: "
            "use a generator of the target's resolution and channels"
        )
    declared = getattr(generator, "output_shape", None)
    if declared is not None and tuple(declared) != shape:
        raise ValueError(
            f"generator {name} declares output_shape {tuple(declared)} but makes images of shape "
            f"{shape}"
        )
    if not torch.isfinite(out).all():
        raise ValueError(f"generator {name} returned non-finite pixels (nan or inf)")
    lo, hi = float(out.min()), float(out.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        got = f"generator {name} outputs lie in [{lo:.3g}, {hi:.3g}], not [0, 1]"
        if lo >= -1 - _RANGE_TOL and hi <= 1 + _RANGE_TOL:
            raise ValueError(
                f"{got}: it looks like a tanh generator with outputs in [-1, 1]; wrap it with "
                f"mibench_lib.byo.as_generator(module, latent_dim={dim}, pixel_range=(-1, 1))"
            )
        raise ValueError(
            f"{got}: images must lie in [0, 1]; wrap a generator trained on another pixel range "
            f"(low, high) with mibench_lib.byo.as_generator(module, latent_dim={dim}, "
            "pixel_range=(low, high)), or end it with nn.Sigmoid()"
        )
    return shape


# -- critic -------------------------------------------------------------------------------------
class CriticWrapper(nn.Module):
    """A plain critic module taking [0, 1] images and returning (N,) scores.

    Built by :func:`as_critic`. ``forward(x)`` feeds the module ``low + (high - low) * x``
    (skipped for the default (0, 1)) and squeezes an (N, 1) output to (N,); any other output is
    returned as it is (and :func:`check_critic` rejects it).

    Attributes:
        module: The wrapped module.
        pixel_range: (low, high) range of the images the module was trained on.
    """

    def __init__(self, module: nn.Module, *, pixel_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.pixel_range = _pixel_range(pixel_range)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N,) critic scores."""
        lo, hi = self.pixel_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        out = self.module(x)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out.squeeze(1)
        return out

    def extra_repr(self) -> str:
        return f"pixel_range={self.pixel_range}"


def as_critic(
    module: nn.Module,
    *,
    pixel_range: tuple[float, float] = (0.0, 1.0),
    image_shape: tuple[int, int, int] | None = None,
) -> CriticWrapper:
    """Make a plain critic module take [0, 1] images and return (N,) scores.

    Args:
        module: (N, C, H, W) images in ``pixel_range`` -> (N,) or (N, 1) unbounded scores.
        pixel_range: Range of the images the critic was trained on: ``(0, 1)`` (default) or
            ``(-1, 1)`` for the critic of a tanh generator.
        image_shape: (C, H, W) of the images it judges; if given, the wrapper is checked with
            :func:`check_critic` at once (the attacks check it anyway, with the target's shape).

    Returns:
        A :class:`CriticWrapper`.

    Example:
        >>> from torch import nn
        >>> critic = as_critic(nn.Sequential(nn.Flatten(), nn.Linear(16, 1)), image_shape=(1, 4, 4))
        >>> critic(torch.rand(3, 1, 4, 4)).shape
        torch.Size([3])
    """
    critic = CriticWrapper(module, pixel_range=pixel_range)
    if image_shape is not None:
        check_critic(critic, image_shape)
    return critic


def check_critic(critic: nn.Module, image_shape: tuple[int, int, int]) -> None:
    """Check that ``critic`` meets the critic contract, on 2 images uniform in [0, 1].

    The images come from a fixed seed (not the global RNG); the critic runs in eval mode without
    autograd, its flags and the global random state restored afterwards.

    Args:
        critic: (N, C, H, W) images in [0, 1] -> (N,) float scores.
        image_shape: (C, H, W) of the images it judges (the generator's and target's).

    Raises:
        TypeError: not an ``nn.Module``.
        ValueError: a forward pass that fails, or scores that are not a finite float tensor of
            shape (N,); an (N, 1) output is named with the fix ``as_critic(module)``.

    Example:
        >>> from torch import nn
        >>> check_critic(nn.Sequential(nn.Flatten(), nn.Linear(16, 1)), (1, 4, 4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: critic Sequential must return one score per image, shape (N,); on N=2 ...
    """
    if not isinstance(critic, nn.Module):
        raise TypeError(f"critic must be a torch.nn.Module, got {type(critic).__name__}")
    name = _name(critic)
    c, h, w = _image_shape("image_shape", image_shape)
    n = _CHECK_CRITIC_N
    x = torch.rand(n, c, h, w, generator=_draws())
    out = _run(
        critic,
        x,
        "critic",
        f"{n} images of shape {tuple(x.shape)} in [0, 1]",
        "Does it take images of the generator's shape?",
    )
    if not isinstance(out, Tensor) or tuple(out.shape) != (n,):
        hint = (
            ": wrap it with mibench_lib.byo.as_critic(module), which squeezes (N, 1) to (N,)"
            if isinstance(out, Tensor) and tuple(out.shape) == (n, 1)
            else ""
        )
        raise ValueError(
            f"critic {name} must return one score per image, shape (N,); on N={n} images it "
            f"returned {_shape(out)}{hint}"
        )
    if not out.is_floating_point():
        raise ValueError(f"critic {name} must return float scores, got {out.dtype}")
    if not torch.isfinite(out).all():
        raise ValueError(f"critic {name} returned non-finite scores (nan or inf)")
