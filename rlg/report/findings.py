"""The findings table: claims about RLG against weight mixing, CFG, best-of-N, RLG-FKC and FK steering, decided over pairs and sampling
seeds by one rule (``rlg.verdicts``).

Input: per (pair, seed) one run directory of a methods run (``rlg.harness.findings``). Every image of every arm
is paired by its noise, (seed, prompt, sample): all methods start a (prompt, sample) from the same noise, and
best-of-N's picked image comes from that (prompt, sample)'s candidates (``rlg.report.methods.method_points``).

Estimates are means over the paired images of all seeds. Their 95% intervals and p values come from a
two-way cluster bootstrap over prompts and seeds (the "pigeonhole" bootstrap, Owen 2007, Ann. Appl. Stat.
1(2):554): each resample draws prompts and seeds with replacement, independently, and weights the cell
(prompt, seed) by the product of their multiplicities; one set of weights serves every arm of a row, so
differences stay paired. The claims (each one row per pair and metric; d > 0 favours the first arm):

* ``interpolates`` (reward): the smallest step of RLG's mean reward along 0 = w_0 < w_1 < ... = 1 toward the RL
  model; superiority, margin 0 (every step moves toward the RL model's reward).
* ``extrapolates`` (reward): RLG w = 2 minus w = 1; superiority, margin 0.
* ``beyond weight mixing`` (reward): RLG at each w > 1 minus the best weight-mixing knob; superiority, margin 0.
* ``same as weight mixing`` (each held-out metric): RLG at w minus weight mixing at the w' of equal mean reward
  (per image, linear between the two bracketing knobs; w' fixed at its point estimate); equivalence with margin
  ``held_out_margin`` x the metric's sd over the base's images. Cost ratio: RLG's rows over weight mixing's.
* ``best-of-N at equal cost`` (reward and each held-out metric): best-of-N at the N whose network rows equal
  RLG's at each ``compare_at`` w, minus RLG; superiority, margin 0. The reward row has no verdict (the pick
  maximised it: circular).
* ``RLG-FKC vs RLG`` (reward and each held-out metric): RLG with Feynman-Kac correctors (``method=rlg_fkc``, K
  particles) minus plain RLG at each ``compare_at`` w; superiority, margin 0; cost ratio K.
* ``FK steering at equal cost`` (reward and each held-out metric): FK steering of the RL model (``method=
  fk_steering``) at the K whose network rows equal RLG's, or RLG-FKC's, at each ``compare_at`` w, minus that arm;
  superiority, margin 0. The reward row has no verdict (the steering maximised it: circular). ``best-of-N at equal
  cost`` is also matched with RLG-FKC.
* ``CFG leaves the reward`` (reward): the RL model at its largest CFG knob minus its smallest; equivalence with
  margin ``reward_margin`` x the RL model's reward gain (RLG w = 1 minus w = 0).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rlg.report import tables
from rlg.report.methods_words import number as _num
from rlg.verdicts import RULE, Claim, bootstrap_p, decide

__all__ = ["load_points", "pair_claims", "findings_table", "findings_in_words", "write_findings_report",
           "ClusterBootstrap", "COLUMNS"]

KEY = ["seed", "prompt_id", "sample"]  # one paired image: its noise
COLUMNS = ["pair", "claim", "metric", "comparison", "seeds", "n", "test", "estimate", "lo", "hi", "margin",
           "cost_ratio", "p_holds", "p_fails", "p", "p_holm", "verdict"]


def load_points(run_dirs: Sequence[tuple[int, str | Path]]) -> tuple[pd.DataFrame, dict[str, bool]]:
    """One pair's images over its seeds, one row per point of a method's curve (best-of-N: the picked image per
    (prompt, sample, N)), with seed, prompt_id, sample, method, knob, cost (rows per image) and one column per
    metric (NaN where not scored or failed). Returns (frame, {metric: higher_is_better})."""
    from rlg.report.compare import load_run
    from rlg.report.methods import method_points

    parts, higher = [], {}
    for seed, run_dir in run_dirs:
        images, scores = load_run(run_dir)[:2]
        pts = method_points(images, scores)[0]
        ok = scores[scores["error"].isna()] if "error" in scores.columns else scores
        ok = ok.assign(value=pd.to_numeric(ok["value"], errors="coerce"))
        wide = ok.pivot_table(index="image_key", columns="metric", values="value", aggfunc="last")
        higher.update(ok.groupby("metric")["higher_is_better"].first().astype(bool).to_dict())
        pts = pts[["prompt_id", "sample", "method", "knob", "cost", "image_key"]].join(wide, on="image_key")
        parts.append(pts.assign(seed=int(seed)))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=KEY + ["method", "knob", "cost"])
    return frame, higher


class ClusterBootstrap:
    """Paired means over images clustered by prompt and seed, with ``n_resamples`` two-way (prompt x seed)
    bootstrap replicates that share one set of weights (module docstring). ``index``: the (seed, prompt_id,
    sample) of every image any arm may hold."""

    def __init__(self, index: pd.MultiIndex, n_resamples: int, seed: int = 0):
        self.prompts = np.unique(index.get_level_values("prompt_id").astype(str))
        self.seeds = np.unique(index.get_level_values("seed").to_numpy())
        rng = np.random.default_rng(seed)
        self.wp = rng.multinomial(len(self.prompts), np.full(len(self.prompts), 1 / len(self.prompts)),
                                  size=n_resamples).astype(float)
        self.ws = rng.multinomial(len(self.seeds), np.full(len(self.seeds), 1 / len(self.seeds)),
                                  size=n_resamples).astype(float)

    def mean(self, values: pd.Series) -> tuple[float, np.ndarray, int]:
        """(point mean, bootstrap replicates, images used) of per-image ``values`` indexed by (seed, prompt_id,
        sample); NaN values are left out."""
        v = values.dropna()
        p = np.searchsorted(self.prompts, v.index.get_level_values("prompt_id").astype(str))
        s = np.searchsorted(self.seeds, v.index.get_level_values("seed").to_numpy())
        sums = np.zeros((len(self.prompts), len(self.seeds)))
        cnt = np.zeros_like(sums)
        np.add.at(sums, (p, s), v.to_numpy(float))
        np.add.at(cnt, (p, s), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (np.einsum("bp,ps,bs->b", self.wp, sums, self.ws)
                    / np.einsum("bp,ps,bs->b", self.wp, cnt, self.ws))
        return (float(sums.sum() / cnt.sum()) if cnt.sum() else math.nan), reps, int(len(v))


def _arm(frame: pd.DataFrame, method: str, knob: float, metric: str) -> pd.Series:
    d = frame[(frame["method"] == method) & np.isclose(frame["knob"].astype(float), knob)]
    return d.drop_duplicates(KEY).set_index(KEY)[metric].astype(float) if metric in d else pd.Series(dtype=float)


def _knobs(frame: pd.DataFrame, method: str) -> list[float]:
    return sorted(frame.loc[frame["method"] == method, "knob"].dropna().astype(float).unique())


def _cost(frame: pd.DataFrame, method: str, knob: float) -> float:
    d = frame[(frame["method"] == method) & np.isclose(frame["knob"].astype(float), knob)]
    return float(d["cost"].mean()) if len(d) else math.nan


def _particles(frame: pd.DataFrame, w: float) -> int:
    """RLG-FKC's particles at w: its network rows over plain RLG's (K rows of RLG's per image)."""
    return int(round(_cost(frame, "rlg_fkc", w) / _cost(frame, "rlg", w))) if w in _knobs(frame, "rlg") else -1


def _interval(reps: np.ndarray) -> tuple[float, float]:
    r = reps[np.isfinite(reps)]
    return (float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))) if r.size else (math.nan, math.nan)


def _row(pair: str, claim: str, metric: str, comparison: str, seeds: int, n: int, estimate: float,
         reps: np.ndarray, test: Claim | None, cost_ratio: float = math.nan) -> dict[str, Any]:
    lo, hi = _interval(reps)
    ph, pf = test.p(*bootstrap_p(reps)) if test is not None and np.isfinite(reps).any() else (math.nan, math.nan)
    return dict(pair=pair, claim=claim, metric=metric, comparison=comparison, seeds=seeds, n=n,
                test=test.kind if test else "none (circular)", estimate=estimate, lo=lo, hi=hi,
                margin=test.margin if test else math.nan, cost_ratio=cost_ratio, p_holds=ph, p_fails=pf)


def _w_prime(frame: pd.DataFrame, reward: str, w: float) -> tuple[float, float, float, float]:
    """(w', k_lo, k_hi, t): the weight-mixing knob of RLG(w)'s mean reward, linear between the first bracketing
    pair of knobs (as rlg.report.methods.equivalence), or NaNs when no pair brackets it."""
    target = _arm(frame, "rlg", w, reward).mean()
    ks = _knobs(frame, "weight_mix")
    vs = [_arm(frame, "weight_mix", k, reward).mean() for k in ks]
    for k0, k1, v0, v1 in zip(ks, ks[1:], vs, vs[1:]):
        if min(v0, v1) <= target <= max(v0, v1) and v0 != v1:
            t = (target - v0) / (v1 - v0)
            return k0 + t * (k1 - k0), k0, k1, t
    return math.nan, math.nan, math.nan, math.nan


def pair_claims(pair: str, frame: pd.DataFrame, higher: dict[str, bool], reward: str, *,
                compare_at: Sequence[float] = (2.0,), reward_margin: float = 0.25, held_out_margin: float = 0.2,
                n_resamples: int = 20000, seed: int = 0) -> list[dict[str, Any]]:
    """The claims of one pair (module docstring) as rows of ``COLUMNS`` without p, p_holm and verdict (the rule
    decides over the whole table). ``frame``, ``higher``: from :func:`load_points`."""
    if reward not in frame.columns:
        raise ValueError(f"pair {pair}: its reward {reward!r} is not scored (metrics: "
                         f"{sorted(c for c in higher)}); select its evaluator")
    boot = ClusterBootstrap(pd.MultiIndex.from_frame(frame[KEY]), n_resamples, seed)
    n_seeds = int(frame["seed"].nunique())
    sign = {m: (1.0 if h else -1.0) for m, h in higher.items()}
    held_out = [m for m in sorted(higher) if m != reward and m in frame.columns]
    rows: list[dict[str, Any]] = []
    rlg_knobs = _knobs(frame, "rlg")
    s = sign[reward]

    def diff(a: pd.Series, b: pd.Series, m: str) -> tuple[float, np.ndarray, int]:
        a, b = a.align(b, join="inner")
        return boot.mean(sign[m] * (a - b))

    # interpolation: every step from w = 0 to w = 1 moves toward the RL model
    path = [k for k in rlg_knobs if 0 <= k <= 1]
    if len(path) >= 3 and path[0] == 0 and path[-1] == 1:
        steps = [diff(_arm(frame, "rlg", k1, reward), _arm(frame, "rlg", k0, reward), reward)
                 for k0, k1 in zip(path, path[1:])]
        est = min(e for e, _, _ in steps)
        reps = np.min(np.vstack([r for _, r, _ in steps]), axis=0)
        rows.append(_row(pair, "interpolates", reward, "smallest step of RLG along w = " + " → ".join(
            f"{k:g}" for k in path), n_seeds, min(n for _, _, n in steps), est, reps, Claim("superiority", 0.0)))
    if 1.0 in rlg_knobs and 2.0 in rlg_knobs:
        est, reps, n = diff(_arm(frame, "rlg", 2.0, reward), _arm(frame, "rlg", 1.0, reward), reward)
        rows.append(_row(pair, "extrapolates", reward, "RLG w = 2 vs w = 1", n_seeds, n, est, reps,
                         Claim("superiority", 0.0)))
    gain = (_arm(frame, "rlg", 1.0, reward) - _arm(frame, "rlg", 0.0, reward)).mean() * s

    mix_knobs = _knobs(frame, "weight_mix")
    if mix_knobs:
        for w in [k for k in rlg_knobs if k > 1]:  # RLG past w = 1 against every weight-mixing knob
            a = _arm(frame, "rlg", w, reward)
            ea, ra, n = boot.mean(a)
            mix = [boot.mean(_arm(frame, "weight_mix", k, reward)) for k in mix_knobs]
            best = max(range(len(mix)), key=lambda i: s * mix[i][0])
            est = s * (ea - mix[best][0])
            reps = s * ra - np.max(np.vstack([s * r for _, r, _ in mix]), axis=0)
            rows.append(_row(pair, "beyond weight mixing", reward,
                             f"RLG w = {w:g} vs the best weight-mixing knob (w' = {mix_knobs[best]:g} of "
                             f"{', '.join(f'{k:g}' for k in mix_knobs)})", n_seeds, n, est, reps,
                             Claim("superiority", 0.0), _cost(frame, "rlg", w) / _cost(frame, "weight_mix",
                                                                                       mix_knobs[best])))
        base = frame[(frame["method"] == "rlg") & np.isclose(frame["knob"].astype(float), 0.0)]
        for w in [k for k in rlg_knobs if k not in (0.0, 1.0)]:
            wp, k0, k1, t = _w_prime(frame, reward, w)
            if not np.isfinite(wp):
                continue
            ratio = _cost(frame, "rlg", w) / _cost(frame, "weight_mix", k0)
            for m in held_out:
                mixed = (1 - t) * _arm(frame, "weight_mix", k0, m) + t * _arm(frame, "weight_mix", k1, m)
                est, reps, n = diff(_arm(frame, "rlg", w, m), mixed, m)
                margin = held_out_margin * float(base[m].std(ddof=1))
                if not margin > 0:
                    continue
                rows.append(_row(pair, "same as weight mixing", m, f"RLG w = {w:g} vs weight mixing w' = {wp:.3g} "
                                 f"(equal mean {reward})", n_seeds, n, est, reps, Claim("equivalence", margin),
                                 ratio))

    fkc_knobs = _knobs(frame, "rlg_fkc")
    for w in [w for w in compare_at if w in rlg_knobs and w in fkc_knobs]:  # the correction itself, at K x the cost
        k = _particles(frame, w)
        for m in [reward, *held_out]:
            est, reps, n = diff(_arm(frame, "rlg_fkc", w, m), _arm(frame, "rlg", w, m), m)
            rows.append(_row(pair, "RLG-FKC vs RLG", m, f"RLG-FKC (K = {k}) vs RLG, w = {w:g}", n_seeds, n, est, reps,
                             Claim("superiority", 0.0), _cost(frame, "rlg_fkc", w) / _cost(frame, "rlg", w)))
    # at equal network rows: best-of-N and FK steering against RLG and RLG-FKC at each compare_at w; their reward
    # rows have no verdict (the pick, the steering, maximised it: circular)
    for other, claim, name in (("best_of_n", "best-of-N at equal cost", "best-of-{:g}"),
                               ("fk_steering", "FK steering at equal cost", "FK steering K = {:g}")):
        knobs = _knobs(frame, other)
        for ref, label in (("rlg", "RLG"), ("rlg_fkc", "RLG-FKC")):
            for w in [w for w in compare_at if w in _knobs(frame, ref)]:
                cost = _cost(frame, ref, w)
                match = [k for k in knobs if np.isclose(_cost(frame, other, k), cost)]
                if not match:
                    continue
                what = label if ref == "rlg" else f"{label} (K = {_particles(frame, w)})"
                for m in [reward, *held_out]:
                    est, reps, n = diff(_arm(frame, other, match[0], m), _arm(frame, ref, w, m), m)
                    rows.append(_row(pair, claim, m, f"{name.format(match[0])} vs {what} w = {w:g} ({cost:g} rows "
                                     f"per image each)", n_seeds, n, est, reps,
                                     None if m == reward else Claim("superiority", 0.0), 1.0))

    cfg = _knobs(frame, "cfg_rl")
    if len(cfg) >= 2 and np.isfinite(gain) and abs(gain) > 0:
        est, reps, n = diff(_arm(frame, "cfg_rl", cfg[-1], reward), _arm(frame, "cfg_rl", cfg[0], reward), reward)
        rows.append(_row(pair, "CFG leaves the reward", reward, f"RL model at CFG g = {cfg[-1]:g} vs g = {cfg[0]:g}",
                         n_seeds, n, est, reps, Claim("equivalence", reward_margin * abs(gain)),
                         _cost(frame, "cfg_rl", cfg[-1]) / _cost(frame, "cfg_rl", cfg[0])))
    return rows


def findings_table(pairs: Sequence[tuple[str, pd.DataFrame, dict[str, bool], str]], *, alpha: float = 0.05,
                   **options: Any) -> pd.DataFrame:
    """Every pair's claims (:func:`pair_claims`, ``options`` passed on) decided by the one rule over the whole
    table (``rlg.verdicts.decide``: Holm across every row with a test). ``pairs``: (name, frame, higher,
    reward) per pair. Columns ``COLUMNS``; a circular row's verdict is "no verdict (circular)"."""
    rows = [r for name, frame, higher, reward in pairs for r in pair_claims(name, frame, higher, reward, **options)]
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p", "p_holm", "verdict")])
    p, adj, verdicts = decide(out["p_holds"].to_numpy(float), out["p_fails"].to_numpy(float), alpha)
    out["p"], out["p_holm"] = p, adj
    out["verdict"] = [v if t != "none (circular)" else "no verdict (circular)" for v, t in zip(verdicts, out["test"])]
    return out[COLUMNS]


def _render(table: pd.DataFrame, fmt: str) -> str:
    """The findings table, verdict and margin first (the comparison's words last: it is the widest column)."""
    header = ["pair", "claim", "metric", "verdict", "estimate [95%] (+: first arm better)", "test, margin", "Holm p",
              "seeds", "images", "cost ratio", "comparison"]
    rows = [[r.pair, r.claim, r.metric, r.verdict, f"{_num(r.estimate)} [{_num(r.lo)}, {_num(r.hi)}]",
             r.test if r.test.startswith("none") else f"{r.test}, ±{_num(r.margin)}" if r.test == "equivalence"
             else f"{r.test}, > {_num(r.margin)}", _num(r.p_holm), f"{r.seeds}", f"{r.n}", _num(r.cost_ratio),
             r.comparison] for r in table.itertuples()]
    groups = [i for i, (a, b) in enumerate(zip(table["pair"], [None, *table["pair"][:-1]])) if a != b]
    return tables.render(header, rows, fmt, align="llllrlrrrrl", groups=groups)


def findings_in_words(table: pd.DataFrame) -> list[str]:
    """One sentence per pair: the claims that hold and that do not hold (comparison, metric, estimate and 95%
    interval), and how many are undecided."""
    lines = []
    for pair, g in table.groupby("pair", sort=False):
        parts = []
        for verdict in ("holds", "does not hold"):
            h = g[g["verdict"] == verdict]
            items = "; ".join(f"{r.claim}, {r.comparison.split(' (')[0]}, {r.metric} ({_num(r.estimate)} "
                              f"[{_num(r.lo)}, {_num(r.hi)}])" for r in h.itertuples())
            parts.append(f"{verdict}: {items or 'none'}")
        undecided = int((g["verdict"] == "undecided").sum())
        lines.append(f"{pair} ({int(g['seeds'].max())} seeds). " + ". ".join(parts)
                     + f". Undecided: {undecided} of {int(g['p'].notna().sum())} tested rows.")
    return lines


def write_findings_report(dirs: Sequence[tuple[str, int, str, Path]], out_dir: Path, *, title: str,
                          compare_at: Sequence[float] = (2.0,), reward_margin: float = 0.25,
                          held_out_margin: float = 0.2, alpha: float = 0.05, n_resamples: int = 20000,
                          seed: int = 0) -> dict[str, Any]:
    """``tables/findings.{csv,md}`` and ``index.{md,html}`` (the Findings section first, then each sub-run's own
    report linked) under ``out_dir``, from the sub-runs ``dirs`` = (preset, seed, reward, run dir). Returns
    {"files", "table", "rows", "headlines"}."""
    from rlg.report.page import Page, put

    out_dir = Path(out_dir)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    by_pair: dict[str, list] = {}
    for preset, s, reward, d in dirs:
        by_pair.setdefault(preset, []).append((s, reward, d))
    pairs = []
    for preset, runs in by_pair.items():
        frame, higher = load_points([(s, d) for s, _, d in runs])
        pairs.append((preset, frame, higher, runs[0][1]))
    table = findings_table(pairs, alpha=alpha, compare_at=compare_at, reward_margin=reward_margin,
                           held_out_margin=held_out_margin, n_resamples=n_resamples, seed=seed)
    files = [put(out_dir / "tables" / "findings.csv", table), put(out_dir / "tables" / "findings.md",
                                                                 _render(table, "markdown"))]
    counts = table["verdict"].value_counts()
    headline = (f"Findings: {len(table)} rows over {len(by_pair)} pairs x {len(dirs) // max(1, len(by_pair))} seeds: "
                + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("holds", "does not hold", "undecided",
                                                                  "no verdict (circular)")))
    index = Page(title)
    index.section("findings", "Findings")
    index.text(headline)
    index.text(RULE)
    index.text(f"Margins, fixed before the data: superiority claims > 0; equivalence on a held-out metric within "
               f"± {held_out_margin:g} sd of the base's images; 'CFG leaves the reward' within ± {reward_margin:g} x "
               f"the RL model's reward gain. alpha = {alpha:g}, Holm over the {int(table['p'].notna().sum())} rows "
               f"with a test. Intervals: 95% two-way cluster bootstrap over prompts and seeds ({n_resamples} "
               "resamples, rlg.report.findings). Estimates are signed so that > 0 favours the comparison's first arm.")
    for line in findings_in_words(table):
        index.text(line)
    index.table(_render(table, "markdown"), _render(table, "html"))
    index.section("runs", "Runs (one per pair and seed)")
    for preset, runs in by_pair.items():
        for s, _, d in runs:
            rel = Path("..") / Path(d).relative_to(Path(d).parent.parent)
            if (Path(d) / "report" / "index.html").is_file():
                index.link((rel / "report" / "index.html").as_posix(),
                           f"{preset}, seed {s}: its own report (every method, knob and metric)")
            else:  # findings.sub_reports=false: the store only (rlg-bench-report <dir> draws it)
                index.text(f"{preset}, seed {s}: {rel.as_posix()} (no report of its own: findings.sub_reports=false)")
    (out_dir / "index.md").write_text(index.markdown())
    (out_dir / "index.html").write_text(index.html())
    files += [out_dir / "index.md", out_dir / "index.html"]
    return {"files": [str(f) for f in files], "table": table, "rows": len(table), "headlines": [headline]}
