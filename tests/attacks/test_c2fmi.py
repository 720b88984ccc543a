"""C2FMI: adapter transform and training, the two priors, coarse stage, DE fine stage, budgets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mibench_lib.attacks import c2fmi
from mibench_lib.attacks.c2fmi import (
    C2FMI_ADAPTER,
    C2FMI_EMBEDDING,
    SPEC,
    adapter_input,
    c2fmi_attack,
    de_fitness,
    de_select,
    pseudo_prediction,
    train_adapter,
)
from mibench_lib.data._types import ImageSet
from mibench_lib.oracle import TargetOracle
from mibench_lib.testing import (
    build_public_prior,
    build_target_prior,
    tiny_classifier,
    tiny_digits,
    tiny_style_generator,
)

LABELS = torch.tensor([0, 1, 2, 3])
SMALL = {"adapter_hidden": 32, "adapter_epochs": 2, "coarse_steps": 3}


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _public() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits 4-9 with their own labels: classes the digits target (0-3) never saw."""
    x, y = tiny_digits()
    return x[y >= 4], y[y >= 4]


@pytest.fixture(scope="module")
def embedding():
    x, y = _public()
    return build_public_prior(C2FMI_EMBEDDING, x, y, arch_kwargs={"width": 8}, epochs=2)


@pytest.fixture(scope="module")
def adapter_data(digits_target):
    data, queries = build_target_prior(C2FMI_ADAPTER, digits_target, _public()[0])
    return data, queries


@pytest.fixture(scope="module")
def generator():
    return tiny_style_generator()


def _run(oracle, embedding, adapter_data, generator, labels=LABELS, **kwargs):
    kwargs = {**SMALL, "generations": 2, "rng": _rng(), **kwargs}
    return c2fmi_attack(
        oracle,
        labels,
        style_generator=generator,
        c2fmi_embedding=embedding,
        c2fmi_adapter=adapter_data[0],
        **kwargs,
    )


# -- the adapter -----------------------------------------------------------------------------------
def test_adapter_input_unit_norm_top_k_support_and_monotone():
    p = F.softmax(torch.randn(6, 9, generator=_rng(1)) * 3, dim=1)
    for m in (None, 1, 4, 9):
        x = adapter_input(p, m)
        torch.testing.assert_close(x.norm(dim=1), torch.ones(6))
        kept = (x > 0).sum(dim=1)
        assert (kept <= (9 if m is None else m)).all()
        if m is not None:
            top = p.topk(m, dim=1).indices
            outside = torch.ones_like(x, dtype=torch.bool).scatter_(1, top, False)
            assert (x[outside] == 0).all()
        # order-preserving: a larger probability never gets a smaller input
        for row_p, row_x in zip(p, x, strict=True):
            idx = row_p.argsort()
            assert (row_x[idx].diff() >= -1e-7).all()
    # raising one probability raises its own input value (the row is renormalised)
    q = p.clone()
    q[0, 2] *= 1.5
    assert adapter_input(q)[0, 2] > adapter_input(p)[0, 2]


def test_adapter_input_handles_zeros_like_the_official_clamp():
    # a top-2 release: zeros elsewhere; log(0) is clamped at -1000, then everything shifts >= 0
    r = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    x = adapter_input(r)
    assert torch.isfinite(x).all() and (x[0, 2:] == 0).all()
    expected = torch.tensor([[0.7, 0.3]]).log() + 1000.0
    torch.testing.assert_close(x[0, :2], F.normalize(expected, dim=1)[0])
    # under top_m = 2 the released entries keep their log-probability information
    x2 = adapter_input(r, 2)
    torch.testing.assert_close(
        x2[0, :2], F.normalize(torch.tensor([[0.7, 0.3]]).log() + 50, dim=1)[0]
    )


def test_pseudo_prediction_peaks_at_the_label_and_survives_the_transform():
    y = torch.tensor([0, 3, 3])
    p = pseudo_prediction(y, 5, _rng(2))
    torch.testing.assert_close(p.norm(dim=1), torch.ones(3))
    assert p.argmax(1).tolist() == [0, 3, 3] and (p[torch.arange(3), y] > 0.999).all()
    x = adapter_input(p)
    assert x.argmax(1).tolist() == [0, 3, 3]
    others = torch.ones_like(x, dtype=torch.bool)
    others[torch.arange(3), y] = False
    assert (x[others] > 0).all()  # the |N(0,1)| entries stay visible after the log
    assert not torch.equal(p, pseudo_prediction(y, 5, _rng(3)))


def test_adapter_loss_falls_on_toy_nets():
    """A toy target and a toy embedding net whose logits depend on the target's: the adapter
    learns the map (lr 1e-2: the official 1e-3 relies on ~23k steps, 150k images x 20 epochs)."""
    g = _rng(4)
    images = torch.randn(800, 10, generator=g)
    target_logits = images @ torch.randn(10, 6, generator=g) * (4 / 10) ** 0.5
    probs = F.softmax(target_logits, dim=1)
    logits = target_logits @ torch.randn(6, 7, generator=g) / 6**0.5
    kwargs = {"hidden": 64, "epochs": 20, "batch_size": 32, "lr": 1e-2, "seed": 0}
    adapter, hist = train_adapter(probs, logits, **kwargs)
    assert adapter(probs[:3]).shape == (3, 7) and not adapter.training
    assert hist["val_images"] == 50 and hist["train_images"] == 750
    # measured: 3.28 -> 0.57 (train), 3.02 -> 0.49 (validation)
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert hist["val_loss"][-1] < 0.5 * hist["val_loss"][0]
    again, hist2 = train_adapter(probs, logits, **kwargs)
    assert hist2 == hist
    assert all(torch.equal(a, b) for a, b in zip(adapter.parameters(), again.parameters()))


# -- the priors ------------------------------------------------------------------------------------
def test_embedding_needs_labels_and_stores_logits_in_public_order(embedding):
    x, y = _public()
    with pytest.raises(ValueError, match="labelled public set"):
        build_public_prior(C2FMI_EMBEDDING, x[:40])
    assert embedding.logits.shape == (len(x), 6) and embedding.classes == (4, 5, 6, 7, 8, 9)
    with torch.no_grad():
        torch.testing.assert_close(embedding.net(x[:5]), embedding.logits[:5])
    acc = (embedding.logits.argmax(1) + 4 == y).float().mean()
    assert acc > 0.5  # it learned the public classes
    assert type(embedding.net).__name__ == "MnistResNet"  # not the target's architecture


def test_adapter_prior_stores_what_was_released(digits_target, adapter_data, embedding):
    data, queries = adapter_data
    x = _public()[0]
    assert queries == len(x) and data.outputs.shape == (len(x), 4)
    assert data.fingerprint == embedding.fingerprint and data.access == "probabilities"
    # behind a top-2 release the stored rows are the released ones: zeros outside the top 2
    oracle = TargetOracle(digits_target, access="top-k", top_k=2)
    unlabelled = ImageSet(x, torch.full((len(x),), -1))
    tensors, meta = C2FMI_ADAPTER.build(oracle, unlabelled, num_classes=4, seed=0, max_images=100)
    assert oracle.queries == 100 and meta["top_k"] == 2 and meta["access"] == "top-k"
    assert ((tensors["outputs"] > 0).sum(1) == 2).all() and tensors["index"].numel() == 100


def test_fingerprint_mismatch_is_refused(digits_target, embedding, adapter_data, generator):
    other, _ = build_target_prior(C2FMI_ADAPTER, digits_target, _public()[0][:50])
    oracle = TargetOracle(digits_target, access="probabilities")
    with pytest.raises(ValueError, match="different public images"):
        _run(oracle, embedding, (other, 0), generator)
    assert oracle.queries == 0


# -- the coarse stage ------------------------------------------------------------------------------
class _GradRefusingOracle:
    """An oracle view that raises on any query requiring grad, and logs when queries happen."""

    def __init__(self, oracle: TargetOracle) -> None:
        self._oracle = oracle
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self._oracle, name)

    def __call__(self, images):
        if images.requires_grad:
            raise AssertionError("the oracle was handed a tensor that requires grad")
        self.calls.append(images.shape[0])
        return self._oracle(images)


def test_coarse_stage_queries_nothing_and_never_hands_over_a_graph(
    digits_target, embedding, adapter_data, generator
):
    oracle = _GradRefusingOracle(TargetOracle(digits_target, access="probabilities"))
    seen = []
    res = _run(
        oracle, embedding, adapter_data, generator, generations=1,
        on_step=lambda step, total, info: seen.append((step, info["stage"], oracle.queries)),
    )  # fmt: skip
    coarse = [s for s in seen if s[1] == 0.0]
    assert [s[0] for s in coarse] == [1, 2, 3] and all(q == 0 for *_, q in coarse)
    assert oracle.calls == [64, 128, 128, 128]  # selection, parents, trials, final scoring
    assert len(res.losses) == 3 and res.losses[-1] < res.losses[0]


# -- the fine stage --------------------------------------------------------------------------------
def test_top_m_fitness_branches():
    s = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.5, 0.3, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0]])
    y = torch.tensor([1, 3, 2])
    torch.testing.assert_close(de_fitness(s, y), torch.tensor([0.3, 0.0, 0.0]))
    # y shown -> p_y; y hidden (outside the top-M, or a zero score) -> -(sum of the top-M)
    torch.testing.assert_close(de_fitness(s, y, top_m=2), torch.tensor([0.3, -0.8, -1.0]))
    torch.testing.assert_close(de_fitness(s, y, top_m=3), torch.tensor([0.3, -0.8, -1.0]))


def test_uniform_improvement_replaces_every_slot():
    g = _rng(5)
    pop, trial = torch.randn(2, 8, 3, generator=g), torch.randn(2, 8, 3, generator=g)
    f_par = torch.rand(2, 8, generator=g)
    new_pop, fit = de_select(pop, trial, f_par, f_par + 0.01)
    assert torch.equal(new_pop, trial) and torch.equal(fit, f_par + 0.01)
    # MIBench's test compares softmax-normalised scores: a uniform gain replaces nothing
    assert not (F.softmax(f_par, 1) < F.softmax(f_par + 0.01, 1)).any()
    # ties keep the parent; a worse trial never enters
    kept, fit2 = de_select(pop, trial, f_par, f_par.clone())
    assert torch.equal(kept, pop) and torch.equal(fit2, f_par)
    kept, _ = de_select(pop, trial, f_par, f_par - 0.01)
    assert torch.equal(kept, pop)


def test_beta_schedule_is_the_official_one():
    assert [c2fmi._beta(g, 500, 0.1) for g in (0, 469)] == [0.1, 0.1]
    assert c2fmi._beta(470, 500, 0.1) == pytest.approx(0.06)  # the official jump
    assert c2fmi._beta(499, 500, 0.1) == pytest.approx(0.002)


def test_per_slot_fitness_never_decreases_and_queries_are_exact(
    digits_target, embedding, adapter_data, generator
):
    oracle = TargetOracle(digits_target, access="probabilities")
    res = _run(oracle, embedding, adapter_data, generator, generations=6)
    n, gens = len(LABELS), 6
    assert res.queries == oracle.queries == n * (16 + 64 * gens + 32)
    hist = res.extras["slot_fitness"]
    assert hist.shape == (gens, n, 32) and res.extras["generations"] == gens
    assert (hist.diff(dim=0) >= -1e-6).all()
    start = res.extras["selected_fitness"]  # the survivors' slots start at their selection score
    assert (hist[0, :, :10] >= start - 1e-6).all()
    assert res.extras["stopped_by_budget"] is False and res.extras["final_rescored"] is True
    torch.testing.assert_close(
        res.extras["target_prob"], hist[-1].max(dim=1).values, atol=1e-6, rtol=0
    )
    # the output image is the best member: its released p_y is the reported fitness
    with torch.no_grad():
        p = F.softmax(digits_target(res.images), 1).gather(1, LABELS[:, None])[:, 0]
    torch.testing.assert_close(p, res.extras["target_prob"], atol=1e-5, rtol=0)
    # without the final scoring: 16 + 64 x generations per entry
    oracle = TargetOracle(digits_target, access="probabilities")
    res = _run(oracle, embedding, adapter_data, generator, generations=3, final_rescore=False)
    assert res.queries == n * (16 + 64 * 3)


def test_budget_stops_cleanly(digits_target, embedding, adapter_data, generator):
    n = len(LABELS)
    budget = n * (16 + 64 * 2) + 10  # selection and two generations; no third, no final scoring
    oracle = TargetOracle(digits_target, access="probabilities", budget=budget)
    res = _run(oracle, embedding, adapter_data, generator, generations=50)
    assert res.extras["stopped_by_budget"] is True and res.extras["generations"] == 2
    assert res.queries == oracle.queries == n * (16 + 64 * 2) <= budget
    assert res.images.shape == (n, 1, 8, 8) and torch.isfinite(res.extras["target_prob"]).all()
    # not even the selection fits: the affordable starts are scored, no evolution
    oracle = TargetOracle(digits_target, access="probabilities", budget=20)
    res = _run(oracle, embedding, adapter_data, generator)
    assert res.extras["stopped_by_budget"] is True and res.extras["generations"] == 0
    assert res.queries == oracle.queries == 20 and res.images.shape == (n, 1, 8, 8)
    assert torch.isfinite(res.extras["target_prob"][:2]).all()  # entries 0-1 had scored starts


def test_same_seed_same_images_other_seed_other_images(
    digits_target, embedding, adapter_data, generator
):
    def images(seed):
        oracle = TargetOracle(digits_target, access="probabilities")
        return _run(oracle, embedding, adapter_data, generator, rng=_rng(seed)).images

    a, b, c = images(0), images(0), images(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_m_follows_the_release(digits_target, embedding, adapter_data, generator):
    for access, expected in (("probabilities", -1), ("top-k", 2), ("label", 1)):
        oracle = TargetOracle(digits_target, access=access, top_k=2)
        res = _run(oracle, embedding, adapter_data, generator, generations=1)
        assert res.extras["top_m"] == expected and res.queries == 4 * (16 + 64 + 32)
    oracle = TargetOracle(digits_target, access="probabilities")
    assert (
        _run(oracle, embedding, adapter_data, generator, top_m=3, generations=0).extras["top_m"]
        == 3
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("starts", 0),
        ("keep", 2),
        ("keep", 17),
        ("population", 5),
        ("generations", -1),
        ("coarse_lr", 0.0),
        ("crossover", 1.5),
        ("adapter_val_fraction", 1.0),
        ("top_m", 5),
        ("pairs", 1.5),
        ("chunk", 0),
    ],
)
def test_bad_arguments_are_named(name, value, embedding, adapter_data, generator):
    oracle = TargetOracle(tiny_classifier(), access="probabilities")
    with pytest.raises(ValueError, match=name):
        _run(oracle, embedding, adapter_data, generator, **{name: value})
    assert oracle.queries == 0


def test_beats_random_style_samples_on_the_digits_target(
    digits_target, embedding, adapter_data, generator, label_prob
):
    oracle = TargetOracle(digits_target, access="probabilities")
    res = _run(oracle, embedding, adapter_data, generator, generations=30)
    attack = label_prob(digits_target, res.images, LABELS).mean()
    with torch.no_grad():
        z = torch.randn(64 * len(LABELS), 8, generator=_rng(9))
        random = label_prob(digits_target, generator(z), LABELS.repeat(64)).mean()
    assert attack > random + 0.1, (attack, random)  # measured 0.45 vs 0.25


def test_spec():
    assert SPEC.name == "c2fmi" and SPEC.access == "probabilities"
    assert SPEC.keywords == ("style_generator", "c2fmi_embedding", "c2fmi_adapter")
    assert [p.name for p in SPEC.public_priors] == ["style_generator", "c2fmi_embedding"]
    assert [p.name for p in SPEC.target_priors] == ["c2fmi_adapter"]
