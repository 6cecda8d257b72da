"""JPEG (in)compressibility, the DDPO reward.

Definition (kvablack/ddpo-pytorch @ 1958463 : ddpo_pytorch/rewards.py): the uint8 RGB image saved by
PIL as JPEG at quality 95; size in kB = bytes / 1000; incompressibility = +kB, compressibility = -kB.

Flow-GRPO (yifan123/flow_grpo @ ac4c86e : flow_grpo/rewards.py) keeps ``jpeg_incompressibility``
as raw kB and only divides the compressibility by 500 (``-rew/500``); convention "flow_grpo_500"
reproduces exactly that asymmetry.

The number depends on resolution and on the libjpeg build, so both PIL's and libjpeg's versions go
into ``version``.
"""

from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, features

from rlg.evaluators.base import Sample
from rlg.metrics import Metric, directions, register_metrics

CONVENTIONS = ("ddpo_kb", "flow_grpo_500")
# Which reward(s) to store: the two are the same number with opposite signs, so a run that optimises one
# (DDPO's compressibility or incompressibility row) reports that one; "both" keeps the two columns.
DIRECTIONS = ("compressibility", "incompressibility", "both")


def _libjpeg_version() -> str:
    # libjpeg-turbo reports its own version; plain libjpeg only the API version ("jpg").
    try:
        if features.check_feature("libjpeg_turbo"):
            return f"libjpeg-turbo-{features.version_feature('libjpeg_turbo')}"
        return f"libjpeg-{features.version('jpg')}"
    except Exception:  # very old PIL without the features API details
        return "libjpeg-unknown"


def jpeg_kb(image: Image.Image, quality: int = 95) -> float:
    """Size in kB (bytes / 1000) of ``image`` as uint8 RGB saved by PIL as JPEG at ``quality``."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JpegCompressibility:
    name = "jpeg"
    # accepted for a uniform evaluator config but without effect: refused at start-up (rlg.harness.build)
    ignored_options = {"dtype": "JPEG compression of uint8 images runs no model",
                       "device": "JPEG compression runs on the CPU"}
    needs = frozenset({"image"})
    declares = register_metrics(
        Metric("jpeg_incompressibility", "JPEG size (kB)", "kB", True, ("reward",),
               "JPEG size: the PIL JPEG (quality 95) file size in kB, the DDPO incompressibility reward; higher is "
               "better.", reward_rank=11),
        Metric("jpeg_compressibility", "JPEG compressibility (−kB)", "−kB", True, ("reward",),
               "JPEG compressibility: minus the PIL JPEG (quality 95) file size in kB, the DDPO reward; higher (a "
               "smaller file) is better.", reward_rank=10))
    metrics = directions(declares)  # with direction="both"
    option_effects = {"convention": "score", "quality": "score", "direction": "score"}
    uses_device = False  # runs on the CPU: the harness resolves no device for it (that would import torch)

    def __init__(
        self,
        convention: str = "ddpo_kb",
        quality: int = 95,
        direction: str = "both",
        device: str | None = None,  # accepted for a uniform evaluator config; JPEG runs on the CPU
        dtype: str | None = None,
    ):
        self.check_options(convention=convention, direction=direction)
        self.convention = convention
        self.quality = int(quality)
        self.direction = direction
        self.metrics = self.metrics_for(direction=direction)  # the store and report read the instance's metrics
        # A one-direction run stores a subset of the columns, so it must not pass for a "both" run in the cache.
        suffix = "" if direction == "both" else f"/{direction}"
        self.version = f"jpeg/{convention}/q{self.quality}/PIL-{PIL.__version__}/{_libjpeg_version()}{suffix}"

    @staticmethod
    def check_options(convention: str = "ddpo_kb", quality: int = 95, direction: str = "both", **_) -> None:
        """Raise ValueError naming the allowed values for an unknown ``convention`` or ``direction``."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown jpeg direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown jpeg convention {convention!r}; use one of {', '.join(CONVENTIONS)}")

    @classmethod
    def metrics_for(cls, direction: str = "both", **_) -> dict[str, bool]:
        """The metrics an instance with these options writes (both directions, or the one asked for)."""
        return dict(cls.metrics) if direction == "both" else {f"jpeg_{direction}": True}

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        out = []
        for sample in batch:
            kb = jpeg_kb(sample.image, self.quality)
            compress = -kb / 500 if self.convention == "flow_grpo_500" else -kb
            both = {"jpeg_incompressibility": kb, "jpeg_compressibility": compress}
            out.append({m: both[m] for m in self.metrics})
        return out
