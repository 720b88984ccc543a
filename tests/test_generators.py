import math

import pytest
import torch

from mibench_lib.data._types import ImageSet
from mibench_lib.generators import DCGANGenerator, WGANCritic, gradient_penalty, train_wgan_gp


@pytest.mark.parametrize(("res", "blocks"), [(16, 2), (32, 3), (64, 4)])
def test_generator_shapes_range_and_blockwise_synthesis(res, blocks):
    g = DCGANGenerator(12, (1, res, res), width=8).eval()
    z = torch.randn(4, 12)
    x = g(z)
    assert x.shape == (4, 1, res, res) and 0 <= x.min() and x.max() <= 1
    assert g.num_blocks == blocks
    h = g.synthesize(g.mapping(z), stop=1)
    torch.testing.assert_close(g.synthesize(z, start=1, features=h), x)


def test_generator_is_batch_independent_in_eval_mode():
    g = DCGANGenerator(12, (1, 16, 16), width=8).eval()
    z = torch.randn(5, 12)
    torch.testing.assert_close(g(z[2:3]), g(z)[2:3])


def test_bad_resolution():
    with pytest.raises(ValueError, match="power of two"):
        DCGANGenerator(8, (1, 24, 24))


def test_gradient_penalty_is_zero_for_unit_gradient_critic():
    class Linear(torch.nn.Module):
        def forward(self, x):  # gradient w.r.t. x has norm exactly 1 everywhere
            return x.flatten(1)[:, 0]

    real, fake = torch.rand(6, 1, 4, 4), torch.rand(6, 1, 4, 4)
    assert float(gradient_penalty(Linear(), real, fake)) == pytest.approx(0.0, abs=1e-10)


def test_wgan_gp_trains_on_public_images_only():
    x = torch.rand(64, 1, 16, 16)
    public = ImageSet(x, torch.full((64,), -1))
    torch.manual_seed(0)
    g, d = DCGANGenerator(8, (1, 16, 16), width=8), WGANCritic((1, 16, 16), width=8)
    before = [p.clone() for p in g.parameters()]
    rep = train_wgan_gp(
        g,
        d,
        public,
        epochs=2,
        batch_size=16,
        n_critic=2,
        progress=False,
        rng=torch.Generator().manual_seed(0),
    )
    assert rep.steps == 4 and len(rep.wasserstein) == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters()))
    assert not g.training and not d.training


# (channels, resolution, width): the digit priors of the resolution study (width 8 at 16-64 px)
# and the face prior of the GPU configuration (width 64 at 64 and 128 px).
PRIORS = [
    (1, 16, 8),
    (1, 32, 8),
    (1, 64, 8),
    (3, 64, 64),
    pytest.param(3, 128, 64, marks=pytest.mark.slow),  # 48M-parameter generator: about 2 s
]


@pytest.mark.parametrize(("channels", "res", "width"), PRIORS)
def test_generator_and_critic_forward_backward_at_resolution(channels, res, width):
    shape = (channels, res, res)
    torch.manual_seed(0)
    g, d = DCGANGenerator(100, shape, width=width).train(), WGANCritic(shape, width=width).train()
    assert g.num_blocks == {16: 2, 32: 3, 64: 4, 128: 5}[res]
    fake = g(torch.randn(2, 100))
    assert fake.shape == (2, *shape) and 0 <= fake.min() and fake.max() <= 1
    real = torch.rand(2, *shape)
    scores = d(fake)
    assert scores.shape == (2,)
    loss = scores.mean() + gradient_penalty(d, real, fake.detach())
    loss.backward()
    for net in (g, d):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("res", [16, 32, 64])
def test_wgan_gp_step_at_digit_resolutions(res):
    public = ImageSet(torch.rand(8, 1, res, res), torch.full((8,), -1))
    torch.manual_seed(0)
    g, d = DCGANGenerator(8, (1, res, res), width=8), WGANCritic((1, res, res), width=8)
    rep = train_wgan_gp(
        g, d, public, epochs=1, batch_size=4, n_critic=2, progress=False,
        rng=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert rep.steps == 1 and all(map(math.isfinite, rep.wasserstein))


@pytest.mark.parametrize("shape", [(1, 32, 16), (1, 24, 24), (1, 4, 4)])
def test_critic_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"square|power of two"):
        WGANCritic(shape)


def test_original_resolution_outputs_unchanged():
    """The 32-px width-8 prior of the default study, pinned before the resolution work."""
    torch.manual_seed(0)
    g = DCGANGenerator(100, (1, 32, 32), width=8).eval()
    d = WGANCritic((1, 32, 32), width=8).eval()
    with torch.no_grad():
        x = g(torch.randn(2, 100, generator=torch.Generator().manual_seed(1)))
        scores = d(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)))
    row = [0.4457037, 0.45468, 0.4651719, 0.4282287, 0.4354575, 0.4396578, 0.442544, 0.4388957]
    torch.testing.assert_close(x[0, 0, 16, 12:20], torch.tensor(row), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.mean(), torch.tensor(0.448027), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, torch.tensor([0.5003988, 0.7122304]), rtol=1e-5, atol=1e-6)
