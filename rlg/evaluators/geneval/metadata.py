"""GenEval metadata rows (prompts/evaluation_metadata.jsonl): schema checks with errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlg.evaluators.geneval.rules import COLORS, POSITIONS

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# djghosh13/geneval @ af4902f : evaluation/object_names.txt, in the detector's (COCO) class order.
OBJECT_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# the zoo_digits detector's classes (rlg.evaluators.geneval.digit_detector), for the zoo's compositional pair
DIGIT_NAMES = tuple(str(d) for d in range(10))
KNOWN_CLASSES = frozenset(OBJECT_NAMES) | frozenset(DIGIT_NAMES)

_ROW_KEYS = {"tag", "include", "exclude", "prompt"}
_INCLUDE_KEYS = {"class", "count", "color", "position"}
_EXCLUDE_KEYS = {"class", "count"}


class MetadataError(ValueError):
    pass


def _check_clause(clause: Any, where: str, allowed: set[str], index: int) -> None:
    if not isinstance(clause, dict):
        raise MetadataError(f"{where}: expected an object, got {clause!r}")
    unknown = set(clause) - allowed
    if unknown:
        raise MetadataError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if clause.get("class") not in KNOWN_CLASSES:
        raise MetadataError(f"{where}: class {clause.get('class')!r} is not one of the 80 GenEval object names "
                            f"(nor a digit name 0-9 of the zoo_digits detector)")
    count = clause.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise MetadataError(f"{where}: count must be an integer >= 1, got {count!r}")
    if "color" in clause and clause["color"] not in COLORS:
        raise MetadataError(f"{where}: color {clause['color']!r} is not one of {COLORS}")
    if "position" in clause:
        pos = clause["position"]
        if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in POSITIONS):
            raise MetadataError(f"{where}: position must be [relation, include index] with relation in {POSITIONS}, "
                                f"got {pos!r}")
        target = pos[1]
        # the rule engine looks the target up among include clauses already judged
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < index:
            raise MetadataError(f"{where}: position target must be the index of an earlier include clause "
                                f"(< {index}), got {target!r}")


def validate_row(row: Any, where: str = "metadata row") -> dict[str, Any]:
    """Return ``row`` if it is a valid GenEval metadata row, else raise MetadataError naming ``where``."""
    if not isinstance(row, dict):
        raise MetadataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = set(row) - _ROW_KEYS
    if unknown:
        raise MetadataError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ROW_KEYS)}")
    if row.get("tag") not in TAGS:
        raise MetadataError(f"{where}: tag {row.get('tag')!r} is not one of {TAGS}")
    if not isinstance(row.get("prompt"), str) or not row["prompt"]:
        raise MetadataError(f"{where}: prompt must be a non-empty string")
    include = row.get("include")
    if not isinstance(include, list) or not include:
        raise MetadataError(f"{where}: include must be a non-empty list of clauses")
    for i, clause in enumerate(include):
        _check_clause(clause, f"{where}: include[{i}]", _INCLUDE_KEYS, i)
    exclude = row.get("exclude", [])
    if not isinstance(exclude, list):
        raise MetadataError(f"{where}: exclude must be a list of clauses")
    for i, clause in enumerate(exclude):
        _check_clause(clause, f"{where}: exclude[{i}]", _EXCLUDE_KEYS, i)
    return row


def load_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a GenEval metadata JSONL file, each validated; errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MetadataError(f"{where}: not valid JSON ({exc})") from exc
            rows.append(validate_row(row, where))
    if not rows:
        raise MetadataError(f"{path}: no metadata rows")
    return rows
