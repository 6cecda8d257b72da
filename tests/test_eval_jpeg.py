"""JPEG compressibility against an independent encode of real photographs (scikit-image's data)."""

import io

import numpy as np
import PIL
import pytest
from PIL import Image
from skimage import data

from rlg.evaluators.base import Sample, get_evaluator, run_evaluator
from rlg.evaluators.jpeg import JpegCompressibility

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


def _photo(name: str, size: int) -> Image.Image:
    return Image.fromarray(PHOTOS[name]()).resize((size, size), Image.Resampling.BICUBIC)


def _reference_kb(image: Image.Image) -> float:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    return len(buf.getvalue()) / 1000


@pytest.mark.parametrize("size", [64, 256, 512])
def test_ddpo_convention_matches_independent_encode(size):
    ev = JpegCompressibility()
    samples = [Sample(f"{n}-{size}", _photo(n, size)) for n in PHOTOS]
    scores = ev.score(samples)
    for s, sc in zip(samples, scores):
        ref = _reference_kb(s.image)
        assert sc["jpeg_incompressibility"] == ref
        assert sc["jpeg_compressibility"] == -ref
        assert ref > 0.5  # a real encode, not an empty buffer


def test_size_grows_with_resolution_and_detail():
    ev = JpegCompressibility()
    kb = [ev.score([Sample("a", _photo("astronaut", s))])[0]["jpeg_incompressibility"] for s in (64, 256, 512)]
    assert kb[0] < kb[1] < kb[2]
    flat = Image.new("RGB", (512, 512), (120, 30, 200))
    assert ev.score([Sample("f", flat)])[0]["jpeg_incompressibility"] < kb[2] / 10


def test_flow_grpo_convention_scales_only_compressibility():
    img = _photo("coffee", 256)
    ref = _reference_kb(img)
    sc = JpegCompressibility(convention="flow_grpo_500").score([Sample("c", img)])[0]
    # flow_grpo/rewards.py: jpeg_incompressibility returns raw kB, jpeg_compressibility -kB/500
    assert sc["jpeg_incompressibility"] == ref
    assert sc["jpeg_compressibility"] == pytest.approx(-ref / 500, rel=1e-12)


def test_non_rgb_input_is_scored_as_uint8_rgb():
    rgba = _photo("chelsea", 128).convert("RGBA")
    sc = JpegCompressibility().score([Sample("r", rgba)])[0]
    assert sc["jpeg_incompressibility"] == _reference_kb(rgba.convert("RGB"))


def test_version_and_registry():
    ev = get_evaluator("jpeg", convention="flow_grpo_500", quality=90)
    assert isinstance(ev, JpegCompressibility)
    assert "flow_grpo_500" in ev.version and "q90" in ev.version and PIL.__version__ in ev.version
    assert "libjpeg" in ev.version
    assert ev.metrics == {"jpeg_incompressibility": True, "jpeg_compressibility": True}
    img = _photo("astronaut", 64)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    rows = [r for rows in run_evaluator(ev, [Sample("k", img)]) for r in rows]
    assert {r.metric: r.value for r in rows}["jpeg_incompressibility"] == buf.tell() / 1000
    assert all(r.version == ev.version for r in rows)


def test_unknown_convention_names_the_choices():
    with pytest.raises(ValueError, match="ddpo_kb, flow_grpo_500"):
        JpegCompressibility(convention="kb")


def test_pixel_values_drive_the_score():
    # Same size, different content: noise is far less compressible than a smooth photo.
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    ev = JpegCompressibility()
    a = ev.score([Sample("n", noise), Sample("p", _photo("coffee", 256))])
    assert a[0]["jpeg_incompressibility"] > 2 * a[1]["jpeg_incompressibility"]


@pytest.mark.parametrize("direction,metric,sign", [("compressibility", "jpeg_compressibility", -1),
                                                   ("incompressibility", "jpeg_incompressibility", 1)])
def test_one_direction_stores_only_the_reward_it_names(direction, metric, sign):
    img = _photo("astronaut", 128)
    ev = JpegCompressibility(direction=direction)
    assert ev.metrics == {metric: True} and JpegCompressibility.metrics != ev.metrics  # the class keeps both
    assert ev.score([Sample("a", img)]) == [{metric: sign * _reference_kb(img)}]
    assert ev.version.endswith("/" + direction) and ev.version != JpegCompressibility().version
    rows = [r for batch in run_evaluator(ev, [Sample("a", img)]) for r in batch]
    assert [(r.metric, r.value) for r in rows] == [(metric, sign * _reference_kb(img))]


def test_unknown_direction_names_the_allowed_values():
    with pytest.raises(ValueError, match="unknown jpeg direction 'smaller'; use one of compressibility, "
                                         "incompressibility, both"):
        JpegCompressibility.check_options(direction="smaller")
