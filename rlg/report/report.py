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

import html
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rlg import metrics as metric_info
from rlg.evaluators.base import register_stored
from rlg.report import figures, methods, tables
from rlg.report.browser import write_browser
from rlg.report.page import Page, put, write_table_files
from rlg.report.anchors import Anchor, load_anchors
from rlg.report.headline import Headline, headlines, pixel_diversity
from rlg.report.stats import SERIES, geneval_tags, summarize, tidy, with_series

log = logging.getLogger(__name__)

NOTHING_SCORED = ("No image of this run has a score yet, so nothing can be said about the reward: run stage=evaluate "
                  "(or stage=all) with the run's evaluators, then the report again.")
SCORE_COLUMNS = ["image_key", "evaluator", "version", "metric", "value", "higher_is_better", "error"]
LOG_COLUMNS = SERIES + ["metric", "scale", "mean", "lo", "hi", "win_rate", "n", "n_prompts", "n_nonfinite",
                        "n_failed", "n_unscored", "higher_is_better"]
# protocol fields shown per series in the index, in this order (then any other field)
PROTOCOL_ORDER = ["pair", "base", "rl", "steps", "cfg", "resolution", "sampler", "scheduler", "prompts",
                  "samples_per_prompt", "seed", "evaluator_versions"]


def default_tradeoffs(metrics: Sequence[str], reward: str) -> list[tuple[str, str]]:
    """(x, y) metric pairs for the trade-off scatter among the metrics present: the paper's figure, the
    ``reward`` against each other metric, those with the quality role (rlg.metrics) first."""
    others = [m for m in sorted(metrics) if m != reward]
    return [(reward, m) for m in dict.fromkeys(metric_info.with_role(others, "quality") + others)]


def stored_reward(scored: Sequence[str], reward: str | None) -> tuple[str | None, str | None]:
    """(reward, note) among the metrics a store holds: ``reward`` (the run's) when scored, else the default order
    (rlg.metrics.settle_reward) with a note saying so."""
    return metric_info.settle_reward(scored, reward, "scored in this run",
                                     "score it with stage=evaluate evaluators.selected=[...]")


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
           "sampler": s.get("name"), "scheduler": s.get("scheduler"), "seed": config.get("seed"),
           "reward": (config.get("report") or {}).get("reward")}
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
                 formats: Sequence[str] = ("png", "pdf"), title: str | None = None,
                 reward: str | None = None, grid_samples: int = 2, reward_note: str | None = None,
                 run_line: str | None = None) -> dict[str, Any]:
    """Write figures/ and tables/ under ``out_dir``.

    ``protocol``: the run's settings (steps, cfg, resolution, ocr_engine, geneval_detector,
    hps_version, base_model, rl_model or pairs: {pair: {base, rl}}, evaluator_versions); a value
    that is a dict keyed by a run_id overrides fields for that run. ``anchors``: None loads the
    packaged anchors, [] skips the comparison. Returns {"files": [Path], "summary": [per-scale
    records for logging], "notes": [str], "index": out_dir/index.md, "index_html": out_dir/index.html}.
    ``grid_prompts`` x ``grid_samples``: the image grid's rows (prompts, and samples of each, every row with
    its own noise seed). ``formats``: figure file types (the HTML page embeds the PNGs). ``title``: the page title.
    ``reward``: the run's reward, decided once at build time (``rlg.harness.build``; the headline's, the
    methods section's and the trade-off figures' x); None takes ``protocol["reward"]``, else
    ``rlg.metrics.pick_reward``; a reward that was not scored is named in a warning and on the page, and the
    report falls back to pick_reward. ``reward_note``: why the run's reward is not the one its preset named.
    ``run_line``: one sentence of what was run (``rlg.harness.stages.what_ran``), the first screen's first line.
    """
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if scores is None or scores.empty:
        scores = pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS})
    register_stored(scores["evaluator"])  # each metric's label, direction and definition, from its evaluator
    anchors = load_anchors() if anchors is None else list(anchors)
    files: list[Path] = []
    compared, all_images = None, images
    if methods.has_methods(images):  # other methods: their own section; the RLG sections keep RLG's images
        images = methods.rlg_only(images)

    df = tidy(images, scores)
    summary = summarize(images, scores, n_resamples, seed, level, reference_scale, df=df)
    reward = reward or (protocol or {}).get("reward") or None
    if len(summary):
        reward, unscored_note = stored_reward(summary["metric"], reward)
        if unscored_note:  # e.g. results scored before the run's evaluators changed
            log.warning("report: %s", unscored_note)
            reward_note = unscored_note
    if all_images is not images:  # the methods section, on the same reward as every other section
        compared = methods.write_methods(all_images, scores, out_dir, n_resamples=n_resamples, seed=seed,
                                         formats=formats, reward=reward)
        files += compared["files"]
    run_rewards = {k: v["reward"] for k, v in (protocol or {}).items() if isinstance(v, dict) and v.get("reward")}
    heads = headlines(summary, reward, reference_scale, run_rewards=run_rewards) if reward else []
    diversity = pixel_diversity(images) if heads else pd.DataFrame()
    notes = _notes(n_resamples, seed, level, reference_scale)
    progress = []
    for col, what in (("n_nonfinite", "nonfinite"), ("n_failed", "failed"), ("n_unscored", "not yet scored")):
        total = summary.groupby("metric")[col].sum() if len(summary) else pd.Series(dtype=int)
        progress += [f"{metric}: {int(n)} images {what}" for metric, n in total.items() if n > 0]
    for line in progress:
        log.info("report: %s", line)

    files.append(put(tab_dir / "summary.csv", summary))
    for experiment in sorted(summary["run_name"].unique()):
        name = figures.slug(experiment or "results")
        files += write_table_files(tab_dir, f"metrics_{name}", lambda fmt: tables.experiment_table(
            summary, experiment, fmt, reference_scale, notes=[f"Run: {experiment}", *notes]))

    tags = geneval_tags(df, n_resamples, seed, level, reference_scale)
    if not tags.empty:
        files += write_table_files(tab_dir, "geneval_tags", lambda fmt: tables.geneval_table(
            tags, fmt, notes=["GenEval accuracy per tag; overall = unweighted mean of the tag accuracies."]))
        for series, g in tags.groupby(SERIES):
            files += figures.plot_geneval_tags(
                g, fig_dir / f"geneval_tags_{figures.slug('_'.join(s for s in series if s))}", formats)

    anchor_rows = pd.DataFrame()
    if anchors:
        anchor_rows = tables.anchor_rows(summary, anchors, lambda s: series_protocol(protocol, s, df))
    if len(anchor_rows):  # no matching anchor: no anchors table (an empty one says nothing)
        files.append(put(tab_dir / "anchors.csv", anchor_rows))
        files += write_table_files(tab_dir, "anchors", lambda fmt: tables.anchor_table(anchor_rows, fmt, notes=[
            "Published numbers next to ours at the matching scale (w=0 base, w=1 RL model), in the published unit."]))

    for metric in sorted(summary["metric"].unique()):
        files += figures.plot_metric_vs_scale(summary, metric, fig_dir / f"scale_{figures.slug(metric)}", formats)
    present = set(summary["metric"].unique())
    pairs = default_tradeoffs(sorted(present), reward) if tradeoffs is None else list(tradeoffs)
    with_data = summary[np.isfinite(summary["mean"].astype(float))]
    together = {frozenset(g["metric"]) for _, g in with_data.groupby(SERIES + ["scale"])}
    pairs = [(x, y) for x, y in pairs if any({x, y} <= m for m in together)]  # some scale has both
    for x, y in pairs:
        files += figures.plot_tradeoff(summary, x, y, fig_dir / f"tradeoff_{figures.slug(x)}__{figures.slug(y)}",
                                       formats)

    if grid_prompts > 0 and "image_path" in images.columns:
        img = with_series(images)
        names = series_names(list(img.groupby(SERIES).groups))
        for series, g in img.groupby(SERIES):
            stem = fig_dir / f"grid_{figures.slug(names[series].replace(' / ', '_'))}"
            files += figures.plot_image_grid(g, stem, n_prompts=grid_prompts, formats=formats, samples=grid_samples)

    browser = None
    if "image_path" in images.columns and len(images):
        all_series = list(with_series(images).groupby(SERIES).groups)
        browser = write_browser(images, df, out_dir, series_names(all_series),
                                f"Every image: {title or _title(summary, images)}", reward)
        files.append(browser)
    series = [tuple(k) for k in df[SERIES].drop_duplicates().itertuples(index=False)] if len(df) else \
        [tuple(k) for k in with_series(images)[SERIES].drop_duplicates().itertuples(index=False)]
    protocols = {s: series_protocol(protocol, s, df) for s in series}
    index = Page(title or _title(summary, images))
    unscored = not heads and len(images) > 0  # RLG images, none with a score
    _write_headline(index, out_dir, heads, summary, files, browser, reward_note, diversity, unscored, run_line)
    _write_index(index, out_dir, summary, tags, anchor_rows, protocols, files, notes, progress, reference_scale)
    if compared is not None:
        methods.write_index_section(index, out_dir, compared)
    md, page = out_dir / "index.md", out_dir / "index.html"
    md.write_text(index.markdown(), encoding="utf-8")
    page.write_text(index.html(), encoding="utf-8")
    files += [md, page]
    records = [{k: _jsonable(v) for k, v in r.items()} for r in summary[LOG_COLUMNS].to_dict("records")]
    out = {"files": files, "summary": records, "notes": progress, "index": md, "index_html": page,
           "headlines": [h.sentence for h in heads] or ([NOTHING_SCORED] if unscored else []), "reward": reward}
    if compared is not None:
        out["methods"] = compared
    return out


def series_names(series: Sequence[tuple]) -> dict[tuple, str]:
    """Readable, unique names of series (values of the SERIES columns): "run name / pair", then only
    what tells series apart: the run (a comparison's label, or the run id) and the setting (the first
    8 characters of the config id, a hash of every setting that changes an image)."""
    series = [tuple(s) for s in series]
    parts = [dict(zip(SERIES, s)) for s in series]
    show_run = len({p["run_id"] for p in parts}) > 1
    configs: dict[str, set] = {}
    for p in parts:
        configs.setdefault(p["run_id"], set()).add(p["config_id"])
    show_config = any(len(c) > 1 for c in configs.values())  # settings within one run (else the run tells)
    out = {}
    for s, p in zip(series, parts):
        name = [str(p[c]) for c in ("run_name", "pair") if p.get(c)]
        if show_run and p["run_id"] and p["run_id"] not in name:
            name.append(str(p["run_id"]))
        if show_config and p["config_id"]:
            name.append(f"setting {str(p['config_id'])[:8]}")
        out[s] = " / ".join(name) or "results"
    return out


def _title(summary: pd.DataFrame, images: pd.DataFrame) -> str:
    names = sorted(set(summary["run_name"]) if len(summary) else set(with_series(images)["run_name"]))
    names = [n for n in names if n]
    return "rlg-bench report" + (f": {', '.join(names)}" if names else "")


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


def _compares_best(h: Headline) -> bool:
    """Whether the headline table has the best-w columns: a best w other than the RL model, and a w=1 to
    compare it with (never "w=1 vs w=1")."""
    return h.best is not None and h.rl is not None and not h.best_is_rl


def _headline_rows(h: Headline) -> tuple[list[str], list[list[str]]]:
    """The headline table: the reward, then every other metric, at the base, the RL model and the best w
    (the best-w columns only where they compare something: see _compares_best)."""
    wide = _compares_best(h)
    best = h.best.scale if h.best else float("nan")
    header = ["metric", "w=0 (base)", "w=1 (RL, best reward)" if h.best_is_rl else "w=1 (RL)"]
    if wide:
        header += [f"w={best:g} (best reward)", f"w={best:g} vs w=1 (95% CI)", "verdict"]
    elif h.rl is None and h.best is not None:
        header += [f"w={best:g} (best reward)"]
    rows = []

    def fmt(p, dec):
        return tables.format_number(p.mean, dec) if p is not None else "–"

    dec = tables.decimals_for([p.mean for p in (h.base, h.rl, h.best) if p])
    step = "reward (higher is better)" if h.higher_is_better else "reward (lower is better)"
    d, lo, hi = h.best_delta
    delta = f"{d:+.{dec}f} [{lo:+.{dec}f}, {hi:+.{dec}f}]" if np.isfinite(d) else "–"
    row = [f"{figures.metric_title(h.reward)}: {step}", fmt(h.base, dec), fmt(h.rl, dec)]
    rows.append(row + ([fmt(h.best, dec), delta, "the reward"] if wide else [fmt(h.best, dec)] if len(header) == 4
                       else []))
    for c in h.costs:
        d = tables.decimals_for([p.mean for p in (c.base, c.rl, c.best) if p])
        arrow = "higher" if c.higher_is_better else "lower"
        change = "–" if not np.isfinite(c.delta) else (f"{c.delta:+.{d}f} [{c.delta_lo:+.{d}f}, {c.delta_hi:+.{d}f}]")
        row = [f"{figures.metric_title(c.metric)} ({arrow} is better)", fmt(c.base, d), fmt(c.rl, d)]
        rows.append(row + ([fmt(c.best, d), change, c.verdict] if wide else [fmt(c.best, d)] if len(header) == 4
                           else []))
    return header, rows


def _diversity_rows(h: Headline, diversity: pd.DataFrame | None, width: int) -> list[list[str]]:
    """The headline row of the samples' pixel diversity (rlg.report.headline.pixel_diversity); no interval.
    ``width``: the headline table's number of columns."""
    if diversity is None or diversity.empty or h.best is None:
        return []
    d = diversity[np.all([diversity[c] == v for c, v in zip(SERIES, h.series)], axis=0)].set_index("scale")["diversity"]
    at = lambda w: f"{d[w]:.3f}" if w in d.index else "–"  # noqa: E731
    change = f"{d[h.best.scale] - d[1.0]:+.3f}" if {1.0, h.best.scale} <= set(d.index) else "–"
    row = ["sample diversity: mean pairwise pixel RMS distance between a prompt's samples (higher: more varied)",
           at(0.0), at(1.0), at(h.best.scale), f"{change} (no interval)", "–"]
    return [row[:width]]


def _write_headline(index: Page, out_dir: Path, heads: list[Headline], summary: pd.DataFrame,
                    files: list[Path], browser: Path | None, reward_note: str | None = None,
                    diversity: pd.DataFrame | None = None, unscored: bool = False, run_line: str | None = None) -> None:
    """The first screen: what was run (``run_line``), per series what RLG did (numbers, one sentence, a caution),
    then the trade-off figure."""
    if browser is not None:  # a nav entry of its own page
        index.toc.append((browser.name, "Every image (browser)"))
    if heads or unscored:
        index.section("headline", "What RLG did here")
        if run_line:
            index.text(run_line)
    if not heads:
        if unscored:  # images without a score: say so where the headline would be
            index.raw(f"**{NOTHING_SCORED}**", f'<p class="caution">{html.escape(NOTHING_SCORED)}</p>')
        return
    if reward_note:
        index.raw(f"**{reward_note}**", f'<p class="caution">{html.escape(reward_note)}</p>')
    names = series_names([h.series for h in heads])
    for h in heads:
        lines_md, lines_html = [], ['<div class="headline">']
        if len(heads) > 1:
            lines_md.append(f"**{names[h.series]}**")
            lines_html.append(f"<h3>{html.escape(names[h.series])}</h3>")
        lines_md.append(f"> {h.sentence}")
        lines_html.append(f"<blockquote>{html.escape(h.sentence)}</blockquote>")
        if h.best is not None:
            header, rows = _headline_rows(h)
            rows += _diversity_rows(h, diversity, len(header))
            align = "lrrrrl"[:len(header)]
            lines_md.append(tables.render(header, rows, "markdown", align))
            lines_html.append(tables.render(header, rows, "html", align))
        if h.caution:
            lines_md.append(f"**{h.caution}**")
            lines_html.append(f'<p class="caution">{html.escape(h.caution)}</p>')
        lines_html.append("</div>")
        index.raw("\n\n".join(lines_md), "\n".join(lines_html))
    reward = heads[0].reward
    trade = [f for f in files if f.suffix == ".png" and f.name.startswith(f"tradeoff_{figures.slug(reward)}__")]
    if trade:
        index.body.append('<div class="figrow">')
        for f in trade[:2]:
            x, y = f.stem.removeprefix("tradeoff_").split("__")
            index.figure(f, str(f.relative_to(out_dir)),
                         f"Trade-off: {figures.metric_label(x)} against {figures.metric_label(y)}, one point per "
                         "w (filled: Pareto front)")
        index.body.append("</div>")
    defined = metric_info.definitions(summary["metric"].unique())
    if defined:
        index.text("Metrics: " + " ".join(defined))


def _write_index(index: Page, out_dir: Path, summary: pd.DataFrame, tags: pd.DataFrame, anchor_rows: pd.DataFrame,
                 protocols: dict[tuple, dict[str, Any]], files: list[Path], notes: list[str], progress: list[str],
                 reference_scale: float) -> None:
    index.text(f"Written {time.strftime('%Y-%m-%d %H:%M')} from the results store alone: {len(protocols)} series, "
               f"{summary['metric'].nunique() if len(summary) else 0} metrics. index.html is this page with the "
               "figures embedded.")
    index.section("protocol", "Protocol")
    index.text("run id: the first launch into the run directory; config id: a hash of every setting that "
               "changes an image (one curve per config id, never pooled). Both are in meta.json.")
    names = series_names(list(protocols))
    for series, proto in protocols.items():
        index.sub(names[series])
        ids = dict(zip(SERIES, series))
        rows = _protocol_rows(proto, ids.get("pair"))
        rows += [[k, str(ids[c])] for k, c in (("run id", "run_id"), ("config id", "config_id")) if ids.get(c)]
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
              ("geneval_tags_", "GenEval per tag"),
              ("grid_", "Image grids (a row: one prompt and sample, labelled with its sample index and its own noise "
                        "seed, drawn from (run seed, prompt, sample) and the same at every w)")]
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
