"""Shared fixtures for the attack tests: a trained tiny target, a digits decoder as generator.

The target is a TinyClassifier trained on the even-indexed 8x8 digits 0-3 ("private" half). The
generator is a TinyGenerator fitted as a decoder of the odd-indexed digits 0-3 ("public" half)
from their standardised 8-d PCA codes, so that z ~ N(0, I) gives digit-like images of every class.
Both take about a second on 2 cores and are shared by the whole session; tests never train them.

The attack tests run single-threaded: their tensors are tiny, so intra-op threads gain nothing,
and on a busy 2-core machine the thread pool's waiting made them 10-40x slower (measured).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mibench_lib.testing import TinyClassifier, TinyGenerator, tiny_digits


@contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_module() -> Iterator[None]:
    with _one_thread():
        yield


def _digits_0_to_3() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = tiny_digits()
    keep = y < 4
    return x[keep], y[keep]


@pytest.fixture(scope="session")
def digits_target() -> TinyClassifier:
    """TinyClassifier (4 classes) trained on the even-indexed digits 0-3; eval mode."""
    x, y = _digits_0_to_3()
    x, y = x[0::2], y[0::2]
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=4).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    with _one_thread():
        for _ in range(80):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_generator() -> TinyGenerator:
    """TinyGenerator (latent 8) fitted to decode the odd-indexed digits 0-3; eval mode."""
    x, _ = _digits_0_to_3()
    x = x[1::2]
    flat = x.flatten(1)
    centred = flat - flat.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=8, center=False)
    codes = centred @ v
    codes = codes / codes.std(0)
    torch.manual_seed(0)
    gen = TinyGenerator(latent_dim=8).train()
    opt = torch.optim.Adam(gen.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(1)
    with _one_thread():
        for _ in range(120):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = F.mse_loss(gen(codes[idx]), x[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return gen.eval()


@pytest.fixture
def buffer_hash() -> Callable[..., str]:
    """sha256 over every buffer (BatchNorm running stats, counters) of the given modules."""

    def digest(*modules: nn.Module) -> str:
        h = hashlib.sha256()
        for module in modules:
            for name, buf in module.named_buffers():
                h.update(name.encode())
                h.update(buf.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    return digest


@pytest.fixture
def label_prob() -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """p_y of each image under a model (evaluated directly, outside any oracle)."""

    @torch.no_grad()
    def prob(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.softmax(model(images), dim=1).gather(1, labels[:, None]).squeeze(1)

    return prob
