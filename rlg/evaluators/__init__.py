"""Image scorers for rlg-bench. Import ``evaluators.base`` for the protocol and the lazy registry."""

from rlg.evaluators.base import Evaluator, Sample, available, get_evaluator

__all__ = ["Evaluator", "Sample", "available", "get_evaluator"]
