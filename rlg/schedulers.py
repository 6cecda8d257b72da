"""Schedulers shared by the analytic ground truth (``rlg.analytic``) and the image pipelines.

``FlowGRPOSDEScheduler`` is the stochastic sampler Flow-GRPO trains and samples with
(yifan123/flow_grpo @ ac4c86e : flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, function
``sde_step_with_logprob``), packaged as a drop-in replacement for diffusers'
``FlowMatchEulerDiscreteScheduler``: same constructor arguments plus ``noise_level``, same ``step()``
signature and output type, so ``pipe.scheduler = FlowGRPOSDEScheduler.from_config(pipe.scheduler.config)``
turns a StableDiffusion3Pipeline into a Flow-GRPO SDE sampler.

The step, with sigma the current noise level, sigma_next the next one, dt = sigma_next - sigma < 0 and
v the model's velocity (x_t = (1 - sigma) x0 + sigma eps, v = eps - x0):

    std  = noise_level * sqrt(sigma / (1 - sigma'))        sigma' = sigmas[1] where sigma == 1 (upstream)
    mean = x * (1 + std^2 / (2 sigma) * dt) + v * (1 + std^2 (1 - sigma) / (2 sigma)) * dt
    x_next = mean + std * sqrt(-dt) * eps,   eps ~ N(0, I)

Randomness: ``step(..., generator=...)`` takes a generator or a list with one per sample. Stock
pipelines (StableDiffusion3Pipeline) call ``scheduler.step(noise_pred, t, latents, return_dict=False)``
without a generator, so the noise would come from torch's global RNG; for reproducible pipeline runs
set ``scheduler.set_noise_generator(generator_or_list)`` once before calling the pipeline.

With noise_level = 0 this is the Euler ODE step ``x + dt * v`` of the parent class, bit for bit (no noise
is drawn then, so a generator shared across steps is left untouched, as with the ODE scheduler).

Note on sigma = 1 (the first step of every unshifted or shifted schedule, sigmas[0] == 1): upstream
replaces the denominator 1 - sigma by 1 - sigmas[1], so std^2 * (-dt) is about noise_level^2 at that
step whatever the number of steps. That is the upstream behaviour and is kept on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["FlowGRPOSDEScheduler", "FlowGRPOSDESchedulerOutput"]


@dataclass
class FlowGRPOSDESchedulerOutput(FlowMatchEulerDiscreteSchedulerOutput):
    """``prev_sample`` as in diffusers, plus the Gaussian transition it was drawn from:
    ``prev_sample ~ N(prev_sample_mean, (std_dev_t * sqrt(-dt))^2)`` (``std_dev_t`` and ``sqrt_neg_dt``
    are 0-d tensors; ``prev_sample_mean`` is in float32 or float64, never lower)."""

    prev_sample_mean: torch.Tensor | None = None
    std_dev_t: torch.Tensor | None = None
    sqrt_neg_dt: torch.Tensor | None = None


class FlowGRPOSDEScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-GRPO's SDE sampler as a ``FlowMatchEulerDiscreteScheduler`` subclass.

    Every argument of the parent (``shift``, dynamic shifting, ...) keeps its meaning; ``noise_level``
    (upstream default 0.7) scales the injected noise and can be overridden per ``step`` call.
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: float | None = 0.5, max_shift: float | None = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, invert_sigmas: bool = False, shift_terminal: float | None = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 time_shift_type: str = "exponential", stochastic_sampling: bool = False, noise_level: float = 0.7):
        if stochastic_sampling:
            raise ValueError(
                "FlowGRPOSDEScheduler injects its own noise (noise_level); stochastic_sampling=True selects a "
                "different sampler. Build it with stochastic_sampling=False, "
                "e.g. FlowGRPOSDEScheduler.from_config(cfg, stochastic_sampling=False)."
            )
        if invert_sigmas:
            raise ValueError("FlowGRPOSDEScheduler does not support invert_sigmas=True (a Mochi-only schedule).")
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        super().__init__(num_train_timesteps=num_train_timesteps, shift=shift,
                         use_dynamic_shifting=use_dynamic_shifting, base_shift=base_shift, max_shift=max_shift,
                         base_image_seq_len=base_image_seq_len, max_image_seq_len=max_image_seq_len,
                         invert_sigmas=invert_sigmas, shift_terminal=shift_terminal,
                         use_karras_sigmas=use_karras_sigmas, use_exponential_sigmas=use_exponential_sigmas,
                         use_beta_sigmas=use_beta_sigmas, time_shift_type=time_shift_type,
                         stochastic_sampling=stochastic_sampling)

    _noise_generator: torch.Generator | list[torch.Generator] | None = None

    def set_noise_generator(self, generator: torch.Generator | list[torch.Generator] | None) -> None:
        """Generator(s) for the step noise when ``step`` gets none (stock pipelines pass none); a list
        gives one generator per sample, as diffusers' ``randn_tensor`` accepts. ``None`` restores the
        global RNG."""
        self._noise_generator = generator

    def _sde_std(self, sigma: torch.Tensor, noise_level: float) -> torch.Tensor:
        # upstream: torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level,
        # with sigma_max = self.sigmas[1] (the second sigma of the schedule, not sigmas[0]).
        sigma_max = self.sigmas[1].to(sigma)
        return torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level

    def step(self, model_output: torch.FloatTensor, timestep: float | torch.FloatTensor, sample: torch.FloatTensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | list[torch.Generator] | None = None,
             per_token_timesteps: torch.Tensor | None = None, return_dict: bool = True,
             noise_level: float | None = None) -> FlowGRPOSDESchedulerOutput | tuple:
        """One Flow-GRPO SDE step from ``sample`` at ``timestep`` to the next sigma of the schedule.

        ``timestep`` is one of ``self.timesteps`` (a float, a 0-d tensor, or a batch tensor whose entries
        are all equal, as SD3 pipelines pass). ``generator`` may be a list with one generator per sample
        (diffusers' ``randn_tensor`` convention). ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise`` are
        accepted for signature compatibility and ignored, as in the parent class.
        Returns ``(prev_sample,)`` when ``return_dict=False``, like the parent.
        """
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not torch.is_floating_point(timestep)):
            raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to"
                             " `FlowGRPOSDEScheduler.step()` is not supported. Pass one of `scheduler.timesteps`.")
        if per_token_timesteps is not None:
            raise NotImplementedError("FlowGRPOSDEScheduler.step does not support per_token_timesteps.")
        if isinstance(timestep, torch.Tensor) and timestep.numel() > 1:
            flat = timestep.flatten()
            if not bool((flat == flat[0]).all()):
                raise ValueError(
                    "FlowGRPOSDEScheduler.step got different timesteps within one batch; step one timestep at a time."
                )
            timestep = flat[0]
        noise_level = self.config.noise_level if noise_level is None else float(noise_level)
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")

        if self.step_index is None:
            self._init_step_index(timestep)

        # Upstream computes in float32 (bf16/fp16 overflow); float64 inputs stay float64.
        compute_dtype = torch.promote_types(model_output.dtype, torch.float32)
        x = sample.to(compute_dtype)
        v = model_output.to(compute_dtype)
        sigma = self.sigmas[self.step_index].to(device=x.device, dtype=compute_dtype)
        sigma_next = self.sigmas[self.step_index + 1].to(device=x.device, dtype=compute_dtype)
        dt = sigma_next - sigma

        std_dev_t = self._sde_std(sigma, noise_level)
        prev_sample_mean = (x * (1 + std_dev_t**2 / (2 * sigma) * dt)
                            + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt)
        sqrt_neg_dt = torch.sqrt(-1 * dt)
        if generator is None:
            generator = self._noise_generator
        if noise_level > 0:
            variance_noise = randn_tensor(v.shape, generator=generator, device=v.device, dtype=compute_dtype)
            prev_sample = prev_sample_mean + std_dev_t * sqrt_neg_dt * variance_noise
        else:
            prev_sample = prev_sample_mean

        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)  # as the parent: back to the model's dtype

        if not return_dict:
            return (prev_sample,)
        return FlowGRPOSDESchedulerOutput(
            prev_sample=prev_sample, prev_sample_mean=prev_sample_mean, std_dev_t=std_dev_t, sqrt_neg_dt=sqrt_neg_dt
        )
