"""The RLG rule itself: pure functions, no models.

pred = pred_base + w * (pred_rl - pred_base), applied per sample. w = 0 is the base model, w = 1
the RL model; the rule is linear, so it holds for epsilon, x0, score and flow-velocity outputs
alike, and commutes with classifier-free guidance (see ``rlg.denoiser``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

if TYPE_CHECKING:  # torch is imported where a tensor is used: the start-up checks import this module torch-free
    import torch


class ScaleError(ValueError):
    """A guidance scale that cannot be used (NaN, inf, not a number)."""


def check_scales(scales: Sequence[float] | torch.Tensor) -> list[float]:
    """Return the scales as floats, or raise ScaleError naming the bad entry."""
    values = scales.tolist() if hasattr(scales, "tolist") else list(scales)
    out = []
    for i, w in enumerate(values):
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ScaleError(f"RLG scale #{i} is {w!r} ({type(w).__name__}); "
                             "scales must be finite numbers, e.g. grid.scales=[0,1,1.5]")
        if not math.isfinite(w):
            raise ScaleError(f"RLG scale #{i} is {w}; scales must be finite numbers, e.g. grid.scales=[0,1,1.5]")
        out.append(float(w))
    return out


def rlg_mix(pred_base: torch.Tensor, pred_rl: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Mix base and RL predictions; ``scale`` is a float or a per-sample tensor of shape (batch,).

    Computed in the predictions' dtype as ``base + w * (rl - base)``, the order the official code uses.
    """
    if getattr(scale, "ndim", 0) == 1:  # a per-sample tensor
        scale = scale.to(device=pred_base.device, dtype=pred_base.dtype)
        scale = scale.view(-1, *([1] * (pred_base.ndim - 1)))
    return pred_base + scale * (pred_rl - pred_base)


OutsideWindow = Literal["rl", "base"]


@dataclass(frozen=True)
class StepWindow:
    """Steps where RLG is applied, as fractions of the schedule: step i of n is inside when
    start <= i / n < stop. Outside it the sampler uses the RL model alone (``outside="rl"``, the
    official ``zero_init_step`` behaviour) or the base model (``outside="base"``)."""

    start: float = 0.0
    stop: float = 1.0
    outside: OutsideWindow = "rl"

    def __post_init__(self):
        if not (0.0 <= self.start <= self.stop <= 1.0):
            raise ValueError(f"RLG window needs 0 <= start <= stop <= 1, got start={self.start}, stop={self.stop}")
        if self.outside not in ("rl", "base"):
            raise ValueError(f"RLG window outside={self.outside!r}; use 'rl' (official zero_init_step) or 'base'")

    def contains(self, step_index: int, num_steps: int) -> bool:
        frac = step_index / max(num_steps, 1)
        return self.start <= frac < self.stop or (self.stop >= 1.0 and frac >= 1.0)

    def steps_inside(self, num_steps: int) -> list[int]:
        """The step indices 0..num_steps-1 where RLG is applied."""
        return [i for i in range(num_steps) if self.contains(i, num_steps)]

    def effective_scales(self, scales: torch.Tensor, step_index: int, num_steps: int) -> torch.Tensor:
        """Per-sample scales in force at this step: the scales inside the window, 1 or 0 outside."""
        if self.contains(step_index, num_steps):
            return scales
        import torch

        return torch.full_like(scales, 1.0 if self.outside == "rl" else 0.0)
