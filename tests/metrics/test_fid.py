import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torchvision.models import inception_v3

from mibench_lib.metrics import (
    InceptionPool3,
    MetricUnavailable,
    extract_features,
    fid,
    frechet_distance,
    load_inception_pool3,
)


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


class _Recorder(nn.Module):
    """Stands in for Inception3: records what it is fed, returns per-channel means."""

    def forward(self, x: Tensor) -> Tensor:
        self.seen = x
        return x.mean(dim=(2, 3))


def test_inception_preprocessing_resizes_repeats_grey_and_normalises():
    net = _Recorder()
    model = InceptionPool3(net)
    with torch.no_grad():
        model.features(torch.full((2, 1, 8, 8), 0.5))
    assert net.seen.shape == (2, 3, 299, 299)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(net.seen[:, :, 100, 200], expected.expand(2, 3))
    with pytest.raises(ValueError, match="1 or 3 channels, got 2"):
        model.features(torch.rand(1, 2, 8, 8))


def _inception_state(
    *, aux_logits: bool, num_classes: int, rand: bool = False
) -> dict[str, Tensor]:
    with torch.device("meta"):
        net = inception_v3(
            weights=None, aux_logits=aux_logits, init_weights=False, num_classes=num_classes
        )
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.ones(value.shape)
        elif value.is_floating_point():
            state[key] = torch.randn(value.shape) * 0.05 if rand else torch.zeros(value.shape)
        else:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    state["fc.bias"] = torch.arange(num_classes, dtype=torch.float32)  # a recognisable tensor
    return state


@pytest.fixture(scope="module")
def inception_state() -> dict[str, Tensor]:
    return _inception_state(aux_logits=True, num_classes=5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_inception_weights_load_strictly_from_local_files(tmp_path, suffix, inception_state):
    state = inception_state
    path = tmp_path / f"inception{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model = load_inception_pool3(path)
    assert not model.training and isinstance(model.net.fc, nn.Identity)
    assert model.net.AuxLogits is not None and model.net.transform_input
    assert torch.equal(model.net.Conv2d_1a_3x3.bn.running_var, torch.ones(32))


def test_missing_or_wrong_inception_file_is_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match="weights file not found"):
        load_inception_pool3(tmp_path / "nope.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(MetricUnavailable, match="does not hold a state dict"):
        load_inception_pool3(tmp_path / "tensor.pth")
    torch.save({"fc.weight": torch.zeros(2, 2048)}, tmp_path / "partial.pth")
    with pytest.raises(MetricUnavailable, match="does not match torchvision's inception_v3"):
        load_inception_pool3(tmp_path / "partial.pth")


@pytest.mark.slow
def test_inception_pool3_features_and_fid_end_to_end(tmp_path):
    path = tmp_path / "inception.safetensors"
    save_file(_inception_state(aux_logits=False, num_classes=3, rand=True), str(path))
    model = load_inception_pool3(path)
    real, fake = torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8)
    assert extract_features(model, real).shape == (2, 2048)
    value = fid(model, real, fake)
    assert np.isfinite(value) and value >= -1e-6
