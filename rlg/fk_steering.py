"""FK steering (Singhal, Horvitz, Teehan, Ren, Yu, Cho, Ranganath 2025, arXiv 2501.06848): one model, K particles per
sample, resampled by potentials of intermediate rewards on the predicted x0, so that in the many-particle limit
the output is distributed as p_model(x0) exp(lam R(x0)) / Z.

With p_model = p_base and lam = w / beta that is the beta/w optimum RLG stands for; with p_model = p_rl and
lam = (w - 1) / beta it is the same distribution. So on the analytic ground truth FK steering is a third way to
the same target, at K network rows per sample and step (one model; RLG-FKC: 2 K).

Algorithm (``fk_steering_sample_loop``; the reference mechanism: zacharyhorvitz/Fk-Diffusion-Steering
@ 2fca4c573a8c1d94486375d7cff857616640adbe : discrete_diffusion/fkd_class.py, ``FKD.resample``):

* at every ``resample_interval``-th step i (counted from the first), the reward r_i = R(x0_hat_i) of each
  particle's predicted x0 (``predicted_x0``: DDIM epsilon or FlowMatch velocity) gives the potential
  G_i = exp(lam phi_i) with phi_i = r_i - r_prev ("difference"), max(r_i, r_prev) ("max": r_prev the running
  max) or r_i + r_prev ("sum": the running sum); the particles of a sample are resampled (systematic, within the
  sample's group) with probability ∝ G_i, and each particle's log product of the potentials it was resampled by
  is carried along;
* at the end, the output's own reward r = R(x_out) gives the final weight exp(lam r) / prod G (the reference
  code's terminal correction), one particle per sample is drawn ∝ that weight. The product of all weights is
  exp(lam R(x_out)) for every potential, hence the target.

Differences from the reference code: systematic instead of multinomial resampling; no adaptive (ESS-triggered)
skipping of scheduled resamplings (the reference skips them but keeps updating r_prev, which then no longer
matches the carried product); no clamping of weights at 1e10.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from rlg.fkc import FKCResult, effective_sample_size, systematic_resample
from rlg.sampler_spec import FK_POTENTIALS

__all__ = ["POTENTIALS", "FKSteeringConfig", "FKSteeringPopulation", "predicted_x0", "fk_steering_sample_loop"]

POTENTIALS = FK_POTENTIALS
_F64 = torch.float64


@dataclass(frozen=True)
class FKSteeringConfig:
    """particles K >= 1; potential in POTENTIALS; lam the reward's inverse temperature (target p exp(lam R));
    resample_interval >= 1 steps between resamplings."""

    particles: int = 4
    potential: str = "difference"
    lam: float = 1.0
    resample_interval: int = 1

    def __post_init__(self):
        if int(self.particles) != self.particles or self.particles < 1:
            raise ValueError(f"fk_steering particles must be an integer >= 1, got {self.particles}")
        if self.potential not in POTENTIALS:
            raise ValueError(f"fk_steering potential={self.potential!r}; use one of {list(POTENTIALS)}")
        if int(self.resample_interval) != self.resample_interval or self.resample_interval < 1:
            raise ValueError(f"fk_steering resample_interval must be an integer >= 1, got {self.resample_interval}")
        if not math.isfinite(self.lam):
            raise ValueError(f"fk_steering lam must be finite, got {self.lam}")


def predicted_x0(scheduler, t, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] from a prediction at model timestep t: DDIMScheduler (epsilon) (x - sqrt(1 - abar) eps) /
    sqrt(abar); FlowMatch (velocity, t = s * num_train_timesteps) x - s v. Raises TypeError otherwise."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        s = float(t) / scheduler.config.num_train_timesteps
        return x - s * pred
    if isinstance(scheduler, DDIMScheduler) and scheduler.config.prediction_type == "epsilon":
        abar = float(scheduler.alphas_cumprod[int(t)])
        return (x - math.sqrt(1 - abar) * pred) / math.sqrt(abar)
    raise TypeError(f"no predicted x0 for {type(scheduler).__name__}; use DDIMScheduler (epsilon) or FlowMatch")


class FKSteeringPopulation:
    """The potentials and resampling of n populations of K particles (rows j K .. (j + 1) K - 1 are sample j's) for
    a sampler that moves the particles itself (``rlg.sampling.RLGSampler`` inside a pipeline call), the mechanism
    of :func:`fk_steering_sample_loop`: :meth:`potential_step` takes the rewards of the particles' predicted x0 at a
    scheduled step and returns the ancestor of every row (systematic, within each group, ∝ exp(lam phi));
    :meth:`pick` takes the rewards of the outputs and draws one particle per sample ∝ exp(lam R) / prod G. Every
    draw of group j comes from ``generators[j]``. Rewards (n K,), higher is better; weights float64."""

    def __init__(self, n: int, config: FKSteeringConfig, generators: list[torch.Generator]):
        if len(generators) != n:
            raise ValueError(f"FKSteeringPopulation needs one generator per sample: {n} samples, {len(generators)}")
        self.n, self.K, self.config, self.generators = n, int(config.particles), config, generators
        self.r_prev = torch.full((n, self.K), -math.inf if config.potential == "max" else 0.0, dtype=_F64)
        self.log_prod = torch.zeros(n, self.K, dtype=_F64)
        self.ess: list[torch.Tensor] = []  # per scheduled step, (n,): the ESS of the potentials
        self.log_weights = torch.zeros(n, self.K, dtype=_F64)  # the final correction (set by pick)

    def potential_step(self, rewards: torch.Tensor) -> torch.Tensor:
        """Resample every group by its potentials of ``rewards`` (n K,); returns the ancestor rows (n K,) long."""
        r = rewards.to(_F64).cpu().view(self.n, self.K)
        phi = {"difference": r - self.r_prev, "max": torch.maximum(r, self.r_prev),
               "sum": r + self.r_prev}[self.config.potential]
        log_g = float(self.config.lam) * phi
        self.ess.append(effective_sample_size(log_g))
        anc = torch.stack([systematic_resample(log_g[j:j + 1], self.generators[j])[0] for j in range(self.n)])
        self.log_prod = torch.gather(self.log_prod + log_g, 1, anc)
        self.r_prev = torch.gather(r if self.config.potential == "difference" else phi, 1, anc)
        return (torch.arange(self.n)[:, None] * self.K + anc).reshape(-1)

    def pick(self, rewards: torch.Tensor) -> torch.Tensor:
        """One row per sample (n,), long, drawn ∝ exp(lam R(x_out)) / prod G from the outputs' ``rewards`` (n K,)."""
        self.log_weights = float(self.config.lam) * rewards.to(_F64).cpu().view(self.n, self.K) - self.log_prod
        probs = torch.softmax(self.log_weights, -1)
        return torch.tensor([j * self.K + int(torch.multinomial(probs[j], 1, generator=self.generators[j]))
                             for j in range(self.n)], dtype=torch.long)


def fk_steering_sample_loop(model: Callable, scheduler, latents: torch.Tensor,
                            reward: Callable[[torch.Tensor], torch.Tensor], num_inference_steps: int,
                            config: FKSteeringConfig, *, generator: torch.Generator | None = None,
                            **step_kwargs) -> FKCResult:
    """FK steering of one diffusers-style ``model`` (``model(x, t_batch, return_dict=False)[0]``) under
    ``scheduler``; ``latents`` (n K, ...) hold K particles per output sample (group j = rows [jK, (j+1)K));
    ``reward(x) -> (rows,)`` scores samples in the latents' layout. Returns an ``FKCResult`` whose ``log_weights``
    are the final correction weights (n, K), ``ess`` the ESS of each scheduled potential (resamplings, n) and
    ``network_rows`` = n K steps. Raises ValueError when the rows are not a multiple of K."""
    K = int(config.particles)
    N = latents.shape[0]
    if N % K:
        raise ValueError(f"latents have {N} rows, not a multiple of particles={K}")
    n = N // K
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    predicted_x0(scheduler, scheduler.timesteps[0], latents[:1], latents[:1])  # unsupported scheduler: fail first
    kwargs = dict(step_kwargs)
    if generator is not None and "generator" in set(inspect.signature(scheduler.step).parameters):
        kwargs["generator"] = generator
    lam = float(config.lam)
    r_prev = torch.full((n, K), -math.inf if config.potential == "max" else 0.0, dtype=_F64)
    log_prod = torch.zeros(n, K, dtype=_F64)
    ess_hist, x = [], latents
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        pred = model(model_in, t.expand(N), return_dict=False)[0]
        if i % config.resample_interval == 0 and K > 1:
            r = reward(predicted_x0(scheduler, t, x, pred)).to(_F64).view(n, K).cpu()
            phi = {"difference": r - r_prev, "max": torch.maximum(r, r_prev), "sum": r + r_prev}[config.potential]
            log_g = lam * phi
            ess_hist.append(effective_sample_size(log_g))
            anc = systematic_resample(log_g, generator)
            rows = (torch.arange(n)[:, None] * K + anc).reshape(-1)
            x, pred = x[rows.to(x.device)], pred[rows.to(pred.device)]
            log_prod = torch.gather(log_prod + log_g, 1, anc)
            r_prev = torch.gather(r if config.potential == "difference" else phi, 1, anc)
        x = scheduler.step(pred, t, x, return_dict=False, **kwargs)[0]
    log_w = lam * reward(x).to(_F64).view(n, K).cpu() - log_prod
    pick = torch.multinomial(torch.softmax(log_w, -1), 1, generator=generator).squeeze(1)
    out = x[(torch.arange(n) * K + pick).to(x.device)]
    ess = torch.stack(ess_hist) if ess_hist else torch.full((0, n), float(K), dtype=_F64)
    return FKCResult(samples=out, log_weights=log_w, ess=ess, resampled=torch.ones(ess.shape, dtype=torch.bool),
                     network_rows=N * len(scheduler.timesteps), particles=K)
