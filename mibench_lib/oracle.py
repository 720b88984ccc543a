"""The threat-model oracle: the only door through which an attack reaches a target model.

A released model is reached at one of five access levels:

============== ===================================================================
access          what a query returns
============== ===================================================================
white-box       logits with the autograd graph; ``oracle.module`` gives the model
logits          detached logits
probabilities   detached softmax probabilities
top-k           detached probabilities with all but the ``top_k`` largest set to 0
label           detached int64 predicted labels, shape (N,)
============== ===================================================================

Every image sent counts as one query, at every access level. A ``budget`` caps the count: the
query that would exceed it raises :class:`QueryBudgetExceeded` before the model runs. Black-box
answers are computed without autograd and detached, so no gradient path leads back into the model.
Output-processing defenses plug in as ``postprocess``: a function applied to the released
probabilities before the access level truncates them (white-box callers bypass it by definition).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Access = Literal["white-box", "logits", "probabilities", "top-k", "label"]
ACCESS_LEVELS: tuple[str, ...] = ("white-box", "logits", "probabilities", "top-k", "label")


class QueryBudgetExceeded(RuntimeError):
    """A query would take the oracle past its query budget."""


class AccessDenied(PermissionError):
    """The caller asked for something its access level does not release."""


class TargetOracle:
    """Access-controlled, query-counting view of a target classifier.

    Args:
        model: The target classifier, (N, C, H, W) in [0, 1] -> (N, K) logits. Put in eval mode.
        access: One of :data:`ACCESS_LEVELS`.
        budget: Maximum number of images the oracle answers in total; ``None`` for no limit.
        top_k: Number of probabilities released at access ``"top-k"``.
        postprocess: Output defense, (N, K) probabilities -> (N, K) probabilities, applied to every
            black-box answer (``"logits"`` access then releases the log of the processed
            probabilities). Ignored at white-box access, where the attacker holds the model.

    Raises:
        ValueError: unknown access level, a non-positive budget or ``top_k``.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> oracle = TargetOracle(tiny_classifier(), access="label", budget=10)
        >>> oracle(torch.rand(4, 1, 8, 8)).dtype, oracle.queries
        (torch.int64, 4)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        access: Access = "white-box",
        budget: int | None = None,
        top_k: int = 5,
        postprocess: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
        if budget is not None and budget <= 0:
            raise ValueError(f"budget must be a positive number of queries or None, got {budget}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self._model = model.eval()
        self.access: str = access
        self.budget = budget
        self.top_k = top_k
        self.postprocess = postprocess
        self._queries = 0

    # -- what every attacker may know -------------------------------------------------------
    @property
    def queries(self) -> int:
        """Number of images answered so far."""
        return self._queries

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget (``None`` when unlimited)."""
        return None if self.budget is None else self.budget - self._queries

    @property
    def num_classes(self) -> int:
        """Number of output classes of the target (public knowledge in every threat model)."""
        return int(self._model.num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the target accepts."""
        return tuple(self._model.input_shape)

    @property
    def device(self) -> torch.device:
        """Device the target lives on; queries are moved there."""
        return next(self._model.parameters()).device

    @property
    def is_white_box(self) -> bool:
        """True when the attacker holds the model itself."""
        return self.access == "white-box"

    @property
    def module(self) -> nn.Module:
        """The target model itself; only white-box attackers may have it.

        Raises:
            AccessDenied: for every access level but ``"white-box"``.
        """
        if self.access != "white-box":
            raise AccessDenied(
                f"a {self.access!r} oracle does not release the model; white-box only"
            )
        return self._model

    # -- queries -----------------------------------------------------------------------------
    def _charge(self, n: int) -> None:
        if self.budget is not None and self._queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget exhausted: {self._queries} used + {n} requested > budget {self.budget}"
            )
        self._queries += n

    def __call__(self, images: Tensor) -> Tensor:
        """Answer one batch of queries at this oracle's access level.

        Args:
            images: (N, C, H, W) in [0, 1]; moved to the target's device.

        Returns:
            White-box: (N, K) logits attached to the graph. ``"logits"``: (N, K) detached logits.
            ``"probabilities"``: (N, K) detached probabilities. ``"top-k"``: (N, K) probabilities
            with all but the k largest per row set to 0 (not renormalised). ``"label"``: (N,) int64.

        Raises:
            QueryBudgetExceeded: the batch would take the count past the budget (nothing is run).
            ValueError: ``images`` is not a 4-D batch of the target's input shape.
        """
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"queries must have shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(images.shape)}"
            )
        self._charge(images.shape[0])
        images = images.to(self.device)
        if self.access == "white-box":
            return self._model(images)
        with torch.inference_mode():
            logits = self._model(images.detach())
            out = self._release(logits)
        # clone outside inference mode: an ordinary tensor that attackers may use freely,
        # carrying no autograd history back into the target.
        return out.clone()

    def _release(self, logits: Tensor) -> Tensor:
        if self.postprocess is None and self.access == "logits":
            return logits.float()
        probs = F.softmax(logits.float(), dim=1)
        if self.postprocess is not None:
            probs = self.postprocess(probs)
        if self.access == "logits":
            return probs.clamp_min(1e-30).log()
        if self.access == "probabilities":
            return probs
        if self.access == "top-k":
            k = min(self.top_k, probs.shape[1])
            vals, idx = probs.topk(k, dim=1)
            return torch.zeros_like(probs).scatter_(1, idx, vals)
        return probs.argmax(dim=1)

    def __repr__(self) -> str:
        return (
            f"TargetOracle(access={self.access!r}, queries={self._queries}, budget={self.budget})"
        )
