"""What a metric is, declared once by the evaluator that writes it, and the one rule that picks a run's reward.

    from rlg.metrics import Metric, register_metrics, label, pick_reward

    class MyScore:                                    # in the evaluator's own module
        declares = register_metrics(Metric("my_score", "my score", "points", True, ("reward", "quality"),
                                           "my score: what it measures; higher is better."))
        metrics = directions(declares)                # what score() writes: id -> higher_is_better

Every reader of a metric (report headline, tables, figures, methods section, W&B, export, console) asks
here for its label, unit, direction and definition; the harness decides the run's reward once, at build
time, with :func:`pick_reward`. The pattern is lm-eval's ``register_metric``
(EleutherAI/lm-evaluation-harness : lm_eval/api/registry.py): a metric carries its own properties. An
evaluator module registers its metrics when it is imported (the harness imports the selected ones at
start-up; ``rlg.evaluators.base.declared_metrics`` imports those named by stored scores). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

ROLES = ("reward", "alignment", "quality")  # reward: an RL model may be trained for it; alignment: prompt
# following; quality: image quality or preference, judged beside the reward (the trade-off figures' y axes)


@dataclass(frozen=True)
class Metric:
    """One metric an evaluator writes (or the report derives from it, ``derived``).

    ``reward_rank``: its place in the default reward order, used when a run names no reward (lower first;
    None: never the reward by default). Raises ValueError for an unknown role."""

    id: str
    label: str  # readable name, e.g. "OCR accuracy"
    unit: str  # e.g. "kB", "probability", "" for a plain score
    higher_is_better: bool
    roles: tuple[str, ...]
    definition: str  # one line for the report's glossary: what it is, its sign convention and direction
    reward_rank: int | None = None
    derived: bool = False  # computed by the report from another metric's rows (GenEval overall)

    def __post_init__(self):
        bad = [r for r in self.roles if r not in ROLES]
        if bad:
            raise ValueError(f"metric {self.id}: unknown role(s) {bad}; roles are {', '.join(ROLES)}")


REGISTRY: dict[str, Metric] = {}


def register_metrics(*metrics: Metric) -> tuple[Metric, ...]:
    """Record ``metrics`` (called by the evaluator module that declares them); returns them. Raises
    ValueError when an id is declared twice with other properties."""
    for m in metrics:
        if REGISTRY.get(m.id, m) != m:
            raise ValueError(f"metric {m.id!r} is declared twice with different properties")
        REGISTRY[m.id] = m
    return tuple(metrics)


def directions(metrics: Iterable[Metric]) -> dict[str, bool]:
    """{id: higher_is_better} of the metrics a scorer writes (derived ones left out)."""
    return {m.id: m.higher_is_better for m in metrics if not m.derived}


def metric(metric_id: str) -> Metric | None:
    """The registered metric ``metric_id``, or None."""
    return REGISTRY.get(str(metric_id))


def label(metric_id: str) -> str:
    """The readable name of a metric id (the id itself when unregistered); "id (version)" keeps its version."""
    base, sep, rest = str(metric_id).partition(" (")
    m = REGISTRY.get(base)
    return (m.label if m else base) + (f" ({rest}" if sep else "")


def title(metric_id: str) -> str:
    """The readable name with the id in brackets when they differ: "digit probability [digit_prob]"."""
    name = label(metric_id)
    return name if name == str(metric_id) else f"{name} [{metric_id}]"


def definitions(ids: Iterable[str]) -> list[str]:
    """The glossary lines of the registered metrics among ``ids``, in id order."""
    return [REGISTRY[m].definition for m in sorted(set(ids)) if m in REGISTRY]


def with_role(ids: Iterable[str], role: str) -> list[str]:
    """The metrics among ``ids`` that can play ``role``, in id order."""
    return [m for m in sorted(set(ids)) if m in REGISTRY and role in REGISTRY[m].roles]


class RewardError(ValueError):
    """A reward named by the run is not among its metrics; the message lists them."""


def pick_reward(ids: Sequence[str], preferred: str | None = None) -> str | None:
    """The run's reward among the metric ids ``ids``: ``preferred`` (the preset's ``report.reward``) when
    given; else the registered metric with the lowest ``reward_rank``; else the first id in name order;
    None without ids. Raises RewardError when ``preferred`` is not among ``ids``."""
    ids = sorted(set(ids))
    if preferred:
        if preferred not in ids:
            raise RewardError(f"report.reward={preferred!r} is not a metric of this run; set it to one of "
                              f"{', '.join(ids)} (or null to pick by the default reward order)")
        return preferred
    ranked = [(REGISTRY[m].reward_rank, m) for m in ids if m in REGISTRY and REGISTRY[m].reward_rank is not None]
    return min(ranked)[1] if ranked else (ids[0] if ids else None)


def settle_reward(ids: Sequence[str], preferred: str | None, where: str, fix: str) -> tuple[str | None, str | None]:
    """(reward, note): ``preferred`` when it is among ``ids``, else :func:`pick_reward`'s default with a note
    that says the named reward was not ``where`` and how to ``fix`` it (None when nothing was overruled)."""
    ids = sorted(set(ids))
    if preferred and preferred not in ids:
        picked = pick_reward(ids)
        return picked, (f"report.reward={preferred} was not {where}, so the run's reward is {picked} (the default "
                        f"order); {fix} or set report.reward to one of {', '.join(ids)}")
    return pick_reward(ids, preferred), None


__all__ = ["Metric", "REGISTRY", "ROLES", "RewardError", "definitions", "directions", "label", "metric",
           "pick_reward", "register_metrics", "settle_reward", "title", "with_role"]
