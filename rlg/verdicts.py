"""The one verdict rule of rlg-bench: "holds" / "does not hold" / "undecided" for a family of claims, each a
statement about one estimate with a margin fixed before the data. Used by the findings table
(``rlg.report.findings``) and by the KL claim (``rlg.kl_stats.kl_verdicts``: trained models and the learned
ground truth).

A claim is about an estimate d, signed so that larger is better for the claim's first arm:

* ``superiority``, margin m >= 0: "d > m" (m = 0: the first arm is better);
* ``equivalence``, margin m > 0: "|d| < m" (the two arms are the same within m).

Each row supplies its test as two one-sided p-value functions, ``p_above(x)`` (evidence that d > x, i.e. the
p-value of H0: d <= x) and ``p_below(x)`` (evidence that d < x). From them:

* p_holds: superiority ``p_above(m)``; equivalence ``max(p_above(-m), p_below(m))`` (TOST, Schuirmann 1987);
* p_fails: superiority ``p_below(m)``; equivalence ``min(p_above(m), p_below(-m))`` (d beyond the margin);
* the row's p = min(1, 2 min(p_holds, p_fails)): a two-sided test at the margin boundary, read in the direction
  of the data, so that unadjusted "holds" is exactly "the 95% interval lies on the claim's side of the margin"
  (inside (-m, m) for equivalence) and "does not hold" exactly "it lies on the other side";
* Holm's step-down adjustment (Holm 1979) of the rows' p over the family (rows without a test are left out);
* verdict: "holds" when the adjusted p < alpha and p_holds < p_fails, "does not hold" when the adjusted p < alpha
  and p_fails < p_holds, else "undecided" (the interval straddles the margin: too few seeds or prompts).

So a precise arm whose difference is small but nonzero "holds" an equivalence claim (its interval sits inside the
margin) rather than failing a test of exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["Claim", "KINDS", "VERDICTS", "RULE", "holm", "decide", "bootstrap_p", "t_p"]

VERDICTS = ("holds", "does not hold", "undecided")
KINDS = ("superiority", "equivalence")
RULE = ("Verdict rule (rlg.verdicts): each claim is 'd > m' (superiority) or '|d| < m' (equivalence) for a paired "
        "estimate d, signed so that larger favours the claim's first arm, and a margin m fixed before the data. "
        "The row's p is a two-sided test at the margin boundary, 2 min(p_holds, p_fails); Holm-adjusted over the "
        "table; 'holds' when the adjusted p < alpha and the data are on the claim's side of the margin (before "
        "adjustment: the 95% interval lies above m, or inside (-m, m)), 'does not hold' when on the other side, "
        "'undecided' otherwise.")

PFunc = Callable[[float], float]


@dataclass(frozen=True)
class Claim:
    """A claim's kind ("superiority" | "equivalence") and margin (>= 0; > 0 for equivalence), in the estimate's
    units. Raises ValueError for another kind or a negative (equivalence: non-positive) margin."""

    kind: str
    margin: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"claim kind {self.kind!r} is not one of {KINDS}")
        if not (self.margin >= 0 and (self.kind == "superiority" or self.margin > 0)):
            bound = ">= 0" if self.kind == "superiority" else "> 0"
            raise ValueError(f"{self.kind} margin {self.margin!r} must be {bound}")

    def p(self, p_above: PFunc, p_below: PFunc) -> tuple[float, float]:
        """(p_holds, p_fails) of this claim from a test's one-sided p-value functions."""
        m = self.margin
        if self.kind == "superiority":
            return float(p_above(m)), float(p_below(m))
        return max(float(p_above(-m)), float(p_below(m))), min(float(p_above(m)), float(p_below(-m)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (family-wise error control); NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if np.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def decide(p_holds: Sequence[float], p_fails: Sequence[float], alpha: float = 0.05
           ) -> tuple[list[float], list[float], list[str]]:
    """The rule over one family: (row p, Holm-adjusted p, verdict) per row. A row with NaN p values has no test
    (e.g. a circular comparison): p NaN, left out of the adjustment, verdict "undecided"."""
    ph, pf = np.asarray(p_holds, dtype=float), np.asarray(p_fails, dtype=float)
    if ph.shape != pf.shape:
        raise ValueError(f"decide needs one p_fails per p_holds, got {ph.size} and {pf.size}")
    ok = np.isfinite(ph) & np.isfinite(pf)
    row = np.where(ok, np.minimum(1.0, 2 * np.minimum(np.where(ok, ph, 1), np.where(ok, pf, 1))), np.nan)
    adj = np.asarray(holm(row))
    verdicts = []
    for a, h, f in zip(adj, ph, pf):
        if not (np.isfinite(a) and a < alpha):
            verdicts.append("undecided")
        else:
            verdicts.append("holds" if h < f else "does not hold")
    return row.tolist(), adj.tolist(), verdicts


def bootstrap_p(replicates: np.ndarray) -> tuple[PFunc, PFunc]:
    """One-sided p-value functions from bootstrap replicates of an estimate (percentile bootstrap test, with the
    +1 correction so that no p is 0: p_above(x) = (1 + #{d* <= x}) / (B + 1)); NaN replicates are dropped."""
    r = np.sort(np.asarray(replicates, dtype=float)[np.isfinite(replicates)])
    b = r.size

    def above(x: float) -> float:
        return (1 + np.searchsorted(r, x, side="right")) / (b + 1) if b else math.nan

    def below(x: float) -> float:
        return (1 + b - np.searchsorted(r, x, side="left")) / (b + 1) if b else math.nan

    return above, below


def t_p(estimate: float, stderr: float, df: float) -> tuple[PFunc, PFunc]:
    """One-sided p-value functions of a t test: p_above(x) = P(T > (estimate - x) / stderr) on ``df`` degrees of
    freedom; NaN when the standard error or df is not positive."""
    from scipy import stats

    ok = stderr > 0 and df > 0 and math.isfinite(estimate)

    def above(x: float) -> float:
        return float(stats.t.sf((estimate - x) / stderr, df)) if ok else math.nan

    def below(x: float) -> float:
        return float(stats.t.cdf((estimate - x) / stderr, df)) if ok else math.nan

    return above, below
