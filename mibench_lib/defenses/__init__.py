"""Model-inversion defenses: training-time recipes and output processing at the oracle.

Each defense is one file with its citation and paper defaults, exposing one constructor that
returns a :class:`Defense` (see ``_defense.py`` for the hooks). ``DEFENSES`` maps a registry name to
the constructor; ``DEFENSE_KIND`` says whether it changes training (``"training"``) or only what
the oracle releases (``"output"``, bypassed by white-box attackers by definition), read from
:attr:`Defense.kind` of each constructor's default instance.

A constructor asks the study for what only the study knows (the target's seed, the training
device and epochs, labelled public data) by naming a parameter of ``STUDY_INPUTS``;
:func:`mibench_lib.artifacts.make_defense` fills each one the constructor accepts and the study's
parameters did not set, and a parameter file may not set them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mibench_lib.data._types import ImageSet
from mibench_lib.defenses._defense import NO_DEFENSE, Defense
from mibench_lib.defenses.adversarial import (
    adversarial_training_defense,
    pgd_attack,
    robust_accuracy,
)
from mibench_lib.defenses.bido import bido_defense
from mibench_lib.defenses.dp_sgd import dp_sgd_defense, make_dp_compatible, unwrap_dp_model
from mibench_lib.defenses.label_smoothing import label_smoothing_defense, smoothed_cross_entropy
from mibench_lib.defenses.mid import mid_defense
from mibench_lib.defenses.output import (
    defended_oracle,
    effective_access,
    gaussian_noise_defense,
    label_only_defense,
    rounding_defense,
    top_k_defense,
)
from mibench_lib.defenses.rolss import rolss_defense
from mibench_lib.defenses.tl_dmi import layer_fisher_information, tl_dmi_defense


def no_defense() -> Defense:
    """The undefended baseline: the plain training recipe and an unfiltered release."""
    return NO_DEFENSE


DEFENSES = {
    "none": no_defense,
    "mid": mid_defense,
    "bido": bido_defense,
    "label_smoothing": label_smoothing_defense,
    "tl_dmi": tl_dmi_defense,
    "dp_sgd": dp_sgd_defense,
    "adversarial_training": adversarial_training_defense,
    "rolss": rolss_defense,
    "rounding": rounding_defense,
    "top_k": top_k_defense,
    "label_only": label_only_defense,
    "gaussian_noise": gaussian_noise_defense,
}


@dataclass(frozen=True)
class StudyInput:
    """A defense-constructor parameter whose value the study supplies.

    Attributes:
        gives: What the study passes, in words.
        stand_in: A valid value that carries no data, used only to build a constructor's default
            instance (for its :attr:`Defense.kind`).
    """

    gives: str
    stand_in: Any


#: Constructor parameters the study supplies, by name: a constructor that accepts one gets it from
#: :func:`mibench_lib.artifacts.make_defense` unless the caller set it, and a parameter file never
#: sets it (``mibench_lib.studies.params.DEFENSE_SUPPLIED``). Name a new parameter here, never a
#: defense in the study code.
STUDY_INPUTS: dict[str, StudyInput] = {
    "seed": StudyInput("the target's seed (int)", 0),
    "device": StudyInput("the training device, as a string", "cpu"),
    "rng": StudyInput(
        "None: draws come from torch's global generator, which each attack run seeds", None
    ),
    "train_epochs": StudyInput(
        "the target's number of training epochs (``train_cfg['epochs']``, 10 when unset)", 1
    ),
    "pretrain_data": StudyInput(
        "the labelled public data, ``mibench_lib.artifacts.public_labelled(split)``",
        ImageSet(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])),
    ),
    "pretrain_num_classes": StudyInput("the number of classes of ``pretrain_data``", 2),
}


def _default_kind(constructor: Callable[..., Defense]) -> str:
    """:attr:`Defense.kind` of ``constructor``'s defaults plus stand-ins for the study inputs."""
    accepted = inspect.signature(constructor).parameters
    return constructor(**{k: v.stand_in for k, v in STUDY_INPUTS.items() if k in accepted}).kind


#: ``"training"``, ``"output"`` or ``"none"`` per registry name (see :attr:`Defense.kind`).
DEFENSE_KIND: dict[str, str] = {name: _default_kind(ctor) for name, ctor in DEFENSES.items()}

__all__ = [
    "DEFENSES",
    "DEFENSE_KIND",
    "NO_DEFENSE",
    "STUDY_INPUTS",
    "Defense",
    "StudyInput",
    "adversarial_training_defense",
    "bido_defense",
    "defended_oracle",
    "dp_sgd_defense",
    "effective_access",
    "gaussian_noise_defense",
    "label_only_defense",
    "label_smoothing_defense",
    "layer_fisher_information",
    "make_dp_compatible",
    "mid_defense",
    "no_defense",
    "pgd_attack",
    "robust_accuracy",
    "rolss_defense",
    "rounding_defense",
    "smoothed_cross_entropy",
    "tl_dmi_defense",
    "top_k_defense",
    "unwrap_dp_model",
]
