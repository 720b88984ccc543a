from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mibench_lib.data._types import ImageSet
from mibench_lib.defenses.tl_dmi import (
    EvalModeBatchNorm2d,
    count_trainable,
    freeze_front,
    layer_fisher_information,
    parameterised_units,
    tl_dmi_defense,
)
from mibench_lib.models.base import Classifier
from mibench_lib.models.train import train_classifier
from mibench_lib.models.vgg16 import VGG16_64
from mibench_lib.testing import TinyClassifier, tiny_digits

# TinyClassifier units: body.0 conv(1->8) 80, body.1 BN(8) 16, body.4 conv(8->16) 1168,
# body.5 BN(16) 32, head linear(16->K) 17 K.
TINY_UNITS = ["body.0", "body.1", "body.4", "body.5"]


@pytest.fixture(scope="module")
def digit_sets() -> dict[str, ImageSet]:
    x, y = tiny_digits()
    private, public = y < 5, y >= 5
    xp, yp = x[private], y[private]
    return {
        "private_train": ImageSet(xp[:400], yp[:400]),
        "private_test": ImageSet(xp[400:], yp[400:]),
        "public": ImageSet(x[public], y[public] - 5),  # labelled public task: digits 5-9
    }


def _tiny(num_classes: int = 5) -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier(num_classes)


def _defense(digit_sets, **kwargs):
    kwargs.setdefault("pretrain_epochs", 1)
    return tl_dmi_defense(pretrain_data=digit_sets["public"], pretrain_num_classes=5, **kwargs)


def test_parameterised_units_follow_forward_order_not_registration():
    class Swapped(Classifier):
        def __init__(self) -> None:
            super().__init__(3, 4, (1, 2, 2))
            self.late = nn.Linear(4, 4)  # registered first, called second
            self.early = nn.Linear(4, 4)

        def features(self, x):
            return self.late(self.early(x.flatten(1)))

    names = [n for n, _ in parameterised_units(Swapped())]
    assert names == ["early", "late", "head"]
    model = Swapped()
    assert [n for n, _ in parameterised_units(model, model.features)] == ["early", "late"]


def test_units_trace_leaves_modes_and_statistics_alone():
    model = _tiny().train()
    before = copy.deepcopy(model.state_dict())
    assert [n for n, _ in parameterised_units(model)] == [*TINY_UNITS, "head"]
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class TestBuild:
    def test_pretrains_freezes_front_and_replaces_head(self, digit_sets):
        model = _tiny()
        init = copy.deepcopy(model)
        built = _defense(digit_sets).build(model)
        assert built is model and model.num_classes == 5 and model.head.out_features == 5
        # pre-training moved the (now frozen) first conv away from its random init
        assert not torch.equal(model.body[0].weight, init.body[0].weight)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen == {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"}
        assert type(model.body[1]) is EvalModeBatchNorm2d
        assert type(model.body[5]) is nn.BatchNorm2d
        model.train()
        assert not model.body[1].training and model.body[5].training

    def test_frozen_parameters_and_bn_buffers_survive_sgd_fine_tuning(self, digit_sets):
        snapshot = {}

        def build_and_snapshot(defense):
            def build(model):
                model = defense.build(model)
                snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
                return model

            return dataclasses.replace(defense, build=build)

        defense = _defense(digit_sets, pretrain_epochs=4, pretrain_lr=1e-2)
        model, report = train_classifier(
            _tiny(),
            digit_sets["private_train"],
            digit_sets["private_test"],
            epochs=4,
            batch_size=32,
            lr=0.05,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=1e-4,
            defense=build_and_snapshot(defense),
            rng=torch.Generator().manual_seed(0),
            progress=False,
        )
        after = model.state_dict()
        for key in ("body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"):
            assert torch.equal(after[key], snapshot[key]), key
        for key in ("body.1.running_mean", "body.1.running_var", "body.1.num_batches_tracked"):
            assert torch.equal(after[key], snapshot[key]), key
        for key in ("body.4.weight", "body.5.weight", "body.5.running_mean", "head.weight"):
            assert not torch.equal(after[key], snapshot[key]), key
        # theta_C: body.4 (8*16*9 + 16) + body.5 (2*16) + head (16*5 + 5)
        assert report.extra["theta_C"] == 1168 + 32 + 85 == count_trainable(model)
        assert report.test_acc > 0.5  # 0.86-0.94 over seeds 0-9 (2 + 2 epochs: 0.59-0.81)

    def test_named_layers_and_extreme_fractions(self, digit_sets):
        model = _defense(digit_sets, frozen_layers=["body.0", "body.4"], pretrain_epochs=0).build(
            _tiny()
        )
        assert count_trainable(model) == 16 + 32 + 85
        assert type(model.body[1]) is nn.BatchNorm2d
        everything = _defense(digit_sets, frozen_fraction=1.0, pretrain_epochs=0).build(_tiny())
        assert count_trainable(everything) == 85
        nothing = _defense(digit_sets, frozen_fraction=0.0, pretrain_epochs=0).build(_tiny())
        assert count_trainable(nothing) == 80 + 16 + 1168 + 32 + 85

    def test_vgg16_half_freezes_first_conv_keeps_last_conv_trainable(self):
        torch.manual_seed(0)
        model = VGG16_64(5, input_shape=(3, 32, 32))
        names = freeze_front(model, frozen_fraction=0.5)
        # 13 convs + 13 BN2d + the BN1d (27 units): the first 13 are frozen
        assert len(names) == 13 and names[0] == "feature.0"
        assert not model.feature[0].weight.requires_grad
        assert model.feature[40].weight.requires_grad  # last conv
        assert model.head.weight.requires_grad


class TestConfigAndErrors:
    def test_config(self, digit_sets):
        d = _defense(digit_sets, frozen_fraction=0.25)
        assert d.name == "tl_dmi" and d.knob == "frozen_fraction" and d.knob_value == 0.25
        assert len(d.config["pretrain_data"]) == 16
        named = _defense(digit_sets, frozen_layers=["body.0"])
        assert (
            named.config["frozen_layers"] == ["body.0"] and named.config["frozen_fraction"] is None
        )

    def test_constructor_errors(self, digit_sets):
        public = digit_sets["public"]
        with pytest.raises(
            ValueError, match=r"pretrain_data\.labels must lie in \[0, 5\), got \[-1\]"
        ):
            tl_dmi_defense(pretrain_data=public.unlabelled(), pretrain_num_classes=5)
        with pytest.raises(ValueError, match=r"frozen_fraction must lie in \[0, 1\], got 1\.5"):
            _defense(digit_sets, frozen_fraction=1.5)
        with pytest.raises(ValueError, match="pretrain_epochs must be >= 0, got -1"):
            _defense(digit_sets, pretrain_epochs=-1)
        with pytest.raises(ValueError, match="pretrain_lr must be > 0, got 0"):
            _defense(digit_sets, pretrain_lr=0)

    def test_build_errors(self, digit_sets):
        with pytest.raises(ValueError, match=r"no module named 'body\.9'"):
            _defense(digit_sets, frozen_layers=["body.9"], pretrain_epochs=0).build(_tiny())
        with pytest.raises(ValueError, match="'head' is in the head"):
            _defense(digit_sets, frozen_layers=["head"], pretrain_epochs=0).build(_tiny())
        with pytest.raises(ValueError, match=r"pretrain_data images are \(1, 8, 8\)"):
            _defense(digit_sets).build(TinyClassifier(5, input_shape=(1, 16, 16)))
        with pytest.raises(ValueError, match="TL-DMI needs a Classifier, got Linear"):
            _defense(digit_sets).build(nn.Linear(2, 2))


class TestFisher:
    def _data(self, n: int = 4) -> ImageSet:
        x, y = tiny_digits()
        return ImageSet(x[:n], y[:n] % 5)

    def _naive(self, model: nn.Module, data: ImageSet) -> dict[str, torch.Tensor]:
        model.eval()
        squares = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for x, y in zip(data.images, data.labels):
            model.zero_grad()
            F.log_softmax(model(x[None]), dim=1)[0, y].backward()
            for n, p in model.named_parameters():
                squares[n] += p.grad**2
        return {n: s / len(data) for n, s in squares.items()}

    def test_matches_naive_per_sample_loop(self):
        model, data = _tiny(), self._data()
        fisher = layer_fisher_information(model, data, batch_size=3)
        naive = self._naive(model, data)
        assert list(fisher) == [*TINY_UNITS, "head"]
        for layer, value in fisher.items():
            expected = sum(float(v.sum()) for n, v in naive.items() if n.rsplit(".", 1)[0] == layer)
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-9), layer
            assert value > 0
        mean = layer_fisher_information(model, data, reduction="mean")
        assert mean["body.4"] == pytest.approx(fisher["body.4"] / 1168, rel=1e-5)

    def test_constant_output_gives_zero_fisher_below_the_head(self):
        model = _tiny()
        with torch.no_grad():
            model.head.weight.zero_()  # logits = head bias: nothing below the head matters
        fisher = layer_fisher_information(model, self._data())
        assert all(fisher[name] == 0.0 for name in TINY_UNITS)
        assert fisher["head"] > 0

    def test_trainable_only_zeroes_frozen_layers(self):
        model, data = _tiny(), self._data()
        full = layer_fisher_information(model, data)
        freeze_front(model, frozen_fraction=0.5)
        part = layer_fisher_information(model, data, trainable_only=True)
        assert part["body.0"] == 0.0 and part["body.1"] == 0.0
        for name in ("body.4", "body.5", "head"):
            assert part[name] == pytest.approx(full[name], rel=1e-6)

    def test_max_batches_and_errors(self):
        model, data = _tiny(), self._data(8)
        first = layer_fisher_information(model, data, batch_size=4, max_batches=1)
        only = layer_fisher_information(model, self._data(4))
        assert first == pytest.approx(only, rel=1e-6)
        with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
            layer_fisher_information(model, data, batch_size=0)
        with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'max'"):
            layer_fisher_information(model, data, reduction="max")
        bad = ImageSet(data.images, torch.full((8,), 7))
        with pytest.raises(ValueError, match=r"data\.labels must lie in \[0, 5\), got \[7\]"):
            layer_fisher_information(model, bad)
