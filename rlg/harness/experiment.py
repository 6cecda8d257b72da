"""Wiring the stages of one job: generate -> evaluate -> report (+ trackers).

The work list is prompt set x samples x grid scales. All scales of a (prompt, sample) travel in the
same pipeline call (they share the initial noise), work already in the store is skipped (resume),
and under several processes each rank takes every world-th (prompt, sample) group and writes its own
part files.

Everything a run can refuse is checked before any work starts (config, grid, prompts, evaluator
needs, run lock, writable directory, free space), so a bad input costs seconds, not GPU hours; the
errors in USER_ERRORS name the problem and the fix and make run.py exit with code 2.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlg.harness.config import ConfigError, check_complete, validate
from rlg.guidance import ScaleError, StepWindow, check_scales
from rlg.pairs import Checkpoint, LoadedPair, PairError, PairSpec, load_pair, place, tiny_spec
from rlg.harness.prompts import Prompt, PromptError, load_prompts
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem
from rlg.harness.store import Store, StoreError, content_key, write_error

log = logging.getLogger("rlg")
_PAIR_CACHE: dict[str, LoadedPair] = {}  # survives between jobs of a basic-launcher multirun
# Errors caused by the user's input or environment: run.py prints the message (which names the fix)
# without a traceback and exits with code 2.
USER_ERRORS = (ConfigError, ScaleError, PairError, PromptError, StoreError, PermissionError)


# ---------------------------------------------------------------------------------------------
def grid_scales(cfg) -> list[float]:
    scales = check_scales(list(cfg.grid.scales))
    if not scales:
        raise ScaleError("grid.scales is empty; give at least one scale, e.g. grid.scales=[0,1,2]")
    dup = sorted({w for w in scales if scales.count(w) > 1})
    if dup:
        raise ScaleError(f"grid.scales has duplicates {dup}; each scale once")
    if any(w < 0 for w in scales):
        log.warning("negative RLG scales %s move away from the RL model (allowed, but unusual)", [w for w in scales if w < 0])
    return scales


def pair_spec(cfg) -> PairSpec:
    p = cfg.pair
    if p.tiny:
        spec = tiny_spec(p.tiny, p.rl_kind, root=cfg.paths.fixtures)
        spec.name = p.name
        return spec
    if p.base is None or p.rl is None:
        raise ConfigError(f"pair {p.name!r} needs pair.base.id and pair.rl.id (or pair.tiny=<family>)")
    ck = lambda c: Checkpoint(**OmegaConf.to_container(c)) if c is not None else None  # noqa: E731
    return PairSpec(name=p.name, base=ck(p.base), rl=ck(p.rl), rl_kind=p.rl_kind, pipeline_class=p.pipeline_class,
                    vae=ck(p.vae), dtype=p.dtype, allow_pickle=p.allow_pickle, offline=p.offline)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def get_pair(spec: PairSpec, cfg, device: torch.device) -> LoadedPair:
    s = cfg.sampler
    window = StepWindow(start=s.window.start, stop=s.window.stop, outside=s.window.outside)
    key = json.dumps([spec.identity(), asdict(window), s.micro_batch, str(device), s.offload, s.compile, s.vae_tiling],
                     sort_keys=True, default=str)
    if key not in _PAIR_CACHE:
        _PAIR_CACHE.clear()  # one pair resident at a time
        try:
            pair = load_pair(spec, window=window, micro_batch=s.micro_batch)
        except PairError:
            raise
        except Exception as exc:  # a truncated safetensors file, a refused pickle, ...: a bad checkpoint
            log.debug("loading pair %s failed", spec.name, exc_info=True)
            raise PairError(f"cannot load the pair {spec.name!r} (base {spec.base.describe()}, RL "
                            f"{spec.rl.describe()}): {type(exc).__name__}: {exc}\nFix: check that the checkpoint files are complete (download "
                            "them again) and are the kind pair.rl_kind says") from exc
        place(pair, device, offload=s.offload, compile=s.compile, vae_tiling=s.vae_tiling)
        _PAIR_CACHE[key] = pair
    return _PAIR_CACHE[key]


def set_scheduler(pipe, s) -> None:
    import diffusers

    if s.scheduler == "default":
        return
    config = dict(pipe.scheduler.config)
    if s.scheduler == "ddim":
        pipe.scheduler = diffusers.DDIMScheduler.from_config(config)
    elif s.scheduler == "euler_ode":
        extra = {"shift": s.shift} if s.shift is not None else {}
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config, **extra)
    elif s.scheduler == "flow_grpo_sde":
        from rlg.schedulers import FlowGRPOSDEScheduler

        extra = {"shift": s.shift} if s.shift is not None else {}
        pipe.scheduler = FlowGRPOSDEScheduler.from_config(config, noise_level=s.noise_level, **extra)
    else:
        raise ConfigError(f"sampler.scheduler={s.scheduler!r}; use default, ddim, euler_ode or flow_grpo_sde")


def sampler_settings(cfg) -> SamplerSettings:
    from PIL import Image

    s = cfg.sampler
    extra = OmegaConf.to_container(s.extra, resolve=True)
    for k in ("image", "mask_image"):  # inpainting inputs are given as paths
        if isinstance(extra.get(k), str):
            path = Path(extra[k]).expanduser()
            if not path.is_file():
                raise ConfigError(f"sampler.extra.{k}={path} does not exist")
            extra[k] = Image.open(path).convert("L" if k == "mask_image" else "RGB")
    return SamplerSettings(num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                           height=s.height, width=s.width, negative_prompt=s.negative_prompt, eta=s.eta,
                           guidance_rescale=s.guidance_rescale, extra=extra)


def image_identity(cfg, spec: PairSpec) -> dict[str, Any]:
    """Everything besides (prompt, sample, seed, scale) that determines an image."""
    s = OmegaConf.to_container(cfg.sampler, resolve=True)
    s.pop("name")
    s.pop("batch_size")  # batch layout does not change an image (micro_batch does, so it stays)
    return {"pair": spec.identity(), "sampler": s, "device": str(resolve_device(cfg.device).type)}


# ---------------------------------------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate launch, else from the shard keys."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    return -1, -1


def barrier() -> None:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def work_groups(prompts: list[Prompt], samples: int, scales: list[float], seed: int) -> list[list[WorkItem]]:
    return [[WorkItem(p.id, p.text, s, seed, w) for w in scales] for p in prompts for s in range(samples)]


def prompt_truncation(pipe, texts: list[str], extra: dict[str, Any]) -> dict[str, bool]:
    """Whether each prompt is longer than a text encoder of ``pipe`` reads (the pipeline then cuts it).

    CLIP tokenizers are cut at their ``model_max_length`` (77); T5 ones (SD3, FLUX) at the pipeline's
    ``max_sequence_length`` (its default, or sampler.extra.max_sequence_length)."""
    params = inspect.signature(pipe.__call__).parameters
    msl = extra.get("max_sequence_length")
    if msl is None and "max_sequence_length" in params:
        msl = params["max_sequence_length"].default
    tokenizers = [c for n, c in pipe.components.items() if n.startswith("tokenizer") and c is not None]
    out = {}
    for text in set(texts):
        cut = False
        for tok in tokenizers:
            limit = tok.model_max_length
            if "CLIP" not in type(tok).__name__ and isinstance(msl, int):
                limit = msl
            if not limit or limit > 1_000_000:  # "no limit" sentinel of transformers
                continue
            if len(tok(text, truncation=False, verbose=False).input_ids) > limit:
                cut = True
        out[text] = cut
    return out


def evaluator_class(name: str):
    from rlg.evaluators.base import REGISTRY

    mod, cls = REGISTRY[name].split(":")
    return getattr(__import__(mod, fromlist=[cls]), cls)


def check_prompts_for_evaluators(cfg, prompts: list[Prompt]) -> None:
    """Refuse, before anything is generated, prompts a selected evaluator cannot score (an OCR prompt
    without a quoted target, a GenEval prompt without valid metadata). Images already stored are
    scored anyway, with the failure recorded per image."""
    for name in cfg.evaluators.selected:
        check = getattr(evaluator_class(name), "check_prompts", None)
        if check is not None:
            try:
                check([p.text for p in prompts])
            except ValueError as exc:
                raise PromptError(f"evaluator {name!r} cannot score this prompt set ({cfg.prompts.name}): {exc}\n"
                                  f"Fix: correct those prompts, or drop {name} from evaluators.selected") from exc
    if "geneval" in cfg.evaluators.selected:
        from rlg.evaluators.geneval.metadata import MetadataError, validate_row

        bad = []
        for p in prompts:
            try:
                validate_row(p.metadata, f"prompt #{p.id}")
            except MetadataError as exc:
                bad.append(str(exc))
        if bad:
            raise PromptError(f"evaluator 'geneval' needs a GenEval metadata row with every prompt; {len(bad)} of "
                              f"{len(prompts)} have none or an invalid one, e.g. {bad[0]}\nFix: use prompts=geneval "
                              "(or a .jsonl file in its format with prompts.source=geneval), or drop geneval from "
                              "evaluators.selected")


def generate(cfg, store: Store, prompts: list[Prompt], scales: list[float], rank: int, size: int,
             run_id: str) -> dict[str, Any]:
    spec = pair_spec(cfg)
    ident = image_identity(cfg, spec)
    by_id = {p.id: p for p in prompts}
    keyed = []
    for g, group in enumerate(work_groups(prompts, cfg.prompts.samples_per_prompt, scales, cfg.seed)):
        if g % size != rank:
            continue
        keyed.append([(content_key({**ident, "prompt_id": it.prompt_index, "prompt": it.prompt,
                                    "sample": it.sample_index, "seed": it.seed, "scale": it.scale}), it)
                      for it in group])
    stored = store.stored_keys(keys=[k for group in keyed for k, _ in group])  # this rank's keys only
    todo = [[(k, it) for k, it in group if k not in stored] for group in keyed]
    todo = [g for g in todo if g]
    n_todo = sum(map(len, todo))
    total = sum(map(len, keyed))
    log.info("generate: %d images for this process, %d already stored, %d to make", total, total - n_todo, n_todo)
    if not n_todo:
        return {"images_made": 0, "images_skipped": total}
    # prompts of images still to make must suit every selected evaluator: refuse them now, not image by image
    check_prompts_for_evaluators(cfg, [by_id[i] for i in sorted({it.prompt_index for g in todo for _, it in g})])
    pair = get_pair(spec, cfg, resolve_device(cfg.device))
    set_scheduler(pair.pipe, cfg.sampler)
    settings = sampler_settings(cfg)
    sampler = RLGSampler(pair, settings)  # refuses sampler.extra keys the pipeline does not accept
    truncated = prompt_truncation(pair.pipe, [it.prompt for g in todo for _, it in g], settings.extra)
    n_cut = sum(truncated.values())
    if n_cut:
        log.warning("%d prompts are longer than the text encoder reads and are truncated by the pipeline "
                    "(their image rows have truncated=True)", n_cut)
    batches, cur = [], []
    for group in todo:  # whole (prompt, sample) groups per call, so every scale shares the call
        for chunk in [group[i:i + cfg.sampler.batch_size] for i in range(0, len(group), cfg.sampler.batch_size)]:
            if cur and len(cur) + len(chunk) > cfg.sampler.batch_size:
                batches.append(cur)
                cur = []
            cur += chunk
    if cur:
        batches.append(cur)
    made = nonfinite = 0
    # PNG encoding and writing run in one background thread while the next batch is sampled; at most
    # one batch waits, and a write error surfaces at the next batch (rows are still written after PNGs)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlg-store")
    pending = None
    with tqdm(total=n_todo, desc="generate", unit="img") as bar, writer:
        for batch in batches:
            store.check_free_space()  # before spending compute on images that could not be stored
            results = sampler.generate([it for _, it in batch])
            rows = []
            for (key, it), res in zip(batch, results):
                rows.append({"image_key": key, "run_id": run_id, "experiment": cfg.name, "pair": spec.name,
                             "prompt_id": it.prompt_index, "prompt": it.prompt, "sample": it.sample_index,
                             "seed": it.seed, "scale": it.scale, "sampler": cfg.sampler.name,
                             "num_inference_steps": cfg.sampler.num_inference_steps,
                             "guidance_scale": cfg.sampler.guidance_scale, "height": cfg.sampler.height,
                             "width": cfg.sampler.width, "nonfinite": res.nonfinite,
                             "nonfinite_step": res.nonfinite_step, "truncated": truncated[it.prompt],
                             "metadata": json.dumps(by_id[it.prompt_index].metadata)
                             if by_id[it.prompt_index].metadata else None})
                if res.nonfinite:
                    nonfinite += 1
                    log.warning("image %s (prompt %d, sample %d, w=%g) has NaN/inf values from step %s on; it is "
                                "stored, flagged nonfinite and left out of every mean", key[:12], it.prompt_index,
                                it.sample_index, it.scale, res.nonfinite_step)
            if pending is not None:
                pending.result()
            pending = writer.submit(store.write_images, rows, [r.image for r in results])
            made += len(batch)
            bar.update(len(batch))
        if pending is not None:
            pending.result()
    return {"images_made": made, "images_skipped": total - n_todo, "nonfinite": nonfinite, "truncated_prompts": n_cut,
            "pair_info": pair.info, "network_rows": asdict(pair.denoiser.stats)}


def evaluate(cfg, store: Store, rank: int, size: int) -> dict[str, Any]:
    from rlg.evaluators.base import Sample, get_evaluator, run_evaluator

    mine = [k for k in store.images().image_key if int(k, 16) % size == rank]
    images = store.images(verify=True, keys=mine)
    if len(images) < len(mine):
        log.warning("evaluate: %d of this process's %d images are missing or corrupt (see quarantine/); they are "
                    "not scored. Run stage=generate (or all) to make them again", len(mine) - len(images), len(mine))
    sha = dict(zip(images.image_key, images.image_sha256))
    out = {}
    for name in cfg.evaluators.selected:
        opts = dict(OmegaConf.to_container(cfg.evaluators.options, resolve=True).get(name) or {})
        params = inspect.signature(evaluator_class(name).__init__).parameters
        for k, v in (("batch_size", cfg.evaluators.batch_size), ("device", str(resolve_device(cfg.evaluators.device)))):
            if k in params and k not in opts:
                opts[k] = v
        ev = get_evaluator(name, **opts)
        done = store.scored(ev.name, ev.version)
        todo = images[~images.image_key.isin(done)]
        log.info("evaluate %s (%s): %d images, %d cached", name, ev.version, len(todo), len(images) - len(todo))
        store.check_free_space()

        def samples():
            for r in todo.itertuples():
                meta = json.loads(r.metadata) if isinstance(r.metadata, str) else None
                yield Sample(key=r.image_key, image=store.load_image(r), prompt=r.prompt, metadata=meta)

        failed = 0
        with tqdm(total=len(todo), desc=f"evaluate {name}", unit="img") as bar:
            for rows in run_evaluator(ev, samples(), batch_size=cfg.evaluators.batch_size):
                store.write_scores({**asdict(r), "image_sha256": sha[r.image_key]} for r in rows)
                failed += sum(1 for r in rows if r.error)
                bar.update(len({r.image_key for r in rows}))
        if failed:
            log.warning("evaluate %s: %d score rows failed (value NaN, reason in the error column); the other "
                        "images are scored", name, failed)
        out[name] = {"version": ev.version, "scored": len(todo), "cached": len(images) - len(todo), "failed_rows": failed}
    return out


def results_frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The store's tables in the report layer's contract (absolute image paths, GenEval tags); only
    images whose PNG is present and intact."""
    images, scores = store.images(verify=True), store.scores()
    images = images.assign(image_path=[str(store.image_path(k)) for k in images.image_key])
    scores = scores[scores.image_key.isin(set(images.image_key))].reset_index(drop=True)
    tags = [json.loads(m).get("tag") if isinstance(m, str) else None for m in images.metadata]
    if any(tags):
        images = images.assign(tag=tags)
    return images, scores


def per_scale_summary(images: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    ok = images[~images.nonfinite.fillna(False).astype(bool)][["image_key", "scale"]]
    df = scores.merge(ok, on="image_key")
    if "error" in df.columns:
        df = df[df.error.isna()]
    if df.empty:
        return pd.DataFrame({"scale": sorted(images.scale.unique())})
    out = df.pivot_table(index="scale", columns="metric", values="value", aggfunc="mean").reset_index()
    return pd.DataFrame({"scale": sorted(images.scale.unique())}).merge(out, on="scale", how="left")


def report(cfg, store: Store, spec_info: dict[str, Any], images: pd.DataFrame, scores: pd.DataFrame) -> dict[str, Any]:
    """Tables and figures into a temporary directory, then swapped in for <run>/report: a killed
    report leaves the previous one (or none), never a half-written one."""
    from rlg.report.report import write_report

    protocol = {"steps": cfg.sampler.num_inference_steps, "cfg": cfg.sampler.guidance_scale,
                "resolution": cfg.sampler.height, "pairs": {cfg.pair.name: spec_info}}
    final = store.root / "report"
    tmp = store.temp_dir("report")
    try:
        result = write_report(images, scores, tmp, protocol=protocol, grid_prompts=cfg.report.grid_prompts,
                              n_resamples=cfg.report.n_resamples)
        store.swap_dir(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # disk full or read-only while writing figures/tables
            raise write_error(final, exc) from exc
        raise
    files = [final / Path(f).relative_to(tmp) for f in result["files"]]
    return {"files": [str(f) for f in files], "notes": result.get("notes", [])}


# ---------------------------------------------------------------------------------------------
SECRET_NAME = re.compile(r"(^|_)(api_?key|access_?key|secret(_access)?_?key|token|secret|passw(or)?d|credentials?)$",
                         re.IGNORECASE)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``obj`` with values of secret-looking keys, and any secret from the environment
    (WANDB_API_KEY, HF_TOKEN, ...), replaced by '<redacted>'."""
    if secrets is None:
        secrets = [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8]
    if isinstance(obj, dict):
        return {k: "<redacted>" if isinstance(k, str) and SECRET_NAME.search(k) and v not in (None, "")
                else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "<redacted>")
    return obj


def provenance(cfg, resolved: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return None

    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "diffusers", "transformers", "peft", "accelerate", "open_clip_torch", "easyocr", "numpy",
                "pillow", "pandas", "hydra-core", "wandb"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    dev = resolve_device(cfg.device)
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "versions": versions, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
            "torch_threads": torch.get_num_threads(),  # CPU reductions, hence image bits, depend on it
            "config": resolved, "overrides": overrides, "seed": cfg.seed}


def run(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None,
        job_name: str | None = None, group: str | None = None) -> dict[str, Any]:
    # 1. everything that can be refused is checked before the run directory is touched
    cfg = validate(cfg)
    check_complete(cfg)
    scales = grid_scales(cfg)
    run_dir = Path(run_dir) if run_dir else Path(cfg.paths.root) / cfg.name
    rank, size = world()
    if size < 0:
        rank, size = cfg.shard.index, cfg.shard.count
    if not 0 <= rank < size:
        raise ConfigError(f"shard.index={rank} is outside 0..shard.count-1 ({size})")
    if cfg.pair.analytic is not None:  # closed-form pair: samples and exact targets, no images
        return run_ground_truth_job(cfg, run_dir, scales, rank, size, overrides)
    prompts, pinfo = load_prompts(cfg.prompts, cfg.paths.cache)
    stages = ("generate", "evaluate", "report") if cfg.stage == "all" else (cfg.stage,)
    spec = pair_spec(cfg)
    spec_info = {"base": spec.base.id, "rl": spec.rl.id}
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))

    # 2. the run directory: locked for this launch (or shared by the ranks of one job), writable, room left
    store = Store(run_dir, writer=f"r{rank}-{uuid.uuid4().hex[:8]}", min_free_gb=cfg.paths.min_free_gb)
    with store.lock(rank, size):
        store.check_writable()
        store.remove_stale_temporaries(exclusive=size == 1)
        run_id = store.run_id()  # one id per run directory: a resumed run stays one series in the report
        entry: dict[str, Any] = {"run_id": run_id, "invocation": uuid.uuid4().hex[:12], "rank": rank, "world": size,
                                 "stage": cfg.stage, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 **provenance(cfg, resolved, redact(list(overrides or []))), "timings": {},
                                 "prompts": pinfo}
        failed = False
        try:
            _stages(cfg, store, entry, stages, prompts, scales, rank, size, run_id, spec_info, resolved, job_name,
                    group)
        except BaseException as exc:
            failed = True
            entry["error"] = redact(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            entry["quarantined"] = len(store.quarantined())
            try:
                store.append_meta(entry)
            except StoreError as exc:
                if not failed:
                    raise
                log.error("could not record this invocation in meta.json: %s", exc)
    return entry


def _stages(cfg, store, entry, stages, prompts, scales, rank, size, run_id, spec_info, resolved, job_name, group):
    if "generate" in stages:
        t = time.time()
        entry["generate"] = generate(cfg, store, prompts, scales, rank, size, run_id)
        entry["timings"]["generate_s"] = round(time.time() - t, 3)
    barrier()
    if cfg.low_memory and _PAIR_CACHE:  # the generator leaves before the evaluators arrive
        _PAIR_CACHE.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if "evaluate" in stages:
        t = time.time()
        entry["evaluate"] = evaluate(cfg, store, rank, size)
        entry["timings"]["evaluate_s"] = round(time.time() - t, 3)
    barrier()
    if "report" in stages and rank == 0:
        t = time.time()
        images, scores = results_frames(store)
        entry["report"] = report(cfg, store, spec_info, images, scores)
        entry["timings"]["report_s"] = round(time.time() - t, 3)
        summary = per_scale_summary(images, scores)
        for _, row in summary.iterrows():
            vals = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "scale" and pd.notna(v))
            at = images.scale == row.scale
            bad = int(images.nonfinite[at].fillna(False).astype(bool).sum())
            excluded = f" ({bad} nonfinite, excluded)" if bad else ""
            print(f"w={row.scale:g}: n={int(at.sum()) - bad}{excluded} {vals}".rstrip())
        figs = [Path(f) for f in entry["report"]["files"] if "/figures/" in f]
        wdir = log_tracker(cfg, resolved, store, summary, images, scores, figs, job_name or cfg.name, group)
        entry["wandb_dir"] = str(wdir) if wdir else None


def run_ground_truth_job(cfg, run_dir: Path, scales: list[float], rank: int, size: int,
                         overrides: list[str] | None) -> dict[str, Any]:
    """The analytic ground truth (rlg.ground_truth) as a run: the RLG samples come from the same
    RLGDenoiser the image pipelines use; rows go to the store, figures and tables to report/."""
    from rlg.ground_truth import GroundTruthConfig, ground_truth_tables, run_ground_truth, write_ground_truth_figures

    if size > 1:
        raise ConfigError("the analytic ground truth runs in one process; launch it without torchrun/accelerate")
    a, g = cfg.pair.analytic, cfg.ground_truth
    gt = GroundTruthConfig(pair=a.preset, d=a.d, beta=a.beta, scales=scales, samplers=list(g.samplers),
                           num_inference_steps=g.num_inference_steps, n_per_batch=g.n_per_batch,
                           n_batches=g.n_batches, noise_level=g.noise_level, flow_shift=g.flow_shift, init=g.init,
                           rl_control=g.rl_control, seed=cfg.seed)

    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    store = Store(run_dir, writer=f"r{rank}-{uuid.uuid4().hex[:8]}", min_free_gb=cfg.paths.min_free_gb)
    with store.lock(rank, size):
        store.check_writable()
        entry: dict[str, Any] = {"run_id": store.run_id(), "invocation": uuid.uuid4().hex[:12], "stage": "ground_truth",
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 **provenance(cfg, resolved, redact(list(overrides or []))), "timings": {}}
        t = time.time()
        df = run_ground_truth(gt)  # RLG samples from the production RLGDenoiser
        entry["timings"]["ground_truth_s"] = round(time.time() - t, 3)
        store.write_table("ground_truth", df)
        final, tmp = store.root / "report", store.temp_dir("report")
        files = write_ground_truth_figures(df, tmp / "figures")
        (tmp / "tables").mkdir(parents=True, exist_ok=True)
        for fmt, text in ground_truth_tables(df).items():
            path = tmp / "tables" / f"ground_truth.{'md' if fmt == 'markdown' else 'tex'}"
            path.write_text(text)
            files.append(path)
        store.swap_dir(tmp, final)
        entry["report"] = {"files": [str(final / Path(f).relative_to(tmp)) for f in files]}
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        store.append_meta(entry)
    print(ground_truth_tables(df)["markdown"])
    return entry


def log_tracker(cfg, resolved, store, summary, images, scores, figures, job_name, group):
    from rlg.harness.tracking import log_to_wandb

    rel = images.assign(image_path=[os.path.relpath(p, store.root) for p in images.image_path])
    return log_to_wandb(cfg, resolved, store.root, summary, rel, scores, figures, job_name, group)
