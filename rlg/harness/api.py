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

    problem = override_problem(overrides)
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


def job(*overrides: str) -> Job:
    """The checked :class:`~rlg.harness.build.Job` of ``rlg-bench <overrides>``: the schema, every value
    check and every start-up refusal of the command line; nothing is loaded, generated or written.

    Raises the errors of ``rlg.harness.runner.USER_ERRORS`` (each names the fix)."""
    return build(compose(*overrides), overrides=list(overrides))


__all__ = ["job", "compose", "CONF_DIR"]
