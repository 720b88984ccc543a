"""Model-inversion attacks: one file per attack, each a function returning an InversionResult.

Every attack is called as ``attack(oracle, labels, *, ..., rng=None, on_step=None)``: it reaches
the target only through a :class:`~mibench_lib.oracle.TargetOracle`, inverts every entry of
``labels`` in one batch and reports progress through ``on_step`` only. Its file ends with its
:class:`~mibench_lib.attacks._spec.AttackSpec` (access level and needs), and the list below is the
registry: adding an attack is one file, one line here and one test file.

- :data:`SPECS`: registry name -> :class:`AttackSpec`.
- :data:`ATTACKS`: registry name -> attack function.
- :data:`ATTACK_ACCESS`: the weakest oracle access level each attack works with.
- :data:`ATTACK_NEEDS`: the keyword arguments the study supplies each attack from its needs.
"""

from __future__ import annotations

from mibench_lib.attacks import (
    brep_mi,
    c2fmi,
    deepinversion,
    gmi,
    if_gmi,
    kedmi,
    lokt,
    lomma,
    miface,
    mirror,
    plg_mi,
    rlb_mi,
    secretgen,
    vmi,
)
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import PUBLIC_NEEDS, AttackSpec, PublicPrior, TargetPrior
from mibench_lib.attacks.brep_mi import brep_mi_attack
from mibench_lib.attacks.gmi import gmi_attack
from mibench_lib.attacks.miface import miface_attack

__all__ = [
    "ATTACKS",
    "ATTACK_ACCESS",
    "ATTACK_NEEDS",
    "PUBLIC_NEEDS",
    "SPECS",
    "AttackSpec",
    "InversionResult",
    "PublicPrior",
    "StepCallback",
    "TargetPrior",
    "brep_mi_attack",
    "gmi_attack",
    "miface_attack",
]

#: Registry name -> spec, in the order studies list them.
SPECS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        gmi.SPEC,
        brep_mi.SPEC,
        miface.SPEC,
        deepinversion.SPEC,
        kedmi.SPEC,
        plg_mi.SPEC,
        *lomma.SPECS,
        vmi.SPEC,
        if_gmi.SPEC,
        rlb_mi.SPEC,
        mirror.SPEC,
        c2fmi.SPEC,
        lokt.SPEC,
        secretgen.SPEC,
    )
}

#: Registry name -> attack function.
ATTACKS = {name: spec.run for name, spec in SPECS.items()}

#: Weakest access level (see ``mibench_lib.oracle.ACCESS_LEVELS``) each attack needs.
ATTACK_ACCESS = {name: spec.access for name, spec in SPECS.items()}

#: Keyword arguments the study supplies each attack (public artifacts and target priors).
ATTACK_NEEDS: dict[str, tuple[str, ...]] = {name: spec.keywords for name, spec in SPECS.items()}
