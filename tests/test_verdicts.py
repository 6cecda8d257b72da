"""The one verdict rule (rlg.verdicts) against hand-computed values: Holm's adjustment, the p of superiority and
equivalence claims from t and bootstrap tests, and verdicts on constructed families."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rlg.verdicts import Claim, bootstrap_p, decide, holm, t_p


def test_holm_by_hand():
    # p sorted 0.001, 0.01, 0.02, 0.04 (m = 4): 4 x 0.001 = 0.004; 3 x 0.01 = 0.03; 2 x 0.02 = 0.04; 1 x 0.04 = 0.04
    assert holm([0.02, 0.001, 0.04, 0.01]) == pytest.approx([0.04, 0.004, 0.04, 0.03])
    # monotone: sorted 0.01, 0.04, 0.045 -> 0.03, 0.08, then 1 x 0.045 is raised to the previous 0.08
    assert holm([0.045, 0.01, 0.04]) == pytest.approx([0.08, 0.03, 0.08])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_claim_p_from_a_t_test_by_hand():
    est, se, df = 0.3, 0.1, 10
    above, below = t_p(est, se, df)
    assert above(0.0) == pytest.approx(stats.t.sf(3.0, df)) and below(0.0) == pytest.approx(stats.t.cdf(3.0, df))
    ph, pf = Claim("superiority", 0.1).p(above, below)
    assert ph == pytest.approx(stats.t.sf(2.0, df)) and pf == pytest.approx(stats.t.cdf(2.0, df))
    ph, pf = Claim("equivalence", 0.5).p(above, below)
    assert ph == pytest.approx(max(stats.t.sf(8.0, df), stats.t.cdf(-2.0, df)))  # TOST at -0.5 and +0.5
    assert pf == pytest.approx(min(stats.t.sf(-2.0, df), stats.t.cdf(8.0, df)))
    with pytest.raises(ValueError, match="margin"):
        Claim("equivalence", 0.0)
    with pytest.raises(ValueError, match="kind"):
        Claim("inferiority", 0.1)


def test_bootstrap_p_counts_replicates():
    reps = np.array([-0.1, 0.05, 0.2, 0.3, 0.4, np.nan, 0.5, 0.6, 0.7, 0.8, 0.9])
    above, below = bootstrap_p(reps)  # 10 finite replicates
    assert above(0.0) == pytest.approx((1 + 1) / 11)  # one replicate <= 0
    assert below(0.0) == pytest.approx((1 + 9) / 11)
    assert above(1.0) == pytest.approx(11 / 11) and below(-1.0) == pytest.approx(11 / 11)


def test_decide_on_a_constructed_family():
    """Four claims with known p values: the verdicts and the adjusted p by hand (row p = 2 min(p_holds, p_fails))."""
    p_holds = [0.001, 0.90, 0.02, math.nan]
    p_fails = [0.999, 0.004, 0.98, math.nan]
    row, adj, verdicts = decide(p_holds, p_fails, alpha=0.05)
    assert row[:3] == pytest.approx([0.002, 0.008, 0.04]) and math.isnan(row[3])
    # Holm over the three tested rows: 3 x 0.002, 2 x 0.008, 1 x 0.04
    assert adj[:3] == pytest.approx([0.006, 0.016, 0.04]) and math.isnan(adj[3])
    assert verdicts == ["holds", "does not hold", "holds", "undecided"]
    # the same third row in a larger family no longer survives the adjustment
    _, adj, verdicts = decide(p_holds[:3] + [0.5, 0.5], p_fails[:3] + [0.5, 0.5])
    assert adj[2] == pytest.approx(3 * 0.04) and verdicts[2] == "undecided"  # third smallest of 5 rows: x 3


def test_unadjusted_rule_is_the_95_interval_against_the_margin():
    """One row: 'holds' exactly when the 95% t interval lies on the claim's side of the margin."""
    df, se = 8, 0.1
    q = stats.t.ppf(0.975, df)
    for est in (0.05, 0.18, 0.25, 0.4):
        lo, hi = est - q * se, est + q * se
        sup = decide(*[[p] for p in Claim("superiority", 0.0).p(*t_p(est, se, df))])[2][0]
        assert sup == ("holds" if lo > 0 else "undecided")
        eq = decide(*[[p] for p in Claim("equivalence", 0.5).p(*t_p(est, se, df))])[2][0]
        assert eq == ("holds" if -0.5 < lo and hi < 0.5 else "does not hold" if lo > 0.5 else "undecided")
