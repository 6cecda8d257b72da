"""Figures and tables of the analytic ground truth (rows from ``rlg.ground_truth.run_ground_truth``).

The science returns rows; this module draws them, in the report layer's style (``rlg.report.figures``:
``Figure`` on the Agg canvas, fixed sizes, Okabe-Ito colours, PNG and PDF). Curves: one colour per
sampler; solid with circles = RLG, dashed with squares = the sampler control (the same sampler on the
exact beta/w target's own score, "exact score"); the grey band or black line is the Monte-Carlo floor or
the exact value. Error bars are 2 standard errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rlg.report.figures import COLORS, COLUMN_WIDTH, FORMATS, STYLE, TEXT_WIDTH, _reference_lines, save
from rlg.report.page import write_kind_report
from rlg.report.tables import render_all

__all__ = ["write_ground_truth_figures", "ground_truth_tables", "ground_truth_moment_tables", "ground_truth_fkc_tables",
           "write_ground_truth_report"]

X_LABEL = "RLG scale w"
METHOD_STYLE = {"rlg": dict(linestyle="-", marker="o", label="RLG"),
                "exact_score": dict(linestyle="--", marker="s", label="exact score (sampler control)"),
                "rlg_fkc": dict(linestyle=":", marker="^", label="RLG-FKC (largest K)"),
                "fk_steering": dict(linestyle="-.", marker="v", label="FK steering of the base (largest K)")}


def _title(df: pd.DataFrame) -> str:
    f = df.iloc[0]
    return f"{f.pair}, d={f.d}, beta={f.beta:g}, {f.steps} steps, n={f.n} per w"


def _colors(df: pd.DataFrame) -> dict[str, str]:
    return {s: COLORS[i % len(COLORS)] for i, s in enumerate(dict.fromkeys(df["sampler"]))}


def _curves(ax, df: pd.DataFrame, metric: str, y=lambda r: r.value, yerr=lambda r: 2 * r.stderr, methods=None):
    colors = _colors(df)
    for s, c in colors.items():
        for method, st in METHOD_STYLE.items():
            if methods is not None and method not in methods:
                continue
            sub = df[(df.sampler == s) & (df.method == method) & (df.metric == metric)].sort_values("w")
            if method in ("rlg_fkc", "fk_steering") and len(sub):
                sub = sub[sub.particles == sub.particles.max()]
            if len(sub):
                ax.errorbar(sub.w, y(sub), yerr=yerr(sub), color=c, linestyle=st["linestyle"], marker=st["marker"],
                            capsize=2, label=f"{st['label']}, {s}")


def _finish(ax, df: pd.DataFrame) -> None:
    _reference_lines(ax)
    ax.set_xticks(sorted(set(df.w) | {0.0, 1.0}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(X_LABEL)


def write_ground_truth_figures(df: pd.DataFrame, out_dir, distance: str = "energy_distance",
                               formats: Sequence[str] = FORMATS) -> list[Path]:
    """Distance to the beta/w optimum vs w, mean reward vs w (with the total and the net gap), the
    per-dimension moment errors vs w, and (for mixtures) the component weights vs w; returns the paths."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    title = _title(df)
    with matplotlib.rc_context(STYLE):
        if (df.metric == distance).any():
            fig = Figure(figsize=(TEXT_WIDTH / 2, 2.8), layout="constrained")
            ax = fig.add_subplot()
            _curves(ax, df, distance)
            floor = df[(df.metric == distance) & (df.method == "rlg")].groupby("w")[["floor", "floor_stderr"]].mean()
            ax.fill_between(floor.index, floor.floor - 2 * floor.floor_stderr, floor.floor + 2 * floor.floor_stderr,
                            color="0.5", alpha=0.25, linewidth=0, label="Monte-Carlo floor (exact vs exact), ±2 se")
            _finish(ax, df)
            ax.set_ylabel(f"{distance.replace('_', ' ')} to the beta/w optimum")
            ax.set_title(title)
            ax.legend(fontsize=5)
            written += save(fig, out_dir / f"{distance}_vs_w", formats)
        if (df.metric == "mean_reward").any():
            fig = Figure(figsize=(TEXT_WIDTH / 2, 3.8), layout="constrained")
            ax, ax_gap = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
            _curves(ax, df, "mean_reward")
            ex = df[(df.metric == "mean_reward") & (df.method == "rlg")].groupby("w").exact.mean()
            ax.plot(ex.index, ex.values, color="k", linewidth=0.8, label="exact beta/w optimum")
            ax.set_ylabel("mean reward")
            ax.set_title(title + " (bars: 2 se)")
            ax.legend(fontsize=5)
            colors = _colors(df)
            rlg = df[(df.metric == "mean_reward") & (df.method == "rlg")]
            for s, c in colors.items():
                sub = rlg[rlg.sampler == s].sort_values("w")
                ax_gap.errorbar(sub.w, sub.value - sub.exact, yerr=2 * sub.stderr, color=c, marker="o",
                                linestyle=":", capsize=2, label=f"RLG - exact, {s}")
                if sub.net.notna().any():
                    ax_gap.errorbar(sub.w, sub.net, yerr=2 * sub.net_stderr.fillna(0), color=c, marker="^",
                                    linestyle="-", capsize=2, label=f"net: RLG - exact score, {s}")
            ax_gap.axhline(0.0, color="k", linewidth=0.8)
            ax_gap.set_ylabel("reward gap")
            ax_gap.legend(fontsize=4.5)
            _finish(ax_gap, df)
            written += save(fig, out_dir / "mean_reward_vs_w", formats)
        dims = sorted({int(m.split("_")[1]) for m in df.metric if m.startswith("var_")})[:4]
        if dims:
            fig = Figure(figsize=(TEXT_WIDTH, 1.9 * 2), layout="constrained")
            axes = fig.subplots(2, len(dims), squeeze=False, sharex=True)
            for j, i in enumerate(dims):
                _curves(axes[0][j], df, f"mean_{i}", y=lambda r: r.value - r.exact)
                _curves(axes[1][j], df, f"var_{i}", y=lambda r: r.value / r.exact - 1,
                        yerr=lambda r: 2 * r.stderr / r.exact)
                axes[0][j].set_ylabel(f"mean of x_{i}: sample - exact")
                axes[1][j].set_ylabel(f"var of x_{i}: sample / exact - 1")
                for ax in (axes[0][j], axes[1][j]):
                    ax.axhline(0.0, color="k", linewidth=0.8)
                    _finish(ax, df)
            axes[0][0].legend(fontsize=4.5)
            fig.suptitle(title + "; per-dimension moments (bars: 2 se)", fontsize=7)
            written += save(fig, out_dir / "moments_vs_w", formats)
        weights = sorted(m for m in set(df.metric) if m.startswith("weight_"))
        if weights:
            fig = Figure(figsize=(min(TEXT_WIDTH, COLUMN_WIDTH * len(weights)), 2.6), layout="constrained")
            axes = fig.subplots(1, len(weights), squeeze=False)[0]
            for ax, m in zip(axes, weights):
                _curves(ax, df, m)
                ex = df[(df.metric == m) & (df.method == "rlg")].groupby("w").exact.mean()
                ax.plot(ex.index, ex.values, color="k", linewidth=0.8, label="exact beta/w optimum")
                ax.set_ylabel(f"posterior weight of target component {m.split('_')[1]}")
                _finish(ax, df)
            axes[0].legend(fontsize=4.5)
            fig.suptitle(title, fontsize=7)
            written += save(fig, out_dir / "component_weight_vs_w", formats)
    return written


def _fmt_z(z: float) -> str:
    return "–" if z is None or not np.isfinite(z) else f"{z:+.1f}"


def _pick(at: pd.DataFrame, method: str, metric: str):
    sel = at[(at.method == method) & (at.metric == metric)]
    return sel.iloc[0] if len(sel) else None


def _max_abs(at: pd.DataFrame, method: str, column: str) -> float:
    sel = at[(at.method == method) & at.metric.str.match(r"^(mean|var)_\d+$")][column].abs()
    return float(sel.max()) if len(sel) and sel.notna().any() else float("nan")


def _largest_net(at: pd.DataFrame) -> str:
    """The moment with the largest |net z|, as 'var_0 -0.18 (z -14.4)': a huge z can belong to a tiny gap
    (the paired se is small), so the size is shown with it."""
    sel = at[(at.method == "rlg") & at.metric.str.match(r"^(mean|var)_\d+$") & at.net_z.notna()]
    if sel.empty:
        return "–"
    r = sel.loc[sel.net_z.abs().idxmax()]
    return f"{r.metric} {r.net:+.2g} ({_fmt_z(r.net_z)})"


def ground_truth_tables(df: pd.DataFrame, distance: str = "energy_distance") -> dict[str, str]:
    """Markdown and LaTeX tables: per sampler and w, the distance to the beta/w optimum against the
    Monte-Carlo floor (RLG and the exact-score control), the mean-reward gap (total and net of the
    sampler's error) and the largest per-dimension moment z-scores."""
    fkc = "method" in df and (df.method == "rlg_fkc").any()
    header = ["sampler", "w", f"{distance} RLG (± se)", "floor", "z", "z exact score",
              "reward RLG - exact (z)", "net reward gap (z)", "max|z| moments RLG", "max|z| exact score",
              "largest net moment gap (z)"] + (["z RLG-FKC (K)"] if fkc else [])
    rows, groups = [], []
    for sampler, part in df.groupby("sampler", sort=False):
        groups.append(len(rows))
        for w, at in part.groupby("w"):
            d, dc = _pick(at, "rlg", distance), _pick(at, "exact_score", distance)
            r = _pick(at, "rlg", "mean_reward")
            cells = [sampler, f"{w:g}"]
            cells += [f"{d.value:.2e} ± {d.stderr:.1e}", f"{d.floor:.1e}", _fmt_z(d.z)] if d is not None else ["–"] * 3
            cells.append(_fmt_z(dc.z) if dc is not None else "–")
            if r is not None:
                cells += [f"{r.value - r.exact:+.4f} ({_fmt_z(r.z)})",
                          f"{r.net:+.4f} ({_fmt_z(r.net_z)})" if np.isfinite(r.net) else "–"]
            else:
                cells += ["–", "–"]
            cells += [_fmt_z(_max_abs(at, "rlg", "z")).lstrip("+"),
                      _fmt_z(_max_abs(at, "exact_score", "z")).lstrip("+"), _largest_net(at)]
            if fkc:
                fk = at[(at.method == "rlg_fkc") & (at.metric == distance)]
                fk = fk[fk.particles == fk.particles.max()] if len(fk) else fk
                cells.append(f"{_fmt_z(fk.z.iloc[0])} ({int(fk.particles.iloc[0])})" if len(fk) else "–")
            rows.append(cells)
    f = df.iloc[0]
    notes = [f"Ground truth: {f.pair}, d={f.d}, beta={f.beta}, {f.steps} steps, {f.n} samples per w "
             f"({f.n_batches} batches for the distance error bars), init={f.init}.",
             "z = (value - reference) / combined se (distance: reference = exact-vs-exact floor; reward and moments: "
             "exact closed form). 'exact score' = the same sampler, steps and noise driven by the exact beta/w "
             "target's own score: its error is the sampler's. Net gap = RLG - exact score on paired rows (paired se): "
             "the RLG-specific part. Moments: per-dimension mean and variance; '–' where RLG and the control coincide "
             "(w = 0, 1)."]
    if fkc:
        notes.append("RLG-FKC: RLG with Feynman-Kac correctors (rlg.fkc), K particles per sample, the largest K run; "
                     "its distance z against the same floor; not run at w = 0, 1 (weights are 0 there). Per K: the "
                     "ground_truth_fkc table.")
    return render_all(header, rows, align="lr" + "r" * (len(header) - 2), notes=notes, groups=groups[1:])


def ground_truth_moment_tables(df: pd.DataFrame, max_dims: int = 4) -> dict[str, str]:
    """Per sampler, w and dimension: mean error and relative variance error of RLG and of the exact-score
    control against the closed form, and the net (paired) RLG - control difference, each with its z."""
    header = ["sampler", "w", "dim", "mean: RLG - exact (z)", "var: RLG/exact - 1 (z)",
              "var: exact score/exact - 1 (z)", "net var: RLG - exact score (z)"]
    rows, groups = [], []
    for sampler, part in df.groupby("sampler", sort=False):
        groups.append(len(rows))
        for w, at in part.groupby("w"):
            dims = sorted({int(m.split("_")[1]) for m in at.metric if m.startswith("var_")})[:max_dims]
            for i in dims:
                m, v, vc = (_pick(at, "rlg", f"mean_{i}"), _pick(at, "rlg", f"var_{i}"),
                            _pick(at, "exact_score", f"var_{i}"))
                rows.append([sampler, f"{w:g}", str(i), f"{m.value - m.exact:+.4f} ({_fmt_z(m.z)})",
                             f"{v.value / v.exact - 1:+.2%} ({_fmt_z(v.z)})",
                             f"{vc.value / vc.exact - 1:+.2%} ({_fmt_z(vc.z)})" if vc is not None else "–",
                             f"{v.net:+.4f} ({_fmt_z(v.net_z)})" if np.isfinite(v.net) else "–"])
    notes = ["Per-dimension moment tests of the ground truth (exact values in closed form, noised to the sampler's "
             "output level); se from influence values, paired se for the net column."]
    return render_all(header, rows, align="lrr" + "r" * (len(header) - 3), notes=notes, groups=groups[1:])


def ground_truth_fkc_tables(df: pd.DataFrame, distance: str = "energy_distance") -> dict[str, str] | None:
    """Per sampler, w, particle method (``rlg_fkc``, ``fk_steering``) and particle count K: the distance to the
    beta/w optimum against the floor (z), plain RLG's z beside it, the reward error (z), the weight diagnostics
    (final and smallest ESS / K, resamplings per sample) and the network rows per output sample. None when the
    rows hold no particle run."""
    methods = [m for m in ("rlg_fkc", "fk_steering") if "method" in df and (df.method == m).any()]
    if not methods:
        return None
    header = ["sampler", "w", "method", "K", f"{distance} (± se)", "floor", "z", "z RLG", "reward - exact (z)",
              "final ESS/K", "min ESS/K", "resamplings", "network rows (RLG)"]
    rows, groups = [], []
    for sampler, part in df.groupby("sampler", sort=False):
        groups.append(len(rows))
        for (w, method), at_m in part[part.method.isin(methods)].groupby(["w", "method"]):
            at = part[part.w == w]
            plain = _pick(at, "rlg", distance)
            for K, fk in at_m.groupby("particles"):
                d, r = _pick(fk, method, distance), _pick(fk, method, "mean_reward")
                rows.append([sampler, f"{w:g}", method, str(int(K)),
                             f"{d.value:.2e} ± {d.stderr:.1e}" if d is not None else "–",
                             f"{d.floor:.1e}" if d is not None else "–", _fmt_z(d.z) if d is not None else "–",
                             _fmt_z(plain.z) if plain is not None else "–",
                             f"{r.value - r.exact:+.4f} ({_fmt_z(r.z)})" if r is not None else "–",
                             f"{d.ess_final:.2f}", f"{d.ess_min:.2f}", f"{d.resamples:.1f}",
                             f"{int(d.network_rows)} ({int(plain.network_rows)})" if plain is not None else
                             f"{int(d.network_rows)}"])
    f = df.iloc[0]
    notes = [f"Particle samplers (docs/fkc.md): {f.pair}, d={f.d}, beta={f.beta}, {f.steps} steps, {f.n} output "
             "samples per w, each one particle drawn by weight from its own population of K. rlg_fkc: RLG with "
             "Feynman-Kac correctors (rlg.fkc); fk_steering: FK steering of the base model with lam = w / beta "
             "(rlg.fk_steering), the same target.",
             "z = (distance - floor) / combined se, as for RLG. ESS/K: effective sample size of a population over K "
             "(final weights, mean over samples; smallest over samples and steps); resamplings per sample. Network "
             "rows per output sample: 2 K per step for FKC, K for FK steering."]
    return render_all(header, rows, align="lrlr" + "r" * (len(header) - 4), notes=notes, groups=groups[1:])


def write_ground_truth_report(df: pd.DataFrame, out_dir) -> list[Path]:
    """Figures under ``out_dir``/figures, tables (ground_truth, ground_truth_moments, ground_truth_fkc: .md/.tex)
    under ``out_dir``/tables and ``index.md`` / ``index.html`` (``rlg.report.page``); returns the paths written."""
    out_dir = Path(out_dir)
    files = write_ground_truth_figures(df, out_dir / "figures")
    tables = {"ground_truth": ground_truth_tables(df), "ground_truth_moments": ground_truth_moment_tables(df)}
    fkc = ground_truth_fkc_tables(df)
    if fkc is not None:
        tables["ground_truth_fkc"] = fkc
    sections = [("", list(tables)), ("Figures", [f for f in files if f.suffix == ".png"])]
    return files + write_kind_report(out_dir, f"Analytic ground truth: {_title(df)}", tables, sections)
