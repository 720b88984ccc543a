"""What an attack declares about itself, next to its function: access level and needs.

A study never names an attack in its code. It reads the attack's :class:`AttackSpec`: the weakest
oracle access level the attack works with (the oracle it gets answers at that level) and the
artifacts it takes as keyword arguments. Those are of two kinds:

- a *public artifact*, by name, that every study setting provides from public data only
  (:data:`PUBLIC_NEEDS`: the GAN prior's ``"generator"`` and ``"discriminator"``);
- a :class:`TargetPrior`: something the attack trains with the target's answers before its
  search (KEDMI's and PLG-MI's GANs, LOMMA's surrogate models, LOKT's T-ACGAN). The study builds it
  through a :class:`~mibench_lib.oracle.TargetOracle` at the prior's access level, which counts its
  queries (reported as ``prior_queries``), and caches it by the target's weights, so every attack
  run against the same target reuses it.

Adding an attack is one file (its function and its ``SPEC``), one line in
:data:`mibench_lib.attacks.ATTACKS`'s list and one test file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from mibench_lib.attacks._result import InversionResult
from mibench_lib.oracle import ACCESS_LEVELS

__all__ = ["PUBLIC_NEEDS", "AttackSpec", "PublicPrior", "TargetPrior"]

#: Public artifacts every study setting provides, by the keyword an attack receives them under.
#: ``"masked_private"`` is the partial-image threat model's knowledge (SecretGen): for each label
#: entry, one private training image of that class with its centre hidden
#: (:class:`~mibench_lib.attacks._masked.MaskedImages`).
PUBLIC_NEEDS: tuple[str, ...] = ("generator", "discriminator", "masked_private")


@dataclass(frozen=True)
class TargetPrior:
    """An artifact an attack trains with the target's answers (cached per target).

    Attributes:
        name: Keyword argument the attack receives it under; also its cache folder.
        access: Access level of the oracle it is trained through (its queries are counted).
        build: ``build(oracle, public, *, num_classes, seed, device, progress, **kwargs)`` trains
            it from the oracle and the public images (an unlabelled
            :class:`~mibench_lib.data.ImageSet`) and returns ``(tensors, meta)``: a flat dict of
            tensors and JSON-able metadata (what :meth:`~mibench_lib.cache.ArtifactCache.get_or_build`
            stores). ``kwargs`` come from the parameter file's ``prior_kwargs[name]``.
        load: ``load(tensors, meta, device)`` rebuilds what the attack gets from the cached files.
        quick: Keyword arguments of ``build`` for a few-second build on tiny networks (the shared
            tests build every registered attack's priors with them:
            :func:`mibench_lib.testing.build_target_prior`).
    """

    name: str
    access: str
    build: Callable[..., tuple[dict[str, Tensor], dict[str, Any]]]
    load: Callable[[Mapping[str, Tensor], Mapping[str, Any], Any], Any]
    quick: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.access not in ACCESS_LEVELS:
            raise ValueError(f"prior {self.name!r}: unknown access level {self.access!r}")


@dataclass(frozen=True)
class PublicPrior:
    """An artifact an attack trains from public data only, before it sees any target.

    The target is never queried while it is built, so it is cached by the public data and its
    keyword arguments alone and shared by every target and every attack that names it (Mirror's
    and C2FMI's style-based generator, C2FMI's embedding network, SecretGen's inpainting GAN).

    Attributes:
        name: Keyword argument the attack receives it under; also its cache folder.
        build: ``build(public, *, seed, device, progress, **kwargs)`` trains it from the public
            images (an :class:`~mibench_lib.data.ImageSet` whose labels are the public data's own
            labels, -1 where the dataset has none; they never name a private class) and returns
            ``(tensors, meta)`` as :class:`TargetPrior`'s build does. ``kwargs`` come from the
            parameter file's ``prior_kwargs[name]``.
        load: ``load(tensors, meta, device)`` rebuilds what the attack gets from the cached files.
        quick: Keyword arguments of ``build`` for a few-second build on tiny networks
            (:func:`mibench_lib.testing.build_public_prior`).
    """

    name: str
    build: Callable[..., tuple[dict[str, Tensor], dict[str, Any]]]
    load: Callable[[Mapping[str, Tensor], Mapping[str, Any], Any], Any]
    quick: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackSpec:
    """One attack, as the study engine sees it.

    Attributes:
        name: Registry name (``"gmi"``), used in parameter files and result rows.
        run: ``run(oracle, labels, *, rng, on_step, **needs, **kwargs) -> InversionResult``.
        access: The weakest access level of ``mibench_lib.oracle.ACCESS_LEVELS`` it works with.
        needs: Names of :data:`PUBLIC_NEEDS`, :class:`PublicPrior` and :class:`TargetPrior`
            instances it takes as keyword arguments.
        quick: Keyword arguments of a few-step run (seconds on a CPU), for the shared tests that
            run every registered attack on tiny networks.
        queries_in_attack: Whether the attack stage itself queries the target. False only for
            attacks that spend every query on their target priors (LOKT: the oracle is closed
            while it searches).
        threat_model: ``"full"`` (reconstruct a class from its label) or ``"partial"`` (the
            attacker holds a masked private image and fills the hole: SecretGen). Studies never
            rank the two kinds together.
    """

    name: str
    run: Callable[..., InversionResult]
    access: str
    needs: tuple[str | PublicPrior | TargetPrior, ...] = ()
    quick: Mapping[str, Any] = field(default_factory=dict)
    queries_in_attack: bool = True
    threat_model: str = "full"

    def __post_init__(self) -> None:
        if self.access not in ACCESS_LEVELS:
            raise ValueError(f"attack {self.name!r}: unknown access level {self.access!r}")
        if self.threat_model not in ("full", "partial"):
            raise ValueError(
                f"attack {self.name!r}: threat_model must be 'full' or 'partial', "
                f"got {self.threat_model!r}"
            )
        for need in self.needs:
            if isinstance(need, str) and need not in PUBLIC_NEEDS:
                raise ValueError(
                    f"attack {self.name!r} needs {need!r}, which no study provides; public "
                    f"artifacts: {list(PUBLIC_NEEDS)}; a target-dependent one is a TargetPrior"
                )

    @property
    def public_needs(self) -> tuple[str, ...]:
        """The :data:`PUBLIC_NEEDS` it takes."""
        return tuple(n for n in self.needs if isinstance(n, str))

    @property
    def target_priors(self) -> tuple[TargetPrior, ...]:
        """The :class:`TargetPrior` artifacts it takes."""
        return tuple(n for n in self.needs if isinstance(n, TargetPrior))

    @property
    def public_priors(self) -> tuple[PublicPrior, ...]:
        """The :class:`PublicPrior` artifacts it takes."""
        return tuple(n for n in self.needs if isinstance(n, PublicPrior))

    @property
    def keywords(self) -> tuple[str, ...]:
        """Every keyword argument the study supplies from its needs."""
        return tuple(n if isinstance(n, str) else n.name for n in self.needs)
