import pytest
import torch

from mibench_lib.metrics import MetricUnavailable, class_mean_prdc, prdc, prdc_per_class


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


def test_per_class_then_mean_over_classes():
    real = torch.randn(20, 3)
    fake = torch.randn(12, 3)
    real_labels, fake_labels = torch.arange(2).repeat(10), torch.arange(2).repeat(6)
    per_class = prdc_per_class(real, real_labels, fake, fake_labels, k=3)
    assert list(per_class) == [0, 1]
    for c in (0, 1):
        assert per_class[c] == _approx(prdc(real[real_labels == c], fake[fake_labels == c], k=3))
    mean = class_mean_prdc(real, real_labels, fake, fake_labels, k=3)
    assert mean == _approx({m: (per_class[0][m] + per_class[1][m]) / 2 for m in mean})


def test_too_few_samples_is_unavailable_and_names_the_class():
    real, real_labels = torch.randn(8, 2), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    fake, fake_labels = torch.randn(7, 2), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    with pytest.raises(MetricUnavailable, match=r"at least 4 samples.* for class 1, fake.* has 3"):
        prdc_per_class(real, real_labels, fake, fake_labels, k=3)
    with pytest.raises(MetricUnavailable, match=r"class 2.*real features has 0"):
        prdc_per_class(real, real_labels, torch.randn(4, 2), torch.full((4,), 2), k=3)


def test_degenerate_inputs():
    with pytest.raises(MetricUnavailable, match="every real radius is 0"):
        prdc(torch.ones(5, 2), torch.randn(5, 2), k=3)
    with pytest.raises(MetricUnavailable, match="non-finite"):
        prdc(torch.randn(5, 2), torch.full((5, 2), float("nan")), k=3)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        prdc(torch.randn(5, 2), torch.randn(5, 2), k=0)
    # identical fakes are a legitimate (collapsed) answer: zero recall, not an error
    assert prdc(torch.randn(6, 2), torch.zeros(6, 2), k=3)["recall"] == 0.0
