"""``rlg.run``: a preset from Python, through the command line's own build and checks, results as frames.

    import rlg
    res = rlg.run(experiment="quickstart", overrides=["prompts.max_prompts=2", "tracker=none"])
    res.summary          # one row per (series, metric, scale): mean, 95% CI, delta and win rate vs w=1, n
    res.scores           # one row per (image, metric), the store's read rule applied (rlg-bench-export)
    res.headlines        # the report's quotable sentences
    res.report           # Path of report/index.html

The counterpart of lm-evaluation-harness's ``simple_evaluate``: the same composition of ``rlg/conf``
as ``rlg-bench experiment=... key=value`` (Hydra's compose API), the same early value checks
(``rlg.harness.config.validate``), the same build and run (``rlg.harness.runner.run``), the same run
directory (``<paths.root>/<name>``, so a second call resumes) and the same report. Errors are the
CLI's USER_ERRORS, raised with the message the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd


@dataclass
class RunResult:
    """What one ``rlg.run`` call produced. ``summary``: ``report/tables/summary.csv`` as a frame (empty
    when the stage wrote no report); ``scores``: ``rlg.report.export.export_frame`` of the run
    directory; ``report``: report/index.html (None without a report stage); ``meta``: this
    invocation's meta.json entry (provenance, timings)."""
    run_dir: Path
    summary: pd.DataFrame
    scores: pd.DataFrame
    report: Path | None
    headlines: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def run(experiment: str | None = None, overrides: Sequence[str] = (), *, verbose: bool | None = None) -> RunResult:
    """Run ``rlg-bench experiment=<experiment> <overrides>`` in this process and return its results.

    ``experiment``: a preset name (rlg/conf/experiment/), None for the default (quickstart);
    ``overrides``: Hydra overrides as on the command line (``["grid.scales=[0,1,2]", "name=my-run"]``).
    Raises the CLI's USER_ERRORS (ConfigError for a misspelt key or bad value, PairError, ...).
    """
    from rlg.harness.api import job as checked_job
    from rlg.harness.cli import cpu_defaults
    from rlg.harness.config import ConfigError
    from rlg.harness.console import quiet_third_party
    from rlg.harness.runner import run_job
    from rlg.report.export import ExportError, export_frame

    cpu_defaults()  # as the CLI (takes effect if torch has not started its threads yet)
    args = ([f"experiment={experiment}"] if experiment else []) + [str(o) for o in overrides]
    job = checked_job(*args)  # every check of the command line; only the Job is read below
    quiet_third_party(verbose=job.verbose if verbose is None else verbose)
    run_dir = job.run_dir  # the CLI's folder
    beyond = stored_beyond_work_list(job, run_dir)
    if beyond:  # the report and summary cover the directory: they would answer more than this call asked
        raise ConfigError(f"{run_dir} already holds {beyond} images outside this call's work list (an earlier run "
                          f"under name={job.name} with other overrides), and the result would summarise them too; "
                          f"give this work list its own directory (name=<another name>), or repeat the earlier "
                          "run's overrides to resume it")
    entry = run_job(job, run_dir=run_dir, overrides=args, job_name=job.name)
    report = (entry.get("report") or {}).get("index_html")
    csv = run_dir / "report" / "tables" / "summary.csv"
    summary = pd.read_csv(csv) if report and csv.is_file() else pd.DataFrame()
    try:  # a measurement kind (ground truth, KL claim) stores no image: its rows are in the store's tables
        scores = export_frame([run_dir]) if job.kind == "images" else pd.DataFrame()
    except ExportError:  # an image run that stored none (a report-only call on an empty directory)
        scores = pd.DataFrame()
    return RunResult(run_dir=run_dir, summary=summary, scores=scores, report=Path(report) if report else None,
                     headlines=list((entry.get("report") or {}).get("headlines") or []), meta=entry)


def stored_beyond_work_list(job, run_dir: Path) -> int:
    """How many images stored in ``run_dir`` are not in the work list of ``job`` (0 for a new directory,
    a resume of the same work list, or a larger one that extends it)."""
    from rlg.store import Store

    if not run_dir.is_dir():
        return 0
    stored = set(Store(run_dir).images().image_key)
    if not stored:
        return 0
    from rlg.harness.stages import work_groups

    if job.kind != "images":  # a measurement kind stores no image work list
        return 0
    asked = {key for group in work_groups(job, rank=-1) for key, _ in group}
    return len(stored - asked)


__all__ = ["run", "RunResult", "stored_beyond_work_list"]
