"""Figures of the studies: trends and privacy-utility curves with 95 % intervals, image grids.

Every function draws on an ``ax`` (created when None) and returns it, so notebooks compose figures
and save them through :func:`mibench_lib.studies.records.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mibench_lib.data._types import ImageSet
from mibench_lib.stats import ACCURACY_METRICS, tidy_summary


def _accuracy_axis(ax: Axes, metric: str, axis: str = "y") -> None:
    """Fix an accuracy axis to [0, 1] so that a flat line never looks like a trend."""
    if metric in ACCURACY_METRICS:
        (ax.set_ylim if axis == "y" else ax.set_xlim)(-0.02, 1.02)


def _half_widths(tidy: pd.DataFrame) -> np.ndarray:
    """(2, n) distances from each mean down and up to its interval ends, for ``errorbar``."""
    return np.vstack([tidy["mean"] - tidy["ci_lo"], tidy["ci_hi"] - tidy["mean"]])


def _draw_floors(ax: Axes, floors: Mapping[str, float] | None) -> None:
    """Trivial reference levels as dotted horizontal lines, labelled at the left edge."""
    for j, (label, value) in enumerate((floors or {}).items()):
        ax.axhline(value, color="0.4", ls=":", lw=1)
        ax.annotate(
            label,
            (0.01, value),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="0.3",
            va="bottom",
            xytext=(0, 1 + 8 * (j % 2)),  # alternate heights: equal floors stay readable
            textcoords="offset points",
        )


def plot_trend(
    df: pd.DataFrame,
    *,
    x: str,
    y: str,
    hue: str = "attack",
    ax: Axes | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    floors: Mapping[str, float] | None = None,
    dodge: float = 0.01,
    band: bool = False,
) -> Axes:
    """Mean of ``y`` against ``x`` per ``hue``, each point with its 95 % interval as an error bar.

    The intervals are those of :func:`mibench_lib.stats.tidy_summary` (two-stage bootstrap over
    seeds and entries for accuracies, t over seeds otherwise). Accuracy axes span [0, 1].
    ``x`` is grouped as given (use a rounded or categorical column, e.g. the accuracy threshold).

    Args:
        floors: Label -> value of trivial reference points (e.g. a blank image's Acc@1), drawn as
            dotted horizontal lines.
        dodge: Sideways shift between curves, as a fraction of the x range (numeric x only).
        band: Draw each 95 % interval as a shaded band between the points instead of error bars.
    """
    ax = ax or plt.subplots(figsize=(5.5, 4))[1]
    tidy = tidy_summary(df, [hue, x], [y])
    palette = sns.color_palette(n_colors=max(1, tidy[hue].nunique()))
    markers = "osD^vP*X"
    xs = pd.to_numeric(tidy[x], errors="coerce")
    # Shift each curve sideways a little so that equal means do not hide each other's bars.
    step = dodge * float(xs.max() - xs.min() or 1.0) if xs.notna().all() else 0.0
    n_curves = tidy[hue].nunique()
    for i, (name, grp) in enumerate(tidy.groupby(hue, sort=False)):
        grp = grp.sort_values(x)
        err = _half_widths(grp)
        shift = (i - (n_curves - 1) / 2) * step
        xs_i = grp[x] + shift if step and not band else grp[x]
        color = palette[i % len(palette)]
        ax.errorbar(
            xs_i,
            grp["mean"],
            yerr=None if band else np.nan_to_num(err),
            label=str(name),
            color=color,
            marker=markers[i % len(markers)],
            capsize=3,
        )
        if band:
            below, above = np.nan_to_num(err)  # (2, n): distances to the lower and upper bound
            mean = grp["mean"].to_numpy()
            ax.fill_between(xs_i, mean - below, mean + above, color=color, alpha=0.18)
    _draw_floors(ax, floors)
    _accuracy_axis(ax, y)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_budget_curves(
    df: pd.DataFrame,
    *,
    x: str = "budget_per_class",
    y: str = "acc1",
    hue: str = "attack",
    official: Mapping[str, float] | None = None,
    ax: Axes | None = None,
    floors: Mapping[str, float] | None = None,
) -> Axes:
    """Attack success against the query budget on a log axis, one curve per attack.

    Each point is the mean over seeds with its 95 % interval as a band (:func:`plot_trend`);
    ``official`` marks each attack's official budget (same unit as ``x``) as a dashed vertical
    line in the attack's colour, with a triangle on the top edge: where the paper's setting lies,
    even when it is off the measured range (the axis then extends to show it).
    """
    ax = plot_trend(df, x=x, y=y, hue=hue, ax=ax, floors=floors, dodge=0.0, band=True)
    ax.set_xscale("log")
    colours = {
        label: handle.lines[0].get_color() if hasattr(handle, "lines") else handle.get_color()
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)
    }
    for name, budget in (official or {}).items():
        if name not in colours or not budget or not np.isfinite(budget):
            continue
        ax.axvline(budget, color=colours[name], ls="--", lw=1)
        ax.plot(
            [budget],
            [1.0],
            marker="v",
            color=colours[name],
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    ax.legend(fontsize=8, title="dashed: official budget", title_fontsize=7)
    return ax


def plot_privacy_utility(
    df: pd.DataFrame,
    *,
    attack: str,
    curve: str = "defense",
    point: str = "defense_label",
    x: str = "natural_acc",
    y: str = "acc1",
    ax: Axes | None = None,
    floors: Mapping[str, float] | None = None,
) -> Axes:
    """The privacy-utility plane of one attack: one curve per defense across its knob values.

    Every point is a (defense, knob value) condition: natural accuracy (x) against attack
    success (y), each with its 95 % interval as an error bar. Points of one ``curve`` are joined
    in order of their natural accuracy. Accuracy axes span [0, 1] on y; x is left to the data.
    A defense keeps its colour and marker across calls on the same ``df`` (one per attack panel),
    and each panel carries its own legend.
    """
    ax = ax or plt.subplots(figsize=(5.5, 4.3))[1]
    sub = df[df["attack"] == attack]
    tx = tidy_summary(sub, [curve, point], [x]).set_index([curve, point])
    ty = tidy_summary(sub, [curve, point], [y]).set_index([curve, point])
    # Colours and markers follow the curve's place among all curves of ``df``, not of this attack,
    # so that one defense looks the same in every panel of a figure.
    every = sorted(df[curve].unique(), key=str)
    palette = sns.color_palette(
        "tab10" if len(every) <= 10 else "husl", n_colors=max(1, len(every))
    )
    markers = "osD^vP*Xh<>"
    for name in sorted(sub[curve].unique(), key=str):
        i = every.index(name)
        px, py = tx.loc[name].sort_values("mean"), ty.loc[name]
        py = py.loc[px.index]
        xerr = np.nan_to_num(_half_widths(px))
        yerr = np.nan_to_num(_half_widths(py))
        ax.errorbar(
            px["mean"],
            py["mean"],
            xerr=xerr,
            yerr=yerr,
            label=str(name),
            color=palette[i % len(palette)],
            marker=markers[i % len(markers)],
            capsize=2,
        )
    _draw_floors(ax, floors)
    _accuracy_axis(ax, y)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(attack)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return ax


def plot_attack_plane(
    df: pd.DataFrame,
    *,
    x: str = "delta_eval",
    y: str = "acc1",
    point: str = "attack",
    style: str = "family",
    ax: Axes | None = None,
    floors: Mapping[str, float] | None = None,
) -> Axes:
    """Every attack as one point: mean ``x`` against mean ``y``, each with its 95 % interval.

    Points are coloured by ``point`` (one colour each, labelled next to the point) and shaped by
    ``style`` (the threat-model family), so that white-box, black-box and label-only attacks
    stand apart. The intervals are those of the tables (:func:`~mibench_lib.stats.tidy_summary`:
    a two-stage bootstrap for accuracies, t over seeds otherwise).
    """
    ax = ax or plt.subplots(figsize=(6.5, 4.8))[1]
    groups = [point, style]
    tx = tidy_summary(df, groups, [x]).set_index(groups)
    ty = tidy_summary(df, groups, [y]).set_index(groups)
    names = sorted(df[point].unique(), key=str)
    styles = sorted(df[style].unique(), key=str)
    palette = sns.color_palette("tab10" if len(names) <= 10 else "husl", n_colors=len(names))
    markers = dict(zip(styles, "osD^vP*X", strict=False))
    seen: set[str] = set()
    for key in tx.index:
        px, py = tx.loc[[key]], ty.loc[[key]]
        if not (np.isfinite(px["mean"]).all() and np.isfinite(py["mean"]).all()):
            continue  # e.g. a run whose budget ran out: nothing to place
        fam = key[1]
        ax.errorbar(
            px["mean"],
            py["mean"],
            xerr=np.nan_to_num(_half_widths(px)),
            yerr=np.nan_to_num(_half_widths(py)),
            color=palette[names.index(key[0])],
            marker=markers.get(fam, "o"),
            ms=7,
            capsize=2,
            ls="none",
            label=None if fam in seen else str(fam),
        )
        seen.add(fam)
        ax.annotate(
            str(key[0]),
            (float(px["mean"].iloc[0]), float(py["mean"].iloc[0])),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    _draw_floors(ax, floors)
    _accuracy_axis(ax, y)
    _accuracy_axis(ax, x, axis="x")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    # the legend shows the families' markers; the colours are named next to each point
    handles = [
        plt.Line2D([], [], color="0.3", marker=markers[f], ls="none", label=str(f))
        for f in styles
        if f in seen
    ]
    ax.legend(handles=handles, fontsize=7, loc="best", title=style, title_fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def plot_per_class(
    tidy: pd.DataFrame,
    *,
    row: str = "attack",
    column: str = "class",
    value: str = "acc1",
    ax: Axes | None = None,
    class_names: Sequence[str] | None = None,
) -> Axes:
    """Heat map of ``value`` (mean over seeds) per ``row`` and class, annotated, on [0, 1]."""
    table = tidy.groupby([row, column])[value].mean().unstack(column)
    if class_names is not None:
        table.columns = [class_names[int(c)] for c in table.columns]
    ax = ax or plt.subplots(figsize=(1.0 + 0.7 * table.shape[1], 0.8 + 0.4 * table.shape[0]))[1]
    sns.heatmap(
        table,
        ax=ax,
        vmin=0,
        vmax=1,
        cmap="viridis",
        annot=True,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        cbar_kws={"label": f"{value} (mean over seeds)"},
    )
    ax.set_xlabel(column)
    ax.set_ylabel(row)
    return ax


def _to_hw(img: Tensor) -> np.ndarray:
    img = img.detach().cpu().clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def plot_reconstruction_grid(
    rows: Mapping[str, tuple[Tensor, Tensor]],
    private: ImageSet,
    classes: Sequence[int],
    *,
    per_class: int = 2,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Real private samples of each class above each attack's reconstructions of that class.

    Args:
        rows: attack name -> (images (N, C, H, W) in [0, 1], labels (N,)); up to ``per_class``
            images per class are shown.
        private: The private training set (first ``per_class`` images of each class are shown).
        classes: Private class ids, one column group each.
        per_class: Images per class and row.
    """
    names = ["private (real)", *rows]
    ncols = len(classes) * per_class
    fig, axes = plt.subplots(
        len(names), ncols, figsize=(0.9 * ncols + 1.2, 0.95 * len(names) + 0.5), squeeze=False
    )
    sources = {"private (real)": (private.images[: len(private)], private.labels), **rows}
    for r, name in enumerate(names):
        imgs, labels = sources[name]
        for ci, c in enumerate(classes):
            idx = torch.nonzero(labels == c).flatten()[:per_class]
            for j in range(per_class):
                ax = axes[r, ci * per_class + j]
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if j < len(idx):
                    ax.imshow(_to_hw(imgs[idx[j]]), cmap="gray", vmin=0, vmax=1)
                if r == 0 and j == 0:
                    ax.set_title(class_names[c] if class_names else str(c), fontsize=8, loc="left")
            if ci == 0:
                axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_grid(
    images: Tensor, *, nrow: int = 8, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """A plain grid of images (e.g. samples of the GAN prior)."""
    from torchvision.utils import make_grid

    ax = ax or plt.subplots(figsize=(6, 6 * ((images.shape[0] + nrow - 1) // nrow) / nrow))[1]
    grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if images.shape[1] == 1 else None)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def plot_partial_grid(
    rows: Mapping[str, Tensor],
    labels: Tensor,
    *,
    class_names: Sequence[str] | None = None,
    max_columns: int = 10,
    title: str | None = None,
) -> Figure:
    """Partial-image recovery: one row per image set (masked input, fills, the hidden original).

    Args:
        rows: Row label -> (N, C, H, W) images in [0, 1], entry ``i`` of every row being the same
            private image (e.g. ``{"held (masked)": ..., "secretgen": ..., "original": ...}``).
        labels: (N,) class of each entry (column titles).
        max_columns: At most this many entries are shown.
    """
    n = min(int(labels.numel()), max_columns)
    fig, axes = plt.subplots(
        len(rows), n, figsize=(0.95 * n + 1.4, 1.0 * len(rows) + 0.5), squeeze=False
    )
    for r, (name, images) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            ax.imshow(_to_hw(images[j]), cmap="gray", vmin=0, vmax=1)
            if r == 0:
                c = int(labels[j])
                ax.set_title(class_names[c] if class_names else str(c), fontsize=8, loc="left")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
