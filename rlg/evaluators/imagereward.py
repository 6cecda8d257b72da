"""ImageReward v1.0: BLIP (ViT-L/16 image encoder + BERT-base text encoder with cross-attention to the
image) and an MLP head on the text [CLS] feature, trained on human preference rankings.

Definition (THUDM/ImageReward @ c1392c6 : ImageReward/ImageReward.py ``ImageReward.score``,
ImageReward/utils.py ``load``, ImageReward/models/BLIP/):

- image: Resize(224, bicubic) on the PIL image, CenterCrop(224), RGB, ToTensor, OpenAI CLIP mean/std;
  ``image_embeds = blip.visual_encoder(image)`` (BLIP ViT-L/16, LayerNorm eps 1e-6, exact GELU).
- prompt: bert-base-uncased tokenizer (plus BLIP's added [DEC] / [ENC] tokens),
  ``padding='max_length', truncation=True, max_length=35``; the ids are used as they are
  (the first token stays [CLS]; ``score`` does not swap in [ENC]).
- ``blip.text_encoder(ids, attention_mask, encoder_hidden_states=image_embeds,
  encoder_attention_mask=ones)``, bidirectional ("multimodal" mode); feature = last_hidden_state[:, 0].
- reward = ``(mlp(feature) - 0.16717362830052426) / 1.0333394966054072``; the MLP has the same
  768-1024-128-64-16-1 linear layout (dropouts, no activations) as the LAION aesthetic head.
- weights: hub repo THUDM/ImageReward, files ImageReward.pt (a state dict, upstream loads it with
  ``strict=False``) and med_config.json (the BERT config).

Why not the ``image-reward`` pip package: version 1.5 pins ``timm==0.6.13`` (open_clip_torch 3.x needs
``timm>=1.0.17``) and ``fairscale==0.4.13``, imports OpenAI's ``clip`` package (not on PyPI under that
name) at import time, and its BLIP text encoder (models/BLIP/med.py) imports helpers that transformers
5 no longer has where it looks (``transformers.modeling_utils.apply_chunking_to_forward`` and
friends). So the same network is built here from transformers' own BLIP modules, which are ports of
BLIP's code: ``BlipVisionModel`` for the ViT and ``BlipTextModel`` (med.py's BertModel: identical
parameter names) for the text encoder, with the checkpoint's keys renamed. Parameters the checkpoint
has but scoring does not use (``blip.vision_proj``, ``blip.text_proj``, med.py's ``position_ids``
buffer) are ignored; every parameter the network needs must be present (stricter than upstream).
Checked against upstream's own vit.py/med.py (import shims only): same rewards to 4e-7 on a small
random model, and identical parameter names and shapes at full size.

``checkpoint`` is a folder holding ImageReward.pt + med_config.json (``huggingface-cli download
THUDM/ImageReward ImageReward.pt med_config.json --local-dir DIR``) or the .pt file next to its
med_config.json; by default both come from the hub. ``vision_config`` overrides the ViT-L/16 sizes,
for tiny test checkpoints only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rlg.evaluators._models import (ModelNotAvailableError, check_tokenizer, dtype_tag, hub_file, load_pretrained,
                                    source_tag)
from rlg.files import sha256_bytes, sha256_file
from rlg.runtime import default_device, hub_offline, torch_dtype
from rlg.evaluators.aesthetic import aesthetic_head
from rlg.evaluators.base import TORCH_PLACES, Sample
from rlg.metrics import Metric, directions, register_metrics
from rlg.extras import require

HUB_REPO = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
# BLIP's create_vit('large', 224): ViT-L/16 at 224 px, qkv bias, LayerNorm eps 1e-6.
VIT_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=224, patch_size=16)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_VIT_RENAMES = [  # BLIP vit.py name -> transformers BlipVisionModel name
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def split_checkpoint(state: dict) -> tuple[dict, dict, dict, list[str]]:
    """Upstream ImageReward state dict -> (vision, text, mlp) state dicts in transformers/our names,
    plus the keys left unused."""
    vision, text, mlp, unused = {}, {}, {}, []
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder."):]
            for pattern, repl in _VIT_RENAMES:
                new, n = re.subn(pattern, repl, name)
                if n:
                    vision[new] = value
                    break
            else:
                unused.append(key)
        elif key.startswith("blip.text_encoder.") and not key.endswith("embeddings.position_ids"):
            text[key[len("blip.text_encoder."):]] = value  # med.py and BlipTextModel share names
        elif key.startswith("mlp.layers."):
            mlp[key[len("mlp.layers."):]] = value
        else:
            unused.append(key)
    return vision, text, mlp, unused


def _load_strict(module, state: dict, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    # transformers registers some buffers (position ids) that checkpoints need not carry.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"ImageReward checkpoint does not fit the {what}: missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]}")


class ImageReward:
    name = "imagereward"
    declares = register_metrics(Metric(
        "imagereward", "ImageReward", "", True, ("reward", "quality"),
        "ImageReward: BLIP + MLP, normalised as upstream; higher is better.", reward_rank=6))
    metrics = directions(declares)
    option_effects = {**dict.fromkeys(("checkpoint", "repo", "revision", "tokenizer", "tokenizer_revision",
                                       "vision_config", "dtype"), "score"), **TORCH_PLACES}
    needs = frozenset({"image", "prompt"})
    requires = ("transformers", "torchvision")

    def __init__(self, checkpoint: str | None = None, repo: str = HUB_REPO, revision: str | None = None,
                 tokenizer: str = "bert-base-uncased", tokenizer_revision: str | None = None,
                 vision_config: dict | None = None, device: str | None = None, dtype: Any = "float32",
                 offline: bool | None = None, cache_dir: str | None = None):
        import torch
        T = require("torchvision.transforms", purpose="the imagereward evaluator")
        from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        offline = hub_offline(offline)
        self.device = default_device(device)
        self.dtype = torch_dtype(dtype)

        ckpt_path, med_path = self._resolve_files(checkpoint, repo, revision, offline, cache_dir)
        med = json.loads(Path(med_path).read_text())
        vit = dict(VIT_LARGE, **(vision_config or {}))

        self.tokenizer = load_pretrained(
            BertTokenizer.from_pretrained, tokenizer, revision=tokenizer_revision, offline=offline,
            option="tokenizer", what="ImageReward tokenizer (bert-base-uncased)", cache_dir=cache_dir,
        )
        check_tokenizer(self.tokenizer, tokenizer, option="tokenizer", what="ImageReward tokenizer")
        # BLIP's init_tokenizer adds these; prompts containing the literal strings tokenise as upstream.
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_tokens(["[ENC]"], special_tokens=True)

        vision = BlipVisionModel(BlipVisionConfig(layer_norm_eps=1e-6, hidden_act="gelu", **vit))
        text = BlipTextModel(
            BlipTextConfig(
                vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=vit["hidden_size"],
                intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
                num_attention_heads=med["num_attention_heads"],
                max_position_embeddings=med["max_position_embeddings"], hidden_act=med.get("hidden_act", "gelu"),
                layer_norm_eps=med.get("layer_norm_eps", 1e-12), pad_token_id=med.get("pad_token_id", 0),
                is_decoder=True,  # builds the cross-attention layers; forward(is_decoder=False) = bidirectional
            ),
            add_pooling_layer=False,
        )
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RuntimeError(f"could not load {ckpt_path} with torch.load(weights_only=True): {exc}") from exc
        vision_sd, text_sd, mlp_sd, self.unused_keys = split_checkpoint(state)
        del state
        _load_strict(vision, vision_sd, "BLIP ViT")
        _load_strict(text, text_sd, "BLIP text encoder")
        mlp = aesthetic_head(med["hidden_size"])
        mlp.load_state_dict(mlp_sd, strict=True)
        self.vision = vision.eval().to(self.device, self.dtype)
        self.text = text.eval().to(self.device, self.dtype)
        self.mlp = mlp.eval().to(self.device)  # upstream casts the feature to float32 before the MLP
        size = vit["image_size"]
        self.preprocess = T.Compose([
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ])
        self._torch = torch
        self.version = (
            f"imagereward/v1.0/(mlp-{REWARD_MEAN:.6g})/{REWARD_STD:.6g}/ckpt-sha256:{sha256_file(ckpt_path)[:12]}"
            f"/tok={source_tag(tokenizer, tokenizer_revision)}/maxlen{MAX_PROMPT_TOKENS}/{dtype_tag(self.dtype)}"
        )
        if vision_config:  # settings the strict load cannot catch (layer_norm_eps, hidden_act, ...) change the scores
            digest = sha256_bytes(json.dumps(vision_config, sort_keys=True, default=str).encode())
            self.version += f"/vit-{digest[:12]}"

    @staticmethod
    def _resolve_files(checkpoint, repo, revision, offline, cache_dir) -> tuple[str, str]:
        if checkpoint is None:
            kw = dict(revision=revision, offline=offline, option="checkpoint", cache_dir=cache_dir)
            return (hub_file(repo, CHECKPOINT, what="ImageReward checkpoint", **kw),
                    hub_file(repo, MED_CONFIG, what="ImageReward BERT config", **kw))
        path = Path(checkpoint).expanduser()
        ckpt, med = (path / CHECKPOINT, path / MED_CONFIG) if path.is_dir() else (path, path.parent / MED_CONFIG)
        for f in (ckpt, med):
            if not f.is_file():
                raise ModelNotAvailableError(
                    f"ImageReward: {str(f)!r} not found (option checkpoint=). Get both files with "
                    f"`huggingface-cli download {repo} {CHECKPOINT} {MED_CONFIG} --local-dir DIR` "
                    "and pass checkpoint=DIR"
                )
        return str(ckpt), str(med)

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        torch = self._torch
        text = self.tokenizer(
            [s.prompt for s in batch], padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
            return_tensors="pt",
        ).to(self.device)
        pixels = torch.stack([self.preprocess(s.image) for s in batch]).to(self.device, self.dtype)
        with torch.no_grad():
            image_embeds = self.vision(pixel_values=pixels).last_hidden_state
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
            out = self.text(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                            encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts, is_decoder=False)
            feature = out.last_hidden_state[:, 0, :].float()
            rewards = (self.mlp(feature).squeeze(-1) - REWARD_MEAN) / REWARD_STD
        return [{"imagereward": float(v)} for v in rewards.cpu()]
