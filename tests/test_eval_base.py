"""rlg.evaluators.base.score_images: in-memory images through the runner, failures isolated per image."""

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
