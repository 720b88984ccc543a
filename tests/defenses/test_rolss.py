from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from mibench_lib.data._types import ImageSet
from mibench_lib.defenses.rolss import (
    SkiplessBlock,
    remove_last_stage_skips,
    remove_skip,
    residual_stages,
    rolss_defense,
)
from mibench_lib.models.irse import BottleneckIR, IRNet64
from mibench_lib.models.resnet import ResNetClassifier
from mibench_lib.models.small_cnn import MnistCNN, MnistResNet
from mibench_lib.models.train import train_classifier
from mibench_lib.testing import tiny_digits


def _resnet18() -> ResNetClassifier:
    torch.manual_seed(0)
    return ResNetClassifier(5, arch="resnet18", input_shape=(3, 32, 32)).eval()


def _count_skipless(model: nn.Module) -> int:
    return sum(isinstance(m, SkiplessBlock) for m in model.modules())


class TestResNet:
    def test_earlier_stages_identical_last_stage_changed(self):
        original = _resnet18()
        defended = rolss_defense().build(copy.deepcopy(original)).eval()
        outputs = {}
        for tag, model in (("orig", original), ("def", defended)):
            model.net.layer3.register_forward_hook(
                lambda m, i, o, tag=tag: outputs.__setitem__(tag, o)
            )
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            y_orig, y_def = original(x), defended(x)
        assert torch.equal(outputs["orig"], outputs["def"])
        assert not torch.allclose(y_orig, y_def)
        # the modified blocks keep the residual branch's weights
        assert torch.equal(
            defended.net.layer4[0].residual[0].weight, original.net.layer4[0].conv1.weight
        )

    def test_blocks_modified_and_projection_removed(self):
        model = _resnet18()
        n_before = sum(p.numel() for p in model.parameters())
        projection = sum(p.numel() for p in model.net.layer4[0].downsample.parameters())
        d = rolss_defense()
        assert d.name == "rolss" and d.knob == "stages" and dict(d.config) == {"stages": 1}
        d.build(model)
        assert _count_skipless(model) == 2
        assert all(isinstance(b, SkiplessBlock) for b in model.net.layer4)
        assert not any("downsample" in k for k in model.state_dict() if k.startswith("net.layer4"))
        assert sum(p.numel() for p in model.parameters()) == n_before - projection
        assert not any(isinstance(b, SkiplessBlock) for b in model.net.layer3)

    def test_resnet50_last_stage_has_three_blocks(self):
        torch.manual_seed(0)
        model = ResNetClassifier(5, arch="resnet50", input_shape=(3, 32, 32))
        assert remove_last_stage_skips(model) == 3 == _count_skipless(model)

    def test_two_stages(self):
        model = _resnet18()
        assert remove_last_stage_skips(model, stages=2) == 4
        assert [len(idx) for _, idx in residual_stages(model)] == [2, 2, 2, 2]
        with torch.no_grad():
            assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


class TestZeroResidualGivesZero:
    """With the last BN of the residual branch zeroed, a block outputs act(S(x)); RoLSS gives 0."""

    @staticmethod
    def _zero(bn: nn.BatchNorm2d) -> None:
        with torch.no_grad():
            bn.weight.zero_()
            bn.bias.zero_()

    def test_basic_block(self):
        block = BasicBlock(8, 8).eval()
        self._zero(block.bn2)
        x = torch.rand(2, 8, 4, 4)
        with torch.no_grad():
            assert torch.equal(block(x), x)  # original: relu(0 + x) = x
            assert torch.equal(remove_skip(block)(x), torch.zeros_like(x))

    def test_bottleneck_with_projection(self):
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        block = Bottleneck(8, 4, stride=2, downsample=down).eval()
        self._zero(block.bn3)
        x = torch.rand(2, 8, 4, 4)
        with torch.no_grad():
            assert block(x).abs().sum() > 0
            assert torch.equal(remove_skip(block)(x), torch.zeros(2, 16, 2, 2))

    def test_ir_unit(self):
        unit = BottleneckIR(8, 8, 2).eval()
        self._zero(unit.res_layer[-1])
        x = torch.randn(2, 8, 4, 4)
        with torch.no_grad():
            assert torch.equal(unit(x), x[:, :, ::2, ::2])  # strided identity shortcut
            assert torch.equal(remove_skip(unit)(x), torch.zeros(2, 8, 2, 2))

    def test_mnist_resnet_block_in_model(self):
        torch.manual_seed(0)
        model = rolss_defense().build(MnistResNet(5, input_shape=(1, 16, 16))).eval()
        block = model.body[3]
        self._zero(block.residual[-1])
        with torch.no_grad():
            assert torch.equal(block(torch.rand(2, 32, 8, 8)), torch.zeros(2, 64, 4, 4))


class TestOtherModels:
    def test_ir50_last_stage(self):
        torch.manual_seed(0)
        model = IRNet64(5, depth=50, input_shape=(3, 16, 16))
        assert remove_last_stage_skips(model) == 3
        assert [type(model.feature.body[i]).__name__ for i in (20, 21, 22, 23)] == [
            "BottleneckIR",
            "SkiplessBlock",
            "SkiplessBlock",
            "SkiplessBlock",
        ]

    def test_mnist_resnet_last_block_only_and_stage_limit(self):
        model = MnistResNet(5, input_shape=(1, 16, 16))
        assert remove_last_stage_skips(model) == 1
        assert [type(m).__name__ for m in model.body[1:4]] == [
            "_BasicBlock",
            "_BasicBlock",
            "SkiplessBlock",
        ]
        with pytest.raises(ValueError, match=r"stages must lie in \[1, 3\] for MnistResNet, got 4"):
            rolss_defense(stages=4).build(MnistResNet(5, input_shape=(1, 16, 16)))

    def test_defended_mnist_resnet_trains_on_digits(self):
        x, y = tiny_digits(16)
        data = ImageSet(x[y < 5][:256], y[y < 5][:256])
        torch.manual_seed(0)
        model, report = train_classifier(
            MnistResNet(5, input_shape=(1, 16, 16), width=8),
            data,
            data,
            epochs=2,
            batch_size=32,
            lr=1e-2,
            defense=rolss_defense(),
            rng=torch.Generator().manual_seed(0),
            progress=False,
        )
        assert isinstance(model.body[3], SkiplessBlock)
        assert all(math.isfinite(v) for v in report.losses) and report.steps == 16
        assert sum(report.losses[-4:]) < sum(report.losses[:4])
        assert report.train_acc > 0.5  # 0.94-1.0 over seeds 0-9 (lr 3e-3 gave 0.28-0.90)


class TestErrors:
    def test_model_without_residual_blocks(self):
        with pytest.raises(ValueError, match="MnistCNN has no residual blocks"):
            rolss_defense().build(MnistCNN(5, input_shape=(1, 16, 16)))

    def test_applied_twice(self):
        model = rolss_defense().build(_resnet18())
        with pytest.raises(ValueError, match="already removed"):
            rolss_defense().build(model)

    @pytest.mark.parametrize("stages", [0, 1.5, True])
    def test_bad_stages(self, stages):
        with pytest.raises(ValueError, match="stages must be an integer >= 1"):
            rolss_defense(stages=stages)

    def test_unsupported_block(self):
        with pytest.raises(ValueError, match="cannot remove the skip connection of a Linear"):
            remove_skip(nn.Linear(2, 2))
