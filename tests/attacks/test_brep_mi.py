"""BREP-MI: label-only access, the official iteration rule, query accounting, start points."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib.attacks import brep_mi_attack
from mibench_lib.attacks.brep_mi import _initial_points, _iteration, _sphere
from mibench_lib.models.base import Classifier
from mibench_lib.oracle import TargetOracle
from mibench_lib.testing import tiny_classifier, tiny_generator


class ConstantTarget(Classifier):
    """Predicts ``label`` for every input; records (grad enabled, input requires grad) per call."""

    def __init__(self, label: int = 1, num_classes: int = 2) -> None:
        super().__init__(num_classes, 1, (1, 8, 8))
        self.label = label
        self.calls: list[tuple[bool, bool]] = []

    def features(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], 1)

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((torch.is_grad_enabled(), x.requires_grad))
        bump = F.one_hot(torch.full((x.shape[0],), self.label), self.num_classes)
        return self.head(self.features(x)) + 10.0 * bump


class ScriptedOracle:
    """Duck-typed label oracle: the k-th call answers ``answers[k](batch_size)``."""

    num_classes = 2
    input_shape = (1, 8, 8)
    device = torch.device("cpu")

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.batch_sizes: list[int] = []

    def __call__(self, images: Tensor) -> Tensor:
        self.batch_sizes.append(images.shape[0])
        return self.answers.pop(0)(images.shape[0])


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _all(label: int):
    """Script answer: every queried image gets ``label``."""
    return lambda n: torch.full((n,), label, dtype=torch.long)


@pytest.fixture(scope="module")
def digits_run(digits_target, digits_generator):
    """One label-only run on the trained tiny target, shared by several tests."""
    oracle = TargetOracle(digits_target, access="label")
    labels = torch.tensor([0, 1, 2, 3, 0, 3])
    res = brep_mi_attack(
        oracle,
        labels,
        generator=digits_generator,
        initial_radius=1.0,
        max_stale_iters=20,
        rng=_rng(0),
    )
    return res, oracle


# -- the feature: a label-only attack that beats random latents --------------------------------
def test_beats_random_latents_and_start_points(
    digits_run, digits_target, digits_generator, label_prob
):
    res, _ = digits_run
    with torch.no_grad():
        random_images = digits_generator(torch.randn(6, 8, generator=_rng(1)))
        start_images = digits_generator(res.extras["start_latents"])
    p_attack = label_prob(digits_target, res.images, res.labels)
    p_random = label_prob(digits_target, random_images, res.labels)
    p_start = label_prob(digits_target, start_images, res.labels)
    # every output stays inside its class; random latents hit the label far less often
    assert (digits_target(res.images).argmax(1) == res.labels).all()
    assert (digits_target(random_images).argmax(1) == res.labels).float().mean() < 0.75
    assert p_attack.mean() > p_random.mean() + 0.3
    assert p_attack.mean() > p_start.mean()  # repulsion moves points away from the boundary
    assert (res.extras["radius"] > 1.0).any()


def test_shapes_range_and_latents_in_clamp(digits_run):
    res, _ = digits_run
    assert res.attack == "brep_mi"
    assert res.images.shape == (6, 1, 8, 8) and res.images.device.type == "cpu"
    assert 0.0 <= float(res.images.min()) <= float(res.images.max()) <= 1.0
    assert res.latents.shape == (6, 8) and float(res.latents.abs().max()) <= 1.5
    assert res.labels.tolist() == [0, 1, 2, 3, 0, 3]
    # repeated labels get their own start points
    starts = res.extras["start_latents"]
    assert not torch.equal(starts[0], starts[4]) and not torch.equal(starts[3], starts[5])


def test_queries_count_only_running_entries(digits_run):
    res, oracle = digits_run
    iters = res.extras["iterations"]
    assert len(set(iters.tolist())) > 1  # entries stopped at different times
    assert res.extras["init_queries"] % 256 == 0
    assert res.queries == oracle.queries == res.extras["init_queries"] + 33 * int(iters.sum())
    assert len(res.losses) == int(iters.max())


# -- the official loop, on scripted oracles -------------------------------------------------------
def test_sphere_points_lie_at_radius_uniformly():
    z = torch.randn(3, 100, generator=_rng(0))
    radius = torch.tensor([0.5, 2.0, 7.0])
    points, offsets = _sphere(z, radius, 4096, _rng(1))
    dist = (points - z[:, None, :]).norm(dim=2)
    torch.testing.assert_close(dist, radius[:, None].expand(3, 4096), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(points - z[:, None, :], offsets)
    unit_mean = (offsets / radius[:, None, None]).mean(dim=1).norm(dim=1)
    assert (unit_mean < 0.05).all()


def test_iteration_matches_hand_formula():
    z = torch.tensor([[0.3] * 8, [-0.2] * 8])
    y = torch.tensor([1, 1])
    radius = torch.tensor([2.0, 12.0])
    inside = torch.ones(2, 32, dtype=torch.bool)
    inside[0, ::4] = False  # 24/32 inside: sum of scores 16, no growth
    inside[1, 0] = False  # 31/32 inside: sum 30 > 0.75 * 32, radius grows
    oracle = ScriptedOracle(lambda n: inside.flatten().long(), _all(1))
    z_new, r_new, grew, accepted, outside = _iteration(
        oracle,
        tiny_generator(),
        z,
        y,
        radius,
        sphere_points=32,
        expansion=1.3,
        point_clamp=1.5,
        repulsion_only=True,
        rng=_rng(5),
    )
    assert oracle.batch_sizes == [64, 2]  # N sphere points + 1 acceptance check per entry
    gauss = torch.randn(2, 32, 8, generator=_rng(5))
    offsets = gauss * (radius[:, None, None] / gauss.norm(dim=2, keepdim=True))
    score = inside.float() * 2 - 1
    r_expected = torch.tensor([2.0, 15.6])
    direction = (((score - 1) / 2)[:, :, None] * offsets).mean(dim=1) / r_expected[:, None]
    step = torch.tensor([2.0 / 3.0, 3.0])  # min(R / 3, 3) with the radius before growth
    expected = (z + step[:, None] * direction).clamp(-1.5, 1.5)
    torch.testing.assert_close(z_new, expected)
    torch.testing.assert_close(r_new, r_expected)
    assert grew.tolist() == [False, True] and accepted.tolist() == [True, True]
    torch.testing.assert_close(outside, torch.tensor([0.25, 1 / 32]))


def test_rejected_step_keeps_point():
    z = torch.tensor([[0.3] * 8, [-0.2] * 8])
    y, radius = torch.tensor([1, 1]), torch.tensor([2.0, 2.0])
    kw = {"sphere_points": 32, "expansion": 1.3, "point_clamp": 1.5, "repulsion_only": True}
    # all sphere points inside (radius grows); candidate 0 leaves the class, candidate 1 stays
    oracle = ScriptedOracle(_all(1), lambda n: torch.tensor([0, 1]))
    z_new, r_new, grew, accepted, _ = _iteration(
        oracle, tiny_generator(), z, y, radius, rng=_rng(0), **kw
    )
    assert accepted.tolist() == [False, True] and grew.tolist() == [True, True]
    assert torch.equal(z_new[0], z[0])
    torch.testing.assert_close(r_new, torch.tensor([2.6, 2.6]))
    # with every sphere point outside, repulsion does move an accepted point
    z_moved, *_ = _iteration(
        ScriptedOracle(_all(0), _all(1)), tiny_generator(), z, y, radius, rng=_rng(0), **kw
    )
    assert not torch.equal(z_moved, z)


def test_radius_grows_on_target_that_accepts_everything():
    oracle = TargetOracle(ConstantTarget(label=1), access="label")
    res = brep_mi_attack(
        oracle, torch.tensor([1, 1, 1]), generator=tiny_generator(), max_iters=2, rng=_rng(0)
    )
    torch.testing.assert_close(res.extras["radius"], torch.full((3,), 3.38))
    assert res.extras["iterations"].tolist() == [2, 2, 2]
    assert res.queries == 256 + 2 * 33 * 3 and res.extras["init_queries"] == 256
    # the first three draws of the first batch become the (distinct) start points
    first = torch.randn(256, 8, generator=_rng(0)).clamp(-1.5, 1.5)[:3]
    torch.testing.assert_close(res.extras["start_latents"], first)
    # nothing is outside, so repulsion never moves the point: every snapshot is the start point
    torch.testing.assert_close(res.latents, first)
    assert res.losses == [0.0, 0.0]
    one = brep_mi_attack(
        TargetOracle(ConstantTarget(label=1), access="label"),
        torch.tensor([1]),
        generator=tiny_generator(),
        max_iters=1,
        rng=_rng(0),
    )
    torch.testing.assert_close(one.extras["radius"], torch.tensor([2.6]))


def test_stops_after_stale_iterations(digits_target, digits_generator):
    oracle = TargetOracle(digits_target, access="label")
    res = brep_mi_attack(
        oracle,
        torch.tensor([0, 1, 2, 3]),
        generator=digits_generator,
        initial_radius=1.0,
        max_stale_iters=3,
        rng=_rng(1),
    )
    grew = res.extras["radius"] > 1.0
    # which labels grow is an outcome of the trained fixtures (measured: labels 0 and 2); the
    # rules below must hold whichever they are, as long as both kinds occur
    assert grew.any() and not grew.all()
    iters = res.extras["iterations"]
    assert (iters[~grew] == 3).all() and (iters[grew] > 3).all()
    # an entry whose radius never grew returns its start point, the others a moved snapshot
    same_as_start = (res.latents == res.extras["start_latents"]).all(dim=1)
    assert same_as_start.tolist() == (~grew).tolist()
    assert not (res.latents == res.extras["last_latents"]).all(dim=1).any()


def test_output_is_snapshot_at_last_radius_increase(digits_target, digits_generator):
    def run(max_iters):
        return brep_mi_attack(
            TargetOracle(digits_target, access="label"),
            torch.tensor([0]),
            generator=digits_generator,
            initial_radius=1.0,
            max_stale_iters=3,
            max_iters=max_iters,
            rng=_rng(0),
        )

    full = run(None)
    # the radius is 1.3**g after g increases (measured g = 4); g itself is a trajectory outcome
    growths = round(math.log(full.extras["radius"].item()) / math.log(1.3))
    assert growths >= 1
    assert full.extras["radius"].item() == pytest.approx(1.3**growths, rel=1e-5)
    last_growth = int(full.extras["iterations"]) - 3  # then 3 stale iterations
    upto = run(last_growth)  # same draws, stopped right at the last radius increase
    assert torch.equal(full.latents, upto.extras["last_latents"])
    assert torch.equal(full.latents, upto.latents)
    assert not torch.equal(full.latents, full.extras["last_latents"])


# -- threat model ---------------------------------------------------------------------------------
def test_label_only_oracle_gives_no_gradient_path():
    target = ConstantTarget(label=1)
    oracle = TargetOracle(target, access="label")
    res = brep_mi_attack(
        oracle, torch.tensor([1]), generator=tiny_generator(), max_iters=3, rng=_rng(0)
    )
    assert target.calls and all(call == (False, False) for call in target.calls)
    assert all(p.grad is None for p in target.parameters())
    assert not res.images.requires_grad and not res.latents.requires_grad


def test_probability_oracle_gives_same_result_as_label_oracle(digits_target, digits_generator):
    runs = [
        brep_mi_attack(
            TargetOracle(digits_target, access=access),
            torch.tensor([0, 3]),
            generator=digits_generator,
            max_iters=4,
            rng=_rng(0),
        )
        for access in ("label", "probabilities", "top-k")
    ]
    for other in runs[1:]:
        assert torch.equal(runs[0].images, other.images)
        assert runs[0].queries == other.queries


def test_a_budget_one_query_short_stops_before_the_last_iteration():
    budget = 256 + 3 * 33
    res = brep_mi_attack(
        TargetOracle(ConstantTarget(), access="label", budget=budget),
        torch.tensor([1]),
        generator=tiny_generator(),
        max_iters=3,
        rng=_rng(0),
    )
    assert res.queries == budget and res.extras["stopped_by_budget"] is False
    oracle = TargetOracle(ConstantTarget(), access="label", budget=budget - 1)
    res = brep_mi_attack(
        oracle, torch.tensor([1]), generator=tiny_generator(), max_iters=3, rng=_rng(0)
    )
    assert res.queries == oracle.queries == 256 + 2 * 33
    assert res.extras["stopped_by_budget"] is True and res.extras["iterations"].tolist() == [2]


def test_frozen_networks_unchanged(buffer_hash):
    gen = tiny_generator().train()
    target = tiny_classifier()  # random weights: predicts class 3 on this generator
    before = buffer_hash(gen, target)
    brep_mi_attack(
        TargetOracle(target, access="label"),
        torch.tensor([3]),
        generator=gen,
        max_iters=3,
        rng=_rng(0),
    )
    assert buffer_hash(gen, target) == before
    assert gen.training  # the caller's mode is restored
    assert all(p.grad is None for p in gen.parameters())


# -- determinism and errors -----------------------------------------------------------------------
def test_same_rng_same_images_different_rng_different(digits_target, digits_generator):
    def run(seed: int):
        return brep_mi_attack(
            TargetOracle(digits_target, access="label"),
            torch.tensor([0, 2]),
            generator=digits_generator,
            max_iters=4,
            rng=_rng(seed),
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.images, c.images)


def test_missing_start_point_names_the_labels():
    oracle = TargetOracle(ConstantTarget(label=1, num_classes=3), access="label")
    with pytest.raises(ValueError, match=r"labels \[0, 2\]"):
        brep_mi_attack(
            oracle,
            torch.tensor([0, 1, 2, 0]),
            generator=tiny_generator(),
            max_init_batches=2,
            rng=_rng(0),
        )
    assert oracle.queries == 2 * 256


def test_bad_arguments_raise():
    oracle = TargetOracle(ConstantTarget(), access="label")
    with pytest.raises(ValueError, match="labels"):
        brep_mi_attack(oracle, torch.tensor([2]), generator=tiny_generator())
    with pytest.raises(ValueError, match="expansion"):
        brep_mi_attack(oracle, torch.tensor([1]), generator=tiny_generator(), expansion=1.0)
    assert oracle.queries == 0


def test_missing_start_random_marks_and_skips_unreachable_labels():
    from mibench_lib.oracle import TargetOracle
    from mibench_lib.testing import tiny_generator

    class AlwaysZero(torch.nn.Module):
        num_classes, input_shape = 3, (1, 8, 8)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([5.0, 0.0, 0.0]).expand(x.shape[0], 3) + 0 * self.w

    oracle = TargetOracle(AlwaysZero(), access="label")
    labels = torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        brep_mi_attack(
            oracle,
            labels,
            generator=tiny_generator(),
            init_batch=8,
            max_init_batches=2,
            max_iters=3,
        )
    oracle = TargetOracle(AlwaysZero(), access="label")
    res = brep_mi_attack(
        oracle,
        labels,
        generator=tiny_generator(),
        init_batch=8,
        max_init_batches=2,
        max_iters=3,
        missing_start="random",
        rng=torch.Generator().manual_seed(0),
    )
    assert res.extras["found_start"].tolist() == [True, False]
    assert res.extras["iterations"].tolist() == [3, 0]
    assert res.queries == 2 * 8 + 3 * 33  # both start-point batches, then 3 iterations of label 0


def test_max_radius_stops_unbounded_growth():
    oracle = TargetOracle(ConstantTarget(label=1), access="label")
    res = brep_mi_attack(
        oracle, torch.tensor([1, 1]), generator=tiny_generator(), max_radius=3.0, rng=_rng(0)
    )
    # 2 -> 2.6 -> 3.38 > 3: stops after two iterations although the stale counter never runs out
    assert res.extras["iterations"].tolist() == [2, 2]
    torch.testing.assert_close(res.extras["radius"], torch.full((2,), 3.38))
    with pytest.raises(ValueError, match="max_radius"):
        brep_mi_attack(oracle, torch.tensor([1]), generator=tiny_generator(), max_radius=1.0)


# -- start-point search: more unfilled entries than one batch, thousands of classes ----------------
def test_missing_start_random_gives_each_unfilled_entry_its_own_latent():
    # the target only ever predicts class 1: entries 0 and 3 get hits, the 10 others never do,
    # which is more than one 4-row search batch holds (this crashed with a RuntimeError)
    labels = torch.tensor([1, 0, 2, 1, 3, 4, 5, 6, 7, 8, 9, 10])
    gen = tiny_generator()
    oracle = TargetOracle(ConstantTarget(label=1, num_classes=12), access="label")
    res = brep_mi_attack(
        oracle,
        labels,
        generator=gen,
        init_batch=4,
        max_init_batches=2,
        max_iters=2,
        missing_start="random",
        rng=_rng(0),
    )
    found = labels == 1
    assert res.extras["found_start"].tolist() == found.tolist()
    assert res.images.shape == (12, 1, 8, 8) and res.latents.shape == (12, 8)
    starts = res.extras["start_latents"]
    assert starts.shape == (12, 8) and float(starts.abs().max()) <= 1.5
    # exact by construction: two search batches of 4, then one fresh draw per unfilled entry
    g = _rng(0)
    first = torch.randn(4, 8, generator=g).clamp(-1.5, 1.5)
    torch.randn(4, 8, generator=g)  # the second, fruitless batch
    fresh = torch.randn(10, 8, generator=g).clamp(-1.5, 1.5)
    torch.testing.assert_close(starts[found], first[:2], rtol=0, atol=0)
    torch.testing.assert_close(starts[~found], fresh, rtol=0, atol=0)
    assert torch.unique(starts, dim=0).shape[0] == 12  # every entry has its own latent
    # unfilled entries are never attacked: no iterations, output = their start latent
    assert res.extras["iterations"].tolist() == [2 if f else 0 for f in found.tolist()]
    torch.testing.assert_close(res.latents[~found], fresh, rtol=0, atol=0)
    assert res.queries == 2 * 4 + 2 * 33 * 2


class _ScaleOracle:
    """Label oracle with many classes that answers a fixed script of labels, batch by batch."""

    device = torch.device("cpu")
    input_shape = (1, 8, 8)
    remaining = None  # no query budget

    def __init__(self, num_classes: int, script: Tensor) -> None:
        self.num_classes = num_classes
        self.script = script
        self.offset = 0

    def __call__(self, images: Tensor) -> Tensor:
        out = self.script[self.offset : self.offset + images.shape[0]]
        self.offset += images.shape[0]
        return out


def test_start_point_search_at_scale_matches_reference():
    # 3000 classes, 6000 entries (each class twice, shuffled), batches of 2048 draws: the
    # sort-based join must give the k-th draw labelled c to the k-th open entry with label c
    k, batch, batches = 3000, 2048, 4
    g = _rng(0)
    labels = torch.arange(k).repeat(2)[torch.randperm(2 * k, generator=g)]
    script = torch.randint(0, k, (batch * batches,), generator=g)
    owner = torch.full((2 * k,), -1)  # index of the draw each entry receives
    for b in range(batches):
        open_by_label: dict[int, list[int]] = {}  # entries still open when the batch starts
        for i in (owner < 0).nonzero().flatten().tolist():
            open_by_label.setdefault(int(labels[i]), []).append(i)
        seen: dict[int, int] = {}
        for j in range(batch):
            c = int(script[b * batch + j])
            rank = seen.get(c, 0)
            seen[c] = rank + 1
            if rank < len(open_by_label.get(c, [])):
                owner[open_by_label[c][rank]] = b * batch + j
        if b == 0:
            first_batch_hits = int((owner >= 0).sum())
    found_expected = owner >= 0
    assert 0 < first_batch_hits < int(found_expected.sum()) < 2 * k  # a partial search
    start, found, _ = _initial_points(
        _ScaleOracle(k, script),
        tiny_generator(),
        labels,
        batch=batch,
        max_batches=batches,
        point_clamp=1.5,
        rng=_rng(1),
        missing_start="random",
        chunk=1000,
    )
    draws = torch.randn(batch * batches, 8, generator=_rng(1)).clamp(-1.5, 1.5)
    assert found.tolist() == found_expected.tolist()
    torch.testing.assert_close(start[found], draws[owner[found]], rtol=0, atol=0)
    assert torch.unique(start, dim=0).shape[0] == 2 * k


def test_query_batch_changes_memory_only(digits_target, digits_generator):
    sizes: list[int] = []
    hook = digits_target.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))

    def run(query_batch):
        sizes.clear()
        return brep_mi_attack(
            TargetOracle(digits_target, access="label"),
            torch.tensor([0, 1, 2, 3]),
            generator=digits_generator,
            initial_radius=1.0,
            max_iters=5,
            query_batch=query_batch,
            rng=_rng(0),
        ), list(sizes)

    try:
        whole, whole_sizes = run(None)
        split, split_sizes = run(50)
    finally:
        hook.remove()
    assert max(whole_sizes) == 256 and max(split_sizes) == 50
    assert sum(whole_sizes) == sum(split_sizes) == whole.queries == split.queries
    assert torch.equal(whole.images, split.images) and torch.equal(whole.latents, split.latents)
    with pytest.raises(ValueError, match="query_batch"):
        brep_mi_attack(
            TargetOracle(digits_target, access="label"),
            torch.tensor([0]),
            generator=digits_generator,
            query_batch=0,
        )


def test_default_query_batch_chunks_large_spheres_without_changing_the_result(
    digits_target, digits_generator
):
    # 12 entries x 32 sphere points = 384 images per iteration: the default (256, the measured
    # CPU optimum) splits them into 256 + 128, the queries and the walk stay those of one batch.
    sizes: list[int] = []
    hook = digits_target.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))

    def run(**kwargs):
        sizes.clear()
        return brep_mi_attack(
            TargetOracle(digits_target, access="label"),
            torch.tensor([0, 1, 2, 3]).repeat(3),
            generator=digits_generator,
            initial_radius=1.0,
            max_iters=2,
            rng=_rng(3),
            **kwargs,
        ), list(sizes)

    try:
        default, default_sizes = run()
        whole, whole_sizes = run(query_batch=None)
    finally:
        hook.remove()
    assert 384 in whole_sizes and max(default_sizes) == 256 and 128 in default_sizes
    assert sum(default_sizes) == sum(whole_sizes) == default.queries == whole.queries
    assert torch.equal(default.latents, whole.latents)
    assert torch.equal(default.extras["last_latents"], whole.extras["last_latents"])


# -- start latents ---------------------------------------------------------------------------------
def _found_starts(target, generator, labels, rng):
    """The start points the default search finds, drawing from ``rng`` (left where it stops)."""
    with torch.no_grad():
        start, found, _ = _initial_points(
            TargetOracle(target, access="label"),
            generator,
            labels,
            batch=256,
            max_batches=100,
            point_clamp=1.5,
            rng=rng,
        )
    assert found.all()
    return start


def test_start_latents_replace_the_search_and_cost_one_query_each(digits_target, digits_generator):
    labels = torch.tensor([0, 1, 2, 3, 1])
    start = _found_starts(digits_target, digits_generator, labels, _rng(3))
    kept = start.clone()
    oracle = TargetOracle(digits_target, access="label")
    res = brep_mi_attack(
        oracle, labels, generator=digits_generator, start_latents=start, max_iters=0
    )
    assert torch.equal(res.latents, start) and torch.equal(res.extras["start_latents"], start)
    assert res.queries == oracle.queries == res.extras["init_queries"] == 5  # the label check
    assert res.extras["found_start"].all() and torch.equal(start, kept)
    with torch.no_grad():
        assert torch.equal(res.images, digits_generator(start))


def test_given_starts_continue_exactly_like_the_search(digits_target, digits_generator):
    """Given the points the search finds, and the rng where it leaves it: the same walk."""
    labels = torch.tensor([0, 1, 2, 3])
    kw = dict(generator=digits_generator, initial_radius=1.0, max_iters=6)
    default = brep_mi_attack(TargetOracle(digits_target, access="label"), labels, rng=_rng(0), **kw)
    rng = _rng(0)
    start = _found_starts(digits_target, digits_generator, labels, rng)
    given = brep_mi_attack(
        TargetOracle(digits_target, access="label"), labels, start_latents=start, rng=rng, **kw
    )
    assert torch.equal(given.extras["start_latents"], default.extras["start_latents"])
    assert torch.equal(given.images, default.images)
    assert torch.equal(given.latents, default.latents)
    assert torch.equal(given.extras["last_latents"], default.extras["last_latents"])
    assert torch.equal(given.extras["radius"], default.extras["radius"])
    assert given.losses == default.losses
    assert given.extras["init_queries"] == 4
    walk = default.queries - default.extras["init_queries"]
    assert given.queries - 4 == walk == 33 * int(default.extras["iterations"].sum()) > 0


def test_first_iteration_starts_from_the_given_points(digits_target, digits_generator):
    labels = torch.tensor([2, 0])
    start = _found_starts(digits_target, digits_generator, labels, _rng(8))
    res = brep_mi_attack(
        TargetOracle(digits_target, access="label"),
        labels,
        generator=digits_generator,
        start_latents=start,
        max_iters=1,
        rng=_rng(4),
    )
    with torch.no_grad():
        z, radius, *_ = _iteration(
            TargetOracle(digits_target, access="label"),
            digits_generator,
            start,
            labels,
            torch.full((2,), 2.0),
            sphere_points=32,
            expansion=1.3,
            point_clamp=1.5,
            repulsion_only=True,
            rng=_rng(4),
        )
    assert torch.equal(res.extras["last_latents"], z)
    assert torch.equal(res.extras["radius"], radius)


def test_start_latents_the_target_labels_otherwise_are_named(digits_target, digits_generator):
    labels = torch.tensor([0, 1, 2])
    start = _found_starts(digits_target, digits_generator, labels, _rng(3))
    oracle = TargetOracle(digits_target, access="label")
    swapped = start[[0, 2, 1]]  # entries 1 and 2 now hold each other's points
    with pytest.raises(
        ValueError, match=r"entries \[1, 2\] with labels \[1, 2\] are labelled \[2, 1\]"
    ):
        brep_mi_attack(oracle, labels, generator=digits_generator, start_latents=swapped)
    assert oracle.queries == 3  # only the label check ran


@pytest.mark.parametrize(
    ("start", "match"),
    [
        (torch.zeros(3, 8), r"\(N, latent_dim\) = \(2, 8\).*got \(3, 8\)"),
        (torch.zeros(2, 1, 8), r"got \(2, 1, 8\)"),
        (torch.zeros(2, 8, dtype=torch.float64), "dtype torch.float32.*got torch.float64"),
        (torch.full((2, 8), float("inf")), "finite"),
        (torch.full((2, 8), 2.0), r"\[-1.5, 1.5\].*got values in \[2, 2\].*point_clamp"),
    ],
)
def test_bad_start_latents_raise_before_any_query(start, match):
    oracle = TargetOracle(tiny_classifier(), access="label")
    with pytest.raises(ValueError, match=match):
        brep_mi_attack(
            oracle, torch.tensor([3, 3]), generator=tiny_generator(), start_latents=start
        )
    assert oracle.queries == 0


def test_answers_of_the_wrong_shape_are_reported():
    class ThreeScores(torch.nn.Module):
        """Declares 2 classes but returns 3 logits (out of reach of check_target: black box)."""

        num_classes, input_shape = 2, (1, 8, 8)

        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(1)[:, :3]

    oracle = TargetOracle(ThreeScores(), access="probabilities")
    with pytest.raises(
        ValueError, match=r"neither \(16,\) labels nor \(16, 2\) scores.*check_target"
    ):
        brep_mi_attack(oracle, torch.tensor([1]), generator=tiny_generator(), init_batch=16)


def test_the_oracle_budget_stops_the_search_cleanly():
    gen = tiny_generator()
    target = tiny_classifier()
    common = {"generator": gen, "init_batch": 16, "max_iters": 50, "sphere_points": 8}
    full = brep_mi_attack(
        TargetOracle(target, access="label"),
        torch.tensor([3, 3]),
        rng=torch.Generator().manual_seed(0),
        **common,
    )
    assert full.extras["stopped_by_budget"] is False
    budget = full.extras["init_queries"] + 3 * 2 * 9 + 5  # three iterations and a bit
    oracle = TargetOracle(target, access="label", budget=budget)
    res = brep_mi_attack(
        oracle, torch.tensor([3, 3]), rng=torch.Generator().manual_seed(0), **common
    )
    assert res.extras["stopped_by_budget"] is True and res.queries == oracle.queries <= budget
    assert res.queries == full.extras["init_queries"] + 3 * 2 * 9  # stopped before the 4th
    assert res.extras["iterations"].tolist() == [3, 3]
    # a budget below one start-point batch: nothing queried, every entry a random latent
    tiny = TargetOracle(target, access="label", budget=10)
    res = brep_mi_attack(tiny, torch.tensor([3, 1]), rng=torch.Generator().manual_seed(0), **common)
    assert res.queries == 0 and res.extras["stopped_by_budget"] is True
    assert not res.extras["found_start"].any() and res.images.shape == (2, 1, 8, 8)
