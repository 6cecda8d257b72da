"""Tables and figures of the learned-model ground truth of the KL claim (rows of ``rlg.kl_learned``).

* ``kl_learned_verdict``: per w, "RLG(w) matches retraining at beta / w" (holds / does not hold / undecided), the
  difference RLG - retrained over training seeds with t(df) and Holm's p, and the responsiveness check.
* ``kl_learned_errors``: per w, the reward errors separated, with 95% intervals: the sampler's own error (exact
  score vs the closed-form reward), RLG's own gap with exact scores, the network's approximation error, and
  fine-tuning's convergence error; the weight extrapolation beside them.
* ``kl_learned_distance``: energy distance of every arm to exact samples of the beta/w optimum (mean over seeds).
* figures ``kl_learned_frontier`` (mean reward against path KL to the base: the exact optimum, RLG, retrained
  models and weight extrapolation; DeRa's frontier) and ``kl_learned_training`` (loss curves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rlg.kl_stats import decompose, mean_se, normal_interval
from rlg.report.figures import COLORS, COLUMN_WIDTH, FORMATS, MARKERS, STYLE, TEXT_WIDTH, save
from rlg.report.page import write_kind_report
from rlg.report.tables import render_all

__all__ = ["kl_learned_tables", "write_kl_learned_figures", "write_kl_learned_report"]

ARM_LABELS = {"exact": "exact score of the beta/w optimum", "rlg_exact": "RLG, exact scores",
              "oracle": "net trained on the optimum's samples", "retrained": "fine-tuned at beta/w",
              "rlg": "RLG(w) from the fine-tuned beta net", "weights": "weights base + w (tuned - base)"}
OBJECTIVE_LABELS = {"rwr": "RWR (reward-weighted regression)", "pg": "KL-regularised policy gradient",
                    "pg_dpok": "policy gradient, the zoo's DPOK formula", "dpo": "Diffusion-DPO"}


def _with_objective(df: pd.DataFrame) -> pd.DataFrame:
    """Rows stored before the ``objective`` column existed are RWR's (the only objective then)."""
    if "objective" in df:
        return df.assign(objective=df.objective.fillna(""))
    return df.assign(objective=np.where(df.arm.isin(["retrained", "rlg", "weights"]), "rwr", ""))


def _ci(r, k: str, digits: int = 3) -> str:
    v, lo, hi = getattr(r, k), getattr(r, f"{k}_lo"), getattr(r, f"{k}_hi")
    if not np.isfinite(lo):
        return f"{v:+.{digits}f} (exact)" if v == 0 else f"{v:+.{digits}f}"
    return f"{v:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _title(df: pd.DataFrame) -> str:
    f = df.iloc[0]
    seeds = df.seed.dropna().nunique()
    return (f"{f.pair} (d = {f.d}), beta = {f.beta:g}, {seeds} training seeds, DDIM {f.steps} steps eta {f.eta:g}, "
            f"n = {f.n} samples per arm")


def kl_learned_tables(df: pd.DataFrame) -> dict[str, dict[str, str]]:
    """{"kl_learned_verdict" | "kl_learned_errors" | "kl_learned_distance": {"markdown": ..., "latex": ...}}."""
    df = _with_objective(df)
    dec = decompose(df)
    seeds = int(df.seed.dropna().nunique())
    out = {}
    header = ["objective", "w", "beta/w", "verdict", "margin (±)", "RLG - retrained [95%]", "t (df)", "Holm p",
              "response: retrained(beta/w) - retrained(beta) [95%]", "evidence",
              "distribution: energy distance to the optimum, RLG - retrained [95%]"]
    rows = [[r.objective, f"{r.w:g}", f"{r.beta_eff:.3g}", r.verdict,
             "–" if not np.isfinite(r.margin) else f"{r.margin:.3g}", _ci(r, "rlg_vs_retrained"),
             "–" if not np.isfinite(r.rlg_vs_retrained_p) else
             f"{r.rlg_vs_retrained / r.rlg_vs_retrained_se:+.2f} ({r.rlg_vs_retrained_df:.0f})",
             "–" if not np.isfinite(r.p_holm) else f"{r.p_holm:.2g}", _ci(r, "response"), r.reason,
             _ci(r, "energy_rlg_vs_retrained", 4)] for r in dec.itertuples()]
    notes = [f"RLG(w) matches a model retrained at beta/w? Learned ground truth, {_title(df)}.",
             f"Mean reward of the samples; differences paired over {seeds} training seeds (each seed: one base, its "
             "fine-tunes), t on seeds - 1 df. Verdict: rlg-bench's one rule (rlg.verdicts), equivalence within the "
             "margin = half the response, Holm across w: 'holds' when the 95% interval lies inside ± margin, 'does "
             "not hold' when outside, 'undecided' when across it or when retraining does not respond to beta/w "
             "beyond its seed spread (no margin). The verdict is on the mean reward; the last column asks the same of "
             "the "
             "whole distribution (energy distance to exact samples of the beta/w optimum). One block per retraining "
             "objective: RLG(w) starts from that objective's beta model."]
    out["kl_learned_verdict"] = render_all(header, rows, align="lrrlr" + "r" * 4 + "lr", notes=notes)
    header = ["objective", "w", "beta/w", "exact reward", "sampler: exact score - exact",
              "RLG's own gap (exact scores) [95%]", "network: oracle - exact score [95%]",
              "fine-tuning: retrained - oracle [95%]", "own criterion: retrained - oracle [95%]",
              "weights - retrained [95%]"]
    has_gap = "objective_gap" in dec
    rows = [[r.objective, f"{r.w:g}", f"{r.beta_eff:.3g}", f"{r.exact_reward:.3f}",
             f"{r.exact_score_reward - r.exact_reward:+.3f}",
             ("{:+.3f} [{:+.3f}, {:+.3f}]".format(r.rlg_gap_exact, *normal_interval(r.rlg_gap_exact, r.rlg_gap_exact_se))
              if r.rlg_gap_exact_se > 0 else "0 (exact)"),
             _ci(r, "network"), _ci(r, "fine_tuning"),
             _ci(r, "objective_gap") if has_gap and np.isfinite(r.objective_gap) else "–",
             _ci(r, "weights_vs_retrained")] for r in dec.itertuples()]
    notes = [f"Reward errors separated, {_title(df)}. All arms share the initial latents and step noise at each w.",
             "RLG's own gap: paired over samples (normal interval); network and fine-tuning: t intervals over "
             "training seeds. retrained - exact score = network + fine-tuning: the fine-tuning column is each "
             "objective's convergence error against the oracle (its optimisation and, for PG and DPO, its "
             "objective's own bias); the first four columns do not depend on the objective. 'Own criterion': the "
             "objective's training criterion (larger is better; rlg.kl_learned.objective_value) at the fine-tune "
             "minus at the oracle, on the same evaluation draw: > 0 means the fine-tune optimised its criterion "
             "past the oracle, so a reward gap to the oracle is the objective's, not the optimiser's."]
    out["kl_learned_errors"] = render_all(header, rows, align="l" + "r" * (len(header) - 1), notes=notes)
    arms = [(a, o) for a, o in df[["arm", "objective"]].drop_duplicates().itertuples(index=False)]
    header = ["w", "floor (exact vs exact)"] + [a if not o else f"{a} ({o})" for a, o in arms]
    rows = []
    for w, at in df.groupby("w"):
        cells = [f"{w:g}", f"{at.energy_floor.iloc[0]:.4f} ± {at.energy_floor_stderr.iloc[0]:.1g}"]
        for a, o in arms:
            v = at[(at.arm == a) & (at.objective == o)].energy
            m, se = mean_se(v)
            cells.append(f"{m:.4f}" + (f" ± {se:.1g}" if len(v) > 1 else ""))
        rows.append(cells)
    notes = ["Energy distance to exact samples of the beta/w optimum (at the sampler's output noise level); learned "
             "arms: mean ± se over training seeds."]
    out["kl_learned_distance"] = render_all(header, rows, align="r" * len(header), notes=notes)
    return out


def write_kl_learned_figures(df: pd.DataFrame, out_dir, formats: Sequence[str] = FORMATS) -> list[Path]:
    """``kl_learned_frontier`` (one panel per retraining objective: mean reward against the path KL to the base,
    mean ± se over seeds, seeds as dots) and ``kl_learned_training`` (training curves per kind of run)."""
    df = _with_objective(df)
    out_dir = Path(out_dir)
    written: list[Path] = []
    objectives = [o for o in OBJECTIVE_LABELS if o in set(df.objective)]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(COLUMN_WIDTH * 1.1 * len(objectives), 2.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(objectives), sharey=True))
        for ax, obj in zip(axes, objectives):
            for i, arm in enumerate(["exact", "rlg_exact", "retrained", "rlg", "weights"]):
                d = df[(df.arm == arm) & df.objective.isin(["", obj])]
                if not len(d):
                    continue
                g = d.groupby("w").agg(kl=("path_kl", "mean"), r=("reward", "mean"), kl_sd=("path_kl", "std"),
                                       r_sd=("reward", "std"), k=("reward", "size")).reset_index()
                se = lambda s: (s.fillna(0) / np.sqrt(g.k)).to_numpy()  # noqa: E731
                ax.errorbar(g.kl, g.r, xerr=se(g.kl_sd), yerr=se(g.r_sd), color=COLORS[i], marker=MARKERS[i],
                            capsize=2, linestyle="-" if arm in ("exact", "rlg_exact", "rlg") else ":",
                            label=ARM_LABELS[arm])
                if d.seed.notna().any():
                    ax.scatter(d.path_kl, d.reward, color=COLORS[i], s=4, alpha=0.35, linewidths=0)
                for r in g.itertuples():
                    if arm == "exact":
                        ax.annotate(f"w={r.w:g}", (r.kl, r.r), fontsize=5, xytext=(2, -6), textcoords="offset points")
            ax.set_xscale("symlog", linthresh=0.1)
            ax.set_xlabel("path KL to the base (nats, DDIM trajectories)")
            ax.set_title(f"retraining: {OBJECTIVE_LABELS[obj]}", fontsize=6)
        axes[0].set_ylabel("mean reward ↑")
        axes[0].legend(fontsize=5)
        fig.suptitle(_title(df), fontsize=5)
        written += save(fig, out_dir / "kl_learned_frontier", formats)
        curves = df.attrs.get("curves") or {}
        if curves:
            kinds = sorted({k.rsplit("/", 1)[0] for k in curves})
            prefixes = [p for p in ["base", "oracle", *OBJECTIVE_LABELS] if any(k.split("/")[0] == p for k in kinds)]
            titles = {"base": "base: DSM loss on p_ref", "oracle": "oracle: DSM loss on the optimum",
                      "rwr": "RWR: weighted DSM loss", "pg": "policy gradient: batch mean reward ↑",
                      "pg_dpok": "PG (DPOK formula): batch mean reward ↑",
                      "dpo": "Diffusion-DPO loss"}
            fig = Figure(figsize=(TEXT_WIDTH, 2.2 * ((len(prefixes) + 2) // 3)), layout="constrained")
            ax = np.atleast_1d(fig.subplots((len(prefixes) + 2) // 3, 3)).ravel()
            for j, prefix in enumerate(prefixes):
                for i, kind in enumerate(k for k in kinds if k.split("/")[0] == prefix):
                    runs = np.array([v for k, v in curves.items() if k.rsplit("/", 1)[0] == kind])
                    x = np.arange(1, runs.shape[1] + 1) / runs.shape[1]
                    ax[j].plot(x, runs.mean(0), color=COLORS[i % len(COLORS)], label=kind.split("/", 1)[-1])
                    ax[j].fill_between(x, runs.min(0), runs.max(0), color=COLORS[i % len(COLORS)], alpha=0.2)
                ax[j].set_title(titles[prefix], fontsize=6)
                ax[j].set_xlabel("fraction of training")
                if prefix != "base":
                    ax[j].legend(fontsize=5)
            for a in ax[len(prefixes):]:
                a.set_visible(False)
            ax[0].set_ylabel("mean over seeds; band: min-max")
            written += save(fig, out_dir / "kl_learned_training", formats)
    return written


def write_kl_learned_report(df: pd.DataFrame, out_dir) -> list[Path]:
    """Figures (``figures/``), tables (``tables/``) and ``index.md`` / ``index.html`` (``rlg.report.page``; verdict
    table first); the paths written."""
    out_dir = Path(out_dir)
    files = write_kl_learned_figures(df, out_dir / "figures")
    secs = df.attrs.get("seconds")
    wall = [] if secs is None else [f"Wall time {secs:g} s (training {df.attrs.get('train_seconds', float('nan')):g} s)."]
    sections = [("", ["kl_learned_verdict"]), ("The errors, separated", [
        "kl_learned_errors", "kl_learned_distance", *(f for f in files if f.suffix == ".png"), *wall])]
    return files + write_kind_report(out_dir, "Does the RLG scale act as the KL coefficient? Learned-model ground truth",
                                     kl_learned_tables(df), sections)
