"""GenEval aggregation (djghosh13/geneval @ af4902f : evaluation/summary_scores.py).

Per tag: mean of ``correct`` over its images. Overall: the unweighted mean of the per-tag
accuracies (tags in order of first appearance, as ``groupby(sort=False)``). Also upstream's
"% correct images" and "% correct prompts" (a prompt counts if any of its images is correct).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from rlg.evaluators.geneval.metadata import TAGS

log = logging.getLogger(__name__)


def summarize(rows: pd.DataFrame) -> dict[str, Any]:
    """Summary of per-image results; needs columns ``tag`` and ``correct`` (bool or 0/1, NaN = failed).

    Prompt-level accuracy uses the ``metadata`` column when present (upstream groups by it),
    else ``prompt``. Rows whose ``correct`` is NaN (scoring failed) are left out and counted.
    """
    missing = {"tag", "correct"} - set(rows.columns)
    if missing:
        raise ValueError(f"summarize needs columns 'tag' and 'correct'; missing {sorted(missing)}")
    failed = rows["correct"].isna()
    if failed.any():
        log.warning("GenEval summary leaves out %d images whose scoring failed", int(failed.sum()))
    df = rows[~failed].copy()
    if df.empty:
        raise ValueError("summarize got no scored images")
    df["correct"] = df["correct"].astype(bool)

    tags: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    for tag, group in df.groupby("tag", sort=False):
        tags[tag] = float(group["correct"].mean())
        counts[tag] = {"correct": int(group["correct"].sum()), "total": len(group)}
    absent = [t for t in TAGS if t not in tags]
    if absent:
        log.warning("GenEval overall is averaged over %d tags; absent: %s", len(tags), ", ".join(absent))

    out: dict[str, Any] = {
        "overall": float(np.mean(list(tags.values()))),
        "tags": tags,
        "counts": counts,
        "images": len(df),
        "failed": int(failed.sum()),
        "image_accuracy": float(df["correct"].mean()),
    }
    key = "metadata" if "metadata" in df.columns else "prompt" if "prompt" in df.columns else None
    if key is not None:
        # metadata may hold the row dicts themselves; group by their JSON text as upstream does
        ids = df[key].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
        per_prompt = df["correct"].groupby(ids).any()
        out["prompts"] = len(per_prompt)
        out["prompt_accuracy"] = float(per_prompt.mean())
    return out
