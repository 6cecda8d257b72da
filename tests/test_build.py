"""rlg.harness.build: every refusal happens before the run directory is touched."""

from __future__ import annotations

import json
import logging

import pytest

from rlg.guidance import ScaleError
from rlg.harness import build, runner
from rlg.harness.config import ConfigError, validate
from rlg.harness.prompts import PromptError
from tests.helpers.runs import FAST, one_thread, cfg_of  # noqa: F401  (one_thread: autouse)


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
    (["grid.scales=[]"], ConfigError, "empty"),
    (["grid.scales=[0,nan]"], ConfigError, "finite"),
    (["grid.scales=[0,-inf]"], ConfigError, "finite"),
    (["grid.scales=[0,one]"], ConfigError, "finite"),
    (["grid.scales=[0,1,1.0]"], ConfigError, "duplicates"),
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


def test_the_kind_is_chosen_by_its_group_and_settings_of_another_kind_are_refused():
    from rlg.harness.api import job
    from rlg.harness.config import ConfigError
    from rlg.kind_spec import KLClaimSettings, LearnedTruthConfig

    kl = job("experiment=kl_claim_digits_ddpo", "stage=report")
    assert kl.kind == "kl_claim" and isinstance(kl.settings, KLClaimSettings) and kl.pair is None
    assert kl.settings.analytic.seed == kl.settings.seed == 0 and kl.settings.analytic.samplers == ["ddim_eta1"]
    assert isinstance(job("experiment=kl_ground_truth_learned", "seed=3").settings, LearnedTruthConfig)
    assert job("experiment=kl_ground_truth_learned", "seed=3").settings.seed == 3  # the run's seed
    for overrides, message in (
            (("experiment=tiny", "kind=kl_claim"), "kind=kl_claim needs its kl_claim settings"),
            (("experiment=kl_claim_digits_ddpo", "kind=images"), "kl_claim settings are given but kind=images"),
            (("experiment=tiny", "pair=analytic_gaussian_linear"), "use experiment=ground_truth"),
            (("experiment=kl_claim_digits_ddpo", "kl_claim.analytic.seed=5"), "kl_claim.analytic.seed=5 has no effect"),
            (("experiment=kl_ground_truth_learned", "kl_learned.seed=5"), "kl_learned.seed=5 has no effect")):
        with pytest.raises(ConfigError, match=message):
            job(*overrides)


def test_the_job_holds_its_checked_run_directory(monkeypatch, tmp_path):
    """Job.run_dir is the CLI's folder <paths.root>/<name> with ~ expanded (rlg.run and the runner read it there)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    job = build.build(cfg_of(*FAST, "paths.root='~/runs'", "name=r1", "stage=report", "verbose=true"))
    assert job.run_dir == tmp_path / "runs" / "r1" and job.verbose is True


def test_the_same_local_weights_in_another_folder_keep_their_content_keys(tmp_path, monkeypatch):
    # a moved clone, or a cluster node that mounts the zoo elsewhere, must resume the run: the keys held the path
    import shutil

    from rlg.harness.api import job
    from rlg.model_ids import resolve_zoo_id

    monkeypatch.setenv("RLG_FINGERPRINT_CACHE", str(tmp_path / "fingerprints.json"))  # not the user's cache
    for clone in ("a", "b", "c"):
        for model in ("digits_base", "digits_ddpo_incompress"):
            shutil.copytree(resolve_zoo_id(f"zoo:{model}"), tmp_path / clone / model)
    lora = tmp_path / "c" / "digits_ddpo_incompress" / "pytorch_lora_weights.safetensors"
    lora.write_bytes(lora.read_bytes()[:-1] + bytes([lora.read_bytes()[-1] ^ 1]))  # one bit of the RL model

    def ids(clone: str) -> tuple[str, str]:
        j = job("experiment=quickstart", f"pair.base.id={tmp_path / clone / 'digits_base'}",
                f"pair.rl.id={tmp_path / clone / 'digits_ddpo_incompress'}")
        return j.config_id, json.dumps(j.identity, sort_keys=True)

    shipped = job("experiment=quickstart")
    (a, ident_a), (b, _), (c, _) = ids("a"), ids("b"), ids("c")
    assert a == b == shipped.config_id and str(tmp_path) not in ident_a
    assert c != a
