"""Containers for images and for the private/public split every MI study starts from."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


class ImageSet(Dataset):
    """An in-memory labelled image set: (N, C, H, W) images in [0, 1] plus (N,) int64 labels.

    Images may be stored as uint8 (0..255, for large real datasets: 4x less memory) or float32 in
    [0, 1]; indexing and :attr:`images` always give float32 in [0, 1]. A label of -1 marks an
    image whose label the holder may not use (the attacker's public data).

    Args:
        data: (N, C, H, W) uint8 or floating tensor.
        labels: (N,) int64 labels (-1 for unlabelled).

    Example:
        >>> s = ImageSet(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 1]))
        >>> len(s), s[2][0].dtype, s.class_counts()
        (3, torch.float32, {0: 1, 1: 2})
    """

    def __init__(self, data: Tensor, labels: Tensor) -> None:
        if data.ndim != 4:
            raise ValueError(f"data must have shape (N, C, H, W), got {tuple(data.shape)}")
        if labels.shape != (data.shape[0],):
            raise ValueError(
                f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}"
            )
        if data.dtype != torch.uint8 and not data.is_floating_point():
            raise ValueError(f"data must be uint8 or floating point, got {data.dtype}")
        self.data = data if data.dtype == torch.uint8 else data.float()
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.data[i]
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x), self.labels[i]

    @property
    def images(self) -> Tensor:
        """All images as float32 in [0, 1] (materialised; mind memory on large sets)."""
        return self.data.float() / 255.0 if self.data.dtype == torch.uint8 else self.data

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.data.shape[1:])

    def subset(self, index: Tensor) -> ImageSet:
        """A new set holding rows ``index`` (int64 indices or a boolean mask)."""
        return ImageSet(self.data[index], self.labels[index])

    def of_class(self, c: int) -> ImageSet:
        """Rows whose label is ``c``."""
        return self.subset(self.labels == c)

    def class_counts(self) -> dict[int, int]:
        """Label -> number of images."""
        vals, counts = self.labels.unique(return_counts=True)
        return {int(v): int(n) for v, n in zip(vals, counts)}

    def unlabelled(self) -> ImageSet:
        """The same images with every label set to -1 (what an attacker may see of public data)."""
        return ImageSet(self.data, torch.full_like(self.labels, -1))

    @staticmethod
    def concat(*sets: ImageSet) -> ImageSet:
        """Concatenate sets of equal image shape (uint8 is promoted to float if dtypes differ)."""
        dtypes = {s.data.dtype for s in sets}
        datas = [s.data for s in sets] if len(dtypes) == 1 else [s.images for s in sets]
        return ImageSet(torch.cat(datas), torch.cat([s.labels for s in sets]))


@dataclass(frozen=True)
class MISplit:
    """The data of one model-inversion setting.

    Attributes:
        name: Dataset key (``"mnist5k"``, ``"celeba"``, ...).
        private_train: Target's training set, labels in [0, num_classes).
        private_test: Held-out private images of the same classes (target test accuracy).
        public: The attacker's auxiliary images; labels are all -1 (never usable by attacks).
        evaluator_train: Training set of the evaluation model, in the evaluator's label space.
        evaluator_test: Its held-out set.
        num_classes: Number of private classes K (the target's output size).
        evaluator_num_classes: Output size of the evaluator.
        private_to_evaluator: (K,) int64, evaluator label of each private class.
        class_names: Human-readable name of each private class.
        info: Provenance (split seed, source paths, resolution, ...), recorded with results.
        public_labels: (len(public),) int64 labels of the public images' own classes (digits
            5-9, public identities: disjoint from the private classes), for attacks whose threat
            model includes a labelled public dataset (C2FMI's embedding network is trained on
            one); None when the dataset provides none. Never a private class.
    """

    name: str
    private_train: ImageSet
    private_test: ImageSet
    public: ImageSet
    evaluator_train: ImageSet
    evaluator_test: ImageSet
    num_classes: int
    evaluator_num_classes: int
    private_to_evaluator: Tensor
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    public_labels: Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) shared by every set of the split."""
        return self.private_train.image_shape

    def summary(self) -> dict[str, Any]:
        """Sizes and class counts, for tables and logs."""
        return {
            "dataset": self.name,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "private_train": len(self.private_train),
            "private_test": len(self.private_test),
            "public": len(self.public),
            "evaluator_classes": self.evaluator_num_classes,
            "evaluator_train": len(self.evaluator_train),
            "evaluator_test": len(self.evaluator_test),
        }


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root, image folder or annotation file is missing; the message says what goes where.

    A subclass of :class:`FileNotFoundError`, so callers catching that keep working.
    """


class CorruptImageError(OSError):
    """Image files exist but cannot be decoded (truncated download, half-extracted archive, ...).

    The message names every such file and says how to repair it. A subclass of :class:`OSError`
    (what PIL raises for a truncated or unidentifiable file), so callers catching that keep working.

    Attributes:
        paths: The unreadable files, in loading order.
    """

    def __init__(self, message: str, paths: Sequence[str | os.PathLike[str]] = ()) -> None:
        super().__init__(message)
        self.paths = [Path(p) for p in paths]
