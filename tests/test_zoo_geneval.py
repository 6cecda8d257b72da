"""The compositional zoo pair: digit scenes with GenEval metadata, the zoo_digits detector back-end against known
boxes, GenEval's unchanged rules on its detections, the presets, and loading/control on the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlg.zoo import geneval as G

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (G.BASE_DIR / "model_index.json").is_file() and (G.RL_DIR / "adapter_config.json").is_file()
needs_weights = pytest.mark.skipif(not SHIPPED, reason="zoo geneval weights absent: run `python -m rlg.zoo.train geneval`")
# GenEval accuracy of the base at w = 0 on the 10 single-object and counting prompts (seed 7, 20 steps): measured
# 0.9 (9 of 10); at sampling seeds 0-2 x 2 samples (README_geneval.md) these tags measure 0.93 and 0.90
SIMPLE_MIN = 0.7


def _row(prompt: str) -> dict:
    return next(r for r in G.rows() if r["prompt"] == prompt)


@pytest.fixture(scope="module")
def detector():
    from rlg.evaluators.geneval.detectors import build_detector

    return build_detector("zoo_digits")


def test_rows_are_valid_geneval_metadata_and_match_the_shipped_prompt_file():
    from rlg.evaluators.geneval import validate_row
    from rlg.harness.prompts import load_prompt_set

    rows = G.rows()
    assert [r["tag"] for r in rows].count("position") == 20 and len(rows) == 40
    assert all(validate_row(r) is r for r in rows)
    shipped, info = load_prompt_set("zoo_geneval", cache_dir="/nonexistent")
    assert [p.metadata for p in shipped] == rows and info["count"] == 40
    assert _row("a 3 left of a 7")["include"] == [{"class": "7", "count": 1},
                                                  {"class": "3", "count": 1, "position": ["left of", 0]}]


def test_scenes_follow_their_rows_and_are_deterministic():
    a, ia, ta = G.dataset(12, seed=5)
    b, ib, tb = G.dataset(12, seed=5)
    assert a.shape == (12, G.HEIGHT, G.WIDTH, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ia, ib) and ta == tb
    rng = np.random.default_rng(0)
    img, truth = G.scene(_row("a 3 left of a 7"), rng, split="test")
    (c0, b0), (c1, b1) = truth
    assert (c0, c1) == ("3", "7") and b0[2] <= b1[0]  # the 3's box ends before the 7's begins
    img, truth = G.scene(_row("two 4s"), rng)
    assert [c for c, _ in truth] == ["4", "4"]
    with pytest.raises(ValueError, match="tag 'colors' is not one of this task's"):
        G.layout({"tag": "colors", "include": [{"class": "3", "count": 1, "color": "red"}]}, rng)


def test_detector_finds_the_known_boxes_and_classes_of_held_out_scenes(detector):
    """Held-out digits (never seen by the classifier): every detection's box equals the ground-truth ink box and its
    class the placed digit, on 16 scenes of every tag."""
    images, _, truths = G.dataset(16, seed=3, split="test")
    dets = detector.detect([Image.fromarray(im) for im in images])
    exact = 0
    for truth, found in zip(truths, dets):
        got = sorted((d.classname, d.box) for d in found)
        want = sorted((c, tuple(float(v) for v in b)) for c, b in truth)
        exact += got == want
    assert exact >= 15, exact  # measured 16/16; rlg.zoo.geneval_eval: precision = recall = 0.996 on 400 scenes


def test_detector_splits_touching_digits_and_ignores_specks(detector):
    tiles = G.digit_tiles("test")
    ink = np.zeros((G.HEIGHT, G.WIDTH), np.float32)
    ink[4:28, 8:32] = tiles[0][0]
    ink[4:28, 26:50] = np.maximum(ink[4:28, 26:50], tiles[7][0])  # overlapping tiles: one ink component
    ink[1:3, 60:62] = 1.0  # a 4-pixel speck (below min_area)
    img = Image.fromarray(np.repeat(np.round((1 - ink) * 255).astype(np.uint8)[:, :, None], 3, axis=2))
    (found,) = detector.detect([img])
    assert [d.classname for d in found] == ["0", "7"]
    assert found[0].box[2] <= found[1].box[0] + 1
    assert detector.detect([Image.new("RGB", (G.WIDTH, G.HEIGHT), "white")]) == [[]]


def test_geneval_rules_run_unchanged_on_zoo_digit_detections():
    """A held-out "a 3 left of a 7" scene is correct for its own row and wrong for the mirrored row, with the
    reason GenEval's own rule engine gives; counting needs both digits above the 0.9 counting threshold."""
    from rlg.evaluators.base import Sample
    from rlg.evaluators.geneval import GenEval

    ev = GenEval(detector="zoo_digits", device="cpu")
    assert ev.version.startswith("geneval/djghosh13/geneval@af4902f/zoo_digits:digits_classifier/")
    img, _ = G.scene(_row("a 3 left of a 7"), np.random.default_rng(1), split="test")
    right, wrong = _row("a 3 left of a 7"), _row("a 3 right of a 7")
    j = ev.judge([Sample("a", Image.fromarray(img), right["prompt"], right),
                  Sample("b", Image.fromarray(img), wrong["prompt"], wrong)])
    assert j[0].correct and not j[1].correct
    assert j[1].reason == "expected 3 right of target, found left of target"
    single = _row("two 3s")
    assert not ev.judge([Sample("c", Image.fromarray(img), single["prompt"], single)])[0].correct


def test_zoo_digits_options_and_classes_are_checked():
    from rlg.evaluators.base import Sample
    from rlg.evaluators.geneval import GenEval

    with pytest.raises(ValueError, match="detector_path and detector_revision apply to detector='hf' only"):
        GenEval(detector="zoo_digits", detector_path="/x")
    with pytest.raises(ValueError, match="detector_checkpoint applies to detector='mmdet' only"):
        GenEval(detector="zoo_digits", detector_checkpoint="/x.pth")
    assert GenEval.requires_for(detector="zoo_digits") == ("cv2",)
    coco = {"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}
    with pytest.raises(ValueError, match=r"class\(es\) \['cat'\] are not among the zoo_digits detector's classes"):
        GenEval(detector="zoo_digits").judge([Sample("k", Image.new("RGB", (64, 32), "white"), coco["prompt"], coco)])


def test_experiment_preset_composes():
    from rlg.harness.api import compose

    cfg = compose("experiment=zoo_geneval_flowgrpo")
    assert cfg.pair.base.id == "zoo:" + G.BASE_DIR.name and cfg.pair.rl.id == "zoo:" + G.RL_DIR.name
    assert cfg.pair.rl_kind == "peft_lora" and cfg.sampler.name == "zoo_geneval_ode"
    assert cfg.sampler.extra["max_sequence_length"] == G.MAX_SEQUENCE_LENGTH  # the T5 length the base was trained on
    assert cfg.prompts.source == "zoo_geneval" and cfg.report.reward == "geneval_overall"
    assert cfg.evaluators.selected == ["geneval"] and cfg.evaluators.options["geneval"]["detector"] == "zoo_digits"
    if SHIPPED:  # the whole build: zoo ids resolved, the evaluator's options and prompts checked
        from rlg.harness.api import job

        assert job("experiment=zoo_geneval_flowgrpo").pair.name == "zoo_geneval_flowgrpo"
        from rlg.zoo.digits_eval import pair_spec
        from rlg.zoo.geneval_eval import PAIR, SAMPLER

        # measure_pair's default pair: the preset composed with its own sampler (with zoo_digits' the build refuses)
        assert pair_spec(PAIR, sampler=SAMPLER) == G.pair_spec()


@needs_weights
def test_shipped_pair_loads_through_the_stock_pipeline_and_is_within_budget():
    from safetensors.torch import load_file

    from rlg.pairs import load_pair
    from rlg.sampling import RLGSampler, WorkItem
    from rlg.zoo.digits_eval import sampler_settings

    conf = json.loads((G.RL_DIR / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["lora_alpha"] != conf["r"]
    assert all(k.startswith("base_model.model.") for k in load_file(str(G.RL_DIR / "adapter_model.safetensors")))
    size = sum(p.stat().st_size for d in (G.BASE_DIR, G.RL_DIR) for p in d.rglob("*") if p.is_file())
    assert size < 15e6
    torch.set_num_threads(1)
    pair = load_pair(G.pair_spec())
    t5 = pair.pipe.tokenizer_3  # every prompt reaches the transformer whole (none cut, as 8 tokens cut them)
    assert max(len(t5(p).input_ids) for p in G.PROMPTS) <= G.MAX_SEQUENCE_LENGTH == t5.model_max_length
    settings = sampler_settings("zoo_geneval_ode", pair="zoo_text_flowgrpo", num_inference_steps=2)
    out = RLGSampler(pair, settings).generate([WorkItem(0, G.PROMPTS[0], 0, 7, 1.0)])
    assert out[0].image.shape == (G.HEIGHT, G.WIDTH, 3) and not out[0].nonfinite


def test_detector_measurement_counts_matches_and_overall_is_the_mean_over_tags():
    from rlg.evaluators.geneval import Detection
    from rlg.zoo.geneval_eval import legibility, match, measure_detector, tag_summary

    truth = [("3", (0, 0, 10, 10)), ("7", (20, 0, 30, 10))]
    dets = [Detection("3", 0.9, (1, 0, 10, 10)), Detection("3", 0.8, (0, 0, 10, 10)),  # the second is a duplicate
            Detection("4", 0.95, (20, 0, 30, 10))]  # right place, wrong class: a FP for 4 and a FN for 7
    tp, fp, fn, per = match(truth, dets)
    assert (tp, fp, fn) == (1, 2, 1) and per == {"3": [1, 1, 0], "4": [0, 1, 0], "7": [0, 0, 1]}
    s = tag_summary(np.array([1.0, 0.0, 1.0, 1.0]), ["a", "a", "b", "b"])
    assert s["a"]["mean"] == 0.5 and s["b"]["mean"] == 1.0 and s["overall"]["mean"] == 0.75
    assert s["overall"]["se"] == pytest.approx(np.sqrt(0.5**2 + 0.0**2) / 2, abs=1e-5)  # se of "a": sd 0.707 / sqrt 2
    m = measure_detector(24, seed=1)
    assert m["precision"] >= 0.95 and m["recall"] >= 0.95 and m["n"] == 24, m
    images, idx, _ = G.dataset(8, seed=2, split="test")
    leg = legibility(images, [G.PROMPTS[i] for i in idx])
    ink = float(np.mean(255 - images.astype(float)) / 255)
    assert leg["layout"] == 1.0 and leg["read_gt_0.9"] >= 0.9 and leg["ink"] == pytest.approx(ink, abs=1e-4), leg


def test_base_trainer_resumes_to_the_uninterrupted_result_on_scenes(tmp_path):
    """The text trainer with task=rlg.zoo.geneval: a run resumed from its step-1 checkpoint ends with the same
    transformer and text encoders (and EMA) as the uninterrupted run; the task's encoders are trained (they move
    from their random init), the text task's are not (its EMA is the transformer alone)."""
    from rlg.zoo import text as T
    from rlg.zoo.train_text_base import train_transformer, train_vae

    torch.set_num_threads(1)
    quiet = {"log": lambda *_: None, "task": G}
    vae = train_vae(5, steps=1, n_images=8, batch=4, **quiet)[0]
    small = {"n_images": 16, "batch": 4, **quiet}

    def fresh():
        return T.assemble(T.build_transformer(5), vae, T.build_text_encoders(5, G.MAX_SEQUENCE_LENGTH))

    whole = train_transformer(fresh(), 5, steps=3, **small)[0].state_dict()
    ck = tmp_path / "flow.pt"
    train_transformer(fresh(), 5, steps=2, checkpoint=ck, checkpoint_every=1, **small)  # leaves the step-1 state
    assert torch.load(ck, weights_only=False)["step"] == 1
    logs: list[str] = []
    resumed = train_transformer(fresh(), 5, steps=3, checkpoint=ck, **{**small, "log": logs.append})[0].state_dict()
    assert logs[0].startswith("flow: resumed at step 1") and not any(m.startswith("flow step 0") for m in logs)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    init = T.build_text_encoders(5, G.MAX_SEQUENCE_LENGTH)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        moved = [not torch.equal(whole[f"{name}.{k}"], v) for k, v in init[name].state_dict().items()]
        assert any(moved), name
    assert G.TRAIN_TEXT_ENCODERS and not T.TRAIN_TEXT_ENCODERS and G.MAX_SEQUENCE_LENGTH >= max(
        len(init["tokenizer_3"](p).input_ids) for p in G.PROMPTS) > T.MAX_SEQUENCE_LENGTH


def test_flowgrpo_prompt_pool_and_flat_groups():
    """The second attempt's prompt pool is exactly the weak tags' prompts; the default pool draws as before (all prompts,
    pool[randperm] == randperm); a bad pool fails before any work; a group of equal rewards counts as flat."""
    from rlg.zoo import train_geneval as TG
    from rlg.zoo.train_text_flowgrpo import flat_share, prompt_pool

    weak = TG.WEAK_PROMPTS
    assert len(weak) == 30 and {G.rows()[i]["tag"] for i in weak} == {"two_object", "position"}
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(prompt_pool(None, 40, 4)[perm], perm)
    assert prompt_pool(weak, 40, 4).tolist() == list(weak)
    for bad in ((1, 2, 3), (1, 2, 3, 40), (1, 1, 2, 3)):
        with pytest.raises(ValueError, match=r"train_prompts must hold at least prompts_per_step=4 distinct prompt "
                                             r"indices in \[0, 40\)"):
            prompt_pool(bad, 40, 4)
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    assert flat_share(rewards, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) == 0.75  # groups 0, 2, 3 flat


def _stock_images(pipe, prompts, steps, seed=7):
    from rlg.sampling import noise_seed
    from rlg.zoo import text as T

    gens = [torch.Generator().manual_seed(noise_seed(seed, i, 0)) for i in range(len(prompts))]
    with torch.no_grad():
        img = pipe(prompt=list(prompts), generator=gens, output_type="np",
                   **{**T.sampler_kwargs(steps=steps), "max_sequence_length": G.MAX_SEQUENCE_LENGTH}).images
    return (img.clip(0, 1) * 255).round().astype(np.int16)


@needs_weights
def test_pair_equals_the_stock_pipelines_at_w0_w1_w2_and_the_base_follows_simple_prompts():
    """w = 0 is a stock StableDiffusion3Pipeline of the base, w = 1 the same with PEFT's own adapter loader (built
    without rlg.pairs) and w = 2 that pipeline with 2 v_rl - v_base as its velocity; and at 20 Euler steps the base
    draws what single-object and counting prompts ask for, judged by GenEval on the zoo_digits detector (10 prompts,
    one sample each)."""
    from diffusers import StableDiffusion3Pipeline
    from peft import PeftModel

    from rlg.pairs import load_pair
    from rlg.sampling import RLGSampler, WorkItem
    from rlg.zoo.digits_eval import sampler_settings
    from rlg.zoo.geneval_eval import score

    torch.set_num_threads(1)
    pair = load_pair(G.pair_spec())
    simple = [r["prompt"] for r in G.rows() if r["tag"] in ("single_object", "counting")]

    def rlg(w, prompts, steps):
        settings = sampler_settings("zoo_geneval_ode", pair="zoo_text_flowgrpo", num_inference_steps=steps)
        items = [WorkItem(i, p, 0, 7, w) for i, p in enumerate(prompts)]
        return np.stack([g.image for g in RLGSampler(pair, settings).generate(items)]).astype(np.int16)

    two = [G.PROMPTS[0], G.PROMPTS[-1]]
    base = StableDiffusion3Pipeline.from_pretrained(str(G.BASE_DIR), local_files_only=True)
    base.set_progress_bar_config(disable=True)
    assert np.abs(rlg(0.0, two, 2) - _stock_images(base, two, 2)).max() <= 1
    rl = StableDiffusion3Pipeline.from_pretrained(str(G.BASE_DIR), local_files_only=True)
    rl.set_progress_bar_config(disable=True)
    rl.transformer = PeftModel.from_pretrained(rl.transformer, str(G.RL_DIR)).eval()
    assert np.abs(rlg(1.0, two, 2) - _stock_images(rl, two, 2)).max() <= 1
    # extrapolation: w = 2 is the stock pipeline whose transformer returns 2 v_rl - v_base, v_base from the same PEFT
    # model with its adapter disabled (CFG is linear, so mixing before or after it is the same)
    peft, forward = rl.transformer, rl.transformer.forward

    def extrapolated(*args, **kwargs):
        v_rl = forward(*args, **kwargs)[0]
        with peft.disable_adapter():
            v_base = forward(*args, **kwargs)[0]
        return (v_base + 2.0 * (v_rl - v_base),)

    peft.forward = extrapolated
    w2, stock2 = rlg(2.0, two, 2), _stock_images(rl, two, 2)
    assert np.abs(w2 - stock2).max() <= 1 and np.abs(w2 - rlg(1.0, two, 2)).max() > 8  # and the adapter matters
    correct = score(rlg(0.0, simple, 20).astype(np.uint8), simple)
    assert correct.mean() >= SIMPLE_MIN, correct


def test_transitions_count_flips_per_tag_with_an_exact_mcnemar_test():
    from scipy.stats import beta

    from rlg.zoo.geneval_eval import redraw_disagreement, transitions

    a = np.array([1, 1, 0, 0, 1, 0], float)
    b = np.array([1, 0, 1, 1, 1, 0], float)
    t = transitions(a, b, ["x", "x", "x", "y", "y", "y"])
    assert (t["x"]["kept"], t["x"]["lost"], t["x"]["gained"], t["x"]["stayed_wrong"]) == (1, 1, 1, 0)
    assert (t["y"]["kept"], t["y"]["lost"], t["y"]["gained"], t["y"]["stayed_wrong"]) == (1, 0, 1, 1)
    assert t["all"]["n"] == 6 and t["all"]["flip_share"] == pytest.approx(3 / 6, abs=1e-5)
    assert t["all"]["net"] == pytest.approx(b.mean() - a.mean(), abs=1e-5)
    # 9 gains, 1 loss among 30 images: two-sided exact binomial p = 2 (1 + 10) / 2^10; Clopper-Pearson bounds are
    # beta quantiles (Clopper & Pearson 1934)
    a = np.r_[np.zeros(9), np.ones(1), np.ones(10), np.zeros(10)]
    b = np.r_[np.ones(9), np.zeros(1), np.ones(10), np.zeros(10)]
    t = transitions(a, b, ["z"] * 30)["z"]
    assert t["gain_share"] == 0.9 and t["p_mcnemar"] == pytest.approx(22 / 1024, abs=1e-5)
    assert t["gain_lo"] == pytest.approx(beta.ppf(0.025, 9, 2), abs=1e-5)
    assert t["gain_hi"] == pytest.approx(beta.ppf(0.975, 10, 1), abs=1e-5)
    assert np.isnan(transitions(a, a, ["z"] * 30)["z"]["gain_share"])
    with pytest.raises(ValueError, match="0 or 1"):
        transitions(a * 0.5, b, ["z"] * 30)
    # independent redraws: all pairs of a prompt's images, enumerated
    correct, prompts = [1, 1, 0, 0, 1, 1, 1, 0, 1], list("AAAABBBCC")
    pairs = [[correct[i] != correct[j] for i in range(9) for j in range(i + 1, 9) if prompts[i] == prompts[j] == p]
             for p in "ABC"]
    assert redraw_disagreement(np.array(correct, float), prompts) == pytest.approx(np.mean([np.mean(v) for v in pairs]))


def test_image_diagnostics_name_the_failure_and_measure_strokes(detector):
    """On a held-out "a 3 left of a 7" scene: correct for its own prompt, "position" for the mirrored one, "class" for
    "two 3s"; touching tiles are one merged component; a w x L bar has stroke width w L / (w + L)."""
    from rlg.zoo.geneval_eval import image_diagnostics

    img, _ = G.scene(_row("a 3 left of a 7"), np.random.default_rng(1), split="test")
    tiles = G.digit_tiles("test")
    ink = np.zeros((G.HEIGHT, G.WIDTH), np.float32)
    ink[4:28, 8:32] = tiles[0][0]
    ink[4:28, 26:50] = np.maximum(ink[4:28, 26:50], tiles[7][0])
    touching = np.repeat(np.round((1 - ink) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    bar = np.full((G.HEIGHT, G.WIDTH, 3), 255, np.uint8)
    bar[4:28, 30:33] = 0  # 24 px high, 3 px wide: one stroke, not wider than high (not merged)
    images = np.stack([img, img, img, touching, bar])
    d = image_diagnostics(images, ["a 3 left of a 7", "a 3 right of a 7", "two 3s", "a 0 and a 7", "a 1"])
    assert d["failure"][:4].tolist() == ["", "position", "class", ""]
    assert d["drawn"].tolist() == ["both", "both", "", "both", ""]
    other = image_diagnostics(images[:1], ["a 0 and a 7"])  # a 3 and a 7 read: one of the named digits
    assert other["drawn"].tolist() == ["one"] and other["failure"].tolist() == ["class"]
    assert d["n_det"][:4].tolist() == [2, 2, 2, 2] and d["n_want"].tolist() == [2, 2, 2, 2, 1]
    assert d["merged"].tolist() == [0, 0, 0, 1, 0]
    assert d["stroke"][4] == pytest.approx(3 * 24 / (3 + 24)) and d["ink"][4] == pytest.approx(72 / (32 * 64))
    assert 0 < d["read"][0] <= 1


def test_summarise_extrapolation_pools_seeds_as_the_mean_of_their_tag_summaries():
    """Two 'seeds' of real held-out scenes standing in for both scales' images, with given correctness: accuracy and
    paired differences are the per-seed tag_summary means averaged, the pooled se sqrt(sum se^2) / 2; the real
    scenes' diagnostics read every scene's digits as its prompt names them."""
    from rlg.zoo.geneval_eval import summarise_extrapolation, tag_summary

    runs = []
    images, idx, _ = G.dataset(12, seed=0, split="test")
    prompts = [G.PROMPTS[i] for i in idx]  # the same prompts at every seed, as measure_extrapolation's grids
    for sd in (0, 1):
        c0 = (np.arange(12) % 2).astype(float)
        c1 = np.roll(c0, sd + 1)
        runs.append({"seed": sd, "prompts": prompts, "correct": {0.0: c0, 1.0: c1},
                     "images": {0.0: images, 1.0: images}})
    s = summarise_extrapolation(runs)
    tags = [[G.rows()[G.PROMPTS.index(p)]["tag"] for p in r["prompts"]] for r in runs]
    per = [tag_summary(r["correct"][1.0] - r["correct"][0.0], t)["overall"] for r, t in zip(runs, tags)]
    d = s["paired"]["1.0-0.0"]["overall"]
    assert d["pooled"] == pytest.approx((per[0]["mean"] + per[1]["mean"]) / 2, abs=1e-5)
    assert d["se"] == pytest.approx(np.hypot(per[0]["se"], per[1]["se"]) / 2, abs=1e-5)
    acc = [tag_summary(r["correct"][0.0], t)["overall"]["mean"] for r, t in zip(runs, tags)]
    assert s["accuracy"]["0.0"]["overall"] == pytest.approx(np.mean(acc), abs=1e-5)
    assert s["transitions"]["0.0->1.0"]["all"]["n"] == 24 and s["diagnostics"]["real"]["layout"]["mean"] == 1.0
    two_digit = sum(t in ("two_object", "position") for tg in tags for t in tg)
    assert sum(v["both"] for v in s["diagnostics"]["real"]["drawn"].values()) == two_digit
    assert s["diagnostics_paired"]["1.0-0.0"]["stroke"]["mean"] == 0.0  # the same images at both "scales"
