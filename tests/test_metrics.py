"""One metric registry (rlg.metrics): every evaluator declares what it writes, the run's reward is decided once
at build time, and every reader (headline, methods section, trade-off figures, glossary, W&B, console) names
the same reward. The two presets whose reward is not the default order's pick are built for real
(rlg.harness.api.job); their report is written from a synthetic store with known values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rlg import metrics
from rlg.evaluators.base import REGISTRY, evaluator_class, metrics_of


def test_every_evaluator_declares_each_metric_it_writes_once():
    ranks = []
    for name in REGISTRY:
        cls = evaluator_class(name)
        declared = {m.id: m for m in cls.declares}
        assert set(cls.metrics) <= set(declared), name  # nothing written without its declaration
        for m in declared.values():
            assert metrics.metric(m.id) is m and m.label and m.definition and m.roles, m
            assert cls.metrics.get(m.id, m.higher_is_better) == m.higher_is_better  # direction written once
            ranks += [m.reward_rank] if m.reward_rank is not None else []
    assert len(ranks) == len(set(ranks))  # the default order is a strict order
    with pytest.raises(ValueError, match="declared twice"):
        metrics.register_metrics(metrics.Metric("pickscore", "other", "", True, ("quality",), "x"))
    with pytest.raises(ValueError, match="unknown role"):
        metrics.Metric("x", "x", "", True, ("beauty",), "x")


def test_option_dependent_metrics_and_the_default_order():
    assert [m.id for m in metrics_of("jpeg", {"direction": "compressibility"})] == ["jpeg_compressibility"]
    assert [m.id for m in metrics_of("hps", {"hps_version": "v2.0"})] == ["hps_v2.0"]
    assert [m.id for m in metrics_of("geneval", {})] == ["geneval_overall", "geneval_correct"]  # overall: derived
    assert metrics.pick_reward(["pickscore", "ocr_accuracy", "jpeg_compressibility"]) == "ocr_accuracy"
    assert metrics.pick_reward(["digit_prob", "jpeg_compressibility"]) == "digit_prob"
    assert metrics.pick_reward(["b_unknown", "a_unknown"]) == "a_unknown" and metrics.pick_reward([]) is None
    reward, note = metrics.settle_reward(["digit_prob", "jpeg_incompressibility"], "digit_margin", "written here",
                                         "fix it")
    assert reward == "digit_prob" and note == ("report.reward=digit_margin was not written here, so the run's reward "
                                               "is digit_prob (the default order); fix it or set report.reward to one "
                                               "of digit_prob, jpeg_incompressibility")


def test_the_first_screen_says_what_ran_from_the_job():
    from rlg.harness.api import job
    from rlg.harness.stages import what_ran

    assert what_ran(job("experiment=methods_zoo_compress", "stage=report")) == (
        "Ran pair zoo_digits_ddpo_compress_v1 for the reward JPEG compressibility (−kB) [jpeg_compressibility]: 10 "
        "prompts x 4 samples per prompt at RLG scales w = 0, 0.5, 1, 2, 3 (and weight_mix, cfg_rl, best_of_n); sampler "
        "zoo_digits: 20 steps, scheduler ddim, eta 1, CFG 2.")
    assert what_ran(job("experiment=tiny", "stage=report", "prompts.samples_per_prompt=1")).startswith(
        "Ran pair tiny_sd_peft for the reward OCR accuracy [ocr_accuracy]: 4 prompts x 1 sample per prompt at RLG "
        "scales w = 0, 0.5, 1, 1.5, 2; sampler tiny: 6 steps, the pipeline's default scheduler, CFG 4.5.")


def _store(tmp_path, reward: str, others: list[str], methods: bool):
    """4 prompts x 2 samples at w in {0, 1, 2} (and weight mixing at the same knobs when ``methods``); the reward
    rises with w, every other metric falls with it."""
    rows, scores = [], []
    for method in ("rlg", "weight_mix") if methods else ("rlg",):
        for p in range(4):
            for s in range(2):
                for w in (0.0, 1.0, 2.0):
                    key = f"{method}-{p}-{s}-{w:g}"
                    path = tmp_path / "img" / f"{key}.png"
                    path.parent.mkdir(exist_ok=True)
                    Image.new("RGB", (8, 8), (30 * p, 60 * s, int(50 * w))).save(path)
                    rows.append(dict(image_key=key, run_id="r", run_name="run", config_id="c", pair="zoo",
                                     prompt_id=p, prompt=f"a handwritten digit {p}", sample=s, seed=s, scale=w,
                                     image_path=str(path), nonfinite=False, method=method, knob=w, candidate=0,
                                     nfe_base=20, nfe_rl=20 if method == "rlg" else 0, wall_s=0.1, pick=None))
                    value = {reward: 1 + w + 0.1 * p + 0.01 * s}
                    value.update({m: 2 - w + 0.1 * p for m in others})
                    for m, v in value.items():
                        ev = ("jpeg" if m.startswith("jpeg") else "digit_fd" if m == "digit_mahalanobis"
                              else "digit_prob")
                        scores.append(dict(image_key=key, evaluator=ev, version="v", metric=m, value=v,
                                           higher_is_better=metrics.metric(m).higher_is_better, error=None))
    return pd.DataFrame(rows), pd.DataFrame(scores)


@pytest.mark.parametrize("preset, reward, methods", [
    ("methods_zoo_compress", "jpeg_compressibility", True),  # the default order would pick digit_prob
    ("zoo_sd_dpo", "digit_margin", False),  # digit_margin has no default rank at all
])
def test_a_presets_reward_is_named_in_every_section_and_on_wandb(tmp_path, preset, reward, methods, monkeypatch,
                                                                 capsys):
    from rlg.harness.api import job as build_job
    from rlg.harness.runner import _print_summary, _tracker
    from rlg.harness.stages import what_ran
    from rlg.harness.tracking import read_run
    from rlg.report.report import write_report
    from rlg.store import Store

    job = build_job(f"experiment={preset}", "stage=report", f"paths.root={tmp_path}", "tracker=wandb_offline")
    assert job.reward == reward and job.reward_note is None
    others = [m.id for m in job.metrics if m.id != reward and not m.derived]
    images, scores = _store(tmp_path, reward, others, methods)
    out = write_report(images, scores, tmp_path / "report", anchors=[], grid_prompts=0, n_resamples=20,
                       formats=("png",), reward=job.reward, reward_note=job.reward_note, run_line=what_ran(job))
    label = metrics.label(reward)
    assert out["reward"] == reward and out["headlines"][0].startswith(f"{label} is ")
    page = (tmp_path / "report" / "index.md").read_text()
    assert f"{metrics.title(reward)}: reward (higher is better)" in page  # the headline table's first row
    assert page.index(what_ran(job)) < page.index(out["headlines"][0])  # what ran, before the numbers
    trade = sorted(p.name for p in (tmp_path / "report" / "figures").glob("tradeoff_*.png"))
    assert trade and all(n.startswith(f"tradeoff_{reward}__") for n in trade)
    if methods:
        assert out["methods"]["reward"] == reward and f"Reward axis: {reward}." in page
        assert not out["methods"]["equivalence"].empty  # RLG's reward bracketed by weight mixing on that axis
    _print_summary(out["summary"], job.reward)
    assert capsys.readouterr().out.startswith(f"reward: {metrics.title(reward)}\n")

    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = _tracker(job, Store(tmp_path / "run"), "job", None, "0123456789ab").start()
    logged = tracker.log_scales(out["summary"], reward=job.reward)
    path = tracker.run_path
    tracker.finish()
    run = read_run(path)
    best = max(r["mean"] for r in out["summary"] if r["metric"] == reward)
    assert run["config"]["reward"] == reward and run["config"]["metrics"][reward] == label
    assert run["summary"]["reward"] == reward and run["summary"]["reward@best_w"] == pytest.approx(best)
    assert logged[f"{reward}@best_w"] == logged["reward@best_w"] and logged["reward/best_w"] == 2.0
    assert np.isfinite(logged["reward@w=1"])
