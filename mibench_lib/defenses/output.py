"""Output-processing defenses: what the deployed model releases per query, not how it is trained.

- Rounding: Fredrikson, Jha and Ristenpart, "Model Inversion Attacks that Exploit Confidence
  Information and Basic Countermeasures", CCS 2015, https://doi.org/10.1145/2810103.2813677
  (Section 7: release confidences rounded to a coarse grid); default 3 decimals as in the
  Adversarial Robustness Toolbox's ``Rounded`` postprocessor.
- Top-k: release only the k largest probabilities (the others as 0).
- Label only: release the predicted class alone.
- Gaussian noise: add N(0, scale^2) to each probability, clip at 0 and renormalise, with a fresh
  draw for every query (ART ``GaussianNoise``, default scale 0.2).

Each constructor returns a :class:`Defense` with ``postprocess`` (a function on (N, K)
probabilities that the oracle applies to every black-box answer, in every phase of an attack)
and/or ``release`` (the access level the defense caps answers at). :func:`defended_oracle` builds
the oracle an attacker of a given access level gets from a defended deployment.

White-box attackers hold the model itself and bypass all of these by definition; the oracle
ignores ``postprocess`` for them, so white-box results are identical with and without an output
defense.

These defenses make finite-difference gradients useless (rounding) or remove scores (top-k,
label), but they do not stop search-based attacks (genetic algorithms, label-only attacks), and
averaging repeated queries defeats fresh noise at a price in queries, which the oracle counts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mibench_lib.defenses._defense import Defense
from mibench_lib.oracle import ACCESS_LEVELS, TargetOracle

__all__ = [
    "defended_oracle",
    "effective_access",
    "gaussian_noise_defense",
    "label_only_defense",
    "rounding_defense",
    "top_k_defense",
]


def round_probabilities(probs: Tensor, *, decimals: int) -> Tensor:
    """Round every probability to the nearest multiple of ``10**-decimals`` (halves to even).

    Rows are not renormalised (that would move values off the grid), so a row may sum to
    slightly more or less than 1, and small probabilities become exactly 0.

    Args:
        probs: (N, K) probabilities.
        decimals: Number of decimals kept (>= 0).

    Returns:
        (N, K) rounded probabilities.
    """
    return torch.round(probs, decimals=decimals)


def rounding_defense(*, decimals: int = 3) -> Defense:
    """Round released probabilities to ``decimals`` decimals (Fredrikson et al., CCS 2015).

    Ties. Rounding can make the top two probabilities equal. Labels derived from the released
    vector (the oracle's ``"label"`` access, or an attacker's argmax) then go to the lowest class
    index among the tied maxima (``torch.argmax`` returns the first maximal index), so the same
    rounded vector always gives the same label; it may differ from the unrounded argmax.

    Args:
        decimals: Decimals kept (>= 0; paper: a coarse grid; ART default 3).

    Returns:
        A :class:`Defense` named ``"rounding"`` (knob ``"decimals"``) with ``postprocess`` set.

    Raises:
        ValueError: ``decimals`` is not a non-negative integer.

    Example:
        >>> rounding_defense(decimals=1).postprocess(torch.tensor([[0.64, 0.26, 0.10]]))
        tensor([[0.6000, 0.3000, 0.1000]])
    """
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative integer, got {decimals!r}")

    def postprocess(probs: Tensor) -> Tensor:
        return round_probabilities(probs, decimals=decimals)

    return Defense(
        "rounding", config={"decimals": decimals}, knob="decimals", postprocess=postprocess
    )


def top_k_defense(*, k: int = 1) -> Defense:
    """Release only the ``k`` largest probabilities of each row; the others are released as 0.

    The kept values are the model's probabilities, not renormalised (rows sum to at most 1), as
    the oracle's ``"top-k"`` access level releases them. The argmax is always kept.

    Args:
        k: Number of probabilities released per row (>= 1).

    Returns:
        A :class:`Defense` named ``"top_k"`` (knob ``"k"``) with ``release="top-k"`` and
        ``top_k=k``.

    Raises:
        ValueError: ``k`` is not a positive integer.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return Defense("top_k", config={"k": k}, knob="k", release="top-k", top_k=k)


def label_only_defense() -> Defense:
    """Release only the predicted label (one int64 per row): the label-only threat model.

    Returns:
        A :class:`Defense` named ``"label_only"`` with ``release="label"``.
    """
    return Defense("label_only", config={}, release="label")


def add_gaussian_noise(probs: Tensor, *, scale: float, rng: torch.Generator | None) -> Tensor:
    """Probabilities plus N(0, scale^2) noise, clipped at 0 and renormalised to sum to 1.

    Noise is drawn on the CPU (from ``rng``, or torch's global generator when None) and moved to
    the device of ``probs``. A row whose every noisy value is <= 0 carries no information and is
    released as the uniform distribution (instead of 0/0).

    Args:
        probs: (N, K) probabilities.
        scale: Standard deviation of the noise (>= 0).
        rng: CPU generator; every call draws fresh noise.

    Returns:
        (N, K) non-negative rows summing to 1.
    """
    noise = torch.randn(probs.shape, generator=rng).to(probs.device, probs.dtype)
    noisy = (probs + scale * noise).clamp_min(0.0)
    total = noisy.sum(dim=1, keepdim=True)
    uniform = torch.full_like(noisy, 1.0 / noisy.shape[1])
    return torch.where(total > 0, noisy / total.clamp_min(torch.finfo(noisy.dtype).tiny), uniform)


def gaussian_noise_defense(*, scale: float = 0.2, rng: torch.Generator | None = None) -> Defense:
    """Perturb released probabilities with fresh Gaussian noise on every query (ART default 0.2).

    Args:
        scale: Noise standard deviation on the probability scale (>= 0).
        rng: CPU generator of the noise, advanced by every query of every oracle built from this
            defense (None: torch's global generator). Not part of ``config``: it changes the
            draws, not the defense.

    Returns:
        A :class:`Defense` named ``"gaussian_noise"`` (knob ``"scale"``) with ``postprocess`` =
        :func:`add_gaussian_noise`.

    Raises:
        ValueError: a negative ``scale``.
    """
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")

    def postprocess(probs: Tensor) -> Tensor:
        return add_gaussian_noise(probs, scale=scale, rng=rng)

    return Defense("gaussian_noise", config={"scale": scale}, knob="scale", postprocess=postprocess)


def effective_access(access: str, release: str | None) -> str:
    """The more restrictive of an attacker's access level and a defense's release cap.

    Order, from most to least revealing: white-box > logits > probabilities > top-k > label. A
    white-box attacker holds the model and is never restricted.

    Args:
        access: The attacker's access level (one of :data:`~mibench_lib.oracle.ACCESS_LEVELS`).
        release: The defense's cap, or None for no cap.

    Returns:
        The access level the oracle answers at.

    Raises:
        ValueError: an unknown level.

    Example:
        >>> effective_access("probabilities", "label"), effective_access("white-box", "label")
        ('label', 'white-box')
    """
    for name, level in (("access", access), ("release", release)):
        if level is not None and level not in ACCESS_LEVELS:
            raise ValueError(f"{name} must be one of {ACCESS_LEVELS}, got {level!r}")
    if access == "white-box" or release is None:
        return access
    return max(access, release, key=ACCESS_LEVELS.index)


def defended_oracle(
    model: nn.Module,
    defense: Defense,
    *,
    access: str,
    budget: int | None = None,
    top_k: int | None = None,
) -> TargetOracle:
    """The oracle an attacker with ``access`` gets from a deployment protected by ``defense``.

    The oracle answers at :func:`effective_access` ``(access, defense.release)`` and applies
    ``defense.postprocess`` to every black-box answer. At white-box access the attacker holds the
    model: neither the cap nor ``postprocess`` applies (the defense is simply absent). A
    training-time defense (no ``postprocess``, no ``release``) gives a plain oracle; its effect is
    already in ``model``.

    Args:
        model: The deployed classifier.
        defense: Any :class:`Defense`.
        access: The attacker's access level.
        budget: Query budget (None: unlimited); every released row counts, whatever the level.
        top_k: The attacker's k when ``access`` is ``"top-k"`` (default: the oracle's 5). When
            both the attacker and the defense fix a k, the smaller one applies.

    Returns:
        A :class:`TargetOracle`.

    Raises:
        ValueError: an unknown access level or a non-positive ``top_k``.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> oracle = defended_oracle(tiny_classifier(), label_only_defense(), access="logits")
        >>> oracle.access, oracle(torch.rand(3, 1, 8, 8)).shape, oracle.queries
        ('label', torch.Size([3]), 3)
    """
    level = effective_access(access, defense.release)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if level == "white-box":
        return TargetOracle(model, access="white-box", budget=budget)
    ks = [top_k if access == "top-k" else None]
    ks.append(defense.top_k if defense.release == "top-k" else None)
    ks = [k for k in ks if k is not None]
    if ks:
        return TargetOracle(
            model, access=level, budget=budget, top_k=min(ks), postprocess=defense.postprocess
        )
    return TargetOracle(model, access=level, budget=budget, postprocess=defense.postprocess)
