"""GenEval: the rule engine on hand-made detections, aggregation, metadata, and the real model loading paths
(tiny random Mask2Former and open_clip models saved in their upstream layouts)."""

import importlib.util
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rlg.evaluators.base import Sample, get_evaluator, run_evaluator
from rlg.evaluators.geneval import (
    COLORS,
    OBJECT_NAMES,
    TAGS,
    Detection,
    GenEval,
    MetadataError,
    evaluate_detections,
    load_metadata,
    relative_position,
    select_objects,
    summarize,
)
from rlg.evaluators.geneval.detectors import (
    class_names_from_labels,
    instance_postprocess,
    mmdet_resize_shape,
    preprocess,
)

METADATA = "geneval/evaluation_metadata.jsonl"  # in the upstream data files (tests/helpers/shared_data.py)


# ---- helpers ------------------------------------------------------------------------------------


def det(cls, score, box=(0, 0, 10, 10), colour=None):
    d = Detection(cls, score, tuple(float(v) for v in box))
    d.colour = colour  # read by StubColours only; not part of the data structure
    return d


class StubColours:
    """Stand-in colour classifier: returns each detection's preset colour and records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, dets, classname):
        self.calls.append((classname, list(dets)))
        return [d.colour for d in dets]


def run(row, dets, **kw):
    stub = StubColours()
    correct, reason = evaluate_detections(row, dets, stub, **kw)
    return correct, reason, stub


SINGLE = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
TWO = {"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}],
       "prompt": "a photo of a bench and a sports ball"}
COUNTING = {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
            "prompt": "a photo of two clocks"}
COLOURS = {"tag": "colors", "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}],
           "prompt": "a photo of a blue fire hydrant"}
POSITION = {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                            {"class": "dog", "count": 1, "position": ["right of", 0]}],
            "prompt": "a photo of a dog right of a teddy bear"}
COLOR_ATTR = {"tag": "color_attr", "include": [{"class": "wine glass", "count": 1, "color": "purple"},
                                                {"class": "apple", "count": 1, "color": "black"}],
              "prompt": "a photo of a purple wine glass and a black apple"}


# ---- rule engine, one tag at a time ---------------------------------------------------------------


def test_single_object():
    assert run(SINGLE, [det("bench", 0.31)])[:2] == (True, "")
    # strictly above 0.3
    assert run(SINGLE, [det("bench", 0.3)])[:2] == (False, "expected bench>=1, found 0")
    assert run(SINGLE, [det("chair", 0.99)])[:2] == (False, "expected bench>=1, found 0")
    # extra objects of other classes do not matter
    assert run(SINGLE, [det("bench", 0.5), det("dog", 0.9), det("dog", 0.8)])[0] is True


def test_two_object():
    assert run(TWO, [det("bench", 0.6), det("sports ball", 0.4)])[:2] == (True, "")
    correct, reason, _ = run(TWO, [det("bench", 0.6), det("sports ball", 0.2)])
    assert (correct, reason) == (False, "expected sports ball>=1, found 0")
    correct, reason, _ = run(TWO, [])
    assert (correct, reason) == (False, "expected bench>=1, found 0\nexpected sports ball>=1, found 0")


def test_counting_uses_threshold_0_9_and_exclude():
    assert run(COUNTING, [det("clock", 0.95), det("clock", 0.91)])[:2] == (True, "")
    # a third clock at 0.5 would count under 0.3 but not under counting's 0.9
    assert run(COUNTING, [det("clock", 0.95), det("clock", 0.91), det("clock", 0.5)])[0] is True
    # exactly 0.9 is not above the threshold
    assert run(COUNTING, [det("clock", 0.95), det("clock", 0.9)])[:2] == (False, "expected clock>=2, found 1")
    # three confident clocks trip the exclude clause (count >= 3)
    assert run(COUNTING, [det("clock", 0.95)] * 3)[:2] == (False, "expected clock<3, found 3")
    # both include and exclude reasons are reported
    one = {**COUNTING, "include": [{"class": "clock", "count": 4}]}
    assert run(one, [det("clock", 0.95)] * 3)[:2] == (False, "expected clock>=4, found 3\nexpected clock<3, found 3")


def test_threshold_depends_on_tag_only():
    dets = [det("cup", 0.95), det("cup", 0.5), det("cup", 0.31), det("cup", 0.2)]
    assert [d.score for d in select_objects(dets, "counting")["cup"]] == [0.95]
    assert [d.score for d in select_objects(dets, "two_object")["cup"]] == [0.95, 0.5, 0.31]
    assert select_objects([det("cup", 0.85)], "counting") == {}


def test_exclude_clauses_are_ored():
    row = {"tag": "single_object", "include": [{"class": "cat", "count": 1}],
           "exclude": [{"class": "dog", "count": 1}, {"class": "bird", "count": 2}]}
    assert run(row, [det("cat", 0.9), det("bird", 0.9)])[:2] == (True, "")
    assert run(row, [det("cat", 0.9), det("dog", 0.31)])[:2] == (False, "expected dog<1, found 1")
    assert run(row, [det("cat", 0.9), det("bird", 0.9), det("bird", 0.4)])[:2] == (False, "expected bird<2, found 2")
    # an excluded object below the threshold is not counted
    assert run(row, [det("cat", 0.9), det("dog", 0.29)])[0] is True


def test_max_16_objects_per_class_and_no_nms_by_default():
    cups = [det("cup", 0.5 + i / 100, (0, 0, 10, 10)) for i in range(20)]  # identical boxes
    kept = select_objects(cups, "single_object")["cup"]
    assert len(kept) == 16  # no NMS: identical boxes all survive, only the cap bites
    assert [d.score for d in kept] == sorted((d.score for d in cups), reverse=True)[:16]
    row = {"tag": "single_object", "include": [{"class": "cup", "count": 1}], "exclude": [{"class": "cup", "count": 17}]}
    assert run(row, cups)[0] is True  # 20 cups detected but only 16 ever count
    # with upstream's optional NMS (max_overlap < 1) overlapping boxes are suppressed
    assert len(select_objects(cups, "single_object", nms_threshold=0.5)["cup"]) == 1
    apart = [det("cup", 0.9, (0, 0, 10, 10)), det("cup", 0.8, (50, 50, 60, 60))]
    assert len(select_objects(apart, "single_object", nms_threshold=0.5)["cup"]) == 2


def test_colors_judged_on_top_detection_only():
    blue_top = [det("fire hydrant", 0.8, colour="blue"), det("fire hydrant", 0.5, colour="red")]
    correct, reason, stub = run(COLOURS, blue_top)
    assert (correct, reason) == (True, "")
    assert stub.calls == [("fire hydrant", [blue_top[0]])]  # only the top-count (1) detection is classified

    red_top = [det("fire hydrant", 0.8, colour="red"), det("fire hydrant", 0.5, colour="blue")]
    correct, reason, stub = run(COLOURS, red_top)
    assert (correct, reason) == (False, "expected blue fire hydrant>=1, found 0 blue; and 1 red")
    assert stub.calls == [("fire hydrant", [red_top[0]])]

    # no colour call when the object is missing
    correct, reason, stub = run(COLOURS, [])
    assert (correct, stub.calls) == (False, [])


def test_colour_with_count_two_checks_both_top_objects():
    row = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}], "prompt": "two red cars"}
    dets = [det("car", 0.9, colour="red"), det("car", 0.8, colour="green"), det("car", 0.7, colour="red")]
    correct, reason, stub = run(row, dets)
    assert (correct, reason) == (False, "expected red car>=2, found 1 red; and 1 red, 1 green")
    assert [d.score for d in stub.calls[0][1]] == [0.9, 0.8]


def test_color_attr():
    good = [det("wine glass", 0.7, colour="purple"), det("apple", 0.6, colour="black")]
    correct, reason, stub = run(COLOR_ATTR, good)
    assert (correct, reason) == (True, "")
    assert [c for c, _ in stub.calls] == ["wine glass", "apple"]
    bad = [det("wine glass", 0.7, colour="purple"), det("apple", 0.6, colour="red")]
    assert run(COLOR_ATTR, bad)[:2] == (False, "expected black apple>=1, found 0 black; and 1 red")


def test_position():
    teddy = det("teddy bear", 0.9, (0, 0, 100, 100))
    assert run(POSITION, [teddy, det("dog", 0.9, (150, 0, 250, 100))])[:2] == (True, "")
    correct, reason, _ = run(POSITION, [teddy, det("dog", 0.9, (-150, 0, -50, 100))])
    assert (correct, reason) == (False, "expected dog right of target, found left of target")
    # overlapping: no relation at all
    correct, reason, _ = run(POSITION, [teddy, det("dog", 0.9, (5, 0, 105, 100))])
    assert (correct, reason) == (False, "expected dog right of target, found  target")
    # missing target: both clauses fail
    correct, reason, _ = run(POSITION, [det("dog", 0.9, (150, 0, 250, 100))])
    assert (correct, reason) == (False, "expected teddy bear>=1, found 0\nno target for dog to be right of")
    # only the top dog is checked; a lower-scoring dog on the wrong side is ignored
    dets = [teddy, det("dog", 0.9, (150, 0, 250, 100)), det("dog", 0.5, (-150, 0, -50, 100))]
    assert run(POSITION, dets)[0] is True
    # ... but if the wrong-side dog is the more confident one, the image fails
    dets = [teddy, det("dog", 0.5, (150, 0, 250, 100)), det("dog", 0.9, (-150, 0, -50, 100))]
    assert run(POSITION, dets)[0] is False


def test_position_against_every_target_object():
    row = {"tag": "position", "include": [{"class": "cup", "count": 2},
                                           {"class": "bowl", "count": 1, "position": ["above", 0]}], "prompt": "x"}
    cups = [det("cup", 0.9, (0, 200, 100, 300)), det("cup", 0.8, (300, 200, 400, 300))]
    # bowl above both cups
    assert run(row, cups + [det("bowl", 0.9, (150, 0, 250, 100))])[0] is True
    # bowl above the first cup but level with the second
    correct, reason, _ = run(row, cups + [det("bowl", 0.9, (0, 200, 100, 300))])
    assert correct is False and reason.startswith("expected bowl above target, found")


def test_position_target_failing_colour_means_no_target():
    row = {"tag": "position", "include": [{"class": "cup", "count": 1, "color": "red"},
                                           {"class": "bowl", "count": 1, "position": ["left of", 0]}], "prompt": "x"}
    dets = [det("cup", 0.9, (200, 0, 300, 100), colour="green"), det("bowl", 0.9, (0, 0, 100, 100))]
    correct, reason, _ = run(row, dets)
    assert correct is False
    assert reason.splitlines()[1] == "no target for bowl to be left of"


@pytest.mark.parametrize(
    "offset, expected",
    [
        (20.0, set()),  # |offset| equals the margin 0.1 * (100 + 100): nothing left
        (20.5, set()),  # 0.5 left, but 0.5 / 20.5 < 0.5
        (40.0, set()),  # (40 - 20) / 40 = 0.5 exactly: not > 0.5
        (40.5, {"right of"}),  # 20.5 / 40.5 > 0.5
        (-40.5, {"left of"}),
        (-40.0, set()),
    ],
)
def test_relative_position_margin_on_x(offset, expected):
    a = Detection("a", 1.0, (offset, 0.0, offset + 100.0, 100.0))
    b = Detection("b", 1.0, (0.0, 0.0, 100.0, 100.0))
    assert relative_position(a, b) == expected


def test_relative_position_y_axis_diagonals_and_margin_option():
    b = Detection("b", 1.0, (0.0, 0.0, 100.0, 100.0))
    assert relative_position(Detection("a", 1, (0.0, 41.0, 100.0, 141.0)), b) == {"below"}  # y grows downwards
    assert relative_position(Detection("a", 1, (0.0, -41.0, 100.0, 59.0)), b) == {"above"}
    # diagonal (60, 60): shrunk to (40, 40), / 84.85 = 0.47 on each axis -> no relation
    assert relative_position(Detection("a", 1, (60.0, 60.0, 160.0, 160.0)), b) == set()
    # diagonal (100, 100): (80, 80) / 141.4 = 0.57 -> both
    assert relative_position(Detection("a", 1, (100.0, 100.0, 200.0, 200.0)), b) == {"right of", "below"}
    # small boxes need little separation: margin 0.1 * (10 + 10) = 2
    small_a, small_b = Detection("a", 1, (5.0, 0.0, 15.0, 10.0)), Detection("b", 1, (0.0, 0.0, 10.0, 10.0))
    assert relative_position(small_a, small_b) == {"right of"}  # (5 - 2) / 5 = 0.6
    # the margin is an option: 0.2 swallows an offset of 40 between 100-px boxes
    a = Detection("a", 1, (40.0, 0.0, 140.0, 100.0))
    assert relative_position(a, b, margin=0.2) == set()
    assert relative_position(a, b, margin=0.0) == {"right of"}


def test_counting_excess_is_judged_after_threshold_in_real_rows(shared_file):
    row = next(r for r in load_metadata(shared_file(METADATA)) if r["tag"] == "counting" and r["include"][0]["count"] == 3)
    cls = row["include"][0]["class"]
    assert row["exclude"] == [{"class": cls, "count": 4}]
    three = [det(cls, 0.95), det(cls, 0.93), det(cls, 0.92)]
    assert run(row, three)[0] is True
    assert run(row, three + [det(cls, 0.91)])[0] is False
    assert run(row, three + [det(cls, 0.89)])[0] is True


# ---- aggregation ----------------------------------------------------------------------------------


def test_summarize_hand_worked():
    table = [
        ("single_object", "p1", [1, 1, 0, 1]),
        ("two_object", "p2", [1, 0]),
        ("counting", "p3", [0, 0]),
        ("counting", "p4", [1]),
        ("colors", "p5", [1]),
        ("position", "p6", [0, 0]),
        ("color_attr", "p7", [1, 0, 0, 0]),
    ]
    rows = pd.DataFrame([{"tag": t, "prompt": p, "correct": bool(c)} for t, p, cs in table for c in cs])
    s = summarize(rows)
    assert s["tags"] == {"single_object": 0.75, "two_object": 0.5, "counting": pytest.approx(1 / 3),
                         "colors": 1.0, "position": 0.0, "color_attr": 0.25}
    assert list(s["tags"]) == ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    assert s["overall"] == pytest.approx((0.75 + 0.5 + 1 / 3 + 1 + 0 + 0.25) / 6)  # 0.47222
    assert s["image_accuracy"] == pytest.approx(7 / 16)  # not the same thing as the overall score
    assert s["counts"]["counting"] == {"correct": 1, "total": 3}
    assert s["images"] == 16 and s["failed"] == 0
    # prompts: p1 p2 p4 p5 p7 have a correct image; p3 p6 do not
    assert s["prompts"] == 7 and s["prompt_accuracy"] == pytest.approx(5 / 7)


def test_summarize_leaves_out_failures_and_groups_by_metadata():
    rows = pd.DataFrame({
        "tag": ["colors", "colors", "colors", "position"],
        "correct": [1.0, float("nan"), 0.0, 1.0],
        "metadata": [COLOURS, COLOURS, COLOURS, POSITION],
    })
    s = summarize(rows)
    assert s["failed"] == 1 and s["images"] == 3
    assert s["tags"] == {"colors": 0.5, "position": 1.0} and s["overall"] == 0.75
    assert s["prompts"] == 2 and s["prompt_accuracy"] == 1.0
    with pytest.raises(ValueError, match="correct"):
        summarize(pd.DataFrame({"tag": ["colors"]}))


# ---- metadata -------------------------------------------------------------------------------------


def test_load_real_metadata(shared_file):
    rows = load_metadata(shared_file(METADATA))
    assert len(rows) == 553
    counts = pd.Series([r["tag"] for r in rows]).value_counts().to_dict()
    assert counts == {"position": 100, "color_attr": 100, "two_object": 99, "colors": 94,
                      "single_object": 80, "counting": 80}
    assert set(counts) == set(TAGS)
    assert rows[0] == {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    # Flow-GRPO's copy (553 prompts x 4) has the same schema
    assert len(load_metadata(shared_file("flow_grpo/geneval_test_metadata.jsonl"))) == 2212


def test_object_names_match_upstream_file(shared_file):
    with open(shared_file("geneval/object_names.txt")) as f:
        assert tuple(line.strip() for line in f if line.strip()) == OBJECT_NAMES


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "teal"}], "prompt": "p"}', "color 'teal'"),
        ('{"tag": "colors", "include": [{"class": "car", "count": 1, "colour": "red"}], "prompt": "p"}', "unknown key"),
        ('{"tag": "shapes", "include": [{"class": "car", "count": 1}], "prompt": "p"}', "tag 'shapes'"),
        ('{"tag": "counting", "include": [{"class": "car", "count": 0}], "prompt": "p"}', "count must be"),
        ('{"tag": "counting", "include": [{"class": "cars", "count": 2}], "prompt": "p"}', "class 'cars'"),
        ('{"tag": "position", "include": [{"class": "car", "count": 1, "position": ["left of", 0]}], "prompt": "p"}',
         "earlier include"),
        ('{"tag": "position", "include": [{"class": "car", "count": 1}, {"class": "cat", "count": 1, "position": ["near", 0]}], "prompt": "p"}',
         "position must be"),
        ('{"tag": "single_object", "include": [], "prompt": "p"}', "non-empty list"),
        ('{"tag": "single_object", "include": [{"class": "car", "count": 1}]}', "prompt"),
        ('{"tag": "single_object", "include": [{"class": "car", "count": 1}], "prompt": "p"', "not valid JSON"),
    ],
)
def test_metadata_errors_name_the_line(tmp_path, bad, message):
    good = json.dumps(SINGLE)
    path = tmp_path / "meta.jsonl"
    path.write_text(f"{good}\n{good}\n{bad}\n{good}\n")
    with pytest.raises(MetadataError) as err:
        load_metadata(path)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)


# ---- detector pieces (pure) ------------------------------------------------------------------------


def test_class_names_from_labels():
    coco = [{"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(n, n) for n in OBJECT_NAMES]
    assert class_names_from_labels(dict(enumerate(coco))) == list(OBJECT_NAMES)
    assert class_names_from_labels({i: f"LABEL_{i}" for i in range(80)}) == list(OBJECT_NAMES)
    swapped = coco.copy()
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(ValueError, match="label 1 is 'car'"):
        class_names_from_labels(dict(enumerate(swapped)))
    with pytest.raises(ValueError, match="80-class"):
        class_names_from_labels({i: f"LABEL_{i}" for i in range(133)})


def test_mmdet_test_pipeline_shapes_and_values():
    assert mmdet_resize_shape(512, 512) == (800, 800)
    assert mmdet_resize_shape(300, 200) == (1200, 800)
    assert mmdet_resize_shape(1000, 500) == (1333, 667)  # long side caps at 1333
    img = Image.new("RGB", (300, 200), (200, 100, 50))
    pixels, (h, w) = preprocess(img)
    assert (h, w) == (800, 1200) and pixels.shape == (3, 800, 1216)  # width padded to a multiple of 32
    expected = [(200 - 123.675) / 58.395, (100 - 116.28) / 57.12, (50 - 103.53) / 57.375]
    assert torch.allclose(pixels[:, :800, :1200].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert torch.all(pixels[:, :, 1200:] == 0)


def test_instance_postprocess_hand_worked():
    lg = math.log
    class_logits = torch.tensor([[lg(0.6), lg(0.3), lg(0.1)], [lg(0.2), lg(0.7), lg(0.1)]])
    masks = torch.full((2, 4, 5), -1.0)
    masks[0, 1:3, 1:4] = 2.0
    masks[1, 2, 4] = 0.5
    labels, scores, boxes, binary = instance_postprocess(class_logits, masks, max_per_image=3)
    sig = torch.sigmoid
    assert labels.tolist() == [1, 0, 1]  # (q1, c1) 0.7, (q0, c0) 0.6, (q0, c1) 0.3
    assert torch.allclose(scores, torch.tensor([0.7 * sig(torch.tensor(0.5)), 0.6 * sig(torch.tensor(2.0)),
                                                0.3 * sig(torch.tensor(2.0))]), atol=1e-6)
    assert boxes.tolist() == [[4, 2, 5, 3], [1, 1, 4, 3], [1, 1, 4, 3]]  # x_last + 1, y_last + 1
    assert binary[1].sum() == 6 and binary.dtype == torch.bool
    # an empty mask scores 0 and gets a zero box
    labels, scores, boxes, _ = instance_postprocess(class_logits, torch.full((2, 4, 5), -1.0), max_per_image=1)
    assert scores.tolist() == [0.0] and boxes.tolist() == [[0, 0, 0, 0]]


# ---- tiny real models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    coco = [{"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(n, n) for n in OBJECT_NAMES]
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=10,
        id2label=dict(enumerate(coco)), label2id={n: i for i, n in enumerate(coco)},
    )
    path = tmp_path_factory.mktemp("mask2former")
    Mask2FormerForUniversalSegmentation(config).eval().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    import safetensors.torch

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
           "quick_gelu": True}  # as the config of OpenAI's weights states it
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    path = tmp_path_factory.mktemp("clip")
    # the Hugging Face layout of timm/vit_large_patch14_clip_224.openai: open_clip_config.json + weights
    (path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }))
    safetensors.torch.save_file(model.state_dict(), str(path / "open_clip_model.safetensors"))
    return str(path)


def test_hf_backend_loads_and_detects(tiny_mask2former):
    ev = GenEval(detector_path=tiny_mask2former, offline=True, device="cpu")
    assert ev._detector is None  # nothing loaded until used
    detector = ev.detector()
    assert detector.version == f"hf-mask2former:{os.path.basename(tiny_mask2former)}"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    (dets,) = detector.detect([img])
    assert len(dets) == 100  # top 100 of 10 queries x 80 classes
    scores = [d.score for d in dets]
    assert all(0 <= s <= 1 for s in scores) and len(set(scores)) > 1
    for d in dets:
        assert d.classname in OBJECT_NAMES
        assert d.mask.shape == (48, 80) and d.mask.dtype == bool
        ys, xs = np.nonzero(d.mask)  # the box is the mask's extent, end-exclusive
        expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, 0, 0)
        assert d.box == tuple(float(v) for v in expected)
    # same image, same detections (eval mode, deterministic)
    (again,) = detector.detect([img])
    assert [(d.classname, d.score) for d in again] == [(d.classname, d.score) for d in dets]


def test_hf_backend_missing_checkpoint_names_the_download(tmp_path):
    ev = GenEval(detector_path=str(tmp_path / "nowhere"), offline=True, device="cpu")
    with pytest.raises(RuntimeError, match="hf download facebook/mask2former-swin-small-coco-instance --revision f77f179"):
        ev.detector()


@pytest.mark.skipif(importlib.util.find_spec("mmdet") is not None, reason="mmdet is installed")
def test_mmdet_backend_missing_names_the_install():
    ev = GenEval(detector="mmdet", detector_checkpoint="/x/mask2former.pth")
    assert "mmdet:mask2former.pth" in ev.version
    with pytest.raises(ImportError, match=r"mmcv-full==1\.7\.1.*mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"):
        ev.detector()


def _reference_logits(model, preprocess_fn, tokenizer, image, box, mask, classname):
    """Independent zero-shot colour logits: numpy compositing, per-template text embeddings."""
    arr = np.asarray(image).copy()
    arr[~mask] = 0x99  # "#999" is (153, 153, 153)
    x0, y0, x1, y1 = box
    crop = Image.fromarray(arr[y0:y1, x0:x1])
    with torch.no_grad():
        feats = model.encode_image(preprocess_fn(crop)[None])
        feats = feats / feats.norm(dim=-1, keepdim=True)
        weights = []
        for c in COLORS:
            texts = [f"a photo of a {c} {classname}", f"a photo of a {c}-colored {classname}", f"a photo of a {c} object"]
            t = model.encode_text(tokenizer(texts))
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            weights.append(t / t.norm())
        return 100 * feats @ torch.stack(weights, 1)


def test_colour_classifier_on_tiny_open_clip(tiny_clip):
    import open_clip

    from rlg.evaluators.geneval.colour import ClipColourClassifier

    clf = ClipColourClassifier(f"local-dir:{tiny_clip}", pretrained=None, device="cpu")
    assert type(clf.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # as OpenAI's CLIP
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    mask_a = np.zeros((64, 96), bool)
    mask_a[10:40, 5:30] = True
    mask_b = np.zeros((64, 96), bool)
    mask_b[20:60, 50:90] = True
    mask_b[25:30, 55:60] = False  # a hole: background shows through
    dets = [Detection("car", 0.9, (5.0, 10.0, 30.0, 40.0), mask_a), Detection("car", 0.8, (50.0, 20.0, 90.0, 60.0), mask_b)]

    logits = clf.logits(image, dets, "car")
    ref_model, _, ref_pre = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip}", force_quick_gelu=True)
    ref_model.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{tiny_clip}")
    for i, (d, box) in enumerate(zip(dets, [(5, 10, 30, 40), (50, 20, 90, 60)])):
        ref = _reference_logits(ref_model, ref_pre, tok, image, box, d.mask, "car")
        assert torch.allclose(logits[i], ref[0], atol=1e-4), (logits[i], ref[0])
    assert clf(image, dets, "car") == [COLORS[i] for i in logits.argmax(1).tolist()]

    # only the masked pixels matter: repaint everything outside both masks
    arr = np.asarray(image).copy()
    arr[~(mask_a | mask_b)] = 0
    assert torch.allclose(clf.logits(Image.fromarray(arr), dets, "car"), logits, atol=1e-5)
    arr = np.asarray(image).copy()
    arr[mask_a] = 255 - arr[mask_a]
    assert not torch.allclose(clf.logits(Image.fromarray(arr), dets, "car")[0], logits[0], atol=1e-3)
    # the text side depends on the object's name
    assert not torch.allclose(clf.text_classifier("car"), clf.text_classifier("apple"))


def test_geneval_end_to_end_with_tiny_models(tiny_mask2former, tiny_clip, shared_file):
    rows = load_metadata(shared_file(METADATA))
    pick = {tag: next(r for r in rows if r["tag"] == tag) for tag in ("single_object", "colors", "counting")}
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    samples = [Sample(tag, img, row["prompt"], row) for tag, row in pick.items()]

    ev = get_evaluator("geneval", detector_path=tiny_mask2former, offline=True, device="cpu",
                       clip_model=f"local-dir:{tiny_clip}", clip_pretrained=None)
    assert isinstance(ev, GenEval) and ev.metrics == {"geneval_correct": True}
    assert ev.version.startswith("geneval/djghosh13/geneval@af4902f/hf:") and "quickgelu" in ev.version
    # a random detector is never confident: nothing passes 0.3, every include clause fails
    judged = ev.judge(samples)
    for j, row in zip(judged, pick.values()):
        cls, n = row["include"][0]["class"], row["include"][0]["count"]
        assert (j.correct, j.reason) == (False, f"expected {cls}>={n}, found 0")
    assert ev._colour is None  # never needed

    # with the threshold at 0 the colour path runs and must agree with the rule engine + classifier
    ev0 = GenEval(detector_path=tiny_mask2former, offline=True, device="cpu", clip_model=f"local-dir:{tiny_clip}",
                  clip_pretrained=None, threshold=0.0)
    ev0._detector = ev.detector()  # same checkpoint; skip a second load to keep the test fast
    row = dict(pick["colors"])
    cls = row["include"][0]["class"]
    (dets,) = ev0.detector().detect([img])
    dets = [Detection(cls, d.score, d.box, d.mask) for d in dets]  # relabel so the class is present
    expected = evaluate_detections(row, dets, lambda ds, c: ev0.colour_classifier()(img, ds, c), threshold=0.0)
    got = ev0.judge_detections(img, row, dets)
    assert (got.correct, got.reason) == expected
    assert ev0._colour is not None

    # through the runner: a row without metadata is recorded as a failure, the others are scored
    bad = Sample("no-meta", img, "a photo of a bench")
    out = {r.image_key: r for rows_ in run_evaluator(ev, samples[:1] + [bad], batch_size=2) for r in rows_}
    assert out["single_object"].value == 0.0 and out["single_object"].error is None
    assert math.isnan(out["no-meta"].value) and "metadata" in out["no-meta"].error


def test_geneval_options_are_validated():
    with pytest.raises(ValueError, match="unknown GenEval detector 'yolo'; use one of hf, mmdet, zoo_digits"):
        GenEval(detector="yolo")
    with pytest.raises(ValueError, match="dtype"):
        GenEval(dtype="float8")
    v = GenEval(max_overlap=0.5, position_threshold=0.2).version
    assert "nms0.5" in v and "pos0.2" in v and "hf:facebook/mask2former-swin-small-coco-instance@f77f179" in v
