"""Results out of the store: one tidy row per (image, metric), read the way the report reads them.

    rlg-bench-export outputs/quickstart --to csv          # outputs/quickstart/export/scores.csv
    rlg-bench-export outputs/a outputs/b --to parquet --out both.parquet
    rlg-bench-export outputs/quickstart --to hf           # a datasets.Dataset on disk, one row per image

    from rlg.report.export import export_frame
    df = export_frame(["outputs/quickstart"])

The store's read rule is applied (``rlg.report.compare.load_run``, i.e. ``rlg.store.Store``):
only images whose PNG is present and matches its sha256, and the newest row (``written_ns``) of each
image and each (image, evaluator, version, metric). A plain ``pd.read_parquet("rows/scores")`` or a
duckdb query over the parts also sees superseded rows (rescored images, duplicates from ranks); this
export does not. Each row keeps the value as stored and says whether the report averages it
(``status``: ok / nonfinite / failed).

``--to hf`` needs the ``datasets`` package (``pip install -e '.[hf]'``) and writes one row per image
with an ``image`` column (the PNG) and one column per metric, ready for ``Dataset.push_to_hub``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

FORMATS = ("csv", "parquet", "hf")
# the columns of an exported row, in this order (then any other image column, e.g. the sampler fields)
LEADING = ["run_dir", "run_name", "pair", "run_id", "config_id", "prompt_id", "prompt", "sample", "seed", "scale",
           "metric", "label", "reward", "value", "higher_is_better", "status", "evaluator", "version", "error",
           "image_key", "image_sha256", "image_path", "nonfinite"]


class ExportError(ValueError):
    """Nothing to export, or an unknown format / a missing package; the message names the fix."""


def export_frame(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per (image, metric) of every run directory (or every run below a sweep directory),
    columns LEADING first. ``label`` is the metric's readable name and ``reward`` whether it is the run's reward
    (both as the report states them: rlg.metrics). ``value`` is the stored float (NaN when the evaluator failed);
    ``status`` is "ok" (averaged by the report), "nonfinite" (the image had NaN/inf: excluded) or "failed".
    Raises ExportError when no directory holds an image (and CompareError for a missing directory)."""
    from rlg.evaluators.base import register_stored
    from rlg.metrics import label
    from rlg.report.compare import find_runs, load_run
    from rlg.report.report import stored_reward

    frames = []
    for run in find_runs(run_dirs):
        images, scores, protocol = load_run(run)
        if images.empty:
            continue
        images = images.drop(columns=[c for c in ("written_ns",) if c in images.columns])
        scores = scores.drop(columns=[c for c in ("written_ns", "image_sha256") if c in scores.columns])
        df = scores.merge(images, on="image_key", how="inner", suffixes=("", "_image"))
        register_stored(scores["evaluator"])
        reward, _ = stored_reward(df["metric"].unique(), protocol.get("reward"))
        frames.append(df.assign(run_dir=str(run), label=df["metric"].map(label), reward=df["metric"] == reward))
    if not frames:
        raise ExportError(f"no images in {', '.join(map(str, run_dirs))}; run stage=generate (and evaluate) first")
    df = pd.concat(frames, ignore_index=True)
    nonfinite = df["nonfinite"].fillna(False).astype(bool) if "nonfinite" in df.columns else False
    error = df["error"].notna() & (df["error"].astype(str).str.len() > 0)
    failed = error | ~np.isfinite(pd.to_numeric(df["value"], errors="coerce").astype(float))
    df["status"] = np.where(nonfinite, "nonfinite", np.where(failed, "failed", "ok"))
    lead = [c for c in LEADING if c in df.columns]
    return df[lead + [c for c in df.columns if c not in lead]].sort_values(
        ["run_dir", "prompt_id", "sample", "seed", "scale", "metric"]).reset_index(drop=True)


def _wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per image, one column per metric (the stored value; NaN where not ok)."""
    keys = [c for c in ("run_dir", "image_key") if c in df.columns]
    per_image = [c for c in df.columns if c not in ("metric", "label", "reward", "value", "higher_is_better", "status",
                                                     "evaluator", "version", "error")]
    values = df.assign(value=df["value"].where(df["status"] == "ok")).pivot_table(
        index=keys, columns="metric", values="value", aggfunc="first", dropna=False)
    return df[per_image].drop_duplicates(keys).merge(values.reset_index(), on=keys, how="left")


def write_export(df: pd.DataFrame, to: str, out: Path) -> Path:
    """Write ``df`` (``export_frame``) as csv / parquet, or as a ``datasets`` dataset saved to ``out``
    (``to="hf"``). Returns ``out``. Raises ExportError for an unknown format or a missing ``datasets``."""
    if to not in FORMATS:
        raise ExportError(f"unknown format {to!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if to == "csv":
        df.to_csv(out, index=False)
    elif to == "parquet":
        df.to_parquet(out, index=False)
    else:
        try:
            import datasets
        except ImportError:
            raise ExportError("--to hf needs the package 'datasets', which is not installed. "
                              "Fix: pip install -e '.[hf]' (in the rlg-bench checkout)") from None
        wide = _wide(df)
        wide = wide.assign(image=wide["image_path"])
        ds = datasets.Dataset.from_pandas(wide, preserve_index=False).cast_column("image", datasets.Image())
        ds.save_to_disk(str(out))
    return out


def default_out(run_dirs: Sequence[str | Path], to: str) -> Path:
    """``<DIR>/export/scores.<ext>`` (``.../hf`` for datasets) for one directory; beside the first for several."""
    first = Path(run_dirs[0]).expanduser().resolve()
    base = first / "export" if len(run_dirs) == 1 else first.parent / "export"
    return base / ("hf" if to == "hf" else f"scores.{to}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``rlg-bench-export DIR... --to csv|parquet|hf [--out PATH]``; prints the path last."""
    from rlg.report.compare import CompareError, add_runs_argument

    parser = argparse.ArgumentParser(
        prog="rlg-bench-export",
        description="Export rlg-bench results: one row per (image, metric), newest row of each key, intact "
                    "images only (the report's own reading of the store).")
    add_runs_argument(parser)
    parser.add_argument("--to", choices=FORMATS, default="csv", help="csv, parquet, or hf (a datasets.Dataset "
                        "with the images, one row per image; needs the [hf] extra)")
    parser.add_argument("--out", type=Path, default=None, help="output file (hf: directory); default "
                        "<DIR>/export/scores.<ext>")
    args = parser.parse_args(argv)
    try:
        df = export_frame(args.runs)
        out = write_export(df, args.to, args.out or default_out(args.runs, args.to))
    except (ExportError, CompareError) as exc:
        print(f"rlg-bench-export: {exc}", file=sys.stderr)
        return 2
    n_images = df.groupby(["run_dir", "image_key"]).ngroups
    print(f"{len(df)} rows ({n_images} images x metrics) from {df['run_dir'].nunique()} run(s)")
    print(f"Export: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
