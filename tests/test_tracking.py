"""W&B tracking: a real offline run, read back with W&B's own reader (``wandb leet inspect``) and its
files: group/job type/tags, live progress, w as the x-axis of every metric, explicit summaries, the
wide image table, and which mode a run gets from the user's W&B setup. No network, no account."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("wandb", reason="the [wandb] extra is not installed")

from rlg.harness.tracking import SCALE_AXIS, Tracker, read_run, resolve_mode  # noqa: E402
from rlg.report.stats import summarize  # noqa: E402

SCALES = [0.0, 0.5, 1.0, 2.0]
ROOT = Path(__file__).resolve().parent.parent


def _colour(p: int, w: float) -> tuple[int, int, int]:
    return (10 + 40 * p, int(100 * w), 7)


@pytest.fixture
def results(tmp_path):
    """3 prompts x 2 samples x 4 scales; PickScore = 20 + w - (w - 1)^2 (best at w=1 and a known
    mean), JPEG size = 5 + w (lower is better: best at w=0). Each PNG has its own colour."""
    rows, scores = [], []
    for p in range(3):
        for s in range(2):
            for w in SCALES:
                key = f"{p}{s}{w:g}".ljust(8, "0")
                path = tmp_path / "img" / f"{key}.png"
                path.parent.mkdir(exist_ok=True)
                Image.new("RGB", (8, 8), _colour(p, w)).save(path)
                rows.append(dict(image_key=key, run_id="r", run_name="quick", pair="tiny_sd", prompt_id=p,
                                 prompt=f"prompt {p}", sample=s, seed=100 + s, scale=w, image_path=str(path),
                                 nonfinite=False))
                noise = 0.1 * (s - 0.5)
                scores.append(dict(image_key=key, evaluator="pickscore", version="v", metric="pickscore",
                                   value=20 + w - (w - 1) ** 2 + noise, higher_is_better=True, error=None))
                scores.append(dict(image_key=key, evaluator="jpeg", version="v", metric="jpeg_incompressibility",
                                   value=5 + w + noise, higher_is_better=False, error=None))
    return pd.DataFrame(rows), pd.DataFrame(scores)


def test_offline_run_has_progress_w_axis_summaries_and_a_wide_image_table(tmp_path, results, monkeypatch):
    images, scores = results
    monkeypatch.setenv("WANDB_PROJECT", "from-env")  # project=None defers to it
    monkeypatch.delenv("WANDB_MODE", raising=False)
    summary = summarize(images, scores, n_resamples=50)
    tracker = Tracker(run_dir=tmp_path / "run", name="job-1", group="quick-sweep", job_type="all",
                      tags=["tiny_sd", "tiny", "quickstart"], config={"sampler": {"num_inference_steps": 2}},
                      mode="offline", log_images=8, progress_every_s=0).start()
    for done in (4, 8, 24):
        tracker.progress(done, 24)
    set_summary = tracker.log_scales(summary)
    n_rows = tracker.log_image_table(images, scores)
    tracker_scores = tracker.log_scores_table(images, scores)
    path = tracker.run_path
    tracker.finish()

    run = read_run(path)
    head = next(r["run"] for r in run["records"] if r["type"] == "run")
    assert head["run_group"] == "quick-sweep" and head["job_type"] == "all" and head["project"] == "from-env"
    assert run["tags"] == ["tiny_sd", "tiny", "quickstart"] and run["state"] == "finished"

    # every evaluation metric is plotted against w, and has no automatic (last-w) summary
    defined = {r["metric"].get("name"): r["metric"] for r in run["records"] if r["type"] == "metric"}
    for key in ("pickscore", "pickscore/ci_lo", "pickscore/ci_hi", "pickscore/win_rate", "pickscore/n",
                "jpeg_incompressibility"):
        assert defined[key]["step_metric"] == SCALE_AXIS and defined[key]["summary"] == {"none": True}, key
    assert "pickscore" not in run["summary"] and "jpeg_incompressibility" not in run["summary"]

    history = [r["history"]["item"] for r in run["records"] if r["type"] == "history"]
    progress = [h for h in history if "generate/images" in h]
    assert [h["generate/images"] for h in progress] == [4, 8, 24] and progress[-1]["generate/fraction"] == 1
    assert progress[-1]["generate/images_per_s"] > 0 and progress[-1]["generate/eta_s"] == 0
    assert defined[None]["glob_name"] == "generate/*" and defined[None]["step_metric"] == "generate/images"
    per_w = {h[SCALE_AXIS]: h for h in history if SCALE_AXIS in h}
    assert sorted(per_w) == SCALES
    for w in SCALES:  # the means are the plain means of the stored scores (noise averages out per prompt)
        expect = scores[scores.metric == "pickscore"].merge(images, on="image_key").query("scale == @w").value.mean()
        assert per_w[w]["pickscore"] == pytest.approx(expect)
        assert per_w[w]["pickscore/ci_lo"] <= per_w[w]["pickscore"] <= per_w[w]["pickscore/ci_hi"]
        assert per_w[w]["pickscore/n"] == 6
    assert per_w[2.0]["jpeg_incompressibility/win_rate"] == 0.0  # larger files at w=2 lose every pair vs w=1

    s = run["summary"]
    assert s["pickscore@w=1"] == pytest.approx(21.0) and s["pickscore/best_w"] == 1.0
    assert s["jpeg_incompressibility/best_w"] == 0.0 and s["jpeg_incompressibility@best_w"] == pytest.approx(5.0)
    assert s["pickscore@w=1/ci_lo"] <= 21.0 <= s["pickscore@w=1/ci_hi"]
    assert {k: s[k] for k in set_summary} == pytest.approx(set_summary)

    # the table: one row per (prompt, sample, seed), one image column per w, each the right image. W&B
    # stages a logged table as a run artifact; its record lists each file and where it waits for upload.
    assert n_rows == 8 // len(SCALES)
    artifacts = {r["artifact"]["name"].split("-")[-1]: r["artifact"] for r in run["records"] if r["type"] == "artifact"}
    artifact = artifacts["images_by_scale"]
    assert artifact["type"] == "run_table"
    staged = {c["path"]: Path(c["local_path"]) for c in artifact["manifest"]["contents"]}
    # staged for upload inside the run directory, so `wandb sync` of a copied run directory has them
    assert all(p.is_relative_to(tmp_path / "run" / "wandb" / "data") for p in staged.values()), staged
    table = json.loads(staged["images_by_scale.table.json"].read_text())
    metrics = ["jpeg_incompressibility", "pickscore"]
    assert table["columns"] == ["prompt", "seed", "sample", "w=0", "w=0.5", "w=1", "w=2",
                                *[f"w={w:g}/{m}" for w in SCALES for m in metrics]]
    assert len(table["data"]) == 2
    value = scores.merge(images, on="image_key").set_index(["prompt_id", "sample", "scale", "metric"]).value
    for row in table["data"]:
        p, s = int(row[0].split()[-1]), int(row[2])
        for j, w in enumerate(SCALES):
            cell = row[3 + j]
            pixels = np.asarray(Image.open(staged[cell["path"]]).convert("RGB"))
            assert tuple(pixels[0, 0]) == _colour(p, w), (row[0], w)
            assert "pickscore=" in cell["caption"] and cell["caption"].startswith(f"w={w:g} ")
            for i, m in enumerate(metrics):  # numeric columns: the stored score of that very image
                assert row[3 + len(SCALES) + j * len(metrics) + i] == pytest.approx(value[(p, s, w, m)])

    # every score in a table without images: one row per (image, metric)
    n_scores = tracker_scores
    staged = {c["path"]: Path(c["local_path"]) for c in artifacts["scores"]["manifest"]["contents"]}
    tidy = json.loads(staged["scores.table.json"].read_text())
    frame = pd.DataFrame(tidy["data"], columns=tidy["columns"])
    assert n_scores == len(frame) == len(scores) == 48
    got = frame.set_index(["prompt_id", "sample", "scale", "metric"]).value.sort_index()
    pd.testing.assert_series_equal(got, value.sort_index(), check_names=False)


def test_wandb_ids_are_stable_and_media_keys_have_no_hashes():
    from rlg.harness.tracking import media_key, wandb_run_id

    assert wandb_run_id("0123456789ab", "c" * 16, "all") == wandb_run_id("0123456789ab", "c" * 16, "all")
    assert len({wandb_run_id("0123456789ab", "c" * 16, st) for st in ("all", "report", "evaluate")}) == 3
    assert media_key("grid_quickstart_zoo_digits_ddpo_compress_e779028161cb_bda5e370947c1400") == \
        "grid_quickstart_zoo_digits_ddpo_compress"
    assert media_key("scale_jpeg_compressibility") == "scale_jpeg_compressibility"


def test_several_series_get_their_label_as_prefix(tmp_path, results):
    images, scores = results
    two = pd.concat([images, images.assign(pair="other", image_key="o" + images.image_key)], ignore_index=True)
    both = pd.concat([scores, scores.assign(image_key="o" + scores.image_key)], ignore_index=True)
    tracker = Tracker(run_dir=tmp_path, mode="offline", log_images=0).start()
    out = tracker.log_scales(summarize(two, both, n_resamples=20))
    assert tracker.log_image_table(images, scores) == 0  # log_images=0: no table
    page = tmp_path / "index.html"
    page.write_text("<html><body><h1>report</h1></body></html>")
    tracker.log_report(page, [images.image_path.iloc[0], tmp_path / "missing.pdf"])
    path = tracker.run_path
    tracker.finish()
    assert {"tiny_sd/pickscore@w=1", "other/pickscore@w=1"} <= set(out)
    summary = read_run(path)["summary"]
    assert summary["report"]["_type"] == "html-file" and summary[f"figures/{Path(images.image_path.iloc[0]).stem}"]
    assert "images_by_scale" not in summary


def test_disabled_and_other_ranks_log_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    t = Tracker(run_dir=tmp_path / "a", mode=None).start()
    assert not t.active and t.mode == "disabled"
    t.progress(1, 2)
    assert t.log_scales([{"metric": "m", "scale": 0.0, "mean": 1.0}]) == {}
    t.finish()
    assert not (tmp_path / "a" / "wandb").exists()
    other = Tracker(run_dir=tmp_path / "b", mode="offline", rank=1).start()
    assert not other.active and not (tmp_path / "b").exists()


def test_explicit_mode_wins_and_bad_modes_name_the_fix(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("offline") == "offline"  # a tracker preset the user picked
    assert resolve_mode(None) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode(None) == "offline"
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes'; use one of online, offline, disabled"):
        monkeypatch.setenv("WANDB_MODE", "sometimes")
        resolve_mode(None)
    with pytest.raises(ValueError, match="tracker.wandb.mode"):
        resolve_mode("loud")


def _mode_in_fresh_process(tmp_path: Path, netrc: str | None = None, settings: str | None = None) -> str:
    """resolve_mode(None) in a clean process: no WANDB_* variables, HOME, netrc and cwd in tmp_path."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / ".config" / "wandb"), NETRC=str(home / ".netrc"),
               PYTHONPATH=str(ROOT))
    (home / ".netrc").write_text(netrc or "")
    if settings is not None:  # what `wandb offline` / `wandb disabled` leave in the working directory
        (tmp_path / "wandb").mkdir(exist_ok=True)
        (tmp_path / "wandb" / "settings").write_text(f"[default]\nmode = {settings}\n")
    code = "from rlg.harness.tracking import resolve_mode; print(resolve_mode(None))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_mode_follows_the_users_wandb_setup(tmp_path):
    import wandb

    host = wandb.setup().settings.base_url.split("//")[-1].split("/")[0].split(":")[0]
    login = f"machine {host}\n  login user\n  password {'0' * 40}\n"  # a placeholder entry, never used
    assert _mode_in_fresh_process(tmp_path / "a") == "offline"  # no login: offline, not a failed upload
    assert _mode_in_fresh_process(tmp_path / "b", netrc=login) == "online"  # after `wandb login` / `wandb online`
    assert _mode_in_fresh_process(tmp_path / "c", netrc=login, settings="disabled") == "disabled"
