"""rlg-bench-export against a direct read of the store's parquet parts: the newest row per key, intact
images only, every (image, metric) once; csv, parquet and the datasets export. No model; seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlg.harness.store import Store, content_key
from rlg.report.export import ExportError, export_frame, write_export
from tests.helpers.store_read import direct_read

ROOT = Path(__file__).resolve().parents[1]


def _run(root: Path) -> Path:
    """3 prompts x 2 scales with a JPEG score; image (p=1, w=1) rescored later; image (p=2, w=0) corrupted."""
    root.mkdir(parents=True)
    store = Store(root)
    rows, arrays, scores = [], [], []
    for p in range(3):
        for w in (0.0, 1.0):
            key = content_key({"p": p, "w": w})
            rows.append({"image_key": key, "run_id": store.run_id(), "run_name": "exp", "pair": "tiny_sd",
                         "prompt_id": p, "prompt": f"prompt {p}", "sample": 0, "seed": 1, "scale": w,
                         "nonfinite": p == 0 and w == 1.0, "metadata": None})
            arrays.append(np.full((8, 8, 3), 40 * p + int(100 * w), dtype=np.uint8))
            scores.append({"image_key": key, "evaluator": "jpeg", "version": "v", "metric": "jpeg_compressibility",
                           "value": -(1 + w + 0.1 * p), "higher_is_better": True, "error": None,
                           "image_sha256": None})
    store.write_images(rows, arrays)
    store.write_scores(scores)
    rescored = content_key({"p": 1, "w": 1.0})
    store.write_scores([{**scores[3], "value": 99.0}])  # newer row of the same key: it wins
    assert scores[3]["image_key"] == rescored
    store.image_path(content_key({"p": 2, "w": 0.0})).write_bytes(b"not a png")  # fails its sha256
    return root


def test_export_matches_a_direct_read_of_the_store(tmp_path):
    root = _run(tmp_path / "run")
    raw = pd.read_parquet(root / "rows" / "scores")
    assert len(raw) == 7  # a plain read sees the superseded row too
    df = export_frame([root])
    direct = direct_read(root)
    assert len(df) == len(direct) == 5  # one row per intact image and metric: 6 images - 1 corrupt
    got = df.set_index("image_key")["value"].sort_index()
    want = direct.set_index("image_key")["value"].sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False)
    assert got[content_key({"p": 1, "w": 1.0})] == 99.0  # the newest row
    status = df.set_index("image_key")["status"]
    assert status[content_key({"p": 0, "w": 1.0})] == "nonfinite" and (status.drop(
        content_key({"p": 0, "w": 1.0})) == "ok").all()
    assert {"run_dir", "run_name", "pair", "prompt", "sample", "seed", "scale", "metric", "image_path"} <= set(df)

    for to, reader in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
        out = write_export(df, to, tmp_path / f"x.{to}")
        back = reader(out)
        assert len(back) == 5 and np.allclose(back.sort_values("image_key")["value"],
                                              df.sort_values("image_key")["value"])


def test_hf_export_has_one_row_per_image_with_the_png(tmp_path):
    datasets = pytest.importorskip("datasets", reason="needs the [hf] extra: pip install -e '.[hf]'")
    root = _run(tmp_path / "run")
    df = export_frame([root])
    ds = datasets.load_from_disk(str(write_export(df, "hf", tmp_path / "hf")))
    assert len(ds) == 5 and "jpeg_compressibility" in ds.column_names
    row = next(r for r in ds if r["image_key"] == content_key({"p": 1, "w": 1.0}))
    assert row["jpeg_compressibility"] == 99.0 and np.asarray(row["image"]).tolist() == \
        np.full((8, 8, 3), 140, dtype=np.uint8).tolist()
    nonfinite = next(r for r in ds if r["image_key"] == content_key({"p": 0, "w": 1.0}))
    assert nonfinite["jpeg_compressibility"] is None  # excluded values are not exported as numbers


def test_export_command_prints_the_path_last_and_refuses_an_empty_directory(tmp_path):
    root = _run(tmp_path / "run")
    cmd = [sys.executable, "-m", "rlg.report.export", str(root), "--to", "csv"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"Export: {root.resolve() / 'export' / 'scores.csv'}"
    (tmp_path / "empty" / "rows" / "images").mkdir(parents=True)
    bad = subprocess.run([*cmd[:3], str(tmp_path / "empty")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("rlg-bench-export: no images in")
    assert "Traceback" not in bad.stderr
    with pytest.raises(ExportError, match="unknown format 'xlsx'"):
        write_export(export_frame([root]), "xlsx", tmp_path / "x")
