"""PickScore and CLIP score on a tiny random transformers CLIP saved in the hub layout.

Expected values come from the model's own forward pass (``logits_per_image``, ``text_embeds``,
``image_embeds``) on inputs the test prepares itself, not from the evaluators' code path.
"""

import pytest
import torch
from PIL import Image
from skimage import data

from rlg.evaluators._models import ModelNotAvailableError
from rlg.evaluators.base import Evaluator, Sample, get_evaluator, run_evaluator
from rlg.evaluators.clip_score import CLIPScore
from tests.helpers.scorers import save_tiny_hf_clip
from rlg.evaluators.pickscore import PickScore

PROMPTS = [
    "a photo of an astronaut",
    "a cup of coffee on a saucer, viewed from above, with latte art shaped like a heart",
    "a cat",
]


@pytest.fixture(scope="module")
def samples():
    # Real photographs at different sizes and aspect ratios (the processor resizes and crops them).
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    images = [Image.fromarray(p).resize((w, h), Image.Resampling.BICUBIC)
              for p, (w, h) in zip(photos, [(96, 96), (120, 80), (70, 100)])]
    return [Sample(f"img{i}", im, prompt) for i, (im, prompt) in enumerate(zip(images, PROMPTS))]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    # logit_scale 3.0 -> exp = 20.1, the PickScore range, instead of CLIP's init 1/0.07.
    return save_tiny_hf_clip(tmp_path_factory.mktemp("tiny-clip"), logit_scale=3.0)


@pytest.fixture(scope="module")
def pick(clip_dir):
    return PickScore(model=str(clip_dir), processor=str(clip_dir), offline=True)


@pytest.fixture(scope="module")
def clip(clip_dir):
    return CLIPScore(model=str(clip_dir), offline=True)


@pytest.fixture(scope="module")
def ref(clip_dir):
    """The saved model and processor, loaded directly with transformers for the expected values."""
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)


def _forward(ref, prompt, image):
    model, processor = ref
    with torch.no_grad():
        return model(**processor(text=[prompt], images=[image], return_tensors="pt"))


def _cos(out):
    return float((out.text_embeds[0] * out.image_embeds[0]).sum())


def test_pickscore_is_logit_scale_times_cosine(pick, samples, ref):
    ev = pick
    got = [r["pickscore"] for r in ev.score(samples)]
    for value, s in zip(got, samples):
        out = _forward(ref, s.prompt, s.image)
        expected = float(out.logits_per_image[0, 0])  # logit_scale.exp() * cos, computed by CLIPModel.forward
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert expected == pytest.approx(float(torch.tensor(3.0).exp()) * _cos(out), rel=1e-5)
    assert isinstance(ev, Evaluator) and ev.metrics == {"pickscore": True}
    assert ev.version.startswith("pickscore/logit_scale*cos/local:")


def test_pickscore_batch_equals_one_by_one(pick, samples):
    ev = pick
    batched = [r["pickscore"] for r in ev.score(samples)]
    single = [ev.score([s])[0]["pickscore"] for s in samples]
    assert batched == pytest.approx(single, rel=1e-5, abs=1e-5)


def test_clip_score_torchmetrics_convention(clip_dir, samples, ref):
    ev = get_evaluator("clip_score", model=str(clip_dir), offline=True)
    assert isinstance(ev, CLIPScore) and isinstance(ev, Evaluator)
    got = [r["clip_score"] for r in ev.score(samples)]
    cosines = [_cos(_forward(ref, s.prompt, s.image)) for s in samples]
    assert got == pytest.approx([max(100 * c, 0.0) for c in cosines], rel=1e-5, abs=1e-4)
    assert ev.version == "clip_score/100*max(cos,0)/local:" + clip_dir.name + "/fp32"


def test_clip_score_clips_negative_cosines_to_zero(clip, samples, ref):
    # A random tiny CLIP gives cosines of both signs; find a pair with a negative one.
    ev = clip
    prompts = ["a cat", "dog", "an astronaut in space", "red", "a bowl of soup", "x y z", "tree", "car"]
    pairs = [Sample(f"{i}", samples[i % 3].image, p) for i, p in enumerate(prompts)]
    cosines = [_cos(_forward(ref, s.prompt, s.image)) for s in pairs]
    assert min(cosines) < 0 < max(cosines), "fixture should give cosines of both signs"
    got = [r["clip_score"] for r in ev.score(pairs)]
    assert got == pytest.approx([max(100 * c, 0.0) for c in cosines], rel=1e-5, abs=1e-4)
    assert min(got) == 0.0


def test_clip_score_hessel_scale_and_prefix(clip_dir, samples, ref):
    ev = CLIPScore(model=str(clip_dir), scale=2.5, text_prefix="A photo depicts ", offline=True)
    got = [r["clip_score"] for r in ev.score(samples)]
    expected = [2.5 * max(_cos(_forward(ref, "A photo depicts " + s.prompt, s.image)), 0.0) for s in samples]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert "/2.5*max(cos,0)/" in ev.version and "prefix='A photo depicts '" in ev.version


def test_clip_score_long_prompt_keeps_end_of_text_token(clip, samples, ref):
    ev = clip
    long_prompt = " ".join(["a very detailed painting of a lighthouse by the sea"] * 12)
    got = ev.score([Sample("long", samples[0].image, long_prompt)])[0]["clip_score"]

    model, processor = ref
    ids = processor.tokenizer(long_prompt)["input_ids"]
    assert len(ids) > 77
    ids = torch.tensor([ids[:76] + [ids[-1]]])  # first 76 tokens, then <|endoftext|>
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=processor(images=[samples[0].image], return_tensors="pt")["pixel_values"])
    assert got == pytest.approx(max(100 * _cos(out), 0.0), rel=1e-5, abs=1e-4)


def test_clip_score_batch_equals_one_by_one_and_runner(clip, samples):
    ev = clip
    single = [ev.score([s])[0]["clip_score"] for s in samples]
    rows = [r for batch in run_evaluator(ev, samples, batch_size=2) for r in batch]
    assert [r.value for r in rows] == pytest.approx(single, rel=1e-5, abs=1e-4)
    assert {r.version for r in rows} == {ev.version} and all(r.error is None for r in rows)


def test_missing_local_dir_names_the_path(tmp_path, clip_dir):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotAvailableError, match="no-such-model"):
        CLIPScore(model=str(missing), offline=True)
    with pytest.raises(ModelNotAvailableError, match="no-such-model"):
        PickScore(model=str(missing), processor=str(clip_dir), offline=True)


def test_missing_hub_model_offline_says_how_to_get_it(tmp_path, clip_dir):
    with pytest.raises(ModelNotAvailableError) as err:
        PickScore(model="rlg-bench-test/no-such-pickscore", model_revision="abc123", processor=str(clip_dir),
                  offline=True, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "rlg-bench-test/no-such-pickscore" in msg
    assert "huggingface-cli download rlg-bench-test/no-such-pickscore --revision abc123" in msg
    assert "HF_HUB_OFFLINE" in msg and "model=" in msg


def test_offline_env_flag_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="offline mode"):
        CLIPScore(model="rlg-bench-test/no-such-clip", cache_dir=str(tmp_path))


def test_folder_without_tokenizer_files_is_refused(tmp_path):
    # transformers 5 would hand back an empty tokenizer (every prompt -> unknown tokens), not raise.
    d = save_tiny_hf_clip(tmp_path / "no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    with pytest.raises(ModelNotAvailableError, match="no vocabulary"):
        CLIPScore(model=str(d), offline=True)
    with pytest.raises(ModelNotAvailableError, match="no vocabulary"):
        PickScore(model=str(d), processor=str(d), offline=True)


def test_hub_id_loads_from_the_hub_cache_offline_and_records_the_commit(clip_dir, clip, samples, tmp_path):
    # The hub cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}.
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--rlg-bench-test--tiny-clip"
    shutil.copytree(clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    ev = CLIPScore(model="rlg-bench-test/tiny-clip", offline=True, cache_dir=str(tmp_path))
    assert ev.version == f"clip_score/100*max(cos,0)/rlg-bench-test/tiny-clip@{commit}/fp32"
    assert ev.score(samples) == clip.score(samples)
