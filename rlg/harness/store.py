"""The results store of one run directory: content-addressed PNGs and tidy parquet rows.

    <run>/images/<key[:2]>/<key>.png      one image per content key
    <run>/rows/images/part-*.parquet      one row per image (append-only parts, one writer per part)
    <run>/rows/scores/part-*.parquet      one row per (image, metric)
    <run>/meta.json                       provenance of every invocation
    <run>/quarantine/                     corrupt files moved aside (never deleted), with log.jsonl
    <run>/.lock                           advisory lock: one launch (or the ranks of one job) at a time

Every file is written to a temporary name and renamed, so a killed process leaves either the whole
file or nothing. An image row is written only after its PNG, so a row always has its image; a PNG
without a row is simply regenerated. Parts are append-only: writers never touch each other's files,
and readers keep the newest row of a key. A PNG whose sha256 differs from its row, or a parquet part
that cannot be read, is moved to quarantine/ with a warning and counts as not stored (regenerated or
rescored on the next run). File names come from hashes only: no prompt text reaches a path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from PIL import Image

from rlg.downloads import sha256_file

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
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class StoreError(RuntimeError):
    """The store cannot be used as asked (locked, disk full, read-only); the message names the fix."""


class StoreLockedError(StoreError):
    pass


class StoreWriteError(StoreError):
    pass


def content_key(fields: dict[str, Any]) -> str:
    """sha256 of everything that determines an image (canonical JSON)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


# -- low-level writes --------------------------------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
    """The one place bytes reach the disk (tests inject ENOSPC here)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_error(path: Path, exc: OSError) -> StoreWriteError:
    """The StoreWriteError for an OSError met while writing ``path`` (disk full, read-only, ...)."""
    keep = ("Everything stored before this is intact; rerunning the same command resumes from there.")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError(f"disk full (or quota exceeded) while writing {path}: {exc.strerror}. {keep} "
                               "Fix: free space on that filesystem or move the run with paths.root=...")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreWriteError(f"cannot write {path}: {exc.strerror}. {keep} Fix: make the run directory "
                               "writable or set paths.root to a writable place")
    return StoreWriteError(f"could not write {path}: {type(exc).__name__}: {exc}. {keep}")


def _temp_name(path: Path, kind: str = "tmp") -> Path:
    """A temporary sibling: .<name>.<host>_<pid>.<random>.tmp (the owner can be told from the name)."""
    return path.with_name(f".{path.name}.{HOST}_{os.getpid()}.{uuid.uuid4().hex}.{kind}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:  # also SystemExit from SIGTERM: leave no partial temporary behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_owner(name: str) -> tuple[str, int] | None:
    parts = name.split(".")
    if len(parts) >= 4 and parts[-1] == "tmp":
        host, _, pid = parts[-3].rpartition("_")
        if pid.isdigit():
            return host or HOST, int(pid)  # names without a host come from this machine's older versions
    return None


# -- the run lock ------------------------------------------------------------------------------
# errnos of a filesystem that has no flock (some NFS mounts without lockd, Lustre without -o flock,
# FUSE and SMB mounts): the lock cannot be taken at all, which is not the same as "held by another"
NO_FLOCK_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP",
                                                                         "ENOSYS")) if e is not None)


class RunLock:
    """An advisory lock on <run>/.lock held while a process works on the run directory.

    A plain launch takes it exclusively, so a second launch on the same run directory fails at once
    with the first one's pid. The ranks (or manual shards) of one job take it shared and each also
    holds <run>/.lock.rank<r> exclusively: ranks work together, a second job or a plain launch does
    not. The kernel releases the locks when a process dies, even by kill -9.

    On a filesystem without flock (flock raises ENOLCK / EOPNOTSUPP / ENOSYS), a plain launch falls
    back to an exclusive lock file <run>/.lock.excl created with O_EXCL and holding the owner's pid
    and host; a leftover of a dead process on this host is removed, one from another host names the
    file to delete. Ranks of one job cannot share that kind of lock: they stop with a message naming
    the fix (a run directory on a filesystem with flock, or shard.index/shard.count runs).
    """

    FALLBACK = ".lock.excl"

    def __init__(self, root: Path, rank: int = 0, world: int = 1):
        self.root, self.rank, self.world = Path(root), rank, world
        self._fds: list[int] = []
        self._fallback: Path | None = None  # the O_EXCL lock file we created, when flock is unavailable

    @staticmethod
    def flock(fd: int, operation: int) -> bool:
        """``fcntl.flock(fd, operation)``; False (nothing locked) if the filesystem has no flock.
        BlockingIOError (held by another) propagates."""
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            raise
        except OSError as exc:
            if exc.errno in NO_FLOCK_ERRNOS:
                return False
            raise
        return True

    def _info(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "rank": self.rank, "world": self.world,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()

    def _holders(self) -> str:
        """Who holds the lock now, in words (rank files first, then the main lock file)."""
        held = []
        for path in sorted(self.root.glob(".lock.rank*")):
            fd = os.open(path, os.O_RDONLY)
            try:
                if self.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    fcntl.flock(fd, fcntl.LOCK_UN)  # free: a stale file
            except BlockingIOError:
                held.append(path)
            finally:
                os.close(fd)
        out = []
        for path in held or [self.root / ".lock", self.root / self.FALLBACK]:
            try:
                info = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                info = {}
            if info.get("pid"):
                rank = f", rank {info['rank']} of {info['world']}" if int(info.get("world", 1)) > 1 else ""
                out.append(f"pid {info['pid']} on {info.get('host', '?')} (started {info.get('started', '?')}{rank})")
        return "; ".join(dict.fromkeys(out)) or "an unknown process"

    def _refuse(self, what: str) -> StoreLockedError:
        holders = self._holders()
        pid = re.search(r"pid (\d+)", holders)
        return StoreLockedError(
            f"{self.root} is in use by another rlg-bench process: {holders}. {what} Two launches writing one run "
            f"directory would do the same work twice. Fix: wait for it to finish or stop it"
            f"{f' (kill {pid.group(1)})' if pid else ''}, or give this run its own directory (name=... or "
            "paths.root=...). To split one run over several processes, launch them as ranks of one job "
            "(torchrun / accelerate launch) or with shard.index/shard.count.")

    def _no_flock(self, exc_errno: int | None = None) -> StoreLockedError:
        why = f" ({errno.errorcode.get(exc_errno, exc_errno)})" if exc_errno else ""
        return StoreLockedError(
            f"the filesystem of {self.root} does not support flock{why}, so the {self.world} ranks of this job "
            "cannot share the run lock. Fix: put the run directory on a filesystem with flock (paths.root=<local "
            "disk or an NFS/Lustre mount with locking>), or run the parts as separate launches with "
            "shard.index=i shard.count=n (each takes the lock in turn)")

    def _acquire_fallback(self) -> "RunLock":
        """The exclusive O_EXCL lock file of a filesystem without flock (plain launches only)."""
        if self.world > 1:
            raise self._no_flock()
        path = self.root / self.FALLBACK
        for _ in range(2):  # a second try after removing a dead owner's file
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(path.read_text() or "{}")
                except (OSError, ValueError):
                    info = {}
                host, pid = info.get("host"), info.get("pid")
                if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
                    log.warning("removing the lock file %s of pid %d, which is no longer running", path, pid)
                    path.unlink(missing_ok=True)
                    continue
                if host not in (None, socket.gethostname()):
                    raise StoreLockedError(
                        f"{self.root} is locked by {path} (pid {pid} on {host}; this filesystem has no flock, so "
                        "the lock is a file). Fix: if no rlg-bench process runs there any more, delete that "
                        "file; else wait for it or use another run directory (name=... or paths.root=...)") from None
                raise self._refuse("(This filesystem has no flock; the lock is the file .lock.excl.)") from None
            except OSError as exc:
                raise write_error(path, exc) from exc
            try:
                _write_all(fd, self._info())
            finally:
                os.close(fd)
            self._fallback = path
            log.info("the filesystem of %s has no flock; the run is locked by the file %s instead", self.root, path)
            return self
        raise self._refuse("(This filesystem has no flock; the lock is the file .lock.excl.)")

    def acquire(self) -> "RunLock":
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.root / ".lock", exc) from exc
        try:
            locked = self.flock(fd, (fcntl.LOCK_EX if self.world <= 1 else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refuse("This launch is not a rank of that job.") from None
        except OSError:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return self._acquire_fallback()
        self._fds.append(fd)
        if self.world <= 1:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._info(), 0)
            return self
        rfd = os.open(self.root / f".lock.rank{self.rank}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(rfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(rfd)
            self.release()
            raise self._refuse(f"Rank {self.rank} is already taken by another job.") from None
        self._fds.append(rfd)
        os.ftruncate(rfd, 0)
        os.pwrite(rfd, self._info(), 0)
        return self

    @property
    def exclusive(self) -> bool:
        return (bool(self._fds) or self._fallback is not None) and self.world <= 1

    def release(self) -> None:
        for fd in reversed(self._fds):
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self._fallback is not None:
            with contextlib.suppress(OSError):
                self._fallback.unlink()
            self._fallback = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
            owner = _temp_owner(tmp.name)
            if owner and (exclusive or (owner[0] == HOST and not _pid_alive(owner[1]))):
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
        tmp = _temp_name(self.root / name)
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise write_error(tmp, exc) from exc
        return tmp

    def swap_dir(self, tmp: Path, final: Path) -> None:
        """Put the finished directory ``tmp`` in place of ``final``. A kill between the two renames
        leaves no ``final`` (the next run writes it again), never a mix of old and new files."""
        old = _temp_name(final)
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
            tmp = _temp_name(path)
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
            _atomic_write(path, data)
            row["image_path"] = str(path.relative_to(self.root))
            row["image_sha256"] = hashlib.sha256(data).hexdigest()
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
        df = self._read("scores", SCORE_COLUMNS)
        if len(df) and "image_sha256" in df.columns:
            current = self.images().set_index("image_key").image_sha256
            now = df.image_key.map(current)
            stale = df.image_sha256.notna() & now.notna() & (df.image_sha256 != now)
            df = df[~stale]
        df = self._latest(df, ["image_key", "evaluator", "version", "metric"])
        return df.reindex(columns=SCORE_COLUMNS).reset_index(drop=True)

    def scored(self, evaluator: str, version: str) -> set[str]:
        df = self.scores()
        return set(df.image_key[(df.evaluator == evaluator) & (df.version == version)])

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
            _atomic_write(path, json.dumps(meta, indent=2, default=str).encode())
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

    # -- parts ---------------------------------------------------------------------------------
    def _write_part(self, table: str, df: pd.DataFrame) -> None:
        df = df.assign(written_ns=time.time_ns())
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        _atomic_write(self.root / "rows" / table / f"part-{self.writer}-{uuid.uuid4().hex}.parquet", buf.getvalue())

    def _read(self, table: str, columns: list[str]) -> pd.DataFrame:
        """All readable parts of a table; an unreadable one, or one without the key columns or with
        malformed keys, is quarantined (never used, never silently dropped)."""
        required = ["image_key"] + (["image_sha256"] if table == "images" else ["evaluator", "metric", "value"])
        frames = []
        for p in sorted((self.root / "rows" / table).glob("part-*.parquet")):
            try:
                f = pd.read_parquet(p)
            except FileNotFoundError:
                continue
            except Exception as exc:  # pyarrow raises several types for a truncated or garbled file
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
            if len(f):
                frames.append(f)
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)

    @staticmethod
    def _latest(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
        """The newest row per key (rows of older parts without a timestamp count as oldest)."""
        if "written_ns" in df.columns and len(df):
            order = df.written_ns.fillna(-1).astype("int64")
            df = df.assign(_order=order).sort_values("_order", ascending=False, kind="stable")
            df = df.drop_duplicates(key, keep="first").sort_index().drop(columns=["_order"])
        else:
            df = df.drop_duplicates(key, keep="first")
        return df.drop(columns=[c for c in ("written_ns",) if c in df.columns])
