"""File plumbing below the store and the downloads: one atomic write, one file hash, the run lock.

* :func:`atomic_write`: bytes to a temporary sibling (:func:`temp_name`, which names its owner's host
  and pid), fsync, rename: a killed process leaves the whole file or the previous one.
* :func:`sha256_file` / :func:`sha256_bytes`: the project's one content hash.
* :class:`RunLock`: the advisory lock of a run directory (flock, with an O_EXCL lock file where the
  filesystem has none); :func:`exclusive` a plain blocking flock for a short critical section.
* The errors (:class:`StoreError` and its kinds) name the fix; :func:`write_error` turns an OSError
  met while writing into one.

Imports nothing of rlg: the store (``rlg.store``), the downloads and the pair loader build on it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # in temporary names: no host name leaks


class StoreError(RuntimeError):
    """The store cannot be used as asked (locked, disk full, read-only); the message names the fix."""


class StoreLockedError(StoreError):
    pass


class StoreWriteError(StoreError):
    pass


def sha256_bytes(data: bytes) -> str:
    """sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def temp_name(path: Path, kind: str = "tmp") -> Path:
    """A temporary sibling: .<name>.<host>_<pid>.<random>.tmp (the owner can be told from the name)."""
    return path.with_name(f".{path.name}.{HOST}_{os.getpid()}.{uuid.uuid4().hex}.{kind}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, fsync and rename: a killed process leaves the
    whole file or the old one, never a half file. Raises StoreWriteError (naming the fix) for an OSError."""
    tmp = temp_name(path)
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


@contextlib.contextmanager
def exclusive(lock_path: str | Path):
    """Hold an exclusive flock on ``lock_path`` (created if missing) for the block, waiting for other holders:
    processes that build or rewrite one shared file (a fixture cache, a manifest) take turns. Raises OSError
    where the filesystem has no flock."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made a temporary named by :func:`temp_name`, or None."""
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
            info = self._owner(path)
            if info.get("pid"):
                rank = f", rank {info['rank']} of {info['world']}" if int(info.get("world", 1)) > 1 else ""
                out.append(f"pid {info['pid']} on {info.get('host', '?')} (started {info.get('started', '?')}{rank})")
        return "; ".join(dict.fromkeys(out)) or "an unknown process"

    @staticmethod
    def _owner(path: Path) -> dict:
        """The owner a lock file records (``_info``), {} when unreadable."""
        try:
            return json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

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
                info = self._owner(path)
                host, pid = info.get("host"), info.get("pid")
                if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
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
