"""Measurements of the compositional zoo pair: the zoo_digits detector on scenes with known ground truth, and RLG
control of GenEval accuracy (per tag and overall) at sampling seeds.

``measure_detector`` composes held-out scenes (``rlg.zoo.geneval.dataset`` on the held-out digit split, never seen by
the classifier or the generator), runs the GenEval evaluator with ``detector=zoo_digits`` and compares:
  per class   precision = TP / detections kept (score > GenEval's 0.3), recall = TP / ground-truth digits, where a
              detection is a TP when its box overlaps an unmatched ground-truth box of the same class with IoU >= 0.5
              (greedy by score; boxes with exclusive ends, plain areas);
  counting    share of counting scenes whose kept detections (score > 0.9, GenEval's counting threshold) of the
              asked class number exactly the truth (2);
  position    share of position scenes where the kept detections of both classes exist and GenEval's
              relative_position of the placed digit to the target includes the asked relation;
  geneval     share of scenes GenEval judges correct, per tag and overall: the reward's ceiling on real scenes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive ends."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth: list[tuple[str, tuple]], dets: list, iou: float = 0.5) -> tuple[int, int, int, dict]:
    """Greedy matching of detections (highest score first) to ground truth of the same class.
    Returns (tp, fp, fn, per-class {name: [tp, fp, fn]})."""
    per: dict[str, list[int]] = {}
    used = [False] * len(truth)
    for d in sorted(dets, key=lambda d: -d.score):
        hit = next((i for i, (c, b) in enumerate(truth)
                    if not used[i] and c == d.classname and box_iou(b, d.box) >= iou), None)
        if hit is None:
            per.setdefault(d.classname, [0, 0, 0])[1] += 1
        else:
            used[hit] = True
            per.setdefault(d.classname, [0, 0, 0])[0] += 1
    for (c, _), u in zip(truth, used):
        if not u:
            per.setdefault(c, [0, 0, 0])[2] += 1
    tp, fp, fn = (sum(v[k] for v in per.values()) for k in range(3))
    return tp, fp, fn, per


def measure_detector(n: int = 400, seed: int = 0, split: str = "test") -> dict[str, Any]:
    """The zoo_digits detector on ``n`` composed scenes of ``split`` (see the module docstring); returns
    {"per_class": {digit: {precision, recall, n_truth}}, "precision", "recall", "count_accuracy",
    "position_accuracy", "geneval": {tag: accuracy, "overall": mean over tags}, "n", "seed", "split"}."""
    from PIL import Image

    from rlg.evaluators.base import Sample
    from rlg.evaluators.geneval import GenEval, relative_position, select_objects
    from rlg.evaluators.geneval.rules import COUNTING_THRESHOLD, THRESHOLD
    from rlg.zoo import geneval as G

    images, idx, truths = G.dataset(n, seed, split=split)
    rows = G.rows()
    ev = GenEval(detector="zoo_digits", device="cpu")
    samples = [Sample(str(k), Image.fromarray(im), rows[i]["prompt"], rows[i]) for k, (im, i) in enumerate(zip(images, idx))]
    detections = ev.detector().detect([s.image for s in samples])
    judged = [ev.judge_detections(s.image, rows[i], d) for s, i, d in zip(samples, idx, detections)]
    per: dict[str, list[int]] = {}
    counts, positions = [], []
    for i, truth, dets in zip(idx, truths, detections):
        row = rows[i]
        kept = [d for d in dets if d.score > THRESHOLD]
        for c, v in match(truth, kept)[3].items():
            acc = per.setdefault(c, [0, 0, 0])
            for k in range(3):
                acc[k] += v[k]
        if row["tag"] == "counting":
            cls = row["include"][0]["class"]
            counts.append(sum(d.classname == cls and d.score > COUNTING_THRESHOLD for d in dets) == len(truth))
        if row["tag"] == "position":
            objs = select_objects(dets, "position")
            target, placed = row["include"][0]["class"], row["include"][1]["class"]
            ok = target in objs and placed in objs and \
                row["include"][1]["position"][0] in relative_position(objs[placed][0], objs[target][0])
            positions.append(ok)
    tags = {t: [j.correct for j, i in zip(judged, idx) if rows[i]["tag"] == t] for t in G.TAGS}
    geneval = {t: float(np.mean(v)) for t, v in tags.items()}
    geneval["overall"] = float(np.mean(list(geneval.values())))
    tp, fp, fn = (sum(v[k] for v in per.values()) for k in range(3))
    return {"per_class": {c: {"precision": v[0] / max(v[0] + v[1], 1), "recall": v[0] / max(v[0] + v[2], 1),
                              "n_truth": v[0] + v[2]} for c, v in sorted(per.items())},
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "count_accuracy": float(np.mean(counts)), "n_counting": len(counts),
            "position_accuracy": float(np.mean(positions)), "n_position": len(positions),
            "geneval": geneval, "n": n, "seed": seed, "split": split, "detector": ev.detector().version}




# ---------------------------------------------------------------------------------------------
# The pair: GenEval correctness per tag at RLG scales (the harness's sampler preset and grid loop)
# ---------------------------------------------------------------------------------------------
PAIR, SAMPLER, REWARD = "zoo_geneval_flowgrpo", "zoo_geneval_ode", "geneval_overall"


def score(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """float64 (N,) geneval_correct of each image (GenEval with detector=zoo_digits, through the evaluators' loop
    rlg.evaluators.base.score_images; each prompt's metadata row from rlg.zoo.geneval.rows()). Raises RuntimeError
    when an image fails."""
    from rlg.evaluators.base import score_images
    from rlg.evaluators.geneval import GenEval
    from rlg.zoo import geneval as G

    meta = {r["prompt"]: r for r in G.rows()}
    scored = score_images(GenEval(detector="zoo_digits", device="cpu"), images, prompts,
                          [meta[p] for p in prompts], batch_size=64)
    if scored.failed:
        first = next(e for errs in scored.errors.values() for e in errs if e)
        raise RuntimeError(f"GenEval failed on {scored.failed} images, e.g. {first}")
    return np.asarray(scored["geneval_correct"], dtype=np.float64)


def tag_summary(values: np.ndarray, tags: list[str]) -> dict[str, dict[str, float]]:
    """Per tag mean_ci of ``values`` (N,), and "overall": GenEval's unweighted mean over the tags, with the se of a
    mean of independent tag means (sqrt(sum se_t^2) / n_tags) and its normal 95% interval."""
    from rlg.kl_stats import mean_ci, normal_interval

    tags_arr = np.asarray(tags)
    out = {t: mean_ci(values[tags_arr == t]) for t in dict.fromkeys(tags)}
    m = float(np.mean([v["mean"] for v in out.values()]))
    se = float(np.sqrt(sum(v["se"] ** 2 for v in out.values())) / len(out))
    lo, hi = normal_interval(m, se)
    out["overall"] = {"mean": round(m, 5), "se": round(se, 5), "lo": round(lo, 5), "hi": round(hi, 5),
                      "n": int(len(values))}
    return out


def legibility(images: np.ndarray, prompts: list[str]) -> dict[str, float]:
    """How readable one scale's images (uint8 (N, H, W, 3)) are to the zoo_digits detector: ``layout`` (share of
    images with as many detections as the prompt's digits), ``mean_read`` (mean classifier probability of the
    detections), ``read_gt_0.9`` (share of detections read with probability > 0.9) and ``ink`` (mean ink share of
    the canvas, 1 - grey / 255)."""
    from PIL import Image

    from rlg.evaluators.geneval.detectors import build_detector
    from rlg.zoo import geneval as G

    rows = {r["prompt"]: r for r in G.rows()}
    dets = build_detector("zoo_digits").detect([Image.fromarray(im) for im in images])
    scores = np.array([d.score for ds in dets for d in ds])
    want = [sum(c["count"] for c in rows[p]["include"]) for p in prompts]
    return {"layout": round(float(np.mean([len(ds) == n for ds, n in zip(dets, want)])), 4),
            "mean_read": round(float(scores.mean()), 4) if len(scores) else float("nan"),
            "read_gt_0.9": round(float((scores > 0.9).mean()), 4) if len(scores) else float("nan"),
            "ink": round(float(np.mean(255 - images.astype(np.float64)) / 255), 4)}


def transitions(a: np.ndarray, b: np.ndarray, tags: list[str]) -> dict[str, dict[str, float]]:
    """Per-image outcome changes between two scales of the same images (same prompt, sample and noise): ``a``, ``b``
    float (N,) GenEval correctness (0/1) at the lower and higher scale, ``tags`` (N,) their prompts' tags. Per tag and
    "all": ``n``; ``kept`` (1 -> 1), ``lost`` (1 -> 0), ``gained`` (0 -> 1), ``stayed_wrong`` (0 -> 0) counts;
    ``flip_share`` = (gained + lost) / n; ``net`` = (gained - lost) / n (the paired difference of the means);
    ``gain_share`` = gained / (gained + lost), NaN without flips, with its exact (Clopper-Pearson) 95% interval
    ``gain_lo``/``gain_hi`` and the two-sided exact binomial (McNemar) p of gain_share = 0.5 (``p_mcnemar``, 1.0 without
    flips). A move that is mostly noise flips many images with gain_share near 0.5; a directed one has gain_share
    near 1 (or 0). Raises ValueError for values other than 0/1 or mismatched lengths."""
    from scipy.stats import binomtest

    a, b, tags_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), np.asarray(tags)
    if not (a.shape == b.shape == tags_arr.shape and a.ndim == 1):
        raise ValueError(f"a, b and tags must be 1-D of one length, got {a.shape}, {b.shape}, {tags_arr.shape}")
    if not np.isin(a, (0.0, 1.0)).all() or not np.isin(b, (0.0, 1.0)).all():
        raise ValueError("a and b must hold GenEval correctness values 0 or 1")
    out = {}
    for t in [*dict.fromkeys(tags_arr.tolist()), "all"]:
        m = np.ones(len(a), bool) if t == "all" else tags_arr == t
        x, y = a[m], b[m]
        gained, lost = int(((x == 0) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())
        flips = gained + lost
        test = binomtest(gained, flips) if flips else None
        ci = test.proportion_ci(method="exact") if test else None
        out[t] = {"n": int(m.sum()), "kept": int(((x == 1) & (y == 1)).sum()), "lost": lost, "gained": gained,
                  "stayed_wrong": int(((x == 0) & (y == 0)).sum()), "flip_share": round(flips / m.sum(), 5),
                  "net": round((gained - lost) / m.sum(), 5),
                  "gain_share": round(gained / flips, 5) if flips else float("nan"),
                  "gain_lo": round(ci.low, 5) if ci else float("nan"),
                  "gain_hi": round(ci.high, 5) if ci else float("nan"),
                  "p_mcnemar": round(test.pvalue, 5) if test else 1.0}
    return out


def redraw_disagreement(correct: np.ndarray, prompts: list[str]) -> float:
    """The share of pairs of images of one prompt, drawn from independent noise, whose GenEval outcomes differ,
    averaged over the prompts: per prompt with k correct of m images, 2 k (m - k) / (m (m - 1)) (the unbiased estimate
    of 2 p (1 - p)). ``correct`` float (N,) 0/1, ``prompts`` (N,). The flip share expected if a change of scale
    redrew each image's outcome at random (keeping each prompt's accuracy); raises ValueError for a prompt with
    fewer than 2 images."""
    correct, prompts_arr = np.asarray(correct, dtype=np.float64), np.asarray(prompts)
    per = []
    for p in dict.fromkeys(prompts_arr.tolist()):
        v = correct[prompts_arr == p]
        if len(v) < 2:
            raise ValueError(f"prompt {p!r} has {len(v)} image(s); need at least 2")
        k, m = v.sum(), len(v)
        per.append(2 * k * (m - k) / (m * (m - 1)))
    return float(np.mean(per))


def image_diagnostics(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """What the zoo_digits detector and GenEval's rules see in each image (uint8 (N, H, W, 3)); per image, (N,):
    ``n_det`` detections, ``n_want`` digits the prompt asks for, ``merged`` ink components wider than the detector's
    split_ratio x their height (touching digits it had to cut), ``read`` mean classifier probability of the detections
    (NaN when none), ``ink`` ink share of the canvas (1 - grey / 255, in [0, 1]), ``stroke`` mean stroke width in px
    (2 x area / perimeter of the ink mask ink > rlg.zoo.geneval.INK_LEVEL, perimeter = 4-neighbour pixel edges between
    ink and paper or the border: w L / (w + L) for one w x L bar, -> w for long strokes), and ``failure`` (str): ""
    when GenEval judges the image correct, else "count" (detections != digits asked: merged, missing or extra
    digits), "score" (right digits, but one read at or below GenEval's threshold for the tag: 0.3, 0.9 for counting),
    "position" (right digits, wrong relation) or "class" (as many detections as asked, but a digit read as another
    class); ``drawn`` (str), for prompts naming two different digits (two_object, position; first / second as named
    in the prompt), what the detector read ignoring scores: "both" (the two digits, in any order), "first twice",
    "second twice", "one" (one of them and another digit or nothing) or "other"; "" for the other prompts."""
    import cv2
    from PIL import Image

    from rlg.evaluators.geneval.detectors import build_detector
    from rlg.evaluators.geneval.digit_detector import ink_map
    from rlg.evaluators.geneval.rules import evaluate_detections
    from rlg.zoo import geneval as G

    rows = {r["prompt"]: r for r in G.rows()}
    det = build_detector("zoo_digits")
    pil = [Image.fromarray(im) for im in images]
    found = det.detect(pil)
    out: dict[str, list] = {k: [] for k in ("n_det", "n_want", "merged", "read", "ink", "stroke", "failure", "drawn")}
    no_colour = lambda *_: []  # noqa: E731  (the rows have no colour clause)
    for im, p, dets in zip(pil, prompts, found):
        row, ink = rows[p], ink_map(im)
        mask = ink > G.INK_LEVEL
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
        n, labels = cv2.connectedComponents(grown, connectivity=8)
        merged = 0
        for k in range(1, n):
            ys, xs = np.nonzero(mask & (labels == k))
            wide = len(xs) and (xs.max() - xs.min() + 1) > det.split_ratio * (ys.max() - ys.min() + 1)
            merged += bool(len(xs) >= det.min_area and wide)
        padded = np.pad(mask, 1)
        edges = int((padded[1:, :] != padded[:-1, :]).sum() + (padded[:, 1:] != padded[:, :-1]).sum())
        want = sum(c["count"] for c in row["include"])
        correct = evaluate_detections(row, dets, no_colour)[0]
        if correct:
            kind = ""
        elif len(dets) != want:
            kind = "count"
        else:
            ok_unscored, why = evaluate_detections(row, dets, no_colour, threshold=0.0, counting_threshold=0.0)
            kind = "score" if ok_unscored else "position" if "target" in why else "class"
        out["n_det"].append(len(dets))
        out["n_want"].append(want)
        out["merged"].append(int(merged))
        out["read"].append(float(np.mean([d.score for d in dets])) if dets else float("nan"))
        out["ink"].append(float(np.mean(255 - np.asarray(im, dtype=np.float64)) / 255))
        out["stroke"].append(2 * mask.sum() / edges if edges else 0.0)
        out["failure"].append(kind)
        named = [int(w) for w in p.split() if w.isdigit()]  # "a 3 left of a 7" -> [3, 7]
        got = sorted(d.classname for d in dets)
        first, second = (str(v) for v in named[:2]) if len(named) == 2 else ("", "")
        out["drawn"].append("" if len(named) != 2 else "both" if got == sorted([first, second]) else
                            "first twice" if got == [first, first] else "second twice" if got == [second, second]
                            else "one" if {first, second} & set(got) else "other")
    return {k: np.asarray(v) for k, v in out.items()}


def _load(base=None, rl=None):
    """The loaded pair: the shipped preset pair=zoo_geneval_flowgrpo with its own sampler, or the directories of a
    retrained base / rl."""
    from rlg.pairs import load_pair
    from rlg.zoo import geneval as G
    from rlg.zoo.digits_eval import pair_spec

    return load_pair(pair_spec(PAIR, sampler=SAMPLER) if base is None else G.pair_spec(base, rl))


def _sample_scored(pair, scales, samples_per_prompt: int, seed: int, batch: int):
    """(generate's {scale: {"images", "prompts"}}, {scale: GenEval correctness float (N,)}) for every prompt of
    rlg.zoo.geneval at sampling seed ``seed``, the same noise at every scale (the harness's grid loop)."""
    from rlg.zoo import geneval as G
    from rlg.zoo.digits_eval import generate

    gen = generate(pair, list(scales), samples_per_prompt, seed, prompts=list(G.PROMPTS), batch=batch,
                   sampler=SAMPLER)
    return gen, {w: score(g["images"], g["prompts"]) for w, g in gen.items()}


def measure_pair(scales=(0.0, 1.0, 2.0), samples_per_prompt: int = 4, seed: int = 0, base=None, rl=None,
                 batch: int = 48) -> dict[str, Any]:
    """One sampling seed: per scale GenEval accuracy per tag and overall (tag_summary) and legibility, and the paired
    differences (same prompt, sample and initial noise) between neighbouring scales, per tag and overall. ``base``/``rl``:
    directories of a retrained pair (default: the shipped preset pair=zoo_geneval_flowgrpo)."""
    from rlg.zoo import geneval as G

    gen, values = _sample_scored(_load(base, rl), scales, samples_per_prompt, seed, batch)
    tag_of = {r["prompt"]: r["tag"] for r in G.rows()}
    tags = [tag_of[p] for p in gen[float(scales[0])]["prompts"]]
    ws = sorted(values)
    return {"pair": PAIR, "reward": REWARD, "seed": seed, "samples_per_prompt": samples_per_prompt,
            "n_images_per_scale": len(tags), "scales": {str(w): tag_summary(values[w], tags) for w in ws},
            "paired_differences": {f"{b}-{a}": tag_summary(values[b] - values[a], tags) for a, b in zip(ws, ws[1:])},
            "legibility": {str(w): legibility(gen[w]["images"], gen[w]["prompts"]) for w in ws},
            "images": {w: g["images"] for w, g in gen.items()}}


def summarise_extrapolation(runs: list[dict[str, Any]], real_seed: int = 0) -> dict[str, Any]:
    """Where the images move between RLG scales, pooled over sampling seeds. ``runs``: per seed {"seed", "prompts"
    (N,), "correct" {scale: float (N,) 0/1}, "images" {scale: uint8 (N, H, W, 3)}}, the same prompts and scales in
    each. Returns (JSON-able): ``accuracy`` per scale and tag (mean over seeds); ``accuracy_pooled`` (mean_ci of each
    tag's images, all seeds); ``paired`` per neighbouring scales and "2.0-1.0": per tag and overall the per-seed
    tag_summary means and se, and the pooled mean of the seeds with se = sqrt(sum se^2) / n_seeds and its normal 95%
    interval; ``transitions`` (the same pairs, images pooled); ``redraw`` (redraw_disagreement per scale, per tag and
    "all", all seeds' images of a prompt); ``diagnostics`` per scale and for "real" scenes (one
    rlg.zoo.geneval.scene of the train split per generated image's prompt, rng seed ``real_seed``): mean_ci of layout
    (n_det == n_want), merged (> 0), read, ink, stroke (px), and per tag the counts of each failure kind and drawn
    pair (image_diagnostics); ``diagnostics_paired``: mean_ci of the per-image change of ink, stroke and read between
    neighbouring scales, and for two_object and position of the indicators drawn == "both" / "first twice" /
    "second twice"."""
    from rlg.kl_stats import mean_ci, normal_interval
    from rlg.zoo import geneval as G

    tag_of, row_of = {r["prompt"]: r["tag"] for r in G.rows()}, {r["prompt"]: r for r in G.rows()}
    scales = sorted(runs[0]["correct"])
    pairs = [*zip(scales, scales[1:]), *([(1.0, 2.0)] if {1.0, 2.0} <= set(scales) and 1.5 in scales else [])]
    tags = [[tag_of[p] for p in r["prompts"]] for r in runs]
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "images_per_scale_and_seed": len(runs[0]["prompts"])}
    out["accuracy"] = {str(w): {t: round(float(np.mean([tag_summary(r["correct"][w], tg)[t]["mean"]
                                                        for r, tg in zip(runs, tags)])), 5)
                                for t in [*G.TAGS, "overall"]} for w in scales}
    out["paired"] = {}
    for a, b in pairs:
        per = [tag_summary(r["correct"][b] - r["correct"][a], tg) for r, tg in zip(runs, tags)]
        res = {}
        for t in [*G.TAGS, "overall"]:
            m, se = float(np.mean([q[t]["mean"] for q in per])), float(np.sqrt(sum(q[t]["se"] ** 2 for q in per)))
            lo, hi = normal_interval(m, se / len(per))
            res[t] = {"per_seed": [q[t]["mean"] for q in per], "per_seed_se": [q[t]["se"] for q in per],
                      "pooled": round(m, 5), "se": round(se / len(per), 5), "lo": round(lo, 5), "hi": round(hi, 5)}
        out["paired"][f"{b}-{a}"] = res
    prompts, tg = sum((list(r["prompts"]) for r in runs), []), np.asarray(sum(tags, []))
    correct = {w: np.concatenate([r["correct"][w] for r in runs]) for w in scales}
    out["accuracy_pooled"] = {str(w): {t: mean_ci(correct[w][tg == t]) for t in G.TAGS} for w in scales}
    out["transitions"] = {f"{a}->{b}": transitions(correct[a], correct[b], list(tg)) for a, b in pairs}
    out["redraw"] = {str(w): {t: round(redraw_disagreement(correct[w][tg == t], list(np.asarray(prompts)[tg == t])), 5)
                              for t in G.TAGS} | {"all": round(redraw_disagreement(correct[w], prompts), 5)}
                     for w in scales}
    rng = np.random.default_rng(real_seed)
    diag = {str(w): image_diagnostics(np.concatenate([r["images"][w] for r in runs]), prompts) for w in scales}
    diag["real"] = image_diagnostics(np.stack([G.scene(row_of[p], rng)[0] for p in prompts]), prompts)
    out["diagnostics"] = {k: {"layout": mean_ci((d["n_det"] == d["n_want"]).astype(float)),
                              "merged": mean_ci((d["merged"] > 0).astype(float)),
                              "read": mean_ci(d["read"][np.isfinite(d["read"])]), "ink": mean_ci(d["ink"]),
                              "stroke": mean_ci(d["stroke"]),
                              "failure": {t: {f: int(((d["failure"] == f) & (tg == t)).sum())
                                              for f in ("count", "score", "position", "class")} for t in G.TAGS},
                              "drawn": {t: {f: int(((d["drawn"] == f) & (tg == t)).sum())
                                            for f in ("both", "first twice", "second twice", "one", "other")}
                                        for t in ("two_object", "position")}} for k, d in diag.items()}
    out["diagnostics_paired"] = {}
    for a, b in pairs:
        da, db = diag[str(a)], diag[str(b)]
        ok = np.isfinite(da["read"]) & np.isfinite(db["read"])
        res = {k: mean_ci((db[k] - da[k])[ok if k == "read" else slice(None)]) for k in ("ink", "stroke", "read")}
        for t in ("two_object", "position"):
            res[t] = {f: mean_ci((db["drawn"][tg == t] == f).astype(float) - (da["drawn"][tg == t] == f))
                      for f in ("both", "first twice", "second twice")}
        out["diagnostics_paired"][f"{b}-{a}"] = res
    return out


def measure_extrapolation(seeds=(3, 4, 5), scales=(0.0, 1.0, 1.5, 2.0), samples_per_prompt: int = 4, base=None,
                          rl=None, batch: int = 48, log=print) -> dict[str, Any]:
    """measure_pair's sampling (the harness's grid loop, sampler zoo_geneval_ode, the same noise at every scale) and
    GenEval scoring at each sampling seed, then summarise_extrapolation over the seeds (see there)."""
    pair = _load(base, rl)
    runs = []
    for sd in seeds:
        gen, correct = _sample_scored(pair, scales, samples_per_prompt, sd, batch)
        runs.append({"seed": sd, "prompts": gen[float(scales[0])]["prompts"], "correct": correct,
                     "images": {w: g["images"] for w, g in gen.items()}})
        log(f"{PAIR} seed {sd}: GenEval images correct " + ", ".join(f"w={w} {v.mean():.3f}"
                                                                      for w, v in runs[-1]["correct"].items()))
    return summarise_extrapolation(runs)


def measure_seeds(seeds=(0, 1, 2), scales=(0.0, 1.0, 2.0), samples_per_prompt: int = 4, base=None, rl=None,
                  log=print) -> dict[str, Any]:
    """measure_pair at each sampling seed (images dropped), and the verdict per tag and overall: for each
    neighbouring pair of scales, at how many seeds the paired 95% interval lies above 0 / below 0."""
    runs = []
    for sd in seeds:
        run = measure_pair(scales, samples_per_prompt, sd, base, rl)
        run.pop("images")
        runs.append(run)
        log(f"{PAIR} seed {sd}: " + ", ".join(f"{k} {v['overall']['mean']:+.3f} [{v['overall']['lo']:+.3f}, "
                                              f"{v['overall']['hi']:+.3f}]" for k, v in run["paired_differences"].items()))
    verdict = {}
    for k in runs[0]["paired_differences"]:
        verdict[k] = {t: {"above_0": sum(r["paired_differences"][k][t]["lo"] > 0 for r in runs),
                          "below_0": sum(r["paired_differences"][k][t]["hi"] < 0 for r in runs)}
                      for t in runs[0]["paired_differences"][k]}
    return {"pair": PAIR, "reward": REWARD, "seeds": list(seeds), "verdict": verdict, "runs": runs}


if __name__ == "__main__":
    # python -m rlg.zoo.geneval_eval detector [n] | pair OUT.json [samples] [seeds 0,1,2]
    #                                 | extrapolation OUT.json [seeds 3,4,5]
    if sys.argv[1] == "detector":
        print(json.dumps(measure_detector(int(sys.argv[2]) if len(sys.argv) > 2 else 400), indent=1))
    elif sys.argv[1] == "extrapolation":
        seeds = tuple(int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "3,4,5").split(","))
        res = measure_extrapolation(seeds=seeds)
        open(sys.argv[2], "w").write(json.dumps(res, indent=1, default=float) + "\n")
    else:
        res = measure_seeds(seeds=tuple(int(s) for s in (sys.argv[4] if len(sys.argv) > 4 else "0,1,2").split(",")),
                            samples_per_prompt=int(sys.argv[3]) if len(sys.argv) > 3 else 4)
        open(sys.argv[2], "w").write(json.dumps(res, indent=1) + "\n")
