"""Model-inversion attacks: one file per attack, each a function returning an InversionResult.

Every attack is called as ``attack(oracle, labels, *, ..., rng=None, on_step=None)``: it reaches
the target only through a :class:`~mibench_lib.oracle.TargetOracle`, inverts every entry of
``labels`` in one batch and reports progress through ``on_step`` only.

- :data:`ATTACKS`: registry name -> attack function.
- :data:`ATTACK_ACCESS`: the weakest oracle access level each attack works with.
- :data:`ATTACK_NEEDS`: which public networks (keyword arguments) each attack needs.
"""

from __future__ import annotations

from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks.brep_mi import brep_mi_attack
from mibench_lib.attacks.gmi import gmi_attack
from mibench_lib.attacks.miface import miface_attack

__all__ = [
    "ATTACKS",
    "ATTACK_ACCESS",
    "ATTACK_NEEDS",
    "InversionResult",
    "StepCallback",
    "brep_mi_attack",
    "gmi_attack",
    "miface_attack",
]

#: Registry name -> attack function.
ATTACKS = {
    "gmi": gmi_attack,
    "brep_mi": brep_mi_attack,
    "miface": miface_attack,
}

#: Weakest access level (see ``mibench_lib.oracle.ACCESS_LEVELS``) each attack needs.
ATTACK_ACCESS = {
    "gmi": "white-box",
    "brep_mi": "label",
    "miface": "white-box",
}

#: Public networks each attack takes as keyword arguments (trained on public data only).
ATTACK_NEEDS: dict[str, tuple[str, ...]] = {
    "gmi": ("generator", "discriminator"),
    "brep_mi": ("generator",),
    "miface": (),
}
