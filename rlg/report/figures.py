"""Paper figures from a summary frame (``rlg.report.stats.summarize``) and stored PNGs.

One style for all, sized for a paper column (3.3 in) at 300 dpi, written as PNG and PDF. Figures are
built on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot: no global state, no display.
Every figure has a fixed size in inches (no tight bbox), so its pixel size is known in advance.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.patches
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory
from PIL import Image

from rlg.report.stats import GENEVAL_TAGS, SERIES, _normalise_images, canonical_scale, pareto_front, scale_label
from rlg.sampler_spec import noise_seed

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
TEXT_WIDTH = 6.9  # inches: a figure* across both columns
DPI = 300
SIZES = {"scale": (COLUMN_WIDTH, 2.3), "tradeoff": (COLUMN_WIDTH, 2.6), "geneval": (COLUMN_WIDTH, 2.8)}
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7,
    "xtick.labelsize": 6, "ytick.labelsize": 6, "legend.fontsize": 6, "legend.frameon": False,
    "lines.linewidth": 1.0, "lines.markersize": 3, "axes.linewidth": 0.6, "xtick.major.width": 0.6,
    "ytick.major.width": 0.6, "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.35,
    "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # editable text in the PDF
}
# Okabe-Ito: distinguishable with colour-vision deficiency; line styles and markers for greyscale print.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
REFERENCE_LINES = ((0.0, "base"), (1.0, "RL"))
LABEL_RISE = 3.5  # points between a marker's centre and its w label (above or below it)


from rlg.metrics import label as metric_label, title as metric_title  # noqa: F401 (each metric's own declaration)

SCALE_LABEL = "RLG scale w"  # not "guidance scale", which reads as the CFG guidance_scale


def slug(text: str) -> str:
    """A file-name-safe form of a metric or series name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"


def series_label(series: tuple[str, ...], varying: Sequence[str]) -> str:
    """A legend entry: only the SERIES columns that tell the curves apart, ids named as in the index
    (``run <run_id>``, ``setting <config_id[:8]>``)."""
    parts = dict(zip(SERIES, series))
    named = {"config_id": lambda v: f"setting {v[:8]}"}  # run_id: a comparison's label, shown as is
    shown = [named.get(c, str)(str(parts[c])) for c in varying if parts[c]]
    return " / ".join(shown) if shown else (parts["pair"] or parts["run_name"] or parts["run_id"] or "results")


def varying_series_columns(df: pd.DataFrame) -> list[str]:
    """Which of run_name, pair, run_id, config_id tell the curves apart (pair alone when nothing varies)."""
    cols = [c for c in SERIES if df[c].nunique() > 1] if len(df) else []
    if "run_id" in cols:  # a comparison's run label names the run: its run name and pair go without saying
        cols = [c for c in cols if c not in ("run_name", "pair")]
        if "config_id" in cols and (df.groupby("run_id")["config_id"].nunique() <= 1).all():
            cols.remove("config_id")  # one setting per run: the run label tells them apart
    return cols or ["pair"]


LEGEND_INSIDE_CHARS = 28  # longer labels (or more than 4 series) go below the axes, wrapped, one per line


def _legend(fig: Figure, ax, handles=None) -> None:
    """A legend that fits: inside the axes for a few short labels, else below them, wrapped, with the
    figure taller by one line per label line (so axes, ticks and the x label keep their room)."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    labels = [h.get_label() for h in handles]
    if len(labels) <= 4 and max(map(len, labels), default=0) <= LEGEND_INSIDE_CHARS:
        ax.legend(handles=handles, loc="best", handlelength=2.2)
        return
    # wrap between settings (after a comma or space), never inside a key such as prompts.samples_per_prompt
    wrapped = [textwrap.fill(re.sub(r",(?=[A-Za-z_+~])", ", ", t), 60, break_long_words=False, break_on_hyphens=False)
               for t in labels]
    lines = sum(t.count("\n") + 1 for t in wrapped)
    fig.set_figheight(fig.get_figheight() + 0.11 * lines + 0.05)
    fig.legend(handles=handles, labels=wrapped, loc="outside lower center", ncols=1, handlelength=2.2)


def _style(i: int) -> dict:
    return {"color": COLORS[i % len(COLORS)], "linestyle": LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def _n_text(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"n={hi}" if lo == hi else f"n={lo}–{hi}"


def _arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


FORMATS = ("png", "pdf")


def save(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``stem``.png (at DPI) and ``stem``.pdf (or the given formats); return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in formats]
    with matplotlib.rc_context(STYLE):
        for p in paths:
            fig.savefig(p, dpi=DPI)
    return paths


def separate_labels(fig: Figure, labels: Sequence[Any], pad_pt: float = 0.5) -> None:
    """Move point labels (``ax.annotate`` with ``textcoords="offset points"``), in the order given, to the first of
    their offsets 0, +1, -1, +2, -2, ... label heights from where they were whose box overlaps no earlier label's
    and stays inside the axes (else the first clear one): labels of points that coincide (methods sharing w = 0,
    w = 1) or lie close stack instead of printing on top of each other. Each label leaves the layout
    (``set_in_layout(False)``) so that the boxes measured here are where ``savefig`` draws them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for ann in labels:
        ann.set_in_layout(False)
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # the constrained layout, then the boxes
    renderer = canvas.get_renderer()
    px = fig.dpi / 72.0
    placed = []
    for ann in labels:
        dx, dy = ann.xyann
        step = ann.get_window_extent(renderer).height / px + pad_pt
        frame = ann.axes.get_window_extent(renderer) if ann.axes is not None else None
        chosen = None
        for k in range(2 * len(labels) + 1):
            ann.xyann = (dx, dy + (k + 1) // 2 * step * (1 if k % 2 else -1))  # 0, +1, -1, +2, -2, ... steps
            box = ann.get_window_extent(renderer)
            if any(box.overlaps(b) for b in placed):
                continue
            inside = frame is None or (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
                                       and box.y1 <= frame.y1)
            if inside:
                chosen = ann.xyann
                break
            chosen = chosen or ann.xyann
        ann.xyann = chosen or (dx, dy)
        placed.append(ann.get_window_extent(renderer))


def _reference_lines(ax) -> None:
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for w, name in REFERENCE_LINES:
        ax.axvline(w, color="0.45", linewidth=0.6, linestyle=(0, (3, 2)), zorder=0)
        ax.text(w, 1.01, name, transform=trans, ha="center", va="bottom", fontsize=6, color="0.3")


def plot_metric_vs_scale(summary: pd.DataFrame, metric: str, stem: Path,
                         formats: Sequence[str] = FORMATS) -> list[Path]:
    """Mean of ``metric`` against the RLG scale w with its 95% bootstrap band, one curve per
    series, reference lines at w=0 (base) and w=1 (RL), and the images per point in the legend."""
    d = summary[summary["metric"] == metric]
    varying = varying_series_columns(d)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=SIZES["scale"], layout="constrained")
        ax = fig.add_subplot()
        scales = set()
        for i, (series, g) in enumerate(d.groupby(SERIES)):
            g = g[(g["n"] > 0) & np.isfinite(g["mean"].astype(float))].sort_values("scale")
            if g.empty:
                continue
            st = _style(i)
            ax.fill_between(g["scale"], g["lo"], g["hi"], color=st["color"], alpha=0.18, linewidth=0)
            ax.plot(g["scale"], g["mean"], **st, label=f"{series_label(series, varying)} ({_n_text(g['n'])})")
            scales |= set(g["scale"])
        _reference_lines(ax)
        if 0 < len(scales) <= 10:
            ax.set_xticks(sorted(scales | {0.0, 1.0}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        higher = bool(d["higher_is_better"].iloc[0]) if len(d) else True
        ax.set_xlabel(SCALE_LABEL)
        ax.set_ylabel(f"{metric_label(metric)} {_arrow(higher)}")
        if ax.lines:
            _legend(fig, ax)
        else:
            ax.text(0.5, 0.5, "no scored images yet", transform=ax.transAxes, ha="center", va="center")
        return save(fig, stem, formats)


def plot_tradeoff(summary: pd.DataFrame, x_metric: str, y_metric: str, stem: Path,
                  formats: Sequence[str] = FORMATS) -> list[Path]:
    """One point per scale (labelled with w) in the plane of two metrics, joined in scale order,
    with 95% intervals as thin bars; filled points are the Pareto front of their series."""
    has_both = summary.groupby(SERIES)["metric"].transform(lambda m: {x_metric, y_metric} <= set(m))
    summary = summary[has_both.astype(bool)]
    varying = varying_series_columns(summary)
    direction = summary.groupby("metric")["higher_is_better"].first()
    hx, hy = bool(direction.get(x_metric, True)), bool(direction.get(y_metric, True))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=SIZES["tradeoff"], layout="constrained")
        ax = fig.add_subplot()
        handles, labels = [], []
        for series, g in summary.groupby(SERIES):
            a = g[g["metric"] == x_metric].set_index("scale")
            b = g[g["metric"] == y_metric].set_index("scale")
            m = a[["mean", "lo", "hi"]].add_suffix("_x").join(b[["mean", "lo", "hi"]].add_suffix("_y"), how="inner")
            m = m[np.isfinite(m["mean_x"].astype(float)) & np.isfinite(m["mean_y"].astype(float))].sort_index()
            if m.empty:
                continue
            st = _style(len(handles))
            c = st["color"]
            x, y = m["mean_x"].to_numpy(float), m["mean_y"].to_numpy(float)
            xerr = np.abs(np.vstack([x - m["lo_x"], m["hi_x"] - x]).astype(float))
            yerr = np.abs(np.vstack([y - m["lo_y"], m["hi_y"] - y]).astype(float))
            ax.errorbar(x, y, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt="none", ecolor=c,
                        elinewidth=0.5, alpha=0.5)
            ax.plot(x, y, color=c, linewidth=0.6, linestyle=st["linestyle"], alpha=0.7)
            front = pareto_front(x, y, hx, hy)
            ax.scatter(x[~front], y[~front], s=14, marker=st["marker"], facecolors="white", edgecolors=c,
                       linewidths=0.8, zorder=3)
            ax.scatter(x[front], y[front], s=16, marker=st["marker"], color=c, edgecolors="black",
                       linewidths=0.5, zorder=4)
            side = 1 if len(handles) % 2 == 0 else -1  # each series starts on its own side
            for i, (w, xi, yi) in enumerate(zip(m.index, x, y)):
                # centred straight above or below its own point, neighbouring scales on opposite sides: a label
                # offset sideways sat over the next point (the quickstart's "0" read as w = 0.5's)
                ddy = LABEL_RISE * side * (1 if i % 2 == 0 else -1)
                labels.append(ax.annotate(
                    f"{w:g}", (xi, yi), xytext=(0, ddy), textcoords="offset points", fontsize=5.5, color=c,
                    ha="center", va="bottom" if ddy >= 0 else "top",
                    zorder=5,  # above the points (zorder 3-4): a neighbour's marker hid "0.5" as "0"
                    path_effects=[patheffects.withStroke(linewidth=1.5, foreground="white")]))
            handles.append(Line2D([], [], color=c, linestyle=st["linestyle"], marker=st["marker"],
                                  label=series_label(series, varying)))
        handles += [Line2D([], [], color="0.3", marker="o", linestyle="", markeredgecolor="black",
                           label="Pareto front"),
                    Line2D([], [], color="0.3", marker="o", linestyle="", markerfacecolor="white", label="dominated")]
        ax.set_xlabel(f"{metric_label(x_metric)} {_arrow(hx)}")
        ax.set_ylabel(f"{metric_label(y_metric)} {_arrow(hy)}")
        for axis in (ax.xaxis, ax.yaxis):  # few ticks: long tick labels (-1.075) must not touch
            axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5))
        ax.set_title(f"points labelled with the {SCALE_LABEL}", fontsize=6, color="0.3")
        if len(handles) > 2:
            ax.margins(x=0.05, y=0.1)  # room inside the axes for the labels of the outermost points
            _legend(fig, ax, handles)
            separate_labels(fig, labels)  # series that share or crowd points: labels stack, not overprint
        else:
            ax.text(0.5, 0.5, "no scale has both metrics yet", transform=ax.transAxes, ha="center", va="center")
        return save(fig, stem, formats)


def plot_geneval_tags(tags: pd.DataFrame, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """GenEval accuracy per tag against w for one series, with the overall score (mean of tags) and its band."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=SIZES["geneval"], layout="constrained")
        ax = fig.add_subplot()
        order = ([t for t in GENEVAL_TAGS if t in set(tags["tag"])]
                 + sorted(set(tags["tag"]) - set(GENEVAL_TAGS) - {"overall"}))
        for i, tag in enumerate(order):
            g = tags[(tags["tag"] == tag) & np.isfinite(tags["mean"].astype(float))].sort_values("scale")
            st = _style(i)
            ax.plot(g["scale"], g["mean"], color=st["color"], marker=st["marker"], linewidth=0.8, label=tag)
        g = tags[(tags["tag"] == "overall") & np.isfinite(tags["mean"].astype(float))].sort_values("scale")
        if len(g):
            ax.fill_between(g["scale"], g["lo"], g["hi"], color="black", alpha=0.12, linewidth=0)
            ax.plot(g["scale"], g["mean"], color="black", linewidth=1.6, marker="o", label="overall")
        _reference_lines(ax)
        scales = sorted(set(tags["scale"]))
        if 0 < len(scales) <= 10:
            ax.set_xticks(sorted(set(scales) | {0.0, 1.0}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(SCALE_LABEL)
        ax.set_ylabel("GenEval accuracy ↑")
        if ax.lines:
            fig.legend(loc="outside lower center", ncols=4, handlelength=1.8, columnspacing=1.0)
        return save(fig, stem, formats)


# Image grid geometry (inches): header row with w labels, one prompt line above each image row.
GRID_HEADER, GRID_PROMPT, GRID_MARGIN, GRID_GAP = 0.24, 0.11, 0.02, 0.015


def grid_figsize(n_rows: int, n_cols: int, width: float = COLUMN_WIDTH, footer: bool = False) -> tuple[float, float]:
    """Figure size of an image grid: square cells filling ``width``, a footer line if asked; height rounded
    to whole pixels."""
    cell = (width - 2 * GRID_MARGIN - (n_cols - 1) * GRID_GAP) / n_cols
    height = GRID_HEADER + n_rows * (GRID_PROMPT + cell) + GRID_MARGIN + (GRID_PROMPT if footer else 0)
    return width, round(height * DPI) / DPI


def shorten(prompt: str, width: int) -> str:
    return textwrap.shorten(" ".join(str(prompt).split()), width=width, placeholder="…")


def choose_grid_rows(images: pd.DataFrame, n_prompts: int = 8, prompt_ids: Sequence[int] | None = None,
                     samples: int = 1) -> pd.DataFrame:
    """The grid's rows: for each of ``n_prompts`` prompts (or ``prompt_ids``), up to ``samples`` of its
    (sample, seed) noises, one row each. Noises with the most scales stored come first (complete rows),
    then the lowest sample index; prompts with complete rows first, then the lowest prompt_id. Columns
    prompt_id, sample, seed, n_scales; rows in (prompt_id, sample) order."""
    img = images
    if prompt_ids is not None:
        img = img[img["prompt_id"].isin(list(prompt_ids))]
    per_noise = (img.groupby(["prompt_id", "sample", "seed"], as_index=False)
                 .agg(n_scales=("scale", "nunique")).sort_values(["prompt_id", "n_scales", "sample", "seed"],
                                                                 ascending=[True, False, True, True]))
    best = per_noise.drop_duplicates("prompt_id")
    if prompt_ids is not None:
        chosen = [p for p in prompt_ids if p in set(best["prompt_id"])]
    else:
        chosen = best.sort_values(["n_scales", "prompt_id"], ascending=[False, True]).head(n_prompts)["prompt_id"]
    rows = per_noise[per_noise["prompt_id"].isin(list(chosen))].groupby("prompt_id").head(max(samples, 1))
    order = {p: i for i, p in enumerate(chosen if prompt_ids is not None else sorted(chosen))}  # caller's order
    rows = rows.assign(_o=rows["prompt_id"].map(order)).sort_values(["_o", "sample"]).drop(columns="_o")
    return rows.reset_index(drop=True)


def _thumbnail(path: str, size_px: int) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size_px, size_px), Image.Resampling.LANCZOS)  # keeps the PDF small
            return np.asarray(im)
    except (OSError, ValueError):
        return None


def plot_image_grid(images: pd.DataFrame, stem: Path, n_prompts: int = 8, prompt_ids: Sequence[int] | None = None,
                    scales: Sequence[float] | None = None, width: float | None = None,
                    formats: Sequence[str] = FORMATS, samples: int = 1) -> list[Path]:
    """Rows are (prompt, sample) noises, ``samples`` per prompt (choose_grid_rows), columns scales; every
    image of a row comes from the same initial noise. Columns are labelled with w, rows with a shortened
    prompt, the sample index and the row's own noise seed (rlg.sampler_spec.noise_seed of the run's seed,
    the prompt id and the sample: the generator seed of every image in the row). When a prompt has more
    samples (or the run more prompts) than rows, a footer says how many are shown. ``images`` should hold one series."""
    img = _normalise_images(images)
    all_scales = sorted(img["scale"].unique()) if scales is None else [canonical_scale(s) for s in scales]
    rows = choose_grid_rows(img, n_prompts, prompt_ids, samples)
    n_rows, n_cols = max(len(rows), 1), max(len(all_scales), 1)
    width = width or (COLUMN_WIDTH if n_cols <= 6 else TEXT_WIDTH)
    stored = int(img.groupby("prompt_id")["sample"].nunique().max()) if len(img) else 0
    shown = int(rows.groupby("prompt_id").size().max()) if len(rows) else 0
    prompts_stored, prompts_shown = img["prompt_id"].nunique(), rows["prompt_id"].nunique()
    parts = ([f"{prompts_shown} of {prompts_stored} prompts"] if prompts_shown < prompts_stored else []) + \
        ([f"{shown} of {stored} samples per prompt"] if shown < stored else [])  # a grid left prompts out silently
    footer = f"{', '.join(parts)} shown; every image: images.html" if parts else ""
    fw, fh = grid_figsize(n_rows, n_cols, width, footer=bool(footer))
    cell = (fw - 2 * GRID_MARGIN - (n_cols - 1) * GRID_GAP) / n_cols
    by_key = img.set_index(["prompt_id", "sample", "seed", "scale"]).sort_index()
    prompts = img.groupby("prompt_id")["prompt"].first() if "prompt" in img.columns else pd.Series(dtype=str)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(fw, fh))
        for j, w in enumerate(all_scales):
            x = GRID_MARGIN + j * (cell + GRID_GAP) + cell / 2
            label = f"w={scale_label(w)}" + {0.0: "\nbase", 1.0: "\nRL"}.get(w, "")
            fig.text(x / fw, 1 - 0.02 / fh, label, ha="center", va="top", fontsize=6)
        max_chars = int(width * 24)
        for i, r in rows.iterrows():
            top = GRID_HEADER + i * (GRID_PROMPT + cell)
            key = (r["prompt_id"], r["sample"], r["seed"])
            prompt = str(prompts.get(r["prompt_id"], ""))
            own = f"  (sample {r['sample']}, noise seed {noise_seed(int(r['seed']), int(key[0]), int(key[1]))})"
            fig.text(GRID_MARGIN / fw, 1 - (top + GRID_PROMPT - 0.015) / fh,
                     shorten(prompt, max_chars - len(own)) + own, ha="left", va="bottom", fontsize=5)
            for j, w in enumerate(all_scales):
                left = GRID_MARGIN + j * (cell + GRID_GAP)
                ax = fig.add_axes(((left / fw), 1 - (top + GRID_PROMPT + cell) / fh, cell / fw, cell / fh))
                ax.set_axis_off()
                row = by_key.loc[(*key, w)] if (*key, w) in by_key.index else None
                if row is None:
                    ax.text(0.5, 0.5, "not yet", ha="center", va="center", fontsize=5, color="0.5")
                    ax.add_patch(matplotlib.patches.Rectangle((0, 0), 1, 1, color="0.93", zorder=-1))
                    continue
                row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
                pixels = _thumbnail(row.get("image_path", ""), int(cell * DPI))
                if pixels is None or bool(row.get("nonfinite", False)):
                    ax.add_patch(matplotlib.patches.Rectangle((0, 0), 1, 1, color="0.85", zorder=-1))
                    ax.text(0.5, 0.5, "NaN/inf" if bool(row.get("nonfinite", False)) else "missing file",
                            ha="center", va="center", fontsize=5)
                    continue
                ax.imshow(pixels, interpolation="lanczos")
        if footer:
            fig.text(GRID_MARGIN / fw, GRID_MARGIN / fh, footer, ha="left", va="bottom", fontsize=5, color="0.35")
        return save(fig, stem, formats)
