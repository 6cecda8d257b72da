"""rlg.evaluators.base: score_images (in-memory images through the runner, failures isolated per image), and a new
evaluator registered at runtime being the reward of every report section and W&B."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rlg.evaluators.base import score_images


def _kb(array: np.ndarray) -> float:  # DDPO's convention, encoded here independently
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95)
    return len(buf.getvalue()) / 1000


class Fragile:
    """Scores the mean pixel; raises on an all-black image (and so on any batch holding one)."""

    name, version, metrics, needs = "fragile", "test-1", {"mean_pixel": True}, frozenset({"image", "prompt"})

    def __init__(self):
        self.calls = []

    def score(self, batch):
        self.calls.append(len(batch))
        if any(not np.asarray(s.image).any() for s in batch):
            raise ValueError("black image")
        return [{"mean_pixel": float(np.asarray(s.image).mean()) + len(s.prompt)} for s in batch]


def test_scores_are_in_image_order_and_a_failing_image_records_its_own_error():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    images[2] = 0
    frag = Fragile()
    out = score_images([frag, "jpeg"], images, prompts=["a", "bb", "c", "dd", "e"], batch_size=4)
    want = [im.mean() + len(p) for im, p in zip(images, ["a", "bb", "c", "dd", "e"])]
    assert np.isnan(out["mean_pixel"][2]) and out.errors["fragile"][2] == "ValueError: black image"
    np.testing.assert_array_equal(np.delete(out["mean_pixel"], 2), np.delete(want, 2))
    assert frag.calls == [4, 1, 1, 1, 1, 1]  # the failing batch retried image by image; the last batch alone
    assert out.failed == 1 and out.errors["jpeg"] == (None,) * 5
    assert list(out["jpeg_incompressibility"]) == [_kb(im) for im in images]  # PIL images or arrays alike
    assert out.versions["fragile"] == "test-1"


def test_bad_calls_are_refused_before_scoring():
    images = [np.zeros((8, 8, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="3 images need one prompt"):
        score_images("jpeg", images, prompts=["a", "b"])
    with pytest.raises(ValueError, match=r"metric name\(s\) \['jpeg_compressibility'"):
        score_images(["jpeg", "jpeg"], images)


def _toy_brightness():
    """A new evaluator as a user writes it in its own module: its metric declared where it is defined."""
    from rlg.metrics import Metric, directions, register_metrics

    class ToyBrightness:
        name, version, needs = "toy_brightness", "toy-1", frozenset({"image"})
        declares = register_metrics(Metric("toy_brightness", "toy brightness", "fraction", True, ("reward",),
                                           "toy brightness: mean pixel value / 255; higher is better."))
        metrics = directions(declares)

        def __init__(self, batch_size: int = 16):
            self.batch_size = batch_size

        def score(self, batch):
            return [{"toy_brightness": float(np.asarray(s.image, dtype=np.float64).mean() / 255)} for s in batch]

    return ToyBrightness


@pytest.fixture
def toy_evaluator(monkeypatch):
    """The toy evaluator registered with one registry call; it and its metric gone after the test."""
    from rlg import metrics
    from rlg.evaluators.base import REGISTRY

    monkeypatch.setattr(metrics, "REGISTRY", dict(metrics.REGISTRY))
    monkeypatch.setattr(REGISTRY, "_entries", dict(REGISTRY._entries))
    monkeypatch.setattr(REGISTRY, "_loaded", dict(REGISTRY._loaded))
    REGISTRY.register("toy_brightness", _toy_brightness())


def test_a_new_evaluator_is_its_module_and_one_registry_line(toy_evaluator, tmp_path, monkeypatch, capsys):
    """Registered at runtime (no file of rlg/ knows it) and named by report.reward, its metric is the reward of the
    headline, the tables, the trade-off figures, the Methods section, the console and the W&B columns."""
    import rlg
    from rlg.harness.tracking import read_run
    from rlg.metrics import title

    monkeypatch.delenv("WANDB_MODE", raising=False)
    res = rlg.run("tiny", [f"paths.root={tmp_path}", "evaluators.selected=[jpeg,toy_brightness]",
                           "report.reward=toy_brightness", "method=[rlg,weight_mix]", "tracker=wandb_offline",
                           "sampler.num_inference_steps=2", "grid.scales=[0,1,2]", "prompts.max_prompts=2",
                           "prompts.samples_per_prompt=2", "report.n_resamples=20", "report.grid_prompts=0"])
    out = capsys.readouterr().out
    values = res.scores[res.scores.metric == "toy_brightness"]
    assert len(values) == 2 * 2 * 3 * 2 and values.reward.all() and not res.scores[~res.scores.reward].empty
    assert values.label.unique().tolist() == ["toy brightness"]
    page = (res.run_dir / "report" / "index.md").read_text()
    assert res.headlines[0].startswith("toy brightness is ") and res.headlines[0] in page
    assert f"{title('toy_brightness')}: reward (higher is better)" in page  # the headline table's first row
    assert "Reward axis: toy_brightness." in page  # the Methods section
    figures = sorted(p.name for p in (res.run_dir / "report" / "figures").glob("tradeoff_*.png"))
    assert figures and all(n.startswith("tradeoff_toy_brightness__") for n in figures)
    assert f"reward: {title('toy_brightness')}\n" in out  # the console summary
    summary = res.summary[res.summary.metric == "toy_brightness"]
    run = read_run(res.meta["wandb_dir"])
    assert run["config"]["reward"] == "toy_brightness"
    assert run["config"]["metrics"]["toy_brightness"] == "toy brightness"
    assert run["summary"]["reward"] == "toy_brightness"
    assert run["summary"]["reward@best_w"] == pytest.approx(summary["mean"].max())
