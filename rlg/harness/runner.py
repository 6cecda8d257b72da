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
from rlg.harness.build import Job, build, use_devices
from rlg.harness.kinds import KINDS
from rlg.harness.config import ConfigError
from rlg.harness.prompts import PromptError
from rlg.harness.provenance import provenance, redact
from rlg.store import Store, StoreError
from rlg.harness.tracking import Tracker, wandb_run_id
from rlg.metrics import title as metric_title
from rlg.report.stats import SERIES, scale_label
from rlg.pairs import PairError
from rlg.registry import resolve
from rlg.sampler_spec import SamplerError

log = logging.getLogger("rlg")
USER_ERRORS = (ConfigError, ScaleError, PairError, PromptError, SamplerError, StoreError, PermissionError,
               UnknownEvaluatorError, stages.EvaluationFailed)


class Ranks:
    """Barriers between the stages when ranks run together (torchrun / accelerate launch); nothing
    for one process or manual shards (separate launches that never wait for each other)."""

    def __init__(self, job: Job):
        self.state = None
        if job.distributed:
            from accelerate import PartialState

            self.state = PartialState()  # the shared state build() created (rank, world, device, barrier timeout)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def timeout_s(self) -> float | None:
        """The barrier timeout the process group really has (barrier_timeout_min), for meta.json."""
        if self.state is None:
            return None
        import torch
        import torch.distributed as dist

        try:  # torch's own record of it; the attribute path is internal, so a miss is just not recorded
            group = dist.distributed_c10d._get_default_group()
            return group._get_backend(torch.device(self.state.device)).options._timeout.total_seconds()
        except (AttributeError, RuntimeError, ValueError):
            return None


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
                                 **provenance(device, job.resolved_config, overrides, job.seed, models_run(job)),
                                 "timings": {},
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


def models_run(job: Job) -> bool:
    """Whether this invocation runs a torch model: it makes images, measures, or scores with an evaluator
    that takes a device. Else (a report, JPEG scoring) torch is never imported."""
    return job.kind != "images" or job.placement is not None or use_devices(job.evaluators)


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
    run_dir = Path(run_dir) if run_dir else job.run_dir
    ranks = Ranks(job)
    device = job.placement.device if job.placement else job.evaluator_device  # where this invocation's models run
    store = Store(run_dir, writer=f"r{job.rank}-{uuid.uuid4().hex[:8]}", min_free_gb=job.config.paths.min_free_gb)
    with invocation(job, store, list(overrides or []), device) as entry:
        if ranks.state is not None:
            entry["barrier_timeout_s"] = ranks.timeout_s()
        stage = KINDS.get(job.kind).stage
        if stage is not None:  # a measurement of its own: no image grid
            with timed(entry, job.kind):
                entry["report"] = resolve(stage)(job, store)
        else:
            with _tracker(job, store, job_name or job.name, group, entry["run_id"]) as tracker:
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


def _tracker(job: Job, store: Store, job_name: str, group: str | None, run_id: str) -> Tracker:
    """W&B from the start of the run (rank 0): progress during generation and scoring, results against w at
    the end; one W&B run per run directory, setting and stage (resumed by every later invocation)."""
    w = job.config.tracker.wandb
    s = job.config.sampler
    return Tracker(run_dir=store.root, name=job_name, project=w.project, entity=w.entity, group=w.group or group or
                   job.name, job_type=job.config.stage, tags=[job.pair.name, s.name, job.name],
                   config={**job.resolved_config, "reward": job.reward,
                           "metrics": {m.id: m.label for m in job.metrics}},
                   mode=job.tracker_mode, log_images=w.log_images, rank=job.rank,
                   run_id=wandb_run_id(run_id, job.config_id, job.config.stage))


def _image_stages(job: Job, store: Store, entry: dict[str, Any], ranks: Ranks, tracker: Tracker) -> None:
    others = store.config_ids() - {job.config_id}
    if others and job.rank == 0 and "generate" in job.stages:  # evaluate/report work on every setting anyway
        log.warning("%s already holds images of %d other setting(s) (config ids %s); each setting is its own "
                    "series in the report. To keep runs apart, give this one its own name=<run name>", store.root,
                    len(others), ", ".join(sorted(others)))
    if "generate" in job.stages:
        with timed(entry, "generate"):
            entry["generate"] = stages.generate(job, store, entry["run_id"], progress=tracker.progress)
    ranks.wait()
    if "generate" in job.stages and job.launch_rank == 0:
        # one row per key on disk: plain pandas/duckdb readers see what the store sees; the rows dropped
        # (superseded ones) are recorded, so duplicated work would show
        entry["compacted_after_generate"] = store.compact()
    if job.config.low_memory:  # the generator leaves before the evaluators arrive
        stages.PAIRS.clear()
    if "evaluate" in job.stages:
        with timed(entry, "evaluate"):
            entry["evaluate"] = stages.evaluate(job, store, progress=tracker.progress)
    ranks.wait()
    if "evaluate" in job.stages and job.launch_rank == 0:
        entry["compacted_after_evaluate"] = store.compact()
    if "report" in job.stages and job.launch_rank == 0 and _whole_run_done(job, store, entry):
        with timed(entry, "report"):
            result = stages.report(job, store, entry)
        entry["report"] = {k: result[k] for k in ("files", "notes", "index", "index_html", "headlines")}
        _print_summary(result["summary"] or [], job.reward)
        for line in result["headlines"]:
            print(line)  # the report's first-screen sentence: what RLG did
        with contextlib.ExitStack() as stack:
            if not tracker.active and job.rank != 0:  # the shard that finished last logs into the same W&B run
                tracker = stack.enter_context(tracker.as_rank0())
            tracker.log_scales(result["summary"] or [], reward=job.reward)
            tracker.log_image_table(result["images"], result["scores"])
            tracker.log_scores_table(result["images"], result["scores"])
            tracker.log_report(result["index_html"], [Path(f) for f in result["files"] if "/figures/" in f])


def _whole_run_done(job: Job, store: Store, entry: dict[str, Any]) -> bool:
    """Whether this launch writes the run's report now. A manual shard (shard.count > 1) running
    stage=all writes it only once every shard's images are stored and scored, so the shard that
    finishes last writes the one report; stage=report always writes it."""
    if job.config.shard.count <= 1 or job.config.stage == "report":
        return True
    scored_by = [(e["evaluator"], e["version"]) for e in (entry.get("evaluate") or {}).values()]
    done, total = stages.work_done(job, store, scored_by)
    if done < total:
        log.info("report: %d of the run's %d images are stored and scored so far (shard %d of %d); the shard that "
                 "finishes last writes the report (or run stage=report)", done, total, job.config.shard.index,
                 job.config.shard.count)
        entry["report_deferred"] = {"done": done, "total": total}
        return False
    return True


def _print_summary(records: list[dict[str, Any]], reward: str | None = None) -> None:
    """The run's reward, then one line per (series, scale): the report's own per-scale means (the one owner of
    them)."""
    import pandas as pd

    if not records:
        return
    if reward:
        print(f"reward: {metric_title(reward)}")
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
            print(f"  w={scale_label(scale)}: n={n}{excluded} {vals}".rstrip())
