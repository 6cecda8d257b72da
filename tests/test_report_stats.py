"""rlg.report.stats: the prompt-clustered bootstrap intervals, the paired win rate, the Pareto front and the series
names, against hand counts and a coverage simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rlg.report.stats import bootstrap_ci, pareto_front, win_rate


def _frame(values: np.ndarray, scales, samples=1, run="r") -> pd.DataFrame:
    """Tidy rows from values[prompt, scale] (each value repeated ``samples`` times per prompt)."""
    rows = [{"run_name": "e", "pair": "p", "run_id": run, "metric": "m", "higher_is_better": True, "status": "ok",
             "prompt_id": i, "sample": k, "seed": k, "scale": w, "value": values[i, j]}
            for i in range(values.shape[0]) for j, w in enumerate(scales) for k in range(samples)]
    return pd.DataFrame(rows)


def test_bootstrap_intervals_cover_the_true_mean():
    rng = np.random.default_rng(123)
    true = np.array([0.0, 1.0])
    # 200 independent data sets (one series each) of 40 prompts; the 95% interval should cover ~95%.
    frames = [_frame(true + rng.normal(0, 1, size=(40, 1)) + rng.normal(0, 0.5, size=(40, 2)), [0.0, 1.0], run=f"r{i}")
              for i in range(200)]
    ci = bootstrap_ci(pd.concat(frames), "m", n_resamples=400, seed=0)
    ci["true"] = ci["scale"].map({0.0: 0.0, 1.0: 1.0})
    coverage = ((ci["lo"] <= ci["true"]) & (ci["true"] <= ci["hi"])).mean()
    assert 0.88 <= coverage <= 0.99
    assert ((ci["lo"] <= ci["mean"]) & (ci["mean"] <= ci["hi"])).all()



def test_bootstrap_resamples_prompts_and_is_paired_across_scales():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 1))
    values = np.hstack([base, base + 0.5])  # w=1 is w=0 shifted by exactly 0.5 on every prompt
    one = bootstrap_ci(_frame(values, [0.0, 1.0], samples=1), "m", n_resamples=300, seed=7)
    three = bootstrap_ci(_frame(values, [0.0, 1.0], samples=3), "m", n_resamples=300, seed=7)
    # Copies of an image within its prompt add no information: clusters are prompts.
    np.testing.assert_allclose(one[["mean", "lo", "hi"]], three[["mean", "lo", "hi"]])
    assert (three["n"] == 90).all() and (three["n_prompts"] == 30).all()
    # Same resample at every scale: the difference is exact although each mean is uncertain.
    d = one.set_index("scale").loc[0.0]
    assert d["hi"] - d["lo"] > 0.3
    assert (d["delta"], d["delta_lo"], d["delta_hi"]) == pytest.approx((-0.5, -0.5, -0.5))
    again = bootstrap_ci(_frame(values, [0.0, 1.0]), "m", n_resamples=300, seed=7)
    pd.testing.assert_frame_equal(one, again)  # fixed seed, same numbers



def test_win_rate_matches_a_hand_count_with_ties():
    # Pairs (w=2 vs w=1): win, win, tie, loss; a fifth pair has a nonfinite image and is dropped.
    ref = [1.0, 2.0, 3.0, 4.0, 5.0]
    at2 = [1.5, 2.5, 3.0, 3.0, 9.0]
    rows = [{"experiment": "e", "pair": "p", "run_id": "r", "metric": "m", "prompt_id": i, "sample": 0, "seed": 42,
             "scale": w, "value": v, "status": "ok"} for i in range(5) for w, v in ((1.0, ref[i]), (2.0, at2[i]))]
    df = pd.DataFrame(rows)
    df.loc[(df.prompt_id == 4) & (df.scale == 2.0), ["value", "status"]] = [np.nan, "nonfinite"]
    higher = win_rate(df.assign(higher_is_better=True), "m").set_index("scale")
    assert tuple(higher.loc[2.0, ["wins", "ties", "losses", "n_pairs"]]) == (2, 1, 1, 4)
    assert higher.loc[2.0, "win_rate"] == pytest.approx(2.5 / 4)
    assert higher.loc[1.0, "win_rate"] == pytest.approx(0.5)  # against itself: all ties
    lower = win_rate(df.assign(higher_is_better=False), "m").set_index("scale")
    assert lower.loc[2.0, "win_rate"] == pytest.approx(1.5 / 4)
    # Pairing is by (prompt, sample, seed): a different seed at w=2 has no partner.
    moved = df.copy()
    moved.loc[(moved.prompt_id == 0) & (moved.scale == 2.0), "seed"] = 7
    assert win_rate(moved.assign(higher_is_better=True), "m").set_index("scale").loc[2.0, "n_pairs"] == 3



def test_pareto_front_hand_case():
    x = [1.0, 2.0, 0.0, 0.5, 2.0, np.nan]
    y = [1.0, 0.0, 2.0, 0.5, 0.0, 1.0]
    assert pareto_front(x, y).tolist() == [True, True, True, False, True, False]
    # Lower x is better: (0, 2) now beats every other point.
    assert pareto_front(x, y, x_higher_is_better=False).tolist() == [False, False, True, False, False, False]
    # Both lower: (0.5, 0.5) beats (1, 1); (2, 0) and (0, 2) each hold the best of one metric.
    assert pareto_front(x, y, False, False).tolist() == [False, True, True, True, True, False]



def test_series_names_say_what_each_id_is():
    from rlg.report.figures import series_label
    from rlg.report.stats import series_name

    series = ("quickstart", "zoo_pair", "5b5bfb64dfe5", "5d67b4b28fdc2436")
    assert series_name(series) == "quickstart / zoo_pair (run 5b5bfb64dfe5, setting 5d67b4b2)"
    assert series_name((None, "zoo_pair", None, None)) == "zoo_pair"
    assert series_name((None, None, "r1", None)) == "run r1"
    assert series_name((None, None, None, None)) == "results"
    assert series_label(series, ["run_id", "config_id"]) == "5b5bfb64dfe5 / setting 5d67b4b2"
    assert series_label(series, ["pair"]) == "zoo_pair"
