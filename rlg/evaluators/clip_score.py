"""CLIP score: text-image cosine similarity of a CLIP model, clipped at 0 and scaled.

score = ``scale * max(cos(E_image, E_text), 0)``.

- ``scale=100`` (default) is the torchmetrics convention (Lightning-AI/torchmetrics :
  src/torchmetrics/functional/multimodal/clip_score.py, ``max(100 * cos, 0)``) with its default
  backbone openai/clip-vit-large-patch14 loaded through transformers ``CLIPModel``/``CLIPProcessor``.
  torchmetrics clips the *batch mean* at 0; we clip each image, so means agree whenever no cosine is
  negative (true for any real image/prompt pair in practice). For prompts longer than 77 tokens
  torchmetrics cuts the token ids after tokenising (dropping the end-of-text token the pooled
  feature is read from); we let the tokenizer truncate (``truncation=True, max_length=77``), which
  keeps that token, as OpenAI's ``clip.tokenize(truncate=True)`` does. Identical otherwise.
- ``scale=2.5`` is CLIP-S of Hessel et al. 2021 (``w = 2.5``); their paper used ViT-B/32 and the
  text prefix "A photo depicts" (``text_prefix="A photo depicts "``).

The backbone, scale and prefix are in ``version``. ``model`` may be a local folder saved with
``save_pretrained`` (a tiny CLIP for offline runs): the processor is read from the same place.
"""

from __future__ import annotations

from typing import Any

from rlg.evaluators._models import dtype_tag, embeddings, hub_commit, load_processor_and_model, source_tag
from rlg.runtime import default_device, hub_offline, torch_dtype
from rlg.evaluators.base import TORCH_PLACES, Sample
from rlg.metrics import Metric, directions, register_metrics

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


class CLIPScore:
    name = "clip_score"
    declares = register_metrics(Metric(
        "clip_score", "CLIP score", "", True, ("reward", "alignment"),
        "CLIP score: max(100·cos, 0) with openai/clip-vit-large-patch14; higher is better.", reward_rank=9))
    metrics = directions(declares)
    option_effects = {**dict.fromkeys(("model", "revision", "scale", "text_prefix", "dtype"), "score"), **TORCH_PLACES}
    needs = frozenset({"image", "prompt"})
    requires = ("transformers",)

    def __init__(self, model: str = DEFAULT_MODEL, revision: str | None = None, scale: float = 100.0,
                 text_prefix: str = "", device: str | None = None, dtype: Any = "float32", offline: bool | None = None,
                 cache_dir: str | None = None):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        offline = hub_offline(offline)
        self.scale = float(scale)
        self.text_prefix = text_prefix
        self.device = default_device(device)
        self.dtype = torch_dtype(dtype)
        self.processor, self.model = load_processor_and_model(
            CLIPProcessor.from_pretrained, model, revision, CLIPModel.from_pretrained, model, revision,
            what="CLIP score", offline=offline, cache_dir=cache_dir, device=self.device, dtype=self.dtype)
        self._torch = torch
        self._max_len = self.model.config.text_config.max_position_embeddings
        commit = hub_commit(model, revision, "config.json", cache_dir)  # the resolved commit, not "main"
        prefix = f"/prefix={text_prefix!r}" if text_prefix else ""
        self.version = (f"clip_score/{self.scale:g}*max(cos,0)/{source_tag(model, revision, commit)}{prefix}"
                        f"/{dtype_tag(self.dtype)}")

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        torch = self._torch
        texts = [self.text_prefix + s.prompt for s in batch]
        text_inputs = self.processor(
            text=texts, padding=True, truncation=True, max_length=self._max_len, return_tensors="pt"
        ).to(self.device)
        pixel_values = self.processor(images=[s.image for s in batch], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            img = embeddings(self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype)))
            txt = embeddings(self.model.get_text_features(**text_inputs))
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
            scores = self.scale * (img * txt).sum(-1).clamp(min=0)
        return [{"clip_score": float(v)} for v in scores.cpu()]
