"""The learned-model ground truth of the KL claim: small MLP denoisers where the beta/w optimum is known exactly.

The trained zoo cannot say how far a retrained model is from its KL-regularised optimum, nor how much of a gap
between RLG and retraining is the network's. Here the base is the analytic Gaussian mixture of
``rlg.analytic`` (a ``make_pair`` preset), whose optimum for KL coefficient b, p_ref exp(R / b) / Z, is again a
mixture with closed-form samples, rewards and scores. Per training seed s (``LearnedTruthConfig.seeds``):

* ``base_s``: an MLP epsilon-predictor (``MLPDenoiser``) trained by denoising score matching on exact samples
  of p_ref (SD1.5's DDPM schedule, uniform t);
* ``tuned_s(b)``: ``base_s`` fine-tuned at KL coefficient b by KL-regularised reward-weighted regression
  (RWR): the denoising loss on exact samples of p_ref, each weighted by exp(R(x0) / b) normalised over the
  batch. Its population minimiser is exactly the score of p_ref exp(R / b) / Z (importance-weighted score
  matching), so the fine-tune is a retraining arm that *can* reach the optimum the claim is about;
* ``oracle_s(b)``: ``base_s`` trained for the same steps by plain score matching on exact samples of the
  optimum itself: what this network reaches when fine-tuning has no error of its own.

Arms sampled at each w (b = beta / w), all with DDIM (eta ``eta``), the same steps, the same initial latents
(x_T from the exact noised marginal of the w target, as ``rlg.ground_truth`` does) and the same step noise:

* ``exact``: the exact score of p_ref exp(w R / beta) (the sampler control);
* ``rlg_exact``: the production ``RLGDenoiser`` over the exact base and the exact beta optimum;
* per seed: ``oracle`` (oracle_s(b)), ``retrained`` (tuned_s(b)), ``rlg`` (``RLGDenoiser`` over base_s and
  tuned_s(beta) at scale w), ``weights`` (the DeRa-style weight extrapolation base_s + w (tuned_s(beta) -
  base_s), Liu et al. ICML 2024, sampled alone).

The reward errors separated (``rlg.kl_stats.decompose``; mean reward of the sampled x_0 at the sampler's output noise):

* RLG's own gap, exact scores: rlg_exact - exact (paired over samples; normal 95% interval);
* the network's approximation error: oracle - exact, per seed (t interval over seeds);
* fine-tuning's convergence error: retrained - oracle, per seed (t interval over seeds);
* and the KL-claim comparison itself on learned models: rlg - retrained, paired over seeds, with the
  responsiveness check retrained(beta / w) - retrained(beta) and Holm's correction across w
  (``rlg.kl_stats.kl_verdicts``, rlg-bench's one verdict rule).

Besides the reward, every arm reports the energy distance to exact samples of the w target and the path KL to
its base along its own DDIM trajectories (``path_kl``): with eta > 0 every step is Gaussian with the same
variance under both models, so KL(model path || base path) = sum_t c_t^2 |eps_model - eps_base|^2 / (2 sigma_t^2)
(c_t the DDIM coefficient of eps in the step mean), for RLG's mixed prediction too; the DeRa figure plots reward
against it. The learned arms measure it against their own base_s, the exact arms against the exact base.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import FrozenDict
from torch import nn

from rlg.analytic import AnalyticDenoiserOutput, AnalyticPair, final_alpha_sigma, initial_alpha_sigma, make_pair
from rlg.analytic_metrics import batched, energy_distance
from rlg.kind_spec import OBJECTIVES, LearnedTruthConfig

__all__ = ["LearnedTruthConfig", "MLPDenoiser", "train_base", "fine_tune", "pg_loss", "dpo_loss", "elbo_weights",
           "preference_pairs", "sample_trajectories", "step_table", "objective_value", "weight_extrapolation",
           "path_kl", "run_learned_truth"]


def _scheduler() -> DDIMScheduler:
    from rlg.ground_truth import SD15_DDIM_CONFIG

    return DDIMScheduler(**SD15_DDIM_CONFIG)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for (B, d) samples, t an integer DDPM timestep in [0, num_train_timesteps); a
    diffusers-style ``forward(sample, timestep, encoder_hidden_states=None, return_dict=True)`` so the
    production ``RLGDenoiser`` and the analytic ``sample_loop`` drive it. float32; t enters as sin/cos
    features of t / num_train_timesteps at frequencies pi * 2^k, k < 8."""

    def __init__(self, d: int, hidden: int = 128, depth: int = 3, num_train_timesteps: int = 1000):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(8, dtype=torch.float32), persistent=False)
        dims = [d + 16] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, d))
        self.config = FrozenDict(in_channels=d, out_channels=d, sample_size=1, prediction_type="epsilon",
                                 num_train_timesteps=num_train_timesteps)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.freqs.device

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, d) float32 prediction for (B, d) x and (B,) timesteps."""
        tt = t.to(torch.float32)[:, None] / self.config.num_train_timesteps * self.freqs
        return self.net(torch.cat([x.to(torch.float32), torch.sin(tt), torch.cos(tt)], dim=1))

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict: bool = True, **kwargs):
        B = sample.shape[0]
        t = torch.as_tensor(timestep).reshape(-1)
        t = t.expand(B) if t.numel() == 1 else t
        out = self.eps(sample.reshape(B, -1), t).reshape(sample.shape).to(sample.dtype)
        return AnalyticDenoiserOutput(sample=out) if return_dict else (out,)


def _dsm_loss(net: MLPDenoiser, x0: torch.Tensor, abar: torch.Tensor, g: torch.Generator,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """The epsilon-MSE of denoising score matching at uniform t, optionally per-sample weighted (mean weight 1)."""
    B = x0.shape[0]
    t = torch.randint(0, abar.numel(), (B,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = abar[t][:, None]
    err = ((net.eps(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps) ** 2).sum(1)
    return (err if weights is None else weights * err).mean()


def _fit(net: MLPDenoiser, batch, steps: int, lr: float, g: torch.Generator) -> list[float]:
    """Denoising score matching (:func:`_train_loop` without gradient clipping) for ``steps`` steps on
    ``batch(g) -> (x0, weights or None)``; the loss curve (ten means over equal chunks of the steps)."""
    abar = _scheduler().alphas_cumprod.to(torch.float32)

    def loss_fn():
        x0, wts = batch(g)
        loss = _dsm_loss(net, x0, abar, g, wts)
        return loss, float(loss.detach())

    return _train_loop(net, loss_fn, steps, lr, clip=None)


def train_base(pair: AnalyticPair, seed: int, config: LearnedTruthConfig) -> tuple[MLPDenoiser, list[float]]:
    """The base MLP of training seed ``seed`` (init and data), on exact samples of p_ref; (net, loss curve)."""
    torch.manual_seed(seed)
    net = MLPDenoiser(pair.d, config.hidden, config.depth)
    g = torch.Generator().manual_seed(10_000 + seed)
    curve = _fit(net, lambda g: (pair.base.sample(config.batch_size, g).float(), None), config.base_steps,
                 config.lr, g)
    return net, curve


def fine_tune(base: MLPDenoiser, pair: AnalyticPair, b: float, seed: int, config: LearnedTruthConfig,
              objective: str = "rwr") -> tuple[MLPDenoiser, list[float]]:
    """``base`` trained on towards p_ref exp(R / b); (net, training curve: ten means over equal chunks of the
    steps); data and noise from ``seed`` and b.

    * ``"rwr"`` (``tune_steps``): the DSM loss on exact p_ref samples weighted by softmax(R / b) over the batch
      (times the batch size: mean weight 1); the population minimiser is the optimum's score. Curve: the loss.
    * ``"oracle"`` (``tune_steps``): plain DSM on exact samples of the optimum. Curve: the loss.
    * ``"pg"`` (``pg_steps``): KL-regularised policy gradient on the model's own DDIM (eta) trajectories
      (:func:`pg_loss` with the KL to go in the advantage). Curve: the batch's mean reward.
    * ``"pg_dpok"``: the same with the formula of ``rlg.zoo.train_digits_ddpo`` (no KL in the advantage).
    * ``"dpo"`` (``dpo_steps``): Diffusion-DPO with beta_dpo = b on Bradley-Terry pairs of exact p_ref samples
      (:func:`dpo_loss`). Curve: the loss.
    Raises ValueError for any other objective."""
    if objective not in ("oracle",) + OBJECTIVES:
        raise ValueError(f"objective={objective!r}; use one of {['oracle', *OBJECTIVES]}")
    net = copy.deepcopy(base)
    # rwr and oracle keep the streams of the first published run; pg and dpo get their own
    offset = 7919 * {"rwr": 0, "oracle": 0, "pg": 1, "dpo": 2, "pg_dpok": 3}[objective]
    g = torch.Generator().manual_seed(20_000 + 97 * seed + int(round(1000 * b)) + offset)
    if objective in ("pg", "pg_dpok"):
        return net, _fit_pg(net, base, pair, b, config, g, kl_in_advantage=objective == "pg")
    if objective == "dpo":
        return net, _fit_dpo(net, base, pair, b, config, g)
    w = pair.beta / b  # p_ref exp(R / b) is the pair's target at w = beta / b

    def rwr(g):
        x0 = pair.base.sample(config.batch_size, g)
        return x0.float(), (config.batch_size * torch.softmax(pair.reward(x0) / b, 0)).float()

    def oracle(g):
        return pair.exact_samples(w, config.batch_size, g).float(), None

    curve = _fit(net, rwr if objective == "rwr" else oracle, config.tune_steps, config.tune_lr, g)
    return net, curve


def _train_loop(net: MLPDenoiser, loss_fn, steps: int, lr: float, clip: float | None = 1.0) -> list[float]:
    """Adam (cosine decay; grad norm clipped at ``clip`` as the zoo's trainers do, None: not clipped) on
    ``loss_fn() -> (loss, logged)``; ten means of ``logged`` over equal chunks of the steps."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    curve, every, acc = [], max(1, steps // 10), 0.0
    for i in range(steps):
        loss, logged = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        sched.step()
        acc += logged
        if (i + 1) % every == 0:
            curve.append(acc / every)
            acc = 0.0
    return curve


def step_table(config: LearnedTruthConfig) -> dict[str, torch.Tensor]:
    """The DDIM (eta) steps of the sampler as tensors over the ``num_inference_steps`` steps in sampling order:
    t (long), A, C, sigma (float32), with mean = A x_t + C eps (``rlg.zoo.digits_rl.step_coefficients``)."""
    from rlg.zoo.digits_rl import step_coefficients

    coefs = step_coefficients(_scheduler(), config.num_inference_steps, config.eta)
    out = {k: torch.tensor([c[k] for c in coefs], dtype=torch.float32) for k in ("A", "C", "sigma")}
    out["t"] = torch.tensor([c["t"] for c in coefs], dtype=torch.long)
    return out


@torch.no_grad()
def sample_trajectories(net: MLPDenoiser, base: MLPDenoiser, latents: torch.Tensor, steps: dict[str, torch.Tensor],
                        g: torch.Generator) -> dict[str, torch.Tensor]:
    """DDIM (eta) trajectories of ``net`` from (B, d) ``latents``: states x (S + 1, B, d) in sampling order (x[-1]
    is x_0), the base's prediction eps_base at each visited state (S, B, d) and the per-step KL to the base,
    kl (S, B) = C^2 |eps - eps_base|^2 / (2 sigma^2) (the DPOK per-step KL; ``rlg.zoo.digits_rl``)."""
    x = latents.float()
    xs, refs, kls = [x], [], []
    for i in range(len(steps["t"])):
        t = steps["t"][i].expand(x.shape[0])
        e, e_ref = net.eps(x, t), base.eps(x, t)
        A, C, sig = steps["A"][i], steps["C"][i], steps["sigma"][i]
        x = A * x + C * e + sig * torch.randn(x.shape, generator=g)
        xs.append(x)
        refs.append(e_ref)
        kls.append((C * (e - e_ref)).pow(2).sum(1) / (2 * sig**2))
    return {"x": torch.stack(xs), "eps_base": torch.stack(refs), "kl": torch.stack(kls)}


def pg_loss(net: MLPDenoiser, traj: dict[str, torch.Tensor], reward: torch.Tensor, b: float,
            steps: dict[str, torch.Tensor], chosen: torch.Tensor, kl_in_advantage: bool = True) -> torch.Tensor:
    """The KL-regularised policy-gradient surrogate on trajectories of the current policy (on-policy, one update
    per batch: DDPO's importance ratio is 1, its clip never acts), over the steps ``chosen`` (indices into the
    S steps), rescaled to the full sum:

        loss = S / |chosen| * mean_n sum_{i in chosen} [ -A_{n,i} log p_theta(x_{i+1} | x_i) + b KL_i(x_i) ]

    the formula of ``rlg.zoo.train_digits_ddpo`` (DDPO, Black et al. 2023, with DPOK's per-step KL, Fan et al.
    2023, eq. 7). With ``kl_in_advantage`` the advantage is that of the return to go,
    A_{n,i} = G_{n,i} - mean_n G_{n,i}, G_{n,i} = R_n - b sum_{j > i} KL_j: the KL the step causes later is
    charged to it, which makes the gradient unbiased for E[R(x_0)] - b KL(path || base path) (whose optimum over
    path measures has x_0-marginal p_base exp(R / b) / Z). Without it A = R - mean R (the zoo's formula: the KL
    enters only through its value at the visited states). Shapes: traj from :func:`sample_trajectories`,
    reward (B,); a scalar tensor."""
    x, kl = traj["x"], traj["kl"]  # (S + 1, B, d), (S, B)
    S, B, d = kl.shape[0], kl.shape[1], x.shape[2]
    if kl_in_advantage:
        to_go = kl.flip(0).cumsum(0).flip(0) - kl  # sum_{j > i} KL_j
        ret = reward[None, :] - b * to_go
    else:
        ret = reward[None, :].expand(S, B)
    adv = (ret - ret.mean(1, keepdim=True))[chosen]  # (k, B)
    xt, xp = x[chosen], x[chosen + 1]
    t = steps["t"][chosen][:, None].expand(-1, B).reshape(-1)
    e = net.eps(xt.reshape(-1, d), t).reshape(len(chosen), B, d)
    A, C, sig = (steps[k][chosen][:, None, None] for k in ("A", "C", "sigma"))
    logp = -((xp - A * xt - C * e) ** 2).sum(2) / (2 * sig[..., 0] ** 2)  # (k, B), up to a constant
    kl_now = (C * (e - traj["eps_base"][chosen])).pow(2).sum(2) / (2 * sig[..., 0] ** 2)
    return S / len(chosen) * (-(adv * logp) + b * kl_now).sum(0).mean()


def _fit_pg(net: MLPDenoiser, base: MLPDenoiser, pair: AnalyticPair, b: float, config: LearnedTruthConfig,
            g: torch.Generator, kl_in_advantage: bool) -> list[float]:
    scheduler = _scheduler()
    a0, s0 = initial_alpha_sigma(scheduler, config.num_inference_steps)
    steps = step_table(config)
    S = len(steps["t"])
    k = max(1, round(config.pg_timestep_fraction * S))

    def loss_fn():
        # start: the base's noised marginal at the first timestep (no policy can change x_T)
        lat = a0 * pair.base.sample(config.pg_batch, g) + s0 * torch.randn(config.pg_batch, pair.d, generator=g,
                                                                           dtype=torch.float64)
        traj = sample_trajectories(net, base, lat, steps, g)
        r = pair.reward(traj["x"][-1].double()).float()
        chosen = torch.randperm(S, generator=g)[:k]
        return pg_loss(net, traj, r, b, steps, chosen, kl_in_advantage), float(r.mean())

    return _train_loop(net, loss_fn, config.pg_steps, config.pg_lr)


def elbo_weights(scheduler=None) -> torch.Tensor:
    """(T,) float32: (T - 1) lambda_t with lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) = beta_t /
    (2 alpha_t (1 - abar_{t-1})), sigma_t^2 the posterior variance (Ho et al. 2020, eq. 12 with the variational
    weights): -log p(x_0) <= sum_{t >= 1} lambda_t E|eps - eps_theta(x_t, t)|^2 + C, so (T - 1) lambda_t times
    one uniform draw of t in [1, T) estimates it. Entry 0 (the decoder term, no Gaussian transition) is 0."""
    s = scheduler or _scheduler()
    beta, alpha, abar = s.betas.double(), s.alphas.double(), s.alphas_cumprod.double()
    lam = torch.zeros_like(beta)
    lam[1:] = beta[1:] / (2 * alpha[1:] * (1 - abar[:-1]))
    return ((len(beta) - 1) * lam).float()


def dpo_loss(net: MLPDenoiser, base: MLPDenoiser, x_w: torch.Tensor, x_l: torch.Tensor, t: torch.Tensor,
             eps: torch.Tensor, abar: torch.Tensor, weight: torch.Tensor, beta_dpo: float) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al. 2023, eq. 14; the loss of ``rlg.zoo.train_digits_dpo``) for (P, d) winners
    ``x_w`` and losers ``x_l``, one (P,) timestep and one (P, d) noise shared by each pair:

        loss = -mean log sigmoid( -beta_dpo * w(t) * ((l_w - r_w) - (l_l - r_l)) )

    l = |eps - eps_theta(x_t, t)|^2 summed over dims, r the same for ``base``, w(t) = ``weight[t]``. With
    w(t) = (T - 1) lambda_t (:func:`elbo_weights`) the bracket is one draw of -(log-likelihood ratio of winner minus
    loser) of the path ELBO, so beta_dpo is DPO's KL coefficient: its optimum under Bradley-Terry labels
    P(x_1 > x_2) = sigmoid(R(x_1) - R(x_2)) would be p_ref exp(R / beta_dpo) / Z if the ELBO were the likelihood
    and the expectation over t sat inside the sigmoid (it sits outside: the surrogate's bias, measured here).
    (The zoo's trainer uses w(t) = 1 / (2 d) with the MSE mean over dims.)"""
    P = x_w.shape[0]
    tt = t.repeat(2)
    a = abar[tt][:, None]
    xt = a.sqrt() * torch.cat([x_w, x_l]) + (1 - a).sqrt() * eps.repeat(2, 1)
    model = ((net.eps(xt, tt) - eps.repeat(2, 1)) ** 2).sum(1)
    with torch.no_grad():
        ref = ((base.eps(xt, tt) - eps.repeat(2, 1)) ** 2).sum(1)
    inside = -beta_dpo * weight[t] * ((model[:P] - ref[:P]) - (model[P:] - ref[P:]))
    return -torch.nn.functional.logsigmoid(inside).mean()


def preference_pairs(pair: AnalyticPair, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(winners, losers), each (n, d) float32: two exact p_ref samples per pair, the first preferred with
    probability sigmoid(R(x_1) - R(x_2)) (a Bradley-Terry draw on the analytic reward, temperature 1)."""
    x1, x2 = pair.base.sample(n, g), pair.base.sample(n, g)
    first = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(pair.reward(x1) - pair.reward(x2))
    m = first[:, None]
    return torch.where(m, x1, x2).float(), torch.where(m, x2, x1).float()


def _dpo_weights(config: LearnedTruthConfig) -> torch.Tensor:
    weight = elbo_weights()
    if config.dpo_weight == "constant":
        weight[1:] = weight[1:].mean()
    return weight


def _fit_dpo(net: MLPDenoiser, base: MLPDenoiser, pair: AnalyticPair, b: float, config: LearnedTruthConfig,
             g: torch.Generator) -> list[float]:
    abar = _scheduler().alphas_cumprod.to(torch.float32)
    weight = _dpo_weights(config)
    T = len(abar)

    def loss_fn():
        x_w, x_l = preference_pairs(pair, config.dpo_pairs, g)
        t = torch.randint(1, T, (config.dpo_pairs,), generator=g)
        eps = torch.randn(x_w.shape, generator=g)
        loss = dpo_loss(net, base, x_w, x_l, t, eps, abar, weight, b)
        return loss, float(loss.detach())

    return _train_loop(net, loss_fn, config.dpo_steps, config.dpo_lr)


@torch.no_grad()
def objective_value(net: MLPDenoiser, base: MLPDenoiser, pair: AnalyticPair, b: float, objective: str,
                    config: LearnedTruthConfig, seed: int, n: int = 4096) -> float:
    """The value of ``objective``'s own training criterion at ``net`` on one fixed evaluation draw (``seed``:
    the same draw for every net, so two nets' values are paired), oriented so that larger is better:
    ``rwr``: minus the softmax(R / b)-weighted DSM loss; ``dpo``: minus the Diffusion-DPO loss; ``pg`` and
    ``pg_dpok``: E[R(x_0)] - b KL(path || base path) over n trajectories from the base's noised marginal (the
    objective PG maximises; the DPOK formula follows a biased gradient of it). Evaluated at the oracle too, it
    says whether a gap to the oracle is the optimiser's (the oracle scores better) or the objective's (the
    fine-tune scores better: the objective's optimum is not the oracle). n: draws."""
    g = torch.Generator().manual_seed(30_000 + seed)
    if objective == "rwr":
        x0 = pair.base.sample(n, g)
        wts = (n * torch.softmax(pair.reward(x0) / b, 0)).float()
        return -float(_dsm_loss(net, x0.float(), _scheduler().alphas_cumprod.to(torch.float32), g, wts))
    if objective == "dpo":
        x_w, x_l = preference_pairs(pair, n, g)
        t = torch.randint(1, _scheduler().config.num_train_timesteps, (n,), generator=g)
        eps = torch.randn(x_w.shape, generator=g)
        weight = _dpo_weights(config)
        return -float(dpo_loss(net, base, x_w, x_l, t, eps, _scheduler().alphas_cumprod.to(torch.float32), weight, b))
    if objective in ("pg", "pg_dpok"):
        a0, s0 = initial_alpha_sigma(_scheduler(), config.num_inference_steps)
        lat = a0 * pair.base.sample(n, g) + s0 * torch.randn(n, pair.d, generator=g, dtype=torch.float64)
        traj = sample_trajectories(net, base, lat, step_table(config), g)
        return float(pair.reward(traj["x"][-1].double()).mean() - b * traj["kl"].sum(0).double().mean())
    raise ValueError(f"objective={objective!r}; use one of {list(OBJECTIVES)}")


def weight_extrapolation(base: MLPDenoiser, tuned: MLPDenoiser, w: float) -> MLPDenoiser:
    """theta_base + w (theta_tuned - theta_base), every parameter (DeRa-style weight-space realignment)."""
    out = copy.deepcopy(base)
    with torch.no_grad():
        for p, pb, pt in zip(out.parameters(), base.parameters(), tuned.parameters()):
            p.copy_(pb + w * (pt - pb))
    return out


class _PathKL(nn.Module):
    """Runs ``model`` and accumulates, per sample, sum_t c_t^2 |eps_model - eps_base|^2 / (2 sigma_t^2): the KL
    between the model's and the base's DDIM transitions at the model's own x_t (``DDIMScheduler.step``:
    mean = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat, x0_hat = (x - sqrt(1 - abar) eps_hat)
    / sqrt(abar), sigma = eta * sqrt(variance)). Summed over the steps it is KL(model path || base path)."""

    def __init__(self, model, base, scheduler: DDIMScheduler, num_steps: int, eta: float, n: int):
        super().__init__()
        self.model, self.base, self.scheduler, self.eta = model, base, scheduler, eta
        self.stride = scheduler.config.num_train_timesteps // num_steps
        self.kl = torch.zeros(n, dtype=torch.float64)

    @property
    def config(self):
        return self.base.config

    def forward(self, sample, timestep, *args, return_dict: bool = True, **kwargs):
        pred = self.model(sample, timestep, return_dict=False)[0]
        ref = self.base(sample, timestep, return_dict=False)[0]
        t = int(torch.as_tensor(timestep).reshape(-1)[0])
        s = self.scheduler
        abar = float(s.alphas_cumprod[t])
        prev = t - self.stride
        abar_prev = float(s.alphas_cumprod[prev]) if prev >= 0 else float(s.final_alpha_cumprod)
        var = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
        sigma2 = self.eta**2 * var
        c = math.sqrt(max(1 - abar_prev - sigma2, 0.0)) - math.sqrt(abar_prev) * math.sqrt(1 - abar) / math.sqrt(abar)
        diff = (pred.double() - ref.double()).reshape(pred.shape[0], -1)
        self.kl += c**2 * (diff**2).sum(1) / (2 * sigma2)
        return AnalyticDenoiserOutput(sample=pred) if return_dict else (pred,)


def path_kl(model, base, latents: torch.Tensor, config: LearnedTruthConfig, g: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0 samples (n, d) float64, per-sample path KL to ``base`` (n,)) of ``model`` under DDIM from
    ``latents``; ``g`` supplies the step noise."""
    from rlg.analytic import sample_loop

    scheduler = _scheduler()
    den = _PathKL(model, base, scheduler, config.num_inference_steps, config.eta, latents.shape[0])
    with torch.no_grad():
        x = sample_loop(den, scheduler, latents, config.num_inference_steps, generator=g, eta=config.eta)
    return x.double(), den.kl.clone()


def _rlg(base, rl, w: float, n: int, steps: int):
    from rlg.ground_truth import rlg_denoiser

    return rlg_denoiser(base, rl, torch.full((n,), float(w), dtype=torch.float64), steps)


def run_learned_truth(config: LearnedTruthConfig, log=print) -> pd.DataFrame:
    """Train every model, sample every arm at every w, score; tidy rows (one per arm, w and seed):
    arm, w, beta_eff, seed (NaN for the exact arms), reward, reward_stderr (over samples), exact_reward (closed
    form at the output noise level), energy, energy_stderr (to exact samples of the w target, se over
    ``n_batches``), energy_floor (exact vs exact samples), path_kl, path_kl_stderr, and the training curves in
    ``df.attrs["curves"]``. Restores torch's thread count."""
    from rlg.runtime import torch_threads

    with torch_threads(config.threads):
        return _run(config, log)


def _pair(config: LearnedTruthConfig) -> AnalyticPair:
    pair = make_pair(config.pair, config.d, config.beta)
    if pair.target(1.0) is None:
        raise ValueError(f"pair {config.pair!r} has no closed-form optimum; use gaussian_linear, mixture_linear or "
                         "mixture_quadratic")
    return pair


def _run(config: LearnedTruthConfig, log) -> pd.DataFrame:
    pair = _pair(config)
    t0, cpu0 = time.time(), time.process_time()
    scheduler = _scheduler()
    exact_base, exact_rl = _exact(pair.base, scheduler), _exact(pair.target(1.0), scheduler)
    n = config.n_samples
    exact_rows = {}
    for w in map(float, config.scales):
        at = _Setting(pair, config, w)
        r_exact = at.arm("exact", _exact(pair.target(w), scheduler), exact_base)
        r_rlg = at.arm("rlg_exact", _rlg(exact_base, exact_rl, w, n, config.num_inference_steps), exact_base)
        d = r_rlg - r_exact
        at.rows[-1].update(paired_gap=float(d.mean()), paired_gap_stderr=float(d.std() / math.sqrt(n)))
        exact_rows[w] = at.rows
    if config.workers > 1:  # one process per training seed; each seed's numbers do not depend on where it ran
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(config.workers, len(config.seeds)), mp_context=mp.get_context("spawn")) as ex:
            per_seed = list(ex.map(_seed_rows, [config] * len(config.seeds), config.seeds))
    else:
        per_seed = [_seed_rows(config, s, log) for s in config.seeds]
    rows, curves = [], {}
    for w in map(float, config.scales):
        rows += exact_rows[w] + [r for seed_rows, _, _, _ in per_seed for r in seed_rows if r["w"] == w]
    for _, c, _, _ in per_seed:
        curves.update(c)
    df = pd.DataFrame(rows)
    df.attrs["curves"] = curves
    df.attrs["train_seconds"] = round(max(t for _, _, t, _ in per_seed), 1)  # per seed, the slowest
    df.attrs["seconds"] = round(time.time() - t0, 1)
    df.attrs["cpu_seconds"] = round(time.process_time() - cpu0 + sum(c for *_, c in per_seed), 1)
    df.attrs["workers"] = config.workers
    return df


class _Setting:
    """The draws every arm at scale w shares: initial latents (the exact noised marginal of the w target), the
    step noise, exact reference samples for the energy distance and its floor; ``arm`` samples one model from
    them and appends its row to ``rows``."""

    def __init__(self, pair: AnalyticPair, config: LearnedTruthConfig, w: float):
        scheduler = _scheduler()
        a0, s0 = initial_alpha_sigma(scheduler, config.num_inference_steps)
        af, sf = final_alpha_sigma(scheduler, config.num_inference_steps)
        n, nb = config.n_samples, config.n_batches
        self.pair, self.config, self.w, self.b, self.rows = pair, config, w, config.beta / w, []
        g0 = torch.Generator().manual_seed(config.seed * 1_000_003 + int(round(1000 * w)))
        self.latents = a0 * pair.exact_samples(w, n, g0) + s0 * torch.randn(n, pair.d, generator=g0,
                                                                             dtype=torch.float64)
        self.noise_state = g0.get_state()
        refs = [af * pair.exact_samples(w, n, g0) + sf * torch.randn(n, pair.d, generator=g0, dtype=torch.float64)
                for _ in range(2)]
        self.ref_b = list(torch.chunk(refs[0], nb))
        self.floor, self.floor_se = batched(energy_distance, list(torch.chunk(refs[1], nb)), self.ref_b)
        self.exact_reward = pair.exact_mean_reward(w, af, sf)

    def arm(self, name, model, base, seed=math.nan, objective="") -> torch.Tensor:
        config, pair, n = self.config, self.pair, self.config.n_samples
        g = torch.Generator()
        g.set_state(self.noise_state)  # the same step noise for every arm at this w
        x, kl = path_kl(model, base, self.latents.clone(), config, g)
        r = pair.reward(x)
        e, ese = batched(energy_distance, list(torch.chunk(x, config.n_batches)), self.ref_b)
        self.rows.append(dict(arm=name, objective=objective, w=self.w, beta_eff=self.b, seed=seed,
                              reward=float(r.mean()), reward_stderr=float(r.std() / math.sqrt(n)),
                              exact_reward=self.exact_reward, energy=e, energy_stderr=ese, energy_floor=self.floor,
                              energy_floor_stderr=self.floor_se, path_kl=float(kl.mean()),
                              path_kl_stderr=float(kl.std() / math.sqrt(n)), n=n, steps=config.num_inference_steps,
                              eta=config.eta, pair=pair.name, d=pair.d, beta=config.beta))
        return r


def _seed_rows(config: LearnedTruthConfig, s: int, log=print) -> tuple[list[dict], dict, float, float]:
    """Training seed ``s``: its base, fine-tunes and oracles, and every learned arm at every w; (rows, curves,
    training seconds, CPU seconds). Runs in a worker process when ``config.workers`` > 1."""
    from rlg.runtime import torch_threads

    with torch_threads(config.threads):
        cpu0, t0 = time.process_time(), time.time()
        pair = _pair(config)
        scales = [float(w) for w in config.scales]
        betas = sorted({config.beta} | {config.beta / w for w in scales}, reverse=True)
        curves, tuned, oracles = {}, {}, {}
        base, curves[f"base/seed{s}"] = train_base(pair, s, config)
        for obj in config.objectives:
            for b in betas:
                tuned[(obj, b)], curves[f"{obj}/beta{b:.4g}/seed{s}"] = fine_tune(base, pair, b, s, config, obj)
        for w in scales:
            b = config.beta / w
            oracles[b], curves[f"oracle/beta{b:.4g}/seed{s}"] = fine_tune(base, pair, b, s, config, "oracle")
        train_s = time.time() - t0
        if config.progress:
            log(f"kl_learned: trained seed {s} (base; {', '.join(config.objectives)} at {len(betas)} betas; "
                f"{len(scales)} oracles), {train_s:.0f} s")
        rows = []
        for w in scales:
            at = _Setting(pair, config, w)
            b = at.b
            at.arm("oracle", oracles[b], base, s)
            for obj in config.objectives:
                src = tuned[(obj, config.beta)]
                at.arm("retrained", tuned[(obj, b)], base, s, obj)
                at.rows[-1].update(objective_value=objective_value(tuned[(obj, b)], base, pair, b, obj, config, s),
                                   objective_value_oracle=objective_value(oracles[b], base, pair, b, obj, config, s))
                at.arm("rlg", _rlg(base, src, w, config.n_samples, config.num_inference_steps), base, s, obj)
                at.arm("weights", weight_extrapolation(base, src, w), base, s, obj)
            rows += at.rows
        if config.progress:
            log(f"kl_learned: sampled seed {s}, {time.time() - t0:.0f} s")
        return rows, curves, train_s, time.process_time() - cpu0


def _exact(mixture, scheduler):
    from rlg.analytic import make_denoiser

    return make_denoiser(mixture, scheduler, torch.float64)
