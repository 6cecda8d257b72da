"""Issue 21: every setting takes effect or is refused at start-up, before any work; a run whose evaluator
cannot score fails instead of reporting n = 0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlg.harness import build, runner
from rlg.harness.config import ConfigError
from rlg.store import Store


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
    assert len(ocr) == 2 * n and ocr.error.str.startswith("ValueError: OCR prompt has no text").all()  # 2 metrics
    assert ocr.value.isna().all()
    assert jpeg.image_key.nunique() == n and jpeg.error.isna().all()  # the other evaluator's scores are stored


# -- kind 6: refusals come before torch and diffusers are imported, and leave nothing on disk ---------------
CLI_PROBE = """
import sys
from pathlib import Path
from rlg.harness import cli
try:
    cli.main()
except SystemExit as exc:
    print("PROBE", exc.code, "torch" in sys.modules, "diffusers" in sys.modules)
    raise
"""


def run_cli(*args: str, timeout: int = 120):
    """``rlg-bench args`` in a subprocess that reports, when it exits, whether torch/diffusers were imported."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", CLI_PROBE, *args], cwd=root, capture_output=True, text=True,
                         timeout=timeout, env=env)
    return out, out.stdout + out.stderr


@pytest.mark.parametrize("override,message", [
    ("grid.scales=[0,abc]", "RLG scale #1 is 'abc' (str); scales must be finite numbers"),
    ("grid.scales=[0,1,1e6]", "grid.scales [1000000.0] are beyond |w| <= 10"),
    ("prompts.path=/nonexistent/prompts.txt", "prompt file /nonexistent/prompts.txt does not exist; fix prompts.path"),
    ("grid.scales=[1,1.0000001]", "differ from [1.0] only beyond 6 decimals, which the report cannot tell apart"),
])
def test_start_up_refusals_come_before_torch_and_leave_no_directory(tmp_path, override, message):
    out, text = run_cli("debug=fast", f"paths.root={tmp_path}", "name=x", override)
    assert out.returncode == 2, text[-2000:]
    assert message in text and "Traceback" not in text
    assert "PROBE 2 False False" in out.stdout  # exit 2 with neither torch nor diffusers imported
    assert not (tmp_path / "x").exists()


def test_large_scales_run_when_allowed_explicitly(compose):
    assert build.grid_scales([0, 1, 1e6], allow_large=True) == (0.0, 1.0, 1e6)
    job = build.build(compose("debug=fast", "grid.scales=[0,20]", "grid.allow_large_scales=true"))
    assert job.scales == (0.0, 20.0) and "allow_large_scales" not in str(job.identity)  # placement-only
    with pytest.raises(ConfigError, match=r"report would pool as \[0.3\]"):
        build.grid_scales([0.3, 0.1 + 0.2])  # float noise is not refused, but two of it are one scale


# -- kind 9: everyday interruptions get one line (what happened, what is safe, what to run) -------------------
def test_an_output_folder_that_cannot_be_made_gets_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    for root, reason in ((tmp_path / "afile", "is a file, not a folder"),
                         (tmp_path / "afile" / "sub", "Not a directory"), ("/proc/rlg-runs", "No such file")):
        out, text = run_cli("debug=fast", f"paths.root={root}", "name=m")
        assert out.returncode == 2 and "Traceback" not in text, text[-2000:]
        line = [x for x in out.stderr.splitlines() if x.startswith("rlg-bench:")]
        assert len(line) == 1 and reason in line[0] and "nothing was written" in line[0] and "paths.root=" in line[0]
        assert "PROBE 2 False False" in out.stdout


def test_ctrl_c_prints_one_line_naming_the_resume_command(tmp_path):
    import os
    import signal
    import subprocess
    import time

    root = Path(__file__).resolve().parent.parent
    args = ["debug=fast", f"paths.root={tmp_path}", "name=c", "prompts.samples_per_prompt=8", "sampler.batch_size=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}

    def default_sigint():  # Python keeps ignoring SIGINT if its parent ignored or blocked it (a backgrounded job's
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # Ctrl-C); the run once ended rc 0 in the
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # suite: start it as a terminal would, whatever this worker did

    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    parts = tmp_path / "c" / "rows" / "images"
    deadline = time.time() + 300
    while time.time() < deadline and not list(parts.glob("part-*.parquet")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted; make it longer"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    line = [x for x in stderr.splitlines() if "interrupted" in x]
    assert line == [f"rlg-bench: interrupted (Ctrl-C). Every image and score stored so far is kept; to resume, run "
                    f"the same command again: rlg-bench {' '.join(args)}"]
    assert len(Store(tmp_path / "c").images()) > 0  # what was stored stays


# -- kind 2: the report keeps apart the scales the store keeps apart ------------------------------------------
def test_the_report_keeps_apart_scales_that_differ_in_the_7th_decimal():
    import pandas as pd

    from rlg.report.stats import summarize
    from rlg.report.tables import format_scale

    scales = [1.0, 1.0000001, 0.1 + 0.2]  # the third is float noise of 0.3, the second a scale of its own
    images = pd.DataFrame([{"image_key": f"k{p}{i}", "prompt_id": p, "scale": w, "run_name": "r", "pair": "p",
                            "run_id": "x", "config_id": "c", "sample": 0, "seed": 0, "nonfinite": False}
                           for p in range(3) for i, w in enumerate(scales)])
    values = {(p, i): 10 * p + i for p in range(3) for i in range(3)}
    scores = pd.DataFrame([{"image_key": f"k{p}{i}", "evaluator": "e", "version": "v", "metric": "m", "value": v,
                            "higher_is_better": True, "error": None} for (p, i), v in values.items()])
    got = summarize(images, scores, n_resamples=10).set_index("scale")["mean"].to_dict()
    expected = {1.0: (0 + 10 + 20) / 3, 1.0000001: (1 + 11 + 21) / 3, 0.3: (2 + 12 + 22) / 3}  # by hand
    assert got == pytest.approx(expected)
    assert len({format_scale(w) for w in expected}) == 3 and format_scale(1.0000001) == "1.0000001"
