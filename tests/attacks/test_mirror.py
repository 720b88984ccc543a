"""Mirror (black-box): p space and its box, the genetic operators, stopping, queries, budgets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.attacks.mirror import (
    _Box,
    _crossover_weight,
    _initial_population,
    _mutate,
    _offspring,
    _pool_blocks,
    _to_p,
    _to_w,
    _top_k_merge,
    mirror_attack,
)
from mibench_lib.models.base import Classifier
from mibench_lib.oracle import TargetOracle
from mibench_lib.testing import TinyClassifier, tiny_digits


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class StyleDouble(nn.Module):
    """A style-generator interface around a plain decoder: ``mapping(z) = LeakyReLU(0.2)(z)``.

    So ``p = z`` exactly, and ``synthesize_w(w) = decoder(p(w))``: the decoder sees its own
    latent space. ``w_avg`` is the exact mean of LeakyReLU(0.2) of a standard normal.
    """

    mapping_slope = 0.2
    num_ws = 1

    def __init__(self, decoder: nn.Module, dim: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.z_dim = self.w_dim = dim
        self.register_buffer("w_avg", torch.full((dim,), 0.8 / math.sqrt(2 * math.pi)))

    def mapping(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        w = F.leaky_relu(z, self.mapping_slope)
        return self.w_avg + truncation_psi * (w - self.w_avg)

    def synthesize_w(self, w: Tensor) -> Tensor:
        return self.decoder(torch.where(w < 0, w / self.mapping_slope, w))

    def forward(self, z: Tensor) -> Tensor:
        return self.synthesize_w(self.mapping(z))


class PixelDecoder(nn.Module):
    """64-d p -> sigmoid(p) as an 8x8 image: the toy generator of the known-fitness tests."""

    def forward(self, p: Tensor) -> Tensor:
        return torch.sigmoid(p).view(-1, 1, 8, 8)


class ToyTarget(Classifier):
    """Fixed linear logits of the pixels; records (grad enabled, input requires grad) per call.

    With ``script``, the logits are instead ``script(call_index, batch)`` (call 0 is the first).
    """

    def __init__(self, num_classes: int = 3, script=None) -> None:
        super().__init__(num_classes, 64, (1, 8, 8))
        g = _rng(7)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(num_classes, 64, generator=g) * 0.5)
            self.head.bias.zero_()
        self.script = script
        self.calls: list[tuple[bool, bool]] = []
        self.batch_sizes: list[int] = []

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((torch.is_grad_enabled(), x.requires_grad))
        self.batch_sizes.append(x.shape[0])
        if self.script is not None:
            return self.script(len(self.calls) - 1, x.shape[0])
        return super().forward(x)


def _toy_style() -> StyleDouble:
    return StyleDouble(PixelDecoder(), 64).eval()


def _known_fitness(target: ToyTarget, gen: StyleDouble, w: Tensor, y: int) -> Tensor:
    with torch.no_grad():
        return F.log_softmax(Classifier.forward(target, gen.synthesize_w(w)), dim=1)[:, y]


# -- p space and the box ------------------------------------------------------------------------
def test_w_to_p_to_w_round_trip_is_exact():
    w = torch.randn(1_000_000, generator=_rng(0)) * 3
    p = _to_p(w, 0.2)
    assert torch.equal(_to_w(p, 0.2, w.dtype), w)
    torch.testing.assert_close(p.float(), F.leaky_relu(w, 5.0))
    assert torch.equal(_to_w(_to_p(w, 0.3), 0.3, w.dtype), w)


def test_box_is_mean_plus_minus_population_std_in_p():
    w = F.leaky_relu(torch.randn(5000, 8, generator=_rng(1)) * 2 + 1, 0.2)
    box = _Box(8, 0.2, torch.device("cpu"))
    for part in w.split(1000):  # accumulated block by block
        box.add(part)
    w_min, w_max, std = box.close(1.5, torch.float32)
    p = F.leaky_relu(w.double(), 5.0)
    torch.testing.assert_close(std, p.std(0, unbiased=False))
    torch.testing.assert_close(w_min.double(), F.leaky_relu(p.mean(0) - 1.5 * std, 0.2))
    torch.testing.assert_close(w_max.double(), F.leaky_relu(p.mean(0) + 1.5 * std, 0.2))


# -- the genetic operators ----------------------------------------------------------------------
def test_mutation_fraction_and_size():
    children = F.leaky_relu(torch.randn(1, 1000, 512, generator=_rng(2)), 0.2)
    p_std = torch.rand(512, generator=_rng(3), dtype=torch.float64) + 0.5
    kw = {"slope": 0.2, "mutation_prob": 0.1, "mutation_ce": 0.1}
    mutated = _mutate(children, p_std, shared_noise=False, rng=_rng(4), **kw)
    delta = _to_p(mutated, 0.2) - _to_p(children, 0.2)
    changed = delta != 0
    assert abs(changed.double().mean().item() - 0.1) < 0.01
    assert (delta.abs() <= 0.1 * p_std * (1 + 1e-6)).all()  # before any clipping
    # the noise fills its range and is drawn per child
    assert (delta.abs().amax(dim=(0, 1)) > 0.09 * p_std).float().mean() > 0.9
    per_child = delta[0, :, 0][changed[0, :, 0]]
    assert per_child.unique().numel() == per_child.numel()
    # the official quirk: one noise vector per generation, shared by every child
    shared = _mutate(children, p_std, shared_noise=True, rng=_rng(4), **kw)
    d = _to_p(shared, 0.2) - _to_p(children, 0.2)
    col = d[0, :, 0][d[0, :, 0] != 0]
    torch.testing.assert_close(col, col[:1].expand_as(col), rtol=1e-5, atol=1e-6)


def test_crossover_weight_official_favours_the_worse_parent():
    f1, f2 = torch.tensor([-0.1, -2.0, 0.0]), torch.tensor([-2.0, -0.1, 0.0])
    fixed = _crossover_weight(f1, f2, official=False)
    official = _crossover_weight(f1, f2, official=True)
    p1, p2 = f1.double().exp(), f2.double().exp()
    torch.testing.assert_close(fixed, p1 / (p1 + p2))
    torch.testing.assert_close(official, torch.tensor([0.1 / 2.1, 2.0 / 2.1, 0.5]).double())


@pytest.mark.parametrize("official", [False, True])
def test_offspring_selection_and_crossover_statistics(official):
    # two members per entry, the better all ones, the worse all zeros; 4,000 entries at once
    a, d = 4000, 32
    pop = torch.stack([torch.ones(a, d), torch.zeros(a, d)], dim=1)
    fit = torch.tensor([-0.1, -2.0]).expand(a, 2).clone()
    wide = (torch.full((d,), -1e9), torch.full((d,), 1e9), torch.ones(d, dtype=torch.float64))
    children = _offspring(
        pop,
        fit,
        elites=1,
        box=wide,
        slope=0.2,
        mutation_prob=0.0,
        mutation_ce=0.1,
        official_crossover=official,
        shared_noise=False,
        rng=_rng(5),
    )
    assert children.shape == (a, 1, d)
    w_good = math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.0))  # parent weights ∝ p_y
    q = 0.1 / 2.1 if official else w_good  # parent 1 better: p1 / (p1 + p2) = w_good
    # ones = both parents good + one good parent that passes on its coordinate
    expected = w_good**2 + 2 * w_good * (1 - w_good) * q
    assert abs(children.mean().item() - expected) < 0.01


def test_clipped_children_lie_inside_the_box():
    pool = F.leaky_relu(torch.randn(2000, 16, generator=_rng(6)), 0.2)
    box = _Box(16, 0.2, torch.device("cpu"))
    box.add(pool)
    w_min, w_max, std = box.close(1.0, torch.float32)
    pop = pool[:300].view(3, 100, 16)  # parents partly outside the box
    assert ((pop < w_min) | (pop > w_max)).any()
    children = _offspring(
        pop,
        torch.randn(3, 100, generator=_rng(7)),
        elites=1,
        box=(w_min, w_max, std),
        slope=0.2,
        mutation_prob=0.5,
        mutation_ce=3.0,
        official_crossover=False,
        shared_noise=False,
        rng=_rng(8),
    )
    assert children.shape == (3, 99, 16)
    assert ((children >= w_min) & (children <= w_max)).all()
    assert (children == w_min).any() and (children == w_max).any()


def test_population_is_the_k_best_pool_latents():
    gen, target = _toy_style(), ToyTarget()
    classes = torch.tensor([0, 2])
    blocks = list(_pool_blocks(gen, 2500, 0.7, torch.device("cpu"), _rng(9)))
    assert [b.shape[0] for b in blocks] == [1000, 1000, 500]

    def score(w: Tensor) -> Tensor:
        return torch.stack([_known_fitness(target, gen, w, int(c)) for c in classes], dim=1)

    box = _Box(64, 0.2, torch.device("cpu"))
    pop, fit = _initial_population(iter(blocks), score, classes, 40, box)
    pool = torch.cat(blocks)
    assert box.count == 2500
    for u, c in enumerate(classes.tolist()):
        top, idx = _known_fitness(target, gen, pool, c).topk(40)
        torch.testing.assert_close(fit[u], top)
        assert torch.equal(pop[u], pool[idx])
    best, idx = _top_k_merge(
        torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.long), torch.tensor([[3.0, 1.0]]), 5, 4
    )  # fewer than k so far
    assert idx.tolist() == [[5, 6]] and best.tolist() == [[3.0, 1.0]]
    # ties (a label release scores every pool image 0 or log 1e-30) go to the earlier latent
    tied = torch.tensor([[0.0, -69.0, 0.0, 0.0]])
    best, idx = _top_k_merge(best[:, :0], idx[:, :0], tied, 0, 2)
    best, idx = _top_k_merge(best, idx, tied, 4, 3)
    assert idx.tolist() == [[0, 2, 4]]


# -- the search on a known fitness --------------------------------------------------------------
def test_pool_top1_is_the_output_without_generations():
    gen, target = _toy_style(), ToyTarget()
    oracle = TargetOracle(target, access="probabilities")
    res = mirror_attack(
        oracle,
        torch.tensor([1, 0]),
        style_generator=gen,
        population=10,
        pool_size=1500,
        generations=0,
        rng=_rng(10),
    )
    pool = torch.cat(list(_pool_blocks(gen, 1500, 0.7, torch.device("cpu"), _rng(10))))
    for i, c in enumerate([1, 0]):
        f = _known_fitness(target, gen, pool, c)
        assert torch.equal(res.latents[i], pool[f.argmax()])
        torch.testing.assert_close(res.extras["fitness"][i], f.max())
    assert res.queries == 1500 and res.extras["generations"].tolist() == [0, 0]


def test_elite_fitness_never_decreases():
    gen, target = _toy_style(), ToyTarget()
    oracle = TargetOracle(target, access="probabilities")
    steps = []
    res = mirror_attack(
        oracle,
        torch.tensor([0, 1, 2]),
        style_generator=gen,
        population=20,
        pool_size=60,
        generations=15,
        stop_confidence=None,
        rng=_rng(11),
        on_step=lambda s, t, info: steps.append((s, t, info)),
    )
    assert len(res.losses) == 16 and [s for s, _, _ in steps] == list(range(1, 17))
    assert all(t == 16 for _, t, _ in steps)
    assert all(b <= a for a, b in zip(res.losses, res.losses[1:]))
    assert res.losses[-1] < res.losses[0] - 0.1  # the search does improve on the pool
    assert (res.extras["fitness"] >= res.extras["initial_fitness"]).all()
    # the reported fitness is the target's on the returned latents
    for i in range(3):
        torch.testing.assert_close(
            res.extras["fitness"][i], _known_fitness(target, gen, res.latents[i : i + 1], i)[0]
        )


def _confident_at(call: int, label: int = 0, num_classes: int = 2):
    """Script: uniform logits, except that at ``call`` every row is confident of ``label``."""

    def script(k: int, n: int) -> Tensor:
        logits = torch.zeros(n, num_classes)
        if k == call:
            logits[:, label] = 10.0
        return logits

    return script


def test_stops_when_the_elite_reaches_the_stop_confidence():
    target = ToyTarget(2, script=_confident_at(3))  # call 0 = pool, call g = generation g
    oracle = TargetOracle(target, access="probabilities")
    res = mirror_attack(
        oracle,
        torch.tensor([0]),
        style_generator=_toy_style(),
        population=8,
        pool_size=50,
        generations=10,
        query_batch=None,
        rng=_rng(12),
    )
    assert res.extras["generations"].tolist() == [3] and res.extras["reached"].tolist() == [True]
    assert res.queries == 50 + 3 * 7 and len(res.losses) == 4
    assert res.extras["confidence"][0] > 0.95
    # an elite confident from the pool on never queries again
    oracle = TargetOracle(ToyTarget(2, script=_confident_at(0)), access="probabilities")
    res = mirror_attack(
        oracle,
        torch.tensor([0]),
        style_generator=_toy_style(),
        population=8,
        pool_size=50,
        rng=_rng(12),
    )
    assert res.queries == 50 and res.extras["generations"].tolist() == [0]


def test_exact_queries_entries_stop_separately_one_call_per_generation():
    target = ToyTarget(2, script=_confident_at(2, label=0))
    oracle = TargetOracle(target, access="probabilities")
    res = mirror_attack(
        oracle,
        torch.tensor([0, 1, 1]),
        style_generator=_toy_style(),
        population=6,
        pool_size=30,
        generations=4,
        query_batch=None,
        rng=_rng(13),
    )
    gens = res.extras["generations"]
    assert gens.tolist() == [2, 4, 4]
    assert res.queries == oracle.queries == 30 + (6 - 1) * int(gens.sum())
    assert res.extras["pool_queries"] == 30  # one pool for all entries
    assert target.batch_sizes == [30, 15, 15, 10, 10]  # finished entries are not queried


def test_budget_stops_cleanly():
    gen = _toy_style()
    kw = {
        "style_generator": gen,
        "population": 10,
        "pool_size": 40,
        "generations": 20,
        "stop_confidence": None,
    }
    labels = torch.tensor([0, 1])
    oracle = TargetOracle(ToyTarget(), access="probabilities", budget=40 + 2 * 18 + 10)
    res = mirror_attack(oracle, labels, rng=_rng(14), **kw)
    assert res.extras["stopped_by_budget"] is True
    assert res.queries == oracle.queries == 40 + 2 * 18 <= 86
    assert res.extras["generations"].tolist() == [2, 2] and res.images.shape == (2, 1, 8, 8)
    # a pool the budget cannot pay: truncated, then returned
    oracle = TargetOracle(ToyTarget(), access="probabilities", budget=25)
    res = mirror_attack(oracle, labels, rng=_rng(14), **kw)
    assert res.queries == 25 and res.extras["stopped_by_budget"] is True
    assert res.extras["pool_queries"] == 25 and res.extras["generations"].tolist() == [0, 0]
    assert torch.isfinite(res.extras["fitness"]).all()
    free = mirror_attack(
        TargetOracle(ToyTarget(), access="probabilities"), labels, rng=_rng(14), **kw
    )
    assert free.extras["stopped_by_budget"] is False and free.queries == 40 + 20 * 18


def test_seeds():
    kw = {
        "style_generator": _toy_style(),
        "population": 10,
        "pool_size": 40,
        "generations": 5,
        "stop_confidence": None,
    }

    def run(seed: int, **more):
        return mirror_attack(
            TargetOracle(ToyTarget(), access="probabilities"),
            torch.tensor([0, 2]),
            rng=_rng(seed),
            **kw,
            **more,
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.images, c.images)
    # chunking changes the oracle calls, never the result
    chunked = run(0, query_batch=3)
    assert torch.equal(chunked.latents, a.latents) and chunked.queries == a.queries


def test_oracle_never_sees_a_tensor_requiring_grad():
    gen = _toy_style()
    target = ToyTarget()
    res = mirror_attack(
        TargetOracle(target, access="probabilities"),
        torch.tensor([0]),
        style_generator=gen,
        population=5,
        pool_size=20,
        generations=2,
        rng=_rng(15),
    )
    assert res.queries > 0 and target.calls
    assert not any(grad or req for grad, req in target.calls)
    assert all(p.grad is None for p in target.parameters())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"population": 1}, "population"),
        ({"pool_size": 5}, "pool_size"),
        ({"generations": -1}, "generations"),
        ({"stop_confidence": 0.0}, "stop_confidence"),
        ({"stop_confidence": 1.5}, "stop_confidence"),
        ({"mutation_prob": 1.1}, "mutation_prob"),
        ({"mutation_ce": -0.1}, "mutation_ce"),
        ({"p_std_ce": 0.0}, "p_std_ce"),
        ({"truncation": 0.0}, "truncation"),
        ({"elites": 0}, "elites"),
        ({"elites": 8}, "elites"),
        ({"query_batch": 0}, "query_batch"),
    ],
)
def test_bad_arguments(kwargs, name):
    oracle = TargetOracle(ToyTarget(), access="probabilities")
    args = {"style_generator": _toy_style(), "population": 8, "pool_size": 16, **kwargs}
    with pytest.raises(ValueError, match=name):
        mirror_attack(oracle, torch.tensor([0]), **args)
    assert oracle.queries == 0


def test_bad_generator():
    oracle = TargetOracle(ToyTarget(), access="probabilities")
    with pytest.raises(TypeError, match="synthesize_w"):
        mirror_attack(oracle, torch.tensor([0]), style_generator=PixelDecoder())
    big = StyleDouble(lambda p: torch.sigmoid(p).view(-1, 1, 4, 16), 64)
    with pytest.raises(ValueError, match="target takes"):
        mirror_attack(oracle, torch.tensor([0]), style_generator=big)


# -- the feature, on a trained digits target ----------------------------------------------------
@pytest.fixture(scope="module")
def digits_style(digits_generator) -> StyleDouble:
    return StyleDouble(digits_generator, 8).eval()


@pytest.fixture(scope="module")
def evaluator() -> TinyClassifier:
    """An independent classifier: another seed, trained on the odd-indexed digits 0-3."""
    x, y = tiny_digits()
    keep = y < 4
    x, y = x[keep][1::2], y[keep][1::2]
    torch.manual_seed(1)
    model = TinyClassifier(num_classes=4).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = _rng(2)
    for _ in range(80):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_beats_random_style_samples(digits_target, digits_style, evaluator, label_prob):
    labels = torch.tensor([0, 1, 2, 3, 0, 3])
    oracle = TargetOracle(digits_target, access="probabilities")
    res = mirror_attack(
        oracle,
        labels,
        style_generator=digits_style,
        population=50,
        pool_size=300,
        generations=10,
        rng=_rng(16),
    )
    assert res.attack == "mirror" and res.images.shape == (6, 1, 8, 8)
    assert 0.0 <= float(res.images.min()) <= float(res.images.max()) <= 1.0
    with torch.no_grad():
        random_images = digits_style(torch.randn(600, 8, generator=_rng(17)))
    rand_labels = labels.repeat(100)
    p_target = label_prob(digits_target, res.images, labels).mean()
    p_target_random = label_prob(digits_target, random_images, rand_labels).mean()
    p_eval = label_prob(evaluator, res.images, labels).mean()
    p_eval_random = label_prob(evaluator, random_images, rand_labels).mean()
    # measured: target p_y 0.98 vs 0.21, evaluator p_y 0.98 vs 0.22, evaluator accuracy 1.0 vs 0.21
    assert p_target > p_target_random + 0.38
    assert p_eval > p_eval_random + 0.38
    assert (evaluator(res.images).argmax(1) == labels).float().mean() >= 0.6


@pytest.mark.parametrize("access", ["label", "top-k"])
def test_works_behind_a_weaker_release(access, digits_target, digits_style, label_prob):
    labels = torch.tensor([0, 1, 2, 3])
    oracle = TargetOracle(digits_target, access=access, top_k=1)
    res = mirror_attack(
        oracle,
        labels,
        style_generator=digits_style,
        population=20,
        pool_size=200,
        generations=5,
        rng=_rng(18),
    )
    # one-hot (or top-1) answers: an elite the target labels y has p_y = 1 >= 0.95 and stops
    assert (digits_target(res.images).argmax(1) == labels).all()
    assert res.extras["reached"].all() and torch.isfinite(res.extras["fitness"]).all()
    assert res.queries == 200 + 19 * int(res.extras["generations"].sum())


def test_runs_on_the_library_style_generator():
    from mibench_lib.testing import tiny_classifier, tiny_style_generator

    gen = tiny_style_generator()
    oracle = TargetOracle(tiny_classifier(), access="probabilities")
    res = mirror_attack(
        oracle,
        torch.tensor([0, 3]),
        style_generator=gen,
        population=6,
        pool_size=20,
        generations=2,
        stop_confidence=None,
        rng=_rng(19),
    )
    assert res.latents.shape == (2, gen.w_dim) and res.images.shape == (2, 1, 8, 8)
    assert res.queries == 20 + 2 * 2 * 5
    with torch.no_grad():
        torch.testing.assert_close(res.images, gen.synthesize_w(res.latents))
