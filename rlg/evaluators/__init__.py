"""Image scorers for rlg-bench. ``rlg.evaluators.base`` holds the protocol, the lazy registry and the
one scoring loop (``run_evaluator``; ``score_images`` for images held in memory)."""

from rlg.evaluators.base import Evaluator, ImageScores, Sample, available, get_evaluator, run_evaluator, score_images

__all__ = ["Evaluator", "ImageScores", "Sample", "available", "get_evaluator", "run_evaluator", "score_images"]
