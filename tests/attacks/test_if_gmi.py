"""IF-GMI: initial selection, stage-wise latent and feature search in L1 balls, Poincare loss."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.attacks import if_gmi
from mibench_lib.attacks.if_gmi import (
    OFFICIAL_RADII,
    OFFICIAL_SETTINGS,
    SPEC,
    _crop,
    _draw_crop,
    if_gmi_attack,
    poincare_loss,
    project_l1_ball,
)
from mibench_lib.byo import as_generator
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.testing import tiny_classifier, tiny_generator

LABELS = torch.tensor([0, 1, 2, 3])


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _attack(target: nn.Module, generator: nn.Module, labels: Tensor = LABELS, **kw):
    kw = {"steps": (4, 3, 3), "pool": 16, "samples": 2, "rng": _rng(), **kw}
    oracle = TargetOracle(target)
    return if_gmi_attack(oracle, labels, generator=generator, **kw), oracle


# -- Poincare loss and L1 projection -------------------------------------------------------------
def test_poincare_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 1.0], [0.5, 3.0, -0.5]], dtype=torch.float64)
    xi = 1e-4
    expected = []
    for row, y in ((logits[0].tolist(), 0), (logits[1].tolist(), 2)):
        l1 = sum(abs(a) for a in row)
        u = [a / l1 for a in row]
        v = [max(0.0, (1.0 if k == y else 0.0) - xi) for k in range(3)]
        uu, vv = sum(a * a for a in u), sum(b * b for b in v)
        diff = sum((a - b) ** 2 for a, b in zip(u, v, strict=True))
        expected.append(math.acosh(1 + 2 * diff / ((1 - uu) * (1 - vv))))
    y = torch.tensor([0, 2])
    torch.testing.assert_close(
        poincare_loss(logits, y), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0
    )
    # in float32, as officially, 1 - ||v||^2 = 2e-4 loses digits: a common factor of all rows
    torch.testing.assert_close(
        poincare_loss(logits.float(), y), torch.tensor(expected).float(), rtol=1e-3, atol=0
    )


def test_poincare_loss_ignores_the_logit_scale_and_falls_as_the_label_logit_grows():
    logits = torch.tensor([[1.0, 0.5, -2.0, 0.3]])
    y = torch.tensor([0])
    d = poincare_loss(logits, y)
    for c in (0.1, 7.0):
        torch.testing.assert_close(poincare_loss(c * logits, y), d)
    # cross-entropy does change with the scale: the Poincare loss is not CE in disguise
    assert not torch.allclose(F.cross_entropy(7 * logits, y), F.cross_entropy(logits, y))
    higher = logits.clone()
    higher[0, 0] += 1.0
    assert poincare_loss(higher, y) < d


def _theta_by_bisection(row: Tensor, radius: float) -> float:
    """Independent reference: the soft threshold with sum(max(|x| - theta, 0)) == radius."""
    lo, hi = 0.0, float(row.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((row.abs().double() - mid).clamp_min(0).sum()) > radius:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_l1_projection_lands_on_the_radius_outside_and_changes_nothing_inside():
    x = torch.randn(5, 3, 4, 4, generator=_rng(1)) * 2
    norms = x.flatten(1).abs().sum(1)
    radius = float(norms.median()) * 1.001  # some rows inside, some outside
    p = project_l1_ball(x, radius)
    outside = norms > radius
    assert outside.any() and (~outside).any()
    assert p.shape == x.shape and p.dtype == x.dtype
    assert torch.equal(p[~outside], x[~outside])
    torch.testing.assert_close(
        p[outside].flatten(1).abs().sum(1),
        torch.full((int(outside.sum()),), radius),
        rtol=1e-6,
        atol=0,
    )
    # the Euclidean projection: soft thresholding with the single theta reaching the radius
    for i in outside.nonzero().flatten().tolist():
        theta = _theta_by_bisection(x[i].flatten(), radius)
        ref = x[i].sign() * (x[i].abs() - theta).clamp_min(0)
        torch.testing.assert_close(p[i], ref, rtol=0, atol=1e-5)
    assert torch.equal(project_l1_ball(x, math.inf), x)


# -- the search ----------------------------------------------------------------------------------
def test_the_initial_selection_keeps_the_top_two_view_scores_distinct_and_in_order(
    digits_target, digits_generator
):
    labels = torch.tensor([1, 2, 1])  # a repeated label takes the next best starts
    samples, pool = 3, 20
    res, oracle = _attack(
        digits_target, digits_generator, labels, steps=(0,), pool=pool, samples=samples
    )
    z = torch.randn(pool, 8, generator=_rng())  # the pool is the first draw of rng
    with torch.no_grad():
        x = digits_generator(z)
        scores = (F.softmax(digits_target(x), 1) + F.softmax(digits_target(x.flip(-1)), 1)) / 2
    pick = res.extras["pool_index"].view(samples, len(labels))  # sample-major rows
    for y in (1, 2):
        entries = (labels == y).nonzero().flatten()
        chosen = pick[:, entries].T.flatten()  # entry by entry, best first
        assert chosen.unique().numel() == chosen.numel()
        torch.testing.assert_close(
            scores[chosen, y], scores[:, y].sort(descending=True).values[: len(chosen)]
        )
    torch.testing.assert_close(
        res.extras["initial_score"], scores[res.extras["pool_index"], res.labels]
    )
    # zero steps: the images are the selected starts; the pool cost two views per latent
    torch.testing.assert_close(res.images, x[res.extras["pool_index"]])
    assert res.queries == oracle.queries == 2 * pool
    assert res.labels.tolist() == labels.repeat(samples).tolist()


@pytest.mark.parametrize("steps", [(4, 0), (4, 3, 0)])
def test_each_stage_starts_where_the_previous_one_ended(digits_target, digits_generator, steps):
    """Stage k's feature, run through blocks k-1.., reproduces stage k-1's final image."""
    res, _ = _attack(digits_target, digits_generator, steps=steps, keep_stages=True)
    stages = res.extras["stage_images"]
    assert len(stages) == len(steps)
    torch.testing.assert_close(stages[-1], stages[-2], rtol=0, atol=1e-6)
    if len(steps) == 3:  # and a stage with steps does move its images
        assert (stages[1] - stages[0]).abs().max() > 1e-3


def test_later_stages_move_the_feature_not_the_dcgan_latent(digits_target, digits_generator):
    """The tiny generator's blocks do not read w: from stage 1 on, w gets no gradient."""
    one, _ = _attack(digits_target, digits_generator, steps=(4,))
    three, _ = _attack(digits_target, digits_generator, steps=(4, 3, 3))
    assert torch.equal(one.latents, three.latents)
    assert three.extras["w_l1"][1:] == [0.0, 0.0] and min(three.extras["feature_l1"][1:]) > 0
    assert not torch.allclose(one.images, three.images)


def test_both_tensors_are_projected_after_every_step(digits_target, digits_generator, monkeypatch):
    calls: list[tuple[float, float]] = []
    real = if_gmi.project_l1_ball

    def spy(x: Tensor, radius: float) -> Tensor:
        out = real(x, radius)
        calls.append((float(out.flatten(1).abs().sum(1).max()), radius))
        return out

    monkeypatch.setattr(if_gmi, "project_l1_ball", spy)
    infos: list[dict[str, float]] = []
    steps, r_w, r_f = (12, 5, 5), (0.05, 0.06, 0.07), (math.inf, 0.3, 0.5)
    res, _ = _attack(
        digits_target,
        digits_generator,
        steps=steps,
        radii_w=r_w,
        radii_features=r_f,
        on_step=lambda t, total, info: infos.append(info),
    )
    # w at every step of every stage, the feature at every step of stages >= 1
    assert len(calls) == sum(steps) + sum(steps[1:])
    assert all(norm <= radius * (1 + 1e-6) for norm, radius in calls)
    # the live tensors are the projected ones (up to float32 rounding of start + delta), and
    # the balls did bind (Adam moves each coordinate by about lr per step)
    for info in infos:
        k = int(info["stage"])
        assert info["w_l1"] <= r_w[k] * (1 + 1e-4)
        assert info["feature_l1"] <= r_f[k] * (1 + 1e-4)
    assert res.extras["w_l1"][0] == pytest.approx(r_w[0], rel=1e-4)
    assert res.extras["feature_l1"][1:] == pytest.approx(list(r_f[1:]), rel=1e-4)
    assert [int(i["stage"]) for i in infos] == [0, 0, 1, 2, 2]  # steps 10, 12, 17, 20, 22


def test_every_stage_gets_a_fresh_adam(digits_target, digits_generator, monkeypatch):
    """At each stage's first step Adam's state is empty: every coordinate moves by lr * sign(g)."""
    made: list[torch.optim.Optimizer] = []
    firsts: list[tuple[bool, list[Tensor], list[Tensor], list[Tensor]]] = []

    class SpyAdam(torch.optim.Adam):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            made.append(self)
            self.steps_taken = 0

        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"]]
            if self.steps_taken == 0:
                before = [p.detach().clone() for p in params]
                empty = not self.state
            out = super().step(closure)
            if self.steps_taken == 0:
                grads = [p.grad.clone() for p in params]
                firsts.append((empty, before, grads, [p.detach().clone() for p in params]))
            self.steps_taken += 1
            return out

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    lr, steps = 0.005, (3, 3, 3)
    _attack(digits_target, digits_generator, steps=steps, lr=lr)
    assert len(made) == len(steps) and all(o.steps_taken == 3 for o in made)
    for empty, before, grads, after in firsts:
        assert empty
        for b, g, a in zip(before, grads, after, strict=True):
            # Adam's bias-corrected first step: -lr * g / (|g| + eps)
            torch.testing.assert_close(a - b, -lr * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-7)
    # the feature of stages 1 and 2 moved by lr where its gradient is non-zero
    assert all((f[3][1] - f[1][1]).abs().max() == pytest.approx(lr, rel=1e-3) for f in firsts[1:])


def test_every_query_is_one_random_crop_of_the_current_images(monkeypatch):
    """At 16 px the crops (scale 0.9-1, ratio 1) are 15 or 16 px, resized back, drawn from rng."""
    target = tiny_classifier(input_shape=(1, 16, 16))
    generator = tiny_generator(output_shape=(1, 16, 16))
    seen: list[Tensor] = []
    handle = target.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    try:
        res, _ = _attack(target, generator, LABELS[:2], steps=(1,), pool=6, samples=1)
    finally:
        handle.remove()
    g = _rng()
    z = torch.randn(6, 8, generator=g)
    box = _draw_crop((16, 16), (0.9, 1.0), g)  # the next draw: the first step's crop
    with torch.no_grad():
        expected = _crop(generator(z[res.extras["pool_index"]]), box)
    torch.testing.assert_close(seen[-1], expected)  # the first (only) step's query
    boxes = {_draw_crop((16, 16), (0.9, 1.0), _rng(s)) for s in range(40)}
    assert {b[2] for b in boxes} == {15, 16} and all(b[2] == b[3] for b in boxes)
    assert all(0 <= t <= 16 - h and 0 <= left <= 16 - w for t, left, h, w in boxes)


def test_frozen_networks_keep_buffers_and_get_no_parameter_gradients(buffer_hash):
    target, generator = tiny_classifier(), tiny_generator()
    generator.blocks[0][2].train()  # a mixed-mode generator comes back as it was
    before = buffer_hash(target, generator)
    modes = [m.training for m in (*target.modules(), *generator.modules())]
    _attack(target, generator)
    assert buffer_hash(target, generator) == before
    assert [m.training for m in (*target.modules(), *generator.modules())] == modes
    assert all(p.grad is None for p in (*target.parameters(), *generator.parameters()))


@pytest.mark.parametrize("batch_size", [None, 3])
def test_queries_are_exactly_two_views_of_the_pool_plus_one_per_sample_and_step(
    digits_target, digits_generator, batch_size
):
    steps, pool, samples = (4, 3, 2), 16, 2
    res, oracle = _attack(
        digits_target,
        digits_generator,
        steps=steps,
        pool=pool,
        samples=samples,
        batch_size=batch_size,
    )
    assert res.queries == oracle.queries == 2 * pool + sum(steps) * samples * len(LABELS)
    assert res.images.shape == (samples * len(LABELS), 1, 8, 8)
    assert len(res.losses) == sum(steps) and res.attack == "if_gmi"


def test_chunks_change_memory_not_the_search(digits_target, digits_generator):
    whole, _ = _attack(digits_target, digits_generator)
    chunked, _ = _attack(digits_target, digits_generator, batch_size=3)
    torch.testing.assert_close(chunked.images, whole.images, rtol=0, atol=1e-5)
    assert torch.equal(chunked.extras["pool_index"], whole.extras["pool_index"])


def test_same_seed_same_images_other_seed_other_images(digits_target, digits_generator):
    a, _ = _attack(digits_target, digits_generator, rng=_rng(5))
    b, _ = _attack(digits_target, digits_generator, rng=_rng(5))
    c, _ = _attack(digits_target, digits_generator, rng=_rng(6))
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.allclose(a.images, c.images)


def test_the_attack_beats_random_latents_and_its_last_stage_keeps_up(
    digits_target, digits_generator, label_prob
):
    """Measured on 3 seeds: attack 0.88-1.00 vs random latents 0.16-0.20 (target's p_y)."""
    res, _ = _attack(
        digits_target,
        digits_generator,
        steps=(30, 15, 15),
        pool=64,
        samples=4,
        keep_stages=True,
    )
    z = torch.randn(len(res.labels), 8, generator=_rng(100))
    with torch.no_grad():
        baseline = label_prob(digits_target, digits_generator(z), res.labels).mean()
    stage = [
        float(label_prob(digits_target, im, res.labels).mean()) for im in res.extras["stage_images"]
    ]
    attack = float(label_prob(digits_target, res.images, res.labels).mean())
    assert attack == stage[-1]
    assert attack >= float(baseline) + 0.4  # measured +0.83 with seed 0
    assert stage[-1] >= stage[0] - 0.05  # measured +0.04: the feature stages do not undo stage 0


# -- arguments and networks ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"steps": ()}, "steps"),
        ({"steps": (3, -1)}, "steps"),
        ({"steps": (3, 2, 2, 2)}, "steps"),  # 4 stages; the tiny generator has 2 blocks
        ({"steps": "70"}, "steps"),
        ({"radii_w": (1.0, 2.0)}, "radii_w"),
        ({"radii_features": (1.0, 0.0, 3.0)}, "radii_features"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (1.0, 0.1)}, "betas"),
        ({"crop_scale": (0.9, 0.8)}, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"pool": 3, "samples": 2}, "pool"),  # label 0 twice x 2 samples: 4 distinct starts
        ({"samples": 0}, "samples"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(digits_target, digits_generator, kw, name):
    oracle = TargetOracle(digits_target)
    labels = torch.tensor([0, 0, 1, 2])
    with pytest.raises(ValueError, match=name):
        if_gmi_attack(
            oracle, labels, generator=digits_generator, **{"pool": 16, "samples": 2, **kw}
        )
    assert oracle.queries == 0


def test_bad_labels_and_access_are_refused(digits_target, digits_generator):
    with pytest.raises(ValueError, match="labels"):
        if_gmi_attack(TargetOracle(digits_target), torch.tensor([4]), generator=digits_generator)
    with pytest.raises(AccessDenied, match="white-box"):
        if_gmi_attack(
            TargetOracle(digits_target, access="logits"), LABELS, generator=digits_generator
        )


class _PlainGenerator(nn.Module):
    """Meets the byo contract (latent_dim, images in [0, 1]) but exposes no blocks."""

    latent_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Unflatten(1, (1, 8, 8)), nn.Sigmoid())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def test_a_generator_needs_the_generator_interface_and_enough_blocks(digits_target):
    oracle = TargetOracle(digits_target)
    with pytest.raises(TypeError, match=r"Generator.*as_generator"):
        if_gmi_attack(oracle, LABELS, generator=_PlainGenerator(), steps=(2,), pool=8, samples=1)
    # as_generator: a stem and no block (images already in [0, 1]): stage 0 only
    torch.manual_seed(0)
    flat = as_generator(_PlainGenerator().net, latent_dim=8)
    assert flat.num_blocks == 0
    with pytest.raises(ValueError, match=r"steps has 2 stages.*0 blocks.*steps=\(2,\)"):
        if_gmi_attack(oracle, LABELS, generator=flat, steps=(2, 1), pool=8, samples=1)
    assert oracle.queries == 0
    res = if_gmi_attack(oracle, LABELS, generator=flat, steps=(2,), pool=8, samples=1, rng=_rng())
    assert res.images.shape == (4, 1, 8, 8) and res.queries == 2 * 8 + 2 * 4


def test_spec_quick_run_fits_every_shared_generator():
    assert SPEC.name == "if_gmi" and SPEC.access == "white-box" and SPEC.needs == ("generator",)
    assert len(SPEC.quick["steps"]) == 2  # a BYO tanh generator has one block: two stages


def test_the_defaults_are_the_ffhq_celeba_configuration():
    params = inspect.signature(if_gmi_attack).parameters
    for setting in OFFICIAL_SETTINGS.values():
        assert set(setting) <= set(params)
    defaults = {k: params[k].default for k in OFFICIAL_SETTINGS["ffhq_celeba"]}
    assert defaults == OFFICIAL_SETTINGS["ffhq_celeba"]
    assert params["samples"].default == 50 and tuple(params["betas"].default) == (0.1, 0.1)
    assert params["radii_w"].default == params["radii_features"].default == OFFICIAL_RADII
    assert params["crop_scale"].default == (0.9, 1.0) and params["keep_stages"].default is False
