"""GenEval's decision rules, free of any model: which detections count, and whether an image is correct.

Reimplements djghosh13/geneval @ af4902f : evaluation/evaluate_images.py (``evaluate_image``,
``evaluate``, ``relative_position``, ``compute_iou``) with its defaults: score > 0.3 (> 0.9 for
"counting" prompts), at most 16 objects per class, no NMS (max_overlap 1.0), position margin 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
POSITIONS = ("left of", "right of", "above", "below")

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
NMS_THRESHOLD = 1.0  # upstream "max_overlap"; 1.0 disables NMS
POSITION_THRESHOLD = 0.1


@dataclass
class Detection:
    """One detected instance. ``box`` is (x0, y0, x1, y1) in pixels; ``mask`` a bool (H, W) array or None."""

    classname: str  # a GenEval object name (evaluation/object_names.txt)
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None


# colour_fn(top detections of one class, classname) -> one colour name (from COLORS) per detection
ColourFn = Callable[[list[Detection], str], list[str]]


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with upstream's inclusive-pixel (+1) areas; used only when NMS is enabled."""

    def area(b):
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0


def select_objects(detections: Sequence[Detection], tag: str, threshold: float = THRESHOLD,
                   counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
                   nms_threshold: float = NMS_THRESHOLD) -> dict[str, list[Detection]]:
    """Detections kept per class, most confident first (upstream ``evaluate_image``).

    Strictly above the threshold (0.9 when ``tag == "counting"``), the first ``max_objects`` per
    class, then greedy NMS only if ``nms_threshold < 1``. Classes with nothing kept are absent.
    """
    conf = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        by_class.setdefault(det.classname, []).append(det)
    kept: dict[str, list[Detection]] = {}
    for classname, dets in by_class.items():
        scores = np.array([d.score for d in dets], dtype=np.float64)
        ordering = np.argsort(scores)[::-1]  # same call as upstream, so ties break the same way
        ordering = ordering[scores[ordering] > conf]
        ordering = ordering[:max_objects].tolist()
        chosen = []
        while ordering:
            best = ordering.pop(0)
            chosen.append(dets[best])
            ordering = [i for i in ordering
                        if nms_threshold == 1 or compute_iou(dets[best].box, dets[i].box) < nms_threshold]
        if chosen:
            kept[classname] = chosen
    return kept


def relative_position(a: Detection, b: Detection, margin: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A relative to B (upstream ``relative_position``).

    The centre offset is shrunk on each axis by ``margin * (size_a + size_b)``; if nothing is left
    there is no relation; otherwise the shrunk offset, divided by the full offset's length, must
    exceed 0.5 on an axis to count ("left of"/"right of" on x, "above"/"below" on y, y downwards).
    """
    boxes = np.array([a.box, b.box], dtype=np.float64)[:, :4].reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - margin * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def judge(metadata: dict[str, Any], objects: dict[str, list[Detection]], colour_fn: ColourFn,
          position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """Upstream ``evaluate`` on already-selected objects: include clauses ANDed, exclude clauses ORed.

    For each include clause the top ``count`` detections of its class must exist; colour and then
    position are checked on exactly those. A position clause refers to an earlier include clause,
    which must itself have matched. An exclude clause fails the image when its class has at least
    ``count`` kept detections.
    """
    correct = True
    reason: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        classname = req["class"]
        matched = True
        found = objects.get(classname, [])[: req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
            reason.append(f"expected {classname}>={req['count']}, found {len(found)}")
        else:
            if "color" in req:
                colors = list(colour_fn(found, classname))
                if len(colors) != len(found):
                    raise RuntimeError(f"colour_fn returned {len(colors)} colours for {len(found)} {classname} objects")
                if colors.count(req["color"]) < req["count"]:
                    correct = matched = False
                    reason.append(f"expected {req['color']} {classname}>={req['count']}, found "
                                  f"{colors.count(req['color'])} {req['color']}; and "
                                  + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors))
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for obj in found:
                        for target in matched_groups[target_group]:
                            true_rels = relative_position(obj, target, position_threshold)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(f"expected {classname} {expected_rel} target, found "
                                              f"{' and '.join(true_rels)} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(objects.get(classname, [])) >= req["count"]:
            correct = False
            reason.append(f"expected {classname}<{req['count']}, found {len(objects[classname])}")
    return correct, "\n".join(reason)


def evaluate_detections(metadata: dict[str, Any], detections: Sequence[Detection], colour_fn: ColourFn,
                        threshold: float = THRESHOLD, counting_threshold: float = COUNTING_THRESHOLD,
                        max_objects: int = MAX_OBJECTS, nms_threshold: float = NMS_THRESHOLD,
                        position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """(correct, reason) for one image's raw detections against one GenEval metadata row."""
    objects = select_objects(detections, metadata["tag"], threshold, counting_threshold, max_objects, nms_threshold)
    return judge(metadata, objects, colour_fn, position_threshold)
