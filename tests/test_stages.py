"""rlg.harness.stages: what generation and evaluation record per image (NaNs, failing evaluators,
truncated prompts) and what they refuse before any work."""

from __future__ import annotations

import pandas as pd
import pytest

from rlg.harness import runner
from rlg.harness.config import ConfigError
from rlg.harness.prompts import PromptError
from rlg.store import Store
from tests.helpers.runs import FAST, one_thread, cfg_of  # noqa: F401  (one_thread: autouse)


def test_nonfinite_images_are_flagged_with_their_step_and_left_out_of_means(tmp_path, capsys):
    run = tmp_path / "nan"
    entry = runner.run(cfg_of(*FAST, "grid.scales=[0,1,1e30]", "grid.allow_large_scales=true", "prompts.max_prompts=1"), run_dir=run)
    images = Store(run).images().set_index("scale")
    assert images.loc[1e30, "nonfinite"] and images.loc[1e30, "nonfinite_step"] >= 0
    assert not images.loc[0.0, "nonfinite"] and pd.isna(images.loc[0.0, "nonfinite_step"])
    assert entry["generate"]["nonfinite"] == 1  # the run went on
    summary = pd.read_csv(run / "report" / "tables" / "summary.csv")
    at = summary[summary.scale == 1e30]
    assert (at.n_nonfinite == 1).all() and at["mean"].isna().all() and (at.n == 0).all()
    assert summary[summary.scale == 1.0]["mean"].notna().all()
    table = next((run / "report" / "tables").glob("metrics_*.md")).read_text()
    assert "1 nonfinite" in table
    assert "(1 nonfinite, excluded)" in capsys.readouterr().out


def test_an_evaluator_failing_on_one_image_records_that_image_only(tmp_path):
    """The real OCR evaluator through the runner, on a prompt with no quoted target."""
    run = tmp_path / "ocr"
    items = "prompts.items=['a sign that says \"OPEN\"','a quiet lake at dawn']"
    base = [*FAST, "prompts=tiny", items, "grid.scales=[0,1]"]
    # with ocr selected, such a prompt is refused before anything is generated ...
    with pytest.raises(PromptError, match=r"(?s)1 of 2 prompts have no text inside double quotes.*#1 'a quiet lake"):
        runner.run(cfg_of(*base, "evaluators.selected=[jpeg,ocr]"), run_dir=run)
    assert not (run / "images").exists()
    # ... but images that already exist are scored, and the failure is recorded per image
    runner.run(cfg_of(*base, "stage=generate"), run_dir=run)
    entry = runner.run(cfg_of(*base, "stage=all", "evaluators.selected=[ocr]"), run_dir=run)
    assert entry["evaluate"]["ocr"]["failed_rows"] == 4  # 2 images x 2 metrics (ocr_accuracy, ocr_confidence)
    images, scores = Store(run).images(), Store(run).scores()
    ocr = scores[scores.evaluator == "ocr"].merge(images[["image_key", "prompt"]], on="image_key")
    bad = ocr[ocr.prompt == "a quiet lake at dawn"]
    good = ocr[ocr.prompt != "a quiet lake at dawn"]
    assert len(bad) == 4 and bad.value.isna().all() and bad.error.str.contains("double quotes").all()
    assert len(good) == 4 and good.value.notna().all() and good.error.isna().all()
    summary = pd.read_csv(run / "report" / "tables" / "summary.csv")
    acc = summary[summary.metric == "ocr_accuracy"]
    assert acc.n_failed.sum() == 2 and acc.n.sum() == 2


def test_unknown_sampler_arguments_are_refused_before_generation(tmp_path):
    with pytest.raises(ConfigError, match=r"sampler.extra.strength_typo is not declared in rlg.surface.CALL_KEYWORDS"):
        runner.run(cfg_of(*FAST, "+sampler.extra.strength_typo=1"), run_dir=tmp_path / "x")
    assert not Store(tmp_path / "x").images().shape[0]


def test_prompts_longer_than_the_text_encoder_are_flagged_truncated(tmp_path):
    long = "a watercolor painting of " + " and ".join(f"a small red house number {i}" for i in range(40))
    run = tmp_path / "long"
    runner.run(cfg_of(*FAST, "stage=generate", "grid.scales=[1]", f"prompts.items=['a cat','{long}']"),
                   run_dir=run)
    images = Store(run).images().set_index("prompt")
    assert images.loc[long, "truncated"] and not images.loc["a cat", "truncated"]
