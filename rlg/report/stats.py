"""Statistics over stored results: means with prompt-clustered paired bootstrap intervals, paired win
rates against a reference scale, counts of what each number rests on, and Pareto fronts.

Every function takes the long frame built by ``tidy(images, scores)``: one row per (image, metric)
with the image's run_id, run_name, config_id, pair, prompt_id, sample, seed, scale and a ``status``:
"ok", "nonfinite" (the image had NaN/inf) or "failed" (the evaluator failed on it). ``value`` is NaN
unless the status is "ok", so excluded images never enter a mean; they are counted instead.
A curve ("series") is one (run_name, pair, run_id, config_id): one setting of one run, never pooled.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

SERIES = ["run_name", "pair", "run_id", "config_id"]  # a curve: one setting (config_id) of one run
PAIRING = ["prompt_id", "sample", "seed"]  # one initial noise: the images of one row of a grid
GENEVAL_TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
GENEVAL_METRIC = "geneval_correct"
GENEVAL_OVERALL = "geneval_overall"
SCALE_DECIMALS = 6  # float grids (0.30000000000000004) must still pair up


def canonical_scale(w: float) -> float:
    """``w`` rounded to SCALE_DECIMALS when the difference is float noise (0.1 + 0.2 -> 0.3), else ``w`` as stored:
    scales the store keeps apart (e.g. 1 and 1.0000001, from before the harness refused such grids) stay apart."""
    r = round(float(w), SCALE_DECIMALS)
    return r if abs(r - w) <= 1e-9 else float(w)


def scale_label(w: float) -> str:
    """The shortest text of ``w`` that reads back as ``w`` ("1.5", not "1.50000"; "1.0000001", not "1")."""
    short = f"{w:g}"
    return short if float(short) == w else repr(float(w))


def with_series(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every SERIES column as text ("" where absent); a frame from before the rename
    (``experiment`` instead of ``run_name``) is read as such. The one place series columns are made."""
    out = df.copy()
    if "run_name" not in out.columns and "experiment" in out.columns:  # stores written before the rename
        out = out.rename(columns={"experiment": "run_name"})
    for c in SERIES:
        out[c] = out[c].fillna("").astype(str) if c in out.columns else ""
    return out


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str, needs: str) -> None:
    """Raise ValueError naming the columns of ``columns`` that ``frame`` lacks and what it ``needs``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} frame lacks column(s) {missing}; it needs {needs}")


def _normalise_images(images: pd.DataFrame) -> pd.DataFrame:
    _require(images, ("image_key", "prompt_id", "scale"), "images", "one row per image with image_key, prompt_id, "
             "scale (and run_id, run_name, config_id, pair, sample, seed, nonfinite)")
    img = with_series(images)
    for c in ("sample", "seed"):
        if c not in img.columns:
            img[c] = 0
    img["nonfinite"] = img["nonfinite"].fillna(False).astype(bool) if "nonfinite" in img.columns else False
    img["scale"] = img["scale"].astype(float).map(canonical_scale)
    return img


def _normalise_scores(scores: pd.DataFrame) -> pd.DataFrame:
    _require(scores, ("image_key", "metric", "value"), "scores", "one row per (image, metric) with image_key, "
             "evaluator, version, metric, value, higher_is_better, error")
    sc = scores.copy()
    defaults = {"evaluator": "", "version": "", "higher_is_better": True, "error": None}
    for c, v in defaults.items():
        if c not in sc.columns:
            sc[c] = v
    sc["version"] = sc["version"].fillna("").astype(str)
    sc["metric"] = sc["metric"].astype(str)
    sc = sc.drop_duplicates(["image_key", "evaluator", "version", "metric"], keep="last")
    # One number, one convention: a metric stored under two versions becomes two metrics.
    n_versions = sc.groupby("metric")["version"].nunique()
    multi = sc["metric"].isin(n_versions[n_versions > 1].index)
    sc.loc[multi, "metric"] = sc.loc[multi, "metric"] + " (" + sc.loc[multi, "version"] + ")"
    return sc


def tidy(images: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Join scores to images: one row per (image, metric) with ``status`` and masked ``value``."""
    img = _normalise_images(images)
    sc = _normalise_scores(scores)
    df = sc.merge(img, on="image_key", how="inner", suffixes=("", "_image"))
    value = pd.to_numeric(df["value"], errors="coerce").astype(float)
    error = df["error"]
    has_error = error.notna() & (error.astype(str).str.len() > 0)
    failed = ~np.isfinite(value.to_numpy()) | has_error.to_numpy()
    df["status"] = np.select([df["nonfinite"].to_numpy(), failed], ["nonfinite", "failed"], "ok")
    df["value"] = value.where(df["status"] == "ok")
    df["higher_is_better"] = df["higher_is_better"].astype(bool)
    return df


def counts(images: pd.DataFrame, scores: pd.DataFrame | None = None, *, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (series, metric, scale): images generated, used (n), nonfinite, failed and not yet scored.

    n_unscored > 0 means the evaluator has not reached those images yet (a run still going).
    """
    img = _normalise_images(images)
    if df is None:
        df = tidy(images, scores)
    per_scale = img.groupby(SERIES + ["scale"], as_index=False).agg(
        n_images=("image_key", "size"), n_nonfinite=("nonfinite", "sum"))
    metrics = df[SERIES + ["metric"]].drop_duplicates()
    grid = per_scale.merge(metrics, on=SERIES)  # every scale of a series, for each metric it has
    status = (df[df["status"] != "nonfinite"].groupby(SERIES + ["metric", "scale", "status"]).size()
              .unstack("status", fill_value=0).reindex(columns=["ok", "failed"], fill_value=0).reset_index())
    out = grid.merge(status, on=SERIES + ["metric", "scale"], how="left").fillna({"ok": 0, "failed": 0})
    out = out.rename(columns={"ok": "n", "failed": "n_failed"})
    for c in ("n", "n_failed", "n_images", "n_nonfinite"):
        out[c] = out[c].astype(int)
    out["n_unscored"] = out["n_images"] - out["n_nonfinite"] - out["n"] - out["n_failed"]
    cols = SERIES + ["metric", "scale", "n", "n_images", "n_nonfinite", "n_failed", "n_unscored"]
    return out[cols].sort_values(SERIES + ["metric", "scale"]).reset_index(drop=True)


def _resample_weights(n_clusters: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_clusters) multiplicities of each cluster in each bootstrap resample."""
    idx = rng.integers(0, n_clusters, size=(n_resamples, n_clusters))
    flat = (idx + np.arange(n_resamples)[:, None] * n_clusters).ravel()
    return np.bincount(flat, minlength=n_resamples * n_clusters).reshape(n_resamples, n_clusters)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _percentiles(a: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    q = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: scales with no data
        return np.nanpercentile(a, q, axis=0), np.nanpercentile(a, 100 - q, axis=0)


def _bootstrap_series(d: pd.DataFrame, scales: np.ndarray, n_resamples: int, rng: np.random.Generator,
                      level: float, ref_index: int | None, strata: str | None) -> dict[str, np.ndarray]:
    """Means per scale and their bootstrap distribution for one series and metric (ok rows only).

    Clusters are prompts: all samples/seeds of a prompt move together, and one set of resample
    weights serves every scale, so the distributions are paired across scales.
    """
    prompts, p_idx = np.unique(d["prompt_id"].to_numpy(), return_inverse=True)
    s_idx = np.searchsorted(scales, d["scale"].to_numpy())
    sums = np.zeros((len(prompts), len(scales)))
    cnt = np.zeros((len(prompts), len(scales)))
    np.add.at(sums, (p_idx, s_idx), d["value"].to_numpy())
    np.add.at(cnt, (p_idx, s_idx), 1.0)

    if strata is None:
        groups = [np.arange(len(prompts))]
    else:
        stratum = d.groupby("prompt_id")[strata].first().reindex(prompts).to_numpy()
        groups = [np.flatnonzero(stratum == t) for t in pd.unique(stratum)]
    weights = np.zeros((n_resamples, len(prompts)))
    for g in groups:  # resample within each stratum (GenEval keeps its per-tag composition)
        weights[:, g] = _resample_weights(len(g), n_resamples, rng)

    # Macro mean over strata; a scale missing any stratum has no mean (a partial GenEval is not overall).
    point = np.mean([_ratio(sums[g].sum(0), cnt[g].sum(0)) for g in groups], axis=0)
    boot = np.mean([_ratio(weights[:, g] @ sums[g], weights[:, g] @ cnt[g]) for g in groups], axis=0)
    lo, hi = _percentiles(boot, level)
    out = {"mean": point, "lo": lo, "hi": hi, "n": cnt.sum(0).astype(int), "n_prompts": (cnt > 0).sum(0)}
    if ref_index is None:
        nan = np.full(len(scales), np.nan)
        out.update(delta=nan, delta_lo=nan, delta_hi=nan)
    else:
        out["delta"] = point - point[ref_index]
        out["delta_lo"], out["delta_hi"] = _percentiles(boot - boot[:, [ref_index]], level)
    return out


def bootstrap_ci(df: pd.DataFrame, metric: str, n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 reference_scale: float = 1.0, strata: str | None = None) -> pd.DataFrame:
    """Mean of ``metric`` at each scale with a paired, prompt-clustered percentile bootstrap interval.

    Also the paired difference to ``reference_scale`` (delta, delta_lo, delta_hi). With ``strata``
    (e.g. "tag") the mean is the unweighted mean of per-stratum means (GenEval overall) and prompts
    are resampled within strata. Each series uses ``seed``, so results are reproducible.
    """
    d = with_series(df[df["metric"] == metric])
    rows = []
    for key, g in d.groupby(SERIES, sort=True):
        scales = np.sort(g["scale"].unique())
        ok = g[g["status"] == "ok"]
        if strata is not None:
            ok = ok[ok[strata].notna()]
        ref = np.flatnonzero(np.isclose(scales, reference_scale))
        ref_index = int(ref[0]) if len(ref) and np.isclose(ok["scale"], reference_scale).any() else None
        if ok.empty:
            res = {k: np.full(len(scales), np.nan) for k in ("mean", "lo", "hi", "delta", "delta_lo", "delta_hi")}
            res.update(n=np.zeros(len(scales), int), n_prompts=np.zeros(len(scales), int))
        else:
            rng = np.random.default_rng(seed)
            res = _bootstrap_series(ok, scales, n_resamples, rng, level, ref_index, strata)
        part = pd.DataFrame({"scale": scales, **res})
        for c, v in zip(SERIES, key):
            part.insert(SERIES.index(c), c, v)
        part.insert(3, "metric", metric)
        rows.append(part)
    cols = SERIES + ["metric", "scale", "mean", "lo", "hi", "delta", "delta_lo", "delta_hi", "n", "n_prompts"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def win_rate(df: pd.DataFrame, metric: str, reference_scale: float = 1.0) -> pd.DataFrame:
    """Per series and scale: how often an image beats its paired image at ``reference_scale``.

    Pairs share (prompt_id, sample, seed), i.e. the same initial noise. Ties count half; the
    direction comes from higher_is_better. Pairs with an excluded image on either side are dropped.
    """
    d = with_series(df[df["metric"] == metric])
    cols = SERIES + ["scale", "win_rate", "wins", "ties", "losses", "n_pairs"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    higher = bool(d["higher_is_better"].iloc[0])
    keys = SERIES + PAIRING
    ref = (d[np.isclose(d["scale"], reference_scale)][keys + ["value"]]
           .drop_duplicates(keys).rename(columns={"value": "ref"}))
    m = d.merge(ref, on=keys, how="inner")
    m = m[m["value"].notna() & m["ref"].notna()]
    diff = (m["value"] - m["ref"]) * (1 if higher else -1)
    m = m.assign(wins=(diff > 0).astype(int), ties=(diff == 0).astype(int), losses=(diff < 0).astype(int))
    agg = m.groupby(SERIES + ["scale"], as_index=False)[["wins", "ties", "losses"]].sum()
    every = d[SERIES + ["scale"]].drop_duplicates()  # scales with no pairs yet still get a row
    out = every.merge(agg, on=SERIES + ["scale"], how="left").fillna({"wins": 0, "ties": 0, "losses": 0})
    for c in ("wins", "ties", "losses"):
        out[c] = out[c].astype(int)
    out["n_pairs"] = out["wins"] + out["ties"] + out["losses"]
    out["win_rate"] = _ratio(out["wins"] + 0.5 * out["ties"], out["n_pairs"].astype(float))
    return out[cols].sort_values(SERIES + ["scale"]).reset_index(drop=True)


def pareto_front(x: Sequence[float], y: Sequence[float], x_higher_is_better: bool = True,
                 y_higher_is_better: bool = True) -> np.ndarray:
    """Boolean mask of the non-dominated points: no other point is at least as good on both
    metrics and strictly better on one. Points with NaN are never on the front."""
    xs = np.asarray(x, dtype=float) * (1 if x_higher_is_better else -1)
    ys = np.asarray(y, dtype=float) * (1 if y_higher_is_better else -1)
    finite = np.isfinite(xs) & np.isfinite(ys)
    front = np.zeros(len(xs), dtype=bool)
    for i in np.flatnonzero(finite):
        dominated = finite & (xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i]))
        front[i] = not dominated.any()
    return front


def geneval_tags(df: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 reference_scale: float = 1.0) -> pd.DataFrame:
    """GenEval accuracy per tag and scale (plus tag "overall", the unweighted mean of tag accuracies).

    Needs the ``tag`` column from a GenEval prompt set; returns an empty frame otherwise.
    """
    if "tag" not in df.columns or not (df["metric"] == GENEVAL_METRIC).any():
        return pd.DataFrame(columns=SERIES + ["tag", "scale", "mean", "lo", "hi", "n"])
    d = df[(df["metric"] == GENEVAL_METRIC) & df["tag"].notna()]
    parts = []
    for tag in [t for t in GENEVAL_TAGS if t in set(d["tag"])] + sorted(set(d["tag"]) - set(GENEVAL_TAGS)):
        parts.append(bootstrap_ci(d[d["tag"] == tag], GENEVAL_METRIC, n_resamples, seed, level,
                                  reference_scale).assign(tag=tag))
    parts.append(bootstrap_ci(d, GENEVAL_METRIC, n_resamples, seed, level, reference_scale, strata="tag")
                 .assign(tag="overall"))
    return pd.concat(parts, ignore_index=True).drop(columns="metric")


def summarize(images: pd.DataFrame, scores: pd.DataFrame, n_resamples: int = 1000, seed: int = 0,
              level: float = 0.95, reference_scale: float = 1.0, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (series, metric, scale): mean, interval, paired delta and win rate against
    ``reference_scale``, and the counts each number rests on. Adds ``geneval_overall`` when GenEval
    tags are present. ``df``: ``tidy(images, scores)`` if already built."""
    df = tidy(images, scores) if df is None else df
    cnt = counts(images, df=df)
    meta = df.groupby(SERIES + ["metric"], as_index=False).agg(
        evaluator=("evaluator", "first"), version=("version", "first"), higher_is_better=("higher_is_better", "first"))
    parts = []
    for metric in sorted(df["metric"].unique()):
        ci = bootstrap_ci(df, metric, n_resamples, seed, level, reference_scale)
        wr = win_rate(df, metric, reference_scale)
        parts.append(ci.drop(columns=["n"]).merge(wr, on=SERIES + ["scale"], how="left"))
    if "tag" in df.columns and (df["metric"] == GENEVAL_METRIC).any() and df["tag"].notna().any():
        overall = bootstrap_ci(df[df["tag"].notna()], GENEVAL_METRIC, n_resamples, seed, level, reference_scale,
                               strata="tag").drop(columns=["n"])
        parts.append(overall.assign(metric=GENEVAL_OVERALL))
        gmeta = meta[meta["metric"] == GENEVAL_METRIC].assign(metric=GENEVAL_OVERALL)
        meta = pd.concat([meta, gmeta], ignore_index=True)
        gcnt = cnt[cnt["metric"] == GENEVAL_METRIC].assign(metric=GENEVAL_OVERALL)
        cnt = pd.concat([cnt, gcnt], ignore_index=True)
    cols = (SERIES + ["metric", "evaluator", "version", "higher_is_better", "scale", "mean", "lo", "hi",
                      "delta", "delta_lo", "delta_hi", "win_rate", "wins", "ties", "losses", "n_pairs"]
            + ["n", "n_prompts", "n_images", "n_nonfinite", "n_failed", "n_unscored"])
    if not parts:
        return pd.DataFrame(columns=cols)
    stats = pd.concat(parts, ignore_index=True)
    out = cnt.merge(stats, on=SERIES + ["metric", "scale"], how="left").merge(meta, on=SERIES + ["metric"], how="left")
    out["n_prompts"] = out["n_prompts"].fillna(0).astype(int)
    return out[cols].sort_values(SERIES + ["metric", "scale"]).reset_index(drop=True)


def series_name(series: Sequence) -> str:
    """A series in words: ``run_name / pair (run <run_id>, setting <config_id>)`` with the unset parts left out.
    ``series``: the values of the SERIES columns. run_id names the launch that made the images (meta.json);
    config_id hashes every setting that changes an image (rlg.harness.build), shown by its first 8 characters."""
    parts = dict(zip(SERIES, series))
    name = " / ".join(str(parts[c]) for c in ("run_name", "pair") if parts.get(c))
    ids = ", ".join(f"{label} {str(parts[c])[:n]}" for c, label, n in
                    (("run_id", "run", None), ("config_id", "setting", 8)) if parts.get(c))
    return (f"{name} ({ids})" if name and ids else name or ids) or "results"
