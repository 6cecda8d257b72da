"""Measure the text zoo pair with the production sampler: OCR reward and legibility at RLG scales, per sampling seed.

The pair and sampler come from the harness's composed config (rlg.harness.api.job: pair=zoo_text_flowgrpo,
sampler=zoo_text_ode, the RLG protocol: Euler ODE 20 steps, CFG 4.5) and the images from its loop (rlg.grid.run_grid
through rlg.zoo.digits_eval.generate), scored by the registered ``ocr`` evaluator (EasyOCR). Per image it gives
``ocr_accuracy`` (the reward) and ``ocr_confidence`` (the engine's confidence of its reading, the legibility
metric). The confidence among images read exactly (accuracy 1) is reported too, but the shipped pair reads 8-11% of
its words exactly, 3-7 images per scale at 48, too few to compare (rlg/zoo/README_text.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlg.zoo import text as T
from rlg.kl_stats import mean_ci

PAIR, SAMPLER = "zoo_text_flowgrpo", "zoo_text_ode"
REWARD = "ocr_accuracy"


def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per image ocr_accuracy and ocr_confidence (float64 (N,)) by the registered ``ocr`` evaluator, through the
    evaluators' loop (rlg.zoo.digits_eval.score_all). Raises RuntimeError when an image fails."""
    from rlg.zoo.digits_eval import score_all

    return score_all(("ocr",), images, prompts)


def legibility(acc: np.ndarray, conf: np.ndarray) -> dict[str, Any]:
    """Quality of one scale's images: ``exact`` (share read exactly, accuracy 1) and ``confidence_exact`` (mean
    confidence among them, with its se; None when no image is read exactly)."""
    exact = acc >= 1.0
    return {"exact": round(float(exact.mean()), 4),
            "confidence_exact": mean_ci(conf[exact]) if exact.sum() > 1 else None}


def measure_pair(scales=(0.0, 0.5, 1.0, 1.5, 2.0), samples_per_prompt: int = 16, seed: int = 0,
                 words=T.VOCAB) -> dict[str, Any]:
    """One sampling seed: per scale the reward and confidence (mean, se, 95% CI) and legibility; paired
    differences of the reward between neighbouring scales and w = 2 - w = 1 (same prompts and noise), the shape
    rlg.zoo.digits_eval.verdict reads."""
    from rlg.pairs import load_pair
    from rlg.zoo.digits_eval import _job, generate

    pair = load_pair(_job(PAIR, SAMPLER).pair)
    gen = generate(pair, list(scales), samples_per_prompt, seed, prompts=[T.prompt(w) for w in words], batch=16,
                   sampler=SAMPLER)
    per_scale, values = {}, {}
    for w, g in gen.items():
        r = score(g["images"], g["prompts"])
        values[w] = r
        per_scale[str(w)] = {REWARD: mean_ci(r[REWARD]), "ocr_confidence": mean_ci(r["ocr_confidence"]),
                             **legibility(r[REWARD], r["ocr_confidence"])}
    ws = sorted(values)
    steps = list(zip(ws, ws[1:])) + ([(1.0, 2.0)] if {1.0, 1.5, 2.0} <= set(ws) else [])
    diffs = {f"{b}-{a}": mean_ci(values[b][REWARD] - values[a][REWARD]) for a, b in steps}
    conf_diffs = {f"{b}-{a}": mean_ci(values[b]["ocr_confidence"] - values[a]["ocr_confidence"]) for a, b in steps}
    return {"pair": PAIR, "reward": REWARD, "n_images_per_scale": len(values[ws[0]][REWARD]), "seed": seed,
            "scales": per_scale, "paired_differences": diffs, "paired_confidence_differences": conf_diffs}


def measure_seeds(seeds=(0, 1, 2), scales=(0.0, 0.5, 1.0, 1.5, 2.0), samples_per_prompt: int = 16, log=print
                  ) -> dict[str, Any]:
    """measure_pair at each sampling seed, each run's verdict (rlg.zoo.digits_eval.verdict), and per scale the
    mean and sd over seeds of the reward, the confidence, the exact share and the confidence among exact reads."""
    from rlg.zoo.digits_eval import over_seeds, verdict

    runs = []
    for sd in seeds:
        runs.append(measure_pair(scales, samples_per_prompt, sd))
        log(f"{PAIR} seed {sd}: {verdict(runs[-1])}")
    summary = over_seeds(runs, ((REWARD, lambda v: v[REWARD]["mean"]),
                                ("ocr_confidence", lambda v: v["ocr_confidence"]["mean"]),
                                ("exact", lambda v: v["exact"]),
                                ("confidence_exact", lambda v: (v["confidence_exact"] or {}).get("mean", np.nan))))
    return {"pair": PAIR, "reward": REWARD, "seeds": list(seeds), "summary": summary,
            "verdicts": [verdict(r) for r in runs], "runs": runs}


if __name__ == "__main__":  # python -m rlg.zoo.text_eval OUT.json [samples_per_prompt] [seeds, e.g. 0,1,2]
    import json
    import sys

    out = measure_seeds(seeds=tuple(int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2").split(",")),
                        samples_per_prompt=int(sys.argv[2]) if len(sys.argv) > 2 else 16)
    open(sys.argv[1], "w").write(json.dumps(out, indent=1) + "\n")
