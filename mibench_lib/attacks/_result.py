"""The one result type every attack returns, so notebooks and metrics never branch on the attack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

#: Progress hook ``on_step(step, total, info)``; attacks never print, they call this.
StepCallback = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class InversionResult:
    """What an attack recovered and what it cost.

    Attributes:
        attack: Registry name of the attack (``"gmi"``, ``"brep_mi"``, ...).
        images: (N, C, H, W) reconstructions in [0, 1], on the CPU, one per requested label.
        labels: (N,) int64 target classes the images are meant to depict.
        latents: (N, latent_dim) final latent codes on the CPU, or ``None`` for pixel-space attacks.
        losses: Loss history, one float per optimisation step (attack-specific meaning, documented
            in each attack's module).
        queries: Images the target oracle answered during the attack.
        wall_time_s: Seconds the attack took.
        extras: Attack-specific diagnostics (e.g. per-sample target scores, radii, stop steps).
    """

    attack: str
    images: Tensor
    labels: Tensor
    latents: Tensor | None
    losses: list[float]
    queries: int
    wall_time_s: float
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"images and labels disagree: {self.images.shape[0]} images, {self.labels.shape[0]} labels"
            )
