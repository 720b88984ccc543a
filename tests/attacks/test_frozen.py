"""Attacks hand the caller's networks back exactly as they got them: every submodule's mode, every
BatchNorm buffer and every ``requires_grad`` flag, also for networks wrapped in the user's modules
with mixed train/eval flags (``attacks/_frozen.eval_mode``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from mibench_lib.attacks import brep_mi_attack, gmi_attack
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.generators.base import Generator
from mibench_lib.oracle import TargetOracle
from mibench_lib.testing import tiny_classifier, tiny_discriminator, tiny_generator


class WrappedGenerator(Generator):
    """A user's module around a generator, with a BatchNorm of its own on the output."""

    def __init__(self) -> None:
        inner = tiny_generator()
        super().__init__(inner.latent_dim, inner.output_shape)
        self.inner = inner
        self.post = nn.BatchNorm2d(1)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.post(self.inner(z)))


class WrappedCritic(nn.Module):
    """A user's module around a critic, with a BatchNorm and a dropout in front."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(1), nn.Dropout(0.1))
        self.inner = tiny_discriminator()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(self.pre(x).clamp(0, 1))


def _mixed(module: nn.Module, eval_names: set[str], *, outer: bool = True) -> nn.Module:
    """Outer mode ``outer``; the named submodules (and their children) in eval, the rest in train."""
    module.train()
    for name, m in module.named_modules():
        if name in eval_names:
            m.eval()
    module.training = outer
    return module


def _state(*modules: nn.Module) -> dict[str, object]:
    """Every submodule's training flag and every parameter's requires_grad flag, by name."""
    state: dict[str, object] = {}
    for k, module in enumerate(modules):
        state.update({f"{k}:{n}:training": m.training for n, m in module.named_modules()})
        state.update(
            {f"{k}:{n}:requires_grad": p.requires_grad for n, p in module.named_parameters()}
        )
    return state


# Patterns of flags a user might leave: BN frozen inside a training wrapper, or a BN adapting
# inside an otherwise frozen (eval) wrapper.
GEN_PATTERNS = {
    "train wrapper, frozen BNs": ({"inner.stem.1", "inner.blocks.0.2"}, True),
    "eval wrapper, adapting BN": ({"inner", "post"}, False),
    "train wrapper, eval inner": ({"inner"}, True),
}
CRITIC_PATTERNS = {
    "train wrapper, frozen BNs": ({"pre.0"}, True),
    "eval wrapper, adapting inner": ({"pre"}, False),
    "train wrapper, eval inner": ({"inner"}, True),
}


def _generator(pattern: str) -> WrappedGenerator:
    gen = WrappedGenerator()
    gen.inner.stem[0].requires_grad_(False)  # a user-frozen layer stays frozen, others trainable
    names, outer = GEN_PATTERNS[pattern]
    return _mixed(gen, names, outer=outer)  # type: ignore[return-value]


def _bn_after_one_forward(module: nn.Module, x: Tensor, buffer_hash) -> str:
    with torch.no_grad():
        module(x)
    return buffer_hash(module)


def test_flags_are_mixed_as_intended():
    gen = _generator("train wrapper, frozen BNs")
    assert gen.training and gen.inner.training and gen.post.training
    assert not gen.inner.stem[1].training and not gen.inner.blocks[0][2].training
    gen = _generator("eval wrapper, adapting BN")
    assert not gen.training and not gen.inner.training and not gen.post.training
    gen = _mixed(WrappedGenerator(), {"inner", "post"}, outer=False)
    gen.inner.stem[1].train()
    assert gen.inner.stem[1].training and not gen.training


@pytest.mark.parametrize("critic_pattern", list(CRITIC_PATTERNS))
@pytest.mark.parametrize("gen_pattern", list(GEN_PATTERNS))
def test_gmi_restores_every_submodule(gen_pattern, critic_pattern, buffer_hash):
    gen = _generator(gen_pattern)
    names, outer = CRITIC_PATTERNS[critic_pattern]
    critic = _mixed(WrappedCritic(), names, outer=outer)
    target = tiny_classifier()
    oracle = TargetOracle(target)
    _mixed(target, {"body.1"}, outer=True)  # the white-box target too: one BN frozen, one training
    twins = copy.deepcopy((gen, critic, target))  # never attacked: the reference
    before, hashes = _state(gen, critic, target), buffer_hash(gen, critic, target)

    gmi_attack(
        oracle,
        torch.tensor([0, 1, 2]),
        generator=gen,
        discriminator=critic,
        steps=3,
        restarts=2,
        rng=torch.Generator().manual_seed(0),
    )

    assert _state(gen, critic, target) == before
    assert buffer_hash(gen, critic, target) == hashes
    assert all(p.grad is None for net in (gen, critic, target) for p in net.parameters())
    # The user's next forward pass updates exactly the statistics it would have without the attack.
    z = torch.randn(16, gen.latent_dim, generator=torch.Generator().manual_seed(1))
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for mine, twin, x in zip((gen, critic, target), twins, (z, images, images)):
        torch.manual_seed(2)  # the same dropout masks
        got = _bn_after_one_forward(mine, x, buffer_hash)
        torch.manual_seed(2)
        assert got == _bn_after_one_forward(twin, x, buffer_hash)


@pytest.mark.parametrize("gen_pattern", list(GEN_PATTERNS))
def test_brep_mi_restores_every_submodule(gen_pattern, buffer_hash):
    gen, target = _generator(gen_pattern), tiny_classifier()
    probe = copy.deepcopy((gen, target))
    with torch.no_grad():  # a label the target gives some generated images: a real start point
        label = probe[1].eval()(probe[0].eval()(torch.zeros(4, 8))).argmax(1)[0].item()
    twin = copy.deepcopy(gen)
    before, hashes = _state(gen, target), buffer_hash(gen, target)

    brep_mi_attack(
        TargetOracle(target, access="label"),
        torch.tensor([label]),
        generator=gen,
        max_iters=3,
        init_batch=32,
        missing_start="random",
        rng=torch.Generator().manual_seed(0),
    )

    assert _state(gen, target) == before
    assert buffer_hash(gen, target) == hashes
    assert all(p.grad is None for p in gen.parameters())
    z = torch.randn(16, gen.latent_dim, generator=torch.Generator().manual_seed(1))
    assert _bn_after_one_forward(gen, z, buffer_hash) == _bn_after_one_forward(twin, z, buffer_hash)


def test_eval_mode_restores_exact_flags_even_on_error():
    gen = _generator("train wrapper, frozen BNs")
    critic = _mixed(WrappedCritic(), {"pre.0"}, outer=True)
    shared = nn.BatchNorm1d(2).train()
    a, b = nn.Sequential(shared, nn.Identity()).eval(), nn.Sequential(shared).train()
    shared.train()
    before = _state(gen, critic, a, b)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(gen, critic, None, a, b):
        assert not any(m.training for net in (gen, critic, a, b) for m in net.modules())
        raise RuntimeError("boom")
    assert _state(gen, critic, a, b) == before
