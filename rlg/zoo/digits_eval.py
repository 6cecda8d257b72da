"""Measure a digits zoo pair with the production sampler: reward at RLG scales, with intervals, and set metrics.

The pair and sampler come from the harness's composed config (rlg.harness.api.job: pair=<zoo pair>,
sampler=zoo_digits) and the images from its loop (rlg.grid.run_grid), so the numbers are those of the
benchmark's own code path.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rlg.zoo import digits as D
from rlg.kl_stats import mean_ci

PAIRS = ("zoo_digits_dpo", "zoo_digits_ddpo_compress", "zoo_digits_ddpo_incompress", "zoo_digits_spo")
REWARD = {"zoo_digits_dpo": "digit_margin", "zoo_digits_ddpo_compress": "jpeg_compressibility",
          "zoo_digits_ddpo_incompress": "jpeg_incompressibility", "zoo_digits_spo": "digit_margin"}


@lru_cache(maxsize=8)
def _job(pair: str, sampler: str = "zoo_digits"):
    """The harness's own composed config for a zoo pair with a sampler preset (rlg.harness.api.job)."""
    from rlg.harness.api import job

    return job(f"pair={pair}", f"sampler={sampler}")


def pair_spec(name: str, weights: Path | str | None = None, sampler: str = "zoo_digits"):
    """The PairSpec of a zoo pair preset (rlg/conf/pair/<name>.yaml, composed by rlg.harness.api.job with the sampler
    preset ``sampler``, which must suit the pair: the build refuses e.g. zoo_digits' eta with an SD3 pair; ``zoo:`` ids
    resolved); ``weights`` (a directory, e.g. a retrained copy) replaces the shipped rlg/zoo/weights for the models
    it holds (a model the retrain did not produce, --only, stays the shipped one)."""
    from rlg.zoo import WEIGHTS_DIR

    spec = _job(name, sampler).pair

    def local(ck):
        path = Path(ck.id)
        if weights is None or not path.is_relative_to(WEIGHTS_DIR):
            return ck
        mine = Path(weights) / path.relative_to(WEIGHTS_DIR)
        return dataclasses.replace(ck, id=str(mine)) if mine.exists() else ck

    return dataclasses.replace(spec, base=local(spec.base), rl=local(spec.rl))


def sampler_settings(sampler: str = "zoo_digits", pair: str = PAIRS[0], **over):
    """The SamplerSettings of rlg/conf/sampler/<sampler>.yaml as the harness builds them (with ``pair``), with
    ``over`` replaced."""
    return dataclasses.replace(_job(pair, sampler).sampler, **over)


def generate(pair, scales: list[float], samples_per_prompt: int, seed: int = 0, prompts: list[str] | None = None,
             batch: int = 40, sampler: str = "zoo_digits", **settings) -> dict[float, dict[str, Any]]:
    """{scale: {'images': uint8 (N, H, W, 3), 'prompts': [...]}} (N in (prompt, sample) order): one grid of every
    (prompt, sample, scale) through the harness's loop (rlg.grid.run_grid), every scale of a (prompt, sample) in
    one call of at most ``batch`` images, from the same noise, with the sampler preset ``sampler`` (default the
    digits one; the text pair's measurement passes zoo_text_ode). The zoo samplers' ``micro_batch`` (fixed rows
    per forward) makes the pixels independent of the packing, so they equal those of one grid per scale."""
    from rlg.grid import Grid, run_grid

    prompts = prompts or D.PROMPTS
    grid = Grid(prompts=tuple(prompts), scales=tuple(float(w) for w in scales), samples=samples_per_prompt, seed=seed,
                settings=sampler_settings(sampler, **settings), batch_size=batch)
    made = {k: res.image for call in run_grid(pair, grid) for k, res in call}
    keys = [(p, s) for p in grid.prompt_ids for s in range(samples_per_prompt)]
    return {w: {"images": np.stack([made[(p, s, w)] for p, s in keys]), "prompts": [prompts[p] for p, _ in keys]}
            for w in grid.scales}


def score_all(evaluators: tuple[str, ...], images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per image and metric (float64 (N,)) of the registered ``evaluators`` through the evaluators' loop
    (rlg.evaluators.base.score_images, all N images in one batch). Raises RuntimeError when an image fails."""
    from rlg.evaluators.base import score_images

    scored = score_images(evaluators, images, prompts, batch_size=max(len(images), 1))
    if scored.failed:
        first = next(e for errs in scored.errors.values() for e in errs if e)
        raise RuntimeError(f"scoring failed on {scored.failed} (evaluator, image) pairs, e.g. {first}")
    return dict(scored.values)


def rewards(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per image (float64 (N,)): digit_prob, digit_margin, digit_correct, jpeg_compressibility,
    jpeg_incompressibility, digit_mahalanobis (:func:`score_all`)."""
    return score_all(("digit_prob", "jpeg", "digit_fd"), images, prompts)


def frechet(images: np.ndarray) -> float:
    from rlg.evaluators.base import get_evaluator

    ev = get_evaluator("digit_fd")
    from rlg.evaluators.digits import frechet_distance

    return frechet_distance(ev.features(list(images)), ev.reference["mean"], ev.reference["cov"])


@lru_cache(maxsize=1)
def heldout_features() -> np.ndarray:
    """(500, 64) classifier features of the 500 held-out real digits (the reference set of FD and KID)."""
    from rlg.evaluators.base import get_evaluator

    imgs = D.to_images(D.load_split()["test_x"]).permute(0, 2, 3, 1).numpy()
    return get_evaluator("digit_fd").features(list((imgs * 255).round().astype(np.uint8)))


def set_quality(images: np.ndarray, prompts: list[str]) -> dict[str, Any]:
    """Set metrics of one scale's images (uint8 (N, 32, 32, 3)) with the shipped classifier:
    prompt following (accuracy = top class is the prompted digit; confidence = mean top-class probability;
    confident_wrong = share with top probability > 0.9 and the wrong class), diversity (class_entropy in bits of
    the predicted classes, 3.32 = uniform; class_counts), quality (KID to the held-out real digits with its
    subset SE, rlg.evaluators.digits.kernel_distance; and the biased FD for comparison with earlier numbers)."""
    import torch

    from rlg.evaluators.base import get_evaluator
    from rlg.evaluators.digits import class_entropy, images_to_tensor, kernel_distance

    ev = get_evaluator("digit_prob")
    with torch.no_grad():
        probs = ev.model(images_to_tensor(list(images))).softmax(1).numpy()
    pred, conf = probs.argmax(1), probs.max(1)
    target = np.array([D.digit_of_prompt(p) for p in prompts])
    feats = get_evaluator("digit_fd").features(list(images))
    kid = kernel_distance(feats, heldout_features())
    return {"accuracy": round(float((pred == target).mean()), 4), "confidence": round(float(conf.mean()), 4),
            "confident_wrong": round(float(((conf > 0.9) & (pred != target)).mean()), 4),
            "class_entropy": round(class_entropy(pred), 4), "class_counts": np.bincount(pred, minlength=10).tolist(),
            "kid": round(kid["kid"], 5), "kid_se": round(kid["kid_se"], 5), "fd": round(frechet(images), 3)}


def measure_pair(name: str, scales=(0.0, 0.5, 1.0, 2.0), samples_per_prompt: int = 10, seed: int = 0,
                 weights: Path | str | None = None) -> dict[str, Any]:
    """One sampling seed: per scale the reward (mean, se, 95% CI), digit_prob, digit_margin, kB and the set metrics
    (set_quality); paired differences between neighbouring scales, w = 2 - w = 1 and w = 1 - w = 0 (same prompts and
    noise)."""
    from rlg.pairs import load_pair

    pair = load_pair(pair_spec(name, weights))
    gen = generate(pair, list(scales), samples_per_prompt, seed)
    reward = REWARD[name]
    per_scale, values = {}, {}
    for w, g in gen.items():
        r = rewards(g["images"], g["prompts"])
        values[w] = r[reward]
        per_scale[str(w)] = {reward: mean_ci(r[reward]), "digit_prob": mean_ci(r["digit_prob"]),
                             "digit_margin": mean_ci(r["digit_margin"]), "jpeg_kb": mean_ci(-r["jpeg_compressibility"]),
                             **set_quality(g["images"], g["prompts"])}
    ws = sorted(values)
    steps = list(zip(ws, ws[1:])) + ([(1.0, 2.0)] if {1.0, 2.0} <= set(ws) and 1.5 in ws else [])
    steps += [(0.0, 1.0)] if {0.0, 1.0} <= set(ws) and 0.5 in ws else []  # the RL gain itself, on the same images
    diffs = {f"{b}-{a}": mean_ci(values[b] - values[a]) for a, b in steps}
    return {"pair": name, "reward": reward, "n_images_per_scale": len(next(iter(values.values()))), "seed": seed,
            "scales": per_scale, "paired_differences": diffs}


def verdict(run: dict[str, Any]) -> dict[str, Any]:
    """The control claims of one measure_pair run: interpolation (reward strictly rising over the scales in [0, 1],
    each step's paired difference > 0), extrapolation (w = 2 - w = 1 in paired SEs), and the peak (the scale with
    the highest mean reward)."""
    rew = run["reward"]
    means = {float(w): v[rew]["mean"] for w, v in run["scales"].items()}
    d = run["paired_differences"]
    inner = [k for k in d if float(k.split("-")[0]) <= 1.0]
    ext = d.get("2.0-1.0")
    return {"monotone_0_1": all(d[k]["mean"] > 0 for k in inner),
            "w2_minus_w1_se": round(ext["mean"] / ext["se"], 2) if ext and ext["se"] > 0 else None,
            "peak_scale": max(means, key=means.get)}


def measure_seeds(name: str, seeds=(0, 1, 2), scales=(0.0, 0.5, 1.0, 2.0, 3.0), samples_per_prompt: int = 8,
                  weights: Path | str | None = None, log=print) -> dict[str, Any]:
    """measure_pair at each sampling seed, each run's verdict, and per scale the mean and sd over seeds of the
    reward, accuracy, class entropy and KID (the seeds are the unit of the spread)."""
    runs = []
    for sd in seeds:
        runs.append(measure_pair(name, scales, samples_per_prompt, sd, weights))
        log(f"{name} seed {sd}: {verdict(runs[-1])}")
    rew = runs[0]["reward"]
    summary = over_seeds(runs, [(rew, lambda v: v[rew]["mean"])]
                         + [(k, lambda v, k=k: v[k]["mean"]) for k in ("digit_prob", "digit_margin", "jpeg_kb")]
                         + [(k, lambda v, k=k: v[k]) for k in ("accuracy", "class_entropy", "kid")])
    return {"pair": name, "reward": rew, "seeds": list(seeds), "summary": summary,
            "verdicts": [verdict(r) for r in runs], "runs": runs}


def over_seeds(runs: list[dict[str, Any]], columns) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per scale of measure_pair ``runs`` (one per sampling seed): for each (key, get) of ``columns``, the mean and
    sd (ddof 1; None for one run) over the runs of ``get(run["scales"][scale])``, rounded to 5 decimals."""
    summary = {}
    for w in runs[0]["scales"]:
        row = {}
        for key, get in columns:
            vals = np.array([get(r["scales"][w]) for r in runs], dtype=np.float64)
            row[key] = {"mean": round(float(vals.mean()), 5),
                        "sd": round(float(vals.std(ddof=1)), 5) if len(vals) > 1 else None}
        summary[w] = row
    return summary


def measure_base(base: Path | str = "zoo:digits_base", seeds=(0, 1, 2), samples_per_prompt: int = 10
                 ) -> dict[str, Any]:
    """Prompt following of a base pipeline alone (its own UNet as both members of the pair, so w is moot): per
    sampling seed the set metrics of set_quality, and their mean and sd over seeds."""
    from rlg.pairs import Checkpoint, PairSpec, load_pair
    from rlg.zoo import resolve_zoo_id

    path = resolve_zoo_id(str(base))
    pair = load_pair(PairSpec(name="digits_base", base=Checkpoint(path), rl=Checkpoint(path, subfolder="unet"),
                              rl_kind="full", offline=True))
    per_seed = {}
    for sd in seeds:
        g = generate(pair, [0.0], samples_per_prompt, sd)[0.0]
        r = rewards(g["images"], g["prompts"])
        per_seed[str(sd)] = {"digit_prob": round(float(r["digit_prob"].mean()), 4),
                             "digit_margin": round(float(r["digit_margin"].mean()), 4),
                             **set_quality(g["images"], g["prompts"])}
    keys = ("accuracy", "confidence", "confident_wrong", "class_entropy", "digit_prob", "digit_margin", "kid")
    vals = {k: np.array([v[k] for v in per_seed.values()]) for k in keys}
    return {"n_images_per_seed": 10 * samples_per_prompt, "per_seed": per_seed,
            "mean": {k: round(float(v.mean()), 4) for k, v in vals.items()},
            "sd": {k: round(float(v.std(ddof=1)), 4) if len(v) > 1 else None for k, v in vals.items()}}
