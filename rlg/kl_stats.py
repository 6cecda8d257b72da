"""Tests over training seeds for the KL claim: t intervals, Welch and paired t tests, the per-w verdicts
"RLG(w) matches retraining at beta / w: holds / does not hold / undecided" (``kl_verdicts``), the learned ground
truth's error decomposition (``decompose``), and the one mean +- 1.96 se helper (``mean_se``, ``normal_interval``).

Every function takes per-model numbers (one value per trained model, e.g. a model's mean reward over a fixed,
paired image set), so the spread between training seeds is the error: the question is about trained models,
and two models trained with the same recipe differ by more than their images' sampling noise.

Sources: Welch (1947) with the Welch-Satterthwaite degrees of freedom; the verdict is rlg-bench's one rule
(``rlg.verdicts``: an equivalence test against a margin fixed before the data, Holm 1979 over w).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from rlg.kind_spec import OBJECTIVES
from rlg.verdicts import VERDICTS, holm  # the rule and Holm live there (one owner); re-exported

__all__ = ["TTest", "t_interval", "welch", "paired", "holm", "kl_verdicts", "VERDICTS", "Z95", "mean_se",
           "normal_interval", "mean_ci", "decompose"]

Z95 = 1.96  # the two-sided 95% quantile of the normal distribution, rounded as every normal interval here uses it


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error sd / sqrt(n)) of a 1-D sample, sd with ddof = 1, in float64; se is NaN for n < 2."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def normal_interval(estimate: float, se: float, z: float = Z95) -> tuple[float, float]:
    """The normal-approximation interval estimate -+ z se (95% for the default z)."""
    return estimate - z * se, estimate + z * se


def mean_ci(values: Sequence[float], z: float = Z95) -> dict[str, float]:
    """{"mean", "se", "lo", "hi"} rounded to 5 decimals and "n": ``mean_se`` and ``normal_interval`` of a 1-D
    sample, as the zoo's measurement records store them."""
    m, se = mean_se(values)
    lo, hi = normal_interval(m, se, z)
    return {"mean": round(m, 5), "se": round(se, 5), "lo": round(lo, 5), "hi": round(hi, 5),
            "n": int(np.asarray(values).size)}


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
    return _result(*mean_se(v), v.size - 1)


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


def kl_verdicts(claims: Sequence[TTest], responses: Sequence[TTest | None], fraction: float = 0.5,
                alpha: float = 0.05) -> list[dict]:
    """Per w, "RLG(w) matches retraining at beta / w", decided by the one rule of rlg-bench (``rlg.verdicts``) as an
    equivalence claim on ``claim`` = RLG(w) - retrained(beta / w) with margin ``fraction`` x |response|, where
    ``response`` = retrained(beta / w) - retrained(beta) is how far retraining itself moves (the fraction is fixed
    before the data: 0.5, "RLG is closer to retraining at beta / w than half the way retraining moves").

    A w whose ``response`` is None (w = 1, or no beta models) or does not differ from 0 at level ``alpha`` has no
    test (no margin can be stated: retraining ignores beta / w within its seed spread): "undecided", left out of
    the Holm family. The others: p_holds / p_fails from the claim's t test (``rlg.verdicts.t_p``), Holm over them,
    verdict by ``rlg.verdicts.decide``. Returns one dict per w with margin, p_holds, p_fails, p_rule, p_holm,
    verdict and reason."""
    from rlg.verdicts import Claim, decide, t_p

    if len(claims) != len(responses):
        raise ValueError(f"kl_verdicts needs one response per claim, got {len(claims)} and {len(responses)}")
    margins, ph, pf = [], [], []
    for c, r in zip(claims, responses):
        if r is None or not (np.isfinite(r.p) and r.p < alpha):
            margins.append(math.nan), ph.append(math.nan), pf.append(math.nan)
            continue
        m = fraction * abs(r.estimate)
        h, f = Claim("equivalence", m).p(*t_p(c.estimate, c.stderr, c.df))
        margins.append(m), ph.append(h), pf.append(f)
    p_rule, p_holm, verdicts = decide(ph, pf, alpha)
    out = []
    for c, r, m, v, p in zip(claims, responses, margins, verdicts, p_holm):
        if r is None:
            why = "no response to compare with (w = 1, or no retrained models at beta)"
        elif not np.isfinite(m):
            why = (f"retraining does not respond to beta/w beyond its seed spread (response {r.estimate:+.3g} "
                   f"± {r.stderr:.2g}, p = {r.p:.2g}): no margin")
        else:
            lo, hi = c.lo, c.hi
            side = {"holds": "inside", "does not hold": "outside"}.get(v, "across")
            why = (f"RLG - retrained {c.estimate:+.3g}, 95% [{lo:+.3g}, {hi:+.3g}] {side} ± {m:.3g} "
                   f"({fraction:g} x the response {r.estimate:+.3g}); Holm p = {p:.2g}")
        out.append(dict(margin=m, verdict=v, reason=why))
    for row, h, f, pr, pa in zip(out, ph, pf, p_rule, p_holm):
        row.update(p_holds=h, p_fails=f, p_rule=pr, p_holm=pa)
    return out


def decompose(df: pd.DataFrame) -> pd.DataFrame:
    """The learned ground truth's rows (``rlg.kl_learned.run_learned_truth``) per retraining objective and w, the reward errors with 95% intervals (``rlg.kl_stats``): ``rlg_gap_exact``
    (rlg_exact - exact, paired over samples, normal interval), ``network`` (oracle - exact), ``fine_tuning``
    (retrained - oracle: the objective's convergence error), ``rlg_vs_retrained`` (rlg - retrained),
    ``weights_vs_retrained`` (weights - retrained), ``energy_rlg_vs_retrained`` (energy distance to the optimum's
    samples, rlg minus retrained), ``response`` (retrained(beta / w) - retrained(beta)), each over training seeds
    (t, df = seeds - 1); ``margin``, ``p_holm`` and the verdict with its reason (``rlg.kl_stats.kl_verdicts``:
    equivalence of rlg_vs_retrained within half the response, Holm across w within the objective). Rows stored before the ``objective`` column existed are RWR's."""
    df = df.copy()
    if "objective" not in df:
        df["objective"] = np.where(df.arm.isin(["retrained", "rlg", "weights"]), "rwr", "")
    df["objective"] = df.objective.fillna("")
    shared = df[df.objective == ""]
    beta = float(df.beta.iloc[0])
    res = []
    for obj in [o for o in OBJECTIVES if o in set(df.objective)]:
        mine = pd.concat([shared, df[df.objective == obj]])
        out = []
        src = mine[(mine.arm == "retrained") & np.isclose(mine.beta_eff, beta)]
        for w, at in mine.groupby("w"):
            by = {a: g.sort_values("seed").set_index("seed").reward for a, g in at.groupby("arm")}
            ex = float(by["exact"].iloc[0])
            ge = at[at.arm == "rlg_exact"].iloc[0]
            row = dict(objective=obj, w=w, beta_eff=float(at.beta_eff.iloc[0]),
                       exact_reward=float(at.exact_reward.iloc[0]), exact_score_reward=ex,
                       rlg_gap_exact=ge.paired_gap, rlg_gap_exact_se=ge.paired_gap_stderr)
            # the exact-score arm is one run shared by every seed: differences from it have no seed spread of its own
            tests = {"network": paired(by["oracle"], np.full(len(by["oracle"]), ex)),
                     "fine_tuning": paired(by["retrained"], by["oracle"]),
                     "rlg_vs_retrained": paired(by["rlg"], by["retrained"]),
                     "weights_vs_retrained": paired(by["weights"], by["retrained"])}
            energy = {a: g.sort_values("seed").set_index("seed").energy for a, g in at.groupby("arm")}
            tests["energy_rlg_vs_retrained"] = paired(energy["rlg"], energy["retrained"])
            ret = at[at.arm == "retrained"].sort_values("seed")
            if "objective_value" in ret and ret.objective_value.notna().all():
                # > 0: the fine-tune scores better on its own criterion than the oracle (the objective's bias)
                tests["objective_gap"] = paired(ret.objective_value.to_numpy(), ret.objective_value_oracle.to_numpy())
            source = src.sort_values("seed").set_index("seed").reward
            # at w = 1 retrained(beta / w) is retrained(beta): no response by definition
            tests["response"] = paired(by["retrained"], source.reindex(by["retrained"].index))
            for k, t in tests.items():
                row.update({k: t.estimate, f"{k}_se": t.stderr, f"{k}_df": t.df, f"{k}_lo": t.lo, f"{k}_hi": t.hi,
                            f"{k}_p": t.p})
            row["_tests"] = tests
            out.append(row)
        part = pd.DataFrame(out)
        decided = kl_verdicts([r["_tests"]["rlg_vs_retrained"] for r in out],
                              [None if r["w"] == 1 else r["_tests"]["response"] for r in out])
        part["margin"] = [d["margin"] for d in decided]
        part["p_holm"] = [d["p_holm"] for d in decided]
        verdicts = [("holds", "control: RLG(1) is the beta model itself (RLG - retrained = 0 exactly)")
                    if r["w"] == 1 else (d["verdict"], d["reason"]) for r, d in zip(out, decided)]
        part["verdict"] = [v for v, _ in verdicts]
        part["reason"] = [why for _, why in verdicts]
        res.append(part.drop(columns="_tests"))
    return pd.concat(res, ignore_index=True)
