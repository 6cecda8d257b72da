"""The harness's trust guarantees (issue 12) and its structure (issue 11): one protocol per series,
complete splits, refusals before any work, per-rank devices, valid sweep directories, import layering,
and every experiment preset running on the tiny pair of its family."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlg.harness import build, runner, stages
from rlg.harness.config import ConfigError
from rlg.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENV_ONE_THREAD = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _scores_by_image(store: Store) -> dict[tuple[str, str], float]:
    s = store.scores()
    return {(k, m): v for k, m, v in zip(s.image_key, s.metric, s.value)}


# -- 3. one protocol per series ----------------------------------------------------------------
def test_two_settings_in_one_directory_are_two_series_and_the_second_launch_says_so(compose, tmp_path, caplog):
    run = tmp_path / "r"
    runner.run(compose("debug=fast", "prompts.max_prompts=1", "sampler.num_inference_steps=2"), run_dir=run)
    with caplog.at_level(logging.WARNING, logger="rlg"):
        entry = runner.run(compose("debug=fast", "prompts.max_prompts=1", "sampler.num_inference_steps=3"),
                           run_dir=run)
    assert any("other setting" in r.message and "name=" in r.message for r in caplog.records)
    images = Store(run).images()
    assert images.groupby("config_id").size().to_dict() == {cid: 3 for cid in images.config_id.unique()}
    assert images.config_id.nunique() == 2 and entry["config_id"] in set(images.config_id)
    summary = pd.read_csv(run / "report" / "tables" / "summary.csv")
    metric = "jpeg_incompressibility"  # the default preset's (quickstart) reward; debug=fast keeps its direction
    per_series = summary[summary.metric == metric].groupby("config_id")
    # each setting is its own series with its own single image per scale, never pooled (n=2)
    assert per_series.ngroups == 2 and set(summary.n) == {1}
    # the series means equal the hand-computed means of that setting's own images
    scores = Store(run).scores()
    merged = scores[scores.metric == metric].merge(images, on="image_key")
    expected = merged.groupby(["config_id", "scale"]).value.mean()
    got = summary[summary.metric == metric].set_index(["config_id", "scale"])["mean"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)


# -- 4. any split gives the same store ----------------------------------------------------------
def test_manual_shards_in_sequence_give_the_store_of_one_process(compose, tmp_path):
    common = ("debug=fast", "grid.scales=[0,1]", "prompts.samples_per_prompt=2")
    runner.run(compose(*common), run_dir=tmp_path / "one")
    split = tmp_path / "split"
    first = runner.run(compose(*common, "shard.count=2", "shard.index=0"), run_dir=split)  # generate + evaluate
    assert "report" not in first and first["report_deferred"] == {"done": 4, "total": 8}
    assert not (split / "report").exists()  # half a run is not reported
    last = runner.run(compose(*common, "shard.count=2", "shard.index=1"), run_dir=split)
    assert last["report"]["index"] == str(split / "report" / "index.md")  # the last shard writes the report
    runner.run(compose(*common, "stage=report"), run_dir=split)
    one, two = Store(tmp_path / "one"), Store(split)
    assert set(zip(one.images().image_key, one.images().image_sha256)) == \
        set(zip(two.images().image_key, two.images().image_sha256))
    assert len(one.images()) == 8
    assert _scores_by_image(one) == _scores_by_image(two)  # every image scored, with the same values
    summary = pd.read_csv(split / "report" / "tables" / "summary.csv")
    assert summary.n_unscored.sum() == 0
    # the report a stage=all run writes states the protocol a later stage=report of its store states (its own
    # invocation is recorded in meta.json only when it ends: the first report once lacked base, rl, sampler, seed)
    before = _protocol_section(tmp_path / "one")
    runner.run(compose(*common, "stage=report"), run_dir=tmp_path / "one")
    assert before == _protocol_section(tmp_path / "one")
    assert all(f"| {row} |" in before for row in ("base", "rl", "sampler", "seed", "reward"))


def _protocol_section(run: Path) -> str:
    text = (run / "report" / "index.md").read_text()
    return text.split("## Protocol", 1)[1].split("\n## ", 1)[0]


# -- 6. refuse at start-up ----------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("+evaluators.options.ocr.engin=paddleocr", r"evaluators.options.ocr has unknown option\(s\) \['engin'\]"),
    ("+evaluators.options.ocr.engine=tesseract", r"unknown OCR engine 'tesseract'"),
    ("+evaluators.options.ocrr.engine=easyocr", r"evaluators.options names \['ocrr'\], which is not an evaluator"),
    ("sampler.noise_level=0.5", r"noise_level=0.5 has no effect"),
    ("sampler.shift=3", r"shift=3.0 has no effect"),
    ("sampler.window.outside=base", r"window.outside has no effect"),
])
def test_what_cannot_be_honoured_is_refused_before_any_work(compose, tmp_path, override, message):
    cfg = compose("debug=fast", "evaluators.selected=[ocr]", "prompts=tiny", override)
    with pytest.raises(runner.USER_ERRORS, match=message):
        runner.run(cfg, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing touched


def test_a_misspelt_evaluator_option_exits_2_with_one_line_before_generation(tmp_path):
    cmd = [sys.executable, "run.py", f"paths.root={tmp_path}", "name=x", "debug=fast", "evaluators.selected=[ocr]",
           "+evaluators.options.ocr.engin=paddleocr"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, **ENV_ONE_THREAD})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "unknown option(s) ['engin']; ocr accepts:" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "x" / "images").exists()


def test_sampler_eta_with_a_flow_scheduler_is_refused(compose, tmp_path):
    cfg = compose("debug=fast", "pair=tiny_sd3_full", "sampler.scheduler=euler_ode", "sampler.eta=1.0")
    with pytest.raises(ConfigError, match="eta=1.0 has no effect with sampler.scheduler=euler_ode"):
        build.build(cfg)


# -- 5. each rank on its own device -------------------------------------------------------------
def test_each_rank_gets_its_own_gpu_and_no_rank_shares_gpu_0():
    assert build.resolve_device("auto", local_rank=0, cuda_count=4) == "cuda:0"
    assert build.resolve_device("auto", local_rank=3, cuda_count=4) == "cuda:3"
    assert build.resolve_device("cuda", local_rank=1, cuda_count=2) == "cuda:1"
    assert build.resolve_device("auto", local_rank=1, cuda_count=0) == "cpu"
    assert build.resolve_device("cuda:1", local_rank=0, cuda_count=2) == "cuda:1"  # explicit stays explicit
    with pytest.raises(ConfigError, match="LOCAL_RANK=2 has no GPU of its own"):
        build.resolve_device("auto", local_rank=2, cuda_count=2)
    assert build.resolve_rank(build.ShardConf(index=1, count=3), env={}) == (1, 3, False)
    assert build.resolve_rank(build.ShardConf(), env={"WORLD_SIZE": "4", "RANK": "2"}) == (2, 4, True)
    # ranks inside shards: shard 1 of 2, launched with 4 ranks, is ranks 4..7 of 8
    assert build.resolve_rank(build.ShardConf(index=1, count=2), env={"WORLD_SIZE": "4", "RANK": "2"}) == (6, 8, True)


def test_submitit_tasks_become_torch_distributed_ranks(monkeypatch):
    """Task 1 of a 2-task submitit job (what SLURM's tasks_per_node=2 gives) exports the env:// variables
    through submitit's own TorchDistributedEnvironment; outside a submitit job nothing changes."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "SUBMITIT_EXECUTOR"):  # set then deleted, so monkeypatch restores them as they were (the export
        monkeypatch.setenv(k, "")  # below writes os.environ itself; a leaked WORLD_SIZE=2 would make every
        monkeypatch.delenv(k)      # later in-process run wait for a rank 1 that never comes)
    assert not build.submitit_ranks() and "WORLD_SIZE" not in os.environ
    job = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1",
           "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
           "SUBMITIT_LOCAL_NODEID": "0", "CUDA_VISIBLE_DEVICES": "0,1"}
    for k, v in job.items():
        monkeypatch.setenv(k, v)
    assert build.submitit_ranks()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["MASTER_ADDR"] and os.environ["MASTER_PORT"].isdigit()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # each rank then takes cuda:LOCAL_RANK of all visible
    assert not build.submitit_ranks()  # already exported (or set by torchrun): left alone
    assert build.resolve_rank(build.ShardConf(index=1, count=3)) == (3, 6, True)


# -- 8. sweep directories -----------------------------------------------------------------------


def test_a_multirun_with_a_long_value_and_a_slash_runs_and_resumes(tmp_path):
    neg = "x" * 288
    cmd = [sys.executable, "run.py", "-m", f"paths.root={tmp_path}", "name=sw", "debug=fast", "stage=generate",
           "grid.scales=[1]", "prompts.max_prompts=1", f"sampler.negative_prompt='{neg}'",
           "sampler.guidance_scale=4,5", f"paths.cache={tmp_path}/c/d"]
    env = {**__import__("os").environ, **ENV_ONE_THREAD}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sw-sweep").iterdir() if (p / "meta.json").is_file())
    assert len(jobs) == 2 and all(len(p.name) <= 80 for p in jobs)
    assert all(len(Store(p).images()) == 1 for p in jobs)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("0 to make") == 2  # both jobs resumed


# -- issue 11: layering: tests/test_layering.py (computed from the import graph) ------------------------


# -- issue 11: every preset runs on its tiny family -------------------------------------------------
FAMILY = {"sd15": "sd", "personalized": "sd", "sdxl": "sdxl", "sd35m": "sd3", "flux": "flux"}


def _presets() -> list[str]:
    return sorted(p.stem for p in (ROOT / "rlg" / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", _presets())
def test_every_experiment_preset_runs_on_the_tiny_pair_of_its_family(compose, tmp_path, preset):
    cfg = compose(f"experiment={preset}")
    if cfg.kind != "images":
        pytest.skip("a measurement, not an image grid (the analytic and KL-claim presets have their own tests)")
    if str(cfg.pair.name).startswith("zoo"):  # the zoo's shipped weights run as they are
        from rlg.zoo import resolve_zoo_id

        try:
            resolve_zoo_id(cfg.pair.base.id), resolve_zoo_id(cfg.pair.rl.id)
        except FileNotFoundError as exc:
            pytest.skip(f"zoo weights not shipped: {exc}")
        fast = [f"experiment={preset}", "debug=fast", "prompts.max_prompts=1"]
        n = len(stages.job_arms(build.build(compose(*fast))))  # 3 scales, or every arm of a methods preset
        entry = runner.run(compose(*fast), run_dir=tmp_path / "r")
        assert entry["generate"]["images_made"] == n and entry["evaluate"]["jpeg"]["scored"] == n
        return
    kind = {"full": "full", "diffusers_lora": "lora", "peft_lora": "peft"}[cfg.pair.rl_kind]
    family = cfg.pair.tiny or FAMILY.get(str(cfg.pair.name).split("_")[0])
    assert family, f"no tiny family known for pair {cfg.pair.name}; add it to FAMILY"
    extra = [f"pair=tiny_{family}_{kind}", "prompts=tiny", "prompts.max_prompts=1"]
    if cfg.pair.get("pipeline_class") == "StableDiffusionInpaintPipeline":
        from PIL import Image

        Image.new("RGB", (32, 32), (120, 60, 30)).save(tmp_path / "img.png")
        Image.new("L", (32, 32), 255).save(tmp_path / "mask.png")
        extra = ["pair=tiny_sd_full", "pair.tiny=sd_inpaint", "pair.pipeline_class=null", "prompts=tiny",
                 "prompts.max_prompts=1",
                 f"sampler.extra.image={tmp_path}/img.png",
                 f"sampler.extra.mask_image={tmp_path}/mask.png"]
    from omegaconf import OmegaConf

    missing = OmegaConf.missing_keys(compose(f"experiment={preset}", *extra))
    # the tiny family brings base and rl: a checkpoint the preset leaves for the user to fill is dropped
    extra += [f"pair.{node}=null" for node in sorted({k.split(".")[1] for k in missing if k.startswith("pair.")})]
    if "best_of_n" in cfg.get("method", {}):  # debug=fast scores JPEG only: best-of-N picks with it
        extra += ["method.best_of_n.pick=jpeg_compressibility"]
    n = len(stages.job_arms(build.build(compose(f"experiment={preset}", "debug=fast", *extra))))
    entry = runner.run(compose(f"experiment={preset}", "debug=fast", *extra), run_dir=tmp_path / "run")
    assert entry["generate"]["images_made"] == n and entry["evaluate"]["jpeg"]["scored"] == n


def test_the_kl_claim_preset_runs_through_the_harness_on_the_shipped_models(compose, tmp_path):
    """The kl_claim job kind end to end (reduced: plumbing, not the scientific outcome)."""
    overrides = ["experiment=kl_claim_digits_ddpo", "kl_claim.scales=[1.0,2.0]", "prompts.samples_per_prompt=2",
                 "prompts.items=['a handwritten digit 3','a handwritten digit 7']", "kl_claim.n_batches=2",
                 "sampler.num_inference_steps=2", "kl_claim.n_boot=5", "kl_claim.analytic.n_per_batch=50",
                 "kl_claim.analytic.n_batches=2", "kl_claim.analytic.num_inference_steps=4",
                 "kl_claim.analytic.scales=[0.0,1.0]"]
    entry = runner.run(compose(*overrides), run_dir=tmp_path / "kl")
    store = Store(tmp_path / "kl")
    rows, analytic = store.read_table("kl_claim"), store.read_table("ground_truth")
    assert entry["kind"] == "kl_claim" and len(rows) and len(analytic)
    metric = rows[rows["kind"] == "metric"]
    assert set(metric.arm) == {"rlg", "retrained"} and set(metric.w) == {1.0, 2.0}
    assert set(metric.beta_eff.round(6)) == {0.1, 0.05}  # beta / w of the shipped DDPO+KL models
    assert (tmp_path / "kl" / "report" / "index.html").is_file() and entry["report"]["index"].endswith("index.md")
    assert (tmp_path / "kl" / "report" / "tables" / "kl_claim_verdict.md").is_file()
    with pytest.raises(ConfigError, match="kl_claim: reward_metric='digit_probb' is not among the metrics"):
        build.build(compose("experiment=kl_claim_digits_ddpo", "kl_claim.reward_metric=digit_probb"))
