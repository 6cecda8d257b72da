"""GenEval's zero-shot colour classifier (open_clip), as in djghosh13/geneval @ af4902f :
evaluation/evaluate_images.py (``ImageCrops``, ``color_classification``) with clip_benchmark 1.4's
``zero_shot_classifier`` / ``run_classification``.

Each object is composited through its mask over a flat #999 background, cropped to its box, put
through the model's eval transform, and classified among the 10 colours with the 3 templates
"a photo of a {c} {object}", "a photo of a {c}-colored {object}", "a photo of a {c} object"
(per-template embeddings L2-normalised, averaged, re-normalised; logits = 100 * cos).
clip_benchmark 1.4's functions default to ``amp=True``, and GenEval calls them without ``amp``, so
on CUDA both text and image passes ran under fp16 autocast with the model in fp32; ``amp=True``
(the default) does the same here. Autocast only acts on CUDA, as upstream's
``torch.cuda.amp.autocast`` did.

Upstream used open_clip 2.20, whose ``pretrained="openai"`` loaded OpenAI's own model, which uses
QuickGELU. open_clip 3.x builds "ViT-L-14" with plain GELU even for the openai weights (it only
warns), so the activation follows the weights here (``rlg.evaluators._models.clip_quick_gelu``): the
tag's flag, or ``quick_gelu`` given with a weights file (refused without it).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rlg.evaluators.geneval.rules import COLORS, Detection
from rlg.extras import require

TEMPLATES = ("a photo of a {{c}} {cls}", "a photo of a {{c}}-colored {cls}", "a photo of a {{c}} object")

_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _precision(dtype: str | torch.dtype | None) -> str:
    if dtype is None:
        return "fp32"
    if isinstance(dtype, torch.dtype):
        return _PRECISION[dtype]
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)


def mask_crop(image: Image.Image, det: Detection, bgcolor: str = "#999", crop: bool = True) -> Image.Image:
    """The object's pixels over a flat ``bgcolor`` (or the whole image if it has no mask), cut to its box."""
    image = image.convert("RGB")
    if det.mask is not None:
        mask = np.asarray(det.mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask shape {mask.shape} does not match image size {(image.height, image.width)}")
        blank = image.copy() if bgcolor == "original" else Image.new("RGB", image.size, color=bgcolor)
        image = Image.composite(image, blank, Image.fromarray(mask))
    if crop:
        image = image.crop(tuple(float(v) for v in det.box[:4]))  # PIL rounds the box, as upstream
    return image


class ClipColourClassifier:
    """colour(image, detections, classname) -> colour names, one per detection."""

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        quick_gelu: bool | None = None,  # follows the pretrained tag; required with a weights file
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        bgcolor: str = "#999",
        crop: bool = True,
        batch_size: int = 16,
        cache_dir: str | None = None,
        amp: bool = True,
    ):
        open_clip = require("open_clip", purpose="the geneval colour classifier")
        from rlg.evaluators._models import clip_quick_gelu

        quick_gelu = clip_quick_gelu(model_name, pretrained, quick_gelu, option="clip_quick_gelu",
                                     what="GenEval colour classifier")

        self.device = torch.device(device)
        self.bgcolor, self.crop, self.batch_size = bgcolor, crop, batch_size
        self.amp = amp and self.device.type == "cuda"
        has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
        try:
            self.model, _, self.transform = open_clip.create_model_and_transforms(
                model_name,
                pretrained=None if has_schema else pretrained,
                precision=_precision(dtype),
                device=self.device,
                force_quick_gelu=quick_gelu,
                cache_dir=cache_dir,
            )
        except Exception as exc:
            raise RuntimeError(
                f"could not load the GenEval colour classifier open_clip {model_name!r} / {pretrained!r}: {exc}. "
                "The official one is ViT-L-14 with pretrained='openai' (Hugging Face repo "
                "timm/vit_large_patch14_clip_224.openai; offline, download it into the HF cache first), "
                "or pass clip_model='local-dir:/path/with/open_clip_config.json' or clip_pretrained='/path/to/weights'."
            ) from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.dtype = next(self.model.parameters()).dtype
        source = pretrained if not has_schema else None
        if source and os.path.sep in source:
            source = os.path.basename(source)  # a local file: its name, not this machine's path
        name = os.path.basename(model_name.rstrip("/")) if model_name.startswith("local-dir:") else model_name
        self.version = (f"open_clip-{importlib.metadata.version('open_clip_torch')}:{name}"
                        + (f":{source}" if source else "")
                        + (":quickgelu" if quick_gelu else "")
                        + f":{_precision(dtype)}" + (":amp-fp16" if self.amp else "")
                        + f":bg{bgcolor}" + ("" if crop else ":nocrop"))
        self._classifiers: dict[str, torch.Tensor] = {}

    def _autocast(self):
        return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp)

    @torch.no_grad()
    def text_classifier(self, classname: str) -> torch.Tensor:
        """(embed_dim, 10) zero-shot weights for the colours of ``classname``, cached per class."""
        if classname not in self._classifiers:
            columns = []
            with self._autocast():
                for colour in COLORS:
                    texts = [t.format(cls=classname).format(c=colour) for t in TEMPLATES]
                    emb = self.model.encode_text(self.tokenizer(texts).to(self.device))
                    emb = F.normalize(emb, dim=-1).mean(dim=0)
                    columns.append(emb / emb.norm())
                self._classifiers[classname] = torch.stack(columns, dim=1)
        return self._classifiers[classname]

    @torch.no_grad()
    def logits(self, image: Image.Image, detections: Sequence[Detection], classname: str) -> torch.Tensor:
        """(len(detections), 10) colour logits, 100 * cosine."""
        clf = self.text_classifier(classname)
        out = []
        for start in range(0, len(detections), self.batch_size):
            crops = [mask_crop(image, d, self.bgcolor, self.crop) for d in detections[start : start + self.batch_size]]
            pixels = torch.stack([self.transform(c) for c in crops]).to(self.device, self.dtype)
            with self._autocast():
                feats = F.normalize(self.model.encode_image(pixels), dim=-1)
                out.append((100.0 * feats @ clf).float())
        return torch.cat(out).cpu() if out else torch.zeros(0, len(COLORS))

    def __call__(self, image: Image.Image, detections: Sequence[Detection], classname: str) -> list[str]:
        return [COLORS[i] for i in self.logits(image, detections, classname).argmax(1).tolist()]
