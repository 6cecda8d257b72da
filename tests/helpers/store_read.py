"""The store's read rule written out independently of rlg.harness.store, as a plain reader would apply it:
the newest row (written_ns) of each key, images whose PNG matches its recorded sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd


def direct_read(root: Path) -> pd.DataFrame:
    """One row per (intact image, evaluator, version, metric) of the run directory ``root``, with the
    image's prompt_id, scale and nonfinite flag."""
    img = pd.read_parquet(root / "rows" / "images").sort_values("written_ns").drop_duplicates("image_key", keep="last")
    img = img[[(root / p).is_file() and hashlib.sha256((root / p).read_bytes()).hexdigest() == h
               for p, h in zip(img.image_path, img.image_sha256)]]
    sc = pd.read_parquet(root / "rows" / "scores").sort_values("written_ns")
    sc = sc.drop_duplicates(["image_key", "evaluator", "version", "metric"], keep="last")
    return sc[sc.image_key.isin(img.image_key)].merge(img[["image_key", "prompt_id", "scale", "nonfinite"]],
                                                       on="image_key")
