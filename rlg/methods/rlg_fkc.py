"""RLG with Feynman-Kac correctors as a method (``method=rlg_fkc``): the RLG mix at scale w (the knob) run over K
particles per image with the corrector weights and resampling of ``rlg.fkc`` (docs/fkc.md), one image per
(prompt, sample) from the final population. The same thing as ``sampler.correctors=fkc``, as an arm of its own, so
it sits beside plain RLG, best-of-N and FK steering in one run (the findings table). 2 K network rows per image and
step (with CFG: 4 K). Options (``method.rlg_fkc.options``): particles, resample (ess | every_step), ess_threshold.
"""

from __future__ import annotations

from rlg.methods.base import Arm, Method, MethodError, method_options

DEFAULTS = {"particles": 4, "resample": "ess", "ess_threshold": 0.5}


class RLGFKC(Method):
    name = "rlg_fkc"
    uses_model = False
    options = DEFAULTS

    def __init__(self, knobs, model: str = "rl", pick: str | None = None, options: dict | None = None):
        super().__init__(knobs, model, pick)
        from rlg.sampler_spec import FKCConfig

        o = method_options(self.name, DEFAULTS, options)
        try:
            self.config = FKCConfig(o["particles"], o["resample"], float(o["ess_threshold"]))
        except ValueError as exc:
            raise MethodError(f"method rlg_fkc: {exc}") from None

    def arms(self) -> list[Arm]:
        c = self.config
        return [Arm(self.name, w, scale=w, correctors=(int(c.particles), c.resample, float(c.ess_threshold)))
                for w in self.knobs]

    def describe(self):
        return {**super().describe(), "options": {"particles": self.config.particles,
                                                  "resample": self.config.resample,
                                                  "ess_threshold": self.config.ess_threshold}}
