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
