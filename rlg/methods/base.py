"""The method interface: a method is a list of arms, plus the model state an arm needs for a call.

An :class:`Arm` is one point of a method's curve as the sampler runs it. Arms whose ``call_key``
is equal can share a pipeline call (the CFG scale and the RL network are per call; the RLG scale
is per image). The noise of an image depends on (seed, prompt, sample) only, so the images of one
(prompt, sample) start from the same noise under every method; best-of-N candidates k > 0 draw
from ``candidate_seed(seed, k)`` (candidate 0 shares the noise of the other methods).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence


class MethodError(ValueError):
    """A method setting that cannot run; the message names the fix."""


@dataclass(frozen=True)
class Arm:
    """One image setting of a method.

    method: the stored label (rlg, weight_mix, cfg_rl, cfg_base, best_of_n, best_of_n_base).
    knob: the swept value (w, g or N); None for a best-of-N candidate (N is chosen in the report).
    scale: the RLG scale the denoiser applies (0: base model only, 1: RL model only).
    guidance_scale: the CFG scale of the call (None: the sampler's).
    mix: weight mixing: the RL network carries theta_base + mix (theta_rl - theta_base) for the call.
    candidate: best-of-N: the candidate index k (0 for every other method).
    """

    method: str
    knob: float | None
    scale: float
    guidance_scale: float | None = None
    mix: float | None = None
    candidate: int = 0
    pick: str | None = None  # best-of-N: the metric that will pick (not in the content key: picking needs no image)
    # rlg_fkc: (particles, resample, ess_threshold) of the call's Feynman-Kac correctors (rlg.sampler_spec.FKCConfig)
    correctors: tuple | None = None
    # fk_steering: (particles, potential, interval, lam) of the call's FK steering by ``pick``
    # (rlg.sampler_spec.SteeringSpec)
    steering: tuple | None = None

    @property
    def call_key(self) -> tuple:
        """Arms with equal call keys can share one pipeline call."""
        return (self.guidance_scale, self.mix, self.correctors, self.steering)

    def key_fields(self) -> dict[str, Any]:
        """What the arm adds to an image's content key. Plain RLG adds nothing, so the keys of RLG runs
        made before methods existed stay valid (their ``scale`` is the knob); the particle methods add their
        settings (and fk_steering its reward, which changes the images)."""
        if self.method == "rlg":
            return {}
        out = {"method": self.method, "knob": self.knob, "guidance_scale": self.guidance_scale, "mix": self.mix,
               "candidate": self.candidate}
        if self.correctors is not None:
            out["correctors"] = list(self.correctors)
        if self.steering is not None:
            out["steering"] = [*self.steering, self.pick]
        return out


def candidate_seed(seed: int, candidate: int) -> int:
    """The seed of best-of-N candidate ``candidate``: ``seed`` itself for candidate 0 (the noise every
    other method uses), a hash of (seed, candidate) otherwise."""
    if candidate == 0:
        return seed
    digest = hashlib.sha256(f"rlg-candidate:{seed}:{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_knobs(name: str, knobs: Sequence[Any]) -> list[float]:
    out = []
    for k in knobs:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
            raise MethodError(f"method {name}: knob {k!r} is not a finite number; e.g. method.{name}.knobs=[0,1,2]")
        out.append(float(k))
    if not out:
        raise MethodError(f"method {name} has no knobs; give some, e.g. method.{name}.knobs=[0,1,2]")
    if len(set(out)) < len(out):
        raise MethodError(f"method {name}: knobs {out} have duplicates; give each value once")
    return out


class Method:
    """Base class: ``arms()`` for the work list, ``applied(denoiser, arm)`` around each pipeline call."""

    name = ""
    needs_pick = False  # best_of_n: a reward picks among candidates after scoring
    uses_model = True  # False: the method runs both networks, so ``model`` (rl or base alone) means nothing
    base_label = ""  # the stored method name with model=base (e.g. cfg_base); the RL model's is ``name``

    options: dict[str, Any] = {}  # the method's own settings (method.<name>.options) and their defaults

    def __init__(self, knobs: Sequence[Any], model: str = "rl", pick: str | None = None):
        if model not in ("rl", "base"):
            raise MethodError(f"method {self.name}: model={model!r}; use rl or base")
        if model != "rl" and not self.uses_model:  # accepted and ignored would be silent: refuse
            raise MethodError(f"method {self.name}: model={model!r} has no effect ({self.name} runs both networks); "
                              f"remove method.{self.name}.model")
        if pick is not None and not self.needs_pick:
            raise MethodError(f"method {self.name}: pick={pick!r} has no effect (only best_of_n picks among samples); "
                              f"remove method.{self.name}.pick")
        self.knobs = check_knobs(self.name, knobs)
        self.model = model
        self.pick = pick

    @property
    def label(self) -> str:
        """The stored method name: ``name``, or ``base_label`` with model=base (``cfg_base`` for cfg_rl)."""
        return self.base_label if self.model == "base" else self.name

    @property
    def alone_scale(self) -> float:
        """The RLG scale of the model a one-model method runs alone: 1 (RL model) or 0 (base)."""
        return 1.0 if self.model == "rl" else 0.0

    def arms(self) -> list[Arm]:
        raise NotImplementedError

    @contextlib.contextmanager
    def applied(self, denoiser: Any, arm: Arm) -> Iterator[None]:
        """The model state ``arm`` needs during one pipeline call (nothing by default)."""
        yield

    def describe(self) -> dict[str, Any]:
        return {"method": self.label, "knobs": self.knobs, "model": self.model, "pick": self.pick}


def method_options(name: str, accepted: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """``given`` (method.<name>.options) over the ``accepted`` defaults; raises MethodError (one line) for a name
    the method does not take."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(sorted(accepted))}" if accepted else "it takes none"
        raise MethodError(f"method {name}: options {unknown} have no effect ({takes}); remove them")
    return {**accepted, **given}
