"""Measurements of the compositional zoo pair: the zoo_digits detector on scenes with known ground truth.

``measure_detector`` composes held-out scenes (``rlg.zoo.geneval.dataset`` on the held-out digit split, never seen by
the classifier or the generator), runs the GenEval evaluator with ``detector=zoo_digits`` and compares:
  per class   precision = TP / detections kept (score > GenEval's 0.3), recall = TP / ground-truth digits, where a
              detection is a TP when its box overlaps an unmatched ground-truth box of the same class with IoU >= 0.5
              (greedy by score; boxes with exclusive ends, plain areas);
  counting    share of counting scenes whose kept detections (score > 0.9, GenEval's counting threshold) of the
              asked class number exactly the truth (2);
  position    share of position scenes where the kept detections of both classes exist and GenEval's
              relative_position of the placed digit to the target includes the asked relation;
  geneval     share of scenes GenEval judges correct, per tag and overall: the reward's ceiling on real scenes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive ends."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth: list[tuple[str, tuple]], dets: list, iou: float = 0.5) -> tuple[int, int, int, dict]:
    """Greedy matching of detections (highest score first) to ground truth of the same class.
    Returns (tp, fp, fn, per-class {name: [tp, fp, fn]})."""
    per: dict[str, list[int]] = {}
    used = [False] * len(truth)
    for d in sorted(dets, key=lambda d: -d.score):
        hit = next((i for i, (c, b) in enumerate(truth)
                    if not used[i] and c == d.classname and box_iou(b, d.box) >= iou), None)
        if hit is None:
            per.setdefault(d.classname, [0, 0, 0])[1] += 1
        else:
            used[hit] = True
            per.setdefault(d.classname, [0, 0, 0])[0] += 1
    for (c, _), u in zip(truth, used):
        if not u:
            per.setdefault(c, [0, 0, 0])[2] += 1
    tp, fp, fn = (sum(v[k] for v in per.values()) for k in range(3))
    return tp, fp, fn, per


def measure_detector(n: int = 400, seed: int = 0, split: str = "test") -> dict[str, Any]:
    """The zoo_digits detector on ``n`` composed scenes of ``split`` (see the module docstring); returns
    {"per_class": {digit: {precision, recall, n_truth}}, "precision", "recall", "count_accuracy",
    "position_accuracy", "geneval": {tag: accuracy, "overall": mean over tags}, "n", "seed", "split"}."""
    from PIL import Image

    from rlg.evaluators.base import Sample
    from rlg.evaluators.geneval import GenEval, relative_position, select_objects
    from rlg.evaluators.geneval.rules import COUNTING_THRESHOLD, THRESHOLD
    from rlg.zoo import geneval as G

    images, idx, truths = G.dataset(n, seed, split=split)
    rows = G.rows()
    ev = GenEval(detector="zoo_digits", device="cpu")
    samples = [Sample(str(k), Image.fromarray(im), rows[i]["prompt"], rows[i]) for k, (im, i) in enumerate(zip(images, idx))]
    detections = ev.detector().detect([s.image for s in samples])
    judged = [ev.judge_detections(s.image, rows[i], d) for s, i, d in zip(samples, idx, detections)]
    per: dict[str, list[int]] = {}
    counts, positions = [], []
    for i, truth, dets in zip(idx, truths, detections):
        row = rows[i]
        kept = [d for d in dets if d.score > THRESHOLD]
        for c, v in match(truth, kept)[3].items():
            acc = per.setdefault(c, [0, 0, 0])
            for k in range(3):
                acc[k] += v[k]
        if row["tag"] == "counting":
            cls = row["include"][0]["class"]
            counts.append(sum(d.classname == cls and d.score > COUNTING_THRESHOLD for d in dets) == len(truth))
        if row["tag"] == "position":
            objs = select_objects(dets, "position")
            target, placed = row["include"][0]["class"], row["include"][1]["class"]
            ok = target in objs and placed in objs and \
                row["include"][1]["position"][0] in relative_position(objs[placed][0], objs[target][0])
            positions.append(ok)
    tags = {t: [j.correct for j, i in zip(judged, idx) if rows[i]["tag"] == t] for t in G.TAGS}
    geneval = {t: float(np.mean(v)) for t, v in tags.items()}
    geneval["overall"] = float(np.mean(list(geneval.values())))
    tp, fp, fn = (sum(v[k] for v in per.values()) for k in range(3))
    return {"per_class": {c: {"precision": v[0] / max(v[0] + v[1], 1), "recall": v[0] / max(v[0] + v[2], 1),
                              "n_truth": v[0] + v[2]} for c, v in sorted(per.items())},
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "count_accuracy": float(np.mean(counts)), "n_counting": len(counts),
            "position_accuracy": float(np.mean(positions)), "n_position": len(positions),
            "geneval": geneval, "n": n, "seed": seed, "split": split, "detector": ev.detector().version}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    print(json.dumps(measure_detector(n), indent=1))
