"""Ways to set alignment strength at inference, behind one interface (issue 24).

Each method turns its swept knob into *arms*: what the sampler runs for one image (an RLG scale for
the denoiser, and per pipeline call a CFG scale or a weight-mixed RL network). Every arm goes through
the same grid loop, store, evaluators and report as plain RLG:

    rlg         pred = pred_base + w (pred_rl - pred_base) at every step (knob w; 2 networks per step)
    weight_mix  one network with theta_base + w (theta_rl - theta_base) (knob w; the adapter scale of a LoRA)
    cfg_rl      the RL (or base) model alone, its classifier-free guidance scale swept (knob g)
    best_of_n   N samples of the RL (or base) model, one picked by a reward (knob N; picked in the report)
    rlg_fkc     RLG at w over K particles with Feynman-Kac corrector weights and resampling (knob w; 2 K networks)
    fk_steering K particles of the RL (or base) model steered by a reward on the predicted x0 (knob K)

``get_method(name, knobs, model=..., pick=...)`` builds one; ``METHODS`` lists them. Nothing here
imports torch at import time (the report imports ``rlg.methods.best_of_n``).
"""

from __future__ import annotations

from typing import Any, Sequence

from rlg.methods.base import Arm, Method, MethodError, candidate_seed, method_options
from rlg.methods.best_of_n import BestOfN
from rlg.methods.cfg import CFGScale
from rlg.methods.fk_steering import FKSteering
from rlg.methods.rlg import RLG
from rlg.methods.rlg_fkc import RLGFKC
from rlg.methods.weight_mix import WeightMix
from rlg.registry import Registry

METHODS = Registry("method", {m.name: m for m in (RLG, WeightMix, CFGScale, BestOfN, RLGFKC, FKSteering)},
                   error=MethodError)


def get_method(name: str, knobs: Sequence[Any], model: str = "rl", pick: str | None = None,
               options: dict[str, Any] | None = None) -> Method:
    """The method ``name`` (one of ``METHODS``) over ``knobs``, with its own ``options`` (``Method.options`` names
    those it takes). Raises MethodError naming the fix."""
    cls = METHODS.get(name)
    if not cls.options:
        method_options(name, {}, options)  # refuses any option
        return cls(knobs, model=model, pick=pick)
    return cls(knobs, model=model, pick=pick, options=options)


__all__ = ["METHODS", "Arm", "Method", "MethodError", "candidate_seed", "get_method"]
