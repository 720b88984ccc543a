"""mibench_lib.byo: the adapters' arithmetic, the checks' messages, and checks that leave no trace."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mibench_lib.byo import (
    CriticWrapper,
    GeneratorWrapper,
    TargetWrapper,
    as_critic,
    as_generator,
    as_target,
    check_critic,
    check_generator,
    check_target,
)
from mibench_lib.generators import GENERATORS, Generator
from mibench_lib.models import MODELS
from mibench_lib.testing import tiny_classifier, tiny_discriminator, tiny_generator

SHAPE = (3, 4, 4)


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(out: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, out))


class Returns(nn.Module):
    """Returns ``make(x)``, whatever that is, with target attributes."""

    def __init__(self, make, num_classes: int = 2, input_shape=SHAPE) -> None:
        super().__init__()
        self.make, self.num_classes, self.input_shape = make, num_classes, input_shape

    def forward(self, x: Tensor):
        return self.make(x)


# -- zoo models meet the contracts unchanged -----------------------------------------------------
@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_eval", "mnist_resnet"])
def test_zoo_targets_pass(name):
    check_target(MODELS[name](5, input_shape=(1, 32, 32)))


def test_zoo_and_tiny_gans_pass():
    gen_cls, critic_cls = GENERATORS["dcgan"]
    assert check_generator(gen_cls(16, (1, 32, 32)), (1, 32, 32)) == (1, 32, 32)
    check_critic(critic_cls((1, 32, 32)), (1, 32, 32))
    check_target(tiny_classifier())
    assert check_generator(tiny_generator(), (1, 8, 8)) == (1, 8, 8)
    check_critic(tiny_discriminator(), (1, 8, 8))


# -- target ---------------------------------------------------------------------------------------
def test_as_target_maps_pixels_then_normalises():
    net = _linear()
    x = torch.rand(5, *SHAPE, generator=_rng())
    plain = as_target(net, num_classes=2, input_shape=SHAPE)
    assert isinstance(plain, TargetWrapper) and plain.module is net
    assert plain.num_classes == 2 and plain.input_shape == SHAPE
    assert torch.equal(plain(x), net(x))  # the default changes nothing
    tanh = as_target(net, num_classes=2, input_shape=SHAPE, pixel_range=(-1, 1))
    assert torch.equal(tanh(x), net(x * 2 - 1))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normed = as_target(net, num_classes=2, input_shape=SHAPE, mean=mean, std=std)
    ref = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x), net(ref), rtol=0, atol=1e-6)
    bytes_ = as_target(
        net, num_classes=2, input_shape=SHAPE, pixel_range=(0, 255), mean=127.5, std=127.5
    )
    torch.testing.assert_close(bytes_(x), net(x * 2 - 1), rtol=0, atol=1e-5)
    assert list(normed.state_dict()) == ["module.1.weight", "module.1.bias"]


def test_as_target_passes_gradients_through_the_adapter():
    net = _linear()
    x = torch.rand(2, *SHAPE, generator=_rng()).requires_grad_(True)
    as_target(net, num_classes=2, input_shape=SHAPE, pixel_range=(-1, 1))(x)[:, 1].sum().backward()
    torch.testing.assert_close(x.grad[0], 2 * net[1].weight[1].view(SHAPE))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, r"num_classes must be an integer >= 2, got 1"),
        ({"input_shape": (4, 4)}, r"input_shape must be \(C, H, W\).*got \(4, 4\)"),
        ({"pixel_range": (1, -1)}, r"low < high"),
        ({"pixel_range": 1}, r"pair \(low, high\)"),
        ({"mean": 0.5}, "pass mean and std together"),
        ({"mean": (0.5, 0.5), "std": 0.5}, r"one per channel \(3\)"),
        ({"mean": 0.5, "std": 0.0}, "std must be positive"),
    ],
)
def test_as_target_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        as_target(_linear(), **{"num_classes": 2, "input_shape": SHAPE, **kwargs})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda x: x.flatten(1)[:, :3],
            r"to \(N, 2\) logits.*returned shape \(2, 3\).*num_classes=3",
        ),
        (lambda x: x.flatten(1)[:, :1], r"returned shape \(2, 1\).*single logit.*torch\.cat"),
        (lambda x: x.flatten(1)[:, 0], r"returned shape \(2,\)"),
        (lambda x: (x.flatten(1), x.flatten(1)[:, :2]), "returned a tuple, not a Tensor.*logits"),
        (
            lambda x: x.flatten(1)[:, :2].argmax(1, keepdim=True),
            "torch.int64.*not predicted labels",
        ),
        (lambda x: x.flatten(1)[:, :2] / 0, "non-finite logits"),
        (lambda x: x.view(2, 10), r"failed on 2 images of shape \(2, 3, 4, 4\).*input_shape"),
    ],
)
def test_check_target_names_what_is_wrong(make, match):
    with pytest.raises(ValueError, match=match):
        check_target(Returns(make))


def test_check_target_names_missing_attributes():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module, got function"):
        check_target(lambda x: x)
    with pytest.raises(TypeError, match=r"no 'num_classes' attribute.*as_target\(module"):
        check_target(_linear())
    plain = _linear()
    plain.num_classes = 2
    with pytest.raises(TypeError, match=r"no 'input_shape' attribute"):
        check_target(plain)


# -- generator ------------------------------------------------------------------------------------
def _tanh(flat: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 48)] + ([] if flat else [nn.Unflatten(1, SHAPE)]) + [nn.Tanh()]
    return nn.Sequential(*layers)


def test_as_generator_maps_tanh_outputs_to_unit_range():
    net = _tanh()
    gen = as_generator(net, latent_dim=5, pixel_range=(-1, 1))
    assert isinstance(gen, GeneratorWrapper) and isinstance(gen, Generator)
    assert gen.module is net and gen.latent_dim == 5 and gen.output_shape == SHAPE
    z = torch.randn(7, 5, generator=_rng())
    assert torch.equal(gen(z), (net(z) + 1) / 2)
    same = as_generator(nn.Sequential(net, nn.Sigmoid()), latent_dim=5)
    assert same.num_blocks == 0 and torch.equal(same(z), torch.sigmoid(net(z)))


def test_as_generator_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"returned \(2, 48\).*nn\.Unflatten"):
        as_generator(_tanh(flat=True), latent_dim=5, pixel_range=(-1, 1))
    with pytest.raises(ValueError, match=r"failed on latents of shape \(2, 4\).*latent_dim"):
        as_generator(_tanh(), latent_dim=4, pixel_range=(-1, 1))
    with pytest.raises(ValueError, match=r"not \[0, 1\].*tanh.*pixel_range=\(-1, 1\)"):
        as_generator(_tanh(), latent_dim=5)
    with pytest.raises(ValueError, match="latent_dim must be an integer >= 1"):
        as_generator(_tanh(), latent_dim=0)


def test_check_generator_names_what_is_wrong():
    gen = _tanh()
    with pytest.raises(TypeError, match=r"no 'latent_dim' attribute.*as_generator\(module"):
        check_generator(gen)
    gen.latent_dim = 5
    with pytest.raises(
        ValueError, match=r"lie in \[-.*\], not \[0, 1\].*latent_dim=5, pixel_range=\(-1, 1\)"
    ):
        check_generator(gen)
    wild = nn.Sequential(_tanh(), nn.Identity())
    wild[1] = Returns(lambda y: 3 * y)
    wild.latent_dim = 5
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\].*nn\.Sigmoid"):
        check_generator(wild)
    ok = as_generator(_tanh(), latent_dim=5, pixel_range=(-1, 1))
    with pytest.raises(ValueError, match=r"shape \(3, 4, 4\), but the target takes \(1, 4, 4\)"):
        check_generator(ok, image_shape=(1, 4, 4))
    ok.output_shape = (3, 8, 8)
    with pytest.raises(ValueError, match=r"declares output_shape \(3, 8, 8\)"):
        check_generator(ok)


# -- critic ---------------------------------------------------------------------------------------
def test_as_critic_squeezes_and_maps_pixels():
    net = _linear(out=1)
    x = torch.rand(3, *SHAPE, generator=_rng())
    critic = as_critic(net, pixel_range=(-1, 1), image_shape=SHAPE)
    assert isinstance(critic, CriticWrapper) and critic.module is net
    assert torch.equal(critic(x), net(x * 2 - 1).squeeze(1))
    assert as_critic(_linear(out=3))(x).shape == (3, 3)  # not squeezed: the check rejects it


@pytest.mark.parametrize(
    ("critic", "match"),
    [
        (_linear(out=1), r"one score per image.*\(2, 1\).*as_critic\(module\)"),
        (_linear(out=3), r"one score per image.*returned \(2, 3\)$"),
        (as_critic(nn.Sequential(nn.Flatten(), nn.Linear(16, 1))), r"failed on 2 images of shape"),
        (Returns(lambda x: x.flatten(1)[:, 0] / 0), "non-finite scores"),
    ],
)
def test_check_critic_names_what_is_wrong(critic, match):
    with pytest.raises(ValueError, match=match):
        check_critic(critic, SHAPE)


# -- a check leaves no trace ----------------------------------------------------------------------
class Noisy(nn.Module):
    """Draws from the global RNG on every forward; BatchNorm and Dropout left in train mode."""

    num_classes, input_shape = 2, SHAPE

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.head = _linear()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.bn(x))) + torch.randn(x.shape[0], 2)


def test_checks_leave_rng_modes_buffers_and_grads_as_they_were():
    model = Noisy().train()
    model.head.eval()  # mixed flags come back as they were
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    torch.manual_seed(3)
    check_target(model)
    check_critic(nn.Sequential(model, Returns(lambda y: y[:, 0])), SHAPE)
    after_checks = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), after_checks)  # the global RNG did not move
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
