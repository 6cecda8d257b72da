"""rlg-bench entry point: rlg-bench experiment=<name> [overrides]   (see README.md and docs/).

Exit codes: 0 done; 2 a bad input or environment (unknown name, misspelt key, wrong type, bad grid,
bad prompts, bad checkpoint, run directory locked/read-only/full): one clear message, no traceback,
nothing lost; anything else is a bug (traceback). SIGTERM (e.g. a SLURM preemption) ends the run
like Ctrl-C: what was stored stays stored and the same command resumes.
"""

import logging
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

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

    hc = HydraConfig.get()
    try:
        validate(cfg)  # bad values fail in a second, before torch is imported
    except ConfigError as exc:
        _refuse(exc, hc.runtime.output_dir)
    from rlg.harness.console import quiet_third_party

    quiet_third_party(verbose=bool(cfg.verbose))
    from rlg.harness.runner import USER_ERRORS, run

    job = hc.job.override_dirname or cfg.name
    group = f"{cfg.name}-sweep" if hc.mode.name == "MULTIRUN" else None
    try:
        run(cfg, run_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task), job_name=job, group=group)
    except USER_ERRORS as exc:
        log.debug("user error", exc_info=True)
        _refuse(exc, hc.runtime.output_dir)


def _refuse(exc: BaseException, run_dir: str) -> None:
    """Print the refusal (one line) and exit 2, removing the run directory if Hydra made it for nothing
    (it holds only Hydra's .hydra/ and log): a refused command leaves nothing on disk."""
    log.error("%s", exc)
    root = Path(run_dir)
    if root.is_dir() and {p.name for p in root.iterdir()} <= {".hydra", f"{HydraConfig.get().job.name}.log"}:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(2)


# 1-minute load average per core above which the machine counts as oversubscribed at start-up (cpu_defaults): more
# runnable threads than cores is when spinning waits steal time from the threads that work. 0.5 was too eager: the
# decaying load average of the previous job alone (1.2 on 2 idle cores) made the quickstart 2x slower.
BUSY_LOAD_PER_CORE = 1.0


def cpu_defaults(load: float | None = None, cores: int | None = None) -> str | None:
    """On a busy machine, OpenMP threads that sleep instead of spinning while they wait
    (``OMP_WAIT_POLICY=PASSIVE``); on an idle one, libgomp's default. A policy the user set is kept.

    ``load``: the 1-minute load average (default ``os.getloadavg()``); ``cores``: ``os.cpu_count()``.
    Returns the policy set, or None. Read once, when torch starts its thread pool, so call this before torch
    is imported. It changes no image bit (the thread count does, and is left to torch / OMP_NUM_THREADS).
    Chosen with benchmarks/busy_cpu.py (docs/performance.md), quickstart sampling on 2 cores: under load
    11-12, two spinning threads made 0.08 images/s and two passive ones 1.18; on the idle machine, two
    passive threads made 3.3 images/s and two spinning ones 7.9. Hence passive only when the load average
    at start-up exceeds ``BUSY_LOAD_PER_CORE`` per core (more runnable threads than cores)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return None
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: keep libgomp's default
            return None
    if load / cores <= BUSY_LOAD_PER_CORE:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: the run lock is released and meta.json records the stop


def main() -> None:
    """Console script ``rlg-bench`` (and ``python run.py`` in a clone)."""
    signal.signal(signal.SIGTERM, _terminate)
    cpu_defaults()
    from rlg.harness.config import override_problem

    problem = override_problem(sys.argv[1:], config_dirs(sys.argv[1:]))
    if not problem and not config_dirs(sys.argv[1:]):  # (rlg.harness.api composes rlg/conf only)
        from rlg.harness.api import unset_node_problem
        from rlg.harness.config import ConfigError

        try:
            problem = unset_node_problem([a for a in sys.argv[1:] if "=" in a and not a.startswith("-")])
        except ConfigError:  # the command line composes badly otherwise: Hydra says why, as it does today
            problem = None
    if problem:  # one line with the closest key or option, instead of Hydra's multi-line error
        print(f"rlg-bench: {problem}", file=sys.stderr)
        sys.exit(2)
    problem = output_root_problem(sys.argv[1:])
    if problem:  # Hydra would create the run directory first and print a pathlib traceback
        print(f"rlg-bench: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        _main()
    except SystemExit as exc:
        if exc.code == 1 and not _STARTED:
            sys.exit(2)  # Hydra printed why it refused the command line (unknown option, misspelt key, type)
        raise
    except KeyboardInterrupt:  # one line instead of a traceback through torch; the store is append-only
        command = " ".join(shlex.quote(a) for a in ["rlg-bench", *sys.argv[1:]])
        print(f"\nrlg-bench: interrupted (Ctrl-C). Every image and score stored so far is kept; to resume, run the "
              f"same command again: {command}", file=sys.stderr)
        sys.exit(130)


def config_dirs(argv: list[str]) -> list[str]:
    """The folders given with Hydra's ``--config-dir DIR`` / ``-cd DIR`` / ``--config-dir=DIR`` (their groups'
    options are valid choices too)."""
    out = [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]
    return out + [b for a, b in zip(argv, argv[1:]) if a in ("--config-dir", "-cd")]


def output_root_problem(argv: list[str]) -> str | None:
    """Why the output folder named by ``paths.root=`` on the command line cannot be created or written, or
    None. Creates the folder (as Hydra would next) so the check is the real one."""
    from rlg.harness.config import ConfigError, user_path

    roots = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("paths.root=")]
    if not roots:
        return None
    value = roots[-1]
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":  # quoted for Hydra: its value is inside
        value = value[1:-1]
    try:
        path = Path(user_path("paths.root", value))
    except ConfigError as exc:
        return str(exc)
    if path.exists() and not path.is_dir():
        return (f"the output folder paths.root={roots[-1]} is a file, not a folder; nothing was written. "
                "Fix: point paths.root at a folder, e.g. paths.root=$HOME/rlg-outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return (f"cannot create the output folder paths.root={roots[-1]} ({reason}); nothing was written. "
                "Fix: point paths.root at a folder you can write, e.g. paths.root=$HOME/rlg-outputs")
    if not os.access(path, os.W_OK):
        return (f"cannot write into the output folder paths.root={roots[-1]} (permission denied); nothing was "
                "written. Fix: point paths.root at a folder you can write, e.g. paths.root=$HOME/rlg-outputs")
    return None


if __name__ == "__main__":
    main()
