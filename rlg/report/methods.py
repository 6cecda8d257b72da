"""The methods comparison (issue 24): RLG, weight mixing, CFG and best-of-N on one axis of reward,
quality and cost, from stored rows alone.

Every image row of a methods run carries ``method``, ``knob`` (w, the CFG scale g, or None for a
best-of-N candidate), ``candidate``, ``nfe_base`` / ``nfe_rl`` (network rows the image asked of each
model, every step and CFG branch) and ``wall_s`` (its pipeline call's wall time per image). Best-of-N
points are made here: for each N the candidate the picking reward scores highest
(``rlg.methods.best_of_n.pick_best``); its cost is the sum over the N candidates. A best-of-N value on
the axis of its own picking reward is circular (the pick maximised it): tables and figures say so.

Cost is ``rows per image`` = nfe_base + nfe_rl: one network row is one sample through one model at one
step, so RLG at 0 < w != 1 costs twice weight mixing, and best-of-N N times its model alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rlg.methods.best_of_n import pick_best
from rlg.report import figures, tables
from rlg.report.stats import SERIES, pareto_front, summarize
from rlg.report.page import put

log = logging.getLogger(__name__)

COST = "rows per image"  # the cost axis: network rows (samples x models x steps x CFG branches) per image
WALL = "wall s per image"


def has_methods(images: pd.DataFrame) -> bool:
    """Whether the store holds images of a method other than plain RLG."""
    return "method" in images.columns and bool((images["method"].fillna("rlg") != "rlg").any())


def rlg_only(images: pd.DataFrame) -> pd.DataFrame:
    """The plain-RLG images (rows written before methods existed count as RLG)."""
    if "method" not in images.columns:
        return images
    return images[images["method"].fillna("rlg") == "rlg"].reset_index(drop=True)


def method_points(images: pd.DataFrame, scores: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per image of a method's curve: the images with a knob as they are, and for best-of-N one
    picked image per (prompt, sample, N). Columns: the image's own, ``config_id`` = the method (one series
    per method), ``scale`` = the knob, ``cost`` (rows per image) and ``wall_s``. Returns (frame, notes)."""
    img = images.copy()
    img["method"] = img["method"].fillna("rlg") if "method" in img.columns else "rlg"
    if "knob" not in img.columns:
        img["knob"] = img["scale"]
    img.loc[img["method"] == "rlg", "knob"] = img.loc[img["method"] == "rlg", "knob"].fillna(
        img.loc[img["method"] == "rlg", "scale"])
    for c in ("nfe_base", "nfe_rl", "wall_s"):
        if c not in img.columns:
            img[c] = np.nan
    notes = []
    plain = img[img["knob"].notna()].copy()
    parts = [plain]
    candidates = img[img["knob"].isna()]
    if "run_name" not in candidates.columns:
        candidates = candidates.assign(run_name="")
    for (run, label), g in candidates.groupby(["run_name", "method"]):  # each run picks among its own candidates
        pick = g["pick"].dropna().iloc[0] if "pick" in g.columns and g["pick"].notna().any() else None
        if pick is None:
            notes.append(f"{label}: candidates carry no picking metric; not shown")
            continue
        direction = scores.loc[scores["metric"] == pick, "higher_is_better"]
        higher = bool(direction.iloc[0]) if len(direction) else True
        values = scores[(scores["metric"] == pick) & scores["error"].isna()].drop_duplicates("image_key", keep="last")
        g = g.merge(values[["image_key", "value"]].rename(columns={"value": "pick_value"}), on="image_key",
                    how="left")
        frame = g.drop(columns=["pick"], errors="ignore").rename(columns={"pick_value": "pick"})
        n_max = int(g["candidate"].max()) + 1
        ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= n_max] + ([n_max] if n_max & (n_max - 1) else [])
        picked = pick_best(frame, ns, higher_is_better=higher)
        if picked.empty:
            notes.append(f"{label}: no candidate is scored by its picking metric {pick} yet; not shown")
            continue
        keep = [c for c in img.columns if c not in ("knob", "candidate", "nfe_base", "nfe_rl", "wall_s", "pick")]
        first = g.drop_duplicates("image_key").set_index("image_key")[[c for c in keep if c != "image_key"]]
        rows = picked.join(first.drop(columns=["prompt_id", "sample"]), on="image_key")
        rows["method"], rows["pick"], rows["run_name"] = label, pick, run
        parts.append(rows)
        notes.append(f"{label}: the best of N candidates by {pick} ({'higher' if higher else 'lower'} is better), "
                     f"N in {ns}; its {pick} is circular (the pick maximised it): judge it by the other metrics")
    out = pd.concat(parts, ignore_index=True) if parts else plain
    if "run_name" in out.columns and out["run_name"].nunique() > 1:  # several runs compared: one line per run
        out["method"] = out["run_name"].astype(str) + ": " + out["method"]  # and method (no w ~ w' across runs)
    out["config_id"] = out["method"]
    out["scale"] = out["knob"].astype(float)
    out["cost"] = out["nfe_base"].astype(float) + out["nfe_rl"].astype(float)
    for c in ("run_name", "pair", "run_id"):
        out[c] = ""  # one run: the method alone tells the series apart
    return out.reset_index(drop=True), notes


def method_summary(points: pd.DataFrame, scores: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (method, knob, metric): mean with its 95% bootstrap interval over prompts (rlg.report.stats),
    images used, and the mean cost (rows per image) and wall time per image of the points."""
    s = summarize(points, scores, n_resamples, seed, df=None) if len(points) else pd.DataFrame()
    if s.empty:
        return s
    cost = points.groupby(["config_id", "scale"], as_index=False).agg(cost=("cost", "mean"), wall_s=("wall_s", "mean"))
    s = s.merge(cost, on=["config_id", "scale"], how="left").rename(columns={"config_id": "method", "scale": "knob"})
    picks = points.dropna(subset=["pick"]).groupby("method")["pick"].first() if "pick" in points else pd.Series()
    s["circular"] = [picks.get(m) == metric for m, metric in zip(s["method"], s["metric"])]
    return s[["method", "knob", "metric", "higher_is_better", "mean", "lo", "hi", "n", "cost", "wall_s", "circular"]]


def _curve(summary: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    d = summary[(summary["method"] == method) & (summary["metric"] == metric)].sort_values("knob")
    return d[np.isfinite(d["mean"].astype(float))]


def equivalence(summary: pd.DataFrame, reward: str) -> pd.DataFrame:
    """For every RLG scale w, the weight-mixing w' with the same mean ``reward`` (linear interpolation
    between the two weight-mixing knobs that bracket it; the first bracket in knob order), and every other
    metric of both at that reward (weight mixing interpolated at w'). Rows with no bracket have w' NaN:
    the RLG reward lies outside the weight-mixing curve."""
    rlg, mix = _curve(summary, "rlg", reward), _curve(summary, "weight_mix", reward)
    rows = []
    if rlg.empty or len(mix) < 2:
        return pd.DataFrame(columns=["w", "reward", "w_prime"])
    k, v = mix["knob"].to_numpy(float), mix["mean"].to_numpy(float)
    others = [m for m in summary["metric"].unique() if m != reward]
    eps = 1e-9 * max(1.0, float(np.nanmax(np.abs(v))))  # one mean summed in another order is still equal
    for w, target in zip(rlg["knob"], rlg["mean"].astype(float)):
        w_prime = np.nan
        for i in range(len(k) - 1):
            lo, hi = sorted((v[i], v[i + 1]))
            if abs(target - v[i]) <= eps:
                w_prime = k[i]
                break
            if lo - eps <= target <= hi + eps and v[i] != v[i + 1]:
                w_prime = k[i] + (target - v[i]) * (k[i + 1] - k[i]) / (v[i + 1] - v[i])
                break
        if np.isnan(w_prime) and abs(target - v[-1]) <= eps:
            w_prime = k[-1]
        row = {"w": float(w), "reward": float(target), "w_prime": float(w_prime)}
        for m in others:
            a, b = _curve(summary, "rlg", m), _curve(summary, "weight_mix", m)
            at = a[a["knob"] == w]["mean"]
            row[f"{m} rlg"] = float(at.iloc[0]) if len(at) else np.nan
            row[f"{m} weight_mix"] = (float(np.interp(w_prime, b["knob"], b["mean"].astype(float)))
                                      if np.isfinite(w_prime) and len(b) >= 2 else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_points(summary: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Every method's points in the (x, y) plane (x may be ``COST``; lower cost is better) with
    ``front``: on the Pareto front of all methods' points together. Circular best-of-N points (on the
    axis of their picking reward) take part but are flagged ``circular``."""
    def values(metric: str) -> tuple[pd.DataFrame, bool]:
        if metric == COST:
            d = summary.drop_duplicates(["method", "knob"])[["method", "knob", "cost"]].rename(columns={"cost": "v"})
            return d.assign(lo_v=d["v"], hi_v=d["v"], circ_v=False), False
        d = summary[summary["metric"] == metric]
        hib = bool(d["higher_is_better"].iloc[0]) if len(d) else True
        return d[["method", "knob", "mean", "lo", "hi", "circular"]].rename(
            columns={"mean": "v", "lo": "lo_v", "hi": "hi_v", "circular": "circ_v"}), hib

    (a, ha), (b, hb) = values(x), values(y)
    m = a.merge(b, on=["method", "knob"], suffixes=("_x", "_y"))
    m = m[np.isfinite(m["v_x"].astype(float)) & np.isfinite(m["v_y"].astype(float))].reset_index(drop=True)
    m["front"] = pareto_front(m["v_x"], m["v_y"], ha, hb) if len(m) else []
    m["circular"] = m["circ_v_x"].astype(bool) | m["circ_v_y"].astype(bool)
    m.attrs["higher"] = (ha, hb)
    return m.sort_values(["method", "knob"]).reset_index(drop=True)


def plot_methods(summary: pd.DataFrame, x: str, y: str, stem: Path, formats: Sequence[str] = ("png", "pdf")):
    """One line per method in the (x, y) plane, points labelled with the knob; filled points with a black
    edge are the Pareto front of all methods together; circular best-of-N points are drawn hollow and
    crossed, and named so in the legend."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    m = pareto_points(summary, x, y)
    hx, hy = m.attrs.get("higher", (True, True))
    label = {COST: COST}
    with figures.matplotlib.rc_context(figures.STYLE):
        fig = Figure(figsize=figures.SIZES["tradeoff"], layout="constrained")
        ax = fig.add_subplot()
        handles, labels = [], []
        for i, (method, g) in enumerate(m.groupby("method", sort=True)):
            st = figures._style(i)
            c = st["color"]
            xs, ys = g["v_x"].to_numpy(float), g["v_y"].to_numpy(float)
            ax.plot(xs, ys, color=c, linewidth=0.7, linestyle=st["linestyle"], alpha=0.8)
            xerr = np.abs(np.vstack([xs - g["lo_v_x"], g["hi_v_x"] - xs]).astype(float))
            yerr = np.abs(np.vstack([ys - g["lo_v_y"], g["hi_v_y"] - ys]).astype(float))
            ax.errorbar(xs, ys, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt="none", ecolor=c,
                        elinewidth=0.5, alpha=0.4)
            front, circ = g["front"].to_numpy(bool), g["circular"].to_numpy(bool)
            ax.scatter(xs[~front], ys[~front], s=14, marker=st["marker"], facecolors="white", edgecolors=c,
                       linewidths=0.8, zorder=3)
            ax.scatter(xs[front], ys[front], s=18, marker=st["marker"], color=c, edgecolors="black",
                       linewidths=0.6, zorder=4)
            if circ.any():
                ax.scatter(xs[circ], ys[circ], s=30, marker="x", color="red", linewidths=0.7, zorder=5)
            for k, xi, yi in zip(g["knob"], xs, ys):  # in the method's colour: stacked labels stay attributable
                labels.append(ax.annotate(f"{k:g}", (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=5.5,
                                          color=c, zorder=6, path_effects=[figures.patheffects.withStroke(
                                              linewidth=1.5, foreground="white")]))
            name = method + (" (circular on this axis)" if circ.any() else "")
            handles.append(Line2D([], [], color=c, linestyle=st["linestyle"], marker=st["marker"], label=name))
        handles.append(Line2D([], [], color="0.3", marker="o", linestyle="", markeredgecolor="black",
                              label="Pareto front (all methods)"))
        ax.set_xlabel(f"{label.get(x, figures.metric_label(x))} {figures._arrow(hx)}")
        ax.set_ylabel(f"{label.get(y, figures.metric_label(y))} {figures._arrow(hy)}")
        ax.set_title("points labelled with each method's knob (w, CFG g, N)", fontsize=6, color="0.3")
        if len(handles) > 1:
            ax.legend(handles=handles, loc="best", fontsize=5.5)
        else:
            ax.text(0.5, 0.5, "no method has both yet", transform=ax.transAxes, ha="center", va="center")
        figures.separate_labels(fig, labels)  # methods share points (w = 0, 1): their labels stack, not overprint
        return figures.save(fig, stem, formats)


def _fmt(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.4g}"


def method_table(summary: pd.DataFrame, fmt: str) -> str:
    """Every (method, knob): cost, wall time and each metric as mean [lo, hi]; circular values marked *."""
    metrics = sorted(summary["metric"].unique())
    header = ["method", "knob", COST, WALL] + [figures.metric_label(m) for m in metrics]
    rows = []
    for (method, knob), g in summary.groupby(["method", "knob"], sort=True):
        by = g.set_index("metric")
        row = [method, f"{knob:g}", _fmt(float(g["cost"].iloc[0])), _fmt(float(g["wall_s"].iloc[0]))]
        for m in metrics:
            if m not in by.index:
                row.append("–")
                continue
            r = by.loc[m]
            cell = f"{_fmt(r['mean'])} [{_fmt(r['lo'])}, {_fmt(r['hi'])}]"
            row.append(cell + (" *" if bool(r["circular"]) else ""))
        rows.append(row)
    return tables.render(header, rows, fmt)


def write_methods(images: pd.DataFrame, scores: pd.DataFrame, out_dir: Path, *, n_resamples: int = 1000,
                  seed: int = 0, reward: str | None = None, formats: Sequence[str] = ("png", "pdf")) -> dict[str, Any]:
    """Write tables/methods.{csv,md}, tables/methods_equivalence.csv and figures/methods_*.{png,pdf}.

    ``reward``: the run's reward (the x axis; without it, or unscored, no figures or equivalence table).
    Returns {"files", "summary" (per method, knob, metric), "equivalence", "reward", "notes", "front"
    (the Pareto-front points of reward against every other axis)}."""
    out_dir = Path(out_dir)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    points, notes = method_points(images, scores)
    summary = method_summary(points, scores, n_resamples, seed)
    files: list[Path] = []
    result: dict[str, Any] = {"files": files, "summary": summary, "notes": notes, "reward": None,
                              "equivalence": pd.DataFrame(), "front": {}}
    if summary.empty:
        notes.append("methods: no scored images yet")
        return result
    rew = reward if reward in set(summary["metric"]) else None  # the run's reward (rlg.report.report decides)
    result["reward"] = rew
    files.append(put(out_dir / "tables" / "methods.csv", summary))
    files.append(put(out_dir / "tables" / "methods.md", method_table(summary, "markdown")
                     + "\n* circular: best-of-N judged by its own picking reward.\n"))
    if rew is None:
        return result
    eq = equivalence(summary, rew)
    result["equivalence"] = eq
    if len(eq):
        files.append(put(out_dir / "tables" / "methods_equivalence.csv", eq))
    axes = [m for m in sorted(summary["metric"].unique()) if m != rew] + [COST]
    for y in axes:
        x, yy = (COST, rew) if y == COST else (rew, y)
        stem = out_dir / "figures" / f"methods_{figures.slug(x)}__{figures.slug(yy)}"
        files += plot_methods(summary, x, yy, stem, formats)
        pts = pareto_points(summary, x, yy)
        result["front"][f"{x} vs {yy}"] = pts[pts["front"]][["method", "knob"]].to_records(index=False).tolist()
        if pts["circular"].any():  # the same front without the values a best-of-N pick maximised
            held = pts[~pts["circular"]].reset_index(drop=True)
            front = pareto_front(held["v_x"], held["v_y"], *pts.attrs["higher"])
            result["front"][f"{x} vs {yy}, without circular best-of-N values"] = \
                held[front][["method", "knob"]].to_records(index=False).tolist()
    for m in [m for m in sorted(summary["metric"].unique()) if m != rew]:  # quality against cost too
        stem = out_dir / "figures" / f"methods_{figures.slug(COST)}__{figures.slug(m)}"
        files += plot_methods(summary, COST, m, stem, formats)
    return result


def write_index_section(index: Any, out_dir: Path, result: dict[str, Any]) -> None:
    """The "Methods" section of the report's index page."""
    index.section("methods", "Methods: RLG against weight mixing, CFG and best-of-N")
    summary = result["summary"]
    if summary.empty:
        index.text("No scored images of the methods yet.")
        return
    index.text(f"Reward axis: {result['reward']}. Cost: network rows per image (one sample through one model at "
               "one step; RLG at 0 < w != 1 runs two models). Wall time: each method's pipeline calls, per image.")
    from rlg.report.methods_words import methods_in_words

    for line in methods_in_words(summary, result["reward"]):  # what it found, in words, before the tables
        index.text(line)
    for line in result["notes"]:
        index.text(("WARNING: " if "circular" in line else "") + line)
    index.table(method_table(summary, "markdown"), method_table(summary, "html"))
    for axes, front in result["front"].items():
        index.text(f"Pareto front, {axes}: " + ", ".join(f"{m} {k:g}" for m, k in front))
    eq = result["equivalence"]
    if len(eq):
        index.sub("RLG w against weight mixing w' at equal reward")
        cols = list(eq.columns)
        rows = [[_fmt(v) for v in r] for r in eq[cols].to_numpy(float)]
        header = ["RLG w", f"{result['reward']}", "weight-mix w'"] + cols[3:]
        index.table(tables.render(header, rows, "markdown"), tables.render(header, rows, "html"))
        index.text("w' is NaN (–) where the RLG reward lies outside the weight-mixing curve.")
    for f in result["files"]:
        if f.suffix == ".png":
            index.figure(f, str(f.relative_to(out_dir)), f.stem.removeprefix("methods_").replace("__", " vs "))


__all__ = ["COST", "equivalence", "has_methods", "method_points", "method_summary", "pareto_points", "plot_methods",
           "rlg_only", "write_methods", "write_index_section", "SERIES"]
