"""Reliability and security of the runner: crashes, concurrent launches, corrupt files, NaNs, failing
evaluators, full or read-only disks, bad input of every kind, and what may reach paths, shells and logs.

Everything runs on the tiny offline pair with 2 denoising steps. Subprocess runs use OMP_NUM_THREADS=1 so
that a resumed store can be compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from rlg.harness import build, runner
from rlg import files as files_mod
from rlg import store as store_mod
from rlg.harness.provenance import redact
from rlg.harness.config import ConfigError, validate
from rlg.guidance import ScaleError
from rlg.pairs import PairError
from rlg.sampling import SamplerError
from rlg.harness.prompts import PromptError
from rlg.files import RunLock, StoreLockedError, StoreWriteError
from rlg.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
FAST = ["experiment=tiny", "debug=fast"]  # the random-weight plumbing pair, rlg/conf/debug/fast.yaml


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in-process too: on a small shared machine two threads contend (and are 5x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "rlg" / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def cli(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "run.py", "experiment=tiny", f"name={name}", f"paths.root={root}",
            "sampler.num_inference_steps=2",
            "grid.scales=[0,0.5,1,1.5,2]", "prompts.samples_per_prompt=2", "sampler.batch_size=5",
            "evaluators.selected=[jpeg]", "evaluators.batch_size=1", "tracker=none", "report.n_resamples=20",
            "report.grid_prompts=2", *extra]


def snapshot(run: Path) -> dict:
    """Everything a finished store is judged by."""
    s = Store(run)
    raw_images = s._read("images", [])
    raw_scores = s._read("scores", [])
    images, scores = s.images(), s.scores()
    return {
        "images": set(zip(images.image_key, images.image_sha256)),
        "raw_image_rows": len(raw_images),
        "scores": set(zip(scores.image_key, scores.evaluator, scores.version, scores.metric, scores.value.round(9))),
        "raw_score_rows": len(raw_scores),
        "pngs": {str(p.relative_to(run)) for p in run.glob("images/*/*.png")},
        "row_paths": set(images.image_path),
        "temporaries": [str(p) for p in run.rglob("*.tmp")],
        # report files (their names carry the run's name and id) and its numbers
        "report": sorted(re.sub(r"[0-9a-f]{12}", "<id>", str(p.relative_to(run / "report")).replace(run.name, "<name>"))
                         for p in (run / "report").rglob("*") if p.is_file()),
        "summary": pd.read_csv(run / "report" / "tables" / "summary.csv").drop(columns=["run_id", "run_name"])
        .to_csv(index=False) if (run / "report" / "tables" / "summary.csv").exists() else None,
        "quarantine": (run / "quarantine").exists(),
    }


def assert_complete(state: dict) -> None:
    assert state["raw_image_rows"] == len(state["images"]), "duplicate image rows"
    assert state["raw_score_rows"] == len(state["scores"]), "duplicate score rows"
    assert state["pngs"] == state["row_paths"], "orphan or missing PNG files"
    assert not state["temporaries"], f"leftover temporaries {state['temporaries']}"
    assert not state["quarantine"], "something was found corrupt"


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------
def test_kill9_in_every_stage_then_resume_equals_an_uninterrupted_run(tmp_path):
    """kill -9 during generation, evaluation and report writing (and once at a random moment); every
    rerun carries on, and the final store equals that of a run that was never interrupted."""
    run = tmp_path / "killed"
    rng = random.Random(int(os.environ.get("RLG_FAULT_SEED", "0")))
    n_image_parts = lambda: len(list((run / "rows" / "images").glob("part-*.parquet")))  # noqa: E731
    n_score_parts = lambda: len(list((run / "rows" / "scores").glob("part-*.parquet")))  # noqa: E731
    in_report = lambda: bool(list(run.glob(".report.*.tmp")))  # noqa: E731

    plan = [  # (stage aimed at, condition relative to the launch's starting state, max random extra delay in s)
        ("generate", lambda a: n_image_parts() >= a["images"] + 1, 0.3),
        ("generate", lambda a: n_image_parts() >= a["images"] + 2, 0.1),
        ("evaluate", lambda a: n_score_parts() >= a["scores"] + 3, 0.05),
        ("report", lambda a: in_report(), 0.8),
        ("random", None, None),  # a random moment 2-8 s after launch
    ]
    kills = []
    for aim, cond, extra in plan:
        at_launch = {"images": n_image_parts(), "scores": n_score_parts()}
        proc = subprocess.Popen(cli(tmp_path, "killed"), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        start = time.time()
        delay = rng.uniform(2.0, 8.0) if cond is None else None
        while proc.poll() is None and time.time() - start < 300:
            if (delay is not None and time.time() - start > delay) or (cond is not None and cond(at_launch)):
                break
            time.sleep(0.005)
        if extra:
            time.sleep(rng.uniform(0, extra))
        if proc.poll() is None:
            if in_report():
                stage = "report"
            elif n_score_parts() > at_launch["scores"]:
                stage = "evaluate"
            elif n_image_parts() > at_launch["images"] or aim == "generate":
                stage = "generate"
            else:
                stage = "start-up or report"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(stage)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        proc.stderr.close()
    done = subprocess.run(cli(tmp_path, "killed"), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run(cli(tmp_path, "whole"), cwd=ROOT, env=ENV, check=True, capture_output=True)

    print(f"kill -9 injected in stages: {kills}")
    assert len(kills) >= 4 and {"generate", "evaluate", "report"} <= set(kills), kills
    resumed, whole = snapshot(run), snapshot(tmp_path / "whole")
    assert_complete(resumed)
    assert_complete(whole)
    assert len(whole["images"]) == 4 * 2 * 5 and len(whole["scores"]) == 40 * 2
    for k in ("images", "scores", "report", "summary"):
        assert resumed[k] == whole[k], k
    meta = Store(run).meta()["invocations"]  # killed launches record nothing; finished ones do, without error
    assert len(meta) == len(plan) - len(kills) + 1 and not any("error" in m for m in meta)


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


def test_corrupt_pngs_and_parquet_parts_are_quarantined_and_redone(tmp_path, caplog):
    run = tmp_path / "corrupt"
    runner.run(cfg_of(*FAST, "sampler.batch_size=3"), run_dir=run)
    before = snapshot(run)
    s = Store(run)
    image_parts = sorted((run / "rows" / "images").glob("part-*.parquet"))
    assert len(image_parts) == 2
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


def test_nonfinite_images_are_flagged_with_their_step_and_left_out_of_means(tmp_path, capsys):
    run = tmp_path / "nan"
    entry = runner.run(cfg_of(*FAST, "grid.scales=[0,1,1e30]", "prompts.max_prompts=1"), run_dir=run)
    images = Store(run).images().set_index("scale")
    assert images.loc[1e30, "nonfinite"] and images.loc[1e30, "nonfinite_step"] >= 0
    assert not images.loc[0.0, "nonfinite"] and pd.isna(images.loc[0.0, "nonfinite_step"])
    assert entry["generate"]["nonfinite"] == 1  # the run went on
    summary = pd.read_csv(run / "report" / "tables" / "summary.csv")
    at = summary[summary.scale == 1e30]
    assert (at.n_nonfinite == 1).all() and at["mean"].isna().all() and (at.n == 0).all()
    assert summary[summary.scale == 1.0]["mean"].notna().all()
    table = next((run / "report" / "tables").glob("metrics_*.md")).read_text()
    assert "1 nonfinite" in table
    assert "(1 nonfinite, excluded)" in capsys.readouterr().out


def test_an_evaluator_failing_on_one_image_records_that_image_only(tmp_path):
    """The real OCR evaluator through the runner, on a prompt with no quoted target."""
    run = tmp_path / "ocr"
    items = "prompts.items=['a sign that says \"OPEN\"','a quiet lake at dawn']"
    base = [*FAST, "prompts=tiny", items, "grid.scales=[0,1]"]
    # with ocr selected, such a prompt is refused before anything is generated ...
    with pytest.raises(PromptError, match=r"(?s)1 of 2 prompts have no text inside double quotes.*#1 'a quiet lake"):
        runner.run(cfg_of(*base, "evaluators.selected=[jpeg,ocr]"), run_dir=run)
    assert not (run / "images").exists()
    # ... but images that already exist are scored, and the failure is recorded per image
    runner.run(cfg_of(*base, "stage=generate"), run_dir=run)
    entry = runner.run(cfg_of(*base, "stage=all", "evaluators.selected=[ocr]"), run_dir=run)
    assert entry["evaluate"]["ocr"]["failed_rows"] == 2
    images, scores = Store(run).images(), Store(run).scores()
    ocr = scores[scores.evaluator == "ocr"].merge(images[["image_key", "prompt"]], on="image_key")
    bad = ocr[ocr.prompt == "a quiet lake at dawn"]
    good = ocr[ocr.prompt != "a quiet lake at dawn"]
    assert len(bad) == 2 and bad.value.isna().all() and bad.error.str.contains("double quotes").all()
    assert len(good) == 2 and good.value.notna().all() and good.error.isna().all()
    summary = pd.read_csv(run / "report" / "tables" / "summary.csv")
    assert summary.n_failed.sum() == 2 and summary.n.sum() == 2


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


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
BAD_CONFIGS = [
    (["evaluators.selected=[jpeg,pickscor]"], ConfigError, r"unknown evaluator.*pickscor.*known evaluators: aesthetic"),
    (["evaluators.selected=[jpeg,jpeg]"], ConfigError, "more than once"),
    (["prompts.source=drawbenchh"], ConfigError, r"prompts.source='drawbenchh'.*drawbench"),
    (["sampler.scheduler=euler"], ConfigError, r"sampler.scheduler='euler'.*euler_ode"),
    (["pair.rl_kind=lora"], ConfigError, r"pair.rl_kind='lora'.*peft_lora"),
    (["pair.dtype=float8"], ConfigError, r"pair.dtype='float8'.*bfloat16"),
    (["device=gpu"], ConfigError, r"device='gpu'.*cuda:N"),
    (["tracker.wandb.mode=on"], ConfigError, r"tracker.wandb.mode='on'.*offline"),
    (["sampler.num_inference_steps=0"], ConfigError, r"num_inference_steps=0.*>= 1"),
    (["prompts.samples_per_prompt=-1"], ConfigError, "samples_per_prompt"),
    (["shard.index=2", "shard.count=2"], ConfigError, r"shard.index=2 is outside"),
    (["sampler.guidance_rescale=0.7"], ConfigError, "guidance_rescale=0"),
    (["sampler.window.start=0.8", "sampler.window.stop=0.2"], ConfigError, "start <= stop"),
    (["stage=train"], ConfigError, "stage='train'"),
    (["+sampler.num_inference_stepz=3"], ConfigError, "num_inference_stepz"),
    (["experiment=inpaint_sd15_dpo"], ConfigError, r"sampler.extra.image has no value.*sampler.extra.image=..."),
    (["grid.scales=[]"], ScaleError, "empty"),
    (["grid.scales=[0,nan]"], ScaleError, "finite"),
    (["grid.scales=[0,-inf]"], ScaleError, "finite"),
    (["grid.scales=[0,one]"], ScaleError, "finite"),
    (["grid.scales=[0,1,1.0]"], ScaleError, "duplicates"),
    (["prompts=tiny", "prompts.items=['  ','']"], PromptError, "empty"),
]


@pytest.mark.parametrize("overrides,error,match", BAD_CONFIGS, ids=[" ".join(o) for o, _, _ in BAD_CONFIGS])
def test_bad_config_values_fail_before_the_run_directory_is_touched(overrides, error, match, tmp_path):
    with pytest.raises(error, match=match):
        runner.run(cfg_of(*FAST, *overrides), run_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert issubclass(error, runner.USER_ERRORS)


def test_negative_scales_are_allowed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="rlg"):
        assert list(build.grid_scales(validate(cfg_of("grid.scales=[-1,0,1]")).grid.scales)) == [-1.0, 0.0, 1.0]
    assert "negative RLG scales [-1.0]" in caplog.text


def test_unknown_sampler_arguments_are_refused_before_generation(tmp_path):
    with pytest.raises(SamplerError, match=r"sampler.extra has \['strength_typo'\].*does not accept"):
        runner.run(cfg_of(*FAST, "+sampler.extra.strength_typo=1"), run_dir=tmp_path / "x")
    assert not Store(tmp_path / "x").images().shape[0]


def test_prompt_files_empty_not_utf8_blank_lines_bom(tmp_path):
    from rlg.harness.prompts import load_prompts

    def load(name: str, data: bytes, source: str = "file"):
        path = tmp_path / name
        path.write_bytes(data)
        return load_prompts(validate(cfg_of(f"prompts.source={source}", f"prompts.path={path}")).prompts, tmp_path)[0]

    with pytest.raises(PromptError, match="holds no prompts"):
        load("empty.txt", b"")
    with pytest.raises(PromptError, match="holds no prompts"):
        load("blank.txt", b"\n   \n\t\n")
    with pytest.raises(PromptError, match=r"not UTF-8.*re-save it as UTF-8"):
        load("latin1.txt", "caf\xe9\n".encode("latin-1"))
    assert [p.text for p in load("gaps.txt", b"a cat\n\n  \na dog\r\n")] == ["a cat", "a dog"]
    assert [p.text for p in load("bom.txt", "\ufeffa cat\n".encode())] == ["a cat"]
    with pytest.raises(PromptError, match=r"line 2 is not JSON"):
        load("bad.jsonl", b'{"prompt": "a"}\n{oops\n')


def test_geneval_metadata_rows_are_checked_against_the_schema(tmp_path):
    from rlg.harness.prompts import load_prompts

    good = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    bad_rows = [({**good, "tag": "shapes"}, "tag 'shapes'"),
                ({**good, "include": [{"class": "unicorn", "count": 1}]}, "class 'unicorn'"),
                ({**good, "include": [{"class": "cat", "count": 0}]}, "count must be"),
                ({**good, "extra": 1}, "unknown key")]
    for row, match in bad_rows:
        path = tmp_path / "meta.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(PromptError, match=rf"(?s)meta.jsonl line 2.*{match}.*Fix"):
            load_prompts(validate(cfg_of("prompts=geneval", f"prompts.path={path}")).prompts, tmp_path)
    # the GenEval evaluator on prompts without metadata: refused at start-up
    with pytest.raises(PromptError, match="GenEval needs a metadata row with every prompt"):
        runner.run(cfg_of(*FAST, "evaluators.selected=[geneval]"), run_dir=tmp_path / "g")


def test_prompts_longer_than_the_text_encoder_are_flagged_truncated(tmp_path):
    long = "a watercolor painting of " + " and ".join(f"a small red house number {i}" for i in range(40))
    run = tmp_path / "long"
    runner.run(cfg_of(*FAST, "stage=generate", "grid.scales=[1]", f"prompts.items=['a cat','{long}']"),
                   run_dir=run)
    images = Store(run).images().set_index("prompt")
    assert images.loc[long, "truncated"] and not images.loc["a cat", "truncated"]


def _fixture(family: str) -> Path:
    from rlg.tiny_pairs import build_pair

    return build_pair(family)


def test_the_cli_refuses_bad_input_with_exit_code_2_and_no_traceback(tmp_path):
    sd, sd3, sdxl = _fixture("sd"), _fixture("sd3"), _fixture("sdxl")
    truncated = tmp_path / "truncated-adapter"
    shutil.copytree(sd / "rl-peft", truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    # the real preset pointed at local tiny checkpoints: its pinned hub revision and fp16 variant do not apply
    local = ["pair=sd15_dpo", "pair.dtype=float32", "pair.offline=true", "pair.rl.subfolder=null",
             "pair.base.revision=null", "pair.base.variant=null"]
    cases = {  # name -> (overrides, what the message must say)
        "unknown experiment": (["experiment=quickstrat"], r"Available options in 'experiment'.*quickstart"),
        "unknown pair": (["pair=sd15_dop"], r"Available options in 'pair'.*sd15_dpo"),
        "unknown sampler": (["sampler=tinyy"], r"Available options in 'sampler'.*tiny"),
        "unknown prompt set": (["prompts=geneva"], r"Available options in 'prompts'.*geneval"),
        "unknown evaluator": (["evaluators.selected=[jpg]"], r"unknown evaluator.*jpg.*known evaluators"),
        "misspelt key": (["sampler.num_inference_stepz=3"],
                         r"unknown config key 'sampler.num_inference_stepz'; did you mean 'sampler.num_inference_steps'"),
        "wrong type": (["sampler.num_inference_steps=many"], r"many.*num_inference_steps"),
        "NaN scale": (["grid.scales=[0,nan]"], r"scales must be finite numbers"),
        "missing checkpoint path": ([*local, f"pair.base.id={tmp_path}/nowhere", f"pair.rl.id={tmp_path}/nowhere2"],
                                    r"cannot load the base pipeline.*Fix: the local path"),
        "offline download": (["pair=sd15_dpo", "pair.offline=true"],
                             r"hf download stable-diffusion-v1-5/stable-diffusion-v1-5.*offline mode is on"),
        "wrong layout": ([*local, f"pair.base.id={sd / 'rl-peft'}", f"pair.rl.id={sd / 'rl-full'}"],
                         r"cannot load the base pipeline"),
        "LoRA for another architecture": ([*local, f"pair.base.id={sd / 'base'}", f"pair.rl.id={sd3 / 'rl-peft'}",
                                           "pair.rl_kind=peft_lora"], r"matches no module"),
        "base/RL mismatch": ([*local, f"pair.base.id={sd / 'base'}", f"pair.rl.id={sdxl / 'rl-full'}",
                              "pair.rl.subfolder=unet"], r"different config from the base.*cross_attention_dim"),
        "truncated checkpoint": ([*local, f"pair.base.id={sd / 'base'}", f"pair.rl.id={truncated}",
                                  "pair.rl_kind=peft_lora"], r"cannot load the pair.*Fix: check that the checkpoint"),
    }
    env = {**ENV, "HF_HOME": str(tmp_path / "empty-hf-home")}  # nothing cached: the hub ids must fail offline
    def launch(name):
        cmd = [sys.executable, "run.py", f"paths.root={tmp_path / 'runs'}", f"name={name.replace(' ', '_')}",
               *FAST, *cases[name][0]]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    failures, waiting, running = [], list(cases), {}
    while waiting or running:
        while waiting and len(running) < 3:  # a few at a time: the machine is small
            name = waiting.pop(0)
            running[name] = launch(name)
        name = next(iter(running))
        proc = running.pop(name)
        out = proc.communicate(timeout=600)[0]
        if proc.returncode != 2 or "Traceback" in out or not re.search(cases[name][1], out, re.S):
            failures.append(f"{name}: rc={proc.returncode}\n{out[-2000:]}")
    assert not failures, "\n\n".join(failures)
    assert not list((tmp_path / "runs").glob("*/images"))  # nothing was generated for any of them


# --------------------------------------------------------------------------------------------
# Security
# --------------------------------------------------------------------------------------------
SOURCE_DIRS = ["rlg", "benchmarks", "run.py"]


def _sources(*suffixes: str):
    for d in SOURCE_DIRS:
        p = ROOT / d
        for f in [p] if p.is_file() else p.rglob("*"):
            if f.is_file() and f.suffix in suffixes:
                yield f, f.read_text(errors="replace")


def _dotted(node) -> str:
    import ast

    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_no_remote_code_no_shell_and_pickles_only_with_weights_only():
    """Read from the code itself (AST), so docstrings quoting upstream do not count."""
    import ast

    for path, text in _sources(".py", ".yaml", ".yml", ".toml"):
        assert not re.search(r"trust_remote_code\s*[=:]\s*(True|true|1)\b", text), path
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            name, kw = _dotted(node.func), {k.arg: k.value for k in node.keywords}
            where = f"{path}:{node.lineno} {name}"
            assert name not in ("eval", "exec", "os.system", "os.popen", "pickle.load", "pickle.loads"), where
            shell = kw.get("shell")
            assert not (isinstance(shell, ast.Constant) and shell.value), where
            trc = kw.get("trust_remote_code")
            assert trc is None or (isinstance(trc, ast.Constant) and trc.value is False), where
            if name == "torch.load":
                wo = kw.get("weights_only")
                assert isinstance(wo, ast.Constant) and wo.value is True, where


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_even_with_allow_pickle(tmp_path):
    sd = _fixture("sd")
    rl = tmp_path / "evil"
    shutil.copytree(sd / "rl-full", rl)
    (rl / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(rl / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Payload(marker)}, f)
    pair = ["pair=sd15_dpo", "pair.dtype=float32", "pair.offline=true", f"pair.base.id={sd / 'base'}",
            f"pair.rl.id={rl}", "pair.base.revision=null", "pair.base.variant=null"]
    with pytest.raises(PairError, match="allow_pickle=true"):  # safetensors only by default
        runner.run(cfg_of(*FAST, *pair), run_dir=tmp_path / "a")
    with pytest.raises(PairError):  # opted in: read with torch.load(weights_only=True), which refuses code
        runner.run(cfg_of(*FAST, *pair, "pair.allow_pickle=true"), run_dir=tmp_path / "b")
    assert not marker.exists(), "the pickle ran code"


def test_prompt_text_never_reaches_a_path_and_secrets_never_reach_the_run_directory(tmp_path):
    evil = "../../etc/passwd; rm -rf / $(touch pwned) `touch pwned2`"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{evil}\na sign that says \"OK\"\n")
    secret = "fake-wandb-key-0123456789abcdef0123456789abcdef"
    env = {**ENV, "WANDB_API_KEY": secret, "HF_TOKEN": "hf_fakeTokenValue0123456789", "WANDB_SILENT": "true"}
    passwd = Path("/etc/passwd").stat()
    cmd = [sys.executable, "run.py", f"paths.root={tmp_path / 'runs'}", "name=evil", *FAST,
           "prompts=file", f"prompts.path={prompts}", "tracker=wandb_offline", "report.n_resamples=20"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "evil"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files), "no W&B offline run was written"
    for p in run.rglob("*"):
        rel = str(p.relative_to(run))
        assert "passwd" not in rel and "rm -rf" not in rel and ".." not in p.relative_to(run).parts, rel
    assert all(re.fullmatch(r"[0-9a-f]{64}\.png", p.name) for p in run.glob("images/*/*"))
    with_prompt = {p for p in files if evil.encode() in p.read_bytes()}
    parquet = {p for p in with_prompt if p.suffix == ".parquet"}
    assert parquet and all(p.parent == run / "rows" / "images" for p in parquet)
    # besides the rows, only result views show it as data: the W&B image table, report figures
    assert all(p.suffix == ".parquet" or {"wandb", "report"} & set(p.relative_to(run).parts) for p in with_prompt), \
        with_prompt
    assert evil in set(Store(run).images().prompt)
    for p in files:  # neither secret in any file: store, meta.json, run.log, .hydra, W&B files
        data = p.read_bytes()
        assert secret.encode() not in data and b"hf_fakeTokenValue" not in data, p
    assert secret not in out.stdout + out.stderr
    assert not list(tmp_path.rglob("pwned*")) and not (ROOT / "pwned").exists()
    assert Path("/etc/passwd").stat().st_mtime == passwd.st_mtime


def test_secret_looking_config_values_are_redacted_from_run_metadata(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-123456")
    meta = {"overrides": ["tracker.wandb.entity=me", "x=s3cr3t-value-123456"], "api_key": "abc", "n": 1,
            "nested": {"password": "p", "ok": "fine"}}
    assert redact(meta) == {"overrides": ["tracker.wandb.entity=me", "x=<redacted>"],
                                       "api_key": "<redacted>", "n": 1,
                                       "nested": {"password": "<redacted>", "ok": "fine"}}
    assert redact({"tokenizer": "bert-base-uncased", "max_tokens": 77}) == \
        {"tokenizer": "bert-base-uncased", "max_tokens": 77}  # provenance is kept
