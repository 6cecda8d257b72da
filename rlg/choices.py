"""The library's named choices, one ``rlg.registry.Registry`` each, readable without torch (the config check
names them at start-up; the entries are imported on first ``get``):

    SCHEDULERS  sampler.scheduler -> factory(pipe, shift=, noise_level=) -> the scheduler of a call (rlg.sampling)
    RL_KINDS    pair.rl_kind -> loader(spec, pipe, base, denoiser_name) -> (rl model or None, info) (rlg.pairs):
                a full RL denoiser, or None when the RL weights are an adapter on the base (RLGDenoiser.rl_adapter)

The evaluators' registry is ``rlg.evaluators.base.REGISTRY`` and the methods' ``rlg.methods.METHODS``.
"""

from __future__ import annotations

from rlg.registry import Registry

SCHEDULERS = Registry("scheduler", {
    "default": "rlg.sampling:pipeline_scheduler",
    "ddim": "rlg.sampling:ddim_scheduler",
    "euler_ode": "rlg.sampling:euler_ode_scheduler",
    "flow_grpo_sde": "rlg.sampling:flow_grpo_sde_scheduler",
}, error=ValueError)

RL_KINDS = Registry("rl_kind", {
    "full": "rlg.pairs:rl_full",
    "diffusers_lora": "rlg.pairs:rl_diffusers_lora",
    "peft_lora": "rlg.pairs:rl_peft_lora",
}, error=ValueError)

__all__ = ["RL_KINDS", "SCHEDULERS"]
