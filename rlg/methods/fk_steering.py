"""FK steering as a method (``method=fk_steering``; Singhal et al. 2025, arXiv 2501.06848; ``rlg.fk_steering``): one
model (the RL model, or the base with ``model: base``, stored as fk_steering_base) run over K particles per image
(the knob), resampled every ``interval`` steps by potentials (difference | max | sum) of ``lam`` times the reward
``pick`` of each particle's predicted x0 (decoded by the VAE), and one image per (prompt, sample) drawn from the
final population by exp(lam R) / prod G. K network rows per image and step (with CFG: 2 K), plus a VAE decode and
a reward per particle at every resampling. Like best-of-N's pick, the steering reward is circular as a judge: the
report marks it so, and the findings judge FK steering on the held-out metrics only.
Options (``method.fk_steering.options``): potential, interval, lam.
"""

from __future__ import annotations

from rlg.methods.base import Arm, Method, MethodError, method_options

DEFAULTS = {"potential": "difference", "interval": 1, "lam": 1.0}


class FKSteering(Method):
    name = "fk_steering"
    base_label = "fk_steering_base"
    needs_pick = True
    options = DEFAULTS

    def __init__(self, knobs, model: str = "rl", pick: str | None = None, options: dict | None = None):
        super().__init__(knobs, model, pick)
        from rlg.sampler_spec import SteeringSpec

        if not pick:
            raise MethodError("method fk_steering needs the reward that steers: set method.fk_steering.pick=<metric>, "
                              "e.g. digit_margin")
        bad = [k for k in self.knobs if k < 1 or k != int(k)]
        if bad:
            raise MethodError(f"method fk_steering: particle counts {bad} are not whole numbers >= 1; e.g. "
                              "knobs=[2,4]")
        self.knobs = [float(int(k)) for k in self.knobs]
        o = method_options(self.name, DEFAULTS, options)
        try:  # the checks of the sampler's spec, with a stand-in evaluator
            SteeringSpec(1, pick, None, o["potential"], o["interval"], o["lam"])
        except ValueError as exc:
            raise MethodError(f"method {exc}") from None
        self.potential, self.interval, self.lam = o["potential"], int(o["interval"]), float(o["lam"])

    def arms(self) -> list[Arm]:
        return [Arm(self.label, k, scale=self.alone_scale, pick=self.pick,
                    steering=(int(k), self.potential, self.interval, self.lam)) for k in self.knobs]

    def describe(self):
        return {**super().describe(), "options": {"potential": self.potential, "interval": self.interval,
                                                  "lam": self.lam}}
