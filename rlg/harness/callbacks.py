"""Hydra callbacks of the app: a multirun ends with one combined report over its jobs."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("rlg")


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
