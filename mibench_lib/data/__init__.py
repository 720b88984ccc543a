"""Datasets of the benchmark, each loaded as a :class:`MISplit` (private, public, evaluator data).

``DATASETS`` maps a name to its loader; :func:`load_dataset` calls one by name with keyword
arguments (the form parameter files use). ``mnist5k`` and ``digits`` ship with installed packages;
``celeba``, ``facescrub`` and ``imagefolder`` read local folders, and :func:`ffhq` loads a folder of
faces as public data only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mibench_lib.data._types import DatasetNotFoundError, ImageSet, MISplit
from mibench_lib.data.celeba import celeba
from mibench_lib.data.digits import digits
from mibench_lib.data.ffhq import ffhq
from mibench_lib.data.imagefolder import facescrub, imagefolder
from mibench_lib.data.mnist5k import mnist5k

DATASETS: dict[str, Callable[..., MISplit]] = {
    "mnist5k": mnist5k,
    "digits": digits,
    "celeba": celeba,
    "facescrub": facescrub,
    "imagefolder": imagefolder,
}


def load_dataset(name: str, **kwargs: Any) -> MISplit:
    """Load the dataset registered as ``name`` with the loader's own keyword arguments.

    Args:
        name: A key of :data:`DATASETS`.
        **kwargs: Arguments of that loader (``root=...`` for the on-disk datasets).

    Returns:
        The loader's :class:`MISplit`.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names).
        TypeError: A keyword the loader does not accept (named, with the accepted ones).

    Example:
        >>> load_dataset("digits", split_seed=1).summary()["public"]
        896
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    loader = DATASETS[name]
    accepted = list(inspect.signature(loader).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"dataset {name!r} got unknown argument(s) {unknown}; it accepts {accepted}"
        )
    return loader(**kwargs)


__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageSet",
    "MISplit",
    "celeba",
    "digits",
    "facescrub",
    "ffhq",
    "imagefolder",
    "load_dataset",
    "mnist5k",
]
