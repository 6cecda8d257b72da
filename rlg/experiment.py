"""Wiring the stages of one job: generate -> evaluate -> report (+ trackers).

The work list is prompt set x samples x grid scales. All scales of a (prompt, sample) travel in the
same pipeline call (they share the initial noise), work already in the store is skipped (resume),
and under several processes each rank takes every world-th (prompt, sample) group and writes its own
part files.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlg.config import ConfigError, validate
from rlg.guidance import ScaleError, StepWindow, check_scales
from rlg.pairs import Checkpoint, LoadedPair, PairSpec, load_pair, tiny_spec
from rlg.prompts import Prompt, load_prompts
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem
from rlg.store import Store, content_key

log = logging.getLogger("rlg")
_PAIR_CACHE: dict[str, LoadedPair] = {}  # survives between jobs of a basic-launcher multirun


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
    key = json.dumps([spec.identity(), asdict(window), s.micro_batch, str(device)], sort_keys=True, default=str)
    if key not in _PAIR_CACHE:
        _PAIR_CACHE.clear()  # one pair resident at a time
        pair = load_pair(spec, window=window, micro_batch=s.micro_batch)
        pair.pipe.to(device)
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
    stored = store.stored_keys()
    todo = [[(k, it) for k, it in group if k not in stored] for group in keyed]
    todo = [g for g in todo if g]
    n_todo = sum(map(len, todo))
    total = sum(map(len, keyed))
    log.info("generate: %d images for this process, %d already stored, %d to make", total, total - n_todo, n_todo)
    if not n_todo:
        return {"images_made": 0, "images_skipped": total}
    pair = get_pair(spec, cfg, resolve_device(cfg.device))
    set_scheduler(pair.pipe, cfg.sampler)
    sampler = RLGSampler(pair, sampler_settings(cfg))
    batches, cur = [], []
    for group in todo:  # whole (prompt, sample) groups per call, so every scale shares the call
        for chunk in [group[i:i + cfg.sampler.batch_size] for i in range(0, len(group), cfg.sampler.batch_size)]:
            if cur and len(cur) + len(chunk) > cfg.sampler.batch_size:
                batches.append(cur)
                cur = []
            cur += chunk
    if cur:
        batches.append(cur)
    made = 0
    with tqdm(total=n_todo, desc="generate", unit="img") as bar:
        for batch in batches:
            results = sampler.generate([it for _, it in batch])
            rows = []
            for (key, it), res in zip(batch, results):
                rows.append({"image_key": key, "run_id": run_id, "experiment": cfg.name, "pair": spec.name,
                             "prompt_id": it.prompt_index, "prompt": it.prompt, "sample": it.sample_index,
                             "seed": it.seed, "scale": it.scale, "sampler": cfg.sampler.name,
                             "num_inference_steps": cfg.sampler.num_inference_steps,
                             "guidance_scale": cfg.sampler.guidance_scale, "height": cfg.sampler.height,
                             "width": cfg.sampler.width, "nonfinite": res.nonfinite,
                             "nonfinite_step": res.nonfinite_step,
                             "metadata": json.dumps(by_id[it.prompt_index].metadata)
                             if by_id[it.prompt_index].metadata else None})
            store.write_images(rows, [r.image for r in results])
            made += len(batch)
            bar.update(len(batch))
    return {"images_made": made, "images_skipped": total - n_todo, "pair_info": pair.info,
            "network_rows": asdict(pair.denoiser.stats)}


def evaluate(cfg, store: Store, rank: int, size: int) -> dict[str, Any]:
    from evaluators.base import Sample, get_evaluator, run_evaluator

    images = store.images()
    images = images[[int(k, 16) % size == rank for k in images.image_key]] if len(images) else images
    out = {}
    for name in cfg.evaluators.selected:
        opts = dict(OmegaConf.to_container(cfg.evaluators.options, resolve=True).get(name) or {})
        from evaluators.base import REGISTRY

        if name in REGISTRY:
            mod, cls = REGISTRY[name].split(":")
            params = inspect.signature(getattr(__import__(mod, fromlist=[cls]), cls).__init__).parameters
            for k, v in (("batch_size", cfg.evaluators.batch_size), ("device", str(resolve_device(cfg.evaluators.device)))):
                if k in params and k not in opts:
                    opts[k] = v
        ev = get_evaluator(name, **opts)
        done = store.scored(ev.name, ev.version)
        todo = images[~images.image_key.isin(done)]
        log.info("evaluate %s (%s): %d images, %d cached", name, ev.version, len(todo), len(images) - len(todo))

        def samples():
            for r in todo.itertuples():
                meta = json.loads(r.metadata) if isinstance(r.metadata, str) else None
                yield Sample(key=r.image_key, image=store.load_image(r), prompt=r.prompt, metadata=meta)

        failed = 0
        with tqdm(total=len(todo), desc=f"evaluate {name}", unit="img") as bar:
            for rows in run_evaluator(ev, samples(), batch_size=cfg.evaluators.batch_size):
                store.write_scores(asdict(r) for r in rows)
                failed += sum(1 for r in rows if r.error)
                bar.update(len({r.image_key for r in rows}))
        out[name] = {"version": ev.version, "scored": len(todo), "cached": len(images) - len(todo), "failed_rows": failed}
    return out


def results_frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The store's tables in the report layer's contract (absolute image paths, GenEval tags)."""
    images, scores = store.images(), store.scores()
    images = images.assign(image_path=[str(store.root / p) for p in images.image_path])
    tags = [json.loads(m).get("tag") if isinstance(m, str) else None for m in images.metadata]
    if any(tags):
        images = images.assign(tag=tags)
    return images, scores


def per_scale_summary(images: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    ok = images[~images.nonfinite.astype(bool)][["image_key", "scale"]]
    df = scores.merge(ok, on="image_key")
    if df.empty:
        return pd.DataFrame({"scale": sorted(images.scale.unique())})
    return df.pivot_table(index="scale", columns="metric", values="value", aggfunc="mean").reset_index()


def report(cfg, store: Store, spec_info: dict[str, Any]) -> dict[str, Any]:
    from experiments.report import write_report

    images, scores = results_frames(store)
    protocol = {"steps": cfg.sampler.num_inference_steps, "cfg": cfg.sampler.guidance_scale,
                "resolution": cfg.sampler.height, "pairs": {cfg.pair.name: spec_info}}
    result = write_report(images, scores, store.root / "report", protocol=protocol,
                          grid_prompts=cfg.report.grid_prompts, n_resamples=cfg.report.n_resamples)
    return {"files": [str(f) for f in result["files"]], "notes": result.get("notes", [])}


# ---------------------------------------------------------------------------------------------
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
    cfg = validate(cfg)
    scales = grid_scales(cfg)
    run_dir = Path(run_dir) if run_dir else Path(cfg.paths.root) / cfg.name
    rank, size = world()
    if size < 0:
        rank, size = cfg.shard.index, cfg.shard.count
    if not 0 <= rank < size:
        raise ConfigError(f"shard.index={rank} is outside 0..shard.count-1 ({size})")
    store = Store(run_dir, writer=f"r{rank}-{uuid.uuid4().hex[:8]}")
    run_dir.mkdir(parents=True, exist_ok=True)
    store.remove_stale_temporaries()
    if not os.access(run_dir, os.W_OK):
        raise PermissionError(f"the run directory {run_dir} is not writable; set paths.root to a writable place")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_id = uuid.uuid4().hex[:12]
    entry: dict[str, Any] = {"run_id": run_id, "rank": rank, "world": size, "stage": cfg.stage,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             **provenance(cfg, resolved, overrides or []), "timings": {}}
    prompts, pinfo = load_prompts(cfg.prompts, cfg.paths.cache)
    entry["prompts"] = pinfo
    stages = ("generate", "evaluate", "report") if cfg.stage == "all" else (cfg.stage,)
    spec = pair_spec(cfg)
    spec_info = {"base": spec.base.id, "rl": spec.rl.id}
    try:
        if "generate" in stages:
            t = time.time()
            entry["generate"] = generate(cfg, store, prompts, scales, rank, size, run_id)
            entry["timings"]["generate_s"] = round(time.time() - t, 3)
        barrier()
        if "evaluate" in stages:
            t = time.time()
            entry["evaluate"] = evaluate(cfg, store, rank, size)
            entry["timings"]["evaluate_s"] = round(time.time() - t, 3)
        barrier()
        if "report" in stages and rank == 0:
            t = time.time()
            entry["report"] = report(cfg, store, spec_info)
            entry["timings"]["report_s"] = round(time.time() - t, 3)
            images, scores = results_frames(store)
            summary = per_scale_summary(images, scores)
            for _, row in summary.iterrows():
                vals = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "scale" and pd.notna(v))
                n = int((images.scale == row.scale).sum())
                print(f"w={row.scale:g}: n={n} {vals}")
            figs = [Path(f) for f in entry["report"]["files"] if "/figures/" in f]
            wdir = log_tracker(cfg, resolved, store, summary, images, scores, figs, job_name or cfg.name, group)
            entry["wandb_dir"] = str(wdir) if wdir else None
    finally:
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        store.append_meta(entry)
    return entry


def log_tracker(cfg, resolved, store, summary, images, scores, figures, job_name, group):
    from rlg.tracking import log_to_wandb

    rel = images.assign(image_path=[os.path.relpath(p, store.root) for p in images.image_path])
    return log_to_wandb(cfg, resolved, store.root, summary, rel, scores, figures, job_name, group)
