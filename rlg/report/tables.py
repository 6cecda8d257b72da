"""Tables from a summary frame (``rlg.report.stats.summarize``): per run, each metric at each
scale with its interval, paired difference and win rate against w=1; published anchors side by side
with ours; GenEval per-tag accuracy. Each comes as Markdown, a LaTeX booktabs tabular, or an HTML
table (for the report's index.html).
"""

from __future__ import annotations

import html
import math
import re
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from rlg.report.anchors import Anchor, compare_protocol, describe_comparability, match_scale
from rlg.metrics import title as metric_title
from rlg.report.stats import GENEVAL_TAGS, SERIES, scale_label, series_name

FORMATS = ("markdown", "latex", "html")
DASH = {"markdown": "–", "latex": "--", "html": "–"}


def decimals_for(values: Sequence[float]) -> int:
    """Decimals giving about 4 significant digits for the largest |value| (one per metric column)."""
    a = np.abs(np.asarray(values, dtype=float))
    a = a[np.isfinite(a) & (a > 0)]
    if a.size == 0:
        return 3
    return int(np.clip(3 - math.floor(math.log10(a.max())), 0, 6))


def format_number(x: float, decimals: int, fmt: str = "markdown", signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return DASH[fmt]
    s = f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"
    return s


def format_scale(w: float) -> str:
    """w as the paper writes it, naming the two models it reproduces (w=0 base, w=1 RL)."""
    s = scale_label(w)
    return f"{s} (base)" if w == 0 else f"{s} (RL)" if w == 1 else s


_LATEX = {**{ch: "\\" + ch for ch in "&%$#_{}"}, "\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "–": "--", "−": "$-$", "Δ": r"$\Delta$"}


def _escape_latex(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s)


NUMBER_SPACE = re.compile(r"(?<=[\d\]%)]) (?=[\[(+\-−\d])|(?<=,) (?=[+\-−\d])")  # spaces inside "a [b, c] (n)"


def render_all(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None,
               notes: Sequence[str] = (), groups: Sequence[int] = ()) -> dict[str, str]:
    """{format: :func:`render` in that format} for every one of ``FORMATS``."""
    return {fmt: render(header, rows, fmt, align, notes, groups) for fmt in FORMATS}


def render(header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str, align: str | None = None,
           notes: Sequence[str] = (), groups: Sequence[int] = ()) -> str:
    """A Markdown table, a LaTeX booktabs tabular or an HTML table (``groups``: row indices that start
    a new block). Cells are plain text; LaTeX special characters and HTML are escaped here.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; use one of {FORMATS}")
    align = align or "l" * len(header)
    if fmt == "markdown":
        esc = lambda s: str(s).replace("|", "\\|")
        sep = {"l": ":--", "r": "--:", "c": ":-:"}
        lines = [*(f"{n}" for n in notes), *([""] if notes else [])]
        lines.append("| " + " | ".join(esc(h) for h in header) + " |")
        lines.append("| " + " | ".join(sep[a] for a in align) + " |")
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        side = {"l": "left", "r": "right", "c": "center"}
        def cell(tag: str, a: str, c: Any) -> str:
            text = html.escape(str(c))
            # a header may break after "_" (<wbr>), never inside a word; a value keeps a number with its interval
            # and its bracketed count on one line (non-breaking spaces between numbers and brackets)
            text = text.replace("_", "_<wbr>") if tag == "th" else NUMBER_SPACE.sub("&nbsp;", text)
            return f'<{tag} style="text-align:{side[a]}">{text}</{tag}>'

        lines = [f'<p class="note">{html.escape(str(n))}</p>' for n in notes]
        lines += ["<table>", "<thead><tr>" + "".join(cell("th", a, h) for a, h in zip(align, header)) + "</tr></thead>",
                  "<tbody>"]
        for i, r in enumerate(rows):
            cls = ' class="group"' if i in groups and i > 0 else ""
            lines.append(f"<tr{cls}>" + "".join(cell("td", a, c) for a, c in zip(align, r)) + "</tr>")
        lines += ["</tbody>", "</table>"]
        return "\n".join(lines) + "\n"
    lines = [f"% {n}" for n in notes]
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(_escape_latex(str(h)) for h in header) + r" \\", r"\midrule"]
    for i, r in enumerate(rows):
        if i in groups and i > 0:
            lines.append(r"\midrule")
        lines.append(" & ".join(_escape_latex(str(c)) for c in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _excluded(row: pd.Series) -> str:
    parts = [f"{int(row[c])} {name}" for c, name in (("n_nonfinite", "nonfinite"), ("n_failed", "failed"),
                                                   ("n_unscored", "unscored")) if row.get(c, 0) > 0]
    return ", ".join(parts) if parts else "0"


COLUMN_NAMES = {"pair": "pair", "run_id": "run", "config_id": "config", "run_name": "run name"}


def _varying(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if df[c].nunique() > 1]


def experiment_table(summary: pd.DataFrame, experiment: str, fmt: str = "markdown",
                     reference_scale: float = 1.0, notes: Sequence[str] = ()) -> str:
    """Each metric at each scale: mean, 95% interval, paired delta and win rate vs ``reference_scale``,
    the images the mean rests on (prompts), and the excluded images."""
    within = [c for c in SERIES if c != "run_name"]  # what tells curves of one experiment apart
    df = summary[summary["run_name"] == experiment].sort_values([*within, "metric", "scale"])
    ids = _varying(df, within) if len(df) else []
    ref = f"w={reference_scale:g}"
    header = [COLUMN_NAMES.get(c, c) for c in ids] + [
        "metric", "w", "mean", "95% CI", f"Δ vs {ref} (95% CI)", f"win vs {ref}", "n (prompts)", "excluded"]
    rows, groups = [], []
    previous = None
    for key, g in df.groupby([*within, "metric"], sort=False):
        label, metric = dict(zip(within, key[:-1])), key[-1]
        dec = decimals_for(g["mean"])
        arrow = "higher" if bool(g["higher_is_better"].iloc[0]) else "lower"
        if previous is not None:
            groups.append(len(rows))
        previous = metric
        for _, r in g.iterrows():
            is_ref = np.isclose(r["scale"], reference_scale)
            ci = (f"[{format_number(r['lo'], dec, fmt)}, {format_number(r['hi'], dec, fmt)}]"
                  if np.isfinite(r["lo"]) else DASH[fmt])
            delta = DASH[fmt] if is_ref or not np.isfinite(r["delta"]) else (
                f"{format_number(r['delta'], dec, fmt, signed=True)} "
                f"[{format_number(r['delta_lo'], dec, fmt, signed=True)}, "
                f"{format_number(r['delta_hi'], dec, fmt, signed=True)}]")
            win = DASH[fmt] if is_ref or not np.isfinite(r["win_rate"]) else f"{100 * r['win_rate']:.1f}%"
            rows.append([label[c] for c in ids] + [
                f"{metric_title(metric)} ({arrow} is better)", format_scale(r["scale"]),
                format_number(r["mean"], dec, fmt), ci, delta, win, f"{int(r['n'])} ({int(r['n_prompts'])})",
                _excluded(r)])
    align = "l" * len(ids) + "ll" + "rllrrl"
    return render(header, rows, fmt, align, notes, groups)


def anchor_rows(summary: pd.DataFrame, anchors: Sequence[Anchor],
                protocol_for: Callable[[tuple[str, str, str]], dict[str, Any]]) -> pd.DataFrame:
    """Anchors matched to our series: one row per (anchor, series) where the series' pair has the
    anchor's model as base (w=0) or RL model (w=1) and the metric was scored.

    ``protocol_for(series)`` gives the run protocol of a series (a tuple of the SERIES columns).
    """
    out = []
    for series, g in summary.groupby(SERIES):
        run = protocol_for(series)
        for a in anchors:
            scale = match_scale(a, run, dict(zip(SERIES, series))["pair"])
            if scale is None:
                continue
            hit = g[(g["metric"] == a.metric) & np.isclose(g["scale"], scale)]
            if hit.empty:
                continue
            r = hit.iloc[0]
            status, diffs, unverified = compare_protocol(a, run)
            ours = r["mean"] * a.multiplier
            out.append({**dict(zip(SERIES, series)), "anchor": a.id, "model": a.model, "metric": a.metric,
                        "convention": a.convention, "scale": scale, "published": a.value, "ours": ours,
                        "ours_lo": r["lo"] * a.multiplier, "ours_hi": r["hi"] * a.multiplier,
                        "difference": ours - a.value, "n": int(r["n"]), "status": status,
                        "comparability": describe_comparability(status, diffs, unverified), "source": a.source})
    cols = SERIES + ["anchor", "model", "metric", "convention", "scale", "published", "ours", "ours_lo", "ours_hi",
                     "difference", "n", "status", "comparability", "source"]
    return pd.DataFrame(out, columns=cols)


def anchor_table(rows: pd.DataFrame, fmt: str = "markdown", notes: Sequence[str] = ()) -> str:
    """Published numbers next to ours (same unit), their difference, and whether the protocols match."""
    header = ["anchor", "model", "metric", "pair / run", "w", "published", "ours (95% CI)",
              "ours − published", "n", "comparability", "source"]
    body = []
    for _, r in rows.iterrows():
        dec = max(decimals_for([r["published"]]), 2)
        run = series_name([None if c == "run_name" else r.get(c) for c in SERIES])
        body.append([r["anchor"], r["model"], f"{r['metric']} ({r['convention']})", run, format_scale(r["scale"]),
                     format_number(r["published"], dec, fmt),
                     f"{format_number(r['ours'], dec, fmt)} [{format_number(r['ours_lo'], dec, fmt)}, "
                     f"{format_number(r['ours_hi'], dec, fmt)}]",
                     format_number(r["difference"], dec, fmt, signed=True), str(r["n"]), r["comparability"],
                     r["source"]])
    if not body:
        notes = [*notes, "No anchor matches these runs (anchors match a pair's base or RL model id from the protocol)."]
    align = "lllllrrrrll"
    if fmt == "latex":  # a paper table has no room for sources: they go to comments above it
        notes = [*notes, *(f"source: {s}" for s in dict.fromkeys(rows["source"]))]
        header, body, align = header[:-1], [r[:-1] for r in body], align[:-1]
    return render(header, body, fmt, align, notes)


def geneval_table(tags: pd.DataFrame, fmt: str = "markdown", notes: Sequence[str] = ()) -> str:
    """GenEval accuracy per tag (columns) at each scale (rows); overall with its 95% interval."""
    if tags.empty:
        return render(["w"], [], fmt, notes=[*notes, "No GenEval tags in these results."])
    present = [t for t in [*GENEVAL_TAGS, *sorted(set(tags["tag"]) - set(GENEVAL_TAGS) - {"overall"})]
               if t in set(tags["tag"])]
    ids = _varying(tags, SERIES)
    header = ids + ["w", *present, "overall (95% CI)", "n"]
    rows, groups = [], []
    for series, g in tags.groupby(SERIES):
        groups.append(len(rows))
        wide = g.pivot_table(index="scale", columns="tag", values="mean", aggfunc="first")
        overall = g[g["tag"] == "overall"].set_index("scale")
        for w in sorted(g["scale"].unique()):
            o = overall.loc[w]
            cells = [format_number(wide.loc[w].get(t, np.nan), 3, fmt) for t in present]
            ci = (f"{format_number(o['mean'], 3, fmt)} "
                  f"[{format_number(o['lo'], 3, fmt)}, {format_number(o['hi'], 3, fmt)}]")
            rows.append([dict(zip(SERIES, series))[c] for c in ids] + [format_scale(w), *cells, ci, str(int(o["n"]))])
    return render(header, rows, fmt, "l" * len(ids) + "l" + "r" * (len(present) + 2), notes, groups)
