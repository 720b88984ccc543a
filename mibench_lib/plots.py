"""Figures of the studies: trend plots with error bands and reconstruction grids.

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
) -> Axes:
    """Mean of ``y`` against ``x`` per ``hue`` with a +/- 1 std band over the remaining rows (seeds).

    ``x`` is grouped as given (use a rounded or categorical column, e.g. the accuracy threshold).
    """
    ax = ax or plt.subplots(figsize=(5.5, 4))[1]
    sns.lineplot(
        data=df,
        x=x,
        y=y,
        hue=hue,
        style=hue,
        markers=True,
        dashes=False,
        errorbar="sd",
        err_style="band",
        ax=ax,
    )
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
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
