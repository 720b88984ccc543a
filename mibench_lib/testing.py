"""Tiny seeded models and data for tests and doctests (8x8 images, a handful of classes, < 1 s).

Shared by the unit tests and the docstring examples, so that every example in the library runs
on the same small fixtures without any download.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mibench_lib.generators.base import Generator
from mibench_lib.models.base import Classifier

if TYPE_CHECKING:
    from mibench_lib.attacks._spec import AttackSpec, PublicPrior, TargetPrior


class TinyClassifier(Classifier):
    """conv(8)-BN-ReLU-pool-conv(16)-BN-ReLU-GAP -> linear: a stand-in target for unit tests."""

    def __init__(self, num_classes: int = 4, input_shape: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__(num_classes, 16, input_shape)
        c = input_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, 16)."""
        return self.body(x * 2 - 1)


class TinyGenerator(Generator):
    """linear(z -> 16x2x2)-BN-ReLU -> 2 x (upsample, conv) -> sigmoid: images in [0, 1]."""

    def __init__(self, latent_dim: int = 8, output_shape: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__(latent_dim, output_shape)
        c, h, _ = output_shape
        s = h // 4
        self.stem = nn.Sequential(
            nn.Linear(latent_dim, 16 * s * s),
            nn.BatchNorm1d(16 * s * s),
            nn.ReLU(),
            nn.Unflatten(1, (16, s, s)),
        )
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Upsample(scale_factor=2),
                    nn.Conv2d(16, 8, 3, padding=1),
                    nn.BatchNorm2d(8),
                    nn.ReLU(),
                ),
                nn.Sequential(
                    nn.Upsample(scale_factor=2), nn.Conv2d(8, c, 3, padding=1), nn.Sigmoid()
                ),
            ]
        )


class TinyDiscriminator(nn.Module):
    """conv-InstanceNorm-LeakyReLU critic giving one unbounded score per image (WGAN style)."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, 8, 3, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.InstanceNorm2d(16, affine=True),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(16 * (h // 4) * (w // 4), 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N,) critic scores."""
        return self.net(x * 2 - 1).squeeze(1)


def tiny_classifier(
    num_classes: int = 4, input_shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> TinyClassifier:
    """A seeded, randomly initialised :class:`TinyClassifier` in eval mode."""
    torch.manual_seed(seed)
    return TinyClassifier(num_classes, input_shape).eval()


def tiny_generator(
    latent_dim: int = 8, output_shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> TinyGenerator:
    """A seeded, randomly initialised :class:`TinyGenerator` in eval mode."""
    torch.manual_seed(seed)
    return TinyGenerator(latent_dim, output_shape).eval()


def tiny_discriminator(
    input_shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> TinyDiscriminator:
    """A seeded, randomly initialised :class:`TinyDiscriminator` in eval mode."""
    torch.manual_seed(seed)
    return TinyDiscriminator(input_shape).eval()


def tiny_digits(resolution: int = 8) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as (N, 1, r, r) float in [0, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if resolution != 8:
        x = nn.functional.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False
        )
    return x.clamp(0, 1), torch.tensor(d.target, dtype=torch.int64)


# ----------------------------------------------------------------------------- real on-disk formats

#: (width, height) of an aligned CelebA image; the loader refuses any other size.
CELEBA_ALIGNED_SIZE = (178, 218)


def make_celeba_fixture(
    root: str | os.PathLike[str],
    *,
    identities: int = 300,
    images_per_identity: int | Sequence[int] = 2,
    size: tuple[int, int] = CELEBA_ALIGNED_SIZE,
    seed: int = 0,
) -> dict[int, int]:
    """Write a small CelebA in the official on-disk layout under ``root``.

    ``root/img_align_celeba/000001.jpg ...`` (JPEGs of ``size`` = (width, height); the loader
    accepts only the aligned 178x218), ``root/identity_CelebA.txt`` (lines ``000001.jpg 2880``) and
    ``root/list_eval_partition.txt`` (lines ``000001.jpg 0``; the first 80 % of the files are
    train, then 10 % val, 10 % test, as in the release). Identity ids are spread over CelebA's
    range (``1 + 13 k``) and their images interleaved in file order, as in the real files.

    Each identity has its own colour (a hue wheel over three brightness levels) plus a
    class-dependent stripe and a little per-image noise, so classifiers have signal and feature
    statistics are not degenerate. Images are written at JPEG quality 90: a few hundred take
    about a second.

    Args:
        root: Folder to create (parents too).
        identities: Number of identities.
        images_per_identity: Images of each identity: one count for all, or one count per
            identity in order (identity ``k`` gets ``images_per_identity[k]``). The loader ranks
            identities by image count, so give the ones to attack more images.
        size: (width, height) of every image.
        seed: Seeds the per-image noise.

    Returns:
        Identity id -> number of images.

    Example:
        >>> import tempfile
        >>> from mibench_lib.data import load_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     counts = make_celeba_fixture(tmp, identities=6, images_per_identity=[3] * 4 + [1, 1])
        ...     split = load_dataset("celeba", root=tmp, resolution=16, num_private=4)
        >>> split.num_classes, len(split.public), sorted(counts.values())
        (4, 2, [1, 1, 3, 3, 3, 3])
    """
    import colorsys

    import numpy as np
    from PIL import Image

    if identities < 1:
        raise ValueError(f"identities must be >= 1, got {identities}")
    if isinstance(images_per_identity, int):
        per = [images_per_identity] * identities
    else:
        per = [int(n) for n in images_per_identity]
        if len(per) != identities:
            raise ValueError(
                f"images_per_identity has {len(per)} counts for {identities} identities"
            )
    if min(per) < 1:
        raise ValueError(f"every identity needs at least one image, got {min(per)}")
    root = Path(root)
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    ids = [1 + 13 * k for k in range(identities)]
    order: list[int] = []  # identity index of each file, round-robin like the release
    left = list(per)
    while any(left):
        for k in range(identities):
            if left[k]:
                order.append(k)
                left[k] -= 1
    w, h = size
    rng = np.random.default_rng(seed)
    ident, part = [], []
    for n, k in enumerate(order, start=1):
        name = f"{n:06d}.jpg"
        rgb = colorsys.hsv_to_rgb(k / identities, 0.8, (0.45, 0.7, 0.95)[k % 3])
        arr = np.empty((h, w, 3), dtype=np.float32)
        arr[:] = np.asarray(rgb, dtype=np.float32) * 255
        top = h // 4 + (k * 7) % (h // 2)  # a horizontal stripe at an identity-dependent height
        arr[top : top + h // 12] = 255 - arr[top : top + h // 12]
        arr += rng.normal(0.0, 8.0, size=arr.shape)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(img_dir / name, quality=90)
        ident.append(f"{name} {ids[k]}\n")
        frac = (n - 1) / len(order)
        part.append(f"{name} {0 if frac < 0.8 else 1 if frac < 0.9 else 2}\n")
    (root / "identity_CelebA.txt").write_text("".join(ident))
    (root / "list_eval_partition.txt").write_text("".join(part))
    return dict(zip(ids, per, strict=True))


def make_classifier_weights(
    path: str | os.PathLike[str],
    arch: str,
    num_classes: int,
    input_shape: tuple[int, int, int] = (3, 64, 64),
    *,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised zoo classifier as a local checkpoint a user could have.

    ``.safetensors``: the plain state dict. ``.pt``/``.pth``/``.tar``/``.ckpt``/``.bin``: the
    layout of the literature's checkpoints, ``{"state_dict": {"module.<key>": tensor}}``
    (``torch.save`` of a ``DataParallel`` model), which
    :func:`~mibench_lib.models.weights.load_local_weights` unwraps.

    Args:
        path: File to write (parents created); its suffix picks the format.
        arch: Key of :data:`mibench_lib.models.MODELS` (e.g. ``"ir152_64"``).
        num_classes: Classes of the head.
        input_shape: (C, H, W) the model is built for.
        seed: Seeds the initialisation.

    Returns:
        ``path`` as a Path.
    """
    from mibench_lib.artifacts import build_classifier

    torch.manual_seed(seed)
    state = build_classifier(arch, num_classes, input_shape).state_dict()
    return _save_state(Path(path), state, wrap=True)


def fid_inception_state(
    *, seed: int = 0, with_num_batches_tracked: bool = True
) -> dict[str, Tensor]:
    """Random weights with the keys and shapes of the FID-Inception file.

    pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` is a plain state dict of torchvision's
    ``Inception3`` without the auxiliary classifier and with a 1008-class ``fc``; the layout is
    taken from torchvision here (independently of torchmetrics / torch-fidelity, which the loader
    uses). Conv weights are He-scaled and BatchNorm is the identity, so activations stay of order
    one and FIDs finite.
    """
    from torchvision.models import inception_v3

    with torch.device("meta"):
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            if with_num_batches_tracked:
                state[key] = torch.zeros((), dtype=torch.int64)
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = torch.ones(value.shape)
        elif key.endswith(("running_mean", "bn.bias", "fc.bias")):
            state[key] = torch.zeros(value.shape)
        else:  # conv and fc weights
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


def make_inception_weights(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Save :func:`fid_inception_state` as a FID-Inception file (~95 MB).

    ``torch.save`` for ``.pth``/``.pt``, or ``.safetensors``, so
    :func:`~mibench_lib.metrics.fid.load_fid_inception` takes the path it takes for the real file.
    """
    return _save_state(Path(path), fid_inception_state(seed=seed), wrap=False)


def _save_state(path: Path, state: dict[str, Tensor], *, wrap: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(
            {"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state, path
        )
    return path


def build_target_prior(
    prior: TargetPrior,
    target: nn.Module,
    public: Tensor,
    *,
    seed: int = 0,
    **overrides: Any,
) -> tuple[Any, int]:
    """Build ``prior`` for ``target`` as a study does, with its quick settings, on the CPU.

    The target is reached only through a :class:`~mibench_lib.oracle.TargetOracle` at the prior's
    access level; the build's tensors and metadata go through the same round trip as the artifact
    cache (contiguous tensor copies, JSON metadata) before ``prior.load``.

    Args:
        prior: The :class:`~mibench_lib.attacks.TargetPrior` to build.
        target: Target classifier (``num_classes`` and ``input_shape`` attributes).
        public: (N, C, H, W) public images in [0, 1] (given to the build without labels).
        seed: The study's model seed.
        **overrides: Build keyword arguments replacing ``prior.quick``'s.

    Returns:
        What the attack receives, and the number of target queries the build made.
    """
    from mibench_lib.data._types import ImageSet
    from mibench_lib.oracle import TargetOracle

    oracle = TargetOracle(target, access=prior.access)
    unlabelled = ImageSet(public, torch.full((len(public),), -1, dtype=torch.int64))
    tensors, meta = prior.build(
        oracle,
        unlabelled,
        num_classes=target.num_classes,
        seed=seed,
        device=torch.device("cpu"),
        progress=False,
        **{**prior.quick, **overrides},
    )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return prior.load(tensors, json.loads(json.dumps(meta)), torch.device("cpu")), oracle.queries


def build_public_prior(
    prior: PublicPrior,
    public: Tensor,
    public_labels: Tensor | None = None,
    *,
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """Build ``prior`` from public images as a study does, with its quick settings, on the CPU.

    Args:
        prior: The :class:`~mibench_lib.attacks.PublicPrior` to build.
        public: (N, C, H, W) public images in [0, 1].
        public_labels: (N,) their own labels (None: -1, unlabelled).
        seed: The study's model seed.
        **overrides: Build keyword arguments replacing ``prior.quick``'s.

    Returns:
        What the attack receives (after the cache's round trip of tensors and JSON metadata).
    """
    from mibench_lib.data._types import ImageSet

    if public_labels is None:
        public_labels = torch.full((len(public),), -1, dtype=torch.int64)
    tensors, meta = prior.build(
        ImageSet(public, public_labels),
        seed=seed,
        device=torch.device("cpu"),
        progress=False,
        **{**prior.quick, **overrides},
    )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return prior.load(tensors, json.loads(json.dumps(meta)), torch.device("cpu"))


def attack_needs(
    spec: AttackSpec,
    target: nn.Module,
    public: Tensor,
    public_labels: Tensor | None = None,
    *,
    provided: dict[str, Any] | None = None,
    private: Tensor | None = None,
) -> tuple[dict[str, Any], int]:
    """Every keyword argument ``spec`` takes from its needs, built as a study builds them (quick).

    Args:
        spec: The attack.
        target: The target its :class:`~mibench_lib.attacks.TargetPrior` s are trained against.
        public: Public images for its priors; ``public_labels`` their labels (None: unlabelled).
        provided: The study's public artifacts by name (``"generator"``, ``"discriminator"``).
        private: (N, C, H, W) private images, one per label entry the attack will invert, for
            ``"masked_private"`` (their centres are hidden before the attack sees them).

    Returns:
        The keyword arguments, and the target queries its target priors made.
    """
    from mibench_lib.attacks._masked import mask_images

    provided = dict(provided or {})
    needs: dict[str, Any] = {}
    for name in spec.public_needs:
        if name == "masked_private":
            if private is None:
                raise ValueError(f"{spec.name} needs masked private images: pass private=")
            needs[name] = mask_images(private)
        else:
            needs[name] = provided[name]
    for prior in spec.public_priors:
        needs[prior.name] = build_public_prior(prior, public, public_labels)
    queries = 0
    for prior in spec.target_priors:
        needs[prior.name], spent = build_target_prior(prior, target, public)
        queries += spent
    return needs, queries


def tiny_style_generator(
    resolution: int = 8, channels: int = 1, z_dim: int = 8, w_dim: int = 8, seed: int = 0
) -> Any:
    """A seeded, randomly initialised small :class:`~mibench_lib.generators.stylegan.StyleGenerator`.

    Two mapping layers, 16 channels up to 8 px (halving above), eval mode (constant noise, so
    it is deterministic); ``num_ws = 2 * log2(resolution) - 2``.

    Example:
        >>> g = tiny_style_generator()
        >>> g.num_ws, g.w_dim, tuple(g(torch.randn(2, 8)).shape)
        (4, 8, (2, 1, 8, 8))
    """
    from mibench_lib.generators.stylegan import StyleGenerator

    torch.manual_seed(seed)
    return StyleGenerator(
        z_dim,
        w_dim,
        resolution,
        channels,
        mapping_layers=2,
        channel_base=128,
        channel_max=16,
    ).eval()
