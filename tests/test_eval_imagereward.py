"""ImageReward on a tiny random BLIP saved as upstream's ImageReward.pt (BLIP parameter names) + med_config.json.

The network is built here from transformers' BLIP modules, its parameters renamed to the names of BLIP's
vit.py / med.py (what THUDM/ImageReward's checkpoint uses), and saved; the evaluator must find its way
back. Expected rewards use those modules directly, a hand-written preprocessing and the MLP as a chain
of affine maps.

(Checked once outside the suite: the same evaluator on a checkpoint written by upstream's own BLIP
classes (THUDM/ImageReward @ c1392c6, vit.py/med.py with import shims for transformers 5) reproduces
upstream ``ImageReward.score`` to 4e-7.)
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from rlg.evaluators._models import ModelNotAvailableError
from rlg.evaluators.base import Evaluator, Sample, get_evaluator, run_evaluator
from tests.helpers.scorers import save_tiny_bert_tokenizer
from rlg.evaluators.imagereward import ImageReward

SIZE, VIT_DIM, TXT_DIM = 64, 64, 48
VISION = dict(hidden_size=VIT_DIM, intermediate_size=4 * VIT_DIM, num_hidden_layers=2, num_attention_heads=4,
              image_size=SIZE, patch_size=16)
MED = {  # BLIP's med_config.json with tiny sizes (the real one: hidden 768, 12 layers, 12 heads)
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": TXT_DIM, "initializer_range": 0.02, "intermediate_size": 96,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 4,
    "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768,
    "add_cross_attention": True,
}
MEAN, STD = 0.16717362830052426, 1.0333394966054072


def _blip_vit_name(name: str) -> str:
    """transformers BlipVisionModel parameter name -> BLIP vit.py name."""
    fixed = {"embeddings.class_embedding": "cls_token", "embeddings.position_embedding": "pos_embed"}
    if name in fixed:
        return fixed[name]
    name = name.replace("embeddings.patch_embedding.", "patch_embed.proj.").replace("post_layernorm.", "norm.")
    name = name.replace("encoder.layers.", "blocks.").replace(".layer_norm1.", ".norm1.").replace(".layer_norm2.", ".norm2.")
    return name.replace(".self_attn.projection.", ".attn.proj.").replace(".self_attn.qkv.", ".attn.qkv.")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagereward")
    torch.manual_seed(0)
    vision = BlipVisionModel(BlipVisionConfig(layer_norm_eps=1e-6, **VISION)).eval()
    text = BlipTextModel(BlipTextConfig(vocab_size=MED["vocab_size"], hidden_size=TXT_DIM, encoder_hidden_size=VIT_DIM,
                                        intermediate_size=MED["intermediate_size"], num_hidden_layers=2,
                                        num_attention_heads=4, is_decoder=True), add_pooling_layer=False).eval()
    mlp = {f"{i}.weight": torch.randn(o, n) / n**0.5 for i, (n, o) in
           zip((0, 2, 4, 6, 7), [(TXT_DIM, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)])}
    mlp.update({f"{i}.bias": 0.1 * torch.randn(o) for i, o in zip((0, 2, 4, 6, 7), (1024, 128, 64, 16, 1))})
    with torch.no_grad():  # move every parameter off its init (unit LayerNorms, zero biases) so all of it matters
        for p in list(vision.parameters()) + list(text.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    state = {f"blip.visual_encoder.{_blip_vit_name(k)}": v for k, v in vision.state_dict().items()}
    state.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(512)[None]  # med.py saves this buffer
    state.update({f"mlp.layers.{k}": v for k, v in mlp.items()})
    state["blip.vision_proj.weight"] = torch.randn(256, VIT_DIM)  # in the real checkpoint, unused by score()
    ckpt = root / "THUDM-ImageReward"
    ckpt.mkdir()
    torch.save(state, ckpt / "ImageReward.pt")
    (ckpt / "med_config.json").write_text(json.dumps(MED))
    tok_dir = save_tiny_bert_tokenizer(root / "bert-base-uncased")
    return dict(ckpt=ckpt, tok=tok_dir, vision=vision, text=text, mlp=mlp)


@pytest.fixture(scope="module")
def samples():
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    images = [Image.fromarray(p).resize(s, Image.Resampling.BICUBIC)
              for p, s in zip(photos, [(96, 96), (120, 80), (70, 100)])]
    prompts = ["a photo of an astronaut", "a cup of coffee on a wooden table " * 5, "a cat"]  # the 2nd > 35 tokens
    return [Sample(f"img{i}", im, p) for i, (im, p) in enumerate(zip(images, prompts))]


def _pixels(image: Image.Image) -> torch.Tensor:
    w, h = image.size  # torchvision Resize(int): shorter side to SIZE, longer side truncated
    nw, nh = (SIZE, int(SIZE * h / w)) if w <= h else (int(SIZE * w / h), SIZE)
    image = image.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = int(round((nw - SIZE) / 2.0)), int(round((nh - SIZE) / 2.0))
    arr = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
    arr = (arr - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    return torch.from_numpy(arr.astype(np.float32).transpose(2, 0, 1).copy())


def _expected(tiny, s: Sample) -> float:
    tok = BertTokenizer.from_pretrained(tiny["tok"])
    ids = tok(s.prompt)["input_ids"]
    ids = ids[:34] + [tok.sep_token_id] if len(ids) > 35 else ids  # truncation keeps [SEP] last
    mask = [1] * len(ids) + [0] * (35 - len(ids))
    ids = ids + [tok.pad_token_id] * (35 - len(ids))
    with torch.no_grad():
        image_embeds = tiny["vision"](pixel_values=_pixels(s.image)[None]).last_hidden_state
        out = tiny["text"](input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]),
                           encoder_hidden_states=image_embeds, is_decoder=False)
    x = out.last_hidden_state[0, 0].double()
    for i in (0, 2, 4, 6, 7):
        x = tiny["mlp"][f"{i}.weight"].double() @ x + tiny["mlp"][f"{i}.bias"].double()
    return (float(x[0]) - MEAN) / STD


@pytest.fixture(scope="module")
def ev(tiny):
    return ImageReward(checkpoint=str(tiny["ckpt"]), tokenizer=str(tiny["tok"]), vision_config=VISION, offline=True)


def test_imagereward_matches_independent_computation(tiny, ev, samples):
    assert isinstance(ev, Evaluator) and ev.metrics == {"imagereward": True}
    got = [r["imagereward"] for r in ev.score(samples)]
    expected = [_expected(tiny, s) for s in samples]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert len(set(np.round(got, 4))) == 3  # images and prompts actually change the reward
    assert ev.unused_keys == ["blip.text_encoder.embeddings.position_ids", "blip.vision_proj.weight"]
    assert ev.version.startswith("imagereward/v1.0/(mlp-0.167174)/1.03334/ckpt-sha256:")
    assert "/maxlen35/fp32" in ev.version


def test_prompt_truncated_to_35_tokens(ev, samples):
    s = samples[1]
    longer = Sample("longer", s.image, s.prompt + " and a croissant and a glass of orange juice")
    assert ev.score([s])[0]["imagereward"] == pytest.approx(ev.score([longer])[0]["imagereward"], abs=1e-6)


def test_batch_equals_one_by_one(tiny, samples):
    ev = get_evaluator("imagereward", checkpoint=str(tiny["ckpt"] / "ImageReward.pt"), tokenizer=str(tiny["tok"]),
                       vision_config=VISION, offline=True)
    single = [ev.score([s])[0]["imagereward"] for s in samples]
    rows = [r for batch in run_evaluator(ev, samples, batch_size=2) for r in batch]
    assert [r.value for r in rows] == pytest.approx(single, rel=1e-5, abs=1e-5)


def test_incomplete_checkpoint_is_refused(tiny, tmp_path):
    state = torch.load(tiny["ckpt"] / "ImageReward.pt", weights_only=True)
    del state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"]
    torch.save(state, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text(json.dumps(MED))
    with pytest.raises(RuntimeError, match="crossattention.self.key.weight"):
        ImageReward(checkpoint=str(tmp_path), tokenizer=str(tiny["tok"]), vision_config=VISION, offline=True)


def test_missing_files_errors(tiny, tmp_path):
    with pytest.raises(ModelNotAvailableError) as err:
        ImageReward(checkpoint=str(tmp_path), tokenizer=str(tiny["tok"]), offline=True)
    assert "ImageReward.pt" in str(err.value)
    assert "huggingface-cli download THUDM/ImageReward ImageReward.pt med_config.json" in str(err.value)
    with pytest.raises(ModelNotAvailableError) as err:
        ImageReward(offline=True, cache_dir=str(tmp_path))
    assert "THUDM/ImageReward/ImageReward.pt" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    with pytest.raises(ModelNotAvailableError) as err:
        ImageReward(checkpoint=str(tiny["ckpt"]), tokenizer="rlg-bench-test/no-such-bert", offline=True,
                    cache_dir=str(tmp_path))
    assert "huggingface-cli download rlg-bench-test/no-such-bert" in str(err.value)
