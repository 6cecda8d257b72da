"""rlg.files: the run lock (flock, and the lock file where a filesystem has none)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys

import pytest

from rlg.files import RunLock, StoreLockedError
from rlg.harness import runner
from tests.helpers.runs import ROOT, ENV, FAST, one_thread, cfg_of, cli  # noqa: F401  (one_thread: autouse)


def test_a_second_launch_on_a_locked_run_fails_fast_naming_the_pid(tmp_path):
    run = tmp_path / "busy"
    with RunLock(run):  # this test process plays the first launch
        with pytest.raises(StoreLockedError, match=rf"pid {os.getpid()}.*kill {os.getpid()}.*name="):
            runner.run(cfg_of(*FAST), run_dir=run)
        assert not (run / "images").exists()
        out = subprocess.run(cli(tmp_path, "busy"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
        assert f"pid {os.getpid()}" in out.stderr + out.stdout
        with pytest.raises(StoreLockedError):  # nor may a job of ranks join a plain launch
            RunLock(run, 0, 2).acquire()
    # ranks of one job share the run; a second job's rank or a plain launch may not join them
    with RunLock(run, 0, 2), RunLock(run, 1, 2):
        with pytest.raises(StoreLockedError, match="rank 0 of 2"):
            RunLock(run).acquire()
        with pytest.raises(StoreLockedError, match="Rank 1 is already taken"):
            RunLock(run, 1, 4).acquire()
    with RunLock(run):  # all released (the kernel also releases them when a process dies)
        pass


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_run_lock_falls_back_to_a_lock_file_without_flock(tmp_path, monkeypatch, caplog, code):
    from rlg import files as files_mod
    from rlg.files import RunLock, StoreLockedError

    def no_flock(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files_mod.fcntl, "flock", no_flock)
    run = tmp_path / "run"
    with RunLock(run) as lock:
        assert lock.exclusive and (run / ".lock.excl").is_file()
        assert json.loads((run / ".lock.excl").read_text())["pid"] == os.getpid()
        with pytest.raises(StoreLockedError, match=rf"pid {os.getpid()}.*\.lock\.excl"):
            RunLock(run).acquire()  # a second launch is refused, as with flock
    assert not (run / ".lock.excl").exists()  # released

    # a leftover of a process that died is removed; one of another host names the file to delete
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (run / ".lock.excl").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING), RunLock(run):
        assert "no longer running" in caplog.text
    (run / ".lock.excl").write_text(json.dumps({"pid": 1, "host": "other-node-7"}))
    with pytest.raises(StoreLockedError, match=r"other-node-7.*Fix: if no rlg-bench process runs there any more, "
                                               r"delete that file"):
        RunLock(run).acquire()
    (run / ".lock.excl").unlink()
    # ranks of one job cannot share a lock file: stop with the fix
    with pytest.raises(StoreLockedError, match=r"does not support flock.*shard\.index=i shard\.count=n"):
        RunLock(run, rank=0, world=2).acquire()


def test_other_flock_errors_are_not_mistaken_for_a_missing_flock(tmp_path, monkeypatch):
    from rlg import files as files_mod
    from rlg.files import RunLock

    def bad(fd, op):
        raise OSError(errno.EBADF, "bad file descriptor")

    monkeypatch.setattr(files_mod.fcntl, "flock", bad)
    with pytest.raises(OSError, match="bad file descriptor"):
        RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock.excl").exists()


def test_exclusive_holds_a_flock_that_another_process_must_wait_for(tmp_path):
    """rlg.files.exclusive: while the block runs, another process cannot take the lock; after it, it can."""
    from rlg.files import exclusive

    lock = tmp_path / "build.lock"
    probe = [sys.executable, "-c", "import fcntl, sys\nf = open(sys.argv[1], 'w')\ntry:\n"
             "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)", str(lock)]
    with exclusive(lock):
        assert subprocess.run(probe).returncode == 3
    assert subprocess.run(probe).returncode == 0
