"""Helpers shared by attacks that hold frozen networks (generator, critic, white-box target)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put frozen networks in eval mode (BatchNorm uses, and never updates, running stats).

    The caller's train/eval modes are restored on exit.
    """
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
