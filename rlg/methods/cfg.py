"""One model alone with its classifier-free guidance scale as the knob, so "more guidance" can be told
apart from "more alignment". The pipeline skips CFG at g <= 1 (one network row per step instead of two)."""

from __future__ import annotations

from rlg.methods.base import Arm, Method, MethodError


class CFGScale(Method):
    """The RL model (``model="rl"``, stored as cfg_rl) or the base model (``model="base"``, cfg_base)
    alone; knob g = the pipeline's ``guidance_scale``."""

    name = "cfg_rl"
    base_label = "cfg_base"

    def __init__(self, knobs, model: str = "rl", pick: str | None = None):
        super().__init__(knobs, model, pick)
        if pick is not None:
            raise MethodError(f"method cfg_rl has no pick (it is best_of_n's); remove method.cfg_rl.pick={pick}")
        bad = [g for g in self.knobs if g < 0]
        if bad:
            raise MethodError(f"method cfg_rl: CFG scales {bad} are negative; give scales >= 0, e.g. [1, 2, 4, 7.5]")

    def arms(self) -> list[Arm]:
        return [Arm(self.label, g, scale=self.alone_scale, guidance_scale=g) for g in self.knobs]
