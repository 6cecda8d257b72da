"""Report-only and evaluate-only invocations import neither torch nor diffusers (issue 26: they paid the
seconds of model imports). Each runs the real CLI in a subprocess on a store written through the real
Store (no model made its images) and reports, when it exits, which of the model libraries were imported."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rlg.store import Store, content_key

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import sys
from rlg.harness import cli
try:
    cli.main()
finally:
    print("MODULES", *sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""


def _store(root: Path) -> list[np.ndarray]:
    """2 prompts x scales 0, 1 of 16x16 images, stored as a generate stage would; no score yet."""
    root.mkdir(parents=True)
    store = Store(root)
    rng = np.random.default_rng(0)
    rows, arrays = [], []
    for p in range(2):
        for w in (0.0, 1.0):
            rows.append({"image_key": content_key({"p": p, "w": w}), "run_id": store.run_id(), "run_name": "light",
                         "config_id": "c0", "pair": "zoo_digits_ddpo_compress", "prompt_id": p,
                         "prompt": f"digit {p}", "sample": 0, "seed": 42, "scale": w, "nonfinite": False,
                         "metadata": None})
            arrays.append(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    store.write_images(rows, arrays)
    return arrays


def _cli(root: Path, stage: str) -> tuple[subprocess.CompletedProcess, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = ["debug=fast", f"paths.root={root}", "name=light", f"stage={stage}", "tracker=none"]
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    return out, out.stdout + out.stderr


def test_evaluate_and_report_only_runs_import_no_model_library(tmp_path):
    arrays = _store(tmp_path / "light")
    out, text = _cli(tmp_path, "evaluate")  # debug=fast selects the JPEG evaluator only
    assert out.returncode == 0, text[-3000:]
    assert "MODULES\n" in out.stdout, text[-3000:]  # neither torch, diffusers nor transformers
    scores = Store(tmp_path / "light").scores()
    kb = scores[scores.metric == "jpeg_incompressibility"].merge(Store(tmp_path / "light").images(), on="image_key")
    for r in kb.itertuples():  # the DDPO convention, computed here: PIL JPEG quality 95, kB = bytes / 1000
        buf = io.BytesIO()
        Image.fromarray(arrays[2 * r.prompt_id + int(r.scale)]).save(buf, format="JPEG", quality=95)
        assert abs(r.value - buf.tell() / 1000) < 1e-9
    assert len(kb) == 4

    out, text = _cli(tmp_path, "report")
    assert out.returncode == 0, text[-3000:]
    assert "MODULES\n" in out.stdout, text[-3000:]
    summary = pd.read_csv(tmp_path / "light" / "report" / "tables" / "summary.csv")
    got = summary[summary.metric == "jpeg_incompressibility"].set_index("scale")["mean"]
    assert np.allclose(got.sort_index().to_numpy(), kb.groupby("scale").value.mean().sort_index().to_numpy())
    assert (tmp_path / "light" / "report" / "index.html").is_file()
