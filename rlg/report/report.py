"""Regenerate every table and figure of a report from stored results alone (no model, no GPU).

    from rlg.report.report import write_report
    out = write_report(images, scores, Path("outputs/report"), protocol={"steps": 20, "cfg": 4.5, ...})

Works on partial results: a scale or evaluator still missing just has fewer points, and every number
states the images it rests on and the images excluded (nonfinite, failed, not yet scored).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rlg.report import figures, tables
from rlg.report.anchors import Anchor, load_anchors
from rlg.report.stats import GENEVAL_METRIC, GENEVAL_OVERALL, SERIES, geneval_tags, summarize, tidy

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["image_key", "evaluator", "version", "metric", "value", "higher_is_better", "error"]
# Default tradeoff axes: (alignment or reward metric) x (image quality / preference metric), by name prefix.
ALIGNMENT_PREFIXES = ("geneval_overall", "ocr", "clip", "jpeg")
QUALITY_PREFIXES = ("pickscore", "hps", "imagereward", "aesthetic")
LOG_COLUMNS = SERIES + ["metric", "scale", "mean", "lo", "hi", "win_rate", "n", "n_prompts", "n_nonfinite",
                        "n_failed", "n_unscored"]


def default_tradeoffs(metrics: Sequence[str]) -> list[tuple[str, str]]:
    """(x, y) metric pairs for the alignment-vs-quality scatter among the metrics present."""
    xs = [m for p in ALIGNMENT_PREFIXES for m in sorted(metrics) if m.startswith(p)]
    if GENEVAL_OVERALL not in metrics:
        xs = [GENEVAL_METRIC] * (GENEVAL_METRIC in metrics) + xs
    ys = [m for p in QUALITY_PREFIXES for m in sorted(metrics) if m.startswith(p)]
    return [(x, y) for x in dict.fromkeys(xs) for y in dict.fromkeys(ys)]


def series_protocol(protocol: dict[str, Any] | None, series: tuple[str, str, str], df: pd.DataFrame) -> dict[str, Any]:
    """The protocol one series ran under: what the store itself tells (evaluator version strings,
    prompts, samples per prompt), then the caller's flat fields, then ``protocol[run_id]`` if given."""
    protocol = dict(protocol or {})
    experiment, pair, run_id = series
    d = df[(df["experiment"] == experiment) & (df["pair"] == pair) & (df["run_id"] == run_id)]
    per_run = protocol.pop(run_id, None) if isinstance(protocol.get(run_id), dict) else None
    derived: dict[str, Any] = {}
    if len(d):
        derived["evaluator_versions"] = d.groupby("evaluator")["version"].first().to_dict()
        derived["prompts"] = int(d["prompt_id"].nunique())
        derived["samples_per_prompt"] = int(d.drop_duplicates(["prompt_id", "sample", "seed"])
                                            .groupby("prompt_id").size().max())
    merged = {**derived, **protocol, **(per_run or {})}
    merged["evaluator_versions"] = {**derived.get("evaluator_versions", {}), **(protocol.get("evaluator_versions") or {}),
                                    **((per_run or {}).get("evaluator_versions") or {})}
    return merged


def _notes(n_resamples: int, seed: int, level: float, reference_scale: float) -> list[str]:
    return [
        "Mean over finite, successfully scored images; n = images used (prompts); excluded images are counted, never averaged.",
        f"{100 * level:g}% CI: percentile bootstrap over prompts (all samples/seeds of a prompt together), "
        f"{n_resamples} resamples, seed {seed}, paired across scales; delta = mean(w) - mean(w={reference_scale:g}).",
        f"Win rate: share of paired images (same prompt, sample, seed) better than at w={reference_scale:g}; ties count half.",
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
                 formats: Sequence[str] = ("png", "pdf")) -> dict[str, Any]:
    """Write figures/ and tables/ under ``out_dir``.

    ``protocol``: the run's settings (steps, cfg, resolution, ocr_engine, geneval_detector,
    hps_version, base_model, rl_model or pairs: {pair: {base, rl}}, evaluator_versions); a value
    that is a dict keyed by a run_id overrides fields for that run. ``anchors``: None loads the
    packaged anchors, [] skips the comparison. Returns {"files": [Path], "summary": [per-scale
    records for logging], "notes": [str]}. ``formats``: figure file types.
    """
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if scores is None or scores.empty:
        scores = pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS})
    anchors = load_anchors() if anchors is None else list(anchors)
    files: list[Path] = []

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
    for experiment in sorted(summary["experiment"].unique()):
        name = figures.slug(experiment or "results")
        for fmt, ext in (("markdown", "md"), ("latex", "tex")):
            text = tables.experiment_table(summary, experiment, fmt, reference_scale, notes=[f"Experiment: {experiment}", *notes])
            path = tab_dir / f"metrics_{name}.{ext}"
            path.write_text(text)
            files.append(path)

    tags = geneval_tags(df, n_resamples, seed, level, reference_scale)
    if not tags.empty:
        for fmt, ext in (("markdown", "md"), ("latex", "tex")):
            path = tab_dir / f"geneval_tags.{ext}"
            path.write_text(tables.geneval_table(tags, fmt, notes=["GenEval accuracy per tag; overall = unweighted mean of the tag accuracies."]))
            files.append(path)
        for series, g in tags.groupby(SERIES):
            files += figures.plot_geneval_tags(g, fig_dir / f"geneval_tags_{figures.slug('_'.join(s for s in series if s))}",
                                              formats)

    if anchors:
        rows = tables.anchor_rows(summary, anchors, lambda s: series_protocol(protocol, s, df))
        path = tab_dir / "anchors.csv"
        rows.to_csv(path, index=False)
        files.append(path)
        for fmt, ext in (("markdown", "md"), ("latex", "tex")):
            path = tab_dir / f"anchors.{ext}"
            path.write_text(tables.anchor_table(rows, fmt, notes=["Published numbers next to ours at the matching scale "
                                                                  "(w=0 base, w=1 RL model), in the published unit."]))
            files.append(path)

    for metric in sorted(summary["metric"].unique()):
        files += figures.plot_metric_vs_scale(summary, metric, fig_dir / f"scale_{figures.slug(metric)}", formats)
    present = set(summary["metric"].unique())
    pairs = default_tradeoffs(sorted(present)) if tradeoffs is None else list(tradeoffs)
    with_data = summary[np.isfinite(summary["mean"].astype(float))]
    together = {frozenset(g["metric"]) for _, g in with_data.groupby(SERIES + ["scale"])}
    pairs = [(x, y) for x, y in pairs if any({x, y} <= m for m in together)]  # some scale has both
    for x, y in pairs:
        files += figures.plot_tradeoff(summary, x, y, fig_dir / f"tradeoff_{figures.slug(x)}__{figures.slug(y)}", formats)

    if grid_prompts > 0 and "image_path" in images.columns:
        img = images.copy()
        for c in SERIES:
            img[c] = img[c].fillna("").astype(str) if c in img.columns else ""
        for series, g in img.groupby(SERIES):
            stem = fig_dir / f"grid_{figures.slug('_'.join(s for s in series if s))}"
            files += figures.plot_image_grid(g, stem, n_prompts=grid_prompts, formats=formats)

    records = [{k: _jsonable(v) for k, v in r.items()} for r in summary[LOG_COLUMNS].to_dict("records")]
    return {"files": files, "summary": records, "notes": progress}
