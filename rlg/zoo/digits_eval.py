"""Measure a digits zoo pair with the production sampler: reward at RLG scales, with intervals, and the FD.

Uses rlg.pairs.load_pair and rlg.sampling.RLGSampler directly (the sampler settings of
rlg/conf/sampler/zoo_digits.yaml), so the numbers are those of the benchmark's own code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlg.zoo import digits as D
from rlg.zoo.common import mean_ci

CONF = Path(__file__).resolve().parent.parent / "conf"
PAIRS = ("zoo_digits_dpo", "zoo_digits_ddpo_compress", "zoo_digits_ddpo_incompress")
REWARD = {"zoo_digits_dpo": "digit_prob", "zoo_digits_ddpo_compress": "jpeg_compressibility",
          "zoo_digits_ddpo_incompress": "jpeg_incompressibility"}


def pair_spec(name: str, weights: Path | str | None = None):
    """The PairSpec of a zoo pair preset (rlg/conf/pair/<name>.yaml) with its ``zoo:`` ids resolved;
    ``weights`` (a directory, e.g. a retrained copy) replaces the shipped rlg/zoo/weights for the models it holds."""
    from rlg.pairs import Checkpoint, PairSpec
    from rlg.zoo import ZOO_PREFIX, resolve_zoo_id

    cfg = yaml.safe_load((CONF / "pair" / f"{name}.yaml").read_text())

    def ck(d: dict[str, Any]) -> Checkpoint:
        d = dict(d)
        local = Path(weights) / d["id"][len(ZOO_PREFIX):] if weights is not None else None
        if local is not None and d["id"].startswith(ZOO_PREFIX) and local.exists():
            d["id"] = str(local)  # a model the retrain did not produce (--only) stays the shipped one
        d["id"] = resolve_zoo_id(d["id"])
        return Checkpoint(**d)

    return PairSpec(name=cfg["name"], base=ck(cfg["base"]), rl=ck(cfg["rl"]), rl_kind=cfg["rl_kind"],
                    offline=bool(cfg.get("offline", True)))


def sampler_settings(**over):
    from rlg.sampling import SamplerSettings

    cfg = yaml.safe_load((CONF / "sampler" / "zoo_digits.yaml").read_text())
    kw = dict(num_inference_steps=cfg["num_inference_steps"], guidance_scale=cfg["guidance_scale"],
              height=cfg["height"], width=cfg["width"], negative_prompt=cfg["negative_prompt"], eta=cfg["eta"])
    kw.update(over)
    return SamplerSettings(**kw)


def generate(pair, scales: list[float], samples_per_prompt: int, seed: int = 0, prompts: list[str] | None = None,
             batch: int = 40, **settings) -> dict[float, dict[str, Any]]:
    """{scale: {'images': uint8 (N, 32, 32, 3), 'prompts': [...]}}: the same (prompt, sample) noise at every scale."""
    from rlg.sampling import RLGSampler, WorkItem

    prompts = prompts or D.PROMPTS
    sampler = RLGSampler(pair, sampler_settings(**settings))
    items = [(pi, p, s) for pi, p in enumerate(prompts) for s in range(samples_per_prompt)]
    out = {}
    for w in scales:
        work = [WorkItem(pi, p, s, seed, float(w)) for pi, p, s in items]
        imgs = []
        for i in range(0, len(work), batch):
            imgs += [g.image for g in sampler.generate(work[i:i + batch])]
        out[float(w)] = {"images": np.stack(imgs), "prompts": [p for _, p, _ in items]}
    return out


def rewards(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per-image digit_prob, jpeg_compressibility, jpeg_incompressibility, digit_mahalanobis (registered evaluators)."""
    from PIL import Image

    from rlg.evaluators.base import Sample, get_evaluator

    samples = [Sample(str(i), Image.fromarray(im), p) for i, (im, p) in enumerate(zip(images, prompts))]
    out: dict[str, list[float]] = {}
    for name in ("digit_prob", "jpeg", "digit_fd"):
        for row in get_evaluator(name).score(samples):
            for k, v in row.items():
                out.setdefault(k, []).append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def frechet(images: np.ndarray) -> float:
    from rlg.evaluators.base import get_evaluator

    ev = get_evaluator("digit_fd")
    from rlg.evaluators.digits import frechet_distance

    return frechet_distance(ev.features(list(images)), ev.reference["mean"], ev.reference["cov"])


def measure_pair(name: str, scales=(0.0, 0.5, 1.0, 2.0), samples_per_prompt: int = 10, seed: int = 0,
                 weights: Path | str | None = None) -> dict[str, Any]:
    """Reward (mean, se, 95% CI), paired differences to the previous scale, and FD per scale."""
    from rlg.pairs import load_pair

    pair = load_pair(pair_spec(name, weights))
    gen = generate(pair, list(scales), samples_per_prompt, seed)
    reward = REWARD[name]
    per_scale, values = {}, {}
    for w, g in gen.items():
        r = rewards(g["images"], g["prompts"])
        values[w] = r[reward]
        per_scale[str(w)] = {reward: mean_ci(r[reward]), "digit_prob": mean_ci(r["digit_prob"]),
                             "jpeg_kb": mean_ci(-r["jpeg_compressibility"]), "digit_fd": round(frechet(g["images"]), 3)}
    ws = sorted(values)
    diffs = {f"{b}-{a}": mean_ci(values[b] - values[a]) for a, b in zip(ws, ws[1:])}
    return {"pair": name, "reward": reward, "n_images_per_scale": len(next(iter(values.values()))), "seed": seed,
            "scales": per_scale, "paired_differences": diffs}
