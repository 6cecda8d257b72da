"""PickScore: a CLIP-H fine-tuned on Pick-a-Pic human preferences.

Definition (yuvalkirstain/PickScore @ f79607f : README, "Inference with PickScore"): transformers
``AutoModel`` yuvalkirstain/PickScore_v1 with the processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K;
images and the prompt go through the processor with ``padding=True, truncation=True, max_length=77``;
score = ``logit_scale.exp() * cos(text_emb, image_emb)``, the raw logit (about 18-24 for typical
images). The README then takes a softmax over the images of one prompt; we keep the raw score, the
number papers report. Flow-GRPO's training reward divides it by 26: not done here.
"""

from __future__ import annotations

from typing import Any

from rlg.evaluators._models import dtype_tag, embeddings, hub_commit, load_processor_and_model, source_tag
from rlg.runtime import default_device, hub_offline, torch_dtype
from rlg.evaluators.base import TORCH_PLACES, Sample
from rlg.metrics import Metric, directions, register_metrics

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore:
    name = "pickscore"
    declares = register_metrics(Metric(
        "pickscore", "PickScore", "", True, ("reward", "quality"),
        "PickScore: logit_scale·cos(text, image) of PickScore_v1 (about 18-24); higher is better.", reward_rank=3))
    metrics = directions(declares)
    option_effects = {**dict.fromkeys(("model", "model_revision", "processor", "processor_revision", "dtype"), "score"),
                      **TORCH_PLACES}
    needs = frozenset({"image", "prompt"})
    requires = ("transformers",)

    def __init__(self, model: str = DEFAULT_MODEL, model_revision: str | None = None,
                 processor: str = DEFAULT_PROCESSOR, processor_revision: str | None = None, device: str | None = None,
                 dtype: Any = "float32", offline: bool | None = None, cache_dir: str | None = None):
        import torch
        from transformers import AutoModel, AutoProcessor

        offline = hub_offline(offline)
        self.device = default_device(device)
        self.dtype = torch_dtype(dtype)
        self.processor, self.model = load_processor_and_model(
            AutoProcessor.from_pretrained, processor, processor_revision, AutoModel.from_pretrained, model,
            model_revision, what="PickScore", offline=offline, cache_dir=cache_dir, device=self.device,
            dtype=self.dtype, processor_option="processor",
            # transformers 5.24's AutoModel looks for a PEFT adapter_config.json without passing on
            # local_files_only, so offline it would retry the network for ~25 s before failing.
            adapter_kwargs=dict(local_files_only=offline, cache_dir=cache_dir))
        self._torch = torch
        # Record the resolved hub commits, not a moving branch name like "main".
        model_commit = hub_commit(model, model_revision, "config.json", cache_dir)
        proc_commit = hub_commit(processor, processor_revision, "preprocessor_config.json", cache_dir)
        self.version = (f"pickscore/logit_scale*cos/{source_tag(model, model_revision, model_commit)}"
                        f"/proc={source_tag(processor, processor_revision, proc_commit)}/{dtype_tag(self.dtype)}")

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        torch = self._torch
        common = dict(padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_inputs = self.processor(images=[s.image for s in batch], **common).to(self.device)
        text_inputs = self.processor(text=[s.prompt for s in batch], **common).to(self.device)
        with torch.no_grad():
            image_embs = embeddings(
                self.model.get_image_features(pixel_values=image_inputs["pixel_values"].to(self.dtype)))
            text_embs = embeddings(self.model.get_text_features(**text_inputs))
            image_embs = image_embs.float() / torch.norm(image_embs.float(), dim=-1, keepdim=True)
            text_embs = text_embs.float() / torch.norm(text_embs.float(), dim=-1, keepdim=True)
            # Row-wise dot product: each image against its own prompt (the README's diagonal).
            scores = self.model.logit_scale.exp().float() * (text_embs * image_embs).sum(-1)
        return [{"pickscore": float(v)} for v in scores.cpu()]
