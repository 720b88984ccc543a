"""PLG-MI: top-n pseudo-labels, the projection cGAN trained through the target, the z-only search."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mibench_lib.attacks import plg_mi
from mibench_lib.attacks.plg_mi import (
    PLG_CGAN,
    SPEC,
    ConditionalResNetGenerator,
    ProjectionDiscriminator,
    build_plg_cgan,
    make_augmentation,
    max_margin_loss,
    plg_mi_attack,
    top_n_pseudo_labels,
)
from mibench_lib.data._types import ImageSet
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.testing import build_target_prior, tiny_classifier, tiny_digits

LABELS = torch.tensor([0, 1, 2, 3])


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _public_digits() -> torch.Tensor:
    """The odd-indexed digits 0-3: the half the digits target never saw."""
    x, y = tiny_digits()
    return x[y < 4][1::2]


@pytest.fixture(scope="module")
def small_public() -> torch.Tensor:
    return tiny_digits()[0][:64]


@pytest.fixture(scope="module")
def quick_cgan(small_public):
    """The quick build (2 iterations) for a random tiny target: fast, for contract tests."""
    cgan, _ = build_target_prior(PLG_CGAN, tiny_classifier(), small_public)
    return cgan


@pytest.fixture(scope="module")
def digits_cgan(digits_target):
    """A cGAN trained for a few seconds against the digits target on the odd-indexed digits.

    Test-sized: 60 iterations of batch 32 with one discriminator step each and lr 1e-3 (the
    official recipe is 30k x 64 with 5 steps at 2e-4), top-30 pseudo-labels per class.
    """
    cgan, queries = build_target_prior(
        PLG_CGAN,
        digits_target,
        _public_digits(),
        top_n=30,
        iterations=60,
        batch_size=32,
        n_dis=1,
        lr=1e-3,
        latent_dim=16,
        gen_features=8,
        dis_features=8,
    )
    return cgan, queries


# -- stage 1: top-n selection ----------------------------------------------------------------------
def test_top_n_is_per_class_topk_with_overlaps_not_argmax():
    probs = F.softmax(torch.randn(50, 5, generator=_rng(1)) * 2, dim=1)
    index = top_n_pseudo_labels(probs, 12)
    assert index.shape == (5, 12) and index.dtype == torch.int64
    for c in range(5):
        expected = probs[:, c].topk(12).indices
        assert index[c].tolist() == expected.tolist()  # same images, decreasing p_c
    # 60 picks from 50 images: some image serves several classes
    assert index.flatten().unique().numel() < 60
    # an argmax labelling (each image in one class, best p_c first) picks other sets
    pred = probs.argmax(1)
    argmax_sets = [
        set(torch.nonzero(pred == c).flatten()[probs[pred == c, c].argsort(descending=True)][:12])
        for c in range(5)
    ]
    assert any(set(index[c].tolist()) != {int(i) for i in argmax_sets[c]} for c in range(5))


def test_top_n_rejects_bad_n():
    probs = torch.rand(10, 3)
    for n in (0, 11, 2.5):
        with pytest.raises(ValueError, match="n"):
            top_n_pseudo_labels(probs, n)


# -- losses and augmentations ----------------------------------------------------------------------
def test_max_margin_value_shift_invariance_and_two_logit_gradient():
    logits = torch.randn(6, 5, generator=_rng(2))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = max_margin_loss(logits, y)
    others = logits.clone()
    others[torch.arange(6), y] = -float("inf")
    torch.testing.assert_close(loss, others.max(1).values - logits[torch.arange(6), y])
    torch.testing.assert_close(max_margin_loss(logits + 3.7, y), loss)

    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(max_margin_loss(x, y).sum(), x)
    assert ((grad != 0).sum(1) == 2).all()
    assert (grad[torch.arange(6), y] == -1).all()
    (grad_ce,) = torch.autograd.grad(F.cross_entropy(x, y, reduction="sum"), x)
    assert ((grad_ce != 0).sum(1) == 5).all()  # cross-entropy moves every logit


def test_two_augmentation_calls_differ_and_keep_the_size():
    aug = make_augmentation(8)
    x = torch.rand(6, 1, 8, 8, generator=_rng(3))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a, b = aug(x), aug(x)
    assert a.shape == b.shape == x.shape
    assert not torch.equal(a, b)
    assert not torch.equal(a, x)
    kinds = [type(m).__name__ for m in make_augmentation(8, flip=False).children()]
    assert kinds == ["RandomResizedCrop", "ColorJitter", "RandomRotation"]


# -- stage 2: the conditional GAN -------------------------------------------------------------------
def test_projection_discriminator_has_the_projection_form():
    torch.manual_seed(0)
    dis = ProjectionDiscriminator(5, image_shape=(1, 8, 8), num_features=4).eval()
    x = torch.rand(4, 1, 8, 8, generator=_rng(4))
    y, y2 = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 0, 1])
    with torch.no_grad():
        diff = dis(x, y) - dis(x, y2)
        emb = dis.embed.weight  # spectrally normalised
        expected = ((emb[y] - emb[y2]) * dis.features(x)).sum(1)
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=1e-5)
    assert diff.abs().min() > 0


@pytest.mark.parametrize("side", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_networks_follow_the_resolution(side, channels):
    shape = (channels, side, side)
    gen = ConditionalResNetGenerator(3, latent_dim=4, image_shape=shape, num_features=2).eval()
    dis = ProjectionDiscriminator(3, image_shape=shape, num_features=2)
    with torch.no_grad():
        images = gen(torch.randn(2, 4), torch.tensor([0, 2]))
        assert images.shape == (2, *shape) and 0 <= images.min() <= images.max() <= 1
        assert dis(images, torch.tensor([0, 2])).shape == (2,)
    with pytest.raises(ValueError, match="image side"):
        ConditionalResNetGenerator(3, image_shape=(channels, 12, 12))


def test_generator_output_depends_on_the_class_once_trained(digits_cgan):
    gen = digits_cgan[0].generator
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
    z = torch.randn(4, gen.latent_dim, generator=_rng(5))
    with torch.no_grad():
        a, b = gen(z, torch.zeros(4, dtype=torch.long)), gen(z, torch.full((4,), 3))
        # eval mode: an image does not depend on the rest of its batch
        torch.testing.assert_close(gen(z[1:2], torch.zeros(1, dtype=torch.long)), a[1:2])
    assert (a - b).abs().mean() > 1e-3  # measured 0.01 after this short training
    # untrained, the class-conditional gains are 1 and shifts 0: y has no effect yet
    fresh = ConditionalResNetGenerator(4, latent_dim=16, image_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        assert torch.equal(
            fresh(z, torch.zeros(4, dtype=torch.long)), fresh(z, torch.full((4,), 3))
        )


def _build(target, public, **kwargs):
    oracle = TargetOracle(target)
    unlabelled = ImageSet(public, torch.full((len(public),), -1))
    kwargs = {**PLG_CGAN.quick, **kwargs}
    tensors, meta = build_plg_cgan(
        oracle, unlabelled, num_classes=target.num_classes, seed=0, progress=False, **kwargs
    )
    return tensors, meta, oracle.queries


def test_alpha_adds_the_target_margin_to_the_generator_loss(small_public):
    target = tiny_classifier()
    _, meta0, q0 = _build(target, small_public, iterations=1, alpha=0.0)
    _, meta2, q2 = _build(target, small_public, iterations=1, alpha=0.2)
    # same seed, same first generator step: only the alpha term differs
    assert meta0["adv_loss"] == meta2["adv_loss"] and meta0["g_loss"] == meta0["adv_loss"]
    assert meta0["inv_loss"] == [None]
    assert meta2["g_loss"][0] != meta0["g_loss"][0]
    assert meta2["g_loss"][0] == pytest.approx(meta2["adv_loss"][0] + 0.2 * meta2["inv_loss"][0])
    assert q0 == len(small_public) and q2 == len(small_public) + PLG_CGAN.quick["batch_size"]


def test_build_queries_the_target_only_for_labels_and_generator_steps(small_public, buffer_hash):
    target = tiny_classifier()
    before = buffer_hash(target)
    _, meta, queries = _build(target, small_public, iterations=3, n_dis=4, batch_size=8)
    # no query in the 12 discriminator steps
    assert queries == len(small_public) + 3 * 8
    assert buffer_hash(target) == before
    assert all(p.grad is None for p in target.parameters())
    assert meta["unique_images"] <= 4 * meta["top_n"] and 0 < meta["mean_top_prob"] <= 1


def test_build_is_seeded_and_leaves_the_global_rng_alone(small_public):
    target = tiny_classifier()
    state = torch.get_rng_state()
    a, _, _ = _build(target, small_public)
    assert torch.equal(torch.get_rng_state(), state)
    b, _, _ = _build(target, small_public)
    oracle = TargetOracle(target)
    unlabelled = ImageSet(small_public, torch.full((len(small_public),), -1))
    c, _ = build_plg_cgan(oracle, unlabelled, num_classes=4, seed=1, **PLG_CGAN.quick)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_build_rejects_bad_settings(small_public):
    target = tiny_classifier()
    unlabelled = ImageSet(small_public, torch.full((len(small_public),), -1))
    cases = [
        ({"top_n": 65}, "top_n"),
        ({"num_classes": 3}, "num_classes"),
        ({"iterations": -1}, "iterations"),
        ({"alpha": -0.1}, "alpha"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (0.0, 1.0)}, "betas"),
    ]
    for override, name in cases:
        kwargs = {**PLG_CGAN.quick, "num_classes": 4, "seed": 0, **override}
        with pytest.raises(ValueError, match=name):
            build_plg_cgan(TargetOracle(target), unlabelled, **kwargs)
    with pytest.raises(AccessDenied):
        build_plg_cgan(TargetOracle(target, access="logits"), unlabelled, num_classes=4, seed=0)


# -- stage 3: reconstruction -----------------------------------------------------------------------
def test_attack_optimises_only_z_and_queries_views_per_step(quick_cgan, monkeypatch):
    target = tiny_classifier()
    seen = []

    class Recording(torch.optim.Adam):
        def __init__(self, params, **kwargs):
            params = list(params)
            seen.append((params, kwargs))
            super().__init__(params, **kwargs)

    monkeypatch.setattr(plg_mi.torch.optim, "Adam", Recording)
    oracle = TargetOracle(target)
    res = plg_mi_attack(
        oracle,
        torch.tensor([1, 3, 1]),
        plg_cgan=quick_cgan,
        steps=4,
        views=3,
        samples=2,
        lr=0.05,
        rng=_rng(),
    )
    ((params, kwargs),) = seen
    assert len(params) == 1 and params[0].shape == (6, quick_cgan.latent_dim)
    assert kwargs == {"lr": 0.05}
    torch.testing.assert_close(params[0].detach(), res.latents)
    # views images per latent per step, plus one scoring pass
    assert res.queries == oracle.queries == (4 * 3 + 1) * 6
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is None for p in quick_cgan.generator.parameters())


def test_attack_returns_every_sample_with_its_label(quick_cgan):
    target = tiny_classifier()
    res = plg_mi_attack(
        TargetOracle(target),
        torch.tensor([2, 0]),
        plg_cgan=quick_cgan,
        steps=2,
        samples=3,
        rng=_rng(),
    )
    assert res.attack == "plg_mi" and res.images.shape == (6, 1, 8, 8)
    assert res.labels.tolist() == [2, 0] * 3 and res.extras["sample"].tolist() == [0, 0, 1, 1, 2, 2]
    assert len(res.losses) == 2 and res.latents.shape == (6, quick_cgan.latent_dim)
    with torch.no_grad():
        logits = target(res.images)
    prob = F.softmax(logits, 1).gather(1, res.labels[:, None]).squeeze(1)
    torch.testing.assert_close(res.extras["target_prob"], prob)
    torch.testing.assert_close(res.extras["margin"], max_margin_loss(logits, res.labels))
    assert 0 <= res.images.min() <= res.images.max() <= 1


def test_frozen_networks_keep_their_buffers_and_modes(quick_cgan, buffer_hash):
    target = tiny_classifier()
    gen = quick_cgan.generator
    before = buffer_hash(target, gen)
    calls = []
    gen.train()  # handed over in train mode: the search must still not move its statistics
    try:
        plg_mi_attack(
            TargetOracle(target),
            LABELS,
            plg_cgan=quick_cgan,
            steps=3,
            samples=1,
            rng=_rng(),
            on_step=lambda *a: calls.append(a),
        )
        assert gen.training  # its mode is restored
    finally:
        gen.eval()
    assert buffer_hash(target, gen) == before
    assert [c[:2] for c in calls] == [(3, 3)] and isinstance(calls[0][2]["loss"], float)


def test_same_seed_same_result_other_seed_other_result(quick_cgan):
    target = tiny_classifier()
    state = torch.get_rng_state()

    def run(seed):
        return plg_mi_attack(
            TargetOracle(target), LABELS, plg_cgan=quick_cgan, steps=3, samples=1, rng=_rng(seed)
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(torch.get_rng_state(), state)  # kornia's draws ran on a forked RNG
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.equal(a.images, c.images)


def test_batch_size_chunks_keep_shapes_and_queries(quick_cgan):
    oracle = TargetOracle(tiny_classifier())
    res = plg_mi_attack(
        oracle, LABELS, plg_cgan=quick_cgan, steps=2, samples=2, batch_size=3, rng=_rng()
    )
    assert res.images.shape == (8, 1, 8, 8) and res.queries == (2 * 2 + 1) * 8


def test_attack_rejects_bad_arguments_before_any_query(quick_cgan):
    target = tiny_classifier()
    cases = [
        ({"steps": -1}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"views": 0}, "views"),
        ({"samples": 0}, "samples"),
        ({"batch_size": 0}, "batch_size"),
    ]
    for kwargs, name in cases:
        oracle = TargetOracle(target)
        with pytest.raises(ValueError, match=name):
            plg_mi_attack(oracle, LABELS, plg_cgan=quick_cgan, **kwargs)
        assert oracle.queries == 0
    oracle = TargetOracle(target)
    with pytest.raises(ValueError, match="labels"):
        plg_mi_attack(oracle, torch.tensor([4]), plg_cgan=quick_cgan)
    with pytest.raises(TypeError, match="plg_cgan"):
        plg_mi_attack(oracle, LABELS, plg_cgan=object())
    other = plg_mi.PLGGAN(ConditionalResNetGenerator(3, latent_dim=4, image_shape=(1, 8, 8)))
    with pytest.raises(ValueError, match="3 classes"):
        plg_mi_attack(oracle, LABELS, plg_cgan=other)
    wrong_size = plg_mi.PLGGAN(ConditionalResNetGenerator(4, latent_dim=4, image_shape=(1, 16, 16)))
    with pytest.raises(ValueError, match="target's shape"):
        plg_mi_attack(oracle, LABELS, plg_cgan=wrong_size)
    assert oracle.queries == 0
    with pytest.raises(AccessDenied):
        plg_mi_attack(TargetOracle(target, access="logits"), LABELS, plg_cgan=quick_cgan)


def test_spec_declares_the_white_box_prior():
    assert SPEC.name == "plg_mi" and SPEC.access == "white-box"
    assert SPEC.target_priors == (PLG_CGAN,) and SPEC.keywords == ("plg_cgan",)
    assert PLG_CGAN.name == "plg_cgan" and PLG_CGAN.access == "white-box"


def test_attack_beats_random_latents_of_the_same_cgan(digits_cgan, digits_target, label_prob):
    cgan, queries = digits_cgan
    assert queries == len(_public_digits()) + 60 * 32
    res = plg_mi_attack(
        TargetOracle(digits_target), LABELS, plg_cgan=cgan, steps=100, samples=4, rng=_rng()
    )
    labels = LABELS.repeat(4)
    z = torch.randn(16, cgan.latent_dim, generator=_rng(1))
    with torch.no_grad():
        baseline = cgan.generator(z, labels)
    attack_p = label_prob(digits_target, res.images, res.labels).mean()
    base_p = label_prob(digits_target, baseline, labels).mean()
    # measured 0.94 vs 0.40 on one thread: the search, not the cGAN alone, finds the class
    assert attack_p >= base_p + 0.3
    assert res.losses[-1] < res.losses[0]
