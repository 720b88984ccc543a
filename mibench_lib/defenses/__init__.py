"""Model-inversion defenses: training-time recipes and output processing at the oracle.

Each defense is one file with its citation and paper defaults, exposing one constructor that
returns a :class:`Defense` (see ``_defense.py`` for the hooks). ``DEFENSES`` maps a registry name to
the constructor; ``DEFENSE_KIND`` says whether it changes training (``"training"``) or only what
the oracle releases (``"output"``, bypassed by white-box attackers by definition).
"""

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

DEFENSE_KIND = {
    "none": "none",
    "mid": "training",
    "bido": "training",
    "label_smoothing": "training",
    "tl_dmi": "training",
    "dp_sgd": "training",
    "adversarial_training": "training",
    "rolss": "training",
    "rounding": "output",
    "top_k": "output",
    "label_only": "output",
    "gaussian_noise": "output",
}

__all__ = [
    "DEFENSES",
    "DEFENSE_KIND",
    "NO_DEFENSE",
    "Defense",
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
