"""The Python door to the presets: ``job(*overrides) -> Job``, the same composition and checks as the CLI.

    from rlg.harness.api import job
    j = job("experiment=zoo_sd_dpo", "grid.scales=[0,1,2]")
    j.pair, j.sampler, j.scales     # rlg.pairs.PairSpec, rlg.sampling.SamplerSettings, the checked grid

Every caller that turns a preset into objects (the zoo's evaluations, the measurements, scripts and
notebooks) comes through here or through the command line; both compose ``rlg/conf`` with Hydra and
call :func:`rlg.harness.build.build`, so a misspelt key, a wrong type or a bad value fails the same
way, with the same one-line message.
"""

from __future__ import annotations

import re
from typing import Sequence

from rlg.harness.build import Job, build
from rlg.harness.config import CONF_DIR, ConfigError, override_problem, register_schema


def compose(*overrides: str):
    """The composed Hydra config of ``rlg/conf/config.yaml`` with command-line style ``overrides``.

    Works inside a running Hydra app too (its global state is put back afterwards). Raises ConfigError
    (one line naming the key) for a misspelt key, an unknown preset or group option, an unquoted ``~`` or a
    wrong type."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    problem = override_problem(overrides) or unset_node_problem(overrides)
    if problem:  # the CLI's own check and message, before Hydra's multi-line one
        raise ConfigError(problem)
    register_schema()  # with the node of any kind registered since import (rlg.harness.kinds.KINDS)
    outer = get_gh_backup()  # inside a Hydra app: its state, put back below
    if outer is not None:
        GlobalHydra.instance().clear()  # initialize_config_dir refuses to run inside an initialised Hydra
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot compose rlg/conf with {list(overrides)}: {exc}") from exc
    finally:
        if outer is not None:
            restore_gh_from_backup(outer)


def unset_node_problem(overrides: Sequence[str]) -> str | None:
    """One line for an override of a kind's settings (``kl_learned.seed=5``) when the run it composes leaves that
    node unset (``experiment=tiny``): Hydra cannot set a key inside an unset node and stops with an OmegaConf
    traceback; the line names the shipped presets of that kind. None when no override touches a kind's node, or
    when each one's node is set. Composes the run once without those overrides (about a second), only when one is
    given."""
    from rlg.harness.kinds import kind_nodes

    nodes = kind_nodes()

    def node_of(item: str) -> str | None:
        key, eq, value = item.lstrip("+").partition("=")
        head = key.split(".", 1)[0]
        return head if eq and head in nodes and ("." in key or value.strip() != "null") else None

    touched = [o for o in overrides if node_of(o)]
    if not touched:
        return None
    conf = compose(*(o for o in overrides if o not in touched))
    for item in touched:
        node = node_of(item)
        if conf.get(node) is None:
            kind = nodes[node]
            presets = [p.stem for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))
                       if re.search(rf"override /kind: *{kind}\b", p.read_text())]
            start = f"a preset of that kind (experiment={', '.join(presets)})" if presets else \
                "a preset of that kind (docs/presets.md)"
            return (f"{item}: this run has no {node} settings to change (the run's kind is {conf.kind}); they come "
                    f"with kind={kind}: start from {start} and override from there")
    return None


def job(*overrides: str) -> Job:
    """The checked :class:`~rlg.harness.build.Job` of ``rlg-bench <overrides>``: the schema, every value
    check and every start-up refusal of the command line; nothing is loaded, generated or written.

    Raises the errors of ``rlg.harness.runner.USER_ERRORS`` (each names the fix)."""
    return build(compose(*overrides), overrides=list(overrides))


__all__ = ["job", "compose", "unset_node_problem", "CONF_DIR"]
