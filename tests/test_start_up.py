"""Issue 36 and 34.4: a run name is one folder inside paths.root, user paths are expanded as a shell would, and
an unknown preset or group option gets one line with the closest name; every refusal comes before any folder is
made, with the same message from the CLI, rlg.run and a multirun."""

from __future__ import annotations

import pytest

import rlg
from rlg.harness.api import compose
from rlg.harness.config import RUN_NAME_RULE, ConfigError, run_dir, unquoted_tilde, user_path, validate
from tests.test_refusals import run_cli

RULE = (f"is not a run name: the run is the folder <paths.root>/<name>, so a name is {RUN_NAME_RULE} "
        "(no '/', not '.' or '..'), e.g. name=my-run_2")
LONG = "x" * 300  # longer than a file name may be (NAME_MAX 255): today's OSError 36


@pytest.mark.parametrize("name", ["../escape", "", "a/b", LONG, ".", "..", "-rf", ".hidden", "a b", "run;ls",
                                  "x" * 65, "naïve"])
def test_a_name_that_is_not_one_plain_folder_is_refused_with_the_rule(name):
    with pytest.raises(ConfigError) as err:
        run_dir("outputs", name)
    assert str(err.value) == f"name={name!r} {RULE}"


@pytest.mark.parametrize("name", ["quickstart", "a", "My-run_2.1", "7", "x" * 64])
def test_a_plain_name_is_one_folder_inside_the_root(name):
    assert run_dir("outputs", name) == f"outputs/{name}"


def test_every_shipped_preset_has_a_run_name():
    import yaml

    from rlg.harness.config import CONF_DIR, RUN_NAME

    names = {f.stem: yaml.safe_load(f.read_text()).get("name") for f in (CONF_DIR / "experiment").glob("*.yaml")}
    names["(default)"] = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["name"]
    assert len(names) > 20 and {k: v for k, v in names.items() if v is not None and not RUN_NAME.fullmatch(v)} == {}


def test_the_root_is_expanded_as_a_shell_would_or_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert run_dir("~/runs", "a") == f"{tmp_path}/runs/a"
    assert run_dir("~", "a") == f"{tmp_path}/a"
    assert run_dir("runs/~x", "a") == "runs/~x/a"  # a shell expands a ~ only at the start
    with pytest.raises(ConfigError) as err:
        run_dir("~nosuchuser-rlg/runs", "a")
    assert str(err.value) == ("paths.root=~nosuchuser-rlg/runs: '~nosuchuser-rlg' is no user's home folder on this "
                              "machine; give the full path")
    with pytest.raises(ConfigError) as err:
        run_dir(" ", "a")
    assert str(err.value) == "paths.root is empty; give the folder that holds the runs, e.g. paths.root=outputs"


def test_user_paths_reach_every_reader_expanded(monkeypatch, tmp_path):
    """prompts.path, the pair's local weights and the paths.* folders: a quoted '~/...' is the user's home, as in
    a shell, in the config every later reader (the prompt loader, the pair loader, the store) gets."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "p.txt").write_text("a cat\n")
    cfg = validate(compose("experiment=tiny", "pair=sd15_dpo", "prompts=file", 'prompts.path="~/p.txt"',
                           'paths.root="~/runs"', 'paths.fixtures="~/fx"', 'pair.base.id="~/weights/base"',
                           'pair.rl.id="~/weights/rl"'))
    assert cfg.prompts.path == f"{tmp_path}/p.txt" and cfg.paths.root == f"{tmp_path}/runs"
    assert cfg.paths.fixtures == f"{tmp_path}/fx" and cfg.paths.cache == f"{tmp_path}/.cache/rlg-bench"
    assert (cfg.pair.base.id, cfg.pair.rl.id) == (f"{tmp_path}/weights/base", f"{tmp_path}/weights/rl")
    with pytest.raises(ConfigError, match=r"^prompts.path=~nosuchuser-rlg/p.txt: '~nosuchuser-rlg' is no user's"):
        validate(compose("experiment=tiny", "prompts=file", 'prompts.path="~nosuchuser-rlg/p.txt"'))
    assert user_path("pair.base.id", "org/model") == "org/model"  # a hub id is left alone


# -- the same message from every door: the CLI (one line, exit 2, no folder, no torch), rlg.run, a multirun -----
def _refused(out, text: str) -> str:
    assert out.returncode == 2 and "Traceback" not in text, text[-2000:]
    assert "PROBE 2 False False" in out.stdout  # exit 2 with neither torch nor diffusers imported
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("name", ["../escape", "", "a/b", LONG])
def test_the_cli_refuses_a_bad_name_before_any_folder(tmp_path, name):
    root = tmp_path / "runs"
    out, text = run_cli("debug=fast", f"paths.root={root}", f"name={name}")
    assert _refused(out, text) == f"rlg-bench: name={name!r} {RULE}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs"] and not list(root.iterdir())


def test_a_refused_value_leaves_an_existing_run_folder_as_it_was(tmp_path):
    # the newcomer's case: a refused setting under the name of a finished run rewrote its .hydra/ record
    run = tmp_path / "done"
    (run / ".hydra").mkdir(parents=True)
    recorded = {f: f"the finished run's {f}\n" for f in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    for f, text in recorded.items():
        (run / ".hydra" / f).write_text(text)
    out, text = run_cli("debug=fast", f"paths.root={tmp_path}", "name=done", "+sampler.extra.guidance_rescale=0.7")
    assert _refused(out, text).startswith("rlg-bench: sampler.extra.guidance_rescale is refused: rescaling")
    assert {f: (run / ".hydra" / f).read_text() for f in recorded} == recorded
    assert sorted(p.name for p in run.iterdir()) == [".hydra"]


def test_a_multirun_refuses_every_bad_name_of_the_sweep_before_any_folder(tmp_path):
    out, text = run_cli("-m", "debug=fast", f"paths.root={tmp_path}", "name=fine,../escape")
    assert _refused(out, text) == f"rlg-bench: name='../escape' {RULE}"
    assert not list(tmp_path.iterdir()) and not (tmp_path.parent / "escape-sweep").exists()


def test_rlg_run_refuses_a_bad_name_with_the_cli_message(tmp_path):
    with pytest.raises(ConfigError) as err:
        rlg.run(experiment="tiny", overrides=["debug=fast", f"paths.root={tmp_path}", "name=../escape"])
    assert str(err.value) == f"name='../escape' {RULE}"
    assert not list(tmp_path.iterdir()) and not (tmp_path.parent / "escape").exists()


TILDE = ("paths.root=~/rlg-out: Hydra's override syntax does not take an unquoted '~'; write paths.root=$HOME/rlg-out "
         "from a shell, or quote the value for Hydra ('paths.root=\"~/rlg-out\"', expanded as a shell would)")


def test_an_unquoted_tilde_gets_one_line_naming_both_fixes(tmp_path):
    out, text = run_cli("debug=fast", "paths.root=~/rlg-out")
    assert _refused(out, text) == f"rlg-bench: {TILDE}"
    with pytest.raises(ConfigError) as err:
        rlg.run(experiment="tiny", overrides=["debug=fast", "paths.root=~/rlg-out"])
    assert str(err.value) == TILDE
    with pytest.raises(ConfigError, match=r"^prompts.path=a~b: Hydra's override syntax .* quote the value for Hydra "
                                          r"\('prompts.path=\"a~b\"'"):
        compose("prompts.path=a~b")
    assert unquoted_tilde(['paths.root="~/x"', "paths.root='~/x'", 'prompts.items=["a ~ b",c]', "~debug"]) is None
    assert unquoted_tilde(['prompts.items=["a",~/b]']).startswith('prompts.items=["a",~/b]: Hydra')


def test_hydra_makes_the_expanded_run_and_sweep_folders_of_a_quoted_tilde(monkeypatch, tmp_path):
    """Hydra's own folders (conf/config.yaml hydra.run.dir, hydra.sweep.dir) are the expanded ones, not a folder
    named '~' in the working directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from rlg.harness.config import CONF_DIR

    monkeypatch.setenv("HOME", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=['paths.root="~/runs"', "name=r"], return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.run.dir") == f"{tmp_path}/runs/r"
    assert OmegaConf.select(cfg, "hydra.sweep.dir") == f"{tmp_path}/runs/r-sweep"


# -- 34.4: an unknown preset or group option ---------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("experiment=quikstart", "unknown experiment 'quikstart'; did you mean 'quickstart'? `rlg-bench --help` lists "
                             "every experiment ('Config groups')"),
    ("sampler=ddimm", "unknown sampler 'ddimm'; did you mean 'ddim'? `rlg-bench --help` lists every sampler "
                      "('Config groups')"),
    ("method=[rlg,weigth_mix]", "unknown method 'weigth_mix'; did you mean 'weight_mix'? `rlg-bench --help` lists "
                                "every method ('Config groups')"),
    ("grid=zzzzzz", "unknown grid 'zzzzzz'. `rlg-bench --help` lists every grid ('Config groups')"),
])
def test_an_unknown_group_option_gets_one_line_from_the_cli_and_from_python(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        rlg.run(overrides=[override, f"paths.root={tmp_path}"])
    assert str(err.value) == message
    assert not list(tmp_path.iterdir())


def test_an_unknown_preset_on_the_command_line_exits_2_with_one_line_and_no_folder(tmp_path):
    out, text = run_cli("experiment=quikstart", f"paths.root={tmp_path}")
    assert _refused(out, text) == ("rlg-bench: unknown experiment 'quikstart'; did you mean 'quickstart'? "
                                   "`rlg-bench --help` lists every experiment ('Config groups')")
    assert not list(tmp_path.iterdir())


def test_group_options_from_a_config_dir_sweeps_and_null_are_accepted(tmp_path):
    from rlg.harness.config import unknown_option

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n")
    assert unknown_option(["experiment=mine"], [tmp_path]) is None
    assert unknown_option(["experiment=mine"]) == ("unknown experiment 'mine'. `rlg-bench --help` lists every "
                                                   "experiment ('Config groups')")
    assert unknown_option(["debug=null", "sampler=ddim,tiny", "+grid=zoo", "grid=choice(zoo,paperr)",
                           "name=quikstart", "hydra/launcher=nope", "seed=1"]) is None
    assert unknown_option(["-m", "sampler=ddim,ddimm"]).startswith("unknown sampler 'ddimm'; did you mean 'ddim'?")
    assert unknown_option([f"hydra.searchpath=[file://{tmp_path}]", "sampler=mine"]) is None
    from rlg.harness.cli import config_dirs

    assert config_dirs(["-cd", "a", "--config-dir=b", "--config-dir", "c", "x=1"]) == ["b", "a", "c"]


@pytest.mark.parametrize("override", ["kl_learned.seed=5", "+kl_claim.beta=3", "kl_learned={seed:5}"])
def test_a_kind_setting_on_a_run_without_that_kind_gets_one_line_not_an_omegaconf_traceback(tmp_path, override):
    # Hydra cannot set a key inside an unset node: it stopped with "AssertionError: Unexpected type for root"
    node = override.lstrip("+").split(".")[0].split("=")[0]
    presets = {"kl_learned": "kl_ground_truth_learned", "kl_claim": "kl_claim_digits_ddpo, kl_claim_digits_ddpo_v1, "
               "kl_claim_digits_dpo, kl_claim_digits_dpo_v1"}[node]  # the shipped presets of that kind
    message = (f"{override}: this run has no {node} settings to change (the run's kind is images); they come with "
               f"kind={node}: start from a preset of that kind (experiment={presets}) and override from there")
    out, text = run_cli("experiment=tiny", override, f"paths.root={tmp_path}")
    assert _refused(out, text) == f"rlg-bench: {message}"
    with pytest.raises(ConfigError) as err:
        rlg.run(overrides=["experiment=tiny", override, f"paths.root={tmp_path}"])
    assert str(err.value) == message
    assert not list(tmp_path.iterdir())


def test_a_kind_setting_reaches_a_run_of_that_kind():
    from rlg.harness.api import job

    assert job("experiment=kl_ground_truth_learned", "kl_learned.hidden=64").settings.hidden == 64
    assert job("experiment=kl_claim_digits_dpo", "kl_claim.beta=750").settings.beta == 750
