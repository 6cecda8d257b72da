"""rlg-bench: Reinforcement Learning Guidance (arXiv 2508.21016) for stock diffusers pipelines.

The library in a notebook (``import rlg`` is light: torch and diffusers load on first use)::

    import rlg
    pair = rlg.from_pipeline(pipe, rl=rl_unet)   # or rl="path/to/peft_adapter", or load_pair(PairSpec(...))
    grid = rlg.generate_grid(pair, ["a red cube"], scales=[0, 0.5, 1, 1.5], num_inference_steps=20)
    grid[0][0][3]                                 # PIL image of prompt 0, sample 0, w = 1.5

    res = rlg.run(experiment="quickstart", overrides=["prompts.max_prompts=2"])   # a preset, as the CLI runs it
    res.summary, res.scores, res.report           # frames and report/index.html
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "rlg.guidance": ("rlg_mix", "StepWindow", "check_scales", "ScaleError"),
    "rlg.denoiser": ("RLGDenoiser",),
    "rlg.pairs": ("load_pair", "from_pipeline", "weights_identity", "place", "tiny_spec", "PairSpec", "Checkpoint",
                  "LoadedPair", "PairError"),
    "rlg.sampling": ("RLGSampler", "SamplerSettings", "WorkItem", "Generated", "noise_seed", "SamplerError"),
    "rlg.choices": ("SCHEDULERS",),
    "rlg.grid": ("Grid", "run_grid", "generate_grid"),
    "rlg.schedulers": ("FlowGRPOSDEScheduler",),
    "rlg.harness.simple": ("run", "RunResult"),  # a preset from Python, results as frames
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the defining module on first use (PEP 562), so ``import rlg`` stays light."""
    if name not in _WHERE:
        raise AttributeError(f"module 'rlg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
