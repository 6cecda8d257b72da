"""Trackers: the local store is always written; W&B is an extra sink (offline by default).

The W&B key is read by wandb itself from the environment (WANDB_API_KEY / `wandb login`); nothing
here reads, logs or stores it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def log_to_wandb(cfg, resolved: dict[str, Any], run_dir: Path, per_scale: pd.DataFrame, images: pd.DataFrame,
                 scores: pd.DataFrame, figures: list[Path], job_name: str, group: str | None) -> Path | None:
    """One W&B run per job: config, per-scale summary, an image table, the figures. Returns its dir."""
    wcfg = cfg.tracker.wandb
    if wcfg.mode == "disabled":
        return None
    if wcfg.mode not in ("offline", "online"):
        raise ValueError(f"tracker.wandb.mode={wcfg.mode!r}; use offline, online or disabled")
    import wandb

    run = wandb.init(project=wcfg.project, entity=wcfg.entity, group=wcfg.group or group, name=job_name,
                     mode=wcfg.mode, dir=str(run_dir), config=resolved, reinit="finish_previous")
    try:
        for _, row in per_scale.iterrows():
            wandb.log({k: v for k, v in row.items() if pd.notna(v)})
        for col in per_scale.columns:
            if col != "scale":
                run.summary[f"{col}@w=1"] = _at(per_scale, col, 1.0)
        if wcfg.log_images and len(images):
            wide = scores.pivot_table(index="image_key", columns="metric", values="value") if len(scores) else None
            metrics = list(wide.columns) if wide is not None else []
            table = wandb.Table(columns=["image", "prompt", "seed", "sample", "scale", *metrics])
            for r in images.head(wcfg.log_images).itertuples():
                vals = [wide.loc[r.image_key, m] if wide is not None and r.image_key in wide.index else None
                        for m in metrics]
                table.add_data(wandb.Image(str(run_dir / r.image_path)), r.prompt, r.seed, r.sample, r.scale, *vals)
            wandb.log({"images": table})
        for fig in figures:
            if fig.suffix == ".png":
                wandb.log({f"figures/{fig.stem}": wandb.Image(str(fig))})
        return Path(run.dir).parent
    finally:
        run.finish()


def _at(df: pd.DataFrame, col: str, scale: float):
    hit = df[df.scale == scale]
    return None if hit.empty else hit[col].iloc[0]
