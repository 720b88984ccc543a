"""The units of work a study hands to its :class:`~mibench_lib.studies.pool.StudyPool`.

Each job is a module-level function ``job(setting, ...)`` whose arguments are plain data, so it
runs the same in the notebook's process or in a worker process: it names the target it needs by a
:class:`TargetRef` (a recipe, not a model), resolves it through the artifact cache, and returns a
results row or a small summary. A job seeds everything it draws, so its row does not depend on
which process ran it or in what order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

from mibench_lib.artifacts import (
    DefendedTarget,
    TargetCheckpoint,
    cached_defended_target,
    cached_target_checkpoints,
)
from mibench_lib.attacks import ATTACK_ACCESS, ATTACK_NEEDS, SPECS
from mibench_lib.defenses import defended_oracle, effective_access, robust_accuracy
from mibench_lib.studies.harness import (
    ARTIFACTS,
    BASELINE,
    StudySetting,
    attack_and_score,
    build_public_prior,
    build_target_prior,
)

__all__ = [
    "TargetRef",
    "attack_order",
    "attack_target",
    "build_artifact",
    "build_target",
    "defense_columns",
    "defense_label",
    "key_label",
    "load_target",
    "observation_key",
    "run_tag",
    "target_robust_accuracy",
]


@dataclass(frozen=True)
class TargetRef:
    """Which cached target a job works on: the recipe, never the weights.

    With ``thresholds`` empty it is :func:`~mibench_lib.artifacts.cached_defended_target` of
    ``defense_name`` (``"none"``: the plain recipe). With ``thresholds`` it is the checkpoint of
    :func:`~mibench_lib.artifacts.cached_target_checkpoints` that first reached ``threshold``
    (``threshold=None`` only builds the checkpoints).
    """

    arch: str
    train_cfg: Mapping[str, Any]
    seed: int
    defense_name: str = "none"
    defense_kwargs: Mapping[str, Any] = field(default_factory=dict)
    thresholds: Sequence[float] = ()
    threshold: float | None = None

    @property
    def key(self) -> str:
        """A stable identity (JSON of the fields)."""
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @property
    def checkpoints_key(self) -> str:
        """The identity of the training run: every threshold of it shares this key."""
        return json.dumps({**asdict(self), "threshold": None}, sort_keys=True, default=str)


def load_target(
    setting: StudySetting, ref: TargetRef
) -> DefendedTarget | list[TargetCheckpoint] | TargetCheckpoint:
    """Build or load ``ref`` (memoised per process in ``setting.targets``).

    Returns:
        A :class:`DefendedTarget`; for a checkpoint reference, the :class:`TargetCheckpoint` of
        ``threshold``, or the list of every reached checkpoint when ``threshold`` is None.

    Raises:
        KeyError: the training run never reached ``threshold``.
    """
    if ref.thresholds:
        key = ref.checkpoints_key
        if key not in setting.targets:
            setting.targets[key] = cached_target_checkpoints(
                setting.cache,
                setting.split,
                arch=ref.arch,
                train_cfg=ref.train_cfg,
                thresholds=ref.thresholds,
                seed=ref.seed,
                device=setting.device,
                progress=setting.progress,
            )
        ckpts = setting.targets[key]
        if ref.threshold is None:
            return ckpts
        for ck in ckpts:
            if ck.threshold == float(ref.threshold):
                return ck
        raise KeyError(f"seed {ref.seed}: the target never reached threshold {ref.threshold}")
    if ref.key not in setting.targets:
        setting.targets[ref.key] = cached_defended_target(
            setting.cache,
            setting.split,
            arch=ref.arch,
            train_cfg=ref.train_cfg,
            defense_name=ref.defense_name,
            defense_kwargs=ref.defense_kwargs,
            seed=ref.seed,
            device=setting.device,
            progress=setting.progress,
        )
    return setting.targets[ref.key]


def build_artifact(setting: StudySetting, name: str) -> bool:
    """Build (or load) one of the setting's :data:`~mibench_lib.studies.harness.ARTIFACTS`.

    Returns:
        Whether it came from the cache.
    """
    if name not in ARTIFACTS:
        raise ValueError(f"unknown study artifact {name!r}; known: {list(ARTIFACTS)}")
    artifact = getattr(setting, name)
    return bool(getattr(artifact, "cache_hit", True))


def build_target(setting: StudySetting, ref: TargetRef) -> None:
    """Build (or load) a target so that later jobs and the notebook find it in the cache."""
    load_target(setting, ref)


def attack_target(
    setting: StudySetting,
    ref: TargetRef,
    attack: str,
    *,
    seed: int,
    tag: str,
    through_defense: bool = False,
    budget: int | None = None,
) -> dict[str, Any]:
    """Run ``attack`` (or the random-latent baseline) against ``ref``; return its results row.

    Args:
        setting: The study's fixed pieces.
        ref: The target.
        attack: Attack registry name or one of :data:`~mibench_lib.studies.harness.BASELINES`.
        seed: Seeds the attack.
        tag: File stem of the saved reconstructions.
        through_defense: Query the target through the oracle its defense deploys (output
            processing, release caps; white-box access bypasses them by definition); the
            attack's target priors are trained through the same release.
        budget: The attack's query budget (None: the setting's ``query_budgets``, else none).
    """
    target = load_target(setting, ref)
    oracle, defense = None, None
    if budget is None:
        budget = setting.query_budgets.get(attack)
    if through_defense and isinstance(target, DefendedTarget) and attack in ATTACK_ACCESS:
        defense = target.defense
        oracle = defended_oracle(target.model, defense, access=ATTACK_ACCESS[attack], budget=budget)
    return attack_and_score(
        setting,
        attack,
        _model(target),
        seed=seed,
        tag=tag,
        oracle=oracle,
        defense=defense,
        budget=budget,
    )


def train_target_prior(
    setting: StudySetting, ref: TargetRef, prior: str, *, through_defense: bool = False
) -> None:
    """Train (or load) the target prior named ``prior`` for ``ref``'s model, into the cache.

    A pool job: the study queues one per (target, prior) before the attack runs that need it, so
    different priors train side by side instead of each attack's first run training them in turn.
    With ``through_defense`` it is trained through the release of ``ref``'s output defense.
    """
    loaded = load_target(setting, ref)
    defense = loaded.defense if through_defense and isinstance(loaded, DefendedTarget) else None
    found = next(p for spec in SPECS.values() for p in spec.target_priors if p.name == prior)
    build_target_prior(setting, found, _model(loaded), defense=defense)


def train_public_prior(setting: StudySetting, prior: str) -> None:
    """Train (or load) the public-data prior named ``prior`` into the cache (a pool job)."""
    found = next(p for spec in SPECS.values() for p in spec.public_priors if p.name == prior)
    build_public_prior(setting, found)


def target_robust_accuracy(
    setting: StudySetting, ref: TargetRef, *, eps: float, norm: str, steps: int, seed: int
) -> float:
    """PGD robust accuracy of ``ref`` on the private test set at radius ``eps``."""
    return robust_accuracy(
        _model(load_target(setting, ref)),
        setting.split.private_test,
        eps=eps,
        norm=norm,
        steps=steps,
        device=setting.device,
        seed=seed,
    )


def observation_key(ref: TargetRef, target: DefendedTarget, attack: str, *, seed: int) -> str:
    """What the attacker of ``ref`` observes, as a key: equal keys mean the same computation.

    An output-processing defense deploys the undefended weights and changes only what the oracle
    releases, and a white-box attacker holds the model, so it bypasses that release entirely: GMI
    with seed 0 against "rounding" is, operation for operation, GMI with seed 0 against the
    undefended target (the oracle hands both the same model; a test checks the logits are
    bit-identical). Likewise a label-only attack observes the same labels under a label-only
    release. The key is built from the trained weights' recipe, the access level the oracle
    actually answers at, the output filter it applies (if any) and the attack's seed, so a study
    can run each distinct computation once and report it under every defense it stands for.
    """
    defense = target.defense
    access = ATTACK_ACCESS.get(attack, "none")  # the random-latent baseline never queries
    weights = ref if defense.trains else replace(ref, defense_name="none", defense_kwargs={})

    def observed(level_asked: str) -> tuple[str, Any]:
        level = "none" if level_asked == "none" else effective_access(level_asked, defense.release)
        released: Any = None
        if level not in ("none", "white-box"):
            released = {
                "postprocess": [defense.name, defense.config] if defense.postprocess else None,
                "top_k": defense.top_k if defense.release == "top-k" else None,
            }
        return level, released

    level, released = observed(access)
    # a query-access attack's target priors (LOKT's T-ACGAN, C2FMI's adapter) are trained
    # through the same release; a white-box attacker builds its priors from the model it holds
    spec = SPECS.get(attack)
    priors = {}
    if spec is not None and level != "white-box":
        priors = {p.name: observed(p.access) for p in spec.target_priors}
    return json.dumps(
        {
            "weights": weights.key,
            "attack": attack,
            "seed": seed,
            "level": level,
            "released": released,
            "priors": priors,
        },
        sort_keys=True,
        default=str,
    )


def defense_label(spec: Mapping[str, Any]) -> str:
    """The label of a defense entry of a parameter file: its name and keyword arguments.

    Example:
        >>> defense_label({"name": "mid", "kwargs": {"beta": 0.01}})
        'mid (beta=0.01)'
        >>> defense_label({"name": "none"})
        'none'
    """
    kw = spec.get("kwargs", {})
    return spec["name"] + (
        "" if not kw else " (" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")"
    )


def defense_columns(target: DefendedTarget) -> dict[str, Any]:
    """The columns a defended target gives its rows: defense, kind, knob, natural accuracy, extras.

    ``defense_<name>`` columns carry the numbers the defense owes its report (DP-SGD's epsilon,
    TL-DMI's frozen fraction, adversarial training's robust accuracy).
    """
    from mibench_lib.defenses import DEFENSE_KIND

    defense = target.defense
    return {
        "defense": defense.name,
        "defense_kind": DEFENSE_KIND[defense.name],
        "knob": defense.knob or "",
        "knob_value": defense.knob_value,
        "natural_acc": target.natural_acc,
        **{f"defense_{k}": v for k, v in target.extra.items()},
    }


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def key_label(key: Mapping[str, Any]) -> str:
    """A row key's values as one readable label (``same_run_as``, figure legends).

    Example:
        >>> key_label({"defense_label": "none"}), key_label({"norm": "linf", "eps": 0.3})
        ('none', 'linf 0.3')
    """
    return " ".join(_value_text(v) for v in key.values())


_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


def run_tag(key: Mapping[str, Any], attack: str, seed: int) -> str:
    """File stem of one run's saved reconstructions: key values, attack and seed, file-name safe.

    Example:
        >>> run_tag({"defense_label": "mid (beta=0.01)"}, "gmi", 0)
        'mid_beta=0.01_gmi_s0'
        >>> run_tag({"norm": "linf", "eps": 0.3}, "brep_mi", 2)
        'linf_0.3_brep_mi_s2'
    """
    parts = [_UNSAFE.sub("_", _value_text(v)).strip("_") for v in key.values()]
    return "_".join([*parts, attack, f"s{seed}"])


def attack_order(attacks: Sequence[str]) -> list[str]:
    """``attacks`` with those that need no GAN first (stable otherwise).

    Submitted in this order, the prior-free attacks run while the GAN prior is still training.
    """
    needs = {**ATTACK_NEEDS, "blank_image": (), "mean_public": (), BASELINE: ("generator",)}
    return sorted(attacks, key=lambda name: "generator" in needs.get(name, ("generator",)))


def _model(target: DefendedTarget | TargetCheckpoint | list[TargetCheckpoint]) -> nn.Module:
    if isinstance(target, list):
        raise TypeError("a TargetRef with thresholds needs a threshold to name one model")
    return target.model
