"""Bring your own models: plain ``nn.Sequential`` networks in every attack of the registry.

The target is a plain linear model *defined on pixels in [-1, 1]* (class 1 when the mean pixel is
above 0), behind ``as_target(..., pixel_range=(-1, 1))``; the generator is a tanh MLP behind
``as_generator(..., pixel_range=(-1, 1))``; the critic returns (N, 1) scores on [-1, 1] images
behind ``as_critic``. Every attack in ``SPECS`` runs on them (a new attack only needs a line in
``AttackSpec.quick``), and every attack rejects a broken network before its first query.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mibench_lib.attacks import PUBLIC_NEEDS, SPECS, InversionResult
from mibench_lib.byo import as_critic, as_generator, as_target
from mibench_lib.oracle import TargetOracle
from mibench_lib.testing import attack_needs

IMAGE = (3, 16, 16)
PIXELS = 3 * 16 * 16
LATENT = 6


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_pixel_net() -> nn.Sequential:
    """On pixels in [-1, 1]: logits (-4 m, 4 m), m the mean pixel, so class 1 iff m > 0."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([-torch.ones(PIXELS), torch.ones(PIXELS)]) * 4 / PIXELS)
        net[1].bias.zero_()
    return net


def tanh_generator_net(seed: int = 0) -> nn.Sequential:
    """(N, 6) -> (N, 3, 16, 16) in [-1, 1]: the way many GANs are trained."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(LATENT, 32), nn.ReLU(), nn.Linear(32, PIXELS), nn.Unflatten(1, IMAGE), nn.Tanh()
    )


def column_critic_net(seed: int = 1) -> nn.Sequential:
    """(N, 3, 16, 16) -> (N, 1) scores, as most critics are written."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


@pytest.fixture
def public() -> dict[str, nn.Module]:
    """Every public artifact a study can supply, built from plain modules."""
    return {
        "generator": as_generator(tanh_generator_net(), latent_dim=LATENT, pixel_range=(-1, 1)),
        "discriminator": as_critic(column_critic_net(), pixel_range=(-1, 1), image_shape=IMAGE),
    }


def target() -> nn.Module:
    return as_target(mean_pixel_net(), num_classes=2, input_shape=IMAGE, pixel_range=(-1, 1))


def _run(name: str, oracle: TargetOracle, public: dict[str, nn.Module], **networks: nn.Module):
    spec = SPECS[name]
    images = torch.rand(66, *IMAGE, generator=_rng(3))  # the public images of its priors
    public_labels = torch.arange(64) % 3  # public classes of their own
    needs, _ = attack_needs(
        spec,
        target(),
        images[:64],
        public_labels,
        provided={**public, **networks},
        private=images[64:],
    )
    return spec.run(oracle, torch.tensor([0, 1]), rng=_rng(0), **needs, **spec.quick)


def test_every_public_need_and_attack_has_a_byo_setting(public):
    # masked private images come from the study's data, not from a network
    assert set(PUBLIC_NEEDS) - {"masked_private"} <= set(public), (
        "build the new public artifact from a plain module"
    )
    slow = sorted(name for name, spec in SPECS.items() if not spec.quick)
    assert not slow, f"declare a few-step run (AttackSpec.quick) for {slow}"


def test_the_adapter_feeds_the_target_the_pixels_it_was_defined_on():
    net, wrapped = mean_pixel_net(), target()
    bright, dark = torch.full((1, *IMAGE), 0.6), torch.full((1, *IMAGE), 0.4)
    assert wrapped(bright).argmax(1).item() == 1 and wrapped(dark).argmax(1).item() == 0
    assert net(dark).argmax(1).item() == 1  # without the adapter, [0, 1] pixels are all "bright"
    x = torch.rand(4, *IMAGE, generator=_rng(2))
    assert torch.equal(wrapped(x), net(x * 2 - 1))


@pytest.mark.parametrize("name", list(SPECS))
def test_every_attack_runs_on_plain_sequential_models(name, public):
    spec = SPECS[name]
    oracle = TargetOracle(target(), access=spec.access)
    res = _run(name, oracle, public)
    assert isinstance(res, InversionResult) and res.attack == name
    assert res.labels.tolist() == [0, 1]
    assert res.images.shape == (2, *IMAGE) and res.images.device.type == "cpu"
    assert torch.isfinite(res.images).all()
    assert 0.0 <= float(res.images.min()) <= float(res.images.max()) <= 1.0
    assert res.queries == oracle.queries
    assert (res.queries > 0) == spec.queries_in_attack


# -- a broken network fails before the attack's first query --------------------------------------
def _unwrapped_tanh_generator() -> nn.Module:
    gen = tanh_generator_net()
    gen.latent_dim = LATENT  # the attribute is there; the pixel range is not [0, 1]
    return gen


def _needs(name: str, need: str) -> None:
    if need not in SPECS[name].public_needs:
        pytest.skip(f"{name} takes no {need}")


@pytest.mark.parametrize("name", list(SPECS))
def test_a_tanh_generator_without_adapter_fails_before_any_query(name, public):
    _needs(name, "generator")
    oracle = TargetOracle(target(), access=SPECS[name].access)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*as_generator\(.*pixel_range=\(-1, 1\)\)"):
        _run(name, oracle, public, generator=_unwrapped_tanh_generator())
    assert oracle.queries == 0


@pytest.mark.parametrize("name", list(SPECS))
def test_a_generator_without_latent_dim_fails_before_any_query(name, public):
    _needs(name, "generator")
    oracle = TargetOracle(target(), access=SPECS[name].access)
    with pytest.raises(TypeError, match=r"no 'latent_dim' attribute.*as_generator"):
        _run(name, oracle, public, generator=tanh_generator_net())
    assert oracle.queries == 0


@pytest.mark.parametrize("name", list(SPECS))
def test_a_generator_of_another_resolution_fails_before_any_query(name, public):
    _needs(name, "generator")
    small = nn.Sequential(nn.Linear(LATENT, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8)), nn.Sigmoid())
    oracle = TargetOracle(target(), access=SPECS[name].access)
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\), but the target takes \(3, 16, 16\)"):
        _run(name, oracle, public, generator=as_generator(small, latent_dim=LATENT))
    assert oracle.queries == 0


@pytest.mark.parametrize("name", list(SPECS))
def test_a_critic_with_one_column_fails_before_any_query(name, public):
    _needs(name, "discriminator")
    oracle = TargetOracle(target(), access=SPECS[name].access)
    with pytest.raises(ValueError, match=r"one score per image.*\(2, 1\).*as_critic\(module\)"):
        _run(name, oracle, public, discriminator=column_critic_net())
    assert oracle.queries == 0


class WrongWidth(nn.Module):
    """Declares 3 classes but returns 2 logits: the attributes lie about the network."""

    num_classes, input_shape = 3, IMAGE

    def __init__(self) -> None:
        super().__init__()
        self.net = mean_pixel_net()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.mark.parametrize("name", list(SPECS))
def test_a_white_box_attack_checks_the_target_before_any_query(name, public):
    if SPECS[name].access != "white-box":
        pytest.skip(
            f"{name} is black-box: it cannot run the target outside counted queries (as_target "
            "and check_target check a target before its oracle is built)"
        )
    oracle = TargetOracle(WrongWidth(), access="white-box")
    with pytest.raises(
        ValueError, match=r"\(N, 3\) logits.*returned shape \(2, 2\).*num_classes=2"
    ):
        _run(name, oracle, public)
    assert oracle.queries == 0


def test_a_plain_target_without_attributes_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"no 'num_classes' attribute.*as_target\(module"):
        TargetOracle(mean_pixel_net())
    with pytest.raises(ValueError, match=r"\(N, 3\) logits.*returned shape \(2, 2\)"):
        as_target(mean_pixel_net(), num_classes=3, input_shape=IMAGE)
