"""The methods comparison of one run in words (the Methods section's first lines, before its tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["methods_in_words", "number"]


def number(x: float | None, digits: int = 3) -> str:
    """A report number with ``digits`` significant digits, "–" for a missing or non-finite one."""
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def methods_in_words(summary: pd.DataFrame, reward: str | None) -> list[str]:
    """The methods comparison of one run in words, one line per metric (the reward first): the best point of all
    methods within each cost, listed where more rows buy a better value (the cost Pareto front), with its 95%
    interval; the last one is the best overall. Best-of-N's values on its picking metric are left out (circular).
    ``summary``: ``rlg.report.methods.method_summary`` (method, knob, metric, higher_is_better, mean, lo, hi, cost,
    circular)."""
    if summary.empty:
        return []
    held = summary[~summary["circular"].astype(bool) & np.isfinite(summary["mean"].astype(float))]
    lines = []
    metrics = ([reward] if reward in set(held["metric"]) else []) + sorted(set(held["metric"]) - {reward})
    for m in metrics:
        d = held[held["metric"] == m]
        hib = bool(d["higher_is_better"].iloc[0])
        d = d.sort_values(["cost", "mean"], ascending=[True, not hib])
        front, best = [], None
        for cost, g in d.groupby("cost", sort=True):
            r = g.iloc[0]
            if best is None or (r["mean"] > best if hib else r["mean"] < best):
                best = r["mean"]
                front.append(f"{cost:g} rows: {r['method']} {r['knob']:g} ({number(r['mean'], 4)} "
                             f"[{number(r['lo'], 4)}, {number(r['hi'], 4)}])")
        role = "reward" if m == reward else "held-out"
        lines.append(f"{m} ({role}, {'higher' if hib else 'lower'} is better), the best point within each cost "
                     f"(rows per image): " + "; ".join(front) + (" (best overall)." if len(front) else "."))
    return lines
