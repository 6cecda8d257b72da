"""rlg.harness.api: the Python door composes the presets and runs the same build and checks as the CLI."""

from __future__ import annotations

import pytest

from rlg.guidance import ScaleError
from rlg.harness.api import compose, job
from rlg.harness.build import build
from rlg.harness.config import ConfigError


def test_job_is_the_job_the_command_line_builds(compose):  # the conftest fixture: Hydra's own compose
    overrides = ("experiment=tiny", "debug=fast", "grid.scales=[0,1.5]", "sampler.num_inference_steps=3")
    got, want = job(*overrides), build(compose(*overrides), overrides=list(overrides))
    assert got.kind == "images" and got.scales == (0.0, 1.5) and got.sampler.num_inference_steps == 3
    assert got.pair.name == "tiny_sd_peft" and [p.text for p in got.prompts] == [p.text for p in want.prompts]
    assert got.identity == want.identity and got.config_id == want.config_id
    assert got.resolved_config == want.resolved_config


def test_bad_input_fails_as_on_the_command_line_with_one_line():
    with pytest.raises(ConfigError, match=r"unknown config key 'sampler.num_inference_stepz'; did you mean "
                                          r"'sampler.num_inference_steps'\?"):
        job("sampler.num_inference_stepz=3")
    with pytest.raises(ConfigError, match=r"^unknown experiment 'quickstrat'; did you mean 'quickstart'\?"):
        job("experiment=quickstrat")
    with pytest.raises(ConfigError, match="duplicates"):
        job("grid.scales=[0,1,1]")
    with pytest.raises(ConfigError, match="stage"):
        job("stage=train")


def test_the_door_works_inside_a_running_hydra_and_leaves_it_as_it_was(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "config.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):  # another app's Hydra
        assert compose("experiment=tiny").pair.name == "tiny_sd_peft"
        assert GlobalHydra.instance().is_initialized() and hydra_compose("config").x == 1
    assert not GlobalHydra.instance().is_initialized()
