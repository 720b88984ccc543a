import pytest
import torch
from torch import Tensor, nn

from mibench_lib.data._types import ImageSet
from mibench_lib.metrics import MetricUnavailable, extract_features, predict_logits
from mibench_lib.testing import tiny_classifier


def test_matches_one_full_batch_whatever_the_batch_size():
    model, x = tiny_classifier(), torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        expected = model.features(x)
    torch.testing.assert_close(extract_features(model, x, batch_size=3), expected)
    torch.testing.assert_close(predict_logits(model, x, batch_size=2), model(x).detach())


def test_uint8_image_set_equals_its_float_images():
    data = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    model = tiny_classifier()
    torch.testing.assert_close(
        extract_features(model, ImageSet(data, torch.zeros(5, dtype=torch.int64)), batch_size=2),
        extract_features(model, data.float() / 255.0),
    )


def test_runs_in_eval_mode_and_restores_training_mode_and_bn_buffers():
    model = tiny_classifier().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 8, 8)
    feats = extract_features(model, x)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(feats, model.features(x))  # eval-mode features, not batch stats


def test_output_is_cpu_float32_without_grad():
    feats = extract_features(tiny_classifier(), torch.rand(2, 1, 8, 8))
    assert feats.device.type == "cpu" and feats.dtype == torch.float32 and not feats.requires_grad


class _Broken(nn.Module):
    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.out = out

    def features(self, x: Tensor) -> Tensor:
        return self.out[: x.shape[0]]


def test_non_finite_features_are_unavailable():
    model = _Broken(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(MetricUnavailable, match="non-finite features for 1 of 2"):
        extract_features(model, torch.rand(2, 1, 8, 8))


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"shape \(3, D\).*got \(3, 2, 2\)"):
        extract_features(_Broken(torch.zeros(3, 2, 2)), torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        extract_features(tiny_classifier(), torch.rand(0, 1, 8, 8))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        extract_features(tiny_classifier(), torch.rand(1, 1, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="must lie in"):
        extract_features(tiny_classifier(), torch.full((1, 1, 8, 8), 2.0))
