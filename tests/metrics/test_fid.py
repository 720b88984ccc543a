import io
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.models import inception_v3

from mibench_lib.metrics import (
    FIDInceptionV3,
    MetricUnavailable,
    extract_features,
    fid,
    frechet_distance,
    load_fid_inception,
)
from mibench_lib.testing import fid_inception_state


def _hand_fid(a: np.ndarray, b: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), unbiased covariances."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_matches_hand_formula_through_an_identity_extractor(flat_classifier):
    real = torch.rand(30, 4, dtype=torch.float64).float()
    fake = (torch.rand(20, 4) * 0.6 + 0.3).clamp(0, 1)
    expected = _hand_fid(real.double().numpy(), fake.double().numpy())
    model = flat_classifier(2, (4, 1, 1))  # (N, 4, 1, 1) images -> their 4 pixel values
    got = fid(model, real[:, :, None, None], fake[:, :, None, None], batch_size=7)
    assert got == pytest.approx(expected, rel=1e-3)
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-3)


def test_shifted_copy_gives_squared_shift_and_identical_sets_zero():
    x = torch.randn(25, 3, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # ||shift||^2 = 5.25
    assert frechet_distance(x, x + shift) == pytest.approx(5.25, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_too_few_samples_is_unavailable(flat_classifier):
    with pytest.raises(MetricUnavailable, match="at least 2 samples per side, fake_feats has 1"):
        frechet_distance(torch.randn(5, 2), torch.randn(1, 2))
    with pytest.raises(MetricUnavailable, match="real_images has 1"):
        fid(flat_classifier(2, (2, 1, 1)), torch.rand(1, 2, 1, 1), torch.rand(3, 2, 1, 1))
    with pytest.raises(MetricUnavailable, match="non-finite"):
        frechet_distance(torch.tensor([[0.0], [float("inf")]]), torch.randn(3, 1))
    with pytest.raises(ValueError, match="feature sizes differ: real 2, fake 3"):
        frechet_distance(torch.randn(4, 2), torch.randn(4, 3))


# -- the FID-Inception network -------------------------------------------------------------------

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's file name


def _fid_inception_state(*, with_num_batches_tracked: bool = True) -> dict[str, Tensor]:
    """Random weights in the format of the FID-Inception file (see mibench_lib.testing)."""
    return fid_inception_state(seed=1234, with_num_batches_tracked=with_num_batches_tracked)


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / FID_WEIGHTS_NAME
    torch.save(_fid_inception_state(), path)
    return path


def _images(n: int, channels: int, size: int, *, seed: int, bright: bool = False) -> Tensor:
    """8-bit images as floats in [0, 1]: uniform noise, or a bright smooth pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, channels, size, size), generator=gen)
    if bright:
        ramp = torch.linspace(150, 255, size).view(1, 1, 1, size)
        pixels = (ramp + pixels * 0.1).round().clamp(0, 255)
    return pixels.float() / 255.0


def _assert_fully_loaded(model: FIDInceptionV3) -> None:
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "cpu" for t in tensors)
    assert not any(t.requires_grad for t in model.parameters())
    assert not model.training and not model.net.training


@pytest.mark.parametrize("with_num_batches_tracked", [True, False])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_fid_inception_weights_load_from_local_files(tmp_path, suffix, with_num_batches_tracked):
    state = _fid_inception_state(with_num_batches_tracked=with_num_batches_tracked)
    path = tmp_path / f"fid_inception{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model = load_fid_inception(path)
    _assert_fully_loaded(model)
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight"):
        assert torch.equal(model.net.state_dict()[key], state[key]), key
    model.train()  # torchmetrics' network refuses to leave eval mode
    assert not model.net.training
    assert (
        not model.net.use_antialias and load_fid_inception(path, antialias=True).net.use_antialias
    )


def test_fid_inception_file_is_read_without_unpickling_objects(tmp_path, monkeypatch, fid_weights):
    calls = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        calls.append((f, kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_fid_inception(fid_weights)
    on_disk = [weights_only for f, weights_only in calls if isinstance(f, str | Path)]
    assert on_disk == [True]  # torch-fidelity's own full-unpickler load only sees in-memory bytes
    assert all(isinstance(f, io.BytesIO) for f, w in calls if not isinstance(f, str | Path))

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    hostile = tmp_path / "hostile.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": Payload()}, hostile)
    monkeypatch.setattr(torch, "load", real_load)
    with pytest.raises(MetricUnavailable, match="weights_only=True"):
        load_fid_inception(hostile)
    assert not marker.exists()


def test_missing_or_wrong_fid_inception_file_is_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match="weights file not found"):
        load_fid_inception(tmp_path / "nope.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(MetricUnavailable, match="does not hold a state dict of tensors"):
        load_fid_inception(tmp_path / "tensor.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "partial.pth")
    with pytest.raises(MetricUnavailable, match=r"partial\.pth does not match the FID-Inception"):
        load_fid_inception(tmp_path / "partial.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MetricUnavailable, match=r"junk\.safetensors is not a readable safetensors"):
        load_fid_inception(tmp_path / "junk.safetensors")
    # torchvision's ImageNet inception_v3 (1000 classes, auxiliary head) is a different network
    with torch.device("meta"):
        imagenet = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = {key: torch.zeros(v.shape, dtype=v.dtype) for key, v in imagenet.state_dict().items()}
    save_file(state, str(tmp_path / "imagenet.safetensors"))
    with pytest.raises(MetricUnavailable, match="AuxLogits"):
        load_fid_inception(tmp_path / "imagenet.safetensors")


def test_fid_inception_features_equal_torchmetrics_own_extractor(fid_weights):
    # torchmetrics builds its FID network from the same file through torch-fidelity's own loader
    reference = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(fid_weights), antialias=False
    )
    model = load_fid_inception(fid_weights)
    images = _images(3, 3, 16, seed=0)
    with torch.inference_mode():
        expected = reference.inception((images * 255).round().to(torch.uint8))
    got = extract_features(model, images, batch_size=2)
    assert got.shape == (3, 2048) and got.std() > 0.01
    torch.testing.assert_close(
        got, expected.float(), rtol=1e-4, atol=1e-5 * float(expected.abs().max())
    )
    grey = _images(2, 1, 16, seed=1)
    torch.testing.assert_close(
        extract_features(model, grey), extract_features(model, grey.repeat(1, 3, 1, 1))
    )
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 16, 16\)"):
        model.features(torch.rand(1, 2, 16, 16))


def test_fid_inception_end_to_end_zero_on_itself_positive_across_distributions(fid_weights):
    model = load_fid_inception(fid_weights)
    noise = _images(3, 1, 8, seed=2)  # tiny grey images: repeated to RGB and resized inside
    bright = _images(3, 1, 8, seed=3, bright=True)
    real = extract_features(model, noise)
    scale = float(torch.cov(real.double().T).trace())  # FID's trace term, for relative checks
    # measured (1 and 2 threads): same = -2.3e-6 * scale (round-off of the rank-2 covariances in
    # 2048 dimensions), different = 23.5 * scale
    assert abs(fid(model, noise, noise)) < 1e-3 * scale
    assert fid(model, noise, bright) > 1.0 * scale
