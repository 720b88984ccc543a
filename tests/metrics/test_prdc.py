import numpy as np
import pytest
import torch

from mibench_lib.metrics import (
    PRDC_KEYS,
    MetricUnavailable,
    class_mean_prdc,
    prdc,
    prdc_keys,
    prdc_per_class,
)

prdc_package = pytest.importorskip("prdc")  # the authors' reference code (a dev dependency)


def _approx(d: dict[str, float]) -> dict[str, float]:
    return {key: pytest.approx(v) for key, v in d.items()}


def test_1d_k1_by_hand():
    # real R = {0, 1, 2, 10, 11}; k = 1 radius = distance to nearest other real: all 1.
    # fake F = {0.5, 2.6, 20, 20.5}; radii: 0.5 -> 2.1 (to 2.6), 2.6 -> 2.1, 20 -> 0.5, 20.5 -> 0.5.
    # precision: 0.5 (in ball of 0: 0.5 < 1), 2.6 (ball of 2: 0.6 < 1) yes; 20, 20.5 no  -> 2/4
    # recall: reals 0, 1 (0.5 from fake 0.5 < 2.1), 2 (0.6 from 2.6 < 2.1) yes;
    #         10 (7.4 from 2.6 > 2.1, 10 from 20 > 0.5), 11 no                       -> 3/5
    # density: fake 0.5 in balls of 0 and 1 (2), 2.6 in ball of 2 (1), others 0   -> 3 / (1 * 4)
    # coverage: nearest fake of 0: 0.5 < 1, of 1: 0.5 < 1, of 2: 0.6 < 1, of 10: 7.4, of 11: 8.4
    #                                                                                 -> 3/5
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    fake = torch.tensor([[0.5], [2.6], [20.0], [20.5]])
    assert prdc(real, fake, k=1) == _approx(
        {"precision": 0.5, "recall": 0.6, "density": 0.75, "coverage": 0.6}
    )


def test_2d_k3_by_hand():
    # real = corners of the unit square; each corner's 3 other corners lie at 1, 1, sqrt 2, so every
    # k=3 radius is sqrt 2 = 1.414.
    # fakes f1 = (0.5, 0.5), f2 = (0.5, 0.4), f3 = (5, 5), f4 = (5, 6).
    # f1 is 0.707 from every corner, f2 0.640 / 0.781: both inside all 4 balls; f3, f4 (> 5.6 away)
    # in none.  precision = 2/4, density = (4 + 4) / (3 * 4) = 2/3.
    # every corner has f1 within 0.71 < 1.414: coverage = 1.
    # fake radii (3rd nearest other fake): f1: {0.1, 6.36, 7.11} -> 7.11, f2 -> 7.18, f3: {1, 6.36,
    # 6.44} -> 6.44, f4 -> 7.18; every corner is within 0.71 of f1 < 7.11: recall = 1.
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fake = torch.tensor([[0.5, 0.5], [0.5, 0.4], [5.0, 5.0], [5.0, 6.0]])
    assert prdc(real, fake) == _approx(
        {"precision": 0.5, "recall": 1.0, "density": 2 / 3, "coverage": 1.0}
    )


def test_density_exceeds_one_when_fakes_crowd_the_real_manifold():
    # 4 fakes near the square's centre, each inside all 4 corner balls: density = 16 / (3 * 4).
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fake = torch.tensor([[0.5, 0.5], [0.45, 0.5], [0.5, 0.55], [0.52, 0.48]])
    out = prdc(real, fake)
    assert out["precision"] == 1.0 and out["density"] == pytest.approx(4 / 3)


def _naive_prdc(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    """Definitions of Naeem et al. 2020 written as plain loops over samples."""
    real, fake = real.double().tolist(), fake.double().tolist()

    def dist(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5

    def radius(p, pts):
        return sorted(dist(p, q) for q in pts)[k]  # index 0 is p itself

    r = [radius(x, real) for x in real]
    s = [radius(y, fake) for y in fake]
    inside = [[dist(y, x) < r[i] for i, x in enumerate(real)] for y in fake]
    return {
        "precision": sum(any(row) for row in inside) / len(fake),
        "recall": sum(any(dist(x, y) < s[j] for j, y in enumerate(fake)) for x in real) / len(real),
        "density": sum(sum(row) for row in inside) / (k * len(fake)),
        "coverage": sum(min(dist(x, y) for y in fake) < r[i] for i, x in enumerate(real))
        / len(real),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_agrees_with_a_naive_loop(k):
    real, fake = torch.randn(30, 4), torch.randn(25, 4) * 0.7 + 0.3
    assert prdc(real, fake, k=k) == _approx(_naive_prdc(real, fake, k))


@pytest.mark.parametrize(
    ("n_real", "n_fake", "dim", "k"),
    [(30, 25, 4, 3), (50, 20, 16, 5), (12, 40, 2, 1), (64, 64, 64, 3), (27, 5, 8, 3)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_naeem_variant_equals_the_authors_prdc_package(n_real, n_fake, dim, k, seed, capsys):
    gen = np.random.default_rng(seed)
    real = gen.standard_normal((n_real, dim))
    fake = gen.standard_normal((n_fake, dim)) * 0.8 + 0.2
    expected = prdc_package.compute_prdc(real, fake, nearest_k=k)
    capsys.readouterr()  # the package prints the set sizes
    got = prdc(torch.from_numpy(real), torch.from_numpy(fake), k=k)
    assert got == {key: pytest.approx(float(expected[key]), rel=1e-5) for key in PRDC_KEYS}


def test_mibench_variant_by_hand():
    # real R = {0, 1, 5, 9}, k = 1: radii 0 -> 1, 1 -> 1, 5 -> 4, 9 -> 4.
    # fake F = {1.6, 2.5, 20}: radii 1.6 -> 0.9, 2.5 -> 0.9, 20 -> 17.5.
    # balls holding each fake (d < r): 1.6 in balls of 1 (0.6) and 5 (3.4); 2.5 in ball of 5 (2.5);
    #   20 in none. Nearest real: 1.6 -> 1 (0.6 <= 1: in), 2.5 -> 1 (1.5 > 1: out), 20 -> 9 (out).
    # precision: Naeem 2/3 (any ball); MIBench 1/3 (2.5 lies in 5's ball, not its nearest's).
    # recall: reals inside some fake ball: 1 (0.6 < 0.9), 5 and 9 (ball of 20, radius 17.5): 3/4;
    #   MIBench asks only the nearest fake: 0 -> 1.6 (1.6 > 0.9), 1 -> 1.6 (0.6: in),
    #   5 -> 2.5 (2.5 > 0.9), 9 -> 2.5 (6.5 > 0.9): 1/4.
    # density: 3 (fake, ball) pairs; Naeem 3 / (k M) = 3/3, MIBench 3 / (k N) = 3/4.
    # coverage (both): 1 (fake at 0.6 < 1) and 5 (fake at 2.5 < 4) of 4 reals: 1/2.
    real = torch.tensor([[0.0], [1.0], [5.0], [9.0]])
    fake = torch.tensor([[1.6], [2.5], [20.0]])
    assert prdc(real, fake, k=1) == _approx(
        {"precision": 2 / 3, "recall": 3 / 4, "density": 1.0, "coverage": 1 / 2}
    )
    assert prdc(real, fake, k=1, variant="mibench") == _approx(
        {"precision": 1 / 3, "recall": 1 / 4, "density": 3 / 4, "coverage": 1 / 2}
    )
    # MIBench's balls are closed: 13 lies exactly on the ball of real 9 (radius 4) and in no other
    # ball, so it counts for MIBench only.
    on_edge = torch.tensor([[13.0], [40.0], [50.0]])
    assert prdc(real, on_edge, k=1)["precision"] == 0.0
    assert prdc(real, on_edge, k=1, variant="mibench")["precision"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mibench_variant_relations_to_naeem(seed):
    # 27 reals, 5 fakes, as in the issue: MIBench's density is Naeem's times 5 / 27.
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(27, 6, generator=gen, dtype=torch.float64)
    fake = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 0.5
    naeem, mibench = prdc(real, fake, k=3), prdc(real, fake, k=3, variant="mibench")
    assert naeem["density"] > 0
    assert mibench["density"] == pytest.approx(naeem["density"] * 5 / 27, rel=1e-12)
    assert mibench["coverage"] == naeem["coverage"]  # no ties in continuous data
    assert mibench["precision"] <= naeem["precision"]
    assert mibench["recall"] <= naeem["recall"]


def test_variant_names_and_bad_variant():
    assert prdc_keys() == PRDC_KEYS
    assert prdc_keys("mibench") == tuple(f"{key}_mibench" for key in PRDC_KEYS)
    with pytest.raises(ValueError, match=r"variant must be one of \['naeem', 'mibench'\], got 'x'"):
        prdc(torch.randn(5, 2), torch.randn(5, 2), variant="x")
    with pytest.raises(ValueError, match="got 'MIBench'"):
        prdc_keys("MIBench")


def test_per_class_then_mean_over_classes():
    real = torch.randn(20, 3)
    fake = torch.randn(12, 3)
    real_labels, fake_labels = torch.arange(2).repeat(10), torch.arange(2).repeat(6)
    per_class = prdc_per_class(real, real_labels, fake, fake_labels, k=3)
    assert list(per_class.values) == [0, 1] and per_class.skipped == {}
    for c in (0, 1):
        expected = prdc(real[real_labels == c], fake[fake_labels == c], k=3)
        assert per_class.values[c] == _approx(expected)
    mean = class_mean_prdc(real, real_labels, fake, fake_labels, k=3)
    assert mean["classes"] == [0, 1] and mean["skipped"] == {}
    values = per_class.values
    assert {m: mean[m] for m in PRDC_KEYS} == _approx(
        {m: (values[0][m] + values[1][m]) / 2 for m in PRDC_KEYS}
    )


def test_classes_with_too_few_samples_are_skipped_recorded_and_left_out_of_the_mean():
    # k = 3: class 0 has 4 real / 4 fake (scored), class 1 4 real / 3 fake, class 2 no real.
    real = torch.randn(8, 2)
    real_labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    fake = torch.randn(11, 2)
    fake_labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    per_class = prdc_per_class(real, real_labels, fake, fake_labels, k=3)
    assert list(per_class.values) == [0] and list(per_class.skipped) == [1, 2]
    assert "at least 4 samples per set for class 1, fake features has 3" in per_class.skipped[1]
    assert "for class 2, real features has 0" in per_class.skipped[2]
    mean = class_mean_prdc(real, real_labels, fake, fake_labels, k=3)
    assert mean["classes"] == [0] and mean["skipped"] == per_class.skipped
    assert {m: mean[m] for m in PRDC_KEYS} == _approx(prdc(real[:4], fake[:4], k=3))
    with pytest.raises(MetricUnavailable, match=r"skipped every class: .*class 1.*; .*class 2"):
        class_mean_prdc(real, real_labels, fake[4:], fake_labels[4:], k=3)
    with pytest.raises(MetricUnavailable, match=r"at least 4 samples.* has 3"):
        prdc(real[:4], fake[4:7], k=3)  # a single pair still raises


def test_mibench_variant_skips_classes_of_k_plus_1_samples_as_mibench_does():
    real, fake = torch.randn(9, 2), torch.randn(9, 2)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])  # 5 and 4 samples, k = 3
    naeem = prdc_per_class(real, labels, fake, labels, k=3)
    mibench = prdc_per_class(real, labels, fake, labels, k=3, variant="mibench")
    assert list(naeem.values) == [0, 1]
    assert list(mibench.values) == [0] and list(mibench.skipped) == [1]
    assert "(mibench) with k=3 needs at least 5 samples" in mibench.skipped[1]


def test_non_finite_features_make_every_class_unavailable():
    real, labels = torch.randn(8, 2), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    bad = torch.randn(8, 2)
    bad[5, 1] = float("nan")
    with pytest.raises(MetricUnavailable, match="fake features contain non-finite"):
        class_mean_prdc(real, labels, bad, labels, k=3)


def test_degenerate_inputs():
    with pytest.raises(MetricUnavailable, match="every real radius is 0"):
        prdc(torch.ones(5, 2), torch.randn(5, 2), k=3)
    with pytest.raises(MetricUnavailable, match="non-finite"):
        prdc(torch.randn(5, 2), torch.full((5, 2), float("nan")), k=3)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        prdc(torch.randn(5, 2), torch.randn(5, 2), k=0)
    # identical fakes are a legitimate (collapsed) answer: zero recall, not an error
    assert prdc(torch.randn(6, 2), torch.zeros(6, 2), k=3)["recall"] == 0.0
