"""Shared helpers of the zoo trainers: determinism, timing, file hashes and the manifest."""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from rlg.files import atomic_write, exclusive, sha256_bytes, sha256_file
from rlg.runtime import package_versions
from rlg.zoo import MANIFEST


def setup_torch(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed python/numpy/torch, use ``threads`` CPU threads (default env RLG_ZOO_THREADS or 1: the
    training machines are shared) and return a torch.Generator seeded with ``seed``."""
    threads = threads or int(os.environ.get("RLG_ZOO_THREADS", "1"))
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = round(time.perf_counter() - t0, 1)


def environment() -> dict[str, Any]:
    """What the bits of a trained model depend on besides its seed: CPU model, torch threads and the versions of
    the numeric libraries (recorded with each retrain, so a retrain that is not bit-identical can be traced)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = package_versions(("torch", "diffusers", "transformers", "peft", "numpy", "safetensors",
                                 "scikit-learn", "pillow"))
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "versions": versions}


def file_hashes(root: Path | str) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its path relative to ``root``."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` through ``rlg.files.atomic_write``: a trainer killed while saving leaves its
    previous resume checkpoint, never half a file (``torch.load(weights_only=True)`` reads it back)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(path), buf.getvalue())


def dir_size_mb(root: Path | str) -> float:
    return round(sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file()) / 1e6, 3)


def read_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def write_manifest_entry(name: str, entry: dict[str, Any], path: Path = MANIFEST) -> None:
    """Insert/replace ``models[name]`` in the manifest (sorted keys, so diffs stay small). Holds an exclusive
    lock (a file in the temp directory) so trainers running in parallel do not drop each other's entries, and
    replaces the file atomically."""
    import tempfile

    lock_path = Path(tempfile.gettempdir()) / f"rlg-zoo-{sha256_bytes(str(path).encode())[:8]}.lock"
    with exclusive(lock_path):
        manifest = read_manifest(path)
        manifest.setdefault("models", {})[name] = entry
        atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())  # never a half file


def dotted_get(d: dict[str, Any], path: str) -> Any:
    """A value by dotted path whose keys may themselves hold dots ("0.0"); None when absent."""
    parts, cur, i = path.split("."), d, 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if isinstance(cur, dict) and key in cur:
                cur, i = cur[key], j
                break
        else:
            return None
    return cur


def ship_model(model: str, src: Path | str, trainer: str, info: dict[str, Any], **fields: Any) -> None:
    """Copy ``src`` to rlg/zoo/weights/<model> (unless it is already there) and record it in the manifest
    with its trainer, file hashes, size and training ``info``; ``fields`` (data source, licence, ...) are
    stored beside them."""
    import shutil

    from rlg.zoo import WEIGHTS_DIR

    dst = WEIGHTS_DIR / model
    if Path(src).resolve() != dst.resolve():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    write_manifest_entry(model, {"path": f"weights/{model}", "trainer": trainer, "files": file_hashes(dst),
                                 "size_mb": dir_size_mb(dst), **fields, "config": info})


def compare_with_shipped(entry: dict[str, Any], info: dict[str, Any], model_dir: Path, shipped_dir: Path,
                         tolerances: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """A retrained model against its shipped manifest ``entry``: each ``tolerances`` metric (path -> ("abs" |
    "rel", tol); a path "a - b" is the difference of two dotted paths), then whether the files are bit-identical
    and whether the safetensors hold identical tensors (files can differ in header bytes, not in weights).
    Returns {check: {"retrained", "shipped", "tolerance"?, "ok"}}; ok None where there is nothing to judge."""
    check: dict[str, Any] = {}
    for path, (kind, tol) in tolerances.items():
        new, old = metric_value(info, path), metric_value(entry.get("config", {}), path)
        if old is None or new is None:
            check[path] = {"retrained": new, "shipped": old, "ok": None}
            continue
        bound = tol if kind == "abs" else tol * abs(old)
        check[path] = {"retrained": new, "shipped": old, "tolerance": round(bound, 5),
                       "ok": bool(abs(new - old) <= bound)}
    if entry.get("files") and model_dir.exists():
        check["bit_identical_files"] = {"ok": None, "retrained": file_hashes(model_dir) == entry["files"],
                                        "shipped": True}
        if shipped_dir.exists() and shipped_dir.resolve() != model_dir.resolve():
            check["identical_tensors"] = {"ok": None, "retrained": same_tensors(model_dir, shipped_dir),
                                          "shipped": True}
    return check


def metric_value(info: dict[str, Any], path: str) -> float | None:
    """A tolerance metric: a dotted path, or "a - b" of two, rounded to 5 decimals (None when either is absent)."""
    parts = [p.strip() for p in path.split(" - ")]
    vals = [dotted_get(info, p) for p in parts]
    if any(v is None for v in vals):
        return None
    return vals[0] if len(vals) == 1 else round(vals[0] - sum(vals[1:]), 5)


def same_tensors(a: Path, b: Path) -> bool:
    """Whether every safetensors file of ``b`` exists in ``a`` with exactly equal tensors."""
    from safetensors.torch import load_file

    files = sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    for f in files:
        if not (a / f).exists():
            return False
        x, y = load_file(str(a / f)), load_file(str(b / f))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return bool(files)


def run_models(models: tuple[str, ...], train_model, compare, ship, weights: Path, out: Path | str | None = None,
               do_ship: bool = False, only: list[str] | None = None, log=print, **train_kw: Any) -> dict[str, Any]:
    """The retrain loop of a zoo task: train each of ``models`` (in order; ``only`` a subset) with
    ``train_model(model, out_dir, log=log, **train_kw)`` into ``out`` (default outputs/zoo_retrain/<time>; the
    shipped ``weights`` with ``do_ship``), record its wall time, ``compare(model, info, model_dir, shipped_manifest)``
    it with the manifest, and ``ship(model, src, info)`` it when shipping. Returns {model: {config, reproduction}}."""
    import shutil
    import time

    out = weights if do_ship else Path(out or f"outputs/zoo_retrain/{time.strftime('%Y%m%d-%H%M%S')}")
    shipped = read_manifest().get("models", {})
    report: dict[str, Any] = {}
    for model in models:
        if only and model not in only:
            continue
        if (out / model).exists() and not do_ship:
            shutil.rmtree(out / model)
        log(f"== training {model} -> {out / model}")
        t0 = time.time()
        info = train_model(model, out / model, log=log, **train_kw)
        info["wall_seconds"] = round(time.time() - t0, 1)
        info["environment"] = environment()
        if not do_ship:
            (out / f"{model}.train.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        check = compare(model, info, out / model, shipped)
        report[model] = {"config": info, "reproduction": check}
        log(f"== {model}: {json.dumps(check)}")
        if do_ship:
            ship(model, out / model, info)
    return report
