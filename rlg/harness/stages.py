"""The stages of a job: generate -> evaluate -> report, and the measurement kinds' one stage (``measured``: measure
and report, or with stage=report the report from the stored rows).

Each stage takes the checked :class:`~rlg.harness.build.Job` and the run's
:class:`~rlg.store.Store`, never the config. The work list is prompt set x samples x grid scales,
sampled by the library's one grid loop (``rlg.grid.run_grid``: all scales of a (prompt, sample) travel
in the same pipeline call and share the initial noise); generate adds the content keys, skips work
already in the store (resume), writes PNGs in a background thread, and a rank or shard takes every
world-th (prompt, sample) group.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from rlg.harness.build import Job
from rlg.harness.prompts import Prompt, PromptError
from rlg.store import Store, StoreError, content_key, write_error

log = logging.getLogger("rlg")


class EvaluationFailed(RuntimeError):
    """An evaluator failed on every image it was given (its per-image errors are stored)."""


class PairCache:
    """The loaded pair, kept between jobs of a basic-launcher multirun (one pair resident at a time).

    Keyed by what loading and placement depend on; sampler settings (scheduler, window, micro_batch)
    are applied per call, so a sweep over them keeps the pair."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.pair = None

    def get(self, job: Job):
        from rlg.harness.console import quiet_model_libraries
        from rlg.pairs import PairError, load_pair, place

        key = json.dumps([job.pair.identity(), job.identity["weights"], asdict(job.placement)], sort_keys=True,
                         default=str)
        if key != self.key:
            self.clear()
            spec = job.pair
            quiet_model_libraries()  # the calm console's switches for diffusers/transformers, before they load
            try:
                pair = load_pair(spec)
            except PairError:
                raise
            except Exception as exc:  # a truncated safetensors file, a refused pickle, ...: a bad checkpoint
                log.debug("loading pair %s failed", spec.name, exc_info=True)
                raise PairError(f"cannot load the pair {spec.name!r} (base {spec.base.describe()}, RL "
                                f"{spec.rl.describe()}): {type(exc).__name__}: {exc}\nFix: check that the checkpoint "
                                "files are complete (download them again) and are the kind pair.rl_kind says") from exc
            p = job.placement
            place(pair, p.device, offload=p.offload, compile=p.compile, vae_tiling=p.vae_tiling)
            self.key, self.pair = key, pair
        return self.pair

    def clear(self) -> None:
        if self.pair is None:  # nothing loaded (e.g. stage=evaluate with low_memory): no torch to import
            return
        self.key = self.pair = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


PAIRS = PairCache()


# ---------------------------------------------------------------------------------------------
def job_arms(job: Job) -> list[Any]:
    """Every arm of the job's methods (rlg.methods), in method order; plain RLG over the grid by default."""
    return [arm for m in _methods(job) for arm in m.arms()]


def _methods(job: Job) -> tuple[Any, ...]:
    from rlg.methods import get_method

    return job.methods or (get_method("rlg", list(job.scales)),)


def method_grids(job: Job) -> list[tuple[Any, dict[float, Any], Any]]:
    """(method, {scale: arm}, rlg.grid.Grid) for every set of a method's arms that shares pipeline calls: the
    same CFG scale and weight mix, and the same noise seed (best-of-N candidate k draws from
    ``rlg.methods.candidate_seed(seed, k)``). Plain RLG is one grid: ``image_grid(job)``. Every grid has the
    job's prompts, samples and seed, so a (prompt, sample) starts from the same noise under every method."""
    from rlg.methods import candidate_seed

    out = []
    for method in _methods(job):
        sets: dict[tuple, dict[float, Any]] = {}
        for arm in method.arms():
            sets.setdefault((arm.call_key, arm.candidate), {})[arm.scale] = arm
        for (_, candidate), arms in sets.items():
            first = next(iter(arms.values()))
            settings = job.sampler if first.guidance_scale is None else \
                dataclasses.replace(job.sampler, guidance_scale=first.guidance_scale)
            settings = particle_settings(job, settings, first)
            grid = dataclasses.replace(image_grid(job), scales=tuple(arms), settings=settings,
                                       seed=candidate_seed(job.seed, candidate))
            out.append((method, arms, grid))
    return out


def particle_settings(job: Job, settings: Any, arm: Any) -> Any:
    """``settings`` with the particle method of ``arm``: rlg_fkc's Feynman-Kac correctors, or fk_steering's steering
    by its reward (``arm.pick``), scored by the job's evaluator that writes it, with that evaluator's options."""
    from rlg.sampler_spec import FKCConfig, SteeringSpec

    if arm.correctors is not None:
        return dataclasses.replace(settings, correctors=FKCConfig(*arm.correctors))
    if arm.steering is None:
        return settings
    from rlg.evaluators.base import evaluator_class

    plan = next((e for e in job.evaluators if arm.pick in (getattr(evaluator_class(e.name), "metrics", None) or {})),
                None)
    if plan is None:  # build.method_plans refuses this at start-up; a library caller gets the same line
        raise ValueError(f"method {arm.method}: no selected evaluator writes its reward {arm.pick!r}")
    from rlg.evaluators.base import get_evaluator, reward_scorer

    k, potential, interval, lam = arm.steering
    scorer = reward_scorer(get_evaluator(plan.name, **dict(plan.options)), arm.pick)
    return dataclasses.replace(settings, steering=SteeringSpec(k, arm.pick, scorer, potential, interval, lam))


def image_grid(job: Job):
    """The job's plain-RLG grid (rlg.grid.Grid): its prompts (by id), samples, seed, scales, sampler and call size."""
    from rlg.grid import Grid

    return Grid(prompts=tuple(p.text for p in job.prompts), prompt_ids=tuple(p.id for p in job.prompts),
                scales=job.scales, samples=job.config.prompts.samples_per_prompt, seed=job.seed,
                settings=job.sampler, batch_size=job.config.sampler.batch_size)


def image_keys(job: Job, arms: dict[float, Any] | None = None):
    """key(prompt_id, sample, scale) -> the content key of that image of the job (of ``arms[scale]``'s method)."""
    by_id = {p.id: p for p in job.prompts}
    return lambda pid, sample, scale: image_key(job, by_id[pid], sample, scale, arms[scale] if arms else None)


def work_groups(job: Job, rank: int | None = None) -> list[list[tuple[str, Any]]]:
    """The (content key, WorkItem) groups of ``rank`` (default: this process's; -1: every rank's, in order):
    per method grid (``method_grids``), one group per (prompt, sample) with every scale of that grid; group g
    of a grid falls to rank g % world."""
    from rlg.grid import work_groups as grid_groups

    if rank is not None and rank < 0:
        return [g for _, arms, grid in method_grids(job) for g in grid_groups(grid, image_keys(job, arms))]
    rank = job.rank if rank is None else rank
    return [g for _, arms, grid in method_grids(job)
            for g in grid_groups(grid, image_keys(job, arms), rank=rank, world=job.world)]


def image_key(job: Job, prompt: Prompt, sample: int, scale: float, arm: Any = None) -> str:
    """The content key of an image: the job's identity, (prompt, sample, seed, scale) and the arm's method
    fields (none for plain RLG, whose keys are those of runs made before methods existed)."""
    extra = arm.key_fields() if arm is not None else {}
    return content_key({**job.identity, "prompt_id": prompt.id, "prompt": prompt.text, "sample": sample,
                        "seed": job.seed, "scale": scale, **extra})


def _image_row(job: Job, run_id: str, key: str, it, res, truncated: bool, prompt: Prompt, arm) -> dict[str, Any]:
    s = job.sampler
    cfg = s.guidance_scale if arm.guidance_scale is None else arm.guidance_scale
    return {"image_key": key, "run_id": run_id, "run_name": job.name, "config_id": job.config_id,
            "pair": job.pair.name, "prompt_id": it.prompt_index, "prompt": it.prompt, "sample": it.sample_index,
            "seed": it.seed, "scale": it.scale, "sampler": job.config.sampler.name,
            "num_inference_steps": s.num_inference_steps,
            "guidance_scale": cfg, "height": s.height, "width": s.width, "nonfinite": res.nonfinite,
            "nonfinite_step": res.nonfinite_step, "truncated": truncated,
            "metadata": json.dumps(prompt.metadata) if prompt.metadata else None,
            "method": arm.method, "knob": arm.knob, "candidate": arm.candidate, "nfe_base": res.nfe_base,
            "nfe_rl": res.nfe_rl, "wall_s": res.wall_s, "pick": arm.pick}


def generate(job: Job, store: Store, run_id: str, progress=None) -> dict[str, Any]:
    """Make this rank's missing images, one ``rlg.grid.run_grid`` per method grid (``method_grids``), each
    inside its method's model state (a weight-mixed network). ``progress(done, total)`` is called after
    each batch (the tracker turns it into images/s and an ETA)."""
    from rlg.grid import pack_calls, prompt_truncation, run_grid
    from rlg.grid import pending as unmade
    from rlg.grid import work_groups as grid_groups

    by_id = {p.id: p for p in job.prompts}
    plan = method_grids(job)
    keyed = work_groups(job)
    stored = store.stored_keys(keys=[k for group in keyed for k, _ in group])  # this rank's keys only
    todo = [it for group in keyed for k, it in group if k not in stored]
    n_todo, total = len(todo), sum(map(len, keyed))
    log.info("generate: %d images for this process, %d already stored, %d to make", total, total - n_todo, n_todo)
    if not n_todo:
        return {"images_made": 0, "images_skipped": total}
    if job.prompt_problem:  # refuse before any image is made (stored images are still scored)
        raise PromptError(job.prompt_problem)
    pair = PAIRS.get(job)
    truncated = prompt_truncation(pair.pipe, [it.prompt for it in todo], job.sampler.extra)
    n_cut = sum(truncated.values())
    if n_cut:
        log.warning("%d prompts are longer than the text encoder reads and are truncated by the pipeline "
                    "(their image rows have truncated=True)", n_cut)
    made = nonfinite = 0
    if progress is not None:
        progress(0, n_todo)  # the rate counts from here, first batch included
    # PNG encoding and writing run in one background thread while the next batch is sampled; at most
    # one batch waits, and a write error surfaces at the next batch (rows are still written after PNGs)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlg-store")
    pending = None
    # the bar moves at every denoising step (a forward hook on the denoiser, called once per step of a
    # pipeline call), so a slow machine shows progress and an ETA long before a call's images are done
    steps = max(int(job.config.sampler.num_inference_steps), 1)
    todo_grids = []  # (method, arms, grid, keyed groups) of the grids with something to make
    for method, arms, grid in plan:
        groups = grid_groups(grid, image_keys(job, arms), rank=job.rank, world=job.world)
        if any(k not in stored for g in groups for k, _ in g):  # else nothing to make: no mixed network is built
            todo_grids.append((method, arms, grid, groups))
    sizes = iter([len(c) for _, _, grid, groups in todo_grids  # run_grid's calls, in order
                  for c in pack_calls(unmade(groups, stored), grid.batch_size)])
    step_share = [0.0]

    def tick(*_) -> None:  # returns None: a forward hook's return value would replace the output
        bar.update(step_share[0])

    def next_call() -> None:  # run_grid's before_call: the free-space check, then the next call's share
        store.check_free_space()  # before spending compute on images that could not be stored
        step_share[0] = next(sizes, 0) / steps

    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} img [{elapsed}<{remaining}, {rate_fmt}]"
    with tqdm(total=n_todo, desc="generate", unit="img", bar_format=bar_format, mininterval=1.0) as bar, writer:
        hook = pair.denoiser.register_forward_hook(tick)
        try:
            for method, arms, grid, _ in todo_grids:
                # the sampler is built here: sampler.extra keys the pipeline does not accept are refused at once
                calls = run_grid(pair, grid, key=image_keys(job, arms), skip=stored, rank=job.rank, world=job.world,
                                 before_call=next_call)
                with method.applied(pair.denoiser, next(iter(arms.values()))):
                    for batch in calls:
                        bar.n = made + len(batch)  # exact at the end of each call, whatever the step count was
                        bar.refresh()
                        pending = _store_batch(job, store, run_id, batch, truncated, by_id, writer, pending, arms)
                        made += len(batch)
                        nonfinite += sum(1 for _, res in batch if res.nonfinite)
                        if progress is not None:
                            progress(made, n_todo)
            if pending is not None:
                pending.result()
        finally:
            hook.remove()
    return {"images_made": made, "images_skipped": total - n_todo, "nonfinite": nonfinite, "truncated_prompts": n_cut,
            "pair_info": pair.info, "network_rows": asdict(pair.denoiser.stats)}


def _store_batch(job: Job, store: Store, run_id: str, batch, truncated: dict[str, bool],
                 by_id: dict[int, Prompt], writer: ThreadPoolExecutor, pending, arms: dict[float, Any]):
    """Warn about nonfinite images, wait for the previous call's write, and submit this one's.
    ``batch``: run_grid's [(content key, Generated)] of one pipeline call; ``arms``: its grid's arm per scale."""
    rows = [_image_row(job, run_id, key, res.item, res, truncated[res.item.prompt], by_id[res.item.prompt_index],
                       arms[res.item.scale]) for key, res in batch]
    results = [res for _, res in batch]
    for row, res in zip(rows, results):
        if res.nonfinite:
            log.warning("image %s (prompt %d, sample %d, %s %g) has NaN/inf values from step %s on; it is "
                        "stored, flagged nonfinite and left out of every mean", row["image_key"][:12],
                        row["prompt_id"], row["sample"], row["method"], row["scale"], res.nonfinite_step)
    if pending is not None:
        pending.result()
    return writer.submit(store.write_images, rows, [r.image for r in results])


def keys_to_score(job: Job, store: Store) -> list[str]:
    """The stored images this rank scores, each image by exactly one rank: those of its own work list
    (whoever made them), plus the stored images in no rank's work list (earlier settings, other grids)
    whose key falls to this rank. So ranks launched together score every image once, and shards run in
    any order leave every image scored. A job that makes no image (stage=evaluate) has no work list: every
    stored image goes by its key."""
    stored = set(store.images().image_key)
    work = {k: i for i, group in enumerate(work_groups(job, rank=-1)) for k, _ in group} if job.identity else {}
    own = {k for k, i in work.items() if i % job.world == job.rank}
    return sorted((own & stored) | {k for k in stored - work.keys() if int(k, 16) % job.world == job.rank})


def work_done(job: Job, store: Store, scored_by: list[tuple[str, str]]) -> tuple[int, int]:
    """(done, total) over the whole work list of every rank and shard: images stored and scored by each
    (evaluator, version) of ``scored_by``. A shard writes the run's report only when done == total."""
    keys = {k for group in work_groups(job, rank=-1) for k, _ in group}
    done = store.stored_keys(keys=keys)
    for name, version in scored_by:
        done &= store.scored(name, version)
    return len(done), len(keys)


def evaluate(job: Job, store: Store, progress=None) -> dict[str, Any]:
    """Score this rank's stored images with every selected evaluator (cached scores are kept).
    ``progress(done, total, phase=...)`` is called after each batch, phase ``evaluate/<name>``."""
    from rlg.evaluators.base import Sample, get_evaluator, run_evaluator

    mine = keys_to_score(job, store)
    images = store.images(verify=True, keys=mine)
    if len(images) < len(mine):
        log.warning("evaluate: %d of this process's %d images are missing or corrupt (see quarantine/); they are "
                    "not scored. Run stage=generate (or all) to make them again", len(mine) - len(images), len(mine))
    sha = dict(zip(images.image_key, images.image_sha256))
    batch_size = job.config.evaluators.batch_size
    out, broken = {}, []
    for plan in job.evaluators:
        ev = get_evaluator(plan.name, **plan.options)
        done = store.scored(ev.name, ev.version, failed=False)  # a failed image is tried again
        todo = images[~images.image_key.isin(done)]
        log.info("evaluate %s (%s): %d images, %d cached", plan.name, ev.version, len(todo), len(images) - len(todo))
        store.check_free_space()

        def samples():
            for r in todo.itertuples():
                meta = json.loads(r.metadata) if isinstance(r.metadata, str) else None
                yield Sample(key=r.image_key, image=store.load_image(r), prompt=r.prompt, metadata=meta)

        failed, failed_images, first_error, scored = 0, set(), None, 0
        if progress is not None and len(todo):
            progress(0, len(todo), phase=f"evaluate/{plan.name}")
        with tqdm(total=len(todo), desc=f"evaluate {plan.name}", unit="img") as bar:
            for rows in run_evaluator(ev, samples(), batch_size=batch_size):
                store.write_scores({**asdict(r), "image_sha256": sha[r.image_key]} for r in rows)
                bad = [r for r in rows if r.error]
                failed += len(bad)
                failed_images |= {r.image_key for r in bad}
                first_error = first_error or (bad[0].error if bad else None)
                n = len({r.image_key for r in rows})
                scored += n
                bar.update(n)
                if progress is not None:
                    progress(scored, len(todo), phase=f"evaluate/{plan.name}")
        if failed:
            log.warning("evaluate %s: %d score rows failed (value NaN, reason in the error column); the other "
                        "images are scored", plan.name, failed)
        out[plan.name] = {"evaluator": ev.name, "version": ev.version, "scored": len(todo),
                          "cached": len(images) - len(todo), "failed_rows": failed}
        if len(todo) and len(failed_images) == len(todo):
            broken.append(f"{plan.name} failed on all {len(todo)} images (first: {str(first_error)[:200]})")
    if broken:  # the other evaluators' scores are stored; a report with n = 0 would pass for a result
        raise EvaluationFailed("evaluate: " + "; ".join(broken) + ". Each failure is stored per image (error "
                               "column); fix the cause and rerun with stage=evaluate (failed images are retried)")
    return out


# ---------------------------------------------------------------------------------------------
def _written(store: Store, write) -> list[str]:
    """Run ``write(tmp)`` -> files in a temporary folder, then swap it in for ``<run>/report``: a killed report
    leaves the previous one (or none), never a half-written one. Returns the final paths of the files."""
    tmp, final = store.temp_dir("report"), store.root / "report"
    try:
        files = write(tmp)
        store.swap_dir(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # disk full or read-only while writing figures/tables
            raise write_error(final, exc) from exc
        raise
    return [str(final / Path(f).relative_to(tmp)) for f in files]


def what_ran(job: Job) -> str:
    """One sentence, from the Job, of what an image run runs: pair, reward, prompts x samples per prompt, the
    scales (and the other methods), the sampler (steps, scheduler, CFG; DDIM eta where set)."""
    from rlg.metrics import title
    from rlg.report.stats import scale_label

    s = job.sampler
    scheduler = "the pipeline's default scheduler" if s.scheduler == "default" else f"scheduler {s.scheduler}"
    eta = f", eta {s.eta:g}" if s.eta is not None else ""
    others = [m.label for m in job.methods if m.label != "rlg"]
    methods = f" (and {', '.join(others)})" if others else ""
    n = job.config.prompts.samples_per_prompt
    return (f"Ran pair {job.pair.name} for the reward {title(job.reward) if job.reward else 'none (no evaluator)'}: "
            f"{len(job.prompts)} prompts x {n} sample{'s' * (n != 1)} per prompt at RLG scales "
            f"w = {', '.join(scale_label(w) for w in job.scales)}{methods}; sampler {job.config.sampler.name}: "
            f"{s.num_inference_steps} steps, {scheduler}{eta}, CFG {s.guidance_scale:g}{correctors(s)}.")


def correctors(s) -> str:
    """The sampler's Feynman-Kac correctors in words ("" for plain RLG)."""
    c = s.correctors
    if c is None:
        return ""
    when = "after every step" if c.resample == "every_step" else f"when ESS < {c.ess_threshold:g} K"
    return (f"; Feynman-Kac correctors (rlg.fkc): K = {c.particles} particles per image, resampled {when}, "
            f"{2 * c.particles} network rows per image and step")


def report(job: Job, store: Store, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tables, figures and report/index.md|html of every series in the store, each with its own protocol
    (``entry``: this invocation's meta.json entry, not yet recorded while it runs)."""
    from rlg.report.compare import load_run
    from rlg.report.report import write_report

    images, scores, protocol = load_run(store.root, current=entry)
    images = _current_picks(job, images)
    result: dict[str, Any] = {}

    def write(tmp: Path) -> list[str]:
        result.update(write_report(images, scores, tmp, protocol=protocol, grid_prompts=job.config.report.grid_prompts,
                                   grid_samples=job.config.report.grid_samples,
                                   n_resamples=job.config.report.n_resamples, reward=job.reward,
                                   reward_note=job.reward_note, run_line=what_ran(job)))
        return result["files"]

    files = _written(store, write)
    return {"files": files, "notes": result.get("notes", []), "summary": result.get("summary"), "images": images,
            "headlines": result.get("headlines", []), "scores": scores, **_index(store)}


def _current_picks(job: Job, images):
    """``images`` with this job's picking metric on its own best-of-N candidates (the report picks per run
    name and method). A candidate row records the pick of the run that made it; a later run that reuses the
    stored candidates with another ``method.best_of_n.pick`` must be reported by the metric it asked for."""
    picks = {m.label: m.pick for m in _methods(job) if getattr(m, "needs_pick", False)}
    if not picks or "pick" not in images.columns or "method" not in images.columns:
        return images
    images = images.copy()
    own = images["run_name"] == job.name if "run_name" in images.columns else True
    for label, pick in picks.items():
        images.loc[own & (images["method"] == label), "pick"] = pick
    return images


def _section(job: Job):
    """The report writer of the job's kind (rlg.harness.kinds.KINDS)."""
    from rlg.harness.kinds import KINDS
    from rlg.registry import resolve

    return resolve(KINDS.get(job.kind).report)


def measured(job: Job, store: Store, parts: dict[str, Callable[[], Any] | None], headline: str,
             extra: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The stage of a measurement kind: its tables, then its report section (``rlg.harness.kinds``) into <run>/report.

    ``parts``: the store tables the kind writes, in the order its report writer takes them, each with the function
    that measures it (a pandas DataFrame), or None where this run's settings have no such part (the writer gets
    None). stage=all measures them in order, storing each table as soon as it is made; stage=report reads back
    the newest rows of each table the settings make (``Store.last_table``) and measures nothing. Prints the report's
    ``headline`` table (``tables/<headline>.md``; the runner prints the report's path after it). Returns the
    invocation's report entry: files, rows (of the first table), ``extra(first table)``, index, index_html.
    Raises StoreError naming the fix, before any work, when stage=report finds a table missing."""
    wanted = [name for name, make in parts.items() if make is not None]
    if job.stages == ("report",):
        tables = {name: store.last_table(name) for name in wanted}
        missing = [name for name, df in tables.items() if df is None]
        if missing:
            raise StoreError(f"stage=report: {store.root} holds no {' or '.join(missing)} rows of a kind={job.kind} "
                             "run (never measured there, or another kind's run directory). Fix: run it with "
                             "stage=all first (or point name= / paths.root= at the run)")
    else:
        tables = {}
        for name in wanted:
            tables[name] = parts[name]()
            store.write_table(name, tables[name])
    args = [tables.get(name) for name in parts]
    files = _written(store, lambda tmp: _section(job)(*args, tmp))
    head = store.root / "report" / "tables" / f"{headline}.md"
    if head.is_file():  # the verdict: what a user reads at the end of a run (the whole page is at the Report: path)
        print(head.read_text())
    return {"files": files, "rows": len(args[0]), **(extra(args[0]) if extra else {}), **_index(store)}


def ground_truth(job: Job, store: Store) -> dict[str, Any]:
    """The analytic ground truth: RLG samples from the production RLGDenoiser against exact targets;
    rows into the store's ``ground_truth`` table, figures and tables into <run>/report."""
    from rlg.ground_truth import run_ground_truth

    return measured(job, store, {"ground_truth": lambda: run_ground_truth(job.settings)}, headline="ground_truth")


def kl_claim(job: Job, store: Store) -> dict[str, Any]:
    """RLG(w) from the beta model against models retrained at beta / w (rlg.kl_claim), with the analytic
    ground truth beside it; rows into the store's ``kl_claim`` / ``ground_truth`` tables, the report
    (figures, tables, index.md / index.html) into <run>/report."""
    from rlg.evaluators.base import register_stored
    from rlg.ground_truth import run_ground_truth
    from rlg.kl_claim import run_kl_claim

    s = job.settings
    # the report reads each metric's direction from rlg.metrics: its evaluators' declarations, also at stage=report
    register_stored(m.split(":")[0] for m in [*s.metrics, *s.set_metrics])
    return measured(job, store, {
        "kl_claim": lambda: run_kl_claim(s, kl_claim_grid(job), job.config.evaluators.options),
        "ground_truth": None if s.analytic is None else lambda: run_ground_truth(s.analytic)},
        headline="kl_claim_verdict")


def kl_claim_grid(job: Job):
    """The grid every arm of a KL-claim job samples (and ``rlg.kl_response`` with it): the shared prompts and
    sampler groups of ``image_grid``, with the claim's own noise seed ``kl_claim.seed``."""
    return dataclasses.replace(image_grid(job), seed=job.settings.seed)


def kl_learned(job: Job, store: Store) -> dict[str, Any]:
    """The learned-model ground truth of the KL claim (rlg.kl_learned): MLP denoisers trained and fine-tuned on
    the analytic mixture, rows into the store's ``kl_learned`` table, the report into <run>/report."""
    from rlg.kl_learned import run_learned_truth

    return measured(job, store, {"kl_learned": lambda: run_learned_truth(job.settings)}, headline="kl_learned_verdict",
                    extra=lambda df: {"seconds": df.attrs.get("seconds")})


def _index(store: Store) -> dict[str, str]:
    """The report entry's page paths (every kind writes report/index.md and index.html: rlg.report.page)."""
    return {"index": str(store.root / "report" / "index.md"), "index_html": str(store.root / "report" / "index.html")}
