"""rlg-bench entry point: rlg-bench experiment=<name> [overrides]   (see README.md).

Exit codes: 0 done; 2 a bad input or environment (unknown name, misspelt key, wrong type, bad grid,
bad prompts, bad checkpoint, run directory locked/read-only/full): one clear message, no traceback,
nothing lost; anything else is a bug (traceback). SIGTERM (e.g. a SLURM preemption) ends the run
like Ctrl-C: what was stored stays stored and the same command resumes.
"""

import logging
import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import rlg.harness.config  # noqa: F401  registers the typed schema before Hydra composes (light: no torch)

log = logging.getLogger("rlg")
_STARTED = False  # whether Hydra got as far as calling main (else it refused the command line)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    global _STARTED
    _STARTED = True
    from rlg.harness.config import ConfigError, validate

    try:
        validate(cfg)  # bad values fail in a second, before torch is imported
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    from rlg.harness.console import quiet_third_party

    quiet_third_party(verbose=bool(cfg.verbose))
    from rlg.harness.runner import USER_ERRORS, run

    hc = HydraConfig.get()
    job = hc.job.override_dirname or cfg.name
    group = f"{cfg.name}-sweep" if hc.mode.name == "MULTIRUN" else None
    try:
        run(cfg, run_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task), job_name=job, group=group)
    except USER_ERRORS as exc:
        log.debug("user error", exc_info=True)
        log.error("%s", exc)
        sys.exit(2)


def cpu_defaults() -> None:
    """OpenMP threads that sleep instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``), unless
    the user set a policy. Read once, when torch starts its thread pool, so call this before torch is
    imported. It changes no image bit (the thread count does, and is left to torch / OMP_NUM_THREADS).
    Chosen with benchmarks/busy_cpu.py (README "Performance"): on a shared 2-core machine two spinning
    threads made the quickstart 20x slower than one thread, a passive wait kept them usable."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: the run lock is released and meta.json records the stop


def main() -> None:
    """Console script ``rlg-bench`` (and ``python run.py`` in a clone)."""
    signal.signal(signal.SIGTERM, _terminate)
    cpu_defaults()
    from rlg.harness.config import misspelt_override

    problem = misspelt_override(sys.argv[1:])
    if problem:  # one line with the closest key, instead of Hydra's multi-line error
        print(f"rlg-bench: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        _main()
    except SystemExit as exc:
        if exc.code == 1 and not _STARTED:
            sys.exit(2)  # Hydra printed why it refused the command line (unknown option, misspelt key, type)
        raise


if __name__ == "__main__":
    main()
