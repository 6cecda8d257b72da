"""rlg.harness.runner end to end on the tiny offline pair: presets, store, resume (also after kill -9),
ranks, W&B."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from rlg.harness import build, runner, stages
from rlg.harness.config import ConfigError, validate
from rlg.store import Store
from rlg.harness.tracking import read_run
from tests.helpers.runs import ENV, assert_complete, cli, snapshot

ROOT = Path(__file__).resolve().parent.parent
FAST = ["experiment=tiny", "debug=fast"]  # the random-weight plumbing pair, rlg/conf/debug/fast.yaml


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "rlg" / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def store_state(run_dir: Path) -> tuple[set, int, set]:
    """(key, sha256) pairs, raw row count, PNG files on disk."""
    s = Store(run_dir)
    raw = s._read("images", [])
    pngs = {str(p.relative_to(run_dir)) for p in run_dir.glob("images/*/*.png")}
    return set(zip(s.images().image_key, s.images().image_sha256)), len(raw), pngs


def test_every_experiment_preset_composes():
    names = sorted(p.stem for p in (ROOT / "rlg" / "conf" / "experiment").glob("*.yaml"))
    assert "quickstart" in names and len(names) >= 14
    for name in names:
        cfg = validate(compose_cfg(f"experiment={name}"))
        assert cfg.name == name and cfg.pair.name and cfg.grid.scales and cfg.evaluators.selected


def test_every_pair_preset_is_a_valid_pair():
    for path in sorted((ROOT / "rlg" / "conf" / "pair").glob("*.yaml")):
        cfg = validate(compose_cfg(f"pair={path.stem}"))
        spec_ok = cfg.pair.tiny or cfg.pair.analytic or (cfg.pair.base.id and cfg.pair.rl.id)
        assert spec_ok and cfg.pair.rl_kind in ("full", "diffusers_lora", "peft_lora"), path.name


def test_misspelt_keys_and_wrong_types_name_the_key(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="num_inference_stepz"):
        compose_cfg("sampler.num_inference_stepz=3")
    with pytest.raises(ConfigError, match="num_inference_stepz"):  # '+' forces it in; run() still refuses
        validate(compose_cfg("+sampler.num_inference_stepz=3"))
    with pytest.raises(ConfigCompositionException, match="sampler.num_inference_steps"):
        compose_cfg("sampler.num_inference_steps=many")
    with pytest.raises(ConfigError, match="stage"):
        validate(compose_cfg("stage=train"))
    # a misspelt key inside a preset file fails too, naming the key and its group
    (tmp_path / "sampler").mkdir()
    (tmp_path / "sampler" / "typo.yaml").write_text("name: typo\nguidence_scale: 3\n")
    with initialize_config_dir(config_dir=str(ROOT / "rlg" / "conf"), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="guidence_scale"):
            compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "sampler=typo"])
    # unknown group options list the valid names
    with pytest.raises(Exception, match="(?s)Available options.*quickstart"):
        compose_cfg("experiment=quickstrat")


@pytest.mark.parametrize("scales,match", [("[]", "empty"), ("[0,1,1]", "duplicates"), ("[0,nan]", "finite"),
                                          ("[0,inf]", "finite"), ("[0,abc]", "finite")])
def test_bad_grids_are_refused(scales, match):
    with pytest.raises(ConfigError, match=match):  # by the light validation, before torch is imported
        validate(compose_cfg(f"grid.scales={scales}"))


def test_tiny_reduced_runs_end_to_end(tmp_path):
    cfg = compose_cfg(*FAST, "tracker=wandb_offline", "evaluators.selected=[jpeg,ocr]")
    run_dir = tmp_path / "tiny"
    entry = runner.run(cfg, run_dir=run_dir)
    images, scores = Store(run_dir).images(), Store(run_dir).scores()
    assert len(images) == 2 * 1 * 3  # prompts x samples x scales
    assert sorted(images.scale.unique()) == [0.0, 1.0, 2.0]
    assert images.image_key.is_unique and not images.nonfinite.any()
    # jpeg gives 2 metrics, ocr 2 (accuracy, confidence), per image
    assert len(scores) == len(images) * 4 and scores.error.isna().all()
    files = entry["report"]["files"]
    assert any(f.endswith(".md") for f in files) and any(f.endswith(".png") for f in files)
    meta = json.loads((run_dir / "meta.json").read_text())["invocations"][-1]
    assert meta["config"]["pair"]["name"] == "tiny_sd_peft" and meta["versions"]["torch"]
    assert "git_commit" in meta and meta["prompts"]["count"] == 2
    assert "WANDB_API_KEY" not in json.dumps(meta)
    runs = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert runs, "no W&B offline run directory"
    summary = read_run(Path(runs[0]))["summary"]  # W&B's own reader of an offline run
    assert {"jpeg_incompressibility@w=1", "ocr_accuracy@w=1"} <= set(summary)
    at_one = images[images.scale == 1.0].image_key
    expected = scores[scores.image_key.isin(at_one) & (scores.metric == "jpeg_incompressibility")].value.mean()
    assert summary["jpeg_incompressibility@w=1"] == pytest.approx(expected)

    # rerunning the same command makes nothing new and scores nothing again
    again = runner.run(compose_cfg(*FAST, "evaluators.selected=[jpeg,ocr]"),
                           run_dir=run_dir)
    assert again["generate"]["images_made"] == 0
    assert all(v["scored"] == 0 for v in again["evaluate"].values())
    assert len(Store(run_dir).scores()) == len(scores)


def test_stages_run_alone_and_a_new_evaluator_joins_an_old_run(tmp_path):
    run_dir = tmp_path / "staged"
    runner.run(compose_cfg(*FAST, "stage=generate"), run_dir=run_dir)
    assert len(Store(run_dir).images()) == 6 and len(Store(run_dir).scores()) == 0
    runner.run(compose_cfg(*FAST, "stage=evaluate"), run_dir=run_dir)
    assert set(Store(run_dir).scores().evaluator) == {"jpeg"}
    runner.run(compose_cfg(*FAST, "stage=evaluate", "evaluators.selected=[jpeg,ocr]"), run_dir=run_dir)
    scores = Store(run_dir).scores()
    assert set(scores.evaluator) == {"jpeg", "ocr"} and len(scores) == 6 * 4  # jpeg 2 metrics, ocr 2
    entry = runner.run(compose_cfg(*FAST, "stage=report"), run_dir=run_dir)
    assert (run_dir / "report" / "tables").is_dir() and entry["report"]["files"]


def test_pair_is_loaded_once_across_jobs_of_a_sweep(tmp_path):
    runner.run(compose_cfg(*FAST, "stage=generate"), run_dir=tmp_path / "a")
    pair = stages.PAIRS.pair
    runner.run(compose_cfg(*FAST, "stage=generate", "grid.scales=[0.5,1.5]"), run_dir=tmp_path / "b")
    assert stages.PAIRS.pair is pair


def _cli(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "run.py", "experiment=tiny", f"name={name}", f"paths.root={tmp_path}",
            "sampler.num_inference_steps=2",
            "grid.scales=[0,0.5,1,1.5,2]", "prompts.samples_per_prompt=2", "sampler.batch_size=5",
            "evaluators.selected=[jpeg]", "tracker=none", "report.n_resamples=50", "report.grid_prompts=2", *extra]


def test_two_process_run_equals_one_process_run(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU) into one run directory: the same store as one process, each
    image made once and scored once (counted in raw rows and in each rank's own count), and on disk one
    row per key, so plain pandas reads what the Store reads."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _cli(tmp_path, "two", "prompts.samples_per_prompt=1", "barrier_timeout_min=45")
    # docs/scale-out.md's recipe for one node with 8 GPUs, on 2 CPU processes: torchrun ... -m rlg.harness.cli
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "rlg.harness.cli"]
    subprocess.run(torchrun + cmd[2:], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(_cli(tmp_path, "one", "prompts.samples_per_prompt=1"), cwd=ROOT, env=env, check=True,
                   capture_output=True)
    two, one = store_state(tmp_path / "two")[0], store_state(tmp_path / "one")[0]
    assert two == one and len(one) == 4 * 5
    ranks = json.loads((tmp_path / "two" / "meta.json").read_text())["invocations"]
    assert {(e["rank"], e["world"], e["device"]) for e in ranks} == {(0, 2, "cpu"), (1, 2, "cpu")}  # each rank's own
    assert [e["barrier_timeout_s"] for e in ranks] == [45 * 60] * 2  # the process group's own (gloo default: 30 min)
    made = [e["generate"]["images_made"] for e in ranks]
    scored = [e["evaluate"]["jpeg"]["scored"] for e in ranks]
    assert sorted(made) == [10, 10] and sorted(scored) == [10, 10]  # 20 images, each made once and scored once
    rank0 = next(e for e in ranks if e["rank"] == 0)  # rank 0 compacts after each barrier: nothing superseded
    assert rank0["compacted_after_generate"] == {"images": 0, "scores": 0}
    assert rank0["compacted_after_evaluate"] == {"images": 0, "scores": 0}
    # the way a user reads the store: plain pandas over the parquet parts, no dedup rule
    raw_images = pd.read_parquet(tmp_path / "two" / "rows" / "images")
    raw_scores = pd.read_parquet(tmp_path / "two" / "rows" / "scores")
    assert len(raw_images) == 20 and raw_images.image_key.is_unique
    assert len(raw_scores) == 20 * raw_scores.metric.nunique()
    per_scale = raw_scores.merge(raw_images[["image_key", "scale"]], on="image_key").groupby("scale").size()
    assert per_scale.tolist() == [4 * raw_scores.metric.nunique()] * 5
    s1, s2 = Store(tmp_path / "one").scores(), Store(tmp_path / "two").scores()
    key = ["image_key", "metric"]
    pd.testing.assert_frame_equal(s1.sort_values(key)[key + ["value"]].reset_index(drop=True),
                                  s2.sort_values(key)[key + ["value"]].reset_index(drop=True))
    pd.testing.assert_frame_equal(raw_scores.sort_values(key)[key + ["value"]].reset_index(drop=True),
                                  s2.sort_values(key)[key + ["value"]].reset_index(drop=True))


def test_prompt_sets_parse_the_real_upstream_files(shared_file):
    from rlg.harness.prompts import SOURCES, load_prompts

    def load(source, path, **kw):
        cfg = validate(compose_cfg(f"prompts.source={source}", f"prompts.path={path}",
                                   *[f"prompts.{k}={v}" for k, v in kw.items()])).prompts
        return load_prompts(cfg, "/nonexistent-cache")

    geneval, info = load("geneval", shared_file("geneval/evaluation_metadata.jsonl"))
    assert len(geneval) == 553 and info["sha256"] == SOURCES["geneval"].sha256
    assert {p.metadata["tag"] for p in geneval} == {"single_object", "two_object", "counting", "colors", "position",
                                                    "color_attr"}
    ocr, info = load("flow_grpo_ocr", shared_file("flow_grpo/ocr_test.txt"))
    assert len(ocr) == 1018 and info["sha256"] == SOURCES["flow_grpo_ocr"].sha256
    assert all('"' in p.text for p in ocr)
    pick, _ = load("flow_grpo_pickscore", shared_file("flow_grpo/pickscore_test.txt"))
    sfw, info = load("flow_grpo_pickscore", shared_file("flow_grpo/pickscore_test.txt"), sfw="true")
    assert len(pick) == 2048 and 0 < info["sfw_removed"] == 2048 - len(sfw)
    assert {p.id for p in sfw} <= {p.id for p in pick}  # ids stay those of the full set


def test_prompt_file_errors(tmp_path):
    from rlg.harness.prompts import PromptError, load_prompts

    def load(path):
        return load_prompts(validate(compose_cfg("prompts=file", f"prompts.path={path}")).prompts, tmp_path)

    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(PromptError, match="no prompts"):
        load(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(PromptError, match="not UTF-8"):
        load(tmp_path / "latin1.txt")
    (tmp_path / "blank.txt").write_text("a cat\n\n\na dog\n")
    assert [p.text for p in load(tmp_path / "blank.txt")[0]] == ["a cat", "a dog"]
    with pytest.raises(ConfigError, match="does not exist"):  # refused by validate(), before torch is imported
        load(tmp_path / "missing.txt")


def test_failed_download_names_url_and_override(tmp_path, monkeypatch):
    from rlg.harness import prompts

    src = prompts.SOURCES["geneval"]
    monkeypatch.setitem(prompts.SOURCES, "geneval", prompts.Source("http://127.0.0.1:9/metadata.jsonl", src.sha256,
                                                                    src.parse, src.filename))
    cfg = validate(compose_cfg("prompts=geneval")).prompts
    with pytest.raises(prompts.PromptError, match=r"127\.0\.0\.1:9/metadata\.jsonl.*prompts\.path="):
        prompts.load_prompts(cfg, tmp_path)


def test_evaluator_presets_only_use_real_options():
    import importlib
    import inspect

    from rlg.evaluators.base import REGISTRY

    for path in sorted((ROOT / "rlg" / "conf" / "evaluators").glob("*.yaml")):
        cfg = validate(compose_cfg(f"evaluators={path.stem}")).evaluators
        for name in cfg.selected:
            assert name in REGISTRY, f"{path.name}: unknown evaluator {name}"
        for name, opts in cfg.options.items():
            mod, cls = REGISTRY[name].split(":")
            params = inspect.signature(getattr(importlib.import_module(mod), cls).__init__).parameters
            assert set(opts) <= set(params), f"{path.name}: {name} has no option(s) {set(opts) - set(params)}"


def test_ground_truth_preset_runs_through_the_harness(tmp_path):
    cfg = compose_cfg("experiment=ground_truth", "grid.scales=[0,1,3]", "ground_truth.num_inference_steps=30",
                      "ground_truth.n_per_batch=200", "ground_truth.n_batches=4",
                      "ground_truth.samplers=[flow_euler_ode,flow_grpo_sde]", "tracker=none")
    entry = runner.run(cfg, run_dir=tmp_path / "gt")
    df = Store(tmp_path / "gt").read_table("ground_truth")
    assert set(df.sampler) == {"flow_euler_ode", "flow_grpo_sde"} and set(df.w) == {0.0, 1.0, 3.0}
    ed = df[(df.metric == "energy_distance") & (df.method == "rlg")]
    # the mixture + quadratic reward case is inexact: at w=3 the gap stands above the Monte-Carlo floor,
    # at w=0 (the base model itself) it does not
    assert (ed[ed.w == 3.0].z > 3).all() and (ed[ed.w == 0.0].z.abs() < 4).all()
    files = entry["report"]["files"]
    assert any("distance" in f and f.endswith(".png") for f in files)
    table = (tmp_path / "gt" / "report" / "tables" / "ground_truth.md").read_text()
    assert "flow_grpo_sde" in table and "| 3 |" in table


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
    assert len(kills) >= 3 and {"generate", "evaluate", "report"} <= set(kills), kills
    resumed, whole = snapshot(run), snapshot(tmp_path / "whole")
    assert_complete(resumed)
    assert_complete(whole)
    assert len(whole["images"]) == 4 * 2 * 5 and len(whole["scores"]) == 40 * 2
    for k in ("images", "scores", "report", "summary"):
        assert resumed[k] == whole[k], k
    meta = Store(run).meta()["invocations"]  # killed launches record nothing; finished ones do, without error
    assert len(meta) == len(plan) - len(kills) + 1 and not any("error" in m for m in meta)
