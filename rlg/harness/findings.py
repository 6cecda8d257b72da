"""The findings run (``rlg-bench experiment=findings_zoo``): every pair x sampling seed x method through the
ordinary run, then one table of verdicts over them (``rlg.report.findings``).

One job, not a Hydra multirun: the pairs differ in five config groups, their reward and their best-of-N pick
(a sweep over one key cannot say that without sweeping ``experiment`` itself), and the verdicts need every
pair's stores at once, in the process that ran them. Each (pair, seed) is an ordinary run directory,
``<run>/runs/<preset>-seed<k>``, made by the same ``run_job`` as ``rlg-bench experiment=<preset> seed=<k>``
(grid loop, store, evaluators, its own report with the Methods section), so it resumes like every run: the
same command skips what is stored, and ``stage=report`` rebuilds the reports and the verdicts from the stores.
``rlg-bench-report <run>`` finds every sub-run below it (a sweep directory to it).

Settings (``findings:`` in the preset, schema ``rlg.harness.config.FindingsConf``):

* ``pairs``: one line per pair, ``"<experiment preset> [override ...]"``; the preset's ``report.reward`` is
  the pair's reward (the best-of-N pick and the claims' reward axis). A pair added later joins by one line.
  On the command line quote a line with overrides: ``'findings.pairs=["zoo_sd_dpo prompts.max_prompts=4"]'``.
* ``seeds``: sampling seeds (the run's ``seed``: an image's noise depends on (seed, prompt, sample) only).
* the run's own ``method`` group: the methods of every sub-run (``rlg`` is required: every claim is about RLG);
  ``method.<name>.<key>=`` on the command line reaches every sub-run. A pair's line may hold ``method=[...]``, a
  subset of them with rlg, for that pair alone. best_of_n picks, and fk_steering steers, by the pair's reward.
* ``overrides``: applied to every sub-run after its preset; a pair's own overrides come after them, and the
  command-line overrides of this run last (``experiment``, ``name``, ``seed`` and ``findings.*`` excepted), so
  ``stage=report`` reaches every sub-run.
* ``compare_at``, ``reward_margin``, ``held_out_margin``, ``alpha``, ``n_resamples``: the claims and the
  verdict rule (``rlg.report.findings``, ``rlg.verdicts``), fixed before the data.
* ``sub_reports``: false skips each sub-run's own report (seconds each; the findings need only the stores).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from pathlib import Path
from typing import Any, Callable

from rlg.harness.config import ConfigError
from rlg.kind_spec import FindingsPlan, FindingsSubRun as SubRun
from rlg.metrics import metric

log = logging.getLogger("rlg")

PASSED_ON = ("experiment", "name", "seed", "findings", "hydra")  # command-line keys a sub-run does not inherit


def _inherited(cli: list[str]) -> list[str]:
    """The command-line overrides a sub-run inherits (every one but the keys that name or make the findings run)."""
    return [o for o in cli if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] not in PASSED_ON
            and not o.lstrip("+~").startswith("method=")]  # the method group is passed on as the run's own list


def findings_plan(conf: Any, cli: list[str]) -> FindingsPlan:
    """Check ``conf.findings`` and build every sub-run's job (each composed as ``rlg-bench experiment=<preset>
    method=[...] <findings.overrides> <pair overrides> <inherited command line> seed=<k>``). Raises ConfigError
    (one line naming the fix) for an empty or repeated list, an unknown method, a preset without
    ``report.reward``, or any sub-run the ordinary checks refuse."""
    from rlg.harness.api import compose
    from rlg.harness.build import build

    f = conf.findings
    if not f.pairs:
        raise ConfigError("findings.pairs is empty; list one experiment preset per pair, e.g. "
                          "findings.pairs=[zoo_sd_dpo,zoo_compress_ddpo]")
    if not f.seeds or len(set(f.seeds)) != len(f.seeds):
        raise ConfigError(f"findings.seeds={list(f.seeds)} must list distinct sampling seeds, e.g. [0,1,2]")
    chosen = list(conf.method) or ["rlg"]
    if "rlg" not in chosen:
        raise ConfigError(f"method={chosen}: every claim of the findings is about RLG, so select rlg too, e.g. "
                          "method=[rlg,weight_mix,cfg_rl,best_of_n]")
    for key in ("reward_margin", "held_out_margin"):
        if not getattr(f, key) > 0:
            raise ConfigError(f"findings.{key}={getattr(f, key)} must be > 0 (an equivalence margin)")
    if not 0 < f.alpha < 1:
        raise ConfigError(f"findings.alpha={f.alpha} must lie in (0, 1), e.g. 0.05")
    if f.n_resamples < 100:
        raise ConfigError(f"findings.n_resamples={f.n_resamples} is too few for a bootstrap; use >= 1000")
    presets = [shlex.split(line) for line in f.pairs]
    names = [p[0] for p in presets if p]
    if len(names) != len(presets) or len(set(names)) != len(names):
        raise ConfigError(f"findings.pairs={list(f.pairs)} must name each experiment preset once")
    inherited = _inherited(cli)
    runs = []
    for preset, *own in presets:
        # a pair's own method=[...] (a subset of the run's) replaces the run's list for that pair: a costly method
        # (fk_steering scores every particle at every step) can leave out a costly pair
        own_methods = [o for o in own if o.startswith("method=")]
        own = [o for o in own if not o.startswith("method=")]
        pair_methods = own_methods[-1].split("=", 1)[1].strip("[]").split(",") if own_methods else chosen
        if "rlg" not in pair_methods or not set(pair_methods) <= set(chosen):
            raise ConfigError(f"findings pair {preset}: method=[{','.join(pair_methods)}] must hold rlg and only "
                              f"methods of the run's method=[{','.join(chosen)}]")
        pair_line = f"method=[{','.join(pair_methods)}]"
        common = [o for o in f.overrides  # the settings of a method this pair leaves out have nothing to set
                  if not (o.startswith("method.") and o.split(".")[1] not in pair_methods)]
        base = [f"experiment={preset}", pair_line, *common, *own, *inherited]  # a pair's own line beats the common
        reward = compose(*base).report.reward
        if not reward:
            raise ConfigError(f"experiment={preset} sets no report.reward; the findings need each pair's reward: set "
                              f"it in the preset or on its findings.pairs line ({preset} report.reward=<metric>)")
        pick = [f"method.{m}.pick={reward}" for m in ("best_of_n", "fk_steering") if m in pair_methods]
        for seed in f.seeds:
            over = (*base, *pick, f"seed={seed}", f"name={conf.name}-{preset}-seed{seed}")
            try:
                job = build(compose(*over), overrides=list(over))
            except ConfigError as exc:
                raise ConfigError(f"findings pair {preset} (seed {seed}): {exc}") from exc
            declared = metric(str(reward))  # registered once build has imported the pair's evaluators
            if declared is not None and declared.derived:
                raise ConfigError(f"findings pair {preset}: its reward {reward} is a set metric the report derives, "
                                  "and the findings compare paired images; name a per-image metric on its line "
                                  f"({preset} report.reward=<metric>, e.g. geneval_correct for GenEval)")
            if not f.sub_reports:
                job = dataclasses.replace(job, stages=tuple(st for st in job.stages if st != "report"))
            runs.append(SubRun(preset, int(seed), str(reward), tuple(over), job))
    return FindingsPlan(tuple(runs), tuple(float(w) for w in f.compare_at), float(f.reward_margin),
                        float(f.held_out_margin), float(f.alpha), int(f.n_resamples))


def findings_settings(conf: Any, scales: tuple[float, ...], overrides: list[str]) -> FindingsPlan:
    """The findings kind's settings (rlg.harness.kinds.KINDS): the checked plan, every sub-run built at start-up."""
    return findings_plan(conf, overrides)


def findings_stage(job: Any, store: Any) -> dict[str, Any]:
    """The findings kind's stage (rlg.harness.kinds.KINDS): :func:`run_findings` with the runner's ``run_job``."""
    from rlg.harness.runner import run_job

    return run_findings(job, store, run_job)


def run_findings(job: Any, store: Any, run_job: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Run every sub-run of ``job.settings`` (a FindingsPlan) with ``run_job`` (``rlg.harness.runner.run_job``,
    passed in: the runner calls this) into ``<run>/runs/<preset>-seed<k>``, each with the stages of this run
    (``job.stages``: stage=report makes and scores nothing, it rewrites each sub-run's report from its store, or
    skips the sub-run with ``sub_reports`` off), then, when the run has a report stage, write ``<run>/report``
    (index.md/.html with the Findings section first, tables/findings.csv) from the sub-runs' stores. Returns
    {"files", "rows", "index", "index_html"} ({"sub_runs"} without a report stage). Raises StoreError naming the fix,
    before any sub-run, when stage=report finds a sub-run with no stored images."""
    from rlg.harness.stages import _index, _written
    from rlg.report.findings import write_findings_report
    from rlg.store import Store, StoreError

    plan = job.settings
    root = Path(store.root)
    if job.stages == ("report",):
        empty = [sub.dir_name for sub in plan.runs if not len(Store(root / "runs" / sub.dir_name).images())]
        if empty:
            raise StoreError(f"stage=report: {root / 'runs'} holds no stored images of the sub-run(s) "
                             f"{', '.join(empty)}. Fix: run it with stage=all first (the same command resumes)")
    dirs = []
    for i, sub in enumerate(plan.runs):
        run_dir = root / "runs" / sub.dir_name
        dirs.append((sub.preset, sub.seed, sub.reward, run_dir))
        # a sub-run built from the command line has this run's stage; one built without it (a Python caller) too
        stages = tuple(st for st in sub.job.stages if st in job.stages)
        if not stages:  # stage=report with sub_reports off: the findings read the stores as they are
            continue
        log.info("findings: %s seed %d (%d of %d)", sub.preset, sub.seed, i + 1, len(plan.runs))
        run_job(dataclasses.replace(sub.job, stages=stages), run_dir, list(sub.overrides),
                f"{job.name}/{sub.dir_name}", job.name)
    if "report" not in job.stages:
        log.info("findings: stage=%s ran on every sub-run; stage=report (or all) writes the findings", job.stages[0])
        return {"sub_runs": len(dirs)}
    result: dict[str, Any] = {}

    def write(tmp: Path) -> list[str]:
        result.update(write_findings_report(dirs, tmp, title=f"rlg-bench findings: {job.name}",
                                            compare_at=plan.compare_at, reward_margin=plan.reward_margin,
                                            held_out_margin=plan.held_out_margin, alpha=plan.alpha,
                                            n_resamples=plan.n_resamples, seed=job.seed))
        return result["files"]

    files = _written(store, write)
    for line in result.get("headlines", []):
        print(line)
    return {"files": files, "rows": result.get("rows", 0), **_index(store)}


__all__ = ["findings_plan", "findings_settings", "findings_stage", "run_findings"]
