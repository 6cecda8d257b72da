"""LAION aesthetic predictor: the REAL released head (read from ../shared/data, never copied into the repo)
on a tiny random open_clip backbone with 768-d embeddings saved in the hub layout.

Expected values: upstream's preprocessing and normalisation re-done with PIL/numpy, and the head
applied as the plain chain of affine maps its state dict describes (no activations).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data

from rlg.evaluators._models import ModelNotAvailableError, open_clip_tag
from rlg.evaluators.aesthetic import HEAD_FILENAME, HEAD_SHA256, HEAD_URL, Aesthetic, load_aesthetic_head
from rlg.evaluators.base import Evaluator, Sample, get_evaluator, run_evaluator
from tests.helpers.scorers import save_tiny_open_clip
from tests.helpers.shared_data import missing_reason, shared_path

REAL_HEAD = shared_path(f"aesthetic/{HEAD_FILENAME}") or Path("missing") / HEAD_FILENAME
SIZE = 64
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

pytestmark = pytest.mark.skipif(not REAL_HEAD.exists(), reason=missing_reason(f"aesthetic/{HEAD_FILENAME}"))


@pytest.fixture(scope="module")
def head_state():
    return torch.load(REAL_HEAD, map_location="cpu", weights_only=True)


def _head_by_hand(state, emb: np.ndarray) -> np.ndarray:
    x = emb.astype(np.float64)
    for i in (0, 2, 4, 6, 7):  # Linear layers; the Dropouts between are identities at inference
        x = x @ state[f"layers.{i}.weight"].double().numpy().T + state[f"layers.{i}.bias"].double().numpy()
    return x[:, 0]


def test_real_head_loads_strictly_and_matches_affine_chain(head_state):
    head = load_aesthetic_head(REAL_HEAD)
    assert [type(m).__name__ for m in head] == ["Linear", "Dropout", "Linear", "Dropout", "Linear", "Dropout",
                                                 "Linear", "Linear"]
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 768)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with torch.no_grad():
        got = head(torch.from_numpy(emb))[:, 0].numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _head_by_hand(head_state, emb), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny-l14") / "vit_large_patch14_clip_224.openai",
                               embed_dim=768, image_size=SIZE, patch_size=16)


@pytest.fixture(scope="module")
def samples():
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    sizes = [(128, 128), (150, 100), (70, 110)]
    return [Sample(f"img{i}", Image.fromarray(p).resize(s, Image.Resampling.BICUBIC))
            for i, (p, s) in enumerate(zip(photos, sizes))]


def _reference_pixels(image: Image.Image) -> torch.Tensor:
    """clip.load's transform: shorter side to SIZE (PIL bicubic), centre crop, [0, 1], OpenAI mean/std."""
    w, h = image.size
    # torchvision's Resize(int), which clip.load uses: the longer side is truncated, not rounded.
    nw, nh = (SIZE, int(SIZE * h / w)) if w <= h else (int(SIZE * w / h), SIZE)
    image = image.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = int(round((nw - SIZE) / 2.0)), int(round((nh - SIZE) / 2.0))
    arr = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
    return torch.from_numpy(((arr - MEAN) / STD).transpose(2, 0, 1).copy())


def _reference_scores(weights: Path, head_state, samples):
    cfg = json.loads((weights.parent / "open_clip_config.json").read_text())["model_cfg"]
    from safetensors.torch import load_file

    model = open_clip.CLIP(**cfg).eval()
    model.load_state_dict(load_file(weights))
    with torch.no_grad():
        feats = model.encode_image(torch.stack([_reference_pixels(s.image) for s in samples])).numpy()
    feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)  # upstream normalized()
    return _head_by_hand(head_state, feats)


def test_aesthetic_local_dir_backbone_with_real_head(backbone_dir, head_state, samples):
    ev = get_evaluator("aesthetic", clip_model=f"local-dir:{backbone_dir}", head_path=str(REAL_HEAD), offline=True)
    assert isinstance(ev, Evaluator) and ev.needs == frozenset({"image"})
    got = [r["aesthetic"] for r in ev.score(samples)]
    expected = _reference_scores(backbone_dir / "open_clip_model.safetensors", head_state, samples)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(got))
    assert ev.version == f"aesthetic/laion-v2-linearMSE/head-sha256:{HEAD_SHA256[:12]}/local:{backbone_dir.name}/fp32"


def test_aesthetic_named_architecture_with_checkpoint_file(backbone_dir, head_state, samples, tmp_path):
    # The other documented form: an open_clip config name + a checkpoint file as `clip_pretrained`.
    cfg = json.loads((backbone_dir / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "rlgtest-aesthetic-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "rlgtest-aesthetic-tiny.json")
    weights = backbone_dir / "open_clip_model.safetensors"
    ev = Aesthetic(clip_model="rlgtest-aesthetic-tiny", clip_pretrained=str(weights), head_path=str(REAL_HEAD),
                   offline=True, clip_quick_gelu=True)
    got = [r["aesthetic"] for r in ev.score(samples)]
    np.testing.assert_allclose(got, _reference_scores(weights, head_state, samples), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def ev(backbone_dir):
    return Aesthetic(clip_model=f"local-dir:{backbone_dir}", head_path=str(REAL_HEAD), offline=True)


def test_batch_equals_one_by_one(ev, samples):
    single = [ev.score([s])[0]["aesthetic"] for s in samples]
    rows = [r for batch in run_evaluator(ev, samples, batch_size=2) for r in batch]
    np.testing.assert_allclose([r.value for r in rows], single, rtol=1e-5, atol=1e-5)


def test_head_from_cache_is_checksum_verified(backbone_dir, ev, samples, tmp_path):
    shutil.copy(REAL_HEAD, tmp_path / HEAD_FILENAME)  # a temporary cache, as a first download leaves it
    cached = Aesthetic(clip_model=f"local-dir:{backbone_dir}", cache_dir=str(tmp_path), offline=True)
    assert cached.score(samples[:1]) == ev.score(samples[:1])

    (tmp_path / HEAD_FILENAME).write_bytes(b"not the head")
    with pytest.raises(ModelNotAvailableError, match=f"expected {HEAD_SHA256}"):
        Aesthetic(clip_model=f"local-dir:{backbone_dir}", cache_dir=str(tmp_path), offline=True)


def test_missing_head_and_backbone_errors(backbone_dir, tmp_path):
    with pytest.raises(ModelNotAvailableError) as err:
        Aesthetic(clip_model=f"local-dir:{backbone_dir}", cache_dir=str(tmp_path / "empty"), offline=True)
    assert HEAD_URL in str(err.value) and HEAD_SHA256 in str(err.value) and "head_path=" in str(err.value)
    with pytest.raises(ModelNotAvailableError, match="head_path="):
        Aesthetic(clip_model=f"local-dir:{backbone_dir}", head_path=str(tmp_path / "nope.pth"), offline=True)
    # The default backbone tag resolves through its hub repo; offline and uncached it says which one.
    with pytest.raises(ModelNotAvailableError) as err:
        Aesthetic(head_path=str(REAL_HEAD), offline=True, cache_dir=str(tmp_path))
    assert "timm/vit_large_patch14_clip_224.openai" in str(err.value) and "local-dir:" in str(err.value)
    with pytest.raises(ModelNotAvailableError, match="open_clip_config.json"):
        Aesthetic(clip_model=f"local-dir:{tmp_path}", head_path=str(REAL_HEAD), offline=True)


def test_wrong_embedding_size_is_refused(tmp_path):
    small = save_tiny_open_clip(tmp_path / "small", embed_dim=16, image_size=SIZE, patch_size=16)
    with pytest.raises(ValueError, match="expects 768"):
        Aesthetic(clip_model=f"local-dir:{small}", head_path=str(REAL_HEAD), offline=True)


def test_openai_tag_resolves_to_quick_gelu_and_safetensors():
    # open_clip's plain "ViT-L-14" config uses nn.GELU, but OpenAI's weights were trained with QuickGELU:
    # the tag's flag must reach create_model, and safetensors must be tried before the pickle.
    repo, candidates, kwargs = open_clip_tag("ViT-L-14", "openai")
    assert repo == "timm/vit_large_patch14_clip_224.openai"
    assert candidates == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert kwargs["force_quick_gelu"] is True
    assert tuple(kwargs["image_mean"]) == tuple(MEAN.tolist()) or np.allclose(kwargs["image_mean"], MEAN)
    assert kwargs["image_interpolation"] == "bicubic" and kwargs["image_resize_mode"] == "shortest"
    assert open_clip.get_model_config("ViT-L-14").get("quick_gelu", False) is False  # why the flag matters
    with pytest.raises(ModelNotAvailableError, match="tags:"):
        open_clip_tag("ViT-L-14", "no-such-tag")


def test_url_download_is_verified_and_atomic(tmp_path):
    # urllib also serves file:// URLs, so the download path runs here without network.
    from rlg.evaluators._models import cached_url_file

    url = REAL_HEAD.as_uri()
    path = cached_url_file(url, HEAD_SHA256, HEAD_FILENAME, cache_dir=tmp_path / "c", offline=False,
                           option="head_path", what="test")
    assert path == tmp_path / "c" / HEAD_FILENAME and path.read_bytes() == REAL_HEAD.read_bytes()
    with pytest.raises(ModelNotAvailableError, match="expected 00"):
        cached_url_file(url, "00" * 32, "other.pth", cache_dir=tmp_path / "d", offline=False, option="head_path",
                        what="test")
    assert list((tmp_path / "d").iterdir()) == []  # nothing left behind under any name


def test_openai_weights_from_a_file_get_quick_gelu_or_are_refused(tmp_path):
    """A weights file does not say its activation: the load is refused naming clip_quick_gelu; with it, the model
    equals open_clip's own ``-quickgelu`` config (built the way open_clip names its QuickGELU variants)."""
    from safetensors.torch import save_file

    from rlg.evaluators._models import ModelNotAvailableError, load_open_clip

    cfg = json.loads((save_tiny_open_clip(tmp_path / "t", embed_dim=16, image_size=32, patch_size=16,
                                          quick_gelu=False) / "open_clip_config.json").read_text())["model_cfg"]
    for name, quick in (("rlgtest-qg-tiny", False), ("rlgtest-qg-tiny-quickgelu", True)):
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(cfg, quick_gelu=quick) if quick else cfg))
        open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(3)
    reference = open_clip.create_model("rlgtest-qg-tiny-quickgelu").eval()  # "OpenAI" weights: trained with QuickGELU
    weights = tmp_path / "openai_weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, weights)
    kw = dict(offline=True, option="clip_model", what="test backbone")
    with pytest.raises(ModelNotAvailableError, match="clip_quick_gelu=true for OpenAI CLIP weights"):
        load_open_clip("rlgtest-qg-tiny", str(weights), **kw)
    with pytest.raises(ModelNotAvailableError, match="clip_quick_gelu=true for OpenAI"):
        Aesthetic(clip_model="rlgtest-qg-tiny", clip_pretrained=str(weights), head_path=str(REAL_HEAD), offline=True)
    model, _, source = load_open_clip("rlgtest-qg-tiny", str(weights), quick_gelu=True, **kw)
    plain = open_clip.create_model("rlgtest-qg-tiny", pretrained=str(weights)).eval()  # what open_clip does unasked
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), reference.encode_image(x))
        assert not torch.allclose(plain.encode_image(x), reference.encode_image(x), atol=1e-4)  # why it matters
    assert source.endswith(":quickgelu")
    with pytest.raises(ModelNotAvailableError, match="contradicts"):  # a tag states its activation itself
        load_open_clip("ViT-L-14", "openai", quick_gelu=False, **kw)
