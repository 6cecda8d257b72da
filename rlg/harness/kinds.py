"""The run kinds: ``KINDS`` maps the config group ``kind`` (images | ground_truth | kl_claim | kl_learned |
findings) to what the kind runs with, its stage and its report section.

A measurement kind's settings are one torch-free dataclass (``Kind.schema``, those of ``rlg.kind_spec`` for the
built-in kinds) that is also its node of the config schema (``rlg.harness.config.run_schema`` adds one node per
kind); an image run's settings are the shared groups (pair, sampler, grid, method, prompts, evaluators). A new
study is its module(s) (settings dataclass, stage, report section), one line here (or one ``KINDS.register`` call)
and a preset that selects it (``defaults: [override /kind: <name>]``, with ``kind/<name>.yaml`` in its config folder)
and sets ``<node>:``; tests/test_kinds.py builds one outside rlg/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from rlg.registry import Registry


@dataclass(frozen=True)
class Kind:
    """One run kind. ``node``: the config node holding its settings (None: the image groups), of the dataclass
    ``schema`` (the class or its ``"module:Class"``); ``settings``: the ``"module:function"``
    ``(conf, scales, overrides) -> settings`` that makes the Job's ``settings`` from the typed run config (None:
    the node as it is; raises ValueError naming the key); ``stage``: the ``"module:function"`` run as
    ``stage(job, store) -> dict`` (the invocation's report entry; None: the image stages generate / evaluate /
    report); ``report``: the ``"module:function"`` that writes its report
    section; ``samples``: a measurement that samples images with the shared ``prompts`` and ``sampler`` groups
    (the Job then holds its prompts and sampler, as an image run's; its settings have ``check_images(n)``, which
    refuses n images per arm); ``stages``: the ``stage=`` values it honours, by default those of a measurement of
    one piece: all (measure, store the rows, write the report) and report (the report from the stored rows; the
    stage function tells them apart by ``job.stages``, as ``rlg.harness.stages.measured`` does). Entries are
    imported on first use."""

    node: str | None
    settings: str | None
    stage: str | None
    report: str
    samples: bool = False
    schema: type | str | None = None
    stages: tuple[str, ...] = ("all", "report")

    def __post_init__(self):
        if (self.node is None) != (self.schema is None) or (self.stage and not (self.settings or self.node)):
            raise ValueError(f"{self}: a kind's node and schema come together; a stage needs a node or a builder")


class Settings(Protocol):
    """A measurement kind's settings (``Job.settings``): an instance of a dataclass, the one its builder makes."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


class KindError(ValueError):
    """An unknown kind, or settings that do not belong to the run's kind; the message names the fix."""


B, S = "rlg.kind_spec", "rlg.harness.stages"
EVERY_STAGE = ("generate", "evaluate", "report", "all")  # an image run's, and a findings run's (its sub-runs')
KINDS = Registry("kind", {
    "images": Kind(None, None, None, "rlg.report.report:write_report", stages=EVERY_STAGE),
    "ground_truth": Kind(None, f"{B}:ground_truth_settings", f"{S}:ground_truth",
                         "rlg.report.ground_truth:write_ground_truth_report"),
    "kl_claim": Kind("kl_claim", f"{B}:kl_claim_settings", f"{S}:kl_claim",
                     "rlg.report.kl_claim:write_kl_claim_report", samples=True, schema=f"{B}:KLClaimSettings"),
    "kl_learned": Kind("kl_learned", f"{B}:kl_learned_settings", f"{S}:kl_learned",
                       "rlg.report.kl_learned:write_kl_learned_report", schema=f"{B}:LearnedTruthConfig"),
    "findings": Kind("findings", "rlg.harness.findings:findings_settings", "rlg.harness.findings:findings_stage",
                     "rlg.report.findings:write_findings_report", schema=f"{B}:FindingsConfig", stages=EVERY_STAGE),
}, error=KindError)


def kind_nodes() -> dict[str, str]:
    """{config node: kind name} of every registered kind with settings of its own (a node and its schema come
    together), in registration order: the schema's nodes, the checks that a node belongs to the run's kind."""
    return {KINDS[name].node: name for name in KINDS if KINDS[name].node is not None}


__all__ = ["KINDS", "Kind", "KindError", "Settings", "kind_nodes"]
