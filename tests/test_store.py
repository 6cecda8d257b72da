"""rlg.store: corrupt files quarantined and redone, scores tied to their image, full and read-only disks."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlg import files as files_mod
from rlg import store as store_mod
from rlg.files import StoreWriteError
from rlg.harness import runner
from rlg.store import Store
from tests.helpers.runs import (  # noqa: F401  (one_thread: autouse)
    ROOT, ENV, FAST, one_thread, cfg_of, snapshot, assert_complete,
)


def test_corrupt_pngs_and_parquet_parts_are_quarantined_and_redone(tmp_path, caplog):
    run = tmp_path / "corrupt"
    runner.run(cfg_of(*FAST, "sampler.batch_size=3"), run_dir=run)
    before = snapshot(run)
    s = Store(run)
    image_parts = sorted((run / "rows" / "images").glob("part-*.parquet"))
    assert len(image_parts) == 1  # compacted at the end of the stage; split it again into two writers' parts
    rows = pd.read_parquet(image_parts[0])
    image_parts[0].unlink()
    image_parts = [run / "rows" / "images" / f"part-r{i}-split.parquet" for i in range(2)]
    rows.iloc[:3].to_parquet(image_parts[0], index=False)
    rows.iloc[3:].to_parquet(image_parts[1], index=False)
    k0, k1 = pd.read_parquet(image_parts[0]).image_key[:2]  # their rows stay readable; their PNGs do not
    png0, png1 = s.image_path(k0), s.image_path(k1)
    png0.write_bytes(png0.read_bytes()[: png0.stat().st_size // 2])  # truncated
    data = bytearray(png1.read_bytes())
    data[-20] ^= 0xFF  # one flipped byte
    png1.write_bytes(bytes(data))
    bad_part = image_parts[-1]
    lost_rows = set(pd.read_parquet(bad_part).image_key)
    bad_part.write_bytes(bad_part.read_bytes()[:100])  # truncated parquet
    score_part = sorted((run / "rows" / "scores").glob("part-*.parquet"))[0]
    score_part.write_bytes(b"not a parquet file")
    (run / "rows" / "scores" / "part-r9-empty.parquet").write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="rlg.store"):
        stored = Store(run).stored_keys()
        assert Store(run).scores().empty  # the only score part was corrupt
    assert k0 not in stored and k1 not in stored and not (lost_rows & stored)
    assert len(stored) == 6 - len({k0, k1} | lost_rows)
    log = Store(run).quarantined()
    moved = {e["file"] for e in log}
    assert {str(png0.relative_to(run)), str(png1.relative_to(run)), str(bad_part.relative_to(run)),
            str(score_part.relative_to(run)), "rows/scores/part-r9-empty.parquet"} <= moved
    assert all((run / e["moved_to"]).is_file() for e in log), "quarantined files are kept"
    assert "sha256" in caplog.text and "unreadable parquet" in caplog.text

    (run / "meta.json").write_text('{"invocations": [{"run_id": "abc", ')  # cut short
    entry = runner.run(cfg_of(*FAST, "sampler.batch_size=3"), run_dir=run)  # the same command repairs it
    assert [m["invocation"] for m in Store(run).meta()["invocations"]] == [entry["invocation"]]
    assert (run / "quarantine" / "meta.json").read_text().startswith('{"invocations"')
    assert entry["generate"]["images_made"] == len({k0, k1} | lost_rows)
    after = snapshot(run)
    assert after["images"] == before["images"] and after["scores"] == before["scores"]
    assert after["pngs"] == after["row_paths"] and not after["temporaries"]
    # the report reads each setting's protocol from meta.json, so the cut meta.json is already counted in the entry
    assert entry["quarantined"] == len(log) + 1 and len(Store(run).quarantined()) == len(log) + 1


def test_a_regenerated_image_invalidates_its_old_scores(tmp_path):
    run = tmp_path / "stale"
    runner.run(cfg_of(*FAST, "stage=generate"), run_dir=run)
    runner.run(cfg_of(*FAST, "stage=evaluate"), run_dir=run)
    s = Store(run)
    row = s.images().iloc[[0]].copy()
    key = row.image_key.iloc[0]
    # the same key stored again with other bits (e.g. regenerated on another machine after corruption)
    import numpy as np

    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    rows = row.drop(columns=["image_path", "image_sha256"]).to_dict("records")
    Store(run, writer="r0-other").write_images(rows, [arr])
    assert key not in Store(run).scored("jpeg", Store(run).scores().version.iloc[0])
    entry = runner.run(cfg_of(*FAST, "stage=evaluate"), run_dir=run)
    assert entry["evaluate"]["jpeg"]["scored"] == 1


def test_disk_full_mid_run_stops_cleanly_and_keeps_what_was_stored(tmp_path, monkeypatch):
    run = tmp_path / "full"
    real, calls = files_mod._write_all, {"n": 0}

    def enospc_after_four(fd, data):  # batch 1 (3 PNGs + its part) fits; batch 2 hits a full disk
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(files_mod, "_write_all", enospc_after_four)
    with pytest.raises(StoreWriteError, match=r"disk full.*intact.*resumes"):
        runner.run(cfg_of(*FAST, "sampler.batch_size=3", "stage=generate"), run_dir=run)
    monkeypatch.setattr(files_mod, "_write_all", real)
    s = Store(run)
    assert len(s.images()) == 3 and s.stored_keys() == set(s.images().image_key)  # readable, intact
    assert not list(run.rglob("*.tmp")) and not (run / "quarantine").exists()
    assert not (run / "meta.json").exists()  # its write hit the full disk too; logged, not masking the error
    entry = runner.run(cfg_of(*FAST, "sampler.batch_size=3"), run_dir=run)  # space is back: resume
    assert (entry["generate"]["images_made"], entry["generate"]["images_skipped"]) == (3, 3)
    runner.run(cfg_of(*FAST, "sampler.batch_size=3"), run_dir=tmp_path / "ref")
    assert snapshot(run)["images"] == snapshot(tmp_path / "ref")["images"]
    assert_complete(snapshot(run))


def test_low_free_space_is_refused_before_work_and_between_batches(tmp_path, monkeypatch):
    with pytest.raises(StoreWriteError, match=r"below paths.min_free_gb=1e\+09.*lower paths.min_free_gb"):
        runner.run(cfg_of(*FAST, "paths.min_free_gb=1e9"), run_dir=tmp_path / "a")
    assert not (tmp_path / "a" / "images").exists()
    real, calls = shutil.disk_usage, {"n": 0}

    def shrinking(path):  # plenty at start-up and for batch 1, then almost nothing
        calls["n"] += 1
        usage = real(path)
        return usage._replace(free=usage.free if calls["n"] <= 2 else 10**6)

    monkeypatch.setattr(store_mod.shutil, "disk_usage", shrinking)
    with pytest.raises(StoreWriteError, match="min_free_gb"):
        runner.run(cfg_of(*FAST, "sampler.batch_size=3"), run_dir=tmp_path / "b")
    s = Store(tmp_path / "b")
    assert len(s.images()) == 3 and s.stored_keys() == set(s.images().image_key)


def _read_only_runner(paths: list[Path]) -> list[str] | None:
    """A command prefix under which ``paths`` are read-only, even for root: read-only bind mounts in a
    private user+mount namespace (unshare -rm). None where that is not possible."""
    if not shutil.which("unshare"):
        return None
    mounts = " && ".join(f"mount --bind '{p}' '{p}' && mount -o remount,ro,bind '{p}' '{p}'" for p in paths)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mounts} && ! touch '{paths[0]}/.probe' 2>/dev/null"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-rm", "sh", "-c", f'{mounts} && exec "$0" "$@"']


def test_a_read_only_store_fails_at_start_leaving_it_intact(tmp_path):
    """The store's directories read-only (the run directory itself stays writable for Hydra's own
    run.log): a clear error before any work, and the store as it was."""
    run = tmp_path / "ro"
    runner.run(cfg_of(*FAST, "stage=generate"), run_dir=run)
    before = snapshot(run)
    store_dirs = [run / "rows", run / "images"]
    prefix = _read_only_runner(store_dirs)
    if prefix is None and os.geteuid() != 0:  # not root: permissions are enough
        for d in store_dirs:
            d.chmod(0o555)
        prefix = []
    if prefix is None:
        pytest.skip("cannot make a directory read-only for root here (no unshare)")
    cmd = [sys.executable, "run.py", f"paths.root={tmp_path}", "name=ro", *FAST]
    try:
        out = subprocess.run(prefix + cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        for d in store_dirs:
            d.chmod(0o755)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text, text[-3000:]
    expected = r"cannot write .*/ro/(rows|images): (Read-only file system|Permission denied).*intact.*paths.root"
    assert re.search(expected, text), text[-3000:]
    assert snapshot(run) == before


def test_compaction_leaves_one_row_per_key_so_plain_pandas_reads_what_the_store_reads(tmp_path, monkeypatch):
    """Superseded rows (a regenerated image, a rescored image, a score of an image's old bits) are on disk
    until the stage ends; then each table is one part with exactly the rows the Store reads. A reader
    whose part is compacted away under it re-lists the parts and misses nothing."""
    import numpy as np

    run = tmp_path / "compact"
    runner.run(cfg_of(*FAST), run_dir=run)
    s = Store(run)
    assert len(list((run / "rows" / "images").glob("*.parquet"))) == 1 == len(list((run / "rows" / "scores").glob(
        "*.parquet")))
    images, scores = s.images(), s.scores()
    a, b = images.image_key.iloc[0], images.image_key.iloc[1]
    # a regenerated (a) and a rescored (b) image, written by other writers after the run
    rows = images[images.image_key == a].drop(columns=["image_path", "image_sha256"]).to_dict("records")
    Store(run, writer="r1").write_images(rows, [np.zeros((32, 32, 3), dtype=np.uint8)])
    rescored = scores[scores.image_key == b].assign(value=123.0)
    sha_b = images.set_index("image_key").image_sha256[b]
    Store(run, writer="r1").write_scores(rescored.assign(image_sha256=sha_b).to_dict("records"))
    raw_images, raw_scores = pd.read_parquet(run / "rows" / "images"), pd.read_parquet(run / "rows" / "scores")
    assert len(raw_images) == len(images) + 1 and len(raw_scores) == len(scores) + len(rescored)

    # a reader racing the compaction: its first part vanishes while it reads
    real, raced = pd.read_parquet, []

    def racing(path, *args, **kwargs):
        if not raced and "rows/scores" in str(path):
            raced.append(path)
            Store(run).compact()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_parquet", racing)
    during = Store(run).scores()
    monkeypatch.setattr(pd, "read_parquet", real)
    assert raced and not Path(raced[0]).exists()

    after_images, after_scores = Store(run).images(), Store(run).scores()
    n_metrics = after_scores.metric.nunique()
    # a's old scores were computed on bits no longer stored: gone; b's newest value wins
    assert len(after_scores) == len(scores) - n_metrics
    assert set(after_scores[after_scores.image_key == b].value) == {123.0}
    assert not (after_scores.image_key == a).any()
    pd.testing.assert_frame_equal(during.sort_values(["image_key", "metric"]).reset_index(drop=True),
                                  after_scores.sort_values(["image_key", "metric"]).reset_index(drop=True))
    plain_images, plain_scores = pd.read_parquet(run / "rows" / "images"), pd.read_parquet(run / "rows" / "scores")
    assert len(list((run / "rows" / "scores").glob("*.parquet"))) == 1
    assert len(plain_images) == len(after_images) == len(images) and plain_images.image_key.is_unique
    key = ["image_key", "evaluator", "version", "metric"]
    pd.testing.assert_frame_equal(plain_scores[after_scores.columns].sort_values(key).reset_index(drop=True),
                                  after_scores.sort_values(key).reset_index(drop=True))
    assert plain_images.set_index("image_key").image_sha256[a] != images.set_index("image_key").image_sha256[a]
    assert Store(run).compact() == {"images": 0, "scores": 0}  # nothing left to drop


def test_two_stores_of_the_same_rows_read_the_same_frames_whichever_writer_names_sort_first(tmp_path):
    # part files are named by writer: ranks or invocations with other random ids read back in another order, and
    # the report's sums then differed in their last bits between two runs of one job (summary.csv)
    first = [{"image_key": f"{i:064x}", "evaluator": "jpeg", "version": "v", "metric": "m", "value": 0.1 * i,
              "higher_is_better": True, "error": None, "image_sha256": None} for i in range(3)]
    second = [dict(r, image_key=f"{i + 3:064x}", value=0.3 + 0.1 * i) for i, r in enumerate(first)]
    for root, names in (("a", ("r0-aaaa", "r0-zzzz")), ("b", ("r0-zzzz", "r0-aaaa"))):
        Store(tmp_path / root, writer=names[0]).write_scores(first)
        Store(tmp_path / root, writer=names[1]).write_scores(second)
    a, b = Store(tmp_path / "a").scores(), Store(tmp_path / "b").scores()
    pd.testing.assert_frame_equal(a, b)
    assert list(a.image_key) == sorted(a.image_key)
