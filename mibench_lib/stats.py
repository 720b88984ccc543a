"""Intervals the studies report: mean, std and a 95 % interval over seeds and entries.

A study row is one attack run: one target (trained with one seed) and ``n_images`` reconstructions
(the *entries*). Two sources of chance move a result: which target a seed trained (between seeds)
and which entries happened to succeed (within a seed). The interval covers both:

- **Accuracies** (``acc1``, ``acc5``, ``target_acc``, ...: fractions of entries) get a two-stage
  percentile bootstrap: resample the seeds with replacement, then, inside each drawn seed, resample
  its entries with replacement. For a 0/1 outcome the second stage is exactly a draw of
  Binomial(n_images, observed accuracy) / n_images, so row-level data suffice.
- **Other metrics** (distances, FID, wall time) get a Student-t interval over the per-seed values
  (the per-entry values are not kept in a row).

With 3 seeds the seed stage of the bootstrap sees only 10 distinct resamples and the t quantile is
4.30: both intervals are honest about how little 3 seeds say, which is the point. A single seed
has no between-seed spread; its accuracy interval is then the within-seed (entry) part only.

:func:`paired_difference` compares two conditions on the same seeds (e.g. a defense against the
undefended target trained with the same seed): the bootstrap resamples seeds jointly, so the
shared seed-to-seed variation cancels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _sps

__all__ = [
    "ACCURACY_METRICS",
    "Interval",
    "format_interval",
    "mean_interval",
    "paired_difference",
    "paired_table",
    "summary_table",
    "tidy_summary",
]

#: Columns that are fractions of a run's entries (bootstrapped two-stage); others get a t-interval.
ACCURACY_METRICS: frozenset[str] = frozenset(
    {"acc1", "acc5", "acc1_selected", "target_acc", "start_found"}
)

N_BOOT = 4000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its spread: ``mean``, sample ``std`` over seeds, ``lo``/``hi`` of the interval.

    Attributes:
        mean: Mean over seeds of the per-seed values.
        std: Sample standard deviation over seeds (NaN for one seed).
        lo: Lower end of the ``LEVEL`` interval (NaN when it cannot be computed).
        hi: Upper end.
        n_seeds: Number of seeds (rows) it summarises.
        n_entries: Total entries behind an accuracy (0 when unknown).
        method: ``"bootstrap"`` (two-stage, seeds then entries), ``"t"`` or ``"none"``.
    """

    mean: float
    std: float
    lo: float
    hi: float
    n_seeds: int
    n_entries: int
    method: str

    @property
    def half_width(self) -> float:
        """Half the interval's width."""
        return (self.hi - self.lo) / 2


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def mean_interval(
    values: Sequence[float],
    counts: Sequence[int] | None = None,
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Interval:
    """Mean over seeds of ``values`` with its ``level`` interval.

    Args:
        values: One value per seed (NaNs are dropped with their counts).
        counts: Entries behind each value, for an accuracy (a fraction of entries): then the
            interval is the two-stage bootstrap of the module docstring. None: a t-interval.
        level: Coverage of the interval.
        n_boot: Bootstrap resamples.
        seed: Seeds the bootstrap (intervals are reproducible).

    Returns:
        The :class:`Interval`; all NaN when no value is finite.

    Raises:
        ValueError: ``counts`` has another length than ``values``, a count is not positive, or an
            accuracy lies outside [0, 1].

    Example:
        >>> iv = mean_interval([0.4, 0.6, 0.5], counts=[25, 25, 25])
        >>> round(iv.mean, 3), iv.lo < 0.4 < 0.6 < iv.hi, iv.method
        (0.5, True, 'bootstrap')
        >>> mean_interval([10.0, 12.0, 11.0]).method
        't'
    """
    v = np.asarray(values, dtype=float)
    if counts is not None and len(counts) != len(v):
        raise ValueError(f"counts has {len(counts)} entries for {len(v)} values")
    keep = np.isfinite(v)
    v = v[keep]
    if len(v) == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, nan, 0, 0, "none")
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    alpha = (1 - level) / 2
    if counts is not None:
        n = np.asarray(counts, dtype=np.int64)[keep]
        if (n < 1).any():
            raise ValueError(f"entry counts must be positive, got {n.tolist()}")
        if ((v < 0) | (v > 1)).any():
            raise ValueError(f"accuracies must lie in [0, 1], got {v.tolist()}")
        rng = _rng(seed)
        pick = rng.integers(0, len(v), size=(n_boot, len(v)))  # stage 1: seeds
        hits = rng.binomial(n[pick], v[pick])  # stage 2: entries within each drawn seed
        boot = (hits / n[pick]).mean(axis=1)
        lo, hi = np.quantile(boot, [alpha, 1 - alpha])
        return Interval(mean, std, float(lo), float(hi), len(v), int(n.sum()), "bootstrap")
    if len(v) < 2:
        return Interval(mean, std, float("nan"), float("nan"), 1, 0, "none")
    half = float(_sps.t.ppf(1 - alpha, len(v) - 1)) * std / math.sqrt(len(v))
    return Interval(mean, std, mean - half, mean + half, len(v), 0, "t")


def _interval_for(group: pd.DataFrame, col: str, count_col: str, seed: int) -> Interval:
    if col in ACCURACY_METRICS and count_col in group:
        counts = group[count_col].fillna(0).astype(int).clip(lower=1).tolist()
        return mean_interval(group[col].tolist(), counts, seed=seed)
    return mean_interval(group[col].tolist(), seed=seed)


def tidy_summary(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    value_cols: Sequence[str],
    *,
    count_col: str = "n_images",
    seed: int = 0,
) -> pd.DataFrame:
    """One row per group and metric: mean, std, ci_lo, ci_hi, n_seeds, n_entries, method.

    Args:
        df: Tidy results, one row per run (seed).
        group_cols: Columns defining a condition, e.g. ``["attack", "defense_label"]``.
        value_cols: Numeric metric columns; accuracies (:data:`ACCURACY_METRICS`) are bootstrapped
            two-stage with the entries in ``count_col``.
        count_col: Column with the entries per row.
        seed: Seeds every bootstrap.

    Raises:
        ValueError: a column is missing (the message lists those present).
    """
    missing = [c for c in [*group_cols, *value_cols] if c not in df.columns]
    if missing:
        raise ValueError(f"no column {missing}; the columns are {list(df.columns)}")
    rows = []
    for key, group in df.groupby(list(group_cols), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for col in value_cols:
            iv = _interval_for(group, col, count_col, seed)
            rows.append(
                {
                    **dict(zip(group_cols, key, strict=True)),
                    "metric": col,
                    "mean": iv.mean,
                    "std": iv.std,
                    "ci_lo": iv.lo,
                    "ci_hi": iv.hi,
                    "n_seeds": iv.n_seeds,
                    "n_entries": iv.n_entries,
                    "method": iv.method,
                }
            )
    return pd.DataFrame(rows)


def format_interval(mean: float, std: float, lo: float, hi: float, digits: int = 2) -> str:
    """``"0.51 ± 0.06 [0.40, 0.62]"``; parts that are NaN are left out.

    Example:
        >>> format_interval(0.5, 0.1, 0.3, 0.7)
        '0.50 ± 0.10 [0.30, 0.70]'
        >>> format_interval(0.5, float("nan"), float("nan"), float("nan"))
        '0.50'
    """
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def summary_table(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    value_cols: Sequence[str],
    *,
    count_col: str = "n_images",
    digits: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Wide table: one row per group, one ``"mean ± std [95 % interval]"`` column per metric.

    Also ``n`` (seeds per group). See :func:`tidy_summary` for the intervals.

    Example:
        >>> df = pd.DataFrame({"attack": ["gmi"] * 3, "acc1": [0.4, 0.6, 0.5], "n_images": [25] * 3})
        >>> summary_table(df, ["attack"], ["acc1"]).columns.tolist()
        ['attack', 'acc1', 'n']
    """
    tidy = tidy_summary(df, group_cols, value_cols, count_col=count_col, seed=seed)
    if tidy.empty:
        return pd.DataFrame(columns=[*group_cols, *value_cols, "n"])
    tidy["text"] = [
        format_interval(r.mean, r.std, r.ci_lo, r.ci_hi, digits) for r in tidy.itertuples()
    ]
    # One row per group that has data: unstacking (unlike a pivot) never forms the cartesian
    # product of the group columns' values.
    wide = tidy.set_index([*group_cols, "metric"])["text"].unstack("metric")
    wide = wide[[c for c in value_cols if c in wide.columns]].reset_index()
    wide.columns.name = None
    sizes = df.groupby(list(group_cols), sort=True, dropna=False).size().rename("n").reset_index()
    return wide.merge(sizes, on=list(group_cols), how="left")


def paired_difference(
    df: pd.DataFrame,
    value: str,
    *,
    condition_col: str,
    a: object,
    b: object,
    pair_col: str = "seed",
    count_col: str = "n_images",
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Interval:
    """Mean of ``value`` under ``b`` minus under ``a``, paired on ``pair_col``, with its interval.

    For an accuracy, seeds present under both conditions are resampled jointly, then each
    condition's entries inside each drawn seed (binomially, as in :func:`mean_interval`). Other
    metrics get a paired Student-t interval over the per-seed differences. A difference is
    supported at ``level`` when the interval excludes 0.

    Raises:
        ValueError: no seed appears under both conditions.

    Example:
        >>> df = pd.DataFrame({"defense": ["none"] * 3 + ["ls"] * 3, "seed": [0, 1, 2] * 2,
        ...                    "acc1": [0.6, 0.5, 0.55, 0.2, 0.25, 0.3], "n_images": [25] * 6})
        >>> d = paired_difference(df, "acc1", condition_col="defense", a="none", b="ls")
        >>> round(d.mean, 2), d.hi < 0
        (-0.3, True)
    """
    left = df[df[condition_col] == a].set_index(pair_col)
    right = df[df[condition_col] == b].set_index(pair_col)
    common = sorted(set(left.index) & set(right.index))
    if not common:
        raise ValueError(f"no {pair_col} appears under both {a!r} and {b!r}")
    va = left.loc[common, value].to_numpy(dtype=float)
    vb = right.loc[common, value].to_numpy(dtype=float)
    diff = vb - va
    mean = float(diff.mean())
    std = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
    alpha = (1 - level) / 2
    rng = _rng(seed)
    pick = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    if value in ACCURACY_METRICS and count_col in left and count_col in right:
        na = left.loc[common, count_col].to_numpy(dtype=np.int64).clip(min=1)
        nb = right.loc[common, count_col].to_numpy(dtype=np.int64).clip(min=1)
        boot_a = rng.binomial(na[pick], va[pick]) / na[pick]
        boot_b = rng.binomial(nb[pick], vb[pick]) / nb[pick]
        boot = (boot_b - boot_a).mean(axis=1)
        entries = int(na.sum() + nb.sum())
    else:
        # Continuous metrics: a paired t-interval on the per-seed differences (a percentile
        # bootstrap over 3 seeds would only span the observed differences).
        iv = mean_interval(diff, level=level)
        return Interval(mean, std, iv.lo, iv.hi, len(diff), 0, iv.method)
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return Interval(mean, std, float(lo), float(hi), len(diff), entries, "bootstrap")


def paired_table(
    df: pd.DataFrame,
    value: str,
    *,
    condition_col: str,
    reference: object,
    group_cols: Sequence[str] = ("attack",),
    pair_col: str = "seed",
    digits: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Every condition against ``reference`` on the same seeds, per group (e.g. per attack).

    Returns one row per (group, condition): the paired mean difference of ``value`` (condition
    minus reference), its interval, and ``supported``: whether the interval excludes 0.

    Example:
        >>> df = pd.DataFrame({"attack": ["gmi"] * 4, "defense": ["none", "none", "ls", "ls"],
        ...                    "seed": [0, 1, 0, 1], "acc1": [0.6, 0.5, 0.2, 0.1],
        ...                    "n_images": [25] * 4})
        >>> t = paired_table(df, "acc1", condition_col="defense", reference="none")
        >>> t["defense"].tolist(), round(float(t["mean_diff"].iloc[0]), 2), t["supported"].tolist()
        (['ls'], -0.4, [True])
    """
    rows = []
    for key, group in df.groupby(list(group_cols), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        if not (group[condition_col] == reference).any():
            continue
        for cond in sorted(set(group[condition_col]) - {reference}, key=str):
            sub = group[group[condition_col].isin([reference, cond])]
            try:
                d = paired_difference(
                    sub,
                    value,
                    condition_col=condition_col,
                    a=reference,
                    b=cond,
                    pair_col=pair_col,
                    seed=seed,
                )
            except ValueError:  # no seed under both: nothing to pair, reported as such
                continue
            if not math.isfinite(d.mean):
                continue
            rows.append(
                {
                    **dict(zip(group_cols, key, strict=True)),
                    condition_col: cond,
                    "metric": value,
                    "difference": f"{d.mean:+.{digits}f} [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}]".replace(
                        "+-", "-"
                    ),
                    "mean_diff": d.mean,
                    "ci_lo": d.lo,
                    "ci_hi": d.hi,
                    "n_seeds": d.n_seeds,
                    "supported": bool(d.lo > 0 or d.hi < 0),
                }
            )
    return pd.DataFrame(rows)
