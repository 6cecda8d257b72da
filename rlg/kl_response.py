"""Does retraining respond to the KL coefficient? The check that must pass before the zoo KL claim can be decided.

The KL claim compares RLG(w) with models retrained at beta / w; its margin is a fraction of how far retraining moves
between beta and beta / w (``rlg.kl_stats.kl_verdicts``). When retraining does not move beyond its seed spread no
margin can be stated and every verdict is "undecided". This module measures that response for one training recipe
before the whole set of retrains is paid for: models at ``beta`` and ``beta / w`` (one w), several training seeds
each, trained by the KL claim's own trainer and stored where the claim looks for them (``rlg.kl_claim.ensure_models``,
so the measured models are reused by the claim), each sampled at w = 1 through the claim's production path
(``rlg.kl_claim._sample_arm``: the stock pipeline, the same prompts and per-image noise for every model) and scored
by the claim's evaluators.

Resumable at two levels: a trained model is skipped (``ensure_models``), and each model's per-image scores are
cached in ``out`` (JSON) keyed by the model directory and the sha256 of its weights file, so the same command after
an interruption re-samples only what is missing or changed.

    python -m rlg.kl_response --w 3 --seeds 1 2 3 --out outputs/kl_response.json [overrides ...]

(overrides of ``experiment=kl_claim_digits_ddpo``, e.g. ``kl_claim.train_steps=30``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlg.files import atomic_write, sha256_file
from rlg.kind_spec import KLClaimSettings

__all__ = ["response_models", "measure_response", "response_summary", "main"]


def response_models(beta: float, w: float, seeds: Sequence[int]) -> list[tuple[float, int]]:
    """(beta, seed) pairs in training order: per seed, the beta model then the beta / w model, so that a run cut short
    leaves matched pairs. Raises ValueError for w <= 1 (no lower coefficient) or fewer than 2 seeds (no spread)."""
    if not w > 1:
        raise ValueError(f"w must be > 1 (the response is retrained(beta / w) - retrained(beta)), got {w}")
    if len(set(seeds)) < 2:
        raise ValueError(f"need >= 2 distinct training seeds per coefficient for a seed spread, got {list(seeds)}")
    return [(b, int(s)) for s in dict.fromkeys(seeds) for b in (beta, beta / w)]


def _weights_sha(path: Path) -> str:
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != "training_config.json")
    if not files:
        raise FileNotFoundError(f"{path} holds no weights")
    return "+".join(sha256_file(f) for f in files)


def measure_response(settings: KLClaimSettings, grid, w: float, seeds: Sequence[int], out: Path | str,
                     evaluator_options: dict[str, dict] | None = None, sample=None, log=print) -> dict[str, Any]:
    """Train (when missing and ``settings.train_missing``) and score the models of ``response_models``; returns
    ``response_summary`` of the scores. ``grid``: the ``rlg.grid.Grid`` every model samples (prompts, samples per
    prompt, noise seed, sampler; as ``rlg.kl_claim.run_kl_claim`` takes it); ``evaluator_options``: evaluator name
    -> constructor options. ``out``: the JSON cache {model dir name: {sha256, seed, n, metric: [per-image
    values]}}, rewritten atomically after each model. ``sample(grid, path) -> uint8 (N, H, W, 3)`` replaces the
    production sampler (tests); default: ``rlg.kl_claim._sample_arm`` at scale 1."""
    from rlg.kl_claim import _Scorer, _sample_arm, ensure_models

    out = Path(out)
    models = response_models(settings.beta, w, seeds)
    paths = ensure_models(settings, models)
    reward = settings.reward_metric or settings.metrics[0].split(":")[-1]
    # per-image metrics only: the set metrics and features of the claim are not needed for the response
    scoring = dataclasses.replace(settings, set_metrics=[], features="pixels")
    scorer, n_images = None, len(grid.prompts) * grid.samples
    cache = json.loads(out.read_text()) if out.exists() else {}
    for b, s in models:
        p = paths[(b, s)]
        sha = _weights_sha(p)
        hit = cache.get(p.name)
        if hit and hit["sha256"] == sha and hit["sampling_seed"] == grid.seed and hit["n"] == n_images:
            continue
        if sample is None:
            from tqdm.auto import tqdm

            with tqdm(total=n_images, disable=not settings.progress, desc=p.name) as bar:
                images = _sample_arm(grid, p, 1.0, settings.task, settings.base, bar)
        else:
            images = sample(grid, p)
        scorer = scorer or _Scorer(scoring, grid, evaluator_options or {})
        scores = scorer.per_image(images)
        cache[p.name] = dict(beta=b, seed=s, sha256=sha, sampling_seed=grid.seed, n=len(images),
                             **{k: [float(x) for x in v] for k, v in scores.items()})
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, (json.dumps(cache, indent=1, sort_keys=True) + "\n").encode())
        log(f"{p.name}: mean {reward} {np.mean(scores[reward]):.4f}")
    summary = response_summary({p.name: cache[p.name] for p in paths.values()}, settings.beta, w, reward)
    summary["models"] = {paths[m].name: cache[paths[m].name][reward] for m in models}
    return summary


def response_summary(scores: dict[str, dict], beta: float, w: float, metric: str) -> dict[str, Any]:
    """The response retrained(beta / w) - retrained(beta) on ``metric`` from per-model per-image scores
    (``measure_response``'s cache entries: beta, seed, metric -> values). Each model is one value (its mean over
    the shared images). Returns per-coefficient model means and seed sd, ``welch`` (independent groups: the test the
    claim's responsiveness check makes, ``rlg.kl_stats.welch``), ``paired`` (per training seed: both coefficients
    share the seed's random stream, so the pairs cancel what a seed does at either coefficient) and ``ratio`` =
    |welch estimate| / the pooled seed sd. Raises ValueError when a coefficient has fewer than 2 models."""
    from rlg.kl_stats import paired, welch

    lo = beta / w
    groups: dict[str, dict[int, float]] = {"beta": {}, "beta_w": {}}
    for entry in scores.values():
        key = "beta" if math.isclose(entry["beta"], beta) else "beta_w" if math.isclose(entry["beta"], lo) else None
        if key:
            groups[key][int(entry["seed"])] = float(np.mean(entry[metric]))
    if min(len(g) for g in groups.values()) < 2:
        raise ValueError(f"need >= 2 models at beta {beta:g} and at beta/w {lo:g}; have seeds "
                         f"{sorted(groups['beta'])} and {sorted(groups['beta_w'])}")
    hi_v, lo_v = np.array(list(groups["beta"].values())), np.array(list(groups["beta_w"].values()))
    t = welch(lo_v, hi_v)
    common = sorted(set(groups["beta"]) & set(groups["beta_w"]))
    pt = (paired([groups["beta_w"][s] for s in common], [groups["beta"][s] for s in common])
          if len(common) >= 2 else None)
    pooled_var = (hi_v.var(ddof=1) * (hi_v.size - 1) + lo_v.var(ddof=1) * (lo_v.size - 1)) / (hi_v.size + lo_v.size - 2)
    sd = math.sqrt(pooled_var)
    return {"metric": metric, "beta": beta, "beta_w": lo, "w": w,
            "means": {"beta": groups["beta"], "beta_w": groups["beta_w"]},
            "seed_sd": {"beta": float(hi_v.std(ddof=1)), "beta_w": float(lo_v.std(ddof=1)), "pooled": sd},
            "welch": dataclasses.asdict(t), "paired": dataclasses.asdict(pt) if pt else None,
            "ratio": abs(t.estimate) / sd if sd > 0 else math.inf}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--w", type=float, default=3.0, help="the response is measured between beta and beta / w")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds per coefficient")
    ap.add_argument("--out", default="outputs/kl_response.json", help="per-model scores (the resumable cache)")
    ap.add_argument("--experiment", default="kl_claim_digits_ddpo", help="the KL-claim preset")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the preset, e.g. kl_claim.n_per_prompt=10")
    a = ap.parse_args(argv)
    from rlg.harness.api import job
    from rlg.harness.stages import kl_claim_grid

    j = job(f"experiment={a.experiment}", "kl_claim.train_missing=true", *a.overrides)
    summary = measure_response(j.settings, kl_claim_grid(j), a.w, a.seeds, a.out, j.config.evaluators.options)
    print(json.dumps({k: v for k, v in summary.items() if k != "models"}, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
