import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mibench_lib.stats import (
    format_interval,
    mean_interval,
    paired_difference,
    summary_table,
    tidy_summary,
)


def test_t_interval_matches_scipy():
    v = [10.0, 12.0, 11.5, 9.0]
    iv = mean_interval(v)
    lo, hi = sps.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=sps.sem(v))
    assert iv.method == "t"
    assert iv.lo == pytest.approx(lo) and iv.hi == pytest.approx(hi)
    assert iv.std == pytest.approx(np.std(v, ddof=1))


def test_bootstrap_is_reproducible_and_seeded():
    a = mean_interval([0.2, 0.6, 0.4], [25, 25, 25], seed=3)
    b = mean_interval([0.2, 0.6, 0.4], [25, 25, 25], seed=3)
    assert a == b


def test_two_stage_interval_is_wider_than_entries_alone():
    # Same pooled accuracy; spread between seeds must widen the interval.
    flat = mean_interval([0.5, 0.5, 0.5], [25, 25, 25])
    spread = mean_interval([0.1, 0.5, 0.9], [25, 25, 25])
    assert spread.half_width > 1.5 * flat.half_width


def test_more_entries_narrow_the_interval():
    few = mean_interval([0.5, 0.5, 0.5], [5, 5, 5])
    many = mean_interval([0.5, 0.5, 0.5], [100, 100, 100])
    assert many.half_width < 0.6 * few.half_width
    # Binomial within-seed part only: about 1.96 * sqrt(.25 / 300) = 0.057 for 300 entries.
    assert 0.03 < many.half_width < 0.09


def test_bootstrap_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, n_seeds, n = 0.4, 8, 20
    covered = 0
    trials = 300
    for t in range(trials):
        # between-seed variation: each seed has its own success rate around p
        ps = np.clip(rng.normal(p, 0.1, n_seeds), 0, 1)
        acc = rng.binomial(n, ps) / n
        iv = mean_interval(acc, [n] * n_seeds, n_boot=1000, seed=t)
        covered += iv.lo <= p <= iv.hi
    # percentile bootstraps under-cover a little at 8 seeds; a broken interval lands far outside
    assert 0.80 <= covered / trials <= 0.995


def test_nan_values_are_dropped_and_empty_is_nan():
    iv = mean_interval([0.5, float("nan")], [10, 10])
    assert iv.n_seeds == 1 and iv.mean == 0.5
    assert math.isnan(mean_interval([float("nan")]).mean)


def test_bad_counts_raise():
    with pytest.raises(ValueError, match="counts"):
        mean_interval([0.5, 0.5], [10])
    with pytest.raises(ValueError, match="positive"):
        mean_interval([0.5], [0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mean_interval([1.5], [4])


def _frame():
    return pd.DataFrame(
        {
            "attack": ["gmi"] * 3 + ["brep"] * 3,
            "seed": [0, 1, 2] * 2,
            "acc1": [0.4, 0.6, 0.5, 0.2, 0.2, 0.4],
            "delta_eval": [10.0, 12.0, 11.0, 30.0, 31.0, 29.0],
            "n_images": [25] * 3 + [5] * 3,
        }
    )


def test_tidy_summary_uses_bootstrap_for_accuracy_and_t_otherwise():
    tidy = tidy_summary(_frame(), ["attack"], ["acc1", "delta_eval"])
    methods = dict(zip(tidy["metric"] + "/" + tidy["attack"], tidy["method"], strict=True))
    assert methods["acc1/gmi"] == "bootstrap" and methods["delta_eval/gmi"] == "t"
    row = tidy[(tidy.attack == "brep") & (tidy.metric == "acc1")].iloc[0]
    assert row["n_entries"] == 15 and row["ci_lo"] <= row["mean"] <= row["ci_hi"]


def test_summary_table_formats_every_group():
    table = summary_table(_frame(), ["attack"], ["acc1", "delta_eval"])
    assert table["attack"].tolist() == ["brep", "gmi"]
    assert table["n"].tolist() == [3, 3]
    assert all("[" in s for s in table["acc1"])
    with pytest.raises(ValueError, match="no column"):
        summary_table(_frame(), ["defense"], ["acc1"])


def test_format_interval():
    assert format_interval(0.5, 0.1, 0.3, 0.7) == "0.50 ± 0.10 [0.30, 0.70]"
    assert format_interval(float("nan"), 0, 0, 0) == "n/a"


def test_paired_difference_cancels_shared_seed_variation():
    # Seed effects are large, but b is always 0.1 below a on the same seed.
    base = np.array([0.2, 0.5, 0.8])
    df = pd.DataFrame(
        {
            "defense": ["none"] * 3 + ["d"] * 3,
            "seed": [0, 1, 2] * 2,
            "delta_eval": np.r_[base, base - 0.1] * 100,
        }
    )
    d = paired_difference(df, "delta_eval", condition_col="defense", a="none", b="d")
    assert d.mean == pytest.approx(-10.0)
    assert d.hi < 0  # supported although the unpaired means' t-intervals overlap widely
    unpaired = [mean_interval(df[df.defense == k]["delta_eval"]) for k in ("none", "d")]
    assert unpaired[1].hi > unpaired[0].lo


def test_paired_difference_needs_common_seeds():
    df = pd.DataFrame({"c": ["a", "b"], "seed": [0, 1], "acc1": [0.1, 0.2], "n_images": [5, 5]})
    with pytest.raises(ValueError, match="both"):
        paired_difference(df, "acc1", condition_col="c", a="a", b="b")


def test_summary_table_has_one_row_per_observed_group():
    # Two group columns whose values do not cross: no invented (attack, norm) combinations.
    df = pd.DataFrame(
        {
            "attack": ["gmi", "gmi", "blank", "blank"],
            "norm": ["linf", "linf", "none", "none"],
            "seed": [0, 1, 0, 1],
            "acc1": [0.4, 0.6, 0.2, 0.2],
            "n_images": [25, 25, 5, 5],
        }
    )
    table = summary_table(df, ["attack", "norm"], ["acc1"])
    assert sorted(zip(table["attack"], table["norm"], strict=True)) == [
        ("blank", "none"),
        ("gmi", "linf"),
    ]
    assert table["n"].tolist() == [2, 2]
