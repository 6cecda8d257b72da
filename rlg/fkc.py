"""RLG with Feynman-Kac correctors (FKC): the RLG mix run over K particles per sample, with importance weights
and resampling, so that in the many-particle limit the output is distributed as p_base^(1-w) p_rl^w.

Plain RLG integrates the mixed score s = (1-w) s_base + w s_rl. That is the score of the geometric average
q_t ∝ p_base,t^(1-w) p_rl,t^w of the two NOISED marginals, but q_t is not the marginal of the process that s
drives, so the output misses the target (``rlg.ground_truth``). Skreta et al. 2025 ("Feynman-Kac Correctors in
Diffusion", arXiv 2503.02819) add a weight per particle that corrects this exactly; for the geometric average
of two scores, in generation time tau (dtau > 0 from noise to data; ``docs/fkc.md`` has the derivation):

    d log w = 1/2 w (w - 1) g(t)^2 |s_rl(x, t) - s_base(x, t)|^2 dtau

with g the diffusion coefficient of the forward noising SDE. It needs only the two network outputs (the
divergence and time-derivative terms of the general Feynman-Kac weight cancel because the sampler's drift uses
the exact mixed score), it is the same for every sampler of the family (DDIM eta, the probability-flow ODE,
Flow-GRPO's SDE), and it is 0 at w = 0 and w = 1. Its Euler discretisation per step of a diffusers scheduler,
from model timestep t to the next, in the networks' own outputs (``weight_coefficient``):

* epsilon prediction, VP (DDIM): g^2 |Δs|^2 dt = log(abar_prev / abar_t) |eps_rl - eps_base|^2 / (1 - abar_t)
  (the exact integral of g^2 = beta(t) over the step; s = -eps / sqrt(1 - abar));
* velocity prediction, rectified flow x_t = (1 - s) x0 + s eps (FlowMatch Euler, ``FlowGRPOSDEScheduler``):
  g^2 = 2 s / (1 - s) and s_score = -(x + (1 - s) v) / s, so g^2 |Δs|^2 ds = 2 (1 - s) (s - s_next) / s
  |v_rl - v_base|^2 (finite at s = 1, where it is 0, and at s_next = 0).

The same rule is in the authors' image code, EDM's VE schedule (g^2 = 2 sigma): martaskrt/fkc-diffusion
@ f6070aaf0e0cd8cb1802853df412149d4aaab7f1 : applications/images/edm2/generate_images.py (``edm_sampler``,
``d_a = -guidance * (guidance - 1) * norm * dt * t_cur``); that code also centres and clamps each increment to
[-1, 1] or [-2, 2] and resamples after every step, which is biased; here the weights are not clamped.

Resampling (``systematic_resample``): systematic (one uniform per group), within each sample's group of K
particles, when the group's effective sample size falls below ``ess_threshold * K`` (``resample="ess"``) or
after every step (``"every_step"``); weights reset to uniform after a resampling. After the last step one
particle per group is drawn with probability proportional to its weight: one output per sample, as a pipeline
returns one image per prompt. Cost: both networks on all K particles at every step, 2 K network rows per
sample and step (plain RLG: 2, or 1 at w in {0, 1}).

Tensors: latents (n K, ...) with group j = rows [j K, (j + 1) K); scales (n,); all weights float64.

Two drivers: ``fkc_sample_loop`` (own loop over diffusers-style networks: the ground truths) and ``FKCPopulation``
(weights and resampling for ``rlg.sampling.RLGSampler``, which runs FKC inside the stock image pipelines:
``sampler.correctors=fkc``, docs/fkc.md §6).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from rlg.sampler_spec import FKC_RESAMPLE as RESAMPLE
from rlg.sampler_spec import FKCConfig

__all__ = ["RESAMPLE", "FKCConfig", "FKCResult", "FKCPopulation", "unsupported_scheduler", "weight_coefficient",
           "log_weight_increment", "effective_sample_size",
           "systematic_resample", "fkc_sample_loop"]

_F64 = torch.float64


@dataclass
class FKCResult:
    """samples: (n, ...) one particle per group; log_weights: (n, K) the final unnormalised log weights;
    ess: (steps, n) each group's effective sample size after each step's weight update (before resampling);
    resampled: (steps, n) bool, whether the group was resampled after that step; network_rows: rows run through
    the two networks (2 n K per step)."""

    samples: torch.Tensor
    log_weights: torch.Tensor
    ess: torch.Tensor
    resampled: torch.Tensor
    network_rows: int
    particles: int
    extras: dict = field(default_factory=dict)


def _is_flow(scheduler) -> bool:
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


def unsupported_scheduler(scheduler) -> str | None:
    """Why the FKC weights are not derived for ``scheduler`` (a one-line reason), or None when they are: a
    ``DDIMScheduler`` with epsilon prediction or a FlowMatch scheduler (velocity; ``FlowGRPOSDEScheduler``)."""
    if _is_flow(scheduler):
        return None
    if isinstance(scheduler, DDIMScheduler):
        kind = scheduler.config.get("prediction_type", "epsilon")
        return None if kind == "epsilon" else f"DDIMScheduler with prediction_type={kind!r} (derived for epsilon)"
    return (f"{type(scheduler).__name__} (derived for DDIMScheduler with epsilon prediction and the FlowMatch "
            "schedulers)")


def weight_coefficient(scheduler, step_index: int) -> float:
    """c_i such that step i's log-weight increment is 1/2 w (w - 1) c_i |pred_rl - pred_base|^2 (module docstring),
    after ``scheduler.set_timesteps``. FlowMatch schedulers (velocity): 2 (1 - s) (s - s_next) / s with s, s_next
    = sigmas[i], sigmas[i + 1]. ``DDIMScheduler`` (epsilon): log(abar_prev / abar_t) / (1 - abar_t)
    with abar_prev as ``DDIMScheduler.step`` takes it (t - num_train_timesteps // num_inference_steps, or
    ``final_alpha_cumprod`` below 0). Raises TypeError for other schedulers, ValueError for a step out of range
    or a non-epsilon VP scheduler."""
    n = len(scheduler.timesteps)
    if not 0 <= step_index < n:
        raise ValueError(f"step_index {step_index} out of range [0, {n})")
    if _is_flow(scheduler):
        s, s_next = float(scheduler.sigmas[step_index]), float(scheduler.sigmas[step_index + 1])
        return 0.0 if s <= 0 else 2.0 * (1.0 - s) * (s - s_next) / s
    if isinstance(scheduler, DDIMScheduler):  # other VP schedulers step differently (e.g. Euler's sigma scaling)
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("FKC weights for VP schedulers are derived for epsilon prediction; scheduler has "
                             f"prediction_type={scheduler.config.prediction_type!r}")
        t = int(scheduler.timesteps[step_index])
        prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        abar = float(scheduler.alphas_cumprod[t])
        abar_prev = float(scheduler.alphas_cumprod[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        return math.log(abar_prev / abar) / (1.0 - abar)
    raise TypeError(f"no FKC weight for {type(scheduler).__name__}; use DDIMScheduler (epsilon) or a FlowMatch scheduler")


def log_weight_increment(pred_base: torch.Tensor, pred_rl: torch.Tensor, scales: torch.Tensor, coefficient: float
                         ) -> torch.Tensor:
    """1/2 w (w - 1) c |pred_rl - pred_base|^2 per row, float64 (B,); ``scales`` (B,) per row."""
    diff = (pred_rl.to(_F64) - pred_base.to(_F64)).reshape(pred_base.shape[0], -1)
    w = scales.to(device=diff.device, dtype=_F64)
    return 0.5 * w * (w - 1.0) * coefficient * (diff**2).sum(1)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / sum w^2 over the last dimension, computed from log weights (G, K) -> (G,), in [1, K]."""
    p = torch.softmax(log_weights.to(_F64), dim=-1)
    return 1.0 / (p**2).sum(-1)


def systematic_resample(log_weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Systematic resampling within each row of ``log_weights`` (G, K): ancestor indices (G, K), long, with
    u_k = (U + k) / K, U ~ Uniform[0, 1) per row, and index = #{j: cdf_j <= u_k} (Douc, Cappé & Moulines 2005).
    Each particle j is copied floor(K p_j) or ceil(K p_j) times."""
    G, K = log_weights.shape
    cdf = torch.softmax(log_weights.to(_F64), dim=-1).cumsum(-1)
    cdf[:, -1] = 1.0  # no index K from rounding
    u = (torch.rand(G, 1, generator=generator, dtype=_F64) + torch.arange(K, dtype=_F64)) / K
    return torch.searchsorted(cdf, u.to(cdf.device), right=True).clamp_(max=K - 1)


class FKCPopulation:
    """The weights and resampling of n populations of K particles (rows j K .. (j + 1) K - 1 are sample j's) for a
    sampler that moves the particles itself (``rlg.sampling.RLGSampler`` inside a pipeline call): after each step,
    :meth:`step` adds the weight increments, records the ESS and returns the ancestor of every row when a group is
    resampled; :meth:`pick` draws one particle per sample ∝ its final weight. Every draw of group j comes from
    ``generators[j]`` (one per output sample), so a sample's result does not depend on the others in its call.
    Weights float64, never clamped (module docstring)."""

    def __init__(self, n: int, config: FKCConfig, generators: list[torch.Generator]):
        if len(generators) != n:
            raise ValueError(f"FKCPopulation needs one generator per sample: {n} samples, {len(generators)} generators")
        self.n, self.K, self.config, self.generators = n, int(config.particles), config, generators
        self.log_weights = torch.zeros(n, self.K, dtype=_F64)
        self.ess: list[torch.Tensor] = []  # per step, (n,), after the update and before resampling
        self.resampled: list[torch.Tensor] = []  # per step, (n,) bool

    def step(self, increments: torch.Tensor, last: bool) -> torch.Tensor | None:
        """Add ``increments`` (n K,) float64 to the log weights; then, unless ``last``, resample the groups that are
        due (systematic). Returns the ancestor row of every row (n K,) long, or None when no group was resampled."""
        self.log_weights += increments.to(_F64).cpu().view(self.n, self.K)
        ess = effective_sample_size(self.log_weights)
        self.ess.append(ess)
        if last or self.K == 1:
            due = torch.zeros(self.n, dtype=torch.bool)
        elif self.config.resample == "every_step":
            due = torch.ones(self.n, dtype=torch.bool)
        else:
            due = ess < self.config.ess_threshold * self.K
        self.resampled.append(due)
        if not bool(due.any()):
            return None
        rows = torch.arange(self.n * self.K).view(self.n, self.K)
        for j in torch.nonzero(due).flatten().tolist():
            anc = systematic_resample(self.log_weights[j:j + 1], self.generators[j])[0]
            rows[j] = rows[j][anc]
            self.log_weights[j] = 0.0
        return rows.reshape(-1)

    def pick(self) -> torch.Tensor:
        """One row per sample (n,), long: particle k of group j drawn with probability ∝ its final weight."""
        probs = torch.softmax(self.log_weights, -1)
        return torch.tensor([j * self.K + int(torch.multinomial(probs[j], 1, generator=self.generators[j]))
                             for j in range(self.n)], dtype=torch.long)


def fkc_sample_loop(base: Callable, rl: Callable, scheduler, latents: torch.Tensor, scales, num_inference_steps: int,
                    config: FKCConfig, *, generator: torch.Generator | None = None, callback=None, **step_kwargs
                    ) -> FKCResult:
    """RLG-FKC with any diffusers-style ``base`` and ``rl`` denoisers (called as ``model(x, t_batch,
    return_dict=False)[0]``) and a diffusers ``scheduler`` (DDIMScheduler epsilon or FlowMatch velocity), in the
    loop of ``rlg.analytic.sample_loop``: ``latents`` (n K, ...) hold K = ``config.particles`` particles per output
    sample (group j = rows [j K, (j + 1) K)), ``scales`` a float or (n,) per-sample RLG scales. ``generator``
    drives the step noise (when ``scheduler.step`` takes one), the resampling and the final pick. ``callback(i)``
    runs after step i. Returns an ``FKCResult`` (module docstring). Raises ValueError when the latents' rows are
    not a multiple of K or ``scales`` has the wrong shape."""
    K = int(config.particles)
    N = latents.shape[0]
    if N % K:
        raise ValueError(f"latents have {N} rows, not a multiple of particles={K}")
    n = N // K
    w = torch.as_tensor(scales, dtype=_F64)
    w = w.expand(n).clone() if w.ndim == 0 else w
    if w.shape != (n,):
        raise ValueError(f"scales must be a float or have shape ({n},), got {tuple(w.shape)}")
    w_rows = w.repeat_interleave(K).to(latents.device)
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    coefficients = [weight_coefficient(scheduler, i) for i in range(len(scheduler.timesteps))]  # errors before work
    kwargs = dict(step_kwargs)
    if generator is not None and "generator" in set(inspect.signature(scheduler.step).parameters):
        kwargs["generator"] = generator
    x = latents
    log_w = torch.zeros(n, K, dtype=_F64)
    ess_hist, res_hist = [], []
    steps = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        tb = t.expand(N)
        pb = base(model_in, tb, return_dict=False)[0]
        pr = rl(model_in, tb, return_dict=False)[0]
        pred = pb + w_rows.to(pb.dtype).view(-1, *([1] * (pb.ndim - 1))) * (pr - pb)
        log_w += log_weight_increment(pb, pr, w_rows, coefficients[i]).view(n, K).cpu()
        x = scheduler.step(pred, t, x, return_dict=False, **kwargs)[0]
        ess = effective_sample_size(log_w)
        ess_hist.append(ess)
        last = i == steps - 1
        due = torch.zeros(n, dtype=torch.bool) if last or K == 1 else (
            torch.ones(n, dtype=torch.bool) if config.resample == "every_step" else ess < config.ess_threshold * K)
        res_hist.append(due)
        if bool(due.any()):
            idx = torch.arange(N).view(n, K)
            anc = systematic_resample(log_w[due], generator)
            idx[due] = torch.gather(idx[due], 1, anc)
            x = x[idx.reshape(-1).to(x.device)]
            log_w[due] = 0.0
        if callback is not None:
            callback(i)
    pick = torch.multinomial(torch.softmax(log_w, -1), 1, generator=generator).squeeze(1)
    rows = torch.arange(n) * K + pick
    return FKCResult(samples=x[rows.to(x.device)], log_weights=log_w, ess=torch.stack(ess_hist),
                     resampled=torch.stack(res_hist), network_rows=2 * N * steps, particles=K)
