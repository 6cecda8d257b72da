"""rlg.harness.config: the one-line message for a misspelt command-line key and the sweep job directory names."""

from __future__ import annotations

from rlg.harness.config import job_dir_name, misspelt_override


def test_misspelt_command_line_keys_get_one_line_with_the_closest_key():
    assert "did you mean 'sampler.window.start'" in misspelt_override(["debug=fast", "sampler.window.strat=0.2"])
    assert "unknown config key 'tracker.wandb.projct'" in misspelt_override(["tracker.wandb.projct=x"])
    # free-form nodes, groups, '+'-forced keys and Hydra's keys are left to the later checks
    assert misspelt_override(["+evaluators.options.ocr.engine=x", "sampler.extra.strength=1", "pair=tiny_sd_full",
                              "hydra.verbose=true", "kl_claim.n_boot=2", "pair.components.text_encoder_3=null",
                              "sampler.window.start=0.2", "kl_claim.trainer_kwargs.reward=x"]) is None
    # the KL-claim node is typed: its misspelt keys get the same one line
    assert "did you mean 'kl_claim.n_boot'" in misspelt_override(["kl_claim.n_boot_=2"])



def test_sweep_job_directories_are_valid_unique_and_stable():
    long = "sampler.negative_prompt='" + "blurry, " * 36 + "',sampler.guidance_scale=4"
    a, b = job_dir_name(long), job_dir_name(long.replace("=4", "=5"))
    assert len(a) <= 80 and "/" not in a and a != b and a == job_dir_name(long)
    assert "/" not in job_dir_name("prompts.path=/data/p.txt") and job_dir_name("sampler.guidance_scale=5") == \
        "sampler.guidance_scale=5"
