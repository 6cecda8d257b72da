"""GenEval (djghosh13/geneval @ af4902f): object detection + colour classification + fixed rules.

``rules`` (the pure decision logic), ``metadata`` (prompt rows), ``summary`` (aggregation) import no
models; ``detectors`` and ``colour`` load their libraries only when a model is built.
"""

from rlg.evaluators.geneval.evaluator import GenEval, Judgement
from rlg.evaluators.geneval.metadata import OBJECT_NAMES, TAGS, MetadataError, load_metadata, validate_row
from rlg.evaluators.geneval.rules import (COLORS, Detection, evaluate_detections, judge, relative_position,
                                          select_objects)
from rlg.evaluators.geneval.summary import summarize

__all__ = ["COLORS", "OBJECT_NAMES", "TAGS", "Detection", "GenEval", "Judgement", "MetadataError",
           "evaluate_detections", "judge", "load_metadata", "relative_position", "select_objects", "summarize",
           "validate_row"]
