"""GenEval detector back-end "zoo_digits": handwritten digits on light paper, for the zoo's compositional pair.

Finds digits as connected ink components and reads each with the zoo's digit classifier
(``rlg.evaluators.digits.DigitClassifier``, id ``zoo:digits_classifier``), so GenEval's rules (thresholds, counting,
position margins; rlg.evaluators.geneval.rules) run unchanged on detections the evaluator makes itself:

  1. ink = 1 - mean over RGB / 255; mask = ink > ``ink_level``; 8-connected components of the mask after a 3x3
     dilation (so a stroke broken by one pixel stays one digit), each component's box taken on the undilated mask;
     components with fewer than ``min_area`` ink pixels are dropped (specks).
  2. a component wider than ``split_ratio`` x its height is two touching digits: it is cut at the column of least
     ink in its middle half, recursively.
  3. each box is read from a square crop of side max(``tile``, ``pad`` x its longer side), centred on the box, of the
     ink inside the component's columns (0 outside the canvas), resized to 32x32 as the classifier was trained on
     whole 8x8 scans (digit ink spans about 3/4 of the frame).
  4. one Detection per box: the classifier's top class ("0".."9"), its softmax probability as the score, the box
     (x0, y0, x1, y1) with x1, y1 exclusive (as the mask boxes of the COCO back-ends), and the component's mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from rlg.evaluators.geneval.rules import Detection

DIGIT_CLASSES = tuple(str(d) for d in range(10))


def ink_map(image: Image.Image) -> np.ndarray:
    """float32 (H, W) ink in [0, 1] of an RGB image: 1 - mean over the channels / 255."""
    return 1 - np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=2) / 255


def split_wide(mask: np.ndarray, box: tuple[int, int, int, int], split_ratio: float) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of a component's mask (H, W) after cutting too-wide boxes at their least-inked column."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w <= split_ratio * h or w < 4:
        return [box]
    cols = mask[y0:y1, x0:x1].sum(axis=0)
    lo, hi = w // 4, w - w // 4  # the middle half: a digit's own thin column near its edge is no cut
    cut = x0 + lo + int(np.argmin(cols[lo:hi]))
    out = []
    for a, b in ((x0, cut), (cut + 1, x1)):
        ys, xs = np.nonzero(mask[y0:y1, a:b])
        if len(xs):
            out += split_wide(mask, (a + int(xs.min()), y0 + int(ys.min()), a + int(xs.max()) + 1,
                                     y0 + int(ys.max()) + 1), split_ratio)
    return out


def crop(ink: np.ndarray, box: tuple[int, int, int, int], tile: int, pad: float) -> np.ndarray:
    """float32 (side, side) ink crop centred on ``box``, side = max(tile, pad x longer side); 0 beyond the image."""
    x0, y0, x1, y1 = box
    side = int(round(max(tile, pad * max(x1 - x0, y1 - y0))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    out = np.zeros((side, side), np.float32)
    H, W = ink.shape
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, W), min(top + side, H)
    out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = ink[sy0:sy1, sx0:sx1]
    return out


class ZooDigitsDetector:
    """Connected ink components read by the zoo's digit classifier; see the module docstring for the steps."""

    name = "zoo_digits"
    classnames = DIGIT_CLASSES

    def __init__(self, weights: str = "zoo:digits_classifier", ink_level: float = 0.3, min_area: int = 12,
                 split_ratio: float = 1.3, tile: int = 24, pad: float = 1.0):
        from rlg.evaluators.digits import _digest, _load

        self.model = _load(weights)[0]
        self.ink_level, self.min_area, self.split_ratio, self.tile, self.pad = ink_level, min_area, split_ratio, tile, pad
        self.version = (f"zoo-digits:{weights}@{_digest(weights)}/ink{ink_level}/area{min_area}/split{split_ratio}"
                        f"/tile{tile}/pad{pad}")

    def boxes(self, ink: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
        """[(box (x0, y0, x1, y1), bool mask (H, W), bool region (H, W)), ...] of the digits in an ink map, left to
        right; the region is the dilated component within the box's columns (the ink the classifier reads)."""
        import cv2

        mask = ink > self.ink_level
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
        n, labels = cv2.connectedComponents(grown, connectivity=8)
        found = []
        for k in range(1, n):
            grown_k = labels == k
            comp = mask & grown_k
            if comp.sum() < self.min_area:
                continue
            ys, xs = np.nonzero(comp)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            for b in split_wide(comp, box, self.split_ratio):
                part = np.zeros_like(comp)
                part[b[1]:b[3], b[0]:b[2]] = comp[b[1]:b[3], b[0]:b[2]]
                region = np.zeros_like(comp)
                region[:, b[0]:b[2]] = grown_k[:, b[0]:b[2]]
                if part.sum() >= self.min_area:
                    found.append((b, part, region))
        return sorted(found, key=lambda f: f[0][0])

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Per image, one Detection per digit found (no score threshold: GenEval's rules apply theirs)."""
        out = []
        for image in images:
            ink = ink_map(image)
            found = self.boxes(ink)
            if not found:
                out.append([])
                continue
            crops = [crop(ink * r, b, self.tile, self.pad) for b, _, r in found]
            x = torch.stack([torch.nn.functional.interpolate(torch.from_numpy(c)[None, None], size=(32, 32),
                                                             mode="bilinear", align_corners=False, antialias=True)[0]
                             for c in crops])
            probs = self.model((1 - x.clamp(0, 1)).repeat(1, 3, 1, 1)).softmax(dim=1)
            score, cls = probs.max(dim=1)
            out.append([Detection(DIGIT_CLASSES[int(c)], float(s), tuple(float(v) for v in b), m)
                        for (b, m, _), s, c in zip(found, score, cls)])
        return out
