"""Helpers shared by attacks that hold frozen networks (generator, critic, white-box target)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put frozen networks in eval mode (BatchNorm uses, and never updates, running stats).

    On exit the caller's mode of *every* submodule is restored exactly, not just the outer
    module's: a network with mixed flags (e.g. a wrapper in train mode around a BatchNorm the user
    froze in eval mode) comes back as it was, so the caller's next forward pass updates only the
    statistics it updated before. Parameters' ``requires_grad`` flags are not touched (attacks
    differentiate with respect to their latents only). ``None`` entries are skipped; a submodule
    shared by several networks is handled once.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> _ = net[1].eval()
        >>> with eval_mode(net):
        ...     net.training, net[0].training
        (False, False)
        >>> net.training, net[0].training, net[1].training
        (True, True, False)
    """
    saved: dict[int, tuple[nn.Module, bool]] = {}
    for root in modules:
        if root is None:
            continue
        for m in root.modules():
            saved.setdefault(id(m), (m, m.training))
    for root in modules:
        if root is not None:
            root.eval()
    try:
        yield
    finally:
        for m, mode in saved.values():
            m.training = mode
