"""The report's first screen: what RLG did in a run, in numbers and one sentence.

    from rlg.report.headline import headlines
    for h in headlines(summary):          # summary: rlg.report.stats.summarize(...)
        print(h.sentence)

Per series: the reward at the base (w=0), at the RL model (w=1) and at the best w; the extrapolation
step (w=2 against w=1, or the largest w above 1) with its paired 95% interval and win rate; what
every other metric did between w=1 and the best w (the quality cost); ``pixel_diversity``, how
varied a prompt's samples are at each w (the diversity cost); and a caution when the
intervals rest on fewer than ``MIN_PROMPTS`` prompts. All numbers are read from the summary frame,
so the headline, the tables and the figures can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rlg.metrics import label as metric_label, pick_reward
from rlg.report.stats import SERIES
from rlg.report.tables import decimals_for

MIN_PROMPTS = 20  # below this, a percentile bootstrap over prompts under-covers (Efron & Tibshirani 1993, ch. 13)


@dataclass
class Point:
    """One metric at one scale: mean and 95% interval."""
    scale: float
    mean: float
    lo: float
    hi: float


@dataclass
class Cost:
    """What a non-reward metric did from w=1 to the best w of the reward (paired difference)."""
    metric: str
    higher_is_better: bool
    base: Point | None
    rl: Point | None
    best: Point | None
    delta: float
    delta_lo: float
    delta_hi: float

    @property
    def verdict(self) -> str:
        """'worse' / 'better' when the paired interval excludes 0, else 'no clear change'."""
        if not (np.isfinite(self.delta_lo) and np.isfinite(self.delta_hi)) or self.delta_lo <= 0 <= self.delta_hi:
            return "no clear change"
        return "better" if (self.delta > 0) == self.higher_is_better else "worse"


@dataclass
class Headline:
    """The first-screen numbers of one series (values of the SERIES columns in ``series``)."""
    series: tuple
    reward: str
    higher_is_better: bool
    base: Point | None
    rl: Point | None
    best: Point | None
    step: dict | None  # {"scale", "delta", "delta_lo", "delta_hi", "win_rate", "n_pairs"}: w vs w=1
    costs: list[Cost] = field(default_factory=list)
    n_images: int = 0
    n_prompts: int = 0
    best_delta: tuple[float, float, float] = (np.nan, np.nan, np.nan)  # best w vs w=1: delta, lo, hi
    scales: tuple[float, ...] = ()  # the scales with a scored reward

    @property
    def best_is_rl(self) -> bool:
        """The best w is the RL model itself (w=1): there is no "best w vs w=1" to show."""
        return self.best is not None and np.isclose(self.best.scale, 1.0)

    @property
    def caution(self) -> str | None:
        if self.n_prompts >= MIN_PROMPTS or self.best is None:
            return None
        return (f"Caution: these intervals rest on {self.n_prompts} prompt(s), fewer than {MIN_PROMPTS}; a "
                "bootstrap over so few prompts is too narrow and moves from run to run. Use more prompts "
                "(prompts.max_prompts) before quoting them.")

    @property
    def sentence(self) -> str:
        """One sentence a person can quote (numbers rounded as in the tables). It says what is missing
        instead of comparing what was not run: no scored reward, a single scale, no w=0 or no w=1."""
        dec = decimals_for([p.mean for p in (self.base, self.rl, self.best) if p is not None])
        f = lambda x: f"{x:.{dec}f}"  # noqa: E731
        name = metric_label(self.reward)
        counts = f" ({self.n_images} images per scale, {self.n_prompts} prompts)."
        if self.best is None:
            return (f"{name}, the reward, has no scored image in this series, so there is no headline: run "
                    "stage=evaluate with the evaluator that scores it, or name another metric with report.reward.")
        if len(self.scales) == 1:
            w = self.best.scale
            who = " (the base model)" if w == 0 else " (the RL model)" if self.best_is_rl else ""
            return (f"Only one scale was run: {name} is {f(self.best.mean)} at w={w:g}{who}; what RLG does needs "
                    f"w=0, w=1 and the scales to compare, e.g. grid.scales=[0,1,1.5,2]" + counts)
        if self.base is not None and self.rl is not None:
            text = (f"{name} is {f(self.base.mean)} for the base model (w=0) and {f(self.rl.mean)} for the RL model "
                    "(w=1)")
        elif self.base is not None:
            text = f"{name} is {f(self.base.mean)} for the base model (w=0); the RL model (w=1) was not run"
        elif self.rl is not None:
            text = f"{name} is {f(self.rl.mean)} for the RL model (w=1); the base model (w=0) was not run"
        else:
            text = (f"{name} was scored at w={', '.join(f'{w:g}' for w in self.scales)} only (neither the base "
                    "model, w=0, nor the RL model, w=1)")
        if self.best_is_rl:
            text += "; no other scale beats the RL model"
        else:
            text += f"; the best RLG scale is w={self.best.scale:g} ({f(self.best.mean)})"
        if self.step is not None:
            s = self.step
            text += (f"; w={s['scale']:g} vs w=1: {s['delta']:+.{dec}f} [{s['delta_lo']:+.{dec}f}, "
                     f"{s['delta_hi']:+.{dec}f}], better on {100 * s['win_rate']:.0f}% of paired images")
        if self.rl is None:
            return text + ". Without w=1 there is no paired comparison with the RL model: add 1 to grid.scales" + counts
        worse = [c for c in self.costs if c.verdict == "worse"]
        if worse and not self.best_is_rl:
            text += (f". At w={self.best.scale:g} against w=1 it costs " + ", ".join(
                f"{metric_label(c.metric)} {_fmt_pair(c)}" for c in worse))
        elif self.costs and not self.best_is_rl:
            text += f". No other metric is clearly worse at w={self.best.scale:g} than at w=1"
        return text + counts


def _fmt_pair(c: Cost) -> str:
    dec = decimals_for([p.mean for p in (c.rl, c.best) if p is not None])
    return f"{c.rl.mean:.{dec}f} → {c.best.mean:.{dec}f}" if c.rl and c.best else f"{c.delta:+.{dec}f}"


def _point(g: pd.DataFrame, scale: float) -> Point | None:
    r = g[np.isclose(g["scale"].astype(float), scale)]
    if r.empty or not np.isfinite(float(r["mean"].iloc[0])):
        return None
    r = r.iloc[0]
    return Point(float(r["scale"]), float(r["mean"]), float(r["lo"]), float(r["hi"]))


def headlines(summary: pd.DataFrame, reward: str | None = None, reference_scale: float = 1.0,
              step_scale: float = 2.0, run_rewards: dict[str, str] | None = None) -> list[Headline]:
    """One Headline per series of ``summary`` (``rlg.report.stats.summarize``), for the ``reward``
    metric (the run's, decided at build time; ``rlg.metrics.pick_reward`` when None). The extrapolation step
    is ``step_scale`` against
    ``reference_scale`` when both were run, else the largest scale above the reference.
    ``run_rewards``: {run_id: reward} for runs that optimise different rewards (a comparison).
    Raises rlg.metrics.RewardError when ``reward`` is not in the summary."""
    if summary.empty:
        return []
    default = pick_reward(summary["metric"].unique(), reward)
    out = []
    for series, g in summary.groupby(SERIES, sort=True):
        run_reward = (run_rewards or {}).get(dict(zip(SERIES, series))["run_id"])
        reward = run_reward if run_reward in set(g["metric"]) else default
        r = g[(g["metric"] == reward) & np.isfinite(g["mean"].astype(float))].sort_values("scale")
        if r.empty:  # this series has no scored reward: a headline that says so, not a silent gap
            out.append(Headline(tuple(series), reward, True, None, None, None, None))
            continue
        higher = bool(r["higher_is_better"].iloc[0])
        best_row = r.loc[r["mean"].astype(float).idxmax() if higher else r["mean"].astype(float).idxmin()]
        best = _point(r, float(best_row["scale"]))
        above = sorted(s for s in r["scale"].astype(float) if s > reference_scale)
        step = None
        if above:
            w = step_scale if any(np.isclose(above, step_scale)) else above[-1]
            s = r[np.isclose(r["scale"].astype(float), w)].iloc[0]
            if np.isfinite(float(s["delta"])):
                step = {"scale": w, "delta": float(s["delta"]), "delta_lo": float(s["delta_lo"]),
                        "delta_hi": float(s["delta_hi"]), "win_rate": float(s["win_rate"]),
                        "n_pairs": int(s["n_pairs"]) if np.isfinite(float(s["n_pairs"])) else 0}
        costs = []
        for metric, m in g[g["metric"] != reward].groupby("metric", sort=True):
            at_best = m[np.isclose(m["scale"].astype(float), best.scale)]
            d = at_best.iloc[0] if len(at_best) else None
            costs.append(Cost(metric, bool(m["higher_is_better"].iloc[0]), _point(m, 0.0), _point(m, reference_scale),
                              _point(m, best.scale),
                              *(float(d[c]) if d is not None else np.nan for c in ("delta", "delta_lo", "delta_hi"))))
        out.append(Headline(tuple(series), reward, higher, _point(r, 0.0), _point(r, reference_scale), best, step,
                            costs, n_images=int(best_row["n"]), n_prompts=int(best_row["n_prompts"]),
                            best_delta=tuple(float(best_row[c]) for c in ("delta", "delta_lo", "delta_hi")),
                            scales=tuple(float(w) for w in r["scale"])))
    return out


DIVERSITY_PX = 32  # images are compared as DIVERSITY_PX x DIVERSITY_PX greyscale thumbnails


def pixel_diversity(images: pd.DataFrame) -> pd.DataFrame:
    """How different the samples of one prompt are at each scale: per (series, scale), the mean over
    prompts of the mean pairwise RMS distance (0-1 on [0, 1] intensities) between the prompt's
    samples, as DIVERSITY_PX greyscale thumbnails (a plain pixel distance: it falls when a reward
    collapses the samples onto one picture; it is no perceptual metric). Images flagged nonfinite or
    whose file cannot be read are left out; a prompt needs two samples. Columns: SERIES + ["scale",
    "diversity", "n_prompts"]. ``images``: rows with image_path, prompt_id, sample, scale."""
    from PIL import Image

    from rlg.report.stats import _normalise_images

    img = _normalise_images(images)
    if "image_path" not in img.columns:
        return pd.DataFrame(columns=SERIES + ["scale", "diversity", "n_prompts"])
    img = img[~img["nonfinite"]]
    rows = []
    for key, g in img.groupby(SERIES + ["scale"], sort=True):
        per_prompt = []
        for _, p in g.groupby("prompt_id"):
            arrays = []
            for path in p["image_path"]:
                try:
                    with Image.open(path) as im:
                        arrays.append(np.asarray(im.convert("L").resize((DIVERSITY_PX, DIVERSITY_PX)), float) / 255)
                except (OSError, ValueError, TypeError, AttributeError):
                    continue
            if len(arrays) < 2:
                continue
            x = np.stack(arrays).reshape(len(arrays), -1)
            d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).mean(-1))
            per_prompt.append(d[np.triu_indices(len(x), 1)].mean())
        if per_prompt:
            rows.append([*key, float(np.mean(per_prompt)), len(per_prompt)])
    return pd.DataFrame(rows, columns=SERIES + ["scale", "diversity", "n_prompts"])
