"""Reinforcement Learning Guidance as a method: the knob is the RLG scale w (rlg.guidance)."""

from __future__ import annotations

from rlg.methods.base import Arm, Method


class RLG(Method):
    """pred = pred_base + w (pred_rl - pred_base) at every step: two networks per step for 0 < w != 1."""

    name = "rlg"
    uses_model = False

    def arms(self) -> list[Arm]:
        return [Arm(self.name, w, scale=w) for w in self.knobs]
