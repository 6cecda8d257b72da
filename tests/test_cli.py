"""The command line (rlg.harness.cli): bad input of every kind exits with code 2, one message, no traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from tests.helpers.runs import ROOT, ENV, FAST, _fixture, one_thread  # noqa: F401  (one_thread: autouse)


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
        "unknown experiment": (["experiment=quickstrat"], r"unknown experiment 'quickstrat'; did you mean 'quickstart"),
        "unknown pair": (["pair=sd15_dop"], r"unknown pair 'sd15_dop'; did you mean 'sd15_dpo'"),
        "unknown sampler": (["sampler=tinyy"], r"unknown sampler 'tinyy'; did you mean 'tiny'"),
        "unknown prompt set": (["prompts=geneva"], r"unknown prompts 'geneva'; did you mean 'geneval'"),
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
        run_name = re.sub(r"\W", "_", name)  # a run name is one plain folder ("base/RL mismatch" is not)
        cmd = [sys.executable, "run.py", f"paths.root={tmp_path / 'runs'}", f"name={run_name}",
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


def test_cpu_defaults_sleep_openmp_threads_only_on_a_busy_machine(monkeypatch):
    """OMP_WAIT_POLICY=PASSIVE when the start-up load average exceeds one per core, libgomp's default otherwise
    (benchmarks/busy_cpu.py: passive waits halved idle 2-thread sampling), and a user's policy kept."""
    from rlg.harness.cli import cpu_defaults

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cpu_defaults(load=2.0, cores=2) is None and "OMP_WAIT_POLICY" not in os.environ  # exactly 1 per core
    assert cpu_defaults(load=2.01, cores=2) == "PASSIVE" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cpu_defaults(load=50.0, cores=2) is None and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
