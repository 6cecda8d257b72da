"""Issue 21: every setting takes effect or is refused at start-up, before any work; a run whose evaluator
cannot score fails instead of reporting n = 0."""

from __future__ import annotations

import sys

import pytest

from rlg.harness import build, runner
from rlg.harness.config import ConfigError
from rlg.harness.store import Store


# -- kind 5: an evaluator's packages and weights are checked before generation --------------------------------
def test_a_missing_evaluator_package_is_refused_at_start_up_with_the_pip_command(compose, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "easyocr", None)  # importlib.util.find_spec now answers "not installed"
    cfg = compose("debug=fast", "evaluators.selected=[jpeg,ocr]", "prompts=tiny")
    with pytest.raises(ConfigError) as err:
        runner.run(cfg, run_dir=tmp_path / "r")
    msg = str(err.value)
    assert "\n" not in msg and "evaluator 'ocr' needs the package 'easyocr'" in msg
    assert "pip install -e '.[ocr]'" in msg
    assert not (tmp_path / "r").exists()  # nothing generated, nothing on disk
    build.build(compose("debug=fast", "evaluators.selected=[jpeg,ocr]", "prompts=tiny", "stage=generate"))  # not needed


def test_missing_evaluator_weights_are_refused_at_start_up(compose, tmp_path):
    cfg = compose("debug=fast", "evaluators.selected=[ocr]", "prompts=tiny",
                  f"+evaluators.options.ocr.model_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"needs EasyOCR's craft_mlt_25k.pth, english_g2.pth in .* \(option model_dir\)"):
        build.build(cfg)
    cfg = compose("debug=fast", "evaluators.selected=[digit_prob]", "+evaluators.options.digit_prob.weights=zoo:nope")
    with pytest.raises(ConfigError, match=r"zoo model 'zoo:nope' not found"):
        build.build(cfg)


def test_an_evaluator_that_fails_on_every_image_fails_the_run_and_keeps_each_failure(compose, tmp_path):
    run_dir = tmp_path / "r"
    runner.run(compose("debug=fast", "stage=generate"), run_dir=run_dir)
    n = len(Store(run_dir).images())
    # digit prompts have no quoted text: ocr fails on each stored image (recorded), jpeg scores every one
    with pytest.raises(runner.USER_ERRORS, match=rf"ocr failed on all {n} images \(first: ValueError: OCR prompt"):
        runner.run(compose("debug=fast", "stage=evaluate", "evaluators.selected=[jpeg,ocr]"), run_dir=run_dir)
    scores = Store(run_dir).scores()
    ocr, jpeg = scores[scores.evaluator == "ocr"], scores[scores.evaluator == "jpeg"]
    assert len(ocr) == n and ocr.error.str.startswith("ValueError: OCR prompt has no text").all()
    assert ocr.value.isna().all()
    assert jpeg.image_key.nunique() == n and jpeg.error.isna().all()  # the other evaluator's scores are stored
