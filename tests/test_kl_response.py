"""The response check before the zoo KL claim (rlg.kl_response) and the resumable training of the claim's models
(rlg.kl_claim.ensure_models), with a stand-in trainer and sampler: no training, no diffusion sampling. The stand-in
"model" (tests.helpers.trainers.bytes_lora) is a file of bytes that encodes (beta, seed); the stand-in sampler draws images whose JPEG size follows
the model, so the scores, the response and the resumption can be checked exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from rlg.grid import Grid
from rlg.kl_claim import KLClaimSettings, ensure_models, model_dir
from rlg.kl_response import measure_response, response_models, response_summary


TRAINER = "tests.helpers.trainers:bytes_lora"  # writes "beta seed" as the weights; logs calls to calls.txt
GRID = Grid(("a handwritten digit 1", "a handwritten digit 7"), (1.0,), samples=2)


def trained(tmp_path) -> list[tuple[float, int]]:
    """The (beta, seed) the stand-in trainer was called with, in order."""
    f = tmp_path / "weights" / "kl_t" / "calls.txt"
    return [(float(b), int(s)) for b, s in (line.split() for line in f.read_text().splitlines())] if f.exists() else []


def fake_sample(calls):
    """uint8 (N, 16, 16, 3) images: a noise patch whose size grows with 1/beta + seed (JPEG size moves with it)."""
    def sample(grid, path):
        beta, seed = (path / "pytorch_lora_weights.safetensors").read_bytes().decode().split()
        calls.append(path.name)
        n = len(grid.prompts) * grid.samples
        side = min(16, 2 + round(0.1 / float(beta)) + int(seed))
        rng = np.random.default_rng(0)  # the same noise for every model: paired
        out = np.full((n, 16, 16, 3), 128, np.uint8)
        out[:, :side, :side] = rng.integers(0, 256, (n, side, side, 3))
        return out
    return sample


def make_settings(tmp_path, **kw):
    opts = dict(task="t", base="zoo:digits_base", trainer=TRAINER, train_missing=True, beta=0.1, scales=[1.0, 3.0],
                source_seed=0, floor_seeds=[1, 2], weights_dir=str(tmp_path / "weights"),
                metrics=["jpeg:jpeg_incompressibility"], set_metrics=[], features="pixels", n_batches=2,
                progress=False)
    opts.update(kw)
    return KLClaimSettings(**opts)


def test_response_models_pair_each_seed_and_refuse_bad_input():
    assert response_models(0.1, 3.0, [1, 2]) == [(0.1, 1), (0.1 / 3, 1), (0.1, 2), (0.1 / 3, 2)]
    with pytest.raises(ValueError, match="w must be > 1"):
        response_models(0.1, 1.0, [1, 2])
    with pytest.raises(ValueError, match=">= 2 distinct training seeds"):
        response_models(0.1, 3.0, [1, 1])


def test_response_summary_matches_scipy_welch_and_paired():
    means = {(0.1, 1): 1.00, (0.1, 2): 1.02, (0.1, 3): 0.99, (0.05, 1): 1.10, (0.05, 2): 1.13, (0.05, 3): 1.09}
    scores = {f"b{b}_s{s}": {"beta": b, "seed": s, "m": [v - 0.01, v + 0.01]} for (b, s), v in means.items()}
    got = response_summary(scores, 0.1, 2.0, "m")
    hi, lo = [means[(0.1, s)] for s in (1, 2, 3)], [means[(0.05, s)] for s in (1, 2, 3)]
    ref = stats.ttest_ind(lo, hi, equal_var=False)
    assert got["welch"]["estimate"] == pytest.approx(np.mean(lo) - np.mean(hi))
    assert got["welch"]["p"] == pytest.approx(ref.pvalue) and got["welch"]["t"] == pytest.approx(ref.statistic)
    assert got["paired"]["p"] == pytest.approx(stats.ttest_rel(lo, hi).pvalue)
    pooled = math.sqrt((np.var(hi, ddof=1) + np.var(lo, ddof=1)) / 2)
    assert got["seed_sd"]["pooled"] == pytest.approx(pooled)
    assert got["ratio"] == pytest.approx(abs(np.mean(lo) - np.mean(hi)) / pooled)
    with pytest.raises(ValueError, match="need >= 2 models at beta 0.1 and at beta/w 0.05"):
        response_summary({k: v for k, v in scores.items() if v["beta"] == 0.1 or v["seed"] == 1}, 0.1, 2.0, "m")


def test_training_resumes_where_it_stopped_and_records_each_model_at_once(tmp_path):
    models = response_models(0.1, 3.0, [1, 2])
    broken = make_settings(tmp_path, trainer_kwargs={"fail_at": list(models[2])})
    with pytest.raises(KeyboardInterrupt):
        ensure_models(broken, models)
    assert trained(tmp_path) == models[:2]
    manifest = json.loads((tmp_path / "kl_manifest.json").read_text())["models"]
    assert sorted(manifest) == sorted(f"kl_t/{model_dir(broken, b, s).name}" for b, s in models[:2])  # before the crash
    cfg = json.loads((model_dir(broken, *models[0]) / "training_config.json").read_text())
    assert cfg["environment"]["torch_threads"] >= 1 and len(cfg["load_average_1min"]) == 2
    assert cfg["train_seconds"] >= 0 and cfg["base"] == "zoo:digits_base"

    paths = ensure_models(make_settings(tmp_path), models)  # the same call continues: finished ones skipped
    assert trained(tmp_path) == models  # the cut-short model retrained, nothing else
    assert (paths[models[2]] / "pytorch_lora_weights.safetensors").read_bytes() != b"half"
    assert len(json.loads((tmp_path / "kl_manifest.json").read_text())["models"]) == 4


def test_measure_response_scores_each_model_once_and_rescores_changed_weights(tmp_path):
    from PIL import Image

    from rlg.evaluators.jpeg import jpeg_kb

    sampled = []
    s = make_settings(tmp_path)
    out = tmp_path / "response.json"
    got = measure_response(s, GRID, 3.0, [1, 2], out, sample=fake_sample(sampled), log=lambda m: None)
    assert len(trained(tmp_path)) == 4 and len(sampled) == 4
    images = fake_sample([])(GRID, model_dir(s, 0.1 / 3, 2))  # an independent recomputation of one model's score
    assert got["models"][model_dir(s, 0.1 / 3, 2).name] == pytest.approx(
        [jpeg_kb(Image.fromarray(im)) for im in images])
    assert got["welch"]["estimate"] > 0  # smaller beta, larger patch, larger JPEG

    again = measure_response(s, GRID, 3.0, [1, 2], out, sample=fake_sample(sampled), log=lambda m: None)
    assert len(trained(tmp_path)) == 4 and len(sampled) == 4 and again["welch"] == got["welch"]

    (model_dir(s, 0.1, 1) / "pytorch_lora_weights.safetensors").write_bytes(b"0.1 5")  # changed weights
    measure_response(s, GRID, 3.0, [1, 2], out, sample=fake_sample(sampled), log=lambda m: None)
    assert sampled[4:] == [model_dir(s, 0.1, 1).name]
