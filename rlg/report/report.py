"""Regenerate every table and figure of a report from stored results alone (no model, no GPU).

    from rlg.report.report import write_report
    out = write_report(images, scores, Path("outputs/report"), protocol={"steps": 20, "cfg": 4.5, ...})
    print(out["index"])   # report/index.md; report/index.html is the same page, self-contained

One page to open: ``index.md`` (links the figures) and ``index.html`` (figures embedded, nothing
else needed) hold the protocol of every series, the main table with intervals and win rates, the
figures, the published anchors and the notes; the separate .md/.tex/.csv/.png/.pdf files stay for
papers.

Works on partial results: a scale or evaluator still missing just has fewer points, and every number
states the images it rests on and the images excluded (nonfinite, failed, not yet scored).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rlg.report import figures, methods, tables
from rlg.report.anchors import Anchor, load_anchors
from rlg.report.stats import (GENEVAL_METRIC, GENEVAL_OVERALL, SERIES, geneval_tags, series_name, summarize, tidy,
                              with_series)

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["image_key", "evaluator", "version", "metric", "value", "higher_is_better", "error"]
# Default tradeoff axes: (alignment or reward metric) x (image quality / preference metric), by name prefix.
ALIGNMENT_PREFIXES = ("geneval_overall", "ocr", "clip", "jpeg")
QUALITY_PREFIXES = ("pickscore", "hps", "imagereward", "aesthetic")
LOG_COLUMNS = SERIES + ["metric", "scale", "mean", "lo", "hi", "win_rate", "n", "n_prompts", "n_nonfinite",
                        "n_failed", "n_unscored", "higher_is_better"]
# protocol fields shown per series in the index, in this order (then any other field)
PROTOCOL_ORDER = ["pair", "base", "rl", "steps", "cfg", "resolution", "sampler", "scheduler", "prompts",
                  "samples_per_prompt", "seed", "evaluator_versions"]


def default_tradeoffs(metrics: Sequence[str]) -> list[tuple[str, str]]:
    """(x, y) metric pairs for the alignment-vs-quality scatter among the metrics present."""
    xs = [m for p in ALIGNMENT_PREFIXES for m in sorted(metrics) if m.startswith(p)]
    if GENEVAL_OVERALL not in metrics:
        xs = [GENEVAL_METRIC] * (GENEVAL_METRIC in metrics) + xs
    ys = [m for p in QUALITY_PREFIXES for m in sorted(metrics) if m.startswith(p)]
    return [(x, y) for x in dict.fromkeys(xs) for y in dict.fromkeys(ys)]


def series_protocol(protocol: dict[str, Any] | None, series: tuple, df: pd.DataFrame) -> dict[str, Any]:
    """The protocol one series ran under: what the store itself tells (evaluator version strings,
    prompts, samples per prompt), then the caller's flat fields, then ``protocol[run_id]`` if given.
    ``series``: the values of the SERIES columns of one curve."""
    protocol = dict(protocol or {})
    key = dict(zip(SERIES, series))
    run_id = key.get("run_id")
    mask = np.ones(len(df), dtype=bool)
    for c, v in key.items():
        if c in df.columns:
            mask &= (df[c] == v).to_numpy()
    d = df[mask]
    config_id = key.get("config_id")
    per_run = next((protocol[k] for k in (config_id, run_id) if k and isinstance(protocol.get(k), dict)), None)
    ids = {str(v) for c in ("run_id", "config_id") if c in df.columns for v in df[c].unique()}
    protocol = {k: v for k, v in protocol.items()
                if not (isinstance(v, dict) and (k in ids or k in (run_id, config_id)))}
    derived: dict[str, Any] = {}
    for field, col in (("steps", "num_inference_steps"), ("cfg", "guidance_scale"), ("resolution", "height")):
        values = d[col].dropna().unique() if col in d.columns else []
        if len(values) == 1:  # what this series' own images were made with
            protocol[field] = values[0].item() if hasattr(values[0], "item") else values[0]
    if len(d):
        derived["evaluator_versions"] = d.groupby("evaluator")["version"].first().to_dict()
        derived["prompts"] = int(d["prompt_id"].nunique())
        derived["samples_per_prompt"] = int(d.drop_duplicates(["prompt_id", "sample", "seed"])
                                            .groupby("prompt_id").size().max())
    merged = {**derived, **protocol, **(per_run or {})}
    merged["evaluator_versions"] = {**derived.get("evaluator_versions", {}),
                                    **(protocol.get("evaluator_versions") or {}),
                                    **((per_run or {}).get("evaluator_versions") or {})}
    return merged


def run_protocol(config: dict[str, Any], pair_ids: dict[str, Any] | None = None) -> dict[str, Any]:
    """The protocol fields of one run from its resolved config (plain dicts, as in meta.json):
    steps, cfg, resolution, sampler, scheduler, seed and pairs {pair name: {base, rl}}.
    ``pair_ids``: {"base": id, "rl": id} when the config has none (tiny pairs)."""
    s, p = config.get("sampler") or {}, config.get("pair") or {}
    ids = dict(pair_ids or {})
    for role in ("base", "rl"):
        if not ids.get(role) and isinstance(p.get(role), dict):
            ids[role] = p[role].get("id")
    out = {"steps": s.get("num_inference_steps"), "cfg": s.get("guidance_scale"), "resolution": s.get("height"),
           "sampler": s.get("name"), "scheduler": s.get("scheduler"), "seed": config.get("seed")}
    if p.get("name"):
        out["pairs"] = {p["name"]: ids}
    return {k: v for k, v in out.items() if v is not None}


def _notes(n_resamples: int, seed: int, level: float, reference_scale: float) -> list[str]:
    return [
        "Mean over finite, successfully scored images; n = images used (prompts); excluded images are counted, "
        "never averaged.",
        f"{100 * level:g}% CI: percentile bootstrap over prompts (all samples/seeds of a prompt together), "
        f"{n_resamples} resamples, seed {seed}, paired across scales; delta = mean(w) - mean(w={reference_scale:g}).",
        f"Win rate: share of paired images (same prompt, sample, seed) better than at w={reference_scale:g}; "
        "ties count half.",
    ]


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def write_report(images: pd.DataFrame, scores: pd.DataFrame | None, out_dir: Path, protocol: dict | None = None,
                 anchors: Sequence[Anchor] | None = None, grid_prompts: int = 8, *, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95, reference_scale: float = 1.0,
                 tradeoffs: Sequence[tuple[str, str]] | None = None,
                 formats: Sequence[str] = ("png", "pdf"), title: str | None = None) -> dict[str, Any]:
    """Write figures/ and tables/ under ``out_dir``.

    ``protocol``: the run's settings (steps, cfg, resolution, ocr_engine, geneval_detector,
    hps_version, base_model, rl_model or pairs: {pair: {base, rl}}, evaluator_versions); a value
    that is a dict keyed by a run_id overrides fields for that run. ``anchors``: None loads the
    packaged anchors, [] skips the comparison. Returns {"files": [Path], "summary": [per-scale
    records for logging], "notes": [str], "index": out_dir/index.md, "index_html": out_dir/index.html}.
    ``formats``: figure file types (the HTML page embeds the PNGs). ``title``: the page title.
    """
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if scores is None or scores.empty:
        scores = pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS})
    anchors = load_anchors() if anchors is None else list(anchors)
    files: list[Path] = []
    compared = None
    if methods.has_methods(images):  # other methods: their own section; the RLG sections keep RLG's images
        compared = methods.write_methods(images, scores, out_dir, n_resamples=n_resamples, seed=seed, formats=formats)
        files += compared["files"]
        images = methods.rlg_only(images)

    df = tidy(images, scores)
    summary = summarize(images, scores, n_resamples, seed, level, reference_scale, df=df)
    notes = _notes(n_resamples, seed, level, reference_scale)
    progress = []
    for col, what in (("n_nonfinite", "nonfinite"), ("n_failed", "failed"), ("n_unscored", "not yet scored")):
        total = summary.groupby("metric")[col].sum() if len(summary) else pd.Series(dtype=int)
        progress += [f"{metric}: {int(n)} images {what}" for metric, n in total.items() if n > 0]
    for line in progress:
        log.info("report: %s", line)

    path = tab_dir / "summary.csv"
    summary.to_csv(path, index=False)
    files.append(path)
    for experiment in sorted(summary["run_name"].unique()):
        name = figures.slug(experiment or "results")
        for fmt, ext in (("markdown", "md"), ("latex", "tex")):
            text = tables.experiment_table(summary, experiment, fmt, reference_scale,
                                           notes=[f"Run: {experiment}", *notes])
            path = tab_dir / f"metrics_{name}.{ext}"
            path.write_text(text)
            files.append(path)

    tags = geneval_tags(df, n_resamples, seed, level, reference_scale)
    if not tags.empty:
        for fmt, ext in (("markdown", "md"), ("latex", "tex")):
            path = tab_dir / f"geneval_tags.{ext}"
            path.write_text(tables.geneval_table(
                tags, fmt, notes=["GenEval accuracy per tag; overall = unweighted mean of the tag accuracies."]))
            files.append(path)
        for series, g in tags.groupby(SERIES):
            files += figures.plot_geneval_tags(
                g, fig_dir / f"geneval_tags_{figures.slug('_'.join(s for s in series if s))}", formats)

    anchor_rows = pd.DataFrame()
    if anchors:
        anchor_rows = rows = tables.anchor_rows(summary, anchors, lambda s: series_protocol(protocol, s, df))
    if len(anchor_rows):  # no matching anchor: no anchors table (an empty one says nothing)
        rows = anchor_rows
        path = tab_dir / "anchors.csv"
        rows.to_csv(path, index=False)
        files.append(path)
        for fmt, ext in (("markdown", "md"), ("latex", "tex")):
            path = tab_dir / f"anchors.{ext}"
            path.write_text(tables.anchor_table(rows, fmt, notes=["Published numbers next to ours at the matching "
                                                                  "scale (w=0 base, w=1 RL model), in the published "
                                                                  "unit."]))
            files.append(path)

    for metric in sorted(summary["metric"].unique()):
        files += figures.plot_metric_vs_scale(summary, metric, fig_dir / f"scale_{figures.slug(metric)}", formats)
    present = set(summary["metric"].unique())
    pairs = default_tradeoffs(sorted(present)) if tradeoffs is None else list(tradeoffs)
    with_data = summary[np.isfinite(summary["mean"].astype(float))]
    together = {frozenset(g["metric"]) for _, g in with_data.groupby(SERIES + ["scale"])}
    pairs = [(x, y) for x, y in pairs if any({x, y} <= m for m in together)]  # some scale has both
    for x, y in pairs:
        files += figures.plot_tradeoff(summary, x, y, fig_dir / f"tradeoff_{figures.slug(x)}__{figures.slug(y)}",
                                       formats)

    if grid_prompts > 0 and "image_path" in images.columns:
        img = with_series(images)
        for series, g in img.groupby(SERIES):
            stem = fig_dir / f"grid_{figures.slug('_'.join(s for s in series if s))}"
            files += figures.plot_image_grid(g, stem, n_prompts=grid_prompts, formats=formats)

    series = [tuple(k) for k in df[SERIES].drop_duplicates().itertuples(index=False)] if len(df) else \
        [tuple(k) for k in _series_of(images)]
    protocols = {s: series_protocol(protocol, s, df) for s in series}
    index = _Index(title or _title(summary, images))
    _write_index(index, out_dir, summary, tags, anchor_rows, protocols, files, notes, progress, reference_scale)
    if compared is not None:
        methods.write_index_section(index, out_dir, compared)
    md, page = out_dir / "index.md", out_dir / "index.html"
    md.write_text(index.markdown(), encoding="utf-8")
    page.write_text(index.html(), encoding="utf-8")
    files += [md, page]
    records = [{k: _jsonable(v) for k, v in r.items()} for r in summary[LOG_COLUMNS].to_dict("records")]
    out = {"files": files, "summary": records, "notes": progress, "index": md, "index_html": page}
    if compared is not None:
        out["methods"] = compared
    return out


def _series_of(images: pd.DataFrame) -> list[tuple]:
    return list(with_series(images)[SERIES].drop_duplicates().itertuples(index=False))


def _title(summary: pd.DataFrame, images: pd.DataFrame) -> str:
    names = sorted(set(summary["run_name"]) if len(summary) else set(with_series(images)["run_name"]))
    names = [n for n in names if n]
    return "rlg-bench report" + (f": {', '.join(names)}" if names else "")


class _Index:
    """One page built twice: Markdown (figures linked) and self-contained HTML (figures embedded)."""

    CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}"
           "th,td{border-bottom:1px solid #ddd;padding:.25em .6em}th{background:#f4f4f4}"
           "tr.group td{border-top:2px solid #999}p.note{color:#555;font-size:.85em;margin:.2em 0}"
           "figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:520px}"
           "figcaption{font-size:.8em;color:#555}nav a{margin-right:1em}")

    def __init__(self, title: str):
        self.title = title
        self.md: list[str] = [f"# {title}", ""]
        self.body: list[str] = []
        self.toc: list[tuple[str, str]] = []

    def section(self, anchor: str, title: str) -> None:
        self.toc.append((anchor, title))
        self.md += [f'<a id="{anchor}"></a>', f"## {title}", ""]
        self.body.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')

    def sub(self, title: str) -> None:
        self.md += [f"### {title}", ""]
        self.body.append(f"<h3>{html.escape(title)}</h3>")

    def text(self, line: str) -> None:
        self.md += [line, ""]
        self.body.append(f"<p>{html.escape(line)}</p>")

    def table(self, markdown: str, html_table: str) -> None:
        self.md += [markdown.rstrip(), ""]
        self.body.append(html_table)

    def figure(self, png: Path, rel: str, caption: str) -> None:
        self.md += [f"![{caption}]({rel})", ""]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def link(self, rel: str, label: str) -> None:
        self.md += [f"- [{label}]({rel})"]
        self.body.append(f'<li><a href="{html.escape(rel)}">{html.escape(label)}</a></li>')

    def markdown(self) -> str:
        toc = " · ".join(f"[{t}](#{a})" for a, t in self.toc)
        return "\n".join([*self.md[:2], toc, "", *self.md[2:]]).rstrip() + "\n"

    def html(self) -> str:
        nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in self.toc)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{self.CSS}</style></head><body>\n<h1>{html.escape(self.title)}</h1>\n"
                f"<nav>{nav}</nav>\n"
                + "\n".join(self.body) + "\n</body></html>\n")


def _protocol_rows(proto: dict[str, Any], pair: str | None) -> list[list[str]]:
    proto = dict(proto)
    pairs = proto.pop("pairs", None)
    if isinstance(pairs, dict) and pair in pairs and isinstance(pairs[pair], dict):
        proto = {**{k: v for k, v in pairs[pair].items() if v}, **proto}
    keys = [k for k in PROTOCOL_ORDER if k in proto] + sorted(k for k in proto if k not in PROTOCOL_ORDER)
    rows = []
    for k in keys:
        v = proto[k]
        if isinstance(v, dict):
            v = "; ".join(f"{a}: {b}" for a, b in v.items()) if v else None
        if v is None or v == "":
            continue
        rows.append([k, f"{v:g}" if isinstance(v, float) else str(v)])
    return rows


def _write_index(index: _Index, out_dir: Path, summary: pd.DataFrame, tags: pd.DataFrame, anchor_rows: pd.DataFrame,
                 protocols: dict[tuple, dict[str, Any]], files: list[Path], notes: list[str], progress: list[str],
                 reference_scale: float) -> None:
    index.text(f"Written {time.strftime('%Y-%m-%d %H:%M')} from the results store alone: {len(protocols)} series, "
               f"{summary['metric'].nunique() if len(summary) else 0} metrics. index.html is this page with the "
               "figures embedded.")
    index.section("protocol", "Protocol")
    for series, proto in protocols.items():
        index.sub(series_name(series))
        rows = _protocol_rows(proto, dict(zip(SERIES, series)).get("pair"))
        index.table(tables.render(["field", "value"], rows, "markdown"),
                    tables.render(["field", "value"], rows, "html"))
    index.section("results", "Results")
    if summary.empty:
        index.text("No scored images yet.")
    for experiment in sorted(summary["run_name"].unique()):
        index.sub(f"Run: {experiment}" if experiment else "Results")
        index.table(tables.experiment_table(summary, experiment, "markdown", reference_scale),
                     tables.experiment_table(summary, experiment, "html", reference_scale))
    for line in notes + progress:
        index.text(line)
    pngs = [f for f in files if f.suffix == ".png"]
    groups = [("scale_", "Metrics against the RLG scale w"), ("tradeoff_", "Trade-offs (points labelled with w)"),
              ("geneval_tags_", "GenEval per tag"), ("grid_", "Image grids (rows share the initial noise)")]
    if pngs:
        index.section("figures", "Figures")
        for prefix, title in groups:
            these = [f for f in pngs if f.name.startswith(prefix)]
            if these:
                index.sub(title)
                for f in these:
                    index.figure(f, str(f.relative_to(out_dir)), f.stem.removeprefix(prefix).replace("__", " vs "))
    if not tags.empty:
        index.section("geneval", "GenEval accuracy per tag")
        index.table(tables.geneval_table(tags, "markdown"), tables.geneval_table(tags, "html"))
    if len(anchor_rows):
        index.section("anchors", "Published anchors")
        index.table(tables.anchor_table(anchor_rows, "markdown"), tables.anchor_table(anchor_rows, "html"))
    index.section("files", "Files")
    index.body.append("<ul>")
    for f in files:
        if f.suffix in (".md", ".tex", ".csv", ".pdf"):
            index.link(str(f.relative_to(out_dir)), str(f.relative_to(out_dir)))
    index.body.append("</ul>")
    index.md.append("")
