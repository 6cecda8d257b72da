"""Figures and tables of the trained-model KL claim (rows from ``rlg.kl_claim.run_kl_claim``), with the
analytic ground truth (``rlg.ground_truth.run_ground_truth`` rows) beside it in the same report.

Figures (report style of ``rlg.report.figures``; PNG and PDF):
* ``kl_claim_metrics``: each metric against the effective KL coefficient beta / w (log axis; w marked on
  top), the RLG curve from the beta model through its w points, and the retrained models at beta / w
  (one marker per seed); bars are 95% intervals.
* ``kl_claim_distance``: the distance between RLG(w) and retrained(beta / w) against the floor between two
  retrained seeds, per w (bars: 2 se).
Tables: ``kl_claim_verdict`` (the headline: per w holds / does not hold / undecided, tests over training seeds),
``kl_claim.md``/``.tex`` (distance per w against the floors of every w) and
``kl_claim_metrics.md``/``.tex`` (per arm and metric); ``index.md``/``.html`` puts both and the analytic tables
together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rlg.metrics import metric as registered
from rlg.report.figures import COLORS, COLUMN_WIDTH, FORMATS, MARKERS, STYLE, TEXT_WIDTH, save
from rlg.report.page import write_kind_report
from rlg.report.tables import FORMATS as TABLE_FORMATS, render

__all__ = ["kl_claim_verdicts", "kl_claim_verdict_tables", "kl_claim_tables", "kl_claim_metric_tables",
           "kl_claim_training_tables", "write_kl_claim_figures", "write_kl_claim_training_figure",
           "write_kl_claim_report"]


def _title(df: pd.DataFrame) -> str:
    f = df.iloc[0]
    return (f"{f.task}: beta={f.beta:g}, n={int(f.n)} images per arm, DDIM {int(f.steps)} steps, eta {f.eta:g}, "
            f"CFG {f.guidance_scale:g}")


def _arrow(metric_id: str) -> str:
    """The arrow (" ↑" or " ↓") after a metric id by its direction in the metric registry (``rlg.metrics``,
    declared by the evaluator that writes it: the caller imports those evaluators, e.g.
    ``rlg.evaluators.base.register_stored``); "" for a metric not registered there."""
    declared = registered(metric_id)
    return "" if declared is None else " ↑" if declared.higher_is_better else " ↓"


def _yerr(d: pd.DataFrame) -> list:
    return [(d.value - d.lo).clip(lower=0), (d.hi - d.value).clip(lower=0)]


def write_kl_claim_figures(df: pd.DataFrame, out_dir, formats: Sequence[str] = FORMATS) -> list[Path]:
    out_dir = Path(out_dir)
    written: list[Path] = []
    m = df[df.kind == "metric"]
    metrics = list(dict.fromkeys(m.metric))
    with matplotlib.rc_context(STYLE):
        if metrics:
            fig = Figure(figsize=(min(TEXT_WIDTH, COLUMN_WIDTH * len(metrics)), 2.9), layout="constrained")
            axes = fig.subplots(1, len(metrics), squeeze=False)[0]
            for ax, metric in zip(axes, metrics):
                d = m[m.metric == metric]
                rlg = d[d.arm == "rlg"]
                several = rlg.model_seed.nunique() > 1  # paired: RLG from each seed's beta model
                for j, (seed, r) in enumerate(rlg.groupby("model_seed")):
                    r = r.sort_values("beta_eff")
                    # a bootstrap percentile interval of a biased set metric (digit_fd) need not contain the value
                    ax.errorbar(r.beta_eff, r.value, yerr=_yerr(r), color=COLORS[0], marker=MARKERS[j % len(MARKERS)],
                                capsize=2, alpha=1.0 if j == 0 else 0.6,
                                label=f"RLG from the beta model, seed {seed}" if several else "RLG from the beta model")
                for i, (seed, g) in enumerate(d[d.arm == "retrained"].groupby("model_seed")):
                    g = g.sort_values("beta_eff")
                    ax.errorbar(g.beta_eff * (1.04 if i else 0.96), g.value, yerr=_yerr(g),
                                # cycle: a claim may have more retrained seeds than the palette has colours
                                color=COLORS[1 + i % (len(COLORS) - 1)], marker=MARKERS[(1 + i) % len(MARKERS)],
                                linestyle="none", capsize=2,
                                label=f"retrained at beta/w, seed {seed}")
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(set(r.beta_eff))))
                # 4 digits: beta 1500 reads "1500", not "1.5e+03"; small labels: 500 and 750 sit 0.18 decades apart
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                ax.tick_params(axis="x", labelsize=5)
                top = ax.secondary_xaxis("top")
                top.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(list(r.beta_eff)))
                top.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{w:g}" for w in r.w]))
                top.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                top.tick_params(labelsize=5)
                top.set_xlabel("RLG scale w", fontsize=5, labelpad=1)
                ax.set_xlabel("KL coefficient beta/w" if ax is axes[0] else "beta/w")  # the long one ran off the edge
                ax.set_ylabel(metric + _arrow(metric))
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=5)
            fig.suptitle(_title(df) + " (bars: 95%)", fontsize=6)
            written += save(fig, out_dir / "kl_claim_metrics", formats)
        dist = df[df.kind == "distance"].sort_values("w")
        if len(dist):
            fig = Figure(figsize=(COLUMN_WIDTH, 2.4), layout="constrained")
            ax = fig.add_subplot()
            ax.errorbar(dist.w - 0.03, dist.value, yerr=2 * dist.stderr, color=COLORS[0], marker="o", capsize=2,
                        label="RLG(w) vs retrained(beta/w)")
            ax.errorbar(dist.w + 0.03, dist.floor, yerr=2 * dist.floor_stderr, color="0.4", marker="s", capsize=2,
                        linestyle="--", label="floor: two retrained seeds at beta/w")
            ax.axhline(0.0, color="k", linewidth=0.6)
            ax.set_xticks(list(dist.w))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("RLG scale w")
            ax.set_ylabel(str(dist.metric.iloc[0]).replace("_", " "))
            ax.set_title(_title(df).replace(" per arm, ", " per arm,\n") + " (bars: 2 se)", fontsize=5)  # one column
            ax.legend(fontsize=5)
            written += save(fig, out_dir / "kl_claim_distance", formats)
    return written


def _pm(v: float, se: float, digits: int = 4) -> str:
    return "–" if not np.isfinite(v) else f"{v:.{digits}g} ± {se:.2g}"


def _reward(df: pd.DataFrame) -> str:
    m = df[df.kind == "metric"]
    if "reward_metric" in df.columns and df.reward_metric.notna().any():
        return str(df.reward_metric.dropna().iloc[0])
    return str(m.metric.iloc[0])


def kl_claim_verdicts(df: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per w, on the reward metric (``reward_metric`` column; else the first metric), tests over training seeds:

    * per-model values: each model's mean over the same paired images; the per-model variance is pooled over
      every coefficient with >= 2 models (the retrained seeds at each beta / w, plus the source model among the
      beta models when w = 1 is measured), df = sum(n - 1);
    * ``claim``: RLG(w) (one model) minus the mean of the models retrained at beta / w, Welch with the pooled
      per-model variance for the one RLG model (``rlg.kl_stats.welch``), Holm across the w != 1;
    * ``response``: retrained(beta / w) minus the beta models (retrained seeds and the source): the
      responsiveness check, Welch over seeds;
    * ``margin``, ``p_holm``, ``verdict`` / ``reason``: the one rule (``rlg.kl_stats.kl_verdicts``: equivalence
      within half the response, Holm across w != 1); at w = 1 a control: RLG(1) is the source model, checked
      against the other beta retrainings (holds when they do not differ at ``alpha``).
    Columns: w, beta_eff, metric, rlg, retrained_mean, n_retrained, pooled_sd, pooled_df, claim_* and response_*
    (estimate, se, df, t, p, lo, hi), margin, p_holm, verdict, reason. Rows of a ``paired`` run are tested per
    training seed instead (``_paired_verdicts``; the output then has ``paired`` = True)."""
    from rlg.kl_stats import welch

    reward = _reward(df)
    m = df[(df.kind == "metric") & (df.metric == reward)]
    if "paired" in m.columns and m.paired.fillna(False).astype(bool).any():
        return _paired_verdicts(m, reward, alpha)
    beta = float(m.beta.iloc[0])
    groups = {round(float(b), 9): g.value.to_numpy() for b, g in m[m.arm == "retrained"].groupby("beta_eff")}
    src = m[(m.arm == "rlg") & np.isclose(m.w, 1.0)].value.to_numpy()
    key = round(beta, 9)
    if key in groups:
        groups[key] = np.concatenate([groups[key], src])
    sizes = [len(v) for v in groups.values() if len(v) >= 2]
    pooled_df = sum(n - 1 for n in sizes)
    pooled_var = (sum((len(v) - 1) * v.var(ddof=1) for v in groups.values() if len(v) >= 2) / pooled_df
                  if pooled_df else np.nan)
    rows = []
    for w, at in m.groupby("w"):
        b = round(float(at.beta_eff.iloc[0]), 9)
        rlg = at[at.arm == "rlg"].value.to_numpy()
        ret = m[(m.arm == "retrained") & np.isclose(m.w, w)].value.to_numpy()
        claim = welch(rlg, ret, var_a=pooled_var, df_a=pooled_df)
        base_group = groups.get(key)
        if np.isclose(w, 1.0) or base_group is None or len(base_group) < 2:
            response = None
        else:
            response = welch(groups[b], base_group)
        rows.append(_test_row(dict(w=float(w), beta_eff=float(at.beta_eff.iloc[0]), metric=reward,
                                   rlg=float(rlg.mean()), retrained_mean=float(ret.mean()), n_retrained=len(ret),
                                   pooled_sd=float(np.sqrt(pooled_var)), pooled_df=pooled_df),
                              claim, None if np.isclose(w, 1.0) else response))

    def control(c):  # a control, not a claim: is the source a typical beta model?
        ok = np.isfinite(c.p) and c.p >= alpha
        return ("holds" if ok else "does not hold", f"control: RLG(1) is the source beta model; vs other beta "
                f"retrainings {c.estimate:+.3g} ± {c.stderr:.2g} (t({c.df:.1f}), p = {c.p:.2g})")

    return _decide(rows, alpha, control, "no retrained models at beta to check the response (measure w = 1 too)")


def _test_row(row: dict, claim, response) -> dict:
    """``row`` with the claim and response tests as columns ``claim_*`` / ``response_*`` (NaN for no test)."""
    for name, t in (("claim", claim), ("response", response)):
        for f in ("estimate", "stderr", "df", "t", "p", "lo", "hi"):
            row[f"{name}_{f}"] = getattr(t, f) if t is not None else np.nan
    return dict(row, _claim=claim, _response=response)


def _decide(rows: list[dict], alpha: float, control, no_response: str) -> pd.DataFrame:
    """The verdict columns of ``kl_claim_verdicts``: margin and Holm p from ``rlg.kl_stats.kl_verdicts``; w = 1 by
    ``control(claim) -> (verdict, reason)``; a w without a response test "undecided" with ``no_response``."""
    from rlg.kl_stats import kl_verdicts

    out = pd.DataFrame(rows)
    decided = kl_verdicts([r["_claim"] for r in rows], [r["_response"] for r in rows], alpha=alpha)
    for k in ("margin", "p_holm"):
        out[k] = [d[k] for d in decided]
    verdicts = [control(r["_claim"]) if np.isclose(r["w"], 1.0) else ("undecided", no_response)
                if r["_response"] is None else (d["verdict"], d["reason"]) for r, d in zip(rows, decided)]
    out["verdict"] = [v for v, _ in verdicts]
    out["reason"] = [why for _, why in verdicts]
    return out.drop(columns=["_claim", "_response"])


def _paired_verdicts(m: pd.DataFrame, reward: str, alpha: float) -> pd.DataFrame:
    """``kl_claim_verdicts`` for rows of a ``paired`` run: RLG(w) from the beta model of training seed s against the
    beta / w model of seed s. ``claim`` = mean over seeds of RLG_s(w) - retrained_s(beta / w) and ``response`` =
    mean over seeds of retrained_s(beta / w) - retrained_s(beta), each a one-sample t on the per-seed differences
    (``rlg.kl_stats.paired``, df = seeds - 1): same-seed models share the trainer's random stream, so what a seed
    does at every coefficient cancels. w = 1 is the control: RLG(1) from seed s is that seed's beta model on the
    same noise, difference exactly 0. ``pooled_sd`` / ``pooled_df``: the per-model seed spread pooled over the
    coefficients, as in the unpaired test (for comparison; the paired tests do not use it)."""
    from rlg.kl_stats import paired

    def by_seed(arm, w):
        at = m[(m.arm == arm) & np.isclose(m.w, w)]
        return dict(zip(at.model_seed.astype(int), at.value.astype(float)))

    ws = sorted(set(m.w))
    beta_models = by_seed("retrained", 1.0) if any(np.isclose(ws, 1.0)) else {}
    groups = [np.array(list(by_seed("retrained", w).values())) for w in ws]
    pooled_df = sum(len(g) - 1 for g in groups if len(g) >= 2)
    pooled_var = sum((len(g) - 1) * g.var(ddof=1) for g in groups if len(g) >= 2) / pooled_df if pooled_df else np.nan
    rows = []
    for w in ws:
        rlg, ret = by_seed("rlg", w), by_seed("retrained", w)
        seeds = sorted(set(rlg) & set(ret))
        claim = paired([rlg[s] for s in seeds], [ret[s] for s in seeds])
        common = sorted(set(ret) & set(beta_models))
        response = (paired([ret[s] for s in common], [beta_models[s] for s in common])
                    if not np.isclose(w, 1.0) and len(common) >= 2 else None)
        at = m[np.isclose(m.w, w)]
        rows.append(_test_row(dict(w=float(w), beta_eff=float(at.beta_eff.iloc[0]), metric=reward,
                                   rlg=float(np.mean(list(rlg.values()))),
                                   retrained_mean=float(np.mean(list(ret.values()))), n_retrained=len(ret),
                                   pooled_sd=float(np.sqrt(pooled_var)), pooled_df=pooled_df), claim, response))

    def control(c):  # the same model on the same noise
        return ("holds" if c.estimate == 0 and c.stderr == 0 else "does not hold",
                "control: RLG(1) from each seed's beta model is that model on the same noise; "
                f"difference {c.estimate:+.3g} (0 exactly expected)")

    out = _decide(rows, alpha, control, "no retrained models at beta of the same seeds (measure w = 1 too)")
    out["paired"] = True
    return out


def kl_claim_verdict_tables(df: pd.DataFrame) -> dict[str, str]:
    """The headline: per w, "RLG(w) matches retraining at beta / w": holds / does not hold / undecided, with the
    claim test, the responsiveness check and the reason (``kl_claim_verdicts``)."""
    v = kl_claim_verdicts(df)
    header = ["w", "beta/w", "verdict", "margin (±)", "RLG(w)", "retrained mean (n)", "RLG - retrained [95%]",
              "t (df)", "Holm p",
              "response: retrained(beta/w) - retrained(beta) [95%]", "response p", "evidence"]

    def ci(r, k):
        e, lo, hi = getattr(r, f"{k}_estimate"), getattr(r, f"{k}_lo"), getattr(r, f"{k}_hi")
        if not np.isfinite(e):
            return "–"
        return f"{e:+.3g} [{lo:+.3g}, {hi:+.3g}]" if np.isfinite(lo) else f"{e:+.3g} (no spread)"

    rows = [[f"{r.w:g}", f"{r.beta_eff:.4g}", r.verdict, "–" if not np.isfinite(r.margin) else f"{r.margin:.3g}",
             f"{r.rlg:.4g}", f"{r.retrained_mean:.4g} ({r.n_retrained})",
             ci(r, "claim"), "–" if not np.isfinite(r.claim_t) else f"{r.claim_t:+.2f} ({r.claim_df:.1f})",
             "–" if not np.isfinite(r.p_holm) else f"{r.p_holm:.2g}", ci(r, "response"),
             "–" if not np.isfinite(r.response_p) else f"{r.response_p:.2g}", r.reason] for r in v.itertuples()]
    f = v.iloc[0]
    test = ("paired by training seed: RLG(w) from seed s's beta model against seed s's beta/w model, one-sample t "
            "on the per-seed differences (df = seeds - 1)" if "paired" in v.columns else "Welch t")
    notes = [f"RLG(w) matches a model retrained at beta/w? {_title(df)}; metric {f.metric}.",
             f"One value per trained model (its mean over the same paired images); per-model sd {f.pooled_sd:.3g} "
             f"pooled over the retrained seeds (df {f.pooled_df}); {test}. Verdict: rlg-bench's one rule "
             "(rlg.verdicts): equivalence within the margin = half the response retrained(beta/w) - retrained(beta), "
             "Holm across w != 1; 'holds' when the 95% interval lies inside ± margin (after Holm), 'does not hold' "
             "when outside, 'undecided' when across it or when retraining does not respond to beta/w beyond its "
             "seed spread (response p >= 0.05: no margin)."]
    return {fmt: render(header, rows, fmt, align="rrlr" + "r" * 7 + "l", notes=notes) for fmt in TABLE_FORMATS}


def kl_claim_tables(df: pd.DataFrame) -> dict[str, str]:
    """Per w: beta / w, the distance RLG(w) vs retrained(beta / w, seed A) and the floor (seed B vs A at this w),
    and RLG's distance against the floors of every w (k draws of "two retrainings apart"): t = (distance -
    mean floor) / (sd floor * sqrt(1 + 1 / k)) on k - 1 df (a prediction interval for one more retraining pair),
    Holm across w. z (image-batch se only) is kept for comparison."""
    from scipy import stats

    from rlg.kl_stats import holm

    dist = df[df.kind == "distance"].sort_values("w")
    floors = dist.floor.to_numpy()
    k = len(floors)
    mf, sf = (float(floors.mean()), float(floors.std(ddof=1))) if k >= 2 else (np.nan, np.nan)
    t = (dist.value.to_numpy() - mf) / (sf * np.sqrt(1 + 1 / k)) if k >= 2 and sf > 0 else np.full(k, np.nan)
    p = 2 * stats.t.sf(np.abs(t), k - 1) if k >= 2 else np.full(k, np.nan)
    p_holm = holm(p)
    header = ["w", "beta/w", "distance RLG vs retrained A (± se)", "floor: B vs A at this w (± se)",
              f"t vs the {k} floors ({k - 1} df)", "Holm p", "z (image se only)"]
    rows = [[f"{r.w:g}", f"{r.beta_eff:.4g}", _pm(r.value, r.stderr), _pm(r.floor, r.floor_stderr),
             f"{ti:+.2f}" if np.isfinite(ti) else "–", f"{ph:.2g}" if np.isfinite(ph) else "–", f"{r.z:+.1f}"]
            for r, ti, ph in zip(dist.itertuples(), t, p_holm)]
    f = df.iloc[0]
    metric = dist.metric.iloc[0] if len(dist) else "distance"
    batches = int(f.n_batches) if "n_batches" in df.columns else "?"
    notes = [f"KL claim, {_title(df)}; {metric} over {batches} disjoint image batches (se over batches).",
             f"Floors over w: {mf:.3g} ± sd {sf:.2g} (k = {k}): the training-seed spread of the distance between "
             "two retrainings. All arms share prompts, sampler, steps and per-image noise."]
    return {fmt: render(header, rows, fmt, align="rrrrrrr", notes=notes) for fmt in TABLE_FORMATS}


def kl_claim_metric_tables(df: pd.DataFrame) -> dict[str, str]:
    """Per metric and w: RLG(w) and each retrained seed at beta / w (mean, 95% interval), the paired
    per-image difference RLG - retrained (seed A) with its se, and the same difference between the
    retrained seeds (the floor)."""
    m = df[df.kind == "metric"]
    paired = "paired" in m.columns and m.paired.fillna(False).astype(bool).any()
    seeds = sorted(m[m.arm == "retrained"].model_seed.astype(int).unique())
    a, b = seeds[:2] if len(seeds) >= 2 else ("A", "B")  # the floor's two seeds
    header = (["metric", "w", "beta/w", "RLG seed", "RLG(w) [95%]"] + [f"retrained seed {s} [95%]" for s in seeds]
              + [f"RLG - retrained {'same seed' if paired else f'seed {a}'} (± se)", f"seed {b} - seed {a} (± se)"])
    rows, groups = [], []
    cell = lambda x: f"{x.value:.4g} [{x.lo:.4g}, {x.hi:.4g}]"  # noqa: E731
    for metric, part in m.groupby("metric", sort=False):
        groups.append(len(rows))
        for w, at in part.groupby("w"):
            ret = {int(x.model_seed): cell(x) for x in at[at.arm == "retrained"].itertuples()}
            for r in at[at.arm == "rlg"].sort_values("model_seed").itertuples():
                diff = (f"{r.diff:+.3g} ± {r.diff_stderr:.2g}"
                        if np.isfinite(getattr(r, "diff", np.nan)) else "–")
                floor = (f"{r.diff_floor:+.3g} ± {r.diff_floor_stderr:.2g}"
                         if np.isfinite(getattr(r, "diff_floor", np.nan)) else "–")
                rows.append([metric, f"{w:g}", f"{r.beta_eff:.4g}", f"{int(r.model_seed)}", cell(r),
                             *(ret.get(s, "–") for s in seeds), diff, floor])
    notes = ["Per-image metrics: mean over images, normal 95% interval; set metrics (digit_fd): value on the whole "
             "set ± 1.96 bootstrap se over images (it contains the value; the biased FD is not corrected); paired "
             "differences share the per-image noise."]
    return {fmt: render(header, rows, fmt, align="lrr" + "r" * (len(header) - 3), notes=notes, groups=groups[1:])
            for fmt in TABLE_FORMATS}


def kl_claim_training_tables(df: pd.DataFrame) -> dict[str, str] | None:
    """Per trained model: its logged training reward (first and last step) and the slope of a line through the
    last half of the curve with its se and p (``scipy.stats.linregress``): "still rising" when the slope is > 0 at
    p < 0.05, else "no rise detected" (which a short, noisy curve does not make a plateau). None when no model
    logged a reward curve."""
    from scipy import stats

    t = df[(df.kind == "training")] if "kind" in df.columns else df.iloc[:0]
    t = t[t.train_reward.notna()] if len(t) else t
    if not len(t):
        return None
    header = ["beta", "seed", "role", "steps", "reward first", "reward last", "slope, last half (± se) per step",
              "p", "plateau?"]
    rows = []
    for (b, seed), g in t.sort_values("step").groupby(["beta_eff", "model_seed"]):
        half = g.iloc[len(g) // 2:]
        fit = stats.linregress(half.step.astype(float), half.train_reward.astype(float)) if len(half) >= 3 else None
        rising = fit is not None and fit.slope > 0 and fit.pvalue / 2 < 0.05
        rows.append([f"{b:.4g}", f"{int(seed)}", g.arm.iloc[0], f"{len(g)}", f"{g.train_reward.iloc[0]:.4g}",
                     f"{g.train_reward.iloc[-1]:.4g}",
                     f"{fit.slope:+.2g} ± {fit.stderr:.1g}" if fit is not None else "–",
                     f"{fit.pvalue / 2:.2g}" if fit is not None else "–",
                     "still rising" if rising else (f"no rise detected ({len(half)} points)" if fit is not None
                                                    else "–")])
    notes = ["Training curves of the trained models (trainer log: the on-policy batch's mean reward per step). "
             "p: one-sided, slope > 0 over the last half of the steps; a few noisy points can miss a rise that a "
             "longer run shows (science audit: 48 DDPO iterations kept rising)."]
    return {fmt: render(header, rows, fmt, align="rrl" + "r" * 6, notes=notes) for fmt in TABLE_FORMATS}


def write_kl_claim_training_figure(df: pd.DataFrame, out_dir, formats: Sequence[str] = FORMATS) -> list[Path]:
    """``kl_claim_training``: the logged training reward against the step, one colour per beta, one line per seed."""
    t = df[(df.kind == "training")] if "kind" in df.columns else df.iloc[:0]
    t = t[t.train_reward.notna()] if len(t) else t
    if not len(t):
        return []
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(COLUMN_WIDTH, 2.4), layout="constrained")
        ax = fig.add_subplot()
        for i, (b, g) in enumerate(t.groupby("beta_eff")):
            for j, (seed, h) in enumerate(g.groupby("model_seed")):
                h = h.sort_values("step")
                ax.plot(h.step, h.train_reward, color=COLORS[i % len(COLORS)], marker=MARKERS[j % len(MARKERS)],
                        markersize=2, label=f"beta {b:.3g}" if j == 0 else None)
        ax.set_xlabel("training step")
        ax.set_ylabel("training reward (batch mean)")
        ax.legend(fontsize=5)
        ax.set_title(f"{t.task.iloc[0]}: training curves per beta (markers: seeds)", fontsize=6)
        return save(fig, Path(out_dir) / "kl_claim_training", formats)


def write_kl_claim_report(df: pd.DataFrame, analytic_df: pd.DataFrame | None, out_dir) -> list[Path]:
    """Figures (``figures/``), tables (``tables/``) and ``index.md`` / ``index.html`` (``rlg.report.page``) with the
    trained-model result and the analytic ground truth beside it; returns the paths written."""
    out_dir = Path(out_dir)
    files = write_kl_claim_figures(df, out_dir / "figures") + write_kl_claim_training_figure(df, out_dir / "figures")
    tables = {"kl_claim": kl_claim_tables(df), "kl_claim_metrics": kl_claim_metric_tables(df)}
    training = kl_claim_training_tables(df)
    if training is not None:
        tables["kl_claim_training"] = training
    if (df.kind == "metric").any():
        tables["kl_claim_verdict"] = kl_claim_verdict_tables(df)
    figs = lambda *stems: [f for f in files if f.suffix == ".png" and f.stem in stems]  # noqa: E731 (those drawn)
    sections = [("", ["kl_claim_verdict"] if "kl_claim_verdict" in tables else []),
                ("Trained models: RLG(w) from the beta model vs models retrained at beta / w",
                 ["kl_claim", "kl_claim_metrics", *figs("kl_claim_metrics", "kl_claim_distance")])]
    if training is not None:
        sections.append(("Did the retrained models reach a plateau?", ["kl_claim_training", *figs("kl_claim_training")]))
    if analytic_df is not None and len(analytic_df):
        from rlg.report.ground_truth import ground_truth_moment_tables, ground_truth_tables, write_ground_truth_figures

        files += write_ground_truth_figures(analytic_df, out_dir / "figures" / "analytic")
        tables["ground_truth"] = ground_truth_tables(analytic_df)
        tables["ground_truth_moments"] = ground_truth_moment_tables(analytic_df)
        sections.append(("Analytic ground truth (closed-form beta/w optimum)", ["ground_truth", "ground_truth_moments"]))
    return files + write_kind_report(out_dir, "Does the RLG scale act as the KL coefficient?", tables, sections)
