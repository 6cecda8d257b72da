"""Hydra callbacks of the app: the run name is checked before Hydra makes a folder; a multirun ends with one
combined report over its jobs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("rlg")


class StartChecks(Callback):
    """Hydra callback: the run name and paths.root (``rlg.harness.config.run_dir``) checked before Hydra makes the
    run folder (a run; there every other start-up check of ``validate`` too, so a refusal writes nothing into an
    existing run folder) or the sweep folder (a multirun; every name of a sweep ``name=a,b`` too). A refusal is one
    line and exit 2, as every refusal of the CLI; it is a SystemExit because Hydra turns a callback's exceptions
    into warnings. Enabled in conf/config.yaml (``hydra.callbacks.start_checks``)."""

    def on_run_start(self, config, **kwargs) -> None:
        _refuse_bad_run_dir(config, [config.name])
        _refuse_bad_values(config)

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        names = [config.name]  # the sweep folder's; a swept name= is not in this config, so parse the overrides
        for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
            if override.key_or_group == "name":
                names += (list(override.sweep_string_iterator()) if override.is_sweep_override()
                          else [override.value()])
        _refuse_bad_run_dir(config, names)


def _refuse_bad_values(config) -> None:
    """Every start-up check of the task config (``rlg.harness.config.validate``) before Hydra writes ``.hydra/``
    into the run folder: a refused command must not overwrite the recorded config of a finished run there."""
    import copy

    from omegaconf import open_dict, read_write

    from rlg.harness.config import validate

    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]  # as Hydra's run_job does before it calls the app
    _one_line_or_exit(validate, task)


def _refuse_bad_run_dir(config, names: list) -> None:
    from rlg.harness.config import run_dir

    for name in names:
        _one_line_or_exit(run_dir, config.paths.root, name)


def _one_line_or_exit(check, *args) -> None:
    """``check(*args)``; a ConfigError becomes the CLI's one-line refusal and exit 2."""
    from rlg.harness.config import ConfigError

    try:
        check(*args)
    except ConfigError as exc:
        print(f"rlg-bench: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, one combined report over every job of the sweep in
    ``<sweep dir>/report`` (each job one series). Enable it in the Hydra config:

        hydra:
          callbacks:
            sweep_report:
              _target_: rlg.harness.callbacks.SweepReport

    or on the command line: ``+hydra.callbacks.sweep_report._target_=rlg.harness.callbacks.SweepReport``.
    Works with every launcher whose ``launch`` returns when the jobs are done (basic, submitit).
    """

    def __init__(self, out: str | None = None, n_resamples: int = 1000, grid_prompts: int = 4) -> None:
        self.out, self.n_resamples, self.grid_prompts = out, n_resamples, grid_prompts

    def on_multirun_end(self, config, **kwargs) -> None:
        from rlg.harness.console import quiet_third_party
        from rlg.report.compare import CompareError, compare_runs  # here: Hydra loads this class at every start

        # the launcher's own process (submitit, joblib): the jobs ran elsewhere, so the calm console
        # (e.g. no fontTools subsetting lines from the PDF figures) is set up here too
        quiet_third_party(verbose=bool(getattr(config, "verbose", False)))
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            result = compare_runs([sweep], Path(self.out) if self.out else sweep / "report",
                                  n_resamples=self.n_resamples, grid_prompts=self.grid_prompts)
        except CompareError as exc:
            log.warning("no combined sweep report: %s", exc)
            return
        print(f"Report: {result['index']}")
