"""W&B tracking of a run, live from its start, with the RLG scale w as the x-axis of every metric.

The local store is always written; W&B is an extra sink (the ``[wandb]`` extra). One ``Tracker``
per job, on rank 0 only (other ranks get an inert one):

    tracker = Tracker(run_dir=run_dir, name=job, group=experiment, job_type=stage,
                      tags=[pair, sampler, preset], config=resolved, mode=None, rank=rank).start()
    for ...:                                    # generation: progress, images/s, ETA (rate-limited)
        tracker.progress(done, total)           # keys generate/images, generate/images_per_s, generate/eta_s
    tracker.log_scales(report["summary"])       # one W&B step per w: mean, 95% CI, win rate, n; summaries
    tracker.log_image_table(images, scores)     # one row per (prompt, sample, seed): an image and the scores per w
    tracker.log_scores_table(images, scores)    # every score, one row per (image, metric), no images
    tracker.log_report(index_html, figures)
    tracker.finish()

One W&B run per run directory and stage: ``wandb_run_id(run_id, config_id, stage)`` is the run's
stable id and ``wandb.init(id=..., resume="allow")`` continues it, so a killed and resumed run, a
SLURM requeue or a second ``stage=report`` is the same W&B run (offline: one ``offline-run-*-<id>``
directory per invocation, which ``wandb sync`` uploads into that one run). Files W&B stages for
upload (the image table) go to ``<run_dir>/wandb/data`` (``WANDB_DATA_DIR``), inside the run directory.

Mode: ``mode=None`` lets the user's W&B setup decide: ``WANDB_MODE`` if set, else the mode saved by
``wandb offline`` / ``wandb disabled``, else online when a W&B login exists (``WANDB_API_KEY`` or a
netrc entry from ``wandb login``) and offline otherwise, so a machine without an account still
works (and without wandb installed, disabled). An explicit mode ("online", "offline", "disabled",
e.g. from a tracker preset the user chose) wins over all of that. ``project=None`` likewise defers
to ``WANDB_PROJECT`` (default "rlg-bench"), ``entity=None`` to ``WANDB_ENTITY``.

The W&B key is read by wandb itself; nothing here reads, logs or stores it. An offline run can be
read back without uploading it: ``read_run(path)`` (W&B's own reader, ``wandb leet inspect``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import netrc
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

import pandas as pd

from rlg.files import sha256_bytes

log = logging.getLogger(__name__)

SCALE_AXIS = "rlg_scale"  # the x-axis of every evaluation metric
MODES = ("online", "offline", "disabled")
_MODE_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}
DEFAULT_PROJECT = "rlg-bench"
STAT_KEYS = {"mean": "", "lo": "/ci_lo", "hi": "/ci_hi", "win_rate": "/win_rate", "n": "/n"}


def _normalise_mode(mode: str, where: str) -> str:
    m = _MODE_ALIASES.get(mode.strip().lower(), mode.strip().lower())
    if m not in MODES:
        raise ValueError(f"{where}={mode!r}; use one of {', '.join(MODES)}")
    return m


def _logged_in(base_url: str | None) -> bool:
    """Whether W&B has a login to use: WANDB_API_KEY, or a netrc entry for its host (``wandb login``).
    Only the presence of an entry is checked."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(base_url or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None) -> str:
    """The W&B mode a run uses: ``mode`` if given, else the user's W&B setup (see the module doc)."""
    if mode is not None:
        return _normalise_mode(mode, "tracker.wandb.mode")
    env = os.environ.get("WANDB_MODE", "").strip()
    if env:
        return _normalise_mode(env, "WANDB_MODE")
    try:
        import wandb
    except ModuleNotFoundError:
        log.info("W&B is not installed, so this run is tracked in its run directory only "
                 "(pip install -e '.[wandb]' to add W&B)")
        return "disabled"
    settings = wandb.setup().settings  # the env and the settings files of `wandb offline` / `wandb disabled`
    saved = _normalise_mode(str(settings.mode), "wandb settings mode")
    if saved != "online":
        return saved
    if _logged_in(getattr(settings, "base_url", None)):
        return "online"
    log.debug("W&B: no login found, so the run is logged offline")  # said once, by Tracker.start
    return "offline"


def wandb_run_id(run_id: str, config_id: str, stage: str) -> str:
    """The stable W&B run id of one run directory (its ``run_id``), setting and stage: 16 hex digits."""
    return sha256_bytes(f"{run_id}/{config_id}/{stage}".encode())[:16]


def media_key(stem: str) -> str:
    """A figure's W&B key without the run and config hashes of its file name (12 or 16 hex digits), so
    panels line up across runs: ``grid_quickstart_zoo_digits_e779028161cb_bda5e370947c1400`` ->
    ``grid_quickstart_zoo_digits``."""
    return re.sub(r"_[0-9a-f]{12}(?:[0-9a-f]{4})?(?=_|$)", "", stem)


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


class Tracker:
    """One W&B run for one job (see the module doc). Inert when disabled or ``rank != 0``.

    run_dir: the run directory (W&B writes ``<run_dir>/wandb/``). name: the run's display name (the
    job, e.g. the sweep's override dirname). group: runs shown together (the experiment or sweep).
    job_type: the stage ("all", "generate", "evaluate", "report"). tags: e.g. [pair, sampler,
    preset]. config: the resolved, redacted config as plain dicts. log_images: at most this many
    images in the image table (rows = log_images // number of scales, at least 1; 0 = no table).
    progress_every_s: at most one progress point per this many seconds (the last one always).
    run_id: the W&B run id (``wandb_run_id``); the run is resumed when it exists (``resume="allow"``).
    """

    def __init__(self, *, run_dir: str | Path, name: str | None = None, project: str | None = None,
                 entity: str | None = None, group: str | None = None, job_type: str | None = None,
                 tags: Sequence[str] = (), config: dict[str, Any] | None = None, mode: str | None = None,
                 log_images: int = 64, rank: int = 0, progress_every_s: float = 10.0, run_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.name, self.project, self.entity, self.group, self.job_type = name, project, entity, group, job_type
        self.tags = [str(t)[:64] for t in dict.fromkeys(t for t in tags if t)]  # W&B caps a tag at 64 chars
        self.config = config or {}
        self.requested_mode, self.log_images, self.rank = mode, log_images, rank
        self.progress_every_s = progress_every_s
        self.run_id = run_id
        self.mode: str | None = None
        self.run = None
        self._progress: dict[str, tuple[float, float, int]] = {}  # phase -> (t0, last logged, done at t0)
        self._defined: set[str] = set()

    # -- life cycle --------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.run is not None

    def start(self) -> "Tracker":
        """Open the W&B run (rank 0, mode not disabled). Returns self."""
        if self.rank != 0:
            return self
        self.mode = resolve_mode(self.requested_mode)
        if self.mode == "disabled":
            return self
        from rlg.extras import require

        wandb = require("wandb", purpose="tracking with W&B (tracker=wandb_*)")
        project = self.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, entity=self.entity, group=self.group, job_type=self.job_type,
                              name=self.name, tags=self.tags, mode=self.mode, dir=str(self.run_dir),
                              config=self.config, reinit="finish_previous", id=self.run_id,
                              resume="allow" if self.run_id else None)
        self.run.define_metric(SCALE_AXIS)
        # the one W&B line of a run (wandb's own console lines are off unless verbose=true: rlg.harness.console)
        where = self.run.url if self.mode == "online" else (
            f"{self.run_dir}/wandb (to upload: `wandb login`, then `wandb sync {self.run_dir}/wandb/offline-run-*`)")
        log.info("W&B %s run: %s", self.mode, where)
        return self

    def as_rank0(self) -> "Tracker":
        """A not yet started copy that opens the W&B run on this process (a shard other than 0 that
        writes the run's report logs its results into the same W&B run)."""
        other = copy.copy(self)
        other.rank, other.run, other._progress, other._defined = 0, None, {}, set()
        return other

    @contextlib.contextmanager
    def _staged_in_run_dir(self):
        """W&B stages artifact files (tables) under WANDB_DATA_DIR: inside the run directory while logging."""
        old = os.environ.get("WANDB_DATA_DIR")
        os.environ["WANDB_DATA_DIR"] = str(self.run_dir / "wandb" / "data")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("WANDB_DATA_DIR", None)
            else:
                os.environ["WANDB_DATA_DIR"] = old

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def __enter__(self) -> "Tracker":
        return self.start() if self.run is None else self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    @property
    def run_path(self) -> Path | None:
        """The W&B run directory (``<run_dir>/wandb/<offline-run-...>``), while the run is open."""
        return Path(self.run.dir).parent if self.run is not None else None

    # -- generation progress -----------------------------------------------------------------
    def progress(self, done: int, total: int, *, phase: str = "generate", unit: str = "images",
                 force: bool = False) -> None:
        """``done`` of ``total`` ``unit`` of ``phase`` are finished: logs ``<phase>/<unit>`` (its x-axis),
        ``<phase>/fraction``, ``<phase>/<unit>_per_s`` and ``<phase>/eta_s`` (at most once per
        progress_every_s; always when done == total or ``force``). Rates count from the first call,
        so call it once before the first batch (done=0)."""
        if self.run is None:
            return
        now = time.monotonic()
        axis = f"{phase}/{unit}"
        if phase not in self._progress:
            self._progress[phase] = (now, -math.inf, done)
            self.run.define_metric(axis)
            self.run.define_metric(f"{phase}/*", step_metric=axis)
        t0, last, done0 = self._progress[phase]
        if not (force or done >= total or now - last >= self.progress_every_s):
            return
        elapsed = now - t0
        rate = (done - done0) / elapsed if elapsed > 0 else float("nan")
        row = {axis: done, f"{phase}/fraction": done / total if total else 1.0}
        if _finite(rate) and rate > 0:
            row[f"{axis}_per_s"] = rate
            row[f"{phase}/eta_s"] = (total - done) / rate
        self.run.log(row)
        self._progress[phase] = (t0, now, done0)

    # -- results against w -------------------------------------------------------------------
    def log_scales(self, summary: pd.DataFrame | Iterable[dict[str, Any]], reference_scale: float = 1.0,
                   level: float = 0.95, reward: str | None = None) -> dict[str, Any]:
        """One W&B step per scale w (x-axis ``rlg_scale``) with, per metric m: m (mean),
        m/ci_lo, m/ci_hi (the ``level`` bootstrap interval), m/win_rate (vs w=reference), m/n.

        ``summary``: ``write_report(...)["summary"]`` records, or ``rlg.report.stats.summarize``'s
        frame. Several series (pairs, runs) get their label as a prefix ("<label>/m"). Summaries are
        set explicitly: ``m@w=1`` (and its /ci_lo, /ci_hi), ``m@best_w`` and ``m/best_w`` (the scale
        with the best mean, by the metric's direction). ``reward``: the run's reward (``Job.reward``): the
        summary ``reward`` names it and its values are repeated under "reward" in place of its id ("reward@best_w",
        "<label>/reward@w=1", ...), so runs with different rewards share one column. Returns the summary values set.
        """
        df = pd.DataFrame(list(summary) if not isinstance(summary, pd.DataFrame) else summary)
        if self.run is None or df.empty:
            return {}
        from rlg.report.stats import SERIES

        series_cols = [c for c in SERIES if c in df.columns and df[c].nunique() > 1]
        df = df.assign(series_label=df[series_cols].astype(str).agg(" / ".join, axis=1) if series_cols else "")
        df["wandb_key"] = [f"{lab}/{m}" if lab else str(m) for lab, m in zip(df["series_label"], df["metric"])]
        for key in df["wandb_key"].unique():
            for suffix in STAT_KEYS.values():
                if key + suffix not in self._defined:  # x = w; no automatic last-value summary
                    self.run.define_metric(key + suffix, step_metric=SCALE_AXIS, summary="none")
                    self._defined.add(key + suffix)
        for w, g in df.sort_values("scale").groupby("scale", sort=True):
            row: dict[str, Any] = {SCALE_AXIS: float(w)}
            for r in g.itertuples():
                for col, suffix in STAT_KEYS.items():
                    v = getattr(r, col, None)
                    if _finite(v):
                        row[r.wandb_key + suffix] = float(v)
            self.run.log(row)
        out: dict[str, Any] = {}
        tag = f"{reference_scale:g}"
        for key, g in df.groupby("wandb_key"):
            g = g[[_finite(v) for v in g["mean"]]]
            if g.empty:
                continue
            ref = g[(g["scale"].astype(float) - reference_scale).abs() < 1e-9]
            if len(ref):
                r = ref.iloc[0]
                out[f"{key}@w={tag}"] = float(r["mean"])
                for col in ("lo", "hi"):
                    if _finite(r.get(col)):
                        out[f"{key}@w={tag}{STAT_KEYS[col]}"] = float(r[col])
            higher = bool(g["higher_is_better"].iloc[0]) if "higher_is_better" in g.columns else True
            best = g.loc[g["mean"].astype(float).idxmax() if higher else g["mean"].astype(float).idxmin()]
            out[f"{key}@best_w"] = float(best["mean"])
            out[f"{key}/best_w"] = float(best["scale"])
        if reward:
            out["reward"] = reward
            for base in set(df.loc[df["metric"] == reward, "wandb_key"]):  # "<label>/<reward id>" or the id
                for key in [k for k in out if k.startswith(base) and k[len(base):][:1] in ("@", "/")]:
                    out[base[: len(base) - len(reward)] + "reward" + key[len(base):]] = out[key]
        out["ci_level"] = level
        for k, v in out.items():
            self.run.summary[k] = v
        return out

    def log_image_table(self, images: pd.DataFrame, scores: pd.DataFrame | None = None,
                        key: str = "images_by_scale") -> int:
        """A W&B table with one row per (prompt, sample, seed): per w an image column "w=<w>" (its
        caption lists its scores) and a numeric column "w=<w>/<metric>" per metric, to sort and filter
        by. ``images``: the store's image rows (image_path absolute or relative to run_dir; nonfinite
        images are left out). Returns the number of rows logged."""
        if self.run is None or self.log_images <= 0 or images is None or images.empty:
            return 0
        import wandb

        img = images
        if "nonfinite" in img.columns:
            img = img[~img["nonfinite"].fillna(False).astype(bool)]
        scales = sorted(img["scale"].astype(float).unique())
        n_rows = max(1, self.log_images // max(1, len(scales)))
        values: dict[str, dict[str, float]] = {}
        if scores is not None and len(scores):
            ok = scores[scores["error"].isna()] if "error" in scores.columns else scores
            for k, g in ok.groupby("image_key"):
                values[k] = {m: float(v) for m, v in zip(g["metric"], g["value"]) if _finite(v)}
        metrics = sorted({m for v in values.values() for m in v})
        rows = (img[["prompt_id", "sample", "seed"]].drop_duplicates()
                .sort_values(["prompt_id", "sample", "seed"]).head(n_rows))
        by = img.set_index(["prompt_id", "sample", "seed", "scale"])
        table = wandb.Table(columns=["prompt", "seed", "sample", *[f"w={w:g}" for w in scales],
                                     *[f"w={w:g}/{m}" for w in scales for m in metrics]])
        prompts = img.groupby("prompt_id")["prompt"].first() if "prompt" in img.columns else {}
        for r in rows.itertuples(index=False):
            cells, numbers = [], []
            for w in scales:
                k = (r.prompt_id, r.sample, r.seed, w)
                if k not in by.index:
                    cells.append(None)
                    numbers += [None] * len(metrics)
                    continue
                hit = by.loc[k]
                hit = hit.iloc[0] if isinstance(hit, pd.DataFrame) else hit
                path = Path(hit["image_path"])
                path = path if path.is_absolute() else self.run_dir / path
                got = values.get(hit["image_key"], {})
                caption = ", ".join(f"{m}={v:.4g}" for m, v in got.items())
                cells.append(wandb.Image(str(path), caption=f"w={w:g} {caption}".rstrip()))
                numbers += [got.get(m) for m in metrics]
            table.add_data(str(prompts.get(r.prompt_id, "")), int(r.seed), int(r.sample), *cells, *numbers)
        with self._staged_in_run_dir():
            self.run.log({key: table})
        return len(rows)

    def log_scores_table(self, images: pd.DataFrame, scores: pd.DataFrame, key: str = "scores") -> int:
        """Every score as a W&B table without images, one row per (image, metric): image_key,
        config_id, prompt_id, prompt, sample, seed, scale, evaluator, version, metric, value, error.
        Returns the number of rows logged."""
        if self.run is None or scores is None or scores.empty or images is None or images.empty:
            return 0
        import wandb

        cols = [c for c in ("image_key", "config_id", "prompt_id", "prompt", "sample", "seed", "scale")
                if c in images.columns]
        tidy = scores.merge(images[cols], on="image_key", how="inner")
        tidy = tidy[cols + [c for c in ("evaluator", "version", "metric", "value", "error") if c in tidy.columns]]
        with self._staged_in_run_dir():
            self.run.log({key: wandb.Table(dataframe=tidy.reset_index(drop=True))})
        return len(tidy)

    def log_report(self, index_html: str | Path | None = None, figures: Iterable[str | Path] = ()) -> None:
        """The report: its self-contained index.html (as a W&B HTML panel) and each PNG figure."""
        if self.run is None:
            return
        import wandb

        payload: dict[str, Any] = {}
        if index_html is not None and Path(index_html).is_file():
            payload["report"] = wandb.Html(Path(index_html).read_text(encoding="utf-8"), inject=False)
        for fig in figures:
            fig = Path(fig)
            if fig.suffix == ".png":
                payload[f"figures/{media_key(fig.stem)}"] = wandb.Image(str(fig))
        if payload:
            with self._staged_in_run_dir():
                self.run.log(payload)


def read_run(path: str | Path, timeout: float = 120.0) -> dict[str, Any]:
    """A W&B run read back from its local transaction log (offline or not yet synced) with W&B's own
    reader, ``wandb leet inspect``: {"summary", "config", "tags", "project", "state", ...} plus
    "records" (every record as W&B prints it: "run", "metric", "history", ...). ``path``: a
    ``.wandb`` file, its run directory or a ``wandb`` directory (then the latest run).
    Raises RuntimeError with W&B's message if the reader fails."""
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"]
    out = {}
    for extra in (["--summary"], []):
        proc = subprocess.run([*cmd, *extra, str(path)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "WANDB_SILENT": "true"})
        if proc.returncode != 0:
            raise RuntimeError(f"wandb leet inspect {path} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        if extra:
            out.update(json.loads(proc.stdout))
        else:
            out["records"] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    return out

