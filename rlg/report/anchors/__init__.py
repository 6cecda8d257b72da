"""Published reference numbers ("anchors") with their source and protocol, and the comparability check.

Each YAML file here holds ``source``, ``defaults`` (merged into every entry) and ``anchors``; an entry
is keyed by (model, metric, convention). ``protocol`` lists the settings the published number was
produced under (steps, cfg, resolution, ocr_engine, geneval_detector, hps_version, prompts, ...);
null means the source does not record it, so it is not checked. ``multiplier`` converts our
per-image mean to the published unit (1 where the evaluator already reports it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

ANCHOR_DIR = Path(__file__).parent

# Run-protocol names accepted for each anchor field (diffusers / config spellings).
FIELD_ALIASES = {
    "steps": ("steps", "num_inference_steps", "num_steps"),
    "cfg": ("cfg", "guidance_scale", "cfg_scale"),
    "resolution": ("resolution", "size", "height"),
}
# Evaluator whose version string carries the field, when the run protocol does not name it.
FIELD_EVALUATOR = {"ocr_engine": "ocr", "geneval_detector": "geneval", "geneval_thresholds": "geneval",
                   "hps_version": "hps", "hps_scale": "hps"}


@dataclass(frozen=True)
class Anchor:
    id: str
    model: str
    metric: str
    convention: str
    value: float
    source: str
    protocol: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    multiplier: float = 1.0
    note: str = ""
    file: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.metric, self.convention)

    def names(self) -> set[str]:
        return {_norm(n) for n in (self.model, *self.aliases)}


def _norm(x: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(x).lower())


def load_anchors(paths: Iterable[Path | str] | None = None) -> list[Anchor]:
    """Load anchors from YAML files (default: every *.yaml in experiments/anchors/).

    Raises ValueError naming the file for a missing field or a duplicate (model, metric, convention).
    """
    files = sorted(ANCHOR_DIR.glob("*.yaml")) if paths is None else [Path(p) for p in paths]
    anchors: list[Anchor] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in files:
        doc = yaml.safe_load(path.read_text()) or {}
        defaults = doc.get("defaults", {}) or {}
        for i, entry in enumerate(doc.get("anchors", []) or []):
            merged = {**defaults, **entry,
                      "protocol": {**(defaults.get("protocol") or {}), **(entry.get("protocol") or {})}}
            merged.setdefault("source", doc.get("source", ""))
            merged.setdefault("convention", merged.get("metric", ""))
            missing = [k for k in ("id", "model", "metric", "value") if merged.get(k) is None]
            if missing:
                raise ValueError(f"{path}: anchor #{i} lacks {missing}; every anchor needs id, model, metric, value")
            a = Anchor(id=str(merged["id"]), model=str(merged["model"]), metric=str(merged["metric"]),
                       convention=str(merged["convention"]), value=float(merged["value"]),
                       source=str(merged["source"]), protocol=dict(merged["protocol"]),
                       aliases=tuple(str(x) for x in merged.get("aliases", []) or []),
                       multiplier=float(merged.get("multiplier", 1.0)), note=str(merged.get("note", "") or ""),
                       file=path.name)
            if a.key in seen:
                raise ValueError(f"duplicate anchor {a.key} in {path.name} and {seen[a.key]}")
            seen[a.key] = path.name
            anchors.append(a)
    return anchors


def anchors_by_key(anchors: Iterable[Anchor]) -> dict[tuple[str, str, str], Anchor]:
    return {a.key: a for a in anchors}


def _run_value(run: dict[str, Any], name: str) -> tuple[Any, bool]:
    """The run's value for an anchor field, and whether it came from an evaluator version string."""
    for alias in FIELD_ALIASES.get(name, (name,)):
        if run.get(alias) is not None:
            return run[alias], False
    versions = run.get("evaluator_versions") or {}
    if name in FIELD_EVALUATOR and versions.get(FIELD_EVALUATOR[name]):
        return versions[FIELD_EVALUATOR[name]], True
    return None, False


def _resolution(x: Any) -> tuple[int, ...] | None:
    if isinstance(x, (list, tuple)):
        vals = tuple(int(v) for v in x)
    else:
        nums = re.findall(r"\d+", str(x))
        if not nums:
            return None
        vals = tuple(int(v) for v in nums)
    return vals * 2 if len(vals) == 1 else vals


def _same(name: str, published: Any, ours: Any) -> bool:
    if name == "resolution":
        return _resolution(published) == _resolution(ours)
    if isinstance(published, (int, float)) and not isinstance(published, bool):
        try:
            return math.isclose(float(published), float(ours), rel_tol=1e-6)
        except (TypeError, ValueError):
            return False
    # Engine / version names: "paddleocr" matches "PaddleOCR 2.9.1" but not "easyocr".
    a, b = _norm(published), _norm(ours)
    return bool(a) and bool(b) and (a in b or b in a)


def compare_protocol(anchor: Anchor, run: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """Compare the anchor's recorded protocol with the run's.

    Returns (status, differences, unverified): status is "comparable", "not comparable" (some
    recorded field differs: e.g. "ocr_engine: easyocr vs paddleocr (published)") or "unverified"
    (nothing differs but the run does not state some recorded field).
    """
    diffs, unverified = [], []
    for name, published in anchor.protocol.items():
        if published is None:
            continue
        ours, from_version = _run_value(run, name)
        if ours is None:
            unverified.append(name)
        elif not _same(name, published, ours):
            shown = f"{ours!s}" if not from_version else f"evaluator version {ours!s}"
            diffs.append(f"{name}: {shown} vs {published} (published)")
    status = "not comparable" if diffs else ("unverified" if unverified else "comparable")
    return status, diffs, unverified


def describe_comparability(status: str, diffs: list[str], unverified: list[str]) -> str:
    """One short cell for a table."""
    if status == "not comparable":
        return "not comparable: " + "; ".join(diffs)
    if status == "unverified":
        return "unverified: run protocol lacks " + ", ".join(unverified)
    return "comparable"


def match_scale(anchor: Anchor, run: dict[str, Any], pair: str) -> float | None:
    """The scale at which our run produces the anchor's model: 0 for the pair's base, 1 for its RL
    model, None when neither is that model. Model ids come from the run protocol: ``base_model`` /
    ``rl_model`` or ``pairs: {pair: {base: ..., rl: ...}}``."""
    models = dict((run.get("pairs") or {}).get(pair) or {})
    models.setdefault("base", run.get("base_model"))
    models.setdefault("rl", run.get("rl_model"))
    names = anchor.names()
    for role, scale in (("base", 0.0), ("rl", 1.0)):
        if models.get(role) is not None and _norm(models[role]) in names:
            return scale
    return None
