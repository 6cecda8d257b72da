"""Does RLG at scale w behave like a model retrained at KL coefficient beta / w? The trained-model check.

The paper's claim (FACTS.md §1): if the RL model is the KL-regularised optimum for coefficient beta, RLG at
scale w targets the optimum for beta / w. The analytic ground truth (``rlg.ground_truth``) measures how
exactly guided sampling realises that target when the optimum is known in closed form. Here the optimum
is not known; what is measured is the practical question: does RLG(w) from the beta model sample like a
model actually fine-tuned from the same base at beta / w, everything else equal?

Arms (``run_kl_claim``), all through the project's production path (``rlg.pairs.load_pair`` ->
``RLGDenoiser`` in the stock pipeline, ``rlg.sampling.RLGSampler``), with the same prompts, the same
sampler and steps, and the same per-image noise (``rlg.sampling.noise_seed(seed, prompt, sample)``: image
i of every arm starts from the same latents and sees the same DDIM step noise; images do not depend on
the batch they were made in):

* ``rlg`` at each w in ``scales``: base + the beta model trained with ``source_seed`` (``paired``: with each of
  the ``floor_seeds``, so that RLG(w) from seed s is compared with the beta / w model of seed s: the trainer draws
  the same prompts and noise for one seed at every coefficient, and what a seed does cancels in the difference);
* ``retrained`` at each effective coefficient b = beta / w and each seed in ``floor_seeds``: base + the
  model fine-tuned at b, sampled at w = 1 (the RL model alone: RLGDenoiser runs only it at w = 1).
  The source seed is not among the floor seeds, so RLG(1) is compared with other seeds of the beta model.

Rows (a DataFrame), per w (with b = beta / w), and ``kind="training"`` rows (``training_rows``: each model's
logged training curve):

* ``kind="metric"``: per arm (``arm`` = "rlg" | "retrained", ``model_seed``) and per-image metric
  (e.g. ``digit_prob``, ``jpeg_incompressibility``): mean, its standard error and a 95% normal interval
  over images, for every RLG source seed and every floor seed; for ``rlg`` rows also ``diff`` = mean(RLG) -
  mean(retrained, first floor seed; ``paired``: the same training seed), paired
  per image, with its paired standard error ``diff_stderr`` and ``diff_floor`` = the same paired
  difference between the two retrained seeds (how far two retrainings at b differ).
  Set metrics (``digit_fd``): the value on the arm's whole set, se from ``n_boot`` bootstrap resamples of
  images, interval value ± 1.96 se (a percentile interval of a biased Fréchet distance can exclude the value).
* ``kind="distance"``: ``distance`` (energy distance or MMD^2, ``rlg.analytic_metrics``) on the
  classifier's features or on pixels between RLG(w) and retrained(b, seed A), ``value`` ± ``stderr``
  over ``n_batches`` disjoint batches of images; ``floor`` ± ``floor_stderr`` = the same distance between
  retrained(b, seed B) and retrained(b, seed A) on the same batches (two retrainings differ by training
  noise: the smallest gap a stand-in for retraining can be held to). Both comparisons share the per-image
  noise, so neither is inflated by sampling noise the other lacks; because image i of two arms shares its
  noise, the distances' cross terms skip the i = j pairs (``paired=True`` in ``rlg.analytic_metrics``).
  ``gap = value - floor`` and ``z = gap / sqrt(stderr^2 + floor_stderr^2)`` (image-batch noise only; the
  report's tests over training seeds are in ``rlg.report.kl_claim.kl_claim_verdicts``).

What this does not separate: the sampler's own error is common to every arm (same sampler, steps and
noise), so the comparison is between two finite-step samplers of two fields, as a user would run them;
training noise enters through the floor.

Models live under ``<weights_dir>/kl_<task>/beta<b>_seed<s>/`` (full weights in diffusers layout,
``unet/`` or a diffusers/PEFT LoRA) with ``training_config.json``. ``train_missing=True`` trains absent
ones with ``trainer`` = "module:function", called as ``function(beta=b, seed=s, steps=steps,
out_dir=path)`` (the zoo's trainer interface), stores them (float16 full UNets) and records them in the
manifest (``ship_models``): ``rlg-bench experiment=kl_claim_digits_ddpo kl_claim.train_missing=true`` is the
one retraining command.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from rlg.analytic_metrics import batched, energy_distance, median_bandwidth, mmd2
from rlg.files import sha256_file
from rlg.kind_spec import KLClaimSettings
from rlg.kl_stats import mean_se, normal_interval
from rlg.model_ids import resolve_zoo_id
from rlg.registry import resolve

__all__ = ["KLClaimSettings", "model_dir", "effective_betas", "rlg_seeds", "required_models", "ensure_models",
           "run_kl_claim", "ship_models"]

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "zoo" / "weights"


def effective_betas(settings: KLClaimSettings) -> dict[float, float]:
    """w -> beta / w."""
    return {float(w): settings.beta / float(w) for w in settings.scales}


def _weights_dir(settings: KLClaimSettings) -> Path:
    return Path(settings.weights_dir) if settings.weights_dir else DEFAULT_WEIGHTS_DIR


def model_dir(settings: KLClaimSettings, beta: float, seed: int) -> Path:
    """``<weights_dir>/kl_<task>/beta<b>_seed<s>`` (b with 6 significant digits)."""
    return _weights_dir(settings) / f"kl_{settings.task}" / f"beta{beta:.6g}_seed{seed}"


def _base_digest(settings: KLClaimSettings) -> str | None:
    """sha256 of the base UNet's weights (so a model can be checked against the base it was tuned from)."""
    f = Path(resolve_zoo_id(settings.base)) / "unet" / "diffusion_pytorch_model.safetensors"
    return sha256_file(f) if f.exists() else None


def rlg_seeds(settings: KLClaimSettings) -> list[int]:
    """The training seeds of the beta models RLG starts from: every floor seed when ``paired``, else the source."""
    return list(settings.floor_seeds) if settings.paired else [settings.source_seed]


def required_models(settings: KLClaimSettings) -> list[tuple[float, int]]:
    """(beta, seed) of every model the measurement needs: the beta models RLG starts from (``rlg_seeds``), and the
    floor seeds at each beta / w."""
    need = [(settings.beta, s) for s in rlg_seeds(settings)]
    for b in effective_betas(settings).values():
        need += [(b, s) for s in settings.floor_seeds]
    return list(dict.fromkeys(need))


def ensure_models(settings: KLClaimSettings, models: list[tuple[float, int]] | None = None
                  ) -> dict[tuple[float, int], Path]:
    """Paths of the ``models`` ((beta, seed) pairs; default ``required_models``); trains the missing ones, in that
    order, when ``train_missing`` (else FileNotFoundError naming them and the fix). Resumable: a model counts as
    finished once its ``training_config.json`` exists (written last, after the weights), so the same call after an
    interruption skips the finished ones and retrains the one cut short. Writes ``training_config.json`` (the
    base UNet's sha256, the wall seconds, the load average before and after, ``rlg.zoo.common.environment``)
    beside each model it trains and records it in the manifest as soon as it is trained (``ship_models``); raises
    ValueError when an existing model was tuned from another base than ``settings.base``."""
    import os

    from rlg.zoo.common import environment

    models = required_models(settings) if models is None else list(dict.fromkeys(models))
    paths, missing = {}, []
    for b, s in models:
        p = model_dir(settings, b, s)
        paths[(b, s)] = p
        if not (p / "training_config.json").exists():
            missing.append((b, s))
    base_digest = _base_digest(settings)
    for b, s in models:
        cfg_file = paths[(b, s)] / "training_config.json"
        if (b, s) in missing or base_digest is None:
            continue
        tuned_from = json.loads(cfg_file.read_text()).get("base_unet_sha256")
        if tuned_from and tuned_from != base_digest:
            raise ValueError(f"{paths[(b, s)]} was fine-tuned from a base UNet with sha256 {tuned_from[:12]}, but "
                             f"{settings.base} has {base_digest[:12]}; point base at the base it was tuned from or "
                             "retrain (delete the directory, train_missing=true)")
    if missing and not settings.train_missing:
        raise FileNotFoundError(
            f"KL-claim models missing under {_weights_dir(settings) / f'kl_{settings.task}'}: "
            f"{[model_dir(settings, b, s).name for b, s in missing]}; train them with train_missing=true "
            f"(trainer {settings.trainer or '<unset>'}) or point weights_dir at the shipped ones")
    if missing:
        train = resolve(settings.trainer)
        for b, s in missing:
            p = paths[(b, s)]
            p.mkdir(parents=True, exist_ok=True)
            t0, load0 = time.time(), os.getloadavg()
            kw: dict[str, Any] = dict(settings.trainer_kwargs, beta=b, seed=s, out_dir=p)
            if settings.train_steps:
                kw["steps"] = settings.train_steps
            info = train(**kw)
            config = dict(trainer=settings.trainer, trainer_kwargs=settings.trainer_kwargs, beta=b, seed=s,
                          steps=settings.train_steps or None, base=settings.base,
                          base_unet_sha256=_base_digest(settings), task=settings.task,
                          train_seconds=round(time.time() - t0, 1),
                          load_average_1min=[round(load0[0], 2), round(os.getloadavg()[0], 2)],
                          environment=environment())
            if isinstance(info, dict):
                config["trainer_info"] = {k: v for k, v in info.items() if isinstance(v, (int, float, str, list, dict))}
            (p / "training_config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str) + "\n")
            ship_models(settings, models=[(b, s)])  # recorded at once: an interrupted run keeps what it trained
    return paths


def _rl_checkpoint(path: Path):
    """(Checkpoint, rl_kind) for a model directory: full UNet (``unet/`` or top-level config.json),
    diffusers LoRA (pytorch_lora_weights.safetensors) or PEFT LoRA (adapter_config.json)."""
    from rlg.pairs import Checkpoint

    if (path / "unet" / "config.json").exists():
        return Checkpoint(str(path), subfolder="unet"), "full"
    if (path / "config.json").exists():
        return Checkpoint(str(path), subfolder=""), "full"
    if (path / "pytorch_lora_weights.safetensors").exists():
        return Checkpoint(str(path), weight_name="pytorch_lora_weights.safetensors"), "diffusers_lora"
    if (path / "adapter_config.json").exists():
        return Checkpoint(str(path)), "peft_lora"
    raise FileNotFoundError(f"{path} holds no unet/, config.json, pytorch_lora_weights.safetensors or "
                            "adapter_config.json; is it a trained model directory?")


def _sample_arm(grid, model: Path, scale: float, task: str, base: str, bar) -> np.ndarray:
    """uint8 (N, H, W, 3) images of ``base`` + ``model`` at RLG scale ``scale``, image order (prompt, sample),
    through the grid protocol (``rlg.grid.run_grid``): ``grid`` at the one scale, the same calls as the harness
    makes for it."""
    from rlg.grid import run_grid
    from rlg.pairs import Checkpoint, PairSpec, load_pair

    rl, kind = _rl_checkpoint(model)
    spec = PairSpec(name=f"kl_{task}", base=Checkpoint(resolve_zoo_id(base)), rl=rl, rl_kind=kind, offline=True)
    images = {}
    for call in run_grid(load_pair(spec), dataclasses.replace(grid, scales=(float(scale),))):
        for (prompt, sample, _), gen in call:
            if gen.nonfinite:
                raise FloatingPointError(f"non-finite latents sampling {model.name} at w={scale}")
            images[(prompt, sample)] = gen.image
        bar.update(len(call))
    return np.stack([images[(p, k)] for p in grid.prompt_ids for k in range(grid.samples)])


class _Scorer:
    """Per-image metrics, set metrics and features of uint8 image arrays, through the evaluator registry."""

    def __init__(self, settings: KLClaimSettings, grid, options: dict[str, dict]):
        from rlg.evaluators import get_evaluator

        self.settings = settings
        # the prompt of each image, in (prompt, sample) order
        self.prompts = [p for p in grid.prompts for _ in range(grid.samples)]
        names = {m.split(":")[0] for m in settings.metrics + settings.set_metrics}
        if settings.features == "classifier":
            names.add(settings.feature_evaluator)
        self.evaluators = {n: get_evaluator(n, **options.get(n, {})) for n in sorted(names)}

    def _samples(self, images: np.ndarray):
        from rlg.evaluators import Sample

        return [Sample(key=str(i), image=Image.fromarray(im), prompt=self.prompts[i]) for i, im in enumerate(images)]

    def per_image(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """metric -> float64 (N,) through the evaluator runner (``score_images``), all images in one ``score`` call
        per evaluator (as the shipped numbers were made). Raises RuntimeError naming a failed image."""
        from rlg.evaluators import score_images

        names = list(dict.fromkeys(spec.split(":")[0] for spec in self.settings.metrics))
        scores = score_images([self.evaluators[e] for e in names], images, self.prompts,
                              batch_size=max(1, len(images)))
        for ev, errs in scores.errors.items():
            bad = [(i, e) for i, e in enumerate(errs) if e]
            if bad:
                raise RuntimeError(f"{ev} failed on image {bad[0][0]} of {len(images)}: {bad[0][1]}")
        return {spec.split(":")[1]: np.asarray(scores[spec.split(":")[1]], dtype=np.float64)
                for spec in self.settings.metrics}

    def set_values(self, images: np.ndarray, index: np.ndarray | None = None) -> dict[str, float]:
        samples = self._samples(images)
        if index is not None:
            samples = [samples[i] for i in index]
        out = {}
        for spec in self.settings.set_metrics:
            ev, metric = spec.split(":")
            out[metric] = float(self.evaluators[ev].score_set(samples)[metric])
        return out

    def set_bootstrap(self, images: np.ndarray, resamples: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Each set metric on every resample of the images. A Fréchet-distance evaluator (``features`` and a
        ``reference`` with mean and cov, e.g. digit_fd) gets one feature pass, resampled; others are called
        on each resample."""
        out = {}
        for spec in self.settings.set_metrics:
            name, metric = spec.split(":")
            ev = self.evaluators[name]
            ref = getattr(ev, "reference", None)
            if hasattr(ev, "features") and isinstance(ref, dict) and {"mean", "cov"} <= set(ref):
                fd = importlib.import_module(type(ev).__module__).frechet_distance
                feats = np.asarray(ev.features([Image.fromarray(im) for im in images]))
                out[metric] = np.array([fd(feats[idx], ref["mean"], ref["cov"]) for idx in resamples])
            else:
                out[metric] = np.array([self.set_values(images, idx)[metric] for idx in resamples])
        return out

    def features(self, images: np.ndarray) -> torch.Tensor:
        if self.settings.features == "pixels":
            return torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) / 255.0)
        return torch.as_tensor(np.asarray(self.evaluators[self.settings.feature_evaluator].features(
            [Image.fromarray(im) for im in images]), dtype=np.float64))


def _mean_row(v: np.ndarray) -> dict[str, float]:
    m, se = mean_se(v)
    lo, hi = normal_interval(m, se)
    return dict(value=m, stderr=se, lo=lo, hi=hi)


def _batches(n_prompts: int, n_per_prompt: int, n_batches: int) -> list[np.ndarray]:
    """Disjoint image index sets, each holding every prompt (sample indices split into n_batches parts)."""
    parts = np.array_split(np.arange(n_per_prompt), n_batches)
    return [np.concatenate([p * n_per_prompt + part for p in range(n_prompts)]) for part in parts]


def training_rows(settings: KLClaimSettings, paths: dict[tuple[float, int], Path]) -> list[dict]:
    """``kind="training"`` rows from each model's ``training_config.json`` (``trainer_info.history``, the zoo
    trainers' log): arm ("source" | "retrained"), beta_eff, model_seed, step, and the logged ``train_reward``
    (DDPO: the on-policy batch's mean reward), ``train_kl`` (DDPO: the KL to the base) and ``train_loss`` (DPO),
    NaN where a trainer does not log it. The reward curve per beta shows whether a model reached a plateau."""
    rows = []
    for (b, s), p in paths.items():
        f = p / "training_config.json"
        info = json.loads(f.read_text()).get("trainer_info", {}) if f.exists() else {}
        for h in info.get("history", []):
            rows.append(dict(kind="training", arm="source" if s == settings.source_seed else "retrained",
                             beta_eff=b, model_seed=s, step=h.get("iter", h.get("step")),
                             train_reward=h.get("reward_mean", math.nan), train_kl=h.get("kl", math.nan),
                             train_loss=h.get("loss", math.nan), task=settings.task, beta=settings.beta))
    return rows


def run_kl_claim(settings: KLClaimSettings, grid, evaluator_options: dict[str, dict] | None = None,
                 images_out: dict | None = None) -> pd.DataFrame:
    """Sample every arm, score it, compare RLG(w) with retrained(beta / w); tidy rows (module docstring).

    ``grid``: an ``rlg.grid.Grid`` with the prompts, samples per prompt, noise seed, sampler settings and call
    size every arm samples with (the harness makes it from the shared ``prompts`` and ``sampler`` groups; its
    scales are replaced by each arm's). ``evaluator_options``: evaluator name -> constructor options (the
    harness's ``evaluators.options``). ``images_out``, if given, receives {(arm, w, model_seed): uint8 images}.
    Raises ValueError when the grid's images per arm cannot fill ``settings.n_batches`` batches."""
    from rlg.runtime import torch_threads

    settings.check_images(len(grid.prompts) * grid.samples)
    with torch_threads(settings.threads):
        return _run(settings, grid, evaluator_options or {}, images_out)


def _run(settings: KLClaimSettings, grid, options: dict[str, dict], images_out: dict | None) -> pd.DataFrame:
    paths = ensure_models(settings)
    betas = effective_betas(settings)
    n_images = len(grid.prompts) * grid.samples
    sources = rlg_seeds(settings)
    arms = [("rlg", w, s, paths[(settings.beta, s)], w) for w in betas for s in sources]
    arms += [("retrained", w, s, paths[(b, s)], 1.0) for w, b in betas.items() for s in settings.floor_seeds]
    scorer = _Scorer(settings, grid, options)
    images, per_image, feats, done = {}, {}, {}, {}
    with tqdm(total=len(arms) * n_images, desc=f"kl_claim {settings.task}", unit="img",
              disable=not settings.progress) as bar:
        for arm, w, seed, path, scale in arms:
            key = (arm, w, seed)
            if (path, scale) in done:  # paired, w = 1: RLG(1) from a seed's beta model is that model, same noise
                images[key], per_image[key], feats[key] = (x[done[(path, scale)]] for x in (images, per_image, feats))
                bar.update(n_images)
                continue
            bar.set_postfix_str(f"{arm} w={w:g} seed={seed}")
            images[key] = _sample_arm(grid, path, scale, settings.task, settings.base, bar)
            per_image[key] = scorer.per_image(images[key])
            feats[key] = scorer.features(images[key])
            done[(path, scale)] = key
    if images_out is not None:
        images_out.update(images)
    rng = np.random.default_rng(settings.seed)
    boot = [rng.integers(0, n_images, n_images) for _ in range(settings.n_boot)]
    batches = _batches(len(grid.prompts), grid.samples, settings.n_batches)
    seed_a, seed_b = settings.floor_seeds[:2]
    reward = settings.reward_metric or settings.metrics[0].split(":")[-1]
    common = dict(task=settings.task, beta=settings.beta, n=n_images, n_batches=settings.n_batches,
                  reward_metric=reward,
                  steps=grid.settings.num_inference_steps, eta=grid.settings.eta,
                  guidance_scale=grid.settings.guidance_scale, seed=settings.seed, paired=settings.paired)
    rows = []
    for w, b in betas.items():
        ref, other = ("retrained", w, seed_a), ("retrained", w, seed_b)
        for key in [("rlg", w, s) for s in sources] + [("retrained", w, s) for s in settings.floor_seeds]:
            arm, _, mseed = key
            for metric, v in per_image[key].items():
                extra = {}
                if arm == "rlg":
                    # against the same training seed's retrain when paired, else against seed A
                    against = ("retrained", w, mseed) if settings.paired else ref
                    d = v - per_image[against][metric]
                    df_ = per_image[other][metric] - per_image[ref][metric]
                    (diff, diff_se), (floor, floor_se) = mean_se(d), mean_se(df_)
                    extra = dict(diff=diff, diff_stderr=diff_se, diff_floor=floor, diff_floor_stderr=floor_se)
                rows.append(dict(kind="metric", arm=arm, w=w, beta_eff=b, model_seed=mseed, metric=metric,
                                 **_mean_row(v), **extra, **common))
            if settings.set_metrics:
                full = scorer.set_values(images[key])
                resampled = scorer.set_bootstrap(images[key], boot)
                for metric, value in full.items():
                    # value +- 1.96 bootstrap se: resampling with replacement inflates a biased Frechet distance,
                    # so percentile intervals can exclude the value itself (science audit, section 3)
                    se = float(resampled[metric].std(ddof=1))
                    lo, hi = normal_interval(value, se)
                    rows.append(dict(kind="metric", arm=arm, w=w, beta_eff=b, model_seed=mseed, metric=metric,
                                     value=value, stderr=se, lo=lo, hi=hi, **common))
        fa, fo, fr = feats[ref], feats[other], feats[("rlg", w, sources[0])]  # paired: sources[0] is seed A
        if settings.distance == "mmd2":
            h = median_bandwidth(fa)
            fn = lambda x, y: mmd2(x, y, h, paired=True)  # noqa: E731
        else:
            fn = lambda x, y: energy_distance(x, y, paired=True)  # noqa: E731
        v, se = batched(fn, [fr[i] for i in batches], [fa[i] for i in batches])
        f, fse = batched(fn, [fo[i] for i in batches], [fa[i] for i in batches])
        gap = v - f
        rows.append(dict(kind="distance", arm="rlg", w=w, beta_eff=b, model_seed=sources[0],
                         metric=f"{settings.distance}/{settings.features}", value=v, stderr=se, floor=f,
                         floor_stderr=fse, gap=gap,
                         z=gap / math.sqrt(se**2 + fse**2) if se > 0 or fse > 0 else float("nan"), **common))
    rows += training_rows(settings, paths)
    df = pd.DataFrame(rows)
    df.attrs["settings"] = dict(asdict(settings), prompts=list(grid.prompts), samples_per_prompt=grid.samples,
                                sampler=repr(grid.settings), batch_size=grid.batch_size)
    return df


# ------------------------------------------------------------------------------------------------------
# Shipping the retrained models (run_kl_claim with train_missing=True ships what it trains)
# ------------------------------------------------------------------------------------------------------
def ship_models(settings: KLClaimSettings, manifest: Path | None = None, half: bool = True,
                models: list[tuple[float, int]] | None = None) -> dict[str, Any]:
    """Store full-weight UNets of the required models in float16 (a Diffusion-DPO UNet of the digits zoo is
    3.9 MB in float32; the loader casts back to the base's dtype) and record every model in ``manifest``
    (sha256 per file, size, training config; default ``<weights_dir>/../kl_manifest.json``, i.e.
    rlg/zoo/kl_manifest.json). LoRA files are kept as trained. ``models``: (beta, seed) pairs to record (default:
    every required model). Each entry goes in through the zoo's locked, atomic manifest writer. Returns the
    manifest."""
    from diffusers import UNet2DConditionModel

    from rlg.zoo.common import read_manifest, write_manifest_entry

    root = _weights_dir(settings)
    manifest = Path(manifest) if manifest is not None else root.parent / "kl_manifest.json"
    for b, s in models if models is not None else required_models(settings):
        p = model_dir(settings, b, s)
        unet_dir = p / "unet"
        if half and (unet_dir / "config.json").exists():
            unet = UNet2DConditionModel.from_pretrained(str(unet_dir), torch_dtype=torch.float16)
            unet.save_pretrained(str(unet_dir), safe_serialization=True)
        files = {f.relative_to(p).as_posix(): sha256_file(f) for f in sorted(p.rglob("*")) if f.is_file()}
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        write_manifest_entry(p.relative_to(root).as_posix(), {
            "task": settings.task, "beta": b, "seed": s, "role": "source" if s == settings.source_seed else "retrained",
            "stored_dtype": "float16" if half and (unet_dir / "config.json").exists() else "as trained",
            "size_mb": round(size / 1e6, 3), "sha256": files,
            "training_config": json.loads((p / "training_config.json").read_text())}, manifest)
    return read_manifest(manifest)
