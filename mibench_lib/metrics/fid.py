"""Fréchet distance between reconstructions and private images in a feature space (FID).

FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), the Fréchet distance between Gaussians
fitted to the features of real and generated images (Heusel et al., "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017). In model inversion the
real set is the private training images of the attacked classes. The statistics and the matrix
square root are those of ``torchmetrics.image.fid.FrechetInceptionDistance`` (float64 accumulators,
unbiased covariances, eigenvalues of S_r S_f).

Two feature spaces:

- the evaluation model's penultimate features (default, no weights needed; values are not
  comparable with published FIDs);
- Inception-v3 pool3 (2048-d) at 299 px, the published convention, from a torchvision
  ``inception_v3`` state dict on local disk (:func:`load_inception_pool3`); nothing is downloaded.

FID is biased upward for small sample counts and, with fewer samples than feature dimensions, the
covariances are rank-deficient: compare values only at equal sample counts.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from mibench_lib.metrics._errors import MetricUnavailable
from mibench_lib.metrics.features import Images, extract_features

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _FeatureRows(nn.Module):
    """Pass-through "extractor" handing precomputed (N, D) features to torchmetrics.

    torchmetrics infers the feature size from a ``num_features`` attribute, or else by pushing a
    random image through the module; declaring it keeps that dummy pass (and its image-shape
    assumptions) out. Returning float64 keeps the final value in float64 (torchmetrics casts the
    result back to the dtype of the features).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return x.double()


def frechet_distance(real_feats: Tensor, fake_feats: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Args:
        real_feats: (N_r, D) features of the real (private) images, N_r >= 2.
        fake_feats: (N_f, D) features of the reconstructions, N_f >= 2.

    Returns:
        The distance (>= 0 up to round-off; 0 for identical sets).

    Raises:
        ValueError: not 2-D, or the feature sizes differ.
        MetricUnavailable: fewer than 2 samples on a side (no covariance), or non-finite features.

    Example:
        >>> real = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
        >>> round(frechet_distance(real, real + 1.0), 6)  # shifted copy: ||mu_r - mu_f||^2 = 2
        2.0
    """
    for name, feats in (("real_feats", real_feats), ("fake_feats", fake_feats)):
        if feats.ndim != 2:
            raise ValueError(f"{name} must have shape (N, D), got {tuple(feats.shape)}")
        if feats.shape[0] < 2:
            raise MetricUnavailable(
                f"FID needs at least 2 samples per side, {name} has {feats.shape[0]}"
            )
        if not torch.isfinite(feats).all():
            raise MetricUnavailable(f"{name} contains non-finite values")
    if real_feats.shape[1] != fake_feats.shape[1]:
        raise ValueError(
            f"feature sizes differ: real {real_feats.shape[1]}, fake {fake_feats.shape[1]}"
        )
    with torch.inference_mode():
        metric = FrechetInceptionDistance(feature=_FeatureRows(real_feats.shape[1]), normalize=True)
        metric.update(real_feats.cpu(), real=True)
        metric.update(fake_feats.cpu(), real=False)
        return float(metric.compute())


class InceptionPool3(nn.Module):
    """Inception-v3 pool3 features (2048-d) of images in [0, 1] at any resolution.

    Images are resized to 299 x 299 (bilinear), grey images repeated to RGB, ImageNet-normalised,
    and passed through ``torchvision.models.inception_v3`` with ``transform_input=True`` and the
    classifier replaced by the identity. This is how torchvision itself runs its ImageNet weights
    (its builder sets ``transform_input=True`` for them), so a torchvision checkpoint sees the
    inputs it was trained on. Build it with :func:`load_inception_pool3`.

    Args:
        net: A torchvision ``Inception3`` with weights loaded.
    """

    num_features = 2048
    input_size = 299

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net.fc = nn.Identity()
        self.net = net
        self.register_buffer(
            "mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> Tensor:
        """(N, 1 or 3, H, W) in [0, 1] -> (N, 2048) pool3 features (use in eval mode)."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != 3:
            raise ValueError(f"InceptionPool3 takes 1 or 3 channels, got {x.shape[1]}")
        if x.shape[-2:] != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`features`."""
        return self.features(x)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise MetricUnavailable(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def load_inception_pool3(weights: str | Path) -> InceptionPool3:
    """Build :class:`InceptionPool3` from a local torchvision ``inception_v3`` state dict.

    The class count of the final layer and the presence of the auxiliary classifier are read from
    the file (``fc.weight``, ``AuxLogits.*``), so the ImageNet checkpoint and fine-tuned ones load
    alike; the weights are loaded strictly. No download is ever attempted.

    Args:
        weights: ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``.

    Returns:
        The extractor on the CPU, in eval mode.

    Raises:
        MetricUnavailable: the file is missing, or is not an ``inception_v3`` state dict.
    """
    from torchvision.models import inception_v3

    path = Path(weights).expanduser()
    if not path.is_file():
        raise MetricUnavailable(f"Inception-v3 weights file not found: {path}")
    state = _read_state_dict(path)
    if "fc.weight" not in state:
        raise MetricUnavailable(f"{path} is not an inception_v3 state dict (no 'fc.weight' key)")
    aux = any(key.startswith("AuxLogits.") for key in state)
    with torch.device("meta"):  # skip random initialisation: every tensor comes from the file
        net = inception_v3(
            weights=None,
            aux_logits=aux,
            transform_input=True,
            init_weights=False,
            num_classes=int(state["fc.weight"].shape[0]),
        )
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # re-raised with the file named; nothing is swallowed
        raise MetricUnavailable(f"{path} does not match torchvision's inception_v3: {err}") from err
    return InceptionPool3(net).eval()


def fid(
    model: nn.Module,
    real_images: Images,
    fake_images: Images,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> float:
    """FID between two image sets in the feature space of ``model``.

    Args:
        model: Anything exposing ``features(x)`` on images in [0, 1]: the evaluation model, or an
            :class:`InceptionPool3` for the published convention.
        real_images: Private training images of the attacked classes, (N_r, C, H, W) in [0, 1]
            or an ImageSet.
        fake_images: Reconstructions, (N_f, C, H, W) in [0, 1].
        batch_size: Images per forward pass.
        device: Where the model runs; ``None`` keeps its device.

    Returns:
        The Fréchet distance (lower means closer distributions).

    Raises:
        MetricUnavailable: fewer than 2 images on a side, or non-finite features.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> x = torch.rand(6, 1, 8, 8)
        >>> abs(fid(tiny_classifier(), x, x)) < 1e-4
        True
    """
    for name, images in (("real_images", real_images), ("fake_images", fake_images)):
        if len(images) < 2:
            raise MetricUnavailable(
                f"FID needs at least 2 images per side, {name} has {len(images)}"
            )
    real = extract_features(
        model, real_images, batch_size=batch_size, device=device, name="real images"
    )
    fake = extract_features(
        model, fake_images, batch_size=batch_size, device=device, name="fake images"
    )
    return frechet_distance(real, fake)
