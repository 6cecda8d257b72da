"""rlg-bench entry point: python run.py experiment=<name> [overrides]   (see README.md)."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlg.config import ConfigError
from rlg.experiment import run
from rlg.guidance import ScaleError
from rlg.pairs import PairError
from rlg.prompts import PromptError

log = logging.getLogger("rlg")
for noisy in ("fontTools", "matplotlib", "PIL"):  # PDF font subsetting logs every table at INFO
    logging.getLogger(noisy).setLevel(logging.WARNING)
USER_ERRORS = (ConfigError, ScaleError, PairError, PromptError, PermissionError)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    job = hc.job.override_dirname or cfg.name
    group = f"{cfg.name}-sweep" if hc.mode.name == "MULTIRUN" else None
    try:
        run(cfg, run_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task), job_name=job, group=group)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
