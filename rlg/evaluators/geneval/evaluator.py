"""The GenEval evaluator: detector back-end + colour classifier + upstream's rules, one image at a time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from rlg.evaluators.base import TORCH_PLACES, Sample
from rlg.metrics import Metric, directions, register_metrics
from rlg.evaluators.geneval.detectors import DETECTORS, HF_MODEL_ID, HF_REVISION, Detector, build_detector
from rlg.evaluators.geneval.metadata import validate_row
from rlg.runtime import default_device, hub_offline, torch_dtype
from rlg.evaluators.geneval.rules import (COUNTING_THRESHOLD, MAX_OBJECTS, NMS_THRESHOLD, POSITION_THRESHOLD, THRESHOLD,
                                          Detection, judge, select_objects)

UPSTREAM = "djghosh13/geneval@af4902f"

@dataclass
class Judgement:
    correct: bool
    reason: str
    tag: str
    objects: dict[str, list[list[float]]] = field(default_factory=dict)  # kept boxes + score, per class


class GenEval:
    name = "geneval"
    needs = frozenset({"image", "metadata"})
    declares = register_metrics(
        Metric("geneval_overall", "GenEval overall", "fraction", True, ("reward", "alignment"),
               "GenEval overall: unweighted mean of the six task accuracies; higher is better.", reward_rank=1,
               derived=True),  # the report's mean over tags (rlg.report.stats.GENEVAL_OVERALL)
        Metric("geneval_correct", "GenEval accuracy", "fraction", True, ("reward", "alignment"),
               "GenEval: share of images whose objects, counts, colours and positions match; higher is better.",
               reward_rank=2))
    metrics = directions(declares)
    option_effects = {**dict.fromkeys((
        "detector", "detector_path", "detector_revision", "detector_checkpoint", "detector_config", "clip_model",
        "clip_pretrained", "clip_quick_gelu", "threshold", "counting_threshold", "max_objects", "max_overlap",
        "position_threshold", "bgcolor", "crop", "dtype"), "score"), **TORCH_PLACES, "clip_amp": "gpu",
        "batch_size": "placement"}

    @staticmethod
    def requires_for(detector: str = "hf", **_: object) -> tuple[str, ...]:
        """Packages the chosen detector and the colour classifier import (start-up check). zoo_digits: cv2 only
        (its prompts have no colour clause; open_clip is imported only when one is checked)."""
        if detector == "zoo_digits":
            return ("cv2",)
        return ("open_clip", "cv2") + (("mmdet", "mmcv") if detector == "mmdet" else ())

    @staticmethod
    def check_weights(detector: str = "hf", **_: object) -> None:
        """zoo_digits: raise ModelNotAvailableError unless the zoo's digit classifier is on disk (start-up check)."""
        if detector == "zoo_digits":
            from rlg.evaluators.digits import _DigitsBase

            _DigitsBase.check_weights()

    @staticmethod
    def check_options(detector: str = "hf", dtype: str | torch.dtype | None = None,
                      detector_checkpoint: str | None = None, detector_config: str | None = None,
                      detector_path: str = HF_MODEL_ID, detector_revision: str | None = HF_REVISION,
                      **_: object) -> None:
        """Raise ValueError for option values the constructor would refuse (called at start-up)."""
        if detector not in DETECTORS:
            raise ValueError(f"unknown GenEval detector {detector!r}; use one of {', '.join(DETECTORS)}")
        given = [k for k, v in (("detector_checkpoint", detector_checkpoint), ("detector_config", detector_config))
                 if v is not None]
        if detector != "mmdet" and given:  # the mmdet files: the other detectors would ignore them
            reads = "loads detector_path" if detector == "hf" else "reads the zoo's digit classifier"
            raise ValueError(f"{given[0]} applies to detector='mmdet' only (the {detector} detector {reads}); "
                             f"remove it or set detector=mmdet")
        if detector == "zoo_digits" and (detector_path != HF_MODEL_ID or detector_revision != HF_REVISION):
            raise ValueError("detector_path and detector_revision apply to detector='hf' only (zoo_digits reads "
                             "the zoo's digit classifier, zoo:digits_classifier); remove them")
        if isinstance(dtype, str):
            torch_dtype(dtype)  # raises ValueError naming the known dtypes

    @staticmethod
    def check_prompts(texts: list[str], metadata: list[dict | None]) -> None:
        """Raise ValueError unless every prompt carries a valid GenEval metadata row (start-up check)."""
        from rlg.evaluators.geneval.metadata import MetadataError, validate_row

        bad = []
        for i, meta in enumerate(metadata):
            try:
                validate_row(meta, f"prompt #{i}")
            except MetadataError as exc:
                bad.append(str(exc))
        if bad:
            raise ValueError(f"GenEval needs a metadata row with every prompt; {len(bad)} of {len(texts)} have none "
                             f"or an invalid one, e.g. {bad[0]}. Use prompts=geneval (or a .jsonl file in its format "
                             "with prompts.source=geneval)")

    def __init__(
        self,
        detector: str = "hf",
        detector_path: str = HF_MODEL_ID,
        detector_revision: str | None = HF_REVISION,
        detector_checkpoint: str | None = None,  # mmdet .pth
        detector_config: str | None = None,  # mmdet config; default: the one GenEval uses
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        clip_quick_gelu: bool | None = None,  # follows the tag ("openai": QuickGELU); required with a weights file
        clip_amp: bool = True,  # fp16 autocast on CUDA, as clip_benchmark's default under GenEval
        threshold: float = THRESHOLD,
        counting_threshold: float = COUNTING_THRESHOLD,
        max_objects: int = MAX_OBJECTS,
        max_overlap: float = NMS_THRESHOLD,
        position_threshold: float = POSITION_THRESHOLD,
        bgcolor: str = "#999",
        crop: bool = True,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 4,
        offline: bool | None = None,  # None: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE decide (rlg.runtime.hub_offline)
        cache_dir: str | None = None,
    ):
        self.check_options(detector=detector, dtype=dtype, detector_checkpoint=detector_checkpoint,
                           detector_config=detector_config, detector_path=detector_path,
                           detector_revision=detector_revision)
        self.detector_name = detector
        self.detector_path, self.detector_revision = detector_path, detector_revision
        self.detector_checkpoint, self.detector_config = detector_checkpoint, detector_config
        from rlg.evaluators._models import clip_quick_gelu as activation

        clip_quick_gelu = activation(clip_model, clip_pretrained, clip_quick_gelu, option="clip_quick_gelu",
                                     what="GenEval colour classifier")  # the weights' own, refused if unknown
        self.clip_model, self.clip_pretrained, self.clip_quick_gelu = clip_model, clip_pretrained, clip_quick_gelu
        self.clip_amp = clip_amp
        self.threshold, self.counting_threshold = threshold, counting_threshold
        self.max_objects, self.max_overlap, self.position_threshold = max_objects, max_overlap, position_threshold
        self.bgcolor, self.crop = bgcolor, crop
        self.device = default_device(device)
        self.dtype = torch_dtype(dtype)
        self.batch_size = batch_size
        self.offline = hub_offline(offline)
        self.cache_dir = cache_dir
        self._detector: Detector | None = None
        self._colour = None

        if detector == "zoo_digits":
            det = "zoo_digits:digits_classifier"
        elif detector == "hf":
            local = os.path.isdir(detector_path)
            det = f"hf:{os.path.basename(os.path.normpath(detector_path))}" if local else \
                f"hf:{detector_path}@{(detector_revision or 'main')[:7]}"
        else:
            det = ("mmdet:"
                   f"{os.path.basename(detector_checkpoint or 'mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth')}")
            det += f":cfg-{os.path.basename(detector_config)}" if detector_config else ""  # another model's config
        clip = os.path.basename(os.path.normpath(clip_model)) if clip_model.startswith("local-dir:") else clip_model
        if clip_pretrained and not clip_model.startswith(("local-dir:", "hf-hub:")):
            clip += ":" + (os.path.basename(clip_pretrained) if os.path.sep in clip_pretrained else clip_pretrained)
        clip += ":quickgelu" if clip_quick_gelu else ""
        clip += ":amp-fp16" if clip_amp and self.device.startswith("cuda") else ""
        rules = f"thr{threshold}/count{counting_threshold}/max{max_objects}/nms{max_overlap}/pos{position_threshold}"
        extra = f"/bg{bgcolor}" + ("" if crop else "/nocrop")
        self.version = f"geneval/{UPSTREAM}/{det}/clip:{clip}/{rules}{extra}/{str(self.dtype).removeprefix('torch.')}"

    # -- models, built on first use ---------------------------------------------------------------

    def detector(self) -> Detector:
        if self._detector is None:
            if self.detector_name == "zoo_digits":
                self._detector = build_detector("zoo_digits")
            elif self.detector_name == "hf":
                self._detector = build_detector(
                    "hf", model=self.detector_path, revision=self.detector_revision,
                    local_files_only=self.offline, device=self.device, dtype=self.dtype, cache_dir=self.cache_dir,
                )
            else:
                self._detector = build_detector(
                    "mmdet", checkpoint=self.detector_checkpoint, config=self.detector_config, device=self.device
                )
        return self._detector

    def colour_classifier(self):
        if self._colour is None:
            from rlg.evaluators.geneval.colour import ClipColourClassifier

            self._colour = ClipColourClassifier(
                self.clip_model, self.clip_pretrained, quick_gelu=self.clip_quick_gelu, device=self.device,
                dtype=self.dtype, bgcolor=self.bgcolor, crop=self.crop, cache_dir=self.cache_dir, amp=self.clip_amp,
            )
        return self._colour

    # -- scoring ------------------------------------------------------------------------------------

    def judge_detections(self, image, metadata: dict[str, Any], detections: list[Detection]) -> Judgement:
        objects = select_objects(
            detections, metadata["tag"], self.threshold, self.counting_threshold, self.max_objects, self.max_overlap
        )
        # the classifier is built only when a colour clause is actually checked
        colour_fn = lambda dets, cls: self.colour_classifier()(image, dets, cls)  # noqa: E731
        correct, reason = judge(metadata, objects, colour_fn, self.position_threshold)
        details = {k: [[*d.box, d.score] for d in v] for k, v in objects.items()}
        return Judgement(correct, reason, metadata["tag"], details)

    def judge(self, batch: list[Sample]) -> list[Judgement]:
        """Full results (correct, reason, kept objects) for each sample."""
        rows = []
        for s in batch:
            if s.metadata is None:
                raise ValueError(f"GenEval needs the prompt's metadata row for sample {s.key}")
            rows.append(validate_row(s.metadata, f"metadata of sample {s.key}"))
        images = [s.image.convert("RGB") for s in batch]
        detector = self.detector()
        known = set(detector.classnames)
        for s, row in zip(batch, rows):  # a class the detector cannot name would silently never be found
            unknown = sorted({c["class"] for c in row["include"] + row.get("exclude", [])} - known)
            if unknown:
                raise ValueError(f"sample {s.key}: class(es) {unknown} are not among the {self.detector_name} "
                                 f"detector's classes; use detector=zoo_digits for digit prompts and hf/mmdet for "
                                 f"COCO objects")
        detections = detector.detect(images)
        return [self.judge_detections(img, row, dets) for img, row, dets in zip(images, rows, detections)]

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        return [{"geneval_correct": float(j.correct)} for j in self.judge(batch)]

