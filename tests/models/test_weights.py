"""Local checkpoint loading: formats, wrappers, renames, strictness, refusing pickled objects."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet18

from mibench_lib.models.resnet import ResNetClassifier
from mibench_lib.models.weights import (
    LITERATURE_KEY_MAP,
    load_backbone_weights,
    load_local_weights,
    read_state_dict,
)
from mibench_lib.testing import TinyClassifier


class NotATensor:
    """A picklable custom object: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def tiny(seed: int, num_classes: int = 4) -> TinyClassifier:
    torch.manual_seed(seed)
    model = TinyClassifier(num_classes)
    # Non-default BN statistics, so buffers are checked too.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_safetensors_round_trip(tmp_path):
    src, dst = tiny(0), tiny(1)
    path = tmp_path / "tiny.safetensors"
    save_file(src.state_dict(), path)
    summary = load_local_weights(dst, path)
    assert_same_state(src, dst)
    assert summary["loaded"] == len(src.state_dict()) == 16
    assert summary["missing"] == [] and summary["unexpected"] == [] and summary["skipped"] == []
    assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary["path"] == str(path)


def test_pth_state_dict_round_trip(tmp_path):
    src, dst = tiny(0), tiny(1)
    path = tmp_path / "tiny.pth"
    torch.save(src.state_dict(), path)
    assert load_local_weights(dst, path)["loaded"] == 16
    assert_same_state(src, dst)


def test_container_and_module_prefix_are_unwrapped(tmp_path):
    """The GMI/KEDMI format: {"state_dict": DataParallel state dict} in a .tar, plus extras."""
    src, dst = tiny(0), tiny(1)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "target.tar"
    torch.save({"state_dict": state, "epoch": 12, "best_acc": 0.88}, path)
    assert sorted(read_state_dict(path)) == sorted(src.state_dict())
    load_local_weights(dst, path)
    assert_same_state(src, dst)


def test_key_map_and_prefix(tmp_path):
    src, dst = tiny(0), tiny(1)
    renamed = {
        "backbone." + ("fc_layer." + k[5:] if k.startswith("head.") else k): v
        for k, v in src.state_dict().items()
    }
    path = tmp_path / "renamed.safetensors"
    save_file({**renamed, "other.weight": torch.zeros(3)}, path)
    load_local_weights(dst, path, prefix="backbone.", key_map=LITERATURE_KEY_MAP)
    assert_same_state(src, dst)
    with pytest.raises(ValueError, match=r"prefix 'encoder\.'"):
        load_local_weights(dst, path, prefix="encoder.")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "five.safetensors"
    save_file(tiny(0, num_classes=5).state_dict(), path)
    dst = tiny(1, num_classes=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"'head\.weight': file \(5, 16\) vs model \(4, 16\)"):
        load_local_weights(dst, path)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing loaded


def test_missing_file_says_what_to_do(tmp_path):
    path = tmp_path / "vgg16_celeba.pth"
    with pytest.raises(FileNotFoundError, match=r"vgg16_celeba\.pth.*never downloads"):
        load_local_weights(tiny(0), path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny(0).state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match=r"refused to load .*weights_only=True"):
        load_local_weights(tiny(1), path)


def test_strict_lists_missing_and_unexpected(tmp_path):
    src, dst = tiny(0), tiny(1)
    state = dict(src.state_dict())
    del state["body.0.weight"]
    state["extra.bias"] = torch.zeros(2)
    path = tmp_path / "partial.safetensors"
    save_file(state, path)
    with pytest.raises(
        ValueError, match=r"missing .*'body\.0\.weight'.*unexpected .*'extra\.bias'"
    ):
        load_local_weights(dst, path)
    summary = load_local_weights(dst, path, strict=False)
    assert summary["missing"] == ["body.0.weight"] and summary["unexpected"] == ["extra.bias"]
    assert summary["loaded"] == 15
    assert torch.equal(dst.body[0].bias, src.body[0].bias)
    assert not torch.equal(dst.body[0].weight, src.body[0].weight)


def test_old_checkpoint_without_batch_counters_loads_strictly(tmp_path):
    src, dst = tiny(0), tiny(1)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.safetensors"
    save_file(state, path)
    assert load_local_weights(dst, path)["missing"] == []


def test_unsupported_suffix_and_non_state_dict(tmp_path):
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"suffix '\.npz'"):
        load_local_weights(tiny(0), bad)
    scalar = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), scalar)
    with pytest.raises(ValueError, match="no state dict of tensors found"):
        load_local_weights(tiny(0), scalar)


def test_backbone_load_keeps_the_head(tmp_path):
    src, dst = tiny(0, num_classes=5), tiny(1, num_classes=4)
    head_before = dst.head.weight.clone()
    path = tmp_path / "backbone.safetensors"
    save_file(src.state_dict(), path)
    summary = load_backbone_weights(dst, path)
    assert summary["skipped"] == ["head.bias", "head.weight"] and summary["missing"] == []
    assert summary["loaded"] == 14
    assert torch.equal(dst.head.weight, head_before)
    assert torch.equal(dst.body[0].weight, src.body[0].weight)


def test_torchvision_resnet_file_into_zoo_resnet(tmp_path):
    torch.manual_seed(0)
    imagenet_like = resnet18(weights=None)
    path = tmp_path / "resnet18.safetensors"
    save_file(imagenet_like.state_dict(), path)
    model = ResNetClassifier(7, arch="resnet18")
    summary = load_backbone_weights(model, path, key_map={"": "net.", "fc.": "head."})
    assert summary["skipped"] == ["head.bias", "head.weight"]
    assert summary["missing"] == [] and summary["unexpected"] == []
    assert torch.equal(model.net.layer4[1].conv2.weight, imagenet_like.layer4[1].conv2.weight)
