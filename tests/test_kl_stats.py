"""rlg.kl_stats: the statistics over training seeds (t intervals, Welch and paired t tests, Holm, the KL verdicts)
and the one mean +- 1.96 se helper, against scipy, numpy and known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rlg.kl_stats import TTest, Z95, holm, kl_verdicts, mean_ci, mean_se, normal_interval, paired, t_interval, welch


def test_mean_se_and_the_normal_interval_against_numpy_and_scipy():
    v = [0.2, 0.9, 0.4, 0.7, 0.3]
    m, se = mean_se(v)
    assert (m, se) == (float(np.mean(v)), float(stats.sem(v)))  # sd with ddof 1 over sqrt(n)
    assert normal_interval(m, se) == (m - Z95 * se, m + Z95 * se)
    assert Z95 == pytest.approx(stats.norm.ppf(0.975), abs=4e-5)  # the rounded 95% quantile
    assert math.isnan(mean_se([3.0])[1])  # one value: no spread to estimate
    lo, hi = normal_interval(m, se)
    assert mean_ci(v) == {"mean": round(m, 5), "se": round(se, 5), "lo": round(lo, 5), "hi": round(hi, 5), "n": 5}
    assert mean_ci(v, z=1.0)["hi"] == round(m + se, 5)


def test_welch_matches_scipy_and_single_model_form():
    a, b = [1.0, 1.3, 0.8, 1.1], [0.2, 0.5, 0.1]
    r = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert r.t == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue)
    assert r.df == pytest.approx(ref.df)
    assert r.lo < r.estimate < r.hi
    # one model (RLG's source) with a per-model variance from elsewhere: se^2 = var_a + var(b) / n_b
    one = welch([1.0], b, var_a=0.04, df_a=5)
    assert one.stderr == pytest.approx(math.sqrt(0.04 + np.var(b, ddof=1) / 3))
    with pytest.raises(ValueError, match="pass var_a"):
        welch([1.0], b)


def test_paired_and_interval_match_scipy():
    a, b = [0.5, 0.7, 0.4, 0.9, 0.6], [0.4, 0.5, 0.45, 0.6, 0.5]
    r, ref = paired(a, b), stats.ttest_rel(a, b)
    assert r.t == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue) and r.df == 4
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(np.subtract(a, b)), scale=stats.sem(np.subtract(a, b)))
    assert (r.lo, r.hi) == pytest.approx((lo, hi))
    assert t_interval([1.0, 1.0]).p != t_interval([1.0, 1.0]).p  # zero spread: no test (NaN), not p = 0


def test_holm_known_values():
    # Holm (1979): sorted p 0.01, 0.02, 0.04 with m = 3 -> 0.03, 0.04, 0.04 (monotone step-down)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def _res(est, se, df=4):
    q = stats.t.ppf(0.975, df)
    return TTest(est, se, df, est / se, float(2 * stats.t.sf(abs(est / se), df)), est - q * se, est + q * se)


def test_kl_verdicts_follow_the_one_rule():
    """kl_verdicts on constructed t tests, against hand-computed margins and t tail probabilities: the margin is half
    the response, a precise arm with a small nonzero gap holds (the RWR case), a gap beyond the margin does not,
    an interval across the margin is undecided, and a flat response gives no test at all."""
    flat, moves = _res(0.01, 0.02), _res(0.3, 0.02)  # retraining barely moves / moves by 0.3 with beta/w
    precise = _res(0.02, 0.005)  # significantly != 0 (t = 4), far inside the margin 0.15: the old rule said "does not hold"
    out = kl_verdicts([_res(0.5, 0.01), _res(0.4, 0.01), precise, _res(0.01, 0.2)], [flat, moves, moves, moves])
    assert [o["verdict"] for o in out] == ["undecided", "does not hold", "holds", "undecided"]
    assert math.isnan(out[0]["margin"]) and math.isnan(out[0]["p_holm"])  # no margin: left out of Holm
    assert [o["margin"] for o in out[1:]] == pytest.approx([0.15, 0.15, 0.15])
    # precise: TOST p_holds = max(P(T > (0.02 + 0.15) / 0.005), P(T < (0.02 - 0.15) / 0.005)), df 4
    p_holds = max(stats.t.sf(0.17 / 0.005, 4), stats.t.cdf(-0.13 / 0.005, 4))
    assert out[2]["p_holds"] == pytest.approx(p_holds)
    raw = [min(1, 2 * min(o["p_holds"], o["p_fails"])) for o in out[1:]]
    assert [o["p_holm"] for o in out[1:]] == pytest.approx(holm(raw))
    assert precise.p < 0.05  # a test of exactly zero would reject it
