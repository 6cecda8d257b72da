"""Analytic (base, RL) model pairs with exact scores: the ground truth for RLG's KL-coefficient claim.

The base model is a Gaussian mixture p_ref(x0) = sum_k pi_k N(x0; mu_k, diag(s_k)) in d dimensions. The
"RL model" of a pair is the exact KL-regularised optimum p_rl = p_ref exp(R / beta) / Z, and the target
RLG claims to sample at scale w is p_ref^(1-w) p_rl^w  ∝  p_ref exp(w R / beta), the optimum for KL
coefficient beta / w. For rewards R(x) = a.x - sum_i c_i (x_i - m_i)^2 (linear when c = 0) that tilt is
again a diagonal Gaussian mixture (``QuadraticReward.tilt``), so every model of the pair and every
target has closed-form noised marginals and scores. For other rewards (``TanhReward``) exact target
samples come from rejection sampling of exact base samples.

Both schedules are affine noising processes x_t = alpha x0 + sigma eps, eps ~ N(0, I):

* VP / epsilon prediction (``DDIMScheduler``): alpha = sqrt(abar[t]), sigma = sqrt(1 - abar[t]), where
  the model's timestep t is the integer index into the scheduler's ``alphas_cumprod``. The model
  returns eps_hat = E[eps | x_t] = -sigma * score.
* Rectified flow / velocity (``FlowMatchEulerDiscreteScheduler`` and ``rlg.schedulers.FlowGRPOSDEScheduler``):
  alpha = 1 - s, sigma = s, where the model's timestep is s * num_train_timesteps (diffusers passes
  ``scheduler.timesteps`` = shifted sigmas * num_train_timesteps, so the shift is already inside t).
  The model returns v = E[eps - x0 | x_t] = (-s * score - x) / (1 - s), computed per component in a
  form that stays finite at s = 1.

The noised marginal of the mixture is sum_k pi_k N(alpha mu_k, alpha^2 s_k + sigma^2), so with
responsibilities r_k(x):  score = -sum_k r_k (x - alpha mu_k) / (alpha^2 s_k + sigma^2),
E[x0 | x, k] = mu_k + alpha s_k (x - alpha mu_k) / (alpha^2 s_k + sigma^2),
E[eps | x, k] = sigma (x - alpha mu_k) / (alpha^2 s_k + sigma^2).

Sample layout: samples are (B, d) tensors. The denoisers also accept (B, d, 1, ..., 1) (or any shape
whose trailing dims multiply to d), as an image pipeline would pass, and return the input's shape.
All mixture arithmetic is done in float64; outputs come back in the sample's dtype.

The denoisers look like diffusers denoisers (``forward(sample, timestep, encoder_hidden_states=None,
return_dict=True, **kwargs)`` -> ``.sample`` or a tuple; ``config``; ``dtype``; ``device``), so the
sampling loop ``sample_loop`` drives them, or any RLG wrapper around them, with the real diffusers
schedulers.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import FrozenDict
from diffusers.utils import BaseOutput
from torch import nn


__all__ = ["GaussianMixture", "QuadraticReward", "TanhReward", "linear_reward", "quadratic_reward", "AnalyticPair",
           "make_pair", "PAIR_PRESETS", "AnalyticDenoiserOutput", "VPEpsilonDenoiser", "FlowVelocityDenoiser",
           "make_denoiser", "schedule_alpha_sigma", "initial_alpha_sigma", "final_alpha_sigma", "sample_loop"]

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)


def _as_f64(x, device=None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=_F64, device=device)


def _per_sample(value, batch: int, device) -> torch.Tensor:
    """A scalar or (B,) noise coefficient as a float64 (1, 1, B) tensor for (K, d, B) arithmetic."""
    t = _as_f64(value, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"noise coefficient must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t.view(1, 1, batch)


# --------------------------------------------------------------------------------------------------
# Gaussian mixtures
# --------------------------------------------------------------------------------------------------


class GaussianMixture:
    """sum_k weights[k] N(means[k], diag(variances[k])) in d dimensions, float64.

    ``variances`` may be a scalar, shape (K,) (isotropic components) or (K, d) (diagonal).
    """

    def __init__(self, weights, means, variances):
        means = _as_f64(means)
        if means.ndim == 1:
            means = means[None]
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        weights = _as_f64(weights).reshape(-1)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {tuple(weights.shape)}")
        if not bool((weights > 0).all()):
            raise ValueError("mixture weights must be positive")
        variances = _as_f64(variances)
        if variances.ndim == 0:
            variances = variances.expand(K, d)
        elif variances.ndim == 1:
            if variances.shape[0] != K:
                raise ValueError(f"isotropic variances must have shape ({K},), got {tuple(variances.shape)}")
            variances = variances[:, None].expand(K, d)
        if variances.shape != (K, d):
            raise ValueError(f"variances must be a scalar, (K,) or (K, d) = ({K}, {d}); got {tuple(variances.shape)}")
        if not bool((variances > 0).all()):
            raise ValueError("component variances must be positive")
        self.weights = weights / weights.sum()
        self.means = means.clone()
        self.variances = variances.clone()

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.d}, weights={[round(w, 4) for w in self.weights.tolist()]})"

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def d(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """Per-dimension mean sum_k pi_k mu_k, shape (d,)."""
        return (self.weights[:, None] * self.means).sum(0)

    def variance(self) -> torch.Tensor:
        """Per-dimension variance sum_k pi_k (s_k + mu_k^2) - mean^2 (law of total variance), shape (d,)."""
        second = (self.weights[:, None] * (self.variances + self.means**2)).sum(0)
        return second - self.mean() ** 2

    def noised(self, alpha: float, sigma: float) -> "GaussianMixture":
        """The law of alpha x0 + sigma eps for x0 from this mixture."""
        return GaussianMixture(self.weights, alpha * self.means, alpha**2 * self.variances + sigma**2)

    # ---- noised-marginal quantities; alpha, sigma are scalars or per-sample (B,) tensors ----------
    # Internally (K, d, B): batch last, so the reductions over K and d run over contiguous slabs
    # (much faster on CPU than reducing small trailing dimensions).
    def _terms(self, x: torch.Tensor, alpha, sigma):
        xt = x.to(_F64).T[None]  # (1, d, B)
        B = xt.shape[-1]
        a = _per_sample(alpha, B, x.device)
        s = _per_sample(sigma, B, x.device)
        mu = self.means.to(x.device)[..., None]  # (K, d, 1)
        var0 = self.variances.to(x.device)[..., None]
        var_t = a**2 * var0 + s**2  # (K, d, B)
        diff = xt - a * mu  # (K, d, B)
        log_comp = torch.log(self.weights.to(x.device))[:, None] - 0.5 * (
            diff**2 / var_t + torch.log(var_t) + _LOG_2PI
        ).sum(1)  # (K, B)
        return a, s, var0, var_t, diff, log_comp

    def noised_log_prob(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """log p_t(x) of the noised marginal, shape (B,); differentiable in x."""
        return torch.logsumexp(self._terms(x, alpha, sigma)[-1], dim=0)

    def responsibilities(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """Posterior component probabilities p(k | x_t), shape (B, K)."""
        return torch.softmax(self._terms(x, alpha, sigma)[-1], dim=0).T

    def score(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """Closed-form grad_x log p_t(x), shape (B, d)."""
        _, _, _, var_t, diff, log_comp = self._terms(x, alpha, sigma)
        r = torch.softmax(log_comp, dim=0)[:, None]  # (K, 1, B)
        return -(r * diff / var_t).sum(0).T

    def posterior_means(self, x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x0 | x_t], E[eps | x_t]), each (B, d), for x_t = alpha x0 + sigma eps; finite for
        alpha = 0 or sigma = 0."""
        a, s, var0, var_t, diff, log_comp = self._terms(x, alpha, sigma)
        r = torch.softmax(log_comp, dim=0)[:, None]
        z = diff / var_t
        x0_hat = (r * (self.means.to(x.device)[..., None] + a * var0 * z)).sum(0).T
        eps_hat = (r * z).sum(0).T * s[0].T
        return x0_hat, eps_hat

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.d, generator=generator, dtype=_F64)
        x = self.means[labels] + self.variances[labels].sqrt() * eps
        return (x, labels) if return_labels else x


# --------------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------------


class QuadraticReward:
    """R(x) = a.x - sum_i c_i (x_i - center_i)^2 with c_i >= 0; c = 0 is the linear reward a.x.

    Tilting a diagonal Gaussian mixture by exp(lam R) gives a diagonal Gaussian mixture (``tilt``).
    """

    def __init__(self, a=None, c=0.0, center=None, *, d: int | None = None):
        if d is None:
            for v in (a, center):
                if v is not None:
                    d = _as_f64(v).numel()
                    break
            else:
                raise ValueError("give a, center or d")
        self.a = torch.zeros(d, dtype=_F64) if a is None else _as_f64(a).reshape(d).clone()
        self.c = _as_f64(c).expand(d).clone()
        self.center = torch.zeros(d, dtype=_F64) if center is None else _as_f64(center).reshape(d).clone()
        if not bool((self.c >= 0).all()):
            raise ValueError("quadratic coefficients c must be >= 0 (R bounded above)")
        self.d = d

    def __repr__(self) -> str:
        return f"QuadraticReward(a={self.a.tolist()}, c={self.c.tolist()}, center={self.center.tolist()})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(_F64).reshape(x.shape[0], -1)
        return x @ self.a - ((x - self.center) ** 2 * self.c).sum(-1)

    def tilt(self, mixture: GaussianMixture, lam: float) -> GaussianMixture:
        """The mixture ∝ p(x) exp(lam R(x)); per dimension: precision 1/s + 2 lam c, and the
        component's log mass gains log ∫ N(x; mu, s) exp(lam (a x - c (x - m)^2)) dx."""
        s, mu = mixture.variances, mixture.means
        a, c, m = self.a[None], self.c[None], self.center[None]
        prec = 1.0 / s + 2 * lam * c
        if not bool((prec > 0).all()):
            raise ValueError(f"exp({lam} R) is not normalisable against this base (lam * c too negative)")
        b = mu / s + lam * a + 2 * lam * c * m
        new_var = 1.0 / prec
        new_mean = new_var * b
        log_mass = (0.5 * torch.log(new_var / s) + 0.5 * b**2 * new_var - 0.5 * mu**2 / s - lam * c * m**2).sum(-1)
        log_w = torch.log(mixture.weights) + log_mass
        return GaussianMixture(torch.softmax(log_w, 0), new_mean, new_var)

    def expectation(self, mixture: GaussianMixture) -> float:
        """E[R(x)] under a diagonal Gaussian mixture, exactly."""
        per_comp = mixture.means @ self.a - ((mixture.variances + (mixture.means - self.center) ** 2) * self.c).sum(-1)
        return float((mixture.weights * per_comp).sum())


def linear_reward(a) -> QuadraticReward:
    """R(x) = a.x"""
    return QuadraticReward(a=a)


def quadratic_reward(c, center, a=None) -> QuadraticReward:
    """R(x) = a.x - c |x - center|^2 (c scalar or per dimension)."""
    return QuadraticReward(a=a, c=c, center=center)


class TanhReward:
    """R(x) = scale * tanh(a.x + b): bounded in [-scale, scale]; its tilt has no closed form, so exact
    target samples come from rejection sampling (see ``AnalyticPair.exact_samples``)."""

    def __init__(self, a, b: float = 0.0, scale: float = 1.0):
        self.a = _as_f64(a).reshape(-1).clone()
        self.b = float(b)
        self.scale = float(scale)
        self.d = self.a.numel()
        self.bounds = (-abs(self.scale), abs(self.scale))

    def __repr__(self) -> str:
        return f"TanhReward(a={self.a.tolist()}, b={self.b}, scale={self.scale})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(_F64).reshape(x.shape[0], -1)
        return self.scale * torch.tanh(x @ self.a + self.b)

    def tilt(self, mixture: GaussianMixture, lam: float) -> None:
        return None

    def expectation(self, mixture: GaussianMixture) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# Pairs and exact targets
# --------------------------------------------------------------------------------------------------


@dataclass
class AnalyticPair:
    """A base mixture, a reward and beta. ``target(w)`` is p_ref exp(w R / beta) (the beta/w optimum);
    ``target(1)`` is the RL model; ``target(0)`` the base."""

    base: GaussianMixture
    reward: Any
    beta: float = 1.0
    name: str = "custom"

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.reward.d != self.base.d:
            raise ValueError(f"reward is {self.reward.d}-dimensional but the base is {self.base.d}-dimensional")

    @property
    def d(self) -> int:
        return self.base.d

    def target(self, w: float) -> GaussianMixture | None:
        """The beta/w optimum as a Gaussian mixture, or None when the tilt has no closed form."""
        if w == 0:
            return self.base
        return self.reward.tilt(self.base, w / self.beta)

    @property
    def rl(self) -> GaussianMixture:
        mix = self.target(1.0)
        if mix is None:
            raise ValueError(f"{self.reward!r} has no closed-form tilt, so the pair has no exact RL denoiser; "
                             "use a QuadraticReward (linear or quadratic) for runnable pairs")
        return mix

    def exact_samples(
        self, w: float, n: int, generator: torch.Generator | None = None, *, oversample: int = 64
    ) -> torch.Tensor:
        """n exact samples of p_ref exp(w R / beta), float64 (n, d).

        Closed form when the tilt is a mixture; else exact rejection sampling from the base when the
        reward declares ``bounds`` (acceptance exp(lam (R - sup R)) >= exp(-|lam| (hi - lo))); else
        sampling-importance-resampling from ``oversample * n`` base samples (approximate, bias O(1/pool)).
        """
        mix = self.target(w)
        if mix is not None:
            return mix.sample(n, generator)
        lam = w / self.beta
        bounds = getattr(self.reward, "bounds", None)
        if bounds is not None:
            sup = lam * (bounds[1] if lam >= 0 else bounds[0])
            out, have, drawn = [], 0, 0
            rate = math.exp(-abs(lam) * (bounds[1] - bounds[0]))  # worst-case acceptance rate
            while have < n:
                m = min(max(1024, int(1.5 * (n - have) / rate)), 2_000_000)
                x = self.base.sample(m, generator)
                u = torch.rand(m, generator=generator, dtype=_F64)
                keep = torch.log(u) < lam * self.reward(x) - sup
                out.append(x[keep])
                have += int(keep.sum())
                drawn += m
                rate = max(have, 1) / drawn  # observed acceptance rate for the next chunk
            return torch.cat(out)[:n]
        pool = self.base.sample(oversample * n, generator)
        logw = lam * self.reward(pool)
        idx = torch.multinomial(torch.softmax(logw, 0), n, replacement=True, generator=generator)
        return pool[idx]

    def exact_mean_reward(self, w: float, alpha: float = 1.0, sigma: float = 0.0) -> float | None:
        """E[R(alpha x0 + sigma eps)] for x0 from the beta/w optimum, when in closed form."""
        mix = self.target(w)
        if mix is None:
            return None
        return self.reward.expectation(mix.noised(alpha, sigma))

    def denoisers(self, scheduler, dtype: torch.dtype = _F64) -> tuple["_AnalyticDenoiser", "_AnalyticDenoiser"]:
        """(base, RL) denoisers for ``scheduler``'s schedule."""
        return make_denoiser(self.base, scheduler, dtype), make_denoiser(self.rl, scheduler, dtype)


def _pair_gaussian_linear(d: int, beta: float) -> AnalyticPair:
    # One diagonal Gaussian, linear reward: RLG is exact at every noise level here.
    mean = torch.zeros(d, dtype=_F64)
    mean[0] = 0.5
    var = torch.linspace(0.5, 1.5, d, dtype=_F64)
    a = torch.zeros(d, dtype=_F64)
    a[0], a[1] = 0.5, -0.25
    return AnalyticPair(GaussianMixture([1.0], mean[None], var[None]), linear_reward(a), beta, "gaussian_linear")


def _two_modes(d: int) -> GaussianMixture:
    means = torch.zeros(2, d, dtype=_F64)
    means[0, 0], means[1, 0] = -2.0, 2.0
    return GaussianMixture([0.5, 0.5], means, torch.tensor([0.25, 0.25], dtype=_F64))


def _pair_mixture_linear(d: int, beta: float) -> AnalyticPair:
    a = torch.zeros(d, dtype=_F64)
    a[0] = 0.25
    return AnalyticPair(_two_modes(d), linear_reward(a), beta, "mixture_linear")


def _pair_mixture_quadratic(d: int, beta: float) -> AnalyticPair:
    # Two well separated modes at x_0 = -2 and +2 (variance 0.25), reward -0.25 |x - x*|^2 with
    # x* = (1, 1, 0, ...): it favours the right mode and pulls both modes up and inwards. Each tilted
    # component also narrows (precision 4 + w/2), which no noised-marginal mixing reproduces.
    center = torch.zeros(d, dtype=_F64)
    center[0], center[1] = 1.0, 1.0
    return AnalyticPair(_two_modes(d), quadratic_reward(0.25, center), beta, "mixture_quadratic")


def _pair_mixture_tanh(d: int, beta: float) -> AnalyticPair:
    a = torch.zeros(d, dtype=_F64)
    a[0] = 1.0
    return AnalyticPair(_two_modes(d), TanhReward(a, 0.0, 1.0), beta, "mixture_tanh")


PAIR_PRESETS: dict[str, Callable[[int, float], AnalyticPair]] = {
    "gaussian_linear": _pair_gaussian_linear,
    "mixture_linear": _pair_mixture_linear,
    "mixture_quadratic": _pair_mixture_quadratic,
    "mixture_tanh": _pair_mixture_tanh,
}


def make_pair(name: str, d: int = 2, beta: float = 1.0) -> AnalyticPair:
    """A preset pair: gaussian_linear (RLG exact), mixture_linear, mixture_quadratic (RLG inexact),
    mixture_tanh (exact target samples only; no closed-form RL denoiser)."""
    if name not in PAIR_PRESETS:
        raise KeyError(f"unknown analytic pair {name!r}; known: {sorted(PAIR_PRESETS)}")
    if not 2 <= d <= 64:
        raise ValueError(f"analytic pairs are defined for 2 <= d <= 64, got d={d}")
    return PAIR_PRESETS[name](d, beta)


# --------------------------------------------------------------------------------------------------
# Denoisers that look like diffusers models
# --------------------------------------------------------------------------------------------------


@dataclass
class AnalyticDenoiserOutput(BaseOutput):
    sample: torch.Tensor


class _AnalyticDenoiser(nn.Module):
    """Common plumbing: the mixture lives in float64 buffers, ``dtype`` is the dtype callers should
    create latents in, ``forward`` flattens (B, ...) to (B, d) and restores the shape."""

    prediction_type: str = ""

    def __init__(self, mixture: GaussianMixture, dtype: torch.dtype, **config):
        super().__init__()
        self.register_buffer("weights", mixture.weights.clone(), persistent=False)
        self.register_buffer("means", mixture.means.clone(), persistent=False)
        self.register_buffer("variances", mixture.variances.clone(), persistent=False)
        self.register_buffer("_dtype_anchor", torch.zeros((), dtype=dtype), persistent=False)
        d = mixture.d
        self.config = FrozenDict(
            in_channels=d, out_channels=d, sample_size=1, prediction_type=self.prediction_type, **config
        )

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype_anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._dtype_anchor.device

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(self.weights.double().cpu(), self.means.double().cpu(), self.variances.double().cpu())

    def alpha_sigma(self, timestep, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def predict(self, mix: GaussianMixture, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states=None, return_dict: bool = True, **kwargs):
        B = sample.shape[0]
        x = sample.reshape(B, -1).to(_F64)
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(f"sample has {x.shape[1]} features per item; "
                             f"this denoiser is {self.means.shape[1]}-dimensional")
        alpha, sigma = self.alpha_sigma(timestep, B)
        mix = GaussianMixture(self.weights.double(), self.means.double(), self.variances.double())
        out = self.predict(mix, x, alpha.to(x.device), sigma.to(x.device)).reshape(sample.shape).to(sample.dtype)
        if not return_dict:
            return (out,)
        return AnalyticDenoiserOutput(sample=out)

    @staticmethod
    def _timesteps(timestep, batch: int) -> torch.Tensor:
        t = torch.as_tensor(timestep)
        if t.ndim == 0:
            t = t.expand(batch)
        t = t.reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"timestep must be a scalar or have {batch} entries, got shape {tuple(t.shape)}")
        return t


class VPEpsilonDenoiser(_AnalyticDenoiser):
    """Exact epsilon prediction E[eps | x_t] for x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps, with
    ``timestep`` an integer index into ``alphas_cumprod`` (as DDIMScheduler.timesteps are)."""

    prediction_type = "epsilon"

    def __init__(self, mixture: GaussianMixture, alphas_cumprod: torch.Tensor, dtype: torch.dtype = torch.float32):
        ac = torch.as_tensor(alphas_cumprod).detach().to(_F64).cpu()
        super().__init__(mixture, dtype, num_train_timesteps=int(ac.numel()), schedule="vp")
        self.register_buffer("alphas_cumprod", ac, persistent=False)

    @classmethod
    def from_scheduler(cls, mixture: GaussianMixture, scheduler, dtype: torch.dtype = torch.float32):
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("VPEpsilonDenoiser predicts epsilon; "
                             f"scheduler has prediction_type={scheduler.config.prediction_type!r}")
        return cls(mixture, scheduler.alphas_cumprod, dtype)

    def alpha_sigma(self, timestep, batch):
        t = self._timesteps(timestep, batch)
        if torch.is_floating_point(t):
            if not bool((t == t.round()).all()):
                raise ValueError(f"VP timesteps are integer indices into alphas_cumprod, got {t[:4].tolist()}")
            t = t.round()
        idx = t.long().to(self.alphas_cumprod.device)
        n = self.alphas_cumprod.numel()
        if bool((idx < 0).any()) or bool((idx >= n).any()):
            raise ValueError(f"VP timestep out of range [0, {n - 1}]: {idx[:4].tolist()}")
        abar = self.alphas_cumprod.double()[idx]
        return abar.sqrt(), (1 - abar).sqrt()

    def predict(self, mix, x, alpha, sigma):
        return mix.posterior_means(x, alpha, sigma)[1]


class FlowVelocityDenoiser(_AnalyticDenoiser):
    """Exact rectified-flow velocity E[eps - x0 | x_t] for x_t = (1 - s) x0 + s eps, with
    ``timestep`` = s * num_train_timesteps (FlowMatchEulerDiscreteScheduler.timesteps)."""

    prediction_type = "flow"

    def __init__(self, mixture: GaussianMixture, num_train_timesteps: int = 1000, dtype: torch.dtype = torch.float32):
        super().__init__(mixture, dtype, num_train_timesteps=int(num_train_timesteps), schedule="flow")

    @classmethod
    def from_scheduler(cls, mixture: GaussianMixture, scheduler, dtype: torch.dtype = torch.float32):
        if scheduler.config.get("invert_sigmas", False):
            raise ValueError("invert_sigmas=True schedules are not supported by FlowVelocityDenoiser")
        return cls(mixture, scheduler.config.num_train_timesteps, dtype)

    def alpha_sigma(self, timestep, batch):
        s = self._timesteps(timestep, batch).to(_F64) / self.config.num_train_timesteps
        if bool((s < 0).any()) or bool((s > 1 + 1e-6).any()):
            raise ValueError("flow timesteps must lie in [0, num_train_timesteps], "
                             f"got {(s * self.config.num_train_timesteps)[:4].tolist()}")
        s = s.clamp(0.0, 1.0)
        return 1 - s, s

    def predict(self, mix, x, alpha, sigma):
        x0_hat, eps_hat = mix.posterior_means(x, alpha, sigma)
        return eps_hat - x0_hat


def make_denoiser(mixture: GaussianMixture, scheduler, dtype: torch.dtype = torch.float32) -> _AnalyticDenoiser:
    """The exact denoiser of ``mixture`` for ``scheduler``'s schedule (DDIM-like: epsilon; FlowMatch: velocity)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowVelocityDenoiser.from_scheduler(mixture, scheduler, dtype)
    if hasattr(scheduler, "alphas_cumprod"):
        return VPEpsilonDenoiser.from_scheduler(mixture, scheduler, dtype)
    raise TypeError(f"no analytic denoiser for {type(scheduler).__name__}; use a DDIM-like or FlowMatch scheduler")


# --------------------------------------------------------------------------------------------------
# Schedules and the sampling loop
# --------------------------------------------------------------------------------------------------


def schedule_alpha_sigma(scheduler, timestep) -> tuple[float, float]:
    """(alpha, sigma) of x_t = alpha x0 + sigma eps at a model timestep of ``scheduler``."""
    t = float(torch.as_tensor(timestep).reshape(-1)[0])
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        s = t / scheduler.config.num_train_timesteps
        return 1.0 - s, s
    abar = float(scheduler.alphas_cumprod[int(round(t))])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def initial_alpha_sigma(scheduler, num_inference_steps: int) -> tuple[float, float]:
    """Noise level of the first model call after ``set_timesteps(num_inference_steps)``."""
    scheduler.set_timesteps(num_inference_steps)
    return schedule_alpha_sigma(scheduler, scheduler.timesteps[0])


def final_alpha_sigma(scheduler, num_inference_steps: int) -> tuple[float, float]:
    """Noise level of the sampler's output: (1, 0) for FlowMatch (last sigma is 0); for DDIM the
    ``final_alpha_cumprod`` (alphas_cumprod[0] with set_alpha_to_one=False, as SD1.5's config has)."""
    scheduler.set_timesteps(num_inference_steps)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        s = float(scheduler.sigmas[-1])
        return 1.0 - s, s
    abar = float(scheduler.final_alpha_cumprod)
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def sample_loop(denoiser: Callable, scheduler, latents: torch.Tensor, num_inference_steps: int, *,
                generator: torch.Generator | list[torch.Generator] | None = None,
                callback: Callable[[int], Any] | None = None, **step_kwargs) -> torch.Tensor:
    """Run ``scheduler`` from ``latents`` with any diffusers-style ``denoiser`` (called as
    ``denoiser(x, t_batch, return_dict=False)[0]``, the SD3 convention of a per-sample timestep tensor),
    as a stock pipeline's loop does: ``set_timesteps``, ``scale_model_input`` if the scheduler has it,
    then ``scheduler.step(pred, t, x, **step_kwargs)``. ``generator`` is passed to ``step`` when its
    signature accepts one (DDIM eta > 0, Flow-GRPO SDE). ``callback(i)`` runs after step i (a progress
    bar's ``update``). Returns the final ``prev_sample``."""
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    accepts = set(inspect.signature(scheduler.step).parameters)
    kwargs = dict(step_kwargs)
    if generator is not None and "generator" in accepts:
        kwargs["generator"] = generator
    x = latents
    B = x.shape[0]
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        pred = denoiser(model_in, t.expand(B), return_dict=False)[0]
        x = scheduler.step(pred, t, x, return_dict=False, **kwargs)[0]
        if callback is not None:
            callback(i)
    return x
