"""The results store of one run directory: content-addressed PNGs and tidy parquet rows.

    <run>/images/<key[:2]>/<key>.png      one image per content key
    <run>/rows/images/part-*.parquet      one row per image (append-only parts, one writer per part)
    <run>/rows/scores/part-*.parquet      one row per (image, metric)
    <run>/meta.json                       provenance of every invocation

Every file is written to a temporary name and renamed, so a killed process leaves either the whole
file or nothing. An image row is written only after its PNG, so a row always has its image; a PNG
without a row is simply regenerated. Parts are append-only: concurrent writers (ranks, a second
launch) never touch each other's files, and readers drop duplicate keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from PIL import Image

IMAGE_COLUMNS = ["image_key", "run_id", "experiment", "pair", "prompt_id", "prompt", "sample", "seed", "scale",
                 "sampler", "num_inference_steps", "guidance_scale", "height", "width", "image_path", "image_sha256",
                 "nonfinite", "nonfinite_step", "metadata"]
SCORE_COLUMNS = ["image_key", "evaluator", "version", "metric", "value", "higher_is_better", "error"]


def content_key(fields: dict[str, Any]) -> str:
    """sha256 of everything that determines an image (canonical JSON)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, run_dir: str | Path, writer: str = "r0"):
        self.root = Path(run_dir)
        self.writer = writer  # part-file prefix: one per rank/process

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by killed writers (their pid is gone); live writers' stay."""
        removed = 0
        for tmp in self.root.rglob(".*.tmp"):
            parts = tmp.name.split(".")
            if len(parts) >= 4 and parts[-3].isdigit() and not _pid_alive(int(parts[-3])):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- images --------------------------------------------------------------------------------
    def image_path(self, key: str) -> Path:
        return self.root / "images" / key[:2] / f"{key}.png"

    def write_images(self, rows: list[dict[str, Any]], arrays: list[np.ndarray]) -> None:
        """PNG files first, then one parquet part holding their rows."""
        for row, arr in zip(rows, arrays):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            data = buf.getvalue()
            path = self.image_path(row["image_key"])
            _atomic_write(path, data)
            row["image_path"] = str(path.relative_to(self.root))
            row["image_sha256"] = hashlib.sha256(data).hexdigest()
        self._write_part("images", pd.DataFrame(rows, columns=IMAGE_COLUMNS))

    def images(self) -> pd.DataFrame:
        df = self._read("images", IMAGE_COLUMNS)
        return df.drop_duplicates("image_key", keep="first").reset_index(drop=True)

    def stored_keys(self) -> set[str]:
        """Keys whose row and PNG both exist (an image row without its file is regenerated)."""
        df = self.images()
        return {k for k, p in zip(df.image_key, df.image_path) if (self.root / p).is_file()}

    def load_image(self, row) -> Image.Image:
        return Image.open(self.root / row.image_path).convert("RGB")

    # -- scores --------------------------------------------------------------------------------
    def write_scores(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            self._write_part("scores", pd.DataFrame(rows, columns=SCORE_COLUMNS))

    def scores(self) -> pd.DataFrame:
        df = self._read("scores", SCORE_COLUMNS)
        return df.drop_duplicates(["image_key", "evaluator", "version", "metric"], keep="first").reset_index(drop=True)

    def scored(self, evaluator: str, version: str) -> set[str]:
        df = self.scores()
        return set(df.image_key[(df.evaluator == evaluator) & (df.version == version)])

    # -- metadata ------------------------------------------------------------------------------
    def append_meta(self, entry: dict[str, Any]) -> None:
        path = self.root / "meta.json"
        meta = json.loads(path.read_text()) if path.exists() else {"invocations": []}
        meta["invocations"].append(entry)
        _atomic_write(path, json.dumps(meta, indent=2, default=str).encode())

    def meta(self) -> dict[str, Any]:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {"invocations": []}

    # -- parts ---------------------------------------------------------------------------------
    def _write_part(self, table: str, df: pd.DataFrame) -> None:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        _atomic_write(self.root / "rows" / table / f"part-{self.writer}-{uuid.uuid4().hex}.parquet", buf.getvalue())

    def _read(self, table: str, columns: list[str]) -> pd.DataFrame:
        parts = sorted((self.root / "rows" / table).glob("part-*.parquet"))
        frames = [pd.read_parquet(p) for p in parts]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)
