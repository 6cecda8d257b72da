"""A static image browser: every stored image of a report, one row per initial noise (series, prompt,
sample, seed), one column per RLG scale w, each image with its scores; filter by prompt text, series
and w, sort rows by a metric at a chosen w. One HTML file (``report/images.html``) with its data and
script inline: no server, no network. Images are linked by relative path to the run's own PNGs (so
the page works while the run directory sits beside the report, offline or copied whole); embedding
them would make a GenEval run's page gigabytes.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from rlg.metrics import label as metric_label
from rlg.report.stats import PAIRING, SERIES, with_series

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;margin:1em;color:#222}}
#controls{{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd;z-index:1}}
#controls label{{margin-right:1em;font-size:.9em}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #eee;padding:.2em .4em;vertical-align:top;
font-size:.8em}}th{{background:#f4f4f4;position:sticky;top:2.6em}}
td.p{{max-width:16em}}img{{width:{thumb}px;height:auto;image-rendering:pixelated;display:block}}
.s{{color:#555;font-size:.9em;white-space:nowrap}}.none{{color:#aaa}}
</style></head><body>
<h1>{title}</h1>
<p>{intro} <a href="index.html">Back to the report</a>.</p>
<div id="controls">
<label>prompt contains <input id="q" size="24"></label>
<label>series <select id="series"></select></label>
<label>show <select id="metric"></select></label>
<label>sort by it at w <select id="sortw"></select></label>
<span id="ws"></span> <span id="count" class="s"></span>
</div>
<table><thead id="head"></thead><tbody id="body"></tbody></table>
<script id="data" type="application/json">{data}</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent);
const $ = id => document.getElementById(id);
const opt = (sel, vals, labels) => vals.forEach((v, i) => {{
  const o = document.createElement("option"); o.value = v; o.textContent = labels ? labels[i] : v; sel.append(o); }});
opt($("series"), ["", ...D.series], ["all", ...D.series]);
opt($("metric"), D.metrics, D.metric_labels);
opt($("sortw"), ["", ...D.scales.map(String)], ["(prompt order)", ...D.scales.map(w => "w=" + w)]);
D.scales.forEach(w => {{ const l = document.createElement("label");
  l.innerHTML = `<input type="checkbox" checked data-w="${{w}}"> w=${{w}}`; $("ws").append(l); }});
const fmt = v => v === null || v === undefined ? "–" : Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4);
function render() {{
  const q = $("q").value.toLowerCase(), ser = $("series").value, m = $("metric").value, sw = $("sortw").value;
  const ws = D.scales.filter(w => document.querySelector(`input[data-w="${{w}}"]`).checked);
  let rows = D.rows.filter(r => (!ser || r.series === ser) && r.prompt.toLowerCase().includes(q));
  if (sw) {{ const key = r => (r.cells[sw] && r.cells[sw].scores[m] !== null && r.cells[sw].scores[m] !== undefined)
      ? r.cells[sw].scores[m] : -Infinity;
    rows = rows.slice().sort((a, b) => (D.higher[m] ? key(b) - key(a) : key(a) - key(b))); }}
  $("head").innerHTML = "<tr><th>series</th><th>prompt</th><th>sample / seed</th>" +
    ws.map(w => `<th>w=${{w}}${{w === 0 ? " (base)" : w === 1 ? " (RL)" : ""}}</th>`).join("") + "</tr>";
  const esc = s => String(s).replace(/[&<>"]/g, c => ({{"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}})[c]);
  $("body").innerHTML = rows.map(r => `<tr><td>${{esc(r.series)}}</td><td class="p">${{esc(r.prompt)}}</td>` +
    `<td class="s">${{r.sample}} / ${{r.seed}}</td>` + ws.map(w => {{ const c = r.cells[String(w)];
      if (!c) return '<td class="none">not made</td>';
      const t = Object.entries(c.scores).map(([k, v]) => `${{k}}=${{fmt(v)}}`).join("\\n");
      return `<td title="${{esc(t)}}"><a href="${{esc(c.src)}}"><img loading="lazy" src="${{esc(c.src)}}"></a>` +
        `<span class="s">${{esc(D.short[m])}} ${{fmt(c.scores[m])}}${{c.nonfinite ? " NaN/inf" : ""}}</span></td>`;
      }}).join("") +
    "</tr>").join("");
  $("count").textContent = `${{rows.length}} of ${{D.rows.length}} rows`;
}}
["q", "series", "metric", "sortw"].forEach(id => $(id).addEventListener("input", render));
$("ws").addEventListener("change", render);
render();
</script></body></html>
"""


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def browser_data(images: pd.DataFrame, tidy_scores: pd.DataFrame, out_dir: Path,
                 names: dict[tuple, str], reward: str | None = None) -> dict[str, Any]:
    """The page's data: {"series", "scales", "metrics", "metric_labels", "higher", "rows"}; a row is one
    initial noise (series, prompt, sample, seed) with a cell per stored scale: {"src": image path
    relative to ``out_dir``, "scores": {metric: value or None (excluded or failed)}, "nonfinite"}.
    ``tidy_scores``: ``rlg.report.stats.tidy`` output; ``names``: series tuple -> readable name;
    ``reward``: the metric listed (and shown) first."""
    img = with_series(images)
    img["scale"] = img["scale"].astype(float).round(6)
    for c in ("sample", "seed"):
        if c not in img.columns:
            img[c] = 0
    by_key: dict[str, dict[str, float | None]] = {}
    higher: dict[str, bool] = {}
    if len(tidy_scores):
        for key, metric, value in tidy_scores[["image_key", "metric", "value"]].itertuples(index=False):
            by_key.setdefault(key, {})[metric] = _finite(value)
        higher = tidy_scores.groupby("metric")["higher_is_better"].first().astype(bool).to_dict()
    metrics = sorted(higher, key=lambda m: (m != reward, m))  # the reward first: shown by default
    rows = []
    order = img.sort_values(SERIES + PAIRING + ["scale"])
    for key, g in order.groupby(SERIES + PAIRING, sort=False):
        series, (prompt_id, sample, seed) = tuple(key[:len(SERIES)]), key[len(SERIES):]
        cells = {}
        for r in g.itertuples(index=False):
            path = getattr(r, "image_path", None)
            src = os.path.relpath(str(path), out_dir).replace(os.sep, "/") if isinstance(path, str) and path else ""
            cells[f"{r.scale:g}"] = {"src": src, "scores": by_key.get(r.image_key, {}),
                                     "nonfinite": bool(getattr(r, "nonfinite", False))}
        prompt = g["prompt"].iloc[0] if "prompt" in g.columns else f"prompt {prompt_id}"
        rows.append({"series": names.get(series, " / ".join(s for s in series if s)), "prompt_id": int(prompt_id),
                     "prompt": str(prompt), "sample": int(sample), "seed": int(seed), "cells": cells})
    return {"series": sorted({r["series"] for r in rows}), "scales": sorted({float(w) for w in img["scale"]}),
            "metrics": metrics,
            "metric_labels": [f"{metric_label(m)} ({'↑' if higher[m] else '↓'})" for m in metrics],
            "short": {m: metric_label(m) for m in metrics}, "higher": higher, "rows": rows}


def write_browser(images: pd.DataFrame, tidy_scores: pd.DataFrame, out_dir: Path, names: dict[tuple, str],
                  title: str, reward: str | None = None, thumb_px: int = 96) -> Path:
    """Write ``out_dir/images.html`` (see the module docstring); returns its path."""
    data = browser_data(images, tidy_scores, Path(out_dir), names, reward)
    n = sum(len(r["cells"]) for r in data["rows"])
    intro = (f"{n} images, {len(data['rows'])} rows (one initial noise each: every image in a row starts from "
             "the same noise), hover an image for all its scores, click to open it. Images are linked from the "
             "run directory.")
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = PAGE.format(title=html.escape(title), intro=html.escape(intro), data=text, thumb=int(thumb_px))
    path = Path(out_dir) / "images.html"
    path.write_text(page, encoding="utf-8")
    return path
