"""Sample-based distances and summaries for the analytic ground truth, with Monte-Carlo error bars.

Conventions (record them with every number):

* ``energy_distance(x, y)`` is the unbiased U-statistic of 2 E|X - Y| - E|X - X'| - E|Y - Y'|
  (Euclidean norm; within-sample means over i != j). Its expectation is 0 when x and y come from
  the same law, and it can be slightly negative on finite samples.
* ``mmd2(x, y, h)`` is the unbiased MMD^2 U-statistic with the Gaussian kernel
  k(u, v) = exp(-|u - v|^2 / (2 h^2)); ``median_bandwidth`` gives the bandwidth rule used by the
  ground-truth runner: h = median of the pairwise distances (i < j) of one exact reference batch.
* Error bars: distances are computed on ``m`` independent batches and reported as mean and
  standard error std / sqrt(m) (``batched``); means of per-sample quantities (reward, posterior
  weights) use all i.i.d. samples: std / sqrt(n) (``mean_stderr``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

__all__ = [
    "energy_distance",
    "mmd2",
    "median_bandwidth",
    "mean_stderr",
    "batched",
    "soft_component_weights",
]

_F64 = torch.float64


def _pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.to(_F64), y.to(_F64), compute_mode="donot_use_mm_for_euclid_dist")


def _offdiag_mean(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return (m.sum() - m.diagonal().sum()) / (n * (n - 1))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased energy distance between samples x (n, d) and y (m, d), n, m >= 2."""
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("energy_distance needs at least 2 samples on each side")
    return float(2 * _pairwise(x, y).mean() - _offdiag_mean(_pairwise(x, x)) - _offdiag_mean(_pairwise(y, y)))


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 with the Gaussian kernel exp(-|u - v|^2 / (2 bandwidth^2))."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    g = -0.5 / bandwidth**2

    def k(a, b):
        return torch.exp(g * _pairwise(a, b) ** 2)

    return float(_offdiag_mean(k(x, x)) + _offdiag_mean(k(y, y)) - 2 * k(x, y).mean())


def median_bandwidth(x: torch.Tensor) -> float:
    """Median pairwise Euclidean distance over pairs i < j of x (the bandwidth rule for ``mmd2``)."""
    dist = _pairwise(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    return float(dist[iu[0], iu[1]].median())


def mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error std / sqrt(n) of n i.i.d. scalar values (a 1-D tensor, n >= 2)."""
    v = values.to(_F64).reshape(-1)
    if v.numel() < 2:
        raise ValueError("mean_stderr needs at least 2 values")
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(v.numel()))


def batched(fn: Callable[..., float], *batches: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Mean and standard error over independent batches of ``fn(b1[i], b2[i], ...)``."""
    values = torch.tensor([fn(*args) for args in zip(*batches)], dtype=_F64)
    m = values.numel()
    se = float(values.std(unbiased=True) / math.sqrt(m)) if m > 1 else float("nan")
    return float(values.mean()), se


def soft_component_weights(x: torch.Tensor, mixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-component weights of samples x under ``mixture`` (a ``GaussianMixture``), assigning each
    sample by its posterior p(k | x) (soft assignment). For exact samples of the mixture the
    expectation is exactly ``mixture.weights``. Returns (mean (K,), stderr (K,))."""
    r = mixture.responsibilities(x.to(_F64))
    n = r.shape[0]
    return r.mean(0), r.std(0, unbiased=True) / math.sqrt(n)
