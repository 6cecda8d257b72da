"""Best-of-N: N samples of one model, the one a reward scores highest is kept; N is the knob.

Generation makes candidates k = 0 .. max(N) - 1 of every (prompt, sample) (candidate 0 shares the
noise of every other method); the pick happens after scoring (``pick_best``, used by the report), so
one set of candidates serves every N. The cost of best-of-N is the sum of its N candidates' costs.
The reward that picks must not be the metric that judges: picking by the judge is circular.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlg.methods.base import Arm, Method, MethodError


class BestOfN(Method):
    """``model``: the RL model (stored as best_of_n) or the base (best_of_n_base); ``pick``: the metric
    that picks (a metric name the evaluators write, e.g. ``jpeg_compressibility``); knobs: the N values."""

    name = "best_of_n"
    base_label = "best_of_n_base"
    needs_pick = True

    def __init__(self, knobs, model: str = "rl", pick: str | None = None):
        super().__init__(knobs, model, pick)
        if not pick:
            raise MethodError("method best_of_n needs the reward that picks: set method.best_of_n.pick=<metric>, "
                              "e.g. jpeg_compressibility")
        bad = [n for n in self.knobs if n < 1 or n != int(n)]
        if bad:
            raise MethodError(f"method best_of_n: N values {bad} are not whole numbers >= 1; e.g. knobs=[1,2,4,8]")
        self.knobs = [float(int(n)) for n in self.knobs]

    @property
    def n_candidates(self) -> int:
        return int(max(self.knobs))

    def arms(self) -> list[Arm]:
        return [Arm(self.label, None, scale=self.alone_scale, candidate=k, pick=self.pick)
                for k in range(self.n_candidates)]


def pick_best(candidates: Any, ns: Sequence[int], higher_is_better: bool = True) -> Any:
    """Pick the best candidate of every (prompt_id, sample) for every N in ``ns``.

    Args:
        candidates: a pandas DataFrame, one row per candidate image, with columns prompt_id, sample,
            candidate (int k), image_key and ``pick`` (the picking reward; NaN: not pickable), plus any
            cost columns (summed over the N candidates: every column named in ``COST_COLUMNS``).
        ns: the N values.
        higher_is_better: the picking reward's direction.
    Returns:
        A DataFrame with one row per (prompt_id, sample, N) whose N candidates 0..N-1 are all present
        and at least one has a finite reward: prompt_id, sample, knob (N), image_key and candidate of the
        pick (the first best on ties), pick (its reward) and the summed cost columns.
    """
    import numpy as np
    import pandas as pd

    rows = []
    cost_cols = [c for c in COST_COLUMNS if c in candidates.columns]
    for (p, s), g in candidates.groupby(["prompt_id", "sample"], sort=True):
        g = g.sort_values("candidate")
        ks = g["candidate"].astype(int).to_numpy()
        for n in ns:
            n = int(n)
            first = g[ks < n]
            if sorted(first["candidate"].astype(int)) != list(range(n)):
                continue  # a candidate is missing (not generated yet)
            values = first["pick"].to_numpy(dtype=float)
            if not np.isfinite(values).any():
                continue
            signed = np.where(np.isfinite(values), values if higher_is_better else -values, -np.inf)
            best = first.iloc[int(np.argmax(signed))]  # argmax returns the first of equal maxima
            row = {"prompt_id": p, "sample": s, "knob": float(n), "image_key": best["image_key"],
                   "candidate": int(best["candidate"]), "pick": float(best["pick"])}
            row.update({c: float(first[c].sum()) for c in cost_cols})
            rows.append(row)
    cols = ["prompt_id", "sample", "knob", "image_key", "candidate", "pick", *cost_cols]
    return pd.DataFrame(rows, columns=cols)


COST_COLUMNS = ("nfe_base", "nfe_rl", "wall_s")
