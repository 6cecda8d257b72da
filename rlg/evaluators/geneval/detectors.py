"""Object detector back-ends for GenEval: each turns RGB images into raw ``Detection`` lists.

"mmdet": the official detector, Mask2Former Swin-S COCO instance through mmdetection 2.x
  (djghosh13/geneval @ af4902f : evaluation/evaluate_images.py, ``init_detector`` +
  ``inference_detector``; weights from evaluation/download_models.sh).
"zoo_digits": handwritten digits for the zoo's compositional pair (rlg.evaluators.geneval.digit_detector).
"hf": the same architecture through transformers' Mask2FormerForUniversalSegmentation with the
  facebook/mask2former-swin-small-coco-instance weights (converted from the Mask2Former authors'
  release, not the mmdet checkpoint, so numbers can differ slightly). Its raw outputs are
  post-processed the way mmdet 2.x's Mask2Former test path does it (test pipeline resize to fit
  1333x800, ImageNet normalisation, pad to 32; ``MaskFormerFusionHead.instance_postprocess``:
  top 100 (query, class) pairs by softmax probability without the no-object class, masks = logits
  upsampled to the padded input, cropped, resized to the original size, > 0; score = probability
  x mean sigmoid inside the mask; box = the mask's extent (``mask2bbox``)). transformers' own
  ``post_process_instance_segmentation`` differs (mask score at 384 px, >= threshold, empty masks
  dropped), so it is not used.

Back-ends return every instance; GenEval's thresholds are applied later by ``select_objects``.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rlg.evaluators.geneval.metadata import OBJECT_NAMES
from rlg.evaluators.geneval.rules import Detection
from rlg.extras import require

HF_MODEL_ID = "facebook/mask2former-swin-small-coco-instance"
# Last commit touching the weights/config is f8eb176 (2023-01-16); f77f179 (2023-01-24) is a later
# README-only commit with the same files, and the only commit after it (dd3578c) is README-only too.
HF_REVISION = "f77f179fc62b98f6734481ebbef5bceeb1e7f10b"

MMDET_CONFIG = "configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"
MMDET_CHECKPOINT_URL = (
    "https://download.openmmlab.com/mmdetection/v2.0/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco/"
    "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth"
)

# mmdet 2.x Mask2Former COCO test pipeline (configs/mask2former/mask2former_r50_lsj_8x2_50e_coco.py)
IMG_SCALE = (1333, 800)
PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32
MAX_PER_IMAGE = 100

# COCO names some checkpoints use for the classes GenEval renames
_ALIASES = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv",
    "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier",
}


class Detector(Protocol):
    name: str
    version: str

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """All instances found in each RGB image (no score threshold)."""
        ...


def class_names_from_labels(id2label: dict[int, str]) -> list[str]:
    """GenEval object names for a detector's label ids, checked against COCO's order.

    Generic names (LABEL_0, ...) are taken to be in COCO order; real names must match GenEval's
    object list position by position (up to known COCO spellings).
    """
    n = len(id2label)
    if n != len(OBJECT_NAMES):
        raise ValueError(f"GenEval needs an 80-class COCO instance detector; this one has {n} labels")
    names = [str(id2label[i]) for i in range(n)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return list(OBJECT_NAMES)
    out = []
    for i, name in enumerate(names):
        norm = name.strip().lower().replace("_", " ")
        norm = _ALIASES.get(norm, norm)
        if norm != OBJECT_NAMES[i]:
            raise ValueError(f"detector label {i} is {name!r} but GenEval expects {OBJECT_NAMES[i]!r} there; "
                             "the checkpoint's classes are not in COCO order")
        out.append(OBJECT_NAMES[i])
    return out


def mmdet_resize_shape(width: int, height: int, scale: tuple[int, int] = IMG_SCALE) -> tuple[int, int]:
    """(new_w, new_h) of mmcv's keep-ratio rescale: fit the long side in max(scale), the short in min(scale)."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def preprocess(image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
    """(3, H_pad, W_pad) float tensor as mmdet's test pipeline feeds the network, and the resized (h, w)."""
    cv2 = require("cv2", extra="geneval", purpose="the geneval detector")  # mmcv resizes with cv2 bilinear on uint8

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    new_w, new_h = mmdet_resize_shape(rgb.shape[1], rgb.shape[0])
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    normed = (resized - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    pad_h = -(-new_h // SIZE_DIVISOR) * SIZE_DIVISOR
    pad_w = -(-new_w // SIZE_DIVISOR) * SIZE_DIVISOR
    padded = np.zeros((pad_h, pad_w, 3), np.float32)
    padded[:new_h, :new_w] = normed
    return torch.from_numpy(padded).permute(2, 0, 1), (new_h, new_w)


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) boxes (x0, y0, x_last + 1, y_last + 1) of bool masks (N, H, W); zeros for empty masks."""
    masks = masks.cpu()
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32)
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    for i in range(masks.shape[0]):
        x = torch.where(cols[i])[0]
        y = torch.where(rows[i])[0]
        if len(x) and len(y):
            boxes[i] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
    return boxes


def instance_postprocess(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, max_per_image: int = MAX_PER_IMAGE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet 2.x ``MaskFormerFusionHead.instance_postprocess`` for one image.

    class_logits (Q, C + 1) with the no-object class last; mask_logits (Q, H, W) already at the
    original image size. Returns labels (K,), scores (K,), boxes (K, 4), bool masks (K, H, W) for
    the top K = min(max_per_image, Q * C) (query, class) pairs, in descending class probability.
    """
    num_classes = class_logits.shape[-1] - 1
    probs = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    k = min(max_per_image, probs.numel())
    top_probs, top_idx = probs.flatten().topk(k, sorted=True)
    labels = top_idx % num_classes
    masks = mask_logits[top_idx // num_classes].float()
    binary = masks > 0
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return labels, top_probs * mask_scores, mask_to_box(binary), binary


class HFMask2FormerDetector:
    """transformers Mask2Former (COCO instance) with mmdet-equivalent pre/post-processing."""

    name = "hf"

    def __init__(self, model: str = HF_MODEL_ID, revision: str | None = HF_REVISION, local_files_only: bool = False,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, cache_dir: str | None = None):
        from transformers import Mask2FormerForUniversalSegmentation

        local = os.path.isdir(model)
        try:
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(
                model, revision=None if local else revision, local_files_only=local_files_only or local,
                cache_dir=cache_dir, dtype=dtype)
        except Exception as exc:
            raise RuntimeError(
                f"could not load the GenEval detector {model!r} (revision {revision}): {exc}. "
                f"Download it with `hf download {HF_MODEL_ID} --revision {HF_REVISION}` "
                "(or pass detector_path=<local folder with config.json and model.safetensors>)."
            ) from exc
        self.model.to(device).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.classnames = class_names_from_labels(self.model.config.id2label)
        source = os.path.basename(os.path.normpath(model)) if local else f"{model}@{(revision or 'main')[:7]}"
        self.version = f"hf-mask2former:{source}"

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        out = []
        for image in images:  # one at a time: sizes differ and batching would pad
            pixels, (h, w) = preprocess(image)
            pixels = pixels[None].to(self.device, self.dtype)
            res = self.model(pixel_values=pixels)
            masks = F.interpolate(res.masks_queries_logits.float(), size=pixels.shape[-2:], mode="bilinear",
                                  align_corners=False)
            masks = masks[:, :, :h, :w]
            masks = F.interpolate(masks, size=(image.height, image.width), mode="bilinear", align_corners=False)[0]
            labels, scores, boxes, binary = instance_postprocess(res.class_queries_logits[0], masks)
            binary = binary.cpu().numpy()
            out.append([Detection(self.classnames[int(l)], float(s), tuple(float(v) for v in b.tolist()), binary[i])
                        for i, (l, s, b) in enumerate(zip(labels.cpu(), scores.cpu(), boxes))])
        return out


class MMDetMask2FormerDetector:
    """The official detector: mmdetection 2.x ``init_detector`` / ``inference_detector``."""

    name = "mmdet"

    def __init__(self, checkpoint: str | None = None, config: str | None = None, device: str = "cuda"):
        try:
            import mmdet
            from mmdet.apis import inference_detector, init_detector
        except ImportError as exc:
            raise ImportError(
                "detector='mmdet' needs mmdetection 2.x and mmcv-full 1.x (GenEval used mmcv-full==1.7.1, "
                "mmdet from the 2.x branch, torch 1.12): `pip install mmcv-full==1.7.1 -f "
                "https://download.openmmlab.com/mmcv/dist/<cuda>/<torch>/index.html` and "
                "`git clone -b 2.x https://github.com/open-mmlab/mmdetection && pip install -e mmdetection`; "
                f"config {MMDET_CONFIG}, checkpoint {MMDET_CHECKPOINT_URL}. Or use detector='hf'."
            ) from exc
        if checkpoint is None or not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                "detector='mmdet' needs detector_checkpoint=<path to mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth>"
                f", got {checkpoint!r}; download it from {MMDET_CHECKPOINT_URL}"
            )
        if config is None:
            config = os.path.join(os.path.dirname(mmdet.__file__), "..", MMDET_CONFIG)
        self._infer = inference_detector
        self.model = init_detector(config, checkpoint, device=device)
        self.classnames = list(OBJECT_NAMES)
        self.version = f"mmdet-{mmdet.__version__}:{os.path.basename(checkpoint)}"

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        out = []
        for image in images:
            # inference_detector treats arrays as BGR (like files read by cv2), so flip our RGB
            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            result = self._infer(self.model, bgr)
            bbox = result[0] if isinstance(result, tuple) else result
            segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
            dets = []
            for index, classname in enumerate(self.classnames):
                for j, row in enumerate(bbox[index]):
                    mask = None if segm is None else np.asarray(segm[index][j], dtype=bool)
                    dets.append(Detection(classname, float(row[4]), tuple(float(v) for v in row[:4]), mask))
            out.append(dets)
        return out


DETECTORS = ("hf", "mmdet", "zoo_digits")


def build_detector(name: str, **options) -> Detector:
    if name == "hf":
        return HFMask2FormerDetector(**options)
    if name == "mmdet":
        return MMDetMask2FormerDetector(**options)
    if name == "zoo_digits":
        from rlg.evaluators.geneval.digit_detector import ZooDigitsDetector

        return ZooDigitsDetector(**options)
    raise ValueError(f"unknown GenEval detector {name!r}; use one of {', '.join(DETECTORS)}")
