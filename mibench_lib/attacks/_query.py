"""What every query-access attack shares: scores from any release, and the query budget.

An attack written for probabilities may be deployed behind an output defense that releases less
(top-k, labels only, rounded or noisy scores). It then works with what it gets:
:func:`released_scores` turns any release into an (N, K) score matrix (probabilities as released,
zeros outside a top-k, one-hot rows for labels) so that the defense acts on the attack exactly as
it would on a real adversary who reads the API's answers.

Budgets are the oracle's: :func:`affordable` says how many of the next queries fit, so a search
stops cleanly when the budget runs out and returns the best it found (the oracle would raise
:class:`~mibench_lib.oracle.QueryBudgetExceeded` on the query that does not fit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib.oracle import TargetOracle

__all__ = ["affordable", "released_scores"]


def released_scores(oracle: TargetOracle, images: Tensor, *, chunk: int | None = None) -> Tensor:
    """The oracle's answers for ``images`` as (N, K) float scores on the oracle's device.

    - ``"probabilities"`` and ``"top-k"``: the released rows as they are (a top-k row has zeros
      outside its k largest entries; a defense may have rounded or perturbed them);
    - ``"logits"``: softmax of the released logits;
    - ``"label"``: one-hot rows of the released labels;
    - ``"white-box"``: softmax of the logits, computed without autograd (a score-based attack
      never differentiates through the target).

    Every image is one query, whatever the level. ``chunk`` sends at most that many images per
    oracle call (same queries, same count).

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> oracle = TargetOracle(tiny_classifier(), access="label")
        >>> released_scores(oracle, torch.rand(2, 1, 8, 8)).sum(dim=1).tolist(), oracle.queries
        ([1.0, 1.0], 2)
    """
    if chunk is not None and images.shape[0] > chunk:
        return torch.cat([released_scores(oracle, part) for part in images.split(chunk)])
    with torch.no_grad():
        out = oracle(images.detach())
        if oracle.access == "label":
            return F.one_hot(out.long(), oracle.num_classes).float()
        if oracle.access in ("logits", "white-box"):
            return F.softmax(out.float(), dim=1)
        return out.float()


def affordable(oracle: TargetOracle, n: int) -> int:
    """How many of ``n`` further queries the oracle's budget still answers (``n`` when unlimited).

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> affordable(TargetOracle(tiny_classifier(), access="label", budget=5), 8)
        5
    """
    remaining = oracle.remaining
    return n if remaining is None else max(0, min(n, remaining))
