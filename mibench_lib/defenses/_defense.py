"""The shape every defense takes: a recipe the one training loop consumes, or an output filter.

A training-time defense changes training through hooks of
:func:`mibench_lib.models.train.train_classifier` instead of its own loop:

- ``build``: turns the freshly built (or pre-trained) model into the one that is trained, e.g.
  adds a stochastic bottleneck (MID), removes skip connections (RoLSS), swaps BatchNorm for
  GroupNorm (DP-SGD), pre-trains on public data and freezes the front (TL-DMI);
- ``loss``: the training loss ``(logits, labels, *, model, images, epoch) -> scalar``;
- ``prepare``: ``(model, optimizer, loader) -> (model, optimizer, loader)``, e.g. opacus;
- ``after_training``: ``(model, test_set, device) -> dict`` of extra numbers the defense owes its
  report (epsilon for DP-SGD, robust accuracy for adversarial training);
- ``unwrap``: applied to the trained model before its weights are saved, e.g. DP-SGD takes the
  plain module out of opacus' per-sample-gradient wrapper (whose ``state_dict`` keys carry a
  ``_module.`` prefix), so the saved weights load into the model ``restore`` rebuilds.

An inference-time (output-processing) defense sets ``postprocess``, a function on released
probabilities that :class:`mibench_lib.oracle.TargetOracle` applies to every black-box answer, and
optionally ``release``, the access level it enforces (e.g. ``"label"``). White-box attackers hold the
model and bypass both by definition.

``config`` holds every value that determines the defended model, for artifact cache keys.

What a constructor needs from the study that runs it (the target's seed, the device, the number of
training epochs, labelled public data) it declares by naming the parameter as in
:data:`mibench_lib.defenses.STUDY_INPUTS`; the study fills those in, so no study code names a
defense. :attr:`Defense.kind` says what the defense changes, from its hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mibench_lib.data._types import ImageSet
from mibench_lib.models.train import LossFn, PrepareFn

BuildFn = Callable[[nn.Module], nn.Module]
AfterTrainingFn = Callable[[nn.Module, ImageSet, torch.device], Mapping[str, float]]


@dataclass(frozen=True)
class Defense:
    """A model-inversion defense, as hooks (see module docstring).

    Attributes:
        name: Registry name (``"mid"``, ``"dp_sgd"``, ...).
        config: Everything that determines the defended model or the release (cache key).
        knob: Name of the strength parameter swept in studies (e.g. ``"beta"``), or None.
        build, loss, prepare, after_training: Training hooks (None: unchanged).
        postprocess: Output filter on (N, K) probabilities applied by the oracle.
        release: Access level the defense caps releases at (``"label"``, ``"top-k"``), or None.
        top_k: k of a top-k release.
        restore: Applied to a fresh model before loading a defended model's saved weights. None
            means ``build``, right when ``build`` only changes the architecture (MID, RoLSS,
            DP-SGD's GroupNorm); TL-DMI, whose ``build`` pre-trains, restores only the freezing.
        unwrap: Applied to the trained model before its weights are saved (None: saved as it
            is); DP-SGD removes opacus' wrapper.
    """

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    knob: str | None = None
    build: BuildFn | None = None
    loss: LossFn | None = None
    prepare: PrepareFn | None = None
    after_training: AfterTrainingFn | None = None
    postprocess: Callable[[Tensor], Tensor] | None = None
    release: str | None = None
    top_k: int | None = None
    restore: BuildFn | None = None
    unwrap: BuildFn | None = None

    @property
    def knob_value(self) -> Any:
        """Value of the knob in this instance (None when there is no knob)."""
        return None if self.knob is None else self.config.get(self.knob)

    @property
    def trains(self) -> bool:
        """True when the defense changes the trained model (False: output processing only)."""
        return any(h is not None for h in (self.build, self.loss, self.prepare))

    @property
    def kind(self) -> str:
        """What the defense changes: ``"training"``, ``"output"`` or ``"none"``.

        ``"training"`` when it changes the trained model (:attr:`trains`), ``"output"`` when it only
        filters what the oracle releases, ``"none"`` for neither (the undefended baseline).

        Example:
            >>> Defense("none").kind, Defense("cap", release="label").kind
            ('none', 'output')
        """
        if self.trains:
            return "training"
        if self.postprocess is not None or self.release is not None:
            return "output"
        return "none"


NO_DEFENSE = Defense("none")
