"""Tests over training seeds for the KL claim: t intervals, Welch and paired t tests, Holm's correction, and
the per-w verdict "RLG(w) matches retraining at beta / w: holds / does not hold / undecided".

Every function takes per-model numbers (one value per trained model, e.g. a model's mean reward over a fixed,
paired image set), so the spread between training seeds is the error: the question is about trained models,
and two models trained with the same recipe differ by more than their images' sampling noise.

Sources: Welch (1947) with the Welch-Satterthwaite degrees of freedom; Holm (1979) step-down adjustment;
two one-sided tests (TOST, Schuirmann 1987) at level alpha for "equivalent within a margin", which is what
the interval check in ``verdict`` amounts to (a (1 - 2 alpha) interval inside +-margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["TTest", "t_interval", "welch", "paired", "holm", "verdict", "VERDICTS"]

VERDICTS = ("holds", "does not hold", "undecided")


@dataclass(frozen=True)
class TTest:
    """A difference (or a mean) with its standard error, degrees of freedom, t, two-sided p and a 95% t interval
    ``[lo, hi]`` that contains ``estimate`` by construction."""

    estimate: float
    stderr: float
    df: float
    t: float
    p: float
    lo: float
    hi: float

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """A two-sided t interval at ``level`` (e.g. 0.90 for a TOST at alpha 0.05)."""
        q = stats.t.ppf(0.5 + level / 2, self.df) if self.df > 0 and self.stderr > 0 else math.nan
        return self.estimate - q * self.stderr, self.estimate + q * self.stderr


def _result(est: float, se: float, df: float) -> TTest:
    if not (se > 0 and df > 0):
        return TTest(est, se, df, math.nan, math.nan, math.nan, math.nan)
    t = est / se
    q = float(stats.t.ppf(0.975, df))
    return TTest(est, se, df, t, float(2 * stats.t.sf(abs(t), df)), est - q * se, est + q * se)


def t_interval(values: Sequence[float]) -> TTest:
    """Mean of ``values`` (n >= 2) with se = sd / sqrt(n), df = n - 1; t and p test mean = 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise ValueError(f"t_interval needs >= 2 values (training seeds), got {v.size}")
    return _result(float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)), v.size - 1)


def paired(a: Sequence[float], b: Sequence[float]) -> TTest:
    """mean(a - b) over pairs (a_i, b_i) that share a training seed (e.g. both tuned from base seed i):
    a one-sample t on the differences, df = n - 1."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equally many values, got {a.size} and {b.size}")
    return t_interval(a - b)


def welch(a: Sequence[float], b: Sequence[float], *, var_a: float | None = None, df_a: float | None = None
          ) -> TTest:
    """mean(a) - mean(b) for independent groups of trained models, se = sqrt(s_a^2 / n_a + s_b^2 / n_b),
    Welch-Satterthwaite df. A single model (n_a = 1, e.g. the one RL model RLG starts from) has no spread of
    its own: pass ``var_a`` (a per-model variance estimated elsewhere, e.g. pooled over the retrained
    models) and its ``df_a``. Raises ValueError when a group's variance cannot be estimated."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if b.size < 2:
        raise ValueError(f"welch needs >= 2 values in the second group, got {b.size}")
    if var_a is None:
        if a.size < 2:
            raise ValueError("welch: one value in the first group; pass var_a (a per-model variance) and df_a")
        var_a, df_a = float(a.var(ddof=1)), a.size - 1
    va, vb = var_a / a.size, float(b.var(ddof=1)) / b.size
    se = math.sqrt(va + vb)
    denom = (va**2 / df_a if va > 0 else 0.0) + (vb**2 / (b.size - 1) if vb > 0 else 0.0)
    df = (va + vb) ** 2 / denom if denom > 0 else math.nan
    return _result(float(a.mean() - b.mean()), se, df)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (family-wise error control); NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p) if np.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def verdict(claim: TTest, p_adjusted: float, response: TTest, alpha: float = 0.05) -> tuple[str, str]:
    """(verdict, reason) for one w.

    * "undecided" when the retraining arm does not respond: retrained(beta / w) - retrained(beta) (``response``)
      is not different from 0 at level ``alpha`` over the seeds. Then no difference between RLG and retraining
      can be told from "retraining ignored beta".
    * "does not hold" when RLG(w) - retrained(beta / w) (``claim``) differs from 0 after Holm's correction
      across w (``p_adjusted`` < alpha).
    * "holds" when it does not, and the (1 - 2 alpha) interval of ``claim`` lies within +-|response| / 2: RLG is
      closer to retraining at beta / w than half the way retraining itself moves from beta to beta / w (TOST).
    * "undecided" otherwise (no difference found, but too few seeds to show equivalence)."""
    if not (np.isfinite(response.p) and response.p < alpha):
        return "undecided", (f"retraining does not respond to beta/w beyond its seed spread "
                             f"(response {response.estimate:+.3g} ± {response.stderr:.2g}, p = {response.p:.2g})")
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        return "does not hold", (f"RLG - retrained {claim.estimate:+.3g} ± {claim.stderr:.2g} "
                                 f"(t({claim.df:.1f}) = {claim.t:+.2f}, Holm p = {p_adjusted:.2g})")
    margin = abs(response.estimate) / 2
    lo, hi = claim.interval(1 - 2 * alpha)
    if np.isfinite(lo) and -margin <= lo and hi <= margin:
        return "holds", (f"RLG - retrained {claim.estimate:+.3g}, {100 * (1 - 2 * alpha):.0f}% interval "
                         f"[{lo:+.3g}, {hi:+.3g}] within ± half the response ({margin:.3g}); "
                         f"Holm p = {p_adjusted:.2g}")
    return "undecided", (f"no difference found (Holm p = {p_adjusted:.2g}) but the {100 * (1 - 2 * alpha):.0f}% "
                         f"interval [{lo:+.3g}, {hi:+.3g}] is wider than ± half the response ({margin:.3g})")
