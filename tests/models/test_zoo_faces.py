"""Real-data model zoo at 64 px: VGG16_64, IR-152, IR-50, FaceNet64 and torchvision ResNets.

The models are large, so each is built once per module (eval mode, seeded) and sees one forward
pass of a (2, 3, 64, 64) batch; tests then compare cached outputs.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from mibench_lib.models import facenet64, irse, resnet, vgg16
from mibench_lib.models.base import Classifier
from mibench_lib.models.facenet64 import FaceNet64
from mibench_lib.models.irse import IR50_64, IR152_64, IRNet64
from mibench_lib.models.resnet import ResNetClassifier
from mibench_lib.models.vgg16 import VGG16_64

K = 7
ZOO = {**vgg16.ZOO, **irse.ZOO, **facenet64.ZOO, **resnet.ZOO}
FORWARD = ["vgg16_64", "ir152_64", "ir50_64", "facenet64", "resnet18", "resnet50"]
# Parameters without the head: (low, high) bounds around the counts of the literature models.
PARAMS = {
    "vgg16_64": (14.6e6, 14.8e6),  # vgg16_bn conv part 14.72M + BatchNorm1d(2048)
    "ir152_64": (60e6, 64e6),
    "ir50_64": (34e6, 36e6),
    "facenet64": (34e6, 36e6),
    "resnet18": (11.1e6, 11.3e6),
    "resnet50": (23.4e6, 23.6e6),
}
FEATURE_DIM = {
    "vgg16_64": 2048,
    "ir152_64": 512,
    "ir50_64": 512,
    "facenet64": 512,
    "resnet18": 512,
    "resnet50": 2048,
}


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _record_input(store: list[torch.Tensor], _module, inputs, _output) -> None:
    store.append(inputs[0])


@pytest.fixture(scope="module")
def built(batch):
    """name -> (model, input of the head, logits): one construction and one pass each."""
    out = {}
    with torch.no_grad():
        for i, name in enumerate(FORWARD):
            torch.manual_seed(i)
            model = ZOO[name](K, input_shape=(3, 64, 64)).eval()
            seen: list[torch.Tensor] = []
            hook = model.head.register_forward_hook(partial(_record_input, seen))
            logits = model(batch)
            hook.remove()
            out[name] = (model, seen[0], logits)
    return out


@pytest.mark.parametrize("name", FORWARD)
def test_forward_and_feature_shapes(built, name):
    model, feats, logits = built[name]
    assert isinstance(model, Classifier)
    assert model.num_classes == K and model.input_shape == (3, 64, 64)
    assert model.feature_dim == FEATURE_DIM[name]
    assert feats.shape == (2, model.feature_dim) and logits.shape == (2, K)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", FORWARD)
def test_forward_is_head_of_features(built, name):
    model, feats, logits = built[name]
    assert isinstance(model.head, nn.Linear) and model.head.in_features == model.feature_dim
    with torch.no_grad():
        assert torch.equal(logits, model.head(feats))


@pytest.mark.parametrize("name", ["vgg16_64", "resnet18"])
def test_features_method_is_what_forward_uses(built, batch, name):
    model, feats, _ = built[name]
    with torch.no_grad():
        assert torch.equal(model.features(batch), feats)


@pytest.mark.parametrize("name", FORWARD)
def test_parameter_counts(built, name):
    model = built[name][0]
    head = sum(p.numel() for p in model.head.parameters())
    body = sum(p.numel() for p in model.parameters()) - head
    assert head == FEATURE_DIM[name] * K + K
    low, high = PARAMS[name]
    assert low < body < high, f"{name}: {body} parameters without the head"


def test_registry_names_map_to_classes(built):
    assert ZOO["vgg16_64"] is VGG16_64 and ZOO["ir152_64"] is IR152_64
    assert ZOO["ir50_64"] is IR50_64 and ZOO["facenet64"] is FaceNet64
    assert isinstance(built["resnet50"][0], ResNetClassifier)
    assert built["resnet50"][0].arch == "resnet50"
    assert set(resnet.ZOO) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}


def test_vgg16_literature_layout(built):
    model = built["vgg16_64"][0]
    assert len(model.feature) == 44  # 13 x (conv, BN, ReLU) + 5 max-pools
    assert not model.bn.bias.requires_grad and model.bn.weight.requires_grad  # "no shift"
    keys = set(model.state_dict())
    assert {"feature.0.weight", "feature.1.running_var", "bn.weight", "head.weight"} <= keys
    assert not any("mean" == k or "std" == k for k in keys)  # normalisation is not saved


def test_ir_layout_and_stages(built):
    ir152, ir50, fn = (built[n][0] for n in ("ir152_64", "ir50_64", "facenet64"))
    assert [len(r) for r in ir152.stage_ranges] == [3, 8, 36, 3]
    assert [len(r) for r in ir50.stage_ranges] == [3, 4, 14, 3] == [len(r) for r in fn.stage_ranges]
    seq, idx = ir152.last_stage()
    assert seq is ir152.feature.body and idx == range(47, 50)
    first = ir152.feature.body[0]  # 64 -> 64 channels: strided identity shortcut
    assert isinstance(first.shortcut_layer, nn.MaxPool2d) and first.shortcut_layer.stride == 2
    assert isinstance(ir152.feature.body[3].shortcut_layer, nn.Sequential)  # 64 -> 128 projection
    assert ir152.output_layer[3].in_features == 512 * 4 * 4  # 64 px / 2^4 stride-2 stages
    assert {
        "feature.input_layer.0.weight",
        "feature.body.49.res_layer.4.running_mean",
        "output_layer.4.weight",
        "head.bias",
    } <= set(ir152.state_dict())


def test_ir_at_112_px_reads_7x7():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = FaceNet64(K, input_shape=(3, 112, 112))
    assert model.output_layer[3].in_features == 512 * 7 * 7


def test_resnet_last_stage_is_layer4(built):
    for name, blocks in (("resnet18", 2), ("resnet50", 3)):
        model = built[name][0]
        seq, idx = model.last_stage()
        assert seq is model.net.layer4 and len(idx) == blocks
        assert isinstance(model.net.fc, nn.Identity)


def test_normalisation_happens_inside(batch):
    """An ImageNet-normalising model equals a raw one fed pre-normalised images."""
    torch.manual_seed(0)
    inside = resnet.resnet("resnet18", K).eval()
    raw = resnet.resnet("resnet18", K, normalization="none").eval()
    raw.load_state_dict(inside.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(inside(batch), raw((batch - mean) / std), rtol=1e-4, atol=1e-5)


def test_input_gradient_flows(built, batch):
    model = built["resnet18"][0]
    x = batch.clone().requires_grad_(True)
    model(x)[:, 3].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_other_channel_counts():
    with torch.device("meta"):  # shapes only
        vgg = VGG16_64(K, input_shape=(1, 64, 64), normalization="none")
        net = resnet.resnet("resnet18", K, input_shape=(1, 32, 32), normalization="none")
    assert vgg.feature[0].in_channels == 1 and vgg.mean.shape == (1, 1, 1, 1)
    assert net.net.conv1.in_channels == 1


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"at least 32 x 32.*16, 16"):
        VGG16_64(K, input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="'imagenet' needs 3 channels, got 1"):
        VGG16_64(K, input_shape=(1, 64, 64))
    with pytest.raises(ValueError, match="'zscore'"):
        VGG16_64(K, normalization="zscore")
    with pytest.raises(ValueError, match="'resnet20'"):
        resnet.resnet("resnet20", K)
    with pytest.raises(ValueError, match=r"depth must be one of .* got 34"):
        IRNet64(K, depth=34)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        FaceNet64(1)
