"""Several runs in one report: DPO vs SPO vs GRPO, or a CFG sweep, on one figure and one table.

    rlg-bench-report outputs/hp_sd15_dpo outputs/hp_sd15_spo --out outputs/dpo-vs-spo
    rlg-bench-report outputs/quickstart-sweep          # a sweep directory: every job in it

    from rlg.report.compare import compare_runs
    result = compare_runs(["outputs/a", "outputs/b"], "outputs/a-vs-b")
    print(result["index"])

Each run directory is read through its store (``rlg.store.Store``: intact PNGs only, the
newest row of each key), its series are named by the directory, and each keeps its own protocol
(from its meta.json), so the anchors and the protocol table stay per series. A Hydra multirun gets
one combined report at its end with the ``rlg.harness.callbacks.SweepReport`` Hydra callback (on by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

log = logging.getLogger(__name__)


class CompareError(ValueError):
    """A run directory cannot be compared (missing, no results); the message names the fix."""


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "rows" / "images").is_dir()


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among ``paths``: a run directory itself, or every run directory below a
    directory that is not one (a sweep directory), in name order. Raises CompareError."""
    runs: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if not p.is_dir():
            raise CompareError(f"{p} is not a directory; give run directories (outputs/<name>) or a sweep directory")
        if is_run_dir(p):
            runs.append(p)
            continue
        below = sorted({d.parent.parent for d in p.glob("**/rows/images")})
        if not below:
            raise CompareError(f"{p} holds no run (no rows/images/ in it or below it); run stage=generate there first")
        runs += below
    return list(dict.fromkeys(r.resolve() for r in runs))


# Settings that never change an image or a score: left out of the labels.
LABEL_IGNORED = ("name", "stage", "device", "verbose", "low_memory", "tracker", "paths", "shard", "report",
                 "evaluators.device", "evaluators.batch_size", "sampler.batch_size", "sampler.offload",
                 "sampler.compile", "sampler.vae_tiling")
GROUPS = ("pair", "sampler", "prompts", "grid", "evaluators")  # a group's preset name stands for its keys
LABEL_CHARS = 48  # longer than this, the run's directory name is the label


def _config(run: Path) -> dict[str, Any] | None:
    """The resolved config of the run's latest invocation that recorded one (meta.json)."""
    from rlg.store import Store

    for entry in reversed(Store(run).meta().get("invocations", [])):
        if isinstance(entry.get("config"), dict):
            return entry["config"]
    return None


def _flat(d: Any, prefix: str = "") -> dict[str, str]:
    if not isinstance(d, dict):
        return {prefix: json.dumps(d, separators=(",", ":")) if isinstance(d, (list, dict)) else str(d)}
    out: dict[str, str] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _setting_labels(configs: Sequence[dict[str, Any]]) -> list[str] | None:
    """Per run, the settings that differ between the runs, as short ``key=value`` text: a group whose
    preset name differs is named by it (``pair=zoo_digits_dpo``) instead of its keys; a key is shown by
    its last part unless two differing keys share it. None when nothing differs or a label gets long."""
    flats = [_flat(c) for c in configs]
    keys = sorted(set().union(*flats))
    ignored = lambda k: any(k == i or k.startswith(i + ".") for i in LABEL_IGNORED)  # noqa: E731
    differ = [k for k in keys if not ignored(k) and len({f.get(k) for f in flats}) > 1]
    named = {g for g in GROUPS if f"{g}.name" in differ}
    differ = [k for k in differ if k.split(".")[0] not in named or k == f"{k.split('.')[0]}.name"]
    if not differ:
        return None
    last = [k.split(".")[-1] for k in differ]
    short = [k if k.endswith(".name") or last.count(k.split(".")[-1]) > 1 else k.split(".")[-1] for k in differ]
    short = [k.removesuffix(".name") for k in short]
    labels = [",".join(f"{s}={f.get(k, '-')}" for s, k in zip(short, differ)) for f in flats]
    if len(set(labels)) < len(labels) or max(map(len, labels)) > LABEL_CHARS:
        return None
    return labels


def _labels(runs: Sequence[Path]) -> list[str]:
    """Short unique names for the runs: the settings that differ between them (resolved configs in
    meta.json, e.g. ``guidance_scale=5`` / ``guidance_scale=7.5``, or ``pair=zoo_digits_dpo``), else the
    directory name with as many parents as it takes to tell them apart."""
    if len(runs) > 1:
        configs = [_config(r) for r in runs]
        if all(c is not None for c in configs) and (short := _setting_labels(configs)):
            return short
    for depth in range(1, 6):
        names = ["/".join(r.parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            return names
    return [str(r) for r in runs]


def load_run(run_dir: str | Path, current: dict[str, Any] | None = None
             ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(images, scores, protocol) of one run directory in the report layer's contract: absolute image
    paths, GenEval tags from the prompt metadata, only images whose PNG is present and intact, and
    the protocol of its latest invocation with a config (rlg.report.report.run_protocol). ``current``:
    the meta.json entry of the invocation still running (recorded only when it ends), taken as the
    latest, so a ``stage=all`` report states the protocol a later ``stage=report`` of the store states."""
    from rlg.store import Store
    from rlg.report.report import run_protocol

    store = Store(run_dir)
    images, scores = store.images(verify=True), store.scores()
    images = images.assign(image_path=[str(store.image_path(k)) for k in images.image_key])
    scores = scores[scores.image_key.isin(set(images.image_key))].reset_index(drop=True)
    if "metadata" in images.columns:
        tags = [json.loads(m).get("tag") if isinstance(m, str) else None for m in images.metadata]
        if any(tags):
            images = images.assign(tag=tags)
    protocol: dict[str, Any] = {}
    for entry in [*store.meta().get("invocations", []), *([current] if current else [])]:  # the latest wins
        if isinstance(entry.get("config"), dict):
            info = (entry.get("generate") or {}).get("pair_info") or {}
            ids = {k: info.get(k) for k in ("base", "rl") if isinstance(info, dict) and info.get(k)}
            latest = run_protocol(entry["config"], ids or None)
            if entry.get("config_id"):  # the protocol of one setting (series) of the run
                protocol[entry["config_id"]] = latest
            protocol.update({k: v for k, v in latest.items()})
    return images, scores, protocol


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, *, labels: Sequence[str] | None = None,
                 n_resamples: int = 1000, grid_prompts: int = 4, seed: int = 0, reference_scale: float = 1.0,
                 formats: Sequence[str] = ("png", "pdf"), anchors=None, title: str | None = None) -> dict[str, Any]:
    """One report (``out_dir/index.md`` + ``index.html``, tables, figures) over several run
    directories (or sweep directories, expanded by ``find_runs``). Each run is one series, named by
    ``labels`` or its directory; its protocol comes from its own meta.json. The report is written
    to a temporary sibling and swapped in, so a killed call leaves the previous report.

    Returns write_report's dict (paths under ``out_dir``) plus "runs" {label: run dir}.
    Raises CompareError when a directory is missing or none holds an image.
    """
    from rlg.store import Store
    from rlg.report.report import write_report

    runs = find_runs(run_dirs)
    names = list(labels) if labels is not None else _labels(runs)
    if len(names) != len(runs) or len(set(names)) != len(names):
        raise CompareError(f"{len(runs)} runs need {len(runs)} distinct labels, got {names}")
    frames_i, frames_s, protocol = [], [], {}
    for run, name in zip(runs, names):
        images, scores, proto = load_run(run)
        if images.empty:
            log.warning("%s has no intact image yet; it is left out of the comparison", run)
            continue
        # the label is the series name; keys get the label too (two runs may share content keys)
        images = images.assign(run_id=name, image_key=name + ":" + images.image_key)
        scores = scores.assign(image_key=name + ":" + scores.image_key)
        frames_i.append(images)
        frames_s.append(scores)
        protocol[name] = proto
    rewards = {p.get("reward") for p in protocol.values()} - {None}
    reward = rewards.pop() if len(rewards) == 1 else None  # runs optimising different rewards: picked by name
    if not frames_i:
        raise CompareError(f"none of {', '.join(map(str, runs))} holds an image yet; run them first")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Store(out_dir.parent)
    tmp = staging.temp_dir(out_dir.name)
    try:
        result = write_report(pd.concat(frames_i, ignore_index=True), pd.concat(frames_s, ignore_index=True), tmp,
                              protocol=protocol, anchors=anchors, grid_prompts=grid_prompts, n_resamples=n_resamples,
                              seed=seed, reference_scale=reference_scale, formats=formats, reward=reward,
                              title=title or f"rlg-bench comparison: {', '.join(names)}")
        staging.swap_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved = lambda p: out_dir / Path(p).relative_to(tmp)  # noqa: E731
    result = {**result, "files": [moved(f) for f in result["files"]], "index": moved(result["index"]),
              "index_html": moved(result["index_html"]), "runs": dict(zip(names, map(str, runs)))}
    return result


def add_runs_argument(parser: argparse.ArgumentParser) -> None:
    """The positional DIR... of the report and export commands."""
    parser.add_argument("runs", nargs="+", metavar="DIR", help="run directories (outputs/<name>) or sweep directories")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``rlg-bench-report DIR... [--out DIR]``; prints the index path as its last line."""
    parser = argparse.ArgumentParser(
        prog="rlg-bench-report",
        description="One report (index.md + self-contained index.html) over several rlg-bench run directories "
                    "or sweep directories; each run is one series with its own protocol.")
    add_runs_argument(parser)
    parser.add_argument("--out", default=None, help="report directory (default: <first DIR's parent>/comparison)")
    parser.add_argument("--label", action="append", default=None,
                        help="series name per run, in order (repeat; default: the settings that differ between "
                             "the runs, else the directory names)")
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--grid-prompts", type=int, default=4, help="prompts per image grid (0: no grids)")
    parser.add_argument("--formats", default="png,pdf", help="figure formats (default png,pdf)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.runs[0]).expanduser().resolve().parent / "comparison"
    try:
        result = compare_runs(args.runs, out, labels=args.label, n_resamples=args.n_resamples,
                              grid_prompts=args.grid_prompts, formats=tuple(args.formats.split(",")))
    except CompareError as exc:
        print(f"rlg-bench-report: {exc}", file=sys.stderr)
        return 2
    for name, run in result["runs"].items():
        print(f"{name}: {run}")
    print(f"Report: {result['index']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
