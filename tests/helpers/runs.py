"""What the run-level tests share: the tiny fast preset, a one-thread fixture, composing the config,
the CLI command of a small run, and a snapshot of a finished store to compare runs by."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from rlg.store import Store

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
FAST = ["experiment=tiny", "debug=fast"]  # the random-weight plumbing pair, rlg/conf/debug/fast.yaml


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in-process too: on a small shared machine two threads contend (and are 5x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "rlg" / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def cli(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "run.py", "experiment=tiny", f"name={name}", f"paths.root={root}",
            "sampler.num_inference_steps=2",
            "grid.scales=[0,0.5,1,1.5,2]", "prompts.samples_per_prompt=2", "sampler.batch_size=5",
            "evaluators.selected=[jpeg]", "evaluators.batch_size=1", "tracker=none", "report.n_resamples=20",
            "report.grid_prompts=2", *extra]


def snapshot(run: Path) -> dict:
    """Everything a finished store is judged by."""
    s = Store(run)
    raw_images = s._read("images", [])
    raw_scores = s._read("scores", [])
    images, scores = s.images(), s.scores()
    return {
        "images": set(zip(images.image_key, images.image_sha256)),
        "raw_image_rows": len(raw_images),
        "scores": set(zip(scores.image_key, scores.evaluator, scores.version, scores.metric, scores.value.round(9))),
        "raw_score_rows": len(raw_scores),
        "pngs": {str(p.relative_to(run)) for p in run.glob("images/*/*.png")},
        "row_paths": set(images.image_path),
        "temporaries": [str(p) for p in run.rglob("*.tmp")],
        # report files (their names carry the run's name and id) and its numbers
        "report": sorted(re.sub(r"[0-9a-f]{12}", "<id>", str(p.relative_to(run / "report")).replace(run.name, "<name>"))
                         for p in (run / "report").rglob("*") if p.is_file()),
        "summary": pd.read_csv(run / "report" / "tables" / "summary.csv").drop(columns=["run_id", "run_name"])
        .to_csv(index=False) if (run / "report" / "tables" / "summary.csv").exists() else None,
        "quarantine": (run / "quarantine").exists(),
    }


def assert_complete(state: dict) -> None:
    assert state["raw_image_rows"] == len(state["images"]), "duplicate image rows"
    assert state["raw_score_rows"] == len(state["scores"]), "duplicate score rows"
    assert state["pngs"] == state["row_paths"], "orphan or missing PNG files"
    assert not state["temporaries"], f"leftover temporaries {state['temporaries']}"
    assert not state["quarantine"], "something was found corrupt"


def _fixture(family: str) -> Path:
    """The directory of the tiny pair ``family`` (built once per machine)."""
    from rlg.tiny_pairs import build_pair

    return build_pair(family)
