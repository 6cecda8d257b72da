"""One invocation: build the job (every check), then lock the run directory and run its stages.

The invocation skeleton (lock, writable check, stale temporaries, provenance entry, error record,
meta.json append) is written once here and serves the image run and the analytic ground truth.
Errors in USER_ERRORS are the user's input or environment: the CLI prints their message (which names
the fix) without a traceback and exits with code 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from rlg.evaluators.base import UnknownEvaluatorError
from rlg.guidance import ScaleError
from rlg.harness import stages
from rlg.harness.build import Job, build
from rlg.harness.config import ConfigError
from rlg.harness.prompts import PromptError
from rlg.harness.provenance import provenance, redact
from rlg.harness.store import Store, StoreError
from rlg.harness.tracking import Tracker
from rlg.report.stats import SERIES
from rlg.pairs import PairError
from rlg.sampling import SamplerError

log = logging.getLogger("rlg")
USER_ERRORS = (ConfigError, ScaleError, PairError, PromptError, SamplerError, StoreError, PermissionError,
               UnknownEvaluatorError)


class Ranks:
    """Barriers between the stages when ranks run together (torchrun / accelerate launch); nothing
    for one process or manual shards (separate launches that never wait for each other)."""

    def __init__(self, job: Job):
        self.state = None
        if job.distributed:
            from accelerate import PartialState

            self.state = PartialState()  # the shared state build() created (rank, world, this rank's device)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


@contextlib.contextmanager
def invocation(job: Job, store: Store, overrides: list[str], device: str) -> Iterator[dict[str, Any]]:
    """Lock the run directory for this launch (or the ranks of one job), check it is writable, remove
    stale temporaries, and record this invocation (provenance, timings, error if any) in meta.json."""
    with store.lock(job.rank, job.world):
        store.check_writable()
        store.remove_stale_temporaries(exclusive=job.world == 1)
        entry: dict[str, Any] = {"run_id": store.run_id(), "invocation": uuid.uuid4().hex[:12], "kind": job.kind,
                                 "rank": job.rank, "world": job.world, "stage": job.config.stage,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 **provenance(device, job.resolved_config, overrides, job.seed), "timings": {},
                                 "prompts": job.prompt_info, "config_id": job.config_id}
        failed = False
        try:
            yield entry
        except BaseException as exc:
            failed = True
            entry["error"] = redact(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            entry["quarantined"] = len(store.quarantined())
            try:
                store.append_meta(entry)
            except StoreError as exc:
                if not failed:
                    raise
                log.error("could not record this invocation in meta.json: %s", exc)


@contextlib.contextmanager
def timed(entry: dict[str, Any], name: str) -> Iterator[None]:
    t = time.time()
    yield
    entry["timings"][f"{name}_s"] = round(time.time() - t, 3)


def run(cfg: Any, run_dir: str | Path | None = None, overrides: list[str] | None = None,
        job_name: str | None = None, group: str | None = None) -> dict[str, Any]:
    """Run one job from a composed Hydra config (read only by ``build``); returns its meta.json entry.
    Raises USER_ERRORS."""
    job = build(cfg, overrides=overrides)
    return run_job(job, run_dir, overrides, job_name, group)


def run_job(job: Job, run_dir: str | Path | None = None, overrides: list[str] | None = None,
            job_name: str | None = None, group: str | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir) if run_dir else Path(job.config.paths.root) / job.name
    ranks = Ranks(job)
    device = job.placement.device if job.placement else "cpu"
    store = Store(run_dir, writer=f"r{job.rank}-{uuid.uuid4().hex[:8]}", min_free_gb=job.config.paths.min_free_gb)
    with invocation(job, store, list(overrides or []), device) as entry:
        if job.kind in ("ground_truth", "kl_claim"):  # closed-form / retrained-model measurements: no image grid
            with timed(entry, job.kind):
                entry["report"] = getattr(stages, job.kind)(job, store)
        else:
            with _tracker(job, store, job_name or job.name, group) as tracker:
                _image_stages(job, store, entry, ranks, tracker)
                entry["wandb_dir"] = str(tracker.run_path) if tracker.active else None
    index = (entry.get("report") or {}).get("index")
    if index:
        print(f"Report: {_shown(index)}")  # the run's last line: the one page to open
    return entry


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (shorter, and no home path)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _tracker(job: Job, store: Store, job_name: str, group: str | None) -> Tracker:
    """W&B from the start of the run (rank 0): progress during generation, results against w at the end."""
    w = job.config.tracker.wandb
    s = job.config.sampler
    return Tracker(run_dir=store.root, name=job_name, project=w.project, entity=w.entity, group=w.group or group or
                   job.name, job_type=job.config.stage, tags=[job.pair.name, s.name, job.name],
                   config=job.resolved_config, mode=job.tracker_mode, log_images=w.log_images, rank=job.rank)


def _image_stages(job: Job, store: Store, entry: dict[str, Any], ranks: Ranks, tracker: Tracker) -> None:
    others = store.config_ids() - {job.config_id}
    if others and job.rank == 0:
        log.warning("%s already holds images of %d other setting(s) (config ids %s); each setting is its own "
                    "series in the report. To keep runs apart, give this one its own name=<run name>", store.root,
                    len(others), ", ".join(sorted(others)))
    if "generate" in job.stages:
        with timed(entry, "generate"):
            entry["generate"] = stages.generate(job, store, entry["run_id"], progress=tracker.progress)
    ranks.wait()
    if job.config.low_memory:  # the generator leaves before the evaluators arrive
        stages.PAIRS.clear()
    if "evaluate" in job.stages:
        with timed(entry, "evaluate"):
            entry["evaluate"] = stages.evaluate(job, store)
    ranks.wait()
    if "report" in job.stages and job.rank == 0:
        with timed(entry, "report"):
            result = stages.report(job, store)
        entry["report"] = {k: result[k] for k in ("files", "notes", "index", "index_html", "headlines")}
        _print_summary(result["summary"] or [])
        for line in result["headlines"]:
            print(line)  # the report's first-screen sentence: what RLG did
        tracker.log_scales(result["summary"] or [])
        tracker.log_image_table(result["images"], result["scores"])
        tracker.log_report(result["index_html"], [Path(f) for f in result["files"] if "/figures/" in f])


def _print_summary(records: list[dict[str, Any]]) -> None:
    """One line per (series, scale): the report's own per-scale means (the one owner of them)."""
    import pandas as pd

    if not records:
        return
    df = pd.DataFrame(records)
    series = ([c for c in SERIES if c in df.columns and df[c].nunique() > 1]
              or [c for c in SERIES if c in df.columns][:1])
    for key, g in df.groupby(series, sort=True):
        print("series " + " ".join(f"{c}={k}" for c, k in zip(series, key if isinstance(key, tuple) else (key,))))
        for scale, rows in g.groupby("scale", sort=True):
            vals = ", ".join(f"{r.metric}={r.mean:.4g}" for r in rows.itertuples() if pd.notna(r.mean))
            n = int(rows["n"].max()) if "n" in rows else 0
            bad = int(rows["n_nonfinite"].max()) if "n_nonfinite" in rows else 0
            excluded = f" ({bad} nonfinite, excluded)" if bad else ""
            print(f"  w={scale:g}: n={n}{excluded} {vals}".rstrip())
