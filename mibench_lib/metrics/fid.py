"""Fréchet distance between reconstructions and private images in a feature space (FID).

FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), the Fréchet distance between Gaussians
fitted to the features of real and generated images (Heusel et al., "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017). In model inversion the
real set is the private training images of the attacked classes. The statistics and the matrix
square root are those of ``torchmetrics.image.fid.FrechetInceptionDistance`` (float64 accumulators,
unbiased covariances, eigenvalues of S_r S_f).

Two feature spaces, reported under different names so that neither is mistaken for the other:

- ``fid_eval``: the evaluation model's penultimate features (default, no weights needed). Its values
  are NOT comparable with any published FID.
- ``fid_inception``: pool3 (2048-d) of the FID-Inception network at 299 px, the network of
  published FIDs (pytorch-fid, torch-fidelity, torchmetrics), with weights from a local file
  (:func:`load_fid_inception`); nothing is downloaded. torchvision's ImageNet ``inception_v3`` is a
  different network with different weights and is not used.

FID is biased upward for small sample counts and, with fewer samples than feature dimensions, the
covariances are rank-deficient: compare values only at equal sample counts.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from mibench_lib.metrics._errors import MetricUnavailable
from mibench_lib.metrics.features import Images, extract_features


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


class FIDInceptionV3(nn.Module):
    """The FID-Inception network's pool3 features (2048-d) of images in [0, 1] at any resolution.

    This is the network of published FIDs: the TensorFlow Inception graph of 2015-12-05 that
    Heusel et al.'s reference code uses, ported to PyTorch by pytorch-fid and torch-fidelity (its
    layers differ from torchvision's ``inception_v3`` in a few pooling details, and its weights are
    not torchvision's ImageNet weights). The module is torchmetrics' own extractor
    (``torchmetrics.image.fid.NoTrainInceptionV3``, torch-fidelity's ``FeatureExtractorInceptionV3``
    underneath), the one ``FrechetInceptionDistance(feature=2048)`` uses. Build it with
    :func:`load_fid_inception`.

    Images are repeated to RGB when grey and quantised to the 8-bit pixels the network takes, then
    resized to 299 x 299 and scaled to [-1, 1] inside it. Quantisation rounds (``round(255 x)``, so
    an 8-bit image stored as floats comes back exactly); torchmetrics' ``normalize=True`` truncates
    instead, which can be one grey level lower.

    Args:
        net: A ``NoTrainInceptionV3`` with ``features_list=["2048"]`` and weights loaded.
    """

    num_features = 2048

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def features(self, x: Tensor) -> Tensor:
        """(N, 1 or 3, H, W) in [0, 1] -> (N, 2048) pool3 features (float32)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"FIDInceptionV3 takes (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}"
            )
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        pixels = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return self.net(pixels).float()

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`features`."""
        return self.features(x)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a weights file, never unpickling anything but tensors and plain containers."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise MetricUnavailable(f"{path} is not a readable safetensors file: {err}") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:  # not a weights-only checkpoint
        raise MetricUnavailable(
            f"{path} is not a plain state dict readable with torch.load(weights_only=True) "
            f"(pickled objects are never loaded): {err}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MetricUnavailable(
            f"{path} does not hold a state dict of tensors (found {type(state).__name__})"
        )
    return dict(state)


def load_fid_inception(weights: str | Path, *, antialias: bool = False) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` from the FID-Inception weights on local disk.

    The file is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth`` (the same state dict: torchvision ``Inception3``
    key names without the auxiliary classifier, a 1008-class ``fc``), or a ``.safetensors``
    conversion of either. It is read with ``torch.load(weights_only=True)`` (or safetensors), so
    no pickled object is ever executed, and loaded strictly. Nothing is downloaded.

    Args:
        weights: Path of the weights file.
        antialias: ``False`` (default): resize to 299 px with torch-fidelity's copy of
            TensorFlow 1's bilinear resize, as the reference FID code and torch-fidelity do.
            ``True``: torch's antialiased bilinear resize, the default of torchmetrics'
            ``FrechetInceptionDistance``. The two resizes differ at every input size, and so do
            the FIDs a little; pytorch-fid (used by MIBench) resizes with a third, non-antialiased
            torch bilinear resize on unquantised images.

    Returns:
        The extractor on the CPU, in eval mode (it cannot leave it).

    Raises:
        MetricUnavailable: the file is missing or unreadable, is not a plain state dict, does not
            match the FID-Inception network, or torch-fidelity is not installed.
    """
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as err:  # pragma: no cover - torchmetrics is a dependency
        raise MetricUnavailable(f"the FID-Inception network needs torchmetrics: {err}") from err
    if not _TORCH_FIDELITY_AVAILABLE:
        raise MetricUnavailable("the FID-Inception network needs torch-fidelity (pip install)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MetricUnavailable(f"FID-Inception weights file not found: {path}")
    state = _read_state_dict(path)
    # torch-fidelity's constructor insists on loading a checkpoint itself, with a full unpickler.
    # It is handed shape-only (meta) copies of the tensors that were read safely above, serialised
    # here in memory, and builds on the meta device; the real tensors are assigned afterwards.
    skeleton = io.BytesIO()
    torch.save({key: torch.empty_like(v, device="meta") for key, v in state.items()}, skeleton)
    skeleton.seek(0)
    try:
        with torch.device("meta"):
            net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=skeleton,
                antialias=antialias,
            )
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # key or shape mismatch, re-raised with the file named
        raise MetricUnavailable(
            f"{path} does not match the FID-Inception network (expected the pytorch-fid / "
            f"torch-fidelity pt_inception-2015-12-05 state dict): {err}"
        ) from err
    return FIDInceptionV3(net).eval()


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
        model: Anything exposing ``features(x)`` on images in [0, 1]: the evaluation model, or a
            :class:`FIDInceptionV3` for the FID of published work.
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
