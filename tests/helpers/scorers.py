"""Tiny random scorer models saved in the upstream layouts, for tests and offline smoke runs.

Nothing here downloads. The CLIP tokenizer is OpenAI's real byte-level BPE, built from the vocabulary
file open_clip ships, so token ids equal the real tokenizer's. Models are random (seeded), so their
scores mean nothing; they exercise the real loading and scoring code paths:

- ``save_tiny_hf_clip(dir)``: a transformers ``CLIPModel`` + ``CLIPProcessor`` folder (config.json,
  model.safetensors, preprocessor_config.json, tokenizer files), the layout of
  openai/clip-vit-large-patch14 and yuvalkirstain/PickScore_v1. Point ``clip_score``'s ``model=``
  (or PickScore's ``model=`` / ``processor=``) at it.
- ``save_tiny_open_clip(dir, embed_dim)``: open_clip_config.json + open_clip_model.safetensors, the
  layout of timm/vit_large_patch14_clip_224.openai; load with ``local-dir:<dir>``.
- ``tiny_open_clip_config(embed_dim)``: a model config for ``open_clip.add_model_config``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlg import tiny_pairs as fixtures


def clip_bpe() -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's full vocabulary (49408 tokens) and merges, built as open_clip's SimpleTokenizer does."""
    return fixtures.clip_bpe(fixtures.ALL_MERGES)


def clip_tokenizer():
    return fixtures.clip_tokenizer(num_merges=fixtures.ALL_MERGES)


def save_tiny_hf_clip(
    directory: str | Path, *, seed: int = 0, hidden: int = 32, projection_dim: int = 16,
    image_size: int = 64, patch_size: int = 16, logit_scale: float | None = None,
) -> Path:
    """A random tiny transformers CLIP with its processor, saved with ``save_pretrained``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    directory = Path(directory)
    tok = clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )
    model = CLIPModel(config).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    # The real CLIP processors: shorter side to the model's size (bicubic), centre crop, OpenAI mean/std.
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        resample=3, do_center_crop=True, do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    model.save_pretrained(directory)
    # Saved one by one, as the hub repos have them: preprocessor_config.json + tokenizer files.
    image_processor.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def tiny_open_clip_config(embed_dim: int = 16, image_size: int = 64, patch_size: int = 16, width: int = 32,
                          quick_gelu: bool = False) -> dict:
    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": width, "head_width": 16,
                       "patch_size": patch_size},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 2},
    }
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


def save_tiny_open_clip(directory: str | Path, *, seed: int = 0, quick_gelu: bool = True, **config) -> Path:
    """A random tiny open_clip CLIP in the hub layout (open_clip_config.json + open_clip_model.safetensors).
    ``quick_gelu`` goes into model_cfg, as the configs of OpenAI's weights state it (False: the key is left out)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = tiny_open_clip_config(quick_gelu=quick_gelu, **config)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    preprocess_cfg = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                      "interpolation": "bicubic", "resize_mode": "shortest"}
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    return directory


def save_tiny_bert_tokenizer(directory: str | Path, n_words: int = 3000) -> Path:
    """A real WordPiece ``BertTokenizer`` with bert-base-uncased's special-token ids ([PAD] 0, [UNK] 100,
    [CLS] 101, [SEP] 102, [MASK] 103) over a small lowercase vocabulary (words of CLIP's vocabulary)."""
    from transformers import BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab += chars + ["##" + c for c in chars if c.isalnum()]
    words = [t[:-4] for t in clip_bpe()[0] if t.endswith("</w>") and t[:-4].isalpha() and t[:-4].islower()]
    vocab += [w for w in dict.fromkeys(words) if len(w) > 1][:n_words]
    BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True).save_pretrained(directory)
    return directory
