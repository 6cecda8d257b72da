"""The results store of one run directory: content-addressed PNGs and tidy parquet rows.

    <run>/images/<key[:2]>/<key>.png      one image per content key
    <run>/rows/images/part-*.parquet      one row per image (append-only parts, one writer per part)
    <run>/rows/scores/part-*.parquet      one row per (image, metric)
    <run>/meta.json                       provenance of every invocation
    <run>/quarantine/                     corrupt files moved aside (never deleted), with log.jsonl
    <run>/.lock                           advisory lock: one launch (or the ranks of one job) at a time

Every file is written to a temporary name and renamed, so a killed process leaves either the whole
file or nothing. An image row is written only after its PNG, so a row always has its image; a PNG
without a row is simply regenerated. Parts are append-only while a stage runs: writers never touch
each other's files, and readers keep the newest row of a key. At the end of each stage the run
compacts each table (``Store.compact``) into one part holding exactly the rows the store reads, so
``pandas.read_parquet("<run>/rows/scores")`` or duckdb's ``read_parquet('<run>/rows/scores/*.parquet')``
see one row per key, the same table as ``Store.scores()``. A PNG whose sha256 differs from its row, or a parquet part
that cannot be read, is moved to quarantine/ with a warning and counts as not stored (regenerated or
rescored on the next run). File names come from hashes only: no prompt text reaches a path.

The file plumbing under it (the atomic write, the run lock, the errors) is ``rlg.files``; the store sits
on the base floor, below the harness and the report, which both read runs through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from PIL import Image

from rlg.files import (HOST, RunLock, StoreError, StoreLockedError, StoreWriteError, atomic_write, pid_alive,
                       sha256_bytes, sha256_file, temp_name, temp_owner, write_error)

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ["image_key", "run_id", "run_name", "config_id", "pair", "prompt_id", "prompt", "sample", "seed",
                 "scale", "sampler", "num_inference_steps", "guidance_scale", "height", "width", "image_path",
                 "image_sha256", "nonfinite", "nonfinite_step", "truncated", "metadata",
                 # rlg.methods: the method and its knob (w, CFG g; None for a best-of-N candidate), the candidate
                 # index, network rows through the base and the RL model, the call's wall time per image, and the
                 # metric that picks among best-of-N candidates
                 "method", "knob", "candidate", "nfe_base", "nfe_rl", "wall_s", "pick"]
SCORE_COLUMNS = ["image_key", "evaluator", "version", "metric", "value", "higher_is_better", "error"]
# stored besides the public columns: the sha256 of the image a score was computed on (a regenerated
# image invalidates its old scores) and when the row was written (the newest row of a key wins)
_SCORE_WRITTEN = SCORE_COLUMNS + ["image_sha256"]  # _write_part adds written_ns
_KEY = re.compile(r"^[0-9a-f]{64}$")


def content_key(fields: dict[str, Any]) -> str:
    """sha256 of everything that determines an image (canonical JSON)."""
    return sha256_bytes(json.dumps(fields, sort_keys=True, default=str).encode())


# -- the store ---------------------------------------------------------------------------------
class Store:
    def __init__(self, run_dir: str | Path, writer: str = "r0", min_free_gb: float = 0.0):
        self.root = Path(run_dir)
        self.writer = writer  # part-file prefix: one per rank/process
        self.min_free_gb = min_free_gb
        self._verified: dict[tuple, bool] = {}  # (path, size, mtime_ns, sha) -> matches

    def lock(self, rank: int = 0, world: int = 1) -> RunLock:
        return RunLock(self.root, rank, world)

    # -- housekeeping --------------------------------------------------------------------------
    def remove_stale_temporaries(self, exclusive: bool = False) -> int:
        """Delete temporaries (files and report directories) left by killed writers.

        With the run lock held exclusively no one else writes here, so every temporary is stale;
        otherwise only those of dead processes on this machine are removed."""
        removed = 0
        stale = []
        for tmp in self.root.rglob(".*.tmp"):
            if any(p.startswith(".") and p.endswith(".tmp") for p in tmp.relative_to(self.root).parts[:-1]):
                continue  # inside a temporary directory: goes with it
            owner = temp_owner(tmp.name)
            if owner and (exclusive or (owner[0] == HOST and not pid_alive(owner[1]))):
                stale.append(tmp)
        for tmp in stale:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    def check_writable(self) -> None:
        """Fail now, with the fix, if a directory the run writes to is read-only (root included: a
        probe file is written, since os.access says yes to root on a read-only mount)."""
        dirs = [self.root] + [d for d in (self.root / "images", self.root / "rows", self.root / "rows" / "images",
                                          self.root / "rows" / "scores", self.root / "report") if d.is_dir()]
        for d in dirs:
            probe = d / f".probe.{HOST}_{os.getpid()}.{uuid.uuid4().hex}.tmp"
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.close(fd)
                probe.unlink()
            except OSError as exc:
                raise write_error(d, exc) from exc
        self.check_free_space()

    def check_free_space(self) -> None:
        """Refuse to start work whose results could not be stored (paths.min_free_gb)."""
        if not self.min_free_gb:
            return
        free = shutil.disk_usage(self.root).free / 1e9
        if free < self.min_free_gb:
            raise StoreWriteError(
                f"only {free:.2f} GB free on the filesystem of {self.root}, below "
                f"paths.min_free_gb={self.min_free_gb:g}; "
                "stopped before making results that could not be stored. Everything stored so far is intact and "
                "the same command resumes. Fix: free space, move the run (paths.root=...), or lower paths.min_free_gb")

    def temp_dir(self, name: str) -> Path:
        """A fresh temporary directory for ``<run>/<name>`` (removed as stale if its writer dies)."""
        tmp = temp_name(self.root / name)
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise write_error(tmp, exc) from exc
        return tmp

    def swap_dir(self, tmp: Path, final: Path) -> None:
        """Put the finished directory ``tmp`` in place of ``final``. A kill between the two renames
        leaves no ``final`` (the next run writes it again), never a mix of old and new files."""
        old = temp_name(final)
        try:
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
        except OSError as exc:
            raise write_error(final, exc) from exc
        shutil.rmtree(old, ignore_errors=True)

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move a corrupt file to <run>/quarantine/ (same relative path), log why; never delete it."""
        dest = self.root / "quarantine" / path.relative_to(self.root)
        if dest.exists():
            dest = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        except FileNotFoundError:
            return None  # another reader moved it first
        except OSError as exc:
            raise write_error(dest, exc) from exc
        log.warning("corrupt file %s moved to %s: %s (it is not used; its work is redone)", path, dest, reason)
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "file": str(path.relative_to(self.root)),
                           "moved_to": str(dest.relative_to(self.root)), "reason": reason}) + "\n"
        with contextlib.suppress(OSError), open(self.root / "quarantine" / "log.jsonl", "a") as f:
            f.write(line)
        return dest

    def quarantined(self) -> list[dict[str, Any]]:
        path = self.root / "quarantine" / "log.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a kill
                out.append(json.loads(line))
        return out

    def run_id(self) -> str:
        """The run directory's id, made by its first invocation (ranks racing agree: create-if-absent
        by hard link) and kept by every resume."""
        path = self.root / "run_id"
        if not path.exists():
            tmp = temp_name(path)
            try:
                tmp.write_text(uuid.uuid4().hex[:12])
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError as exc:
                raise write_error(path, exc) from exc
            finally:
                tmp.unlink(missing_ok=True)
        value = path.read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{12}", value):
            self.quarantine(path, f"not a run id: {value[:40]!r}")
            return self.run_id()
        return value

    # -- images --------------------------------------------------------------------------------
    def image_path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"{key!r} is not an image key (64 hex digits)")
        return self.root / "images" / key[:2] / f"{key}.png"

    def write_images(self, rows: list[dict[str, Any]], arrays: list[np.ndarray]) -> None:
        """PNG files first, then one parquet part holding their rows."""
        for row, arr in zip(rows, arrays):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            data = buf.getvalue()
            path = self.image_path(row["image_key"])
            atomic_write(path, data)
            row["image_path"] = str(path.relative_to(self.root))
            row["image_sha256"] = sha256_bytes(data)
        self._write_part("images", pd.DataFrame(rows, columns=IMAGE_COLUMNS))

    def images(self, verify: bool = False, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per image key (the newest). ``verify``: only rows whose PNG exists and matches the
        row's sha256; a mismatching PNG is quarantined. ``keys``: only these keys."""
        df = self._latest(self._read("images", IMAGE_COLUMNS), ["image_key"])
        if keys is not None:
            df = df[df.image_key.isin(set(keys))]
        if verify and len(df):
            df = df[[self._check_png(k, s) for k, s in zip(df.image_key, df.image_sha256)]]
        return df.reset_index(drop=True)

    def _check_png(self, key: str, sha: str) -> bool:
        path = self.image_path(key)  # from the key, never from a stored path
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        memo = (str(path), st.st_size, st.st_mtime_ns, sha)
        if memo not in self._verified:
            try:
                got = sha256_file(path)
            except FileNotFoundError:
                return False
            ok = got == sha
            if not ok:
                self.quarantine(path, f"sha256 {got} does not match its row's {sha} (truncated or altered)")
                return False
            self._verified[memo] = ok
        return self._verified[memo]

    def config_ids(self) -> set[str]:
        """The config ids (``rlg.harness.build.Job.config_id``) of the images already stored."""
        df = self._read("images", IMAGE_COLUMNS)
        return set(df.config_id.dropna()) if "config_id" in df.columns else set()

    def stored_keys(self, keys: Iterable[str] | None = None) -> set[str]:
        """Keys whose row and intact PNG both exist (others are regenerated)."""
        return set(self.images(verify=True, keys=keys).image_key)

    def load_image(self, row) -> Image.Image:
        return Image.open(self.image_path(row.image_key)).convert("RGB")

    # -- scores --------------------------------------------------------------------------------
    def write_scores(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            self._write_part("scores", pd.DataFrame(rows, columns=_SCORE_WRITTEN))

    def scores(self) -> pd.DataFrame:
        """One row per (image, evaluator, version, metric): the newest, and only if it was computed on
        the image now stored under that key."""
        df = self._current_scores(self._read("scores", SCORE_COLUMNS), self.images())
        return df.reindex(columns=SCORE_COLUMNS).reset_index(drop=True)

    def _current_scores(self, df: pd.DataFrame, images: pd.DataFrame, keep_written: bool = False) -> pd.DataFrame:
        if len(df) and "image_sha256" in df.columns:
            now = df.image_key.map(images.set_index("image_key").image_sha256)
            df = df[~(df.image_sha256.notna() & now.notna() & (df.image_sha256 != now))]
        return self._latest(df, ["image_key", "evaluator", "version", "metric"], keep_written)

    def scored(self, evaluator: str, version: str, failed: bool = True) -> set[str]:
        """Keys with a score row of (evaluator, version); ``failed=False`` leaves out rows that recorded an error."""
        df = self.scores()
        hit = (df.evaluator == evaluator) & (df.version == version)
        if not failed:
            hit &= df.error.isna()
        return set(df.image_key[hit])

    # -- metadata ------------------------------------------------------------------------------
    def append_meta(self, entry: dict[str, Any]) -> None:
        """Add one invocation to meta.json (ranks take turns through a lock on .meta.lock)."""
        path = self.root / "meta.json"
        try:
            fd = os.open(self.root / ".meta.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(path, exc) from exc
        try:
            RunLock.flock(fd, fcntl.LOCK_EX)  # no-op where the filesystem has no flock (the run lock fell back)
            meta = self.meta()
            meta["invocations"].append(entry)
            atomic_write(path, json.dumps(meta, indent=2, default=str).encode())
        finally:
            os.close(fd)

    def meta(self) -> dict[str, Any]:
        path = self.root / "meta.json"
        if not path.exists():
            return {"invocations": []}
        try:
            meta = json.loads(path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("invocations"), list):
                raise ValueError("no 'invocations' list")
            return meta
        except (ValueError, UnicodeDecodeError) as exc:
            self.quarantine(path, f"unreadable meta.json: {exc}")
            return {"invocations": []}

    # -- other tables (e.g. ground-truth rows) -----------------------------------------------
    def write_table(self, table: str, df: pd.DataFrame) -> None:
        """One part of a table that has no image keys (the analytic ground truth)."""
        self._write_part(table, df)

    def read_table(self, table: str) -> pd.DataFrame:
        parts = sorted((self.root / "rows" / table).glob("part-*.parquet"))
        frames = [pd.read_parquet(p) for p in parts]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def last_table(self, table: str) -> pd.DataFrame | None:
        """The rows of the newest ``write_table(table, df)``: ``df`` as it was written (its columns and row order,
        its JSON-serialisable ``attrs``, which parquet keeps), without the store's ``written_ns``; None when the
        table was never written. A run measured twice holds one part per measurement: ``read_table`` returns
        them all, this the last (each part's rows share one ``written_ns``)."""
        parts = sorted((self.root / "rows" / table).glob("part-*.parquet"))
        if not parts:
            return None
        frames = [pd.read_parquet(p) for p in parts]
        newest = max(frames, key=lambda f: f["written_ns"].max() if len(f) else -1)
        return newest.drop(columns=["written_ns"])

    def compact(self) -> dict[str, int]:
        """Rewrite ``rows/images`` and ``rows/scores`` as one part each with exactly the rows this store
        reads (the newest row per key; a score only if computed on the image now stored under its key),
        ``written_ns`` kept. Returns {table: rows dropped}.

        Safe beside other writers and readers: it holds <run>/.compact.lock (compactions take turns),
        writes the new part before it deletes the parts it read (never a part written meanwhile), and
        readers re-list the parts when one vanishes under them. A kill between the two steps leaves
        duplicate rows that readers of this store ignore and the next compaction removes."""
        try:
            fd = os.open(self.root / ".compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.root / ".compact.lock", exc) from exc
        dropped = {}
        try:
            RunLock.flock(fd, fcntl.LOCK_EX)  # no-op where the filesystem has no flock (one launch at a time there)
            images, image_parts = self._read("images", IMAGE_COLUMNS, parts=True)
            current = self._latest(images, ["image_key"], keep_written=True)
            scores, score_parts = self._read("scores", SCORE_COLUMNS, parts=True)
            tables = {"images": (images, current, image_parts),
                      "scores": (scores, self._current_scores(scores, current, keep_written=True), score_parts)}
            for table, (raw, kept, parts) in tables.items():
                dropped[table] = len(raw) - len(kept)
                if len(parts) <= 1 and not dropped[table]:
                    continue
                if len(kept):
                    self._write_part(table, kept, writer="compact")
                for p in parts:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
        finally:
            os.close(fd)
        return dropped

    # -- parts ---------------------------------------------------------------------------------
    def _write_part(self, table: str, df: pd.DataFrame, writer: str | None = None) -> None:
        """One new part; rows keep a ``written_ns`` they already have (compaction), else get now."""
        df = df.assign(written_ns=time.time_ns()) if "written_ns" not in df.columns else df
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        name = f"part-{writer or self.writer}-{uuid.uuid4().hex}.parquet"
        atomic_write(self.root / "rows" / table / name, buf.getvalue())

    def _read(self, table: str, columns: list[str], parts: bool = False):
        """All readable parts of a table (with ``parts``: and the list of those parts); an unreadable one,
        or one without the key columns or with malformed keys, is quarantined (never used, never
        silently dropped). A part that vanishes while being read (a compaction replaced it) restarts
        the read, so a reader never sees a table with rows missing."""
        for _ in range(20):
            try:
                frames, used = self._read_once(table)
                break
            except FileNotFoundError:
                continue
        else:
            raise StoreError(f"the parts of {self.root / 'rows' / table} kept changing while being read; retry")
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        return (df, used) if parts else df

    def _read_once(self, table: str) -> tuple[list[pd.DataFrame], list[Path]]:
        required = ["image_key"] + (["image_sha256"] if table == "images" else ["evaluator", "metric", "value"])
        frames, used = [], []
        for p in sorted((self.root / "rows" / table).glob("part-*.parquet")):
            try:
                f = pd.read_parquet(p)
            except FileNotFoundError:
                raise
            except Exception as exc:  # pyarrow raises several types for a truncated or garbled file
                if not p.exists():
                    raise FileNotFoundError(p) from exc
                self.quarantine(p, f"unreadable parquet: {type(exc).__name__}: {exc}")
                continue
            missing = [c for c in required if c not in f.columns]
            if missing:
                self.quarantine(p, f"lacks the column(s) {missing}")
                continue
            bad = ~f.image_key.astype(str).str.fullmatch(_KEY.pattern)
            if bad.any():
                example = f.image_key[bad].iloc[0]
                self.quarantine(p, f"{int(bad.sum())} rows have malformed image keys, e.g. {example!r}")
                continue
            used.append(p)
            if len(f):
                frames.append(f)
        return frames, used

    @staticmethod
    def _latest(df: pd.DataFrame, key: list[str], keep_written: bool = False) -> pd.DataFrame:
        """The newest row per key (rows of older parts without a timestamp count as oldest), sorted by the key:
        part files are named by their writer, so the order they are read in differs between two runs of the same
        job, and so would sums over the rows in their last bits."""
        if "written_ns" in df.columns and len(df):
            order = df.written_ns.fillna(-1).astype("int64")
            df = df.assign(_order=order).sort_values("_order", ascending=False, kind="stable")
            df = df.drop_duplicates(key, keep="first").drop(columns=["_order"])
        else:
            df = df.drop_duplicates(key, keep="first")
        df = df.sort_values(key, kind="stable")
        return df if keep_written else df.drop(columns=[c for c in ("written_ns",) if c in df.columns])


__all__ = ["Store", "content_key", "RunLock", "StoreError", "StoreLockedError", "StoreWriteError", "write_error",
           "IMAGE_COLUMNS", "SCORE_COLUMNS"]
