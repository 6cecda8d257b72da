"""Fast by default and bit-stable (issue 14): the default micro-batch packing keeps images independent
of the batch and makes exactly the rows it says; the GPU benchmark's dry run and FLOP counting.

No timed assertions here: performance targets live in benchmarks/ (grid.py, sweep.py, gpu.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from rlg.denoiser import AUTO_MICRO_BATCH, resolve_micro_batch
from rlg.pairs import load_pair, tiny_spec
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem

ROOT = Path(__file__).resolve().parent.parent
GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
STEPS, SIZE, CFG, SEED = 3, 32, 4.5, 0


def test_micro_batch_values_resolve_per_device():
    assert resolve_micro_batch("auto", "cpu") == AUTO_MICRO_BATCH["cpu"]
    assert resolve_micro_batch("auto", torch.device("cuda", 1)) == AUTO_MICRO_BATCH["cuda"]
    assert resolve_micro_batch(5, "cpu") == 5
    assert resolve_micro_batch(None, "cpu") is None and resolve_micro_batch(0, "cpu") is None
    for bad in (-1, "fast", 2.5, True):
        with pytest.raises(ValueError, match="micro_batch"):
            resolve_micro_batch(bad, "cpu")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "rlg" / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_harness_default_is_auto_and_the_content_key_records_the_number():
    from rlg.harness.build import build
    from rlg.harness.config import ConfigError, validate

    job = build(_compose("tracker=none"))
    assert job.config.sampler.micro_batch == "auto" and job.placement.device == "cpu"
    assert job.identity["sampler"]["micro_batch"] == AUTO_MICRO_BATCH["cpu"]
    # the same images asked for with the number get the same key; a batch size never changes it
    same = build(_compose("tracker=none", f"sampler.micro_batch={AUTO_MICRO_BATCH['cpu']}", "sampler.batch_size=3"))
    assert same.identity == job.identity
    assert build(_compose("tracker=none", "sampler.micro_batch=2")).identity != job.identity
    with pytest.raises(ConfigError, match="sampler.micro_batch='fast'"):
        validate(_compose("sampler.micro_batch=fast"))


def _expected_work(n_groups: int, size: int, lora: bool) -> tuple[int, int, int]:
    """(rows, forwards, padded rows) of one call with n_groups x GRID images, counted by hand: per
    model and step, the rows it needs go in ceil(rows / size) forwards of ``size`` rows; a LoRA pair
    runs its base and RL rows in the same forwards."""
    per_step = [(2 * n_groups, 2 * n_groups)]  # step 0: one shared input per group, 2 CFG rows, per model
    per_step += [(2 * n_groups * 6, 2 * n_groups * 6)] * (STEPS - 1)  # then w != 1 (base), w != 0 (RL)
    rows = forwards = padded = 0
    for base, rl in per_step:
        rows += base + rl
        streams = [base + rl] if lora else [base, rl]
        for r in streams:
            forwards += math.ceil(r / size)
            padded += math.ceil(r / size) * size - r
    return rows, forwards, padded


@pytest.mark.parametrize("family,kind", [("sd3", "peft_lora"), ("sd", "full")])
def test_default_packing_is_batch_invariant_with_exact_row_counts(family, kind, fixture_root):
    pair = load_pair(tiny_spec(family, kind, root=fixture_root))
    sampler = RLGSampler(pair, SamplerSettings(num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE, width=SIZE,
                                               micro_batch="auto"))
    groups = [[WorkItem(p, f"prompt number {p}", 0, SEED, w) for w in GRID] for p in range(3)]
    size = AUTO_MICRO_BATCH["cpu"]

    pair.denoiser.stats.reset()
    packed = sampler.generate([it for g in groups for it in g])  # 21 images: micro-batches mix groups and models
    st = pair.denoiser.stats
    rows, forwards, padded = _expected_work(3, size, pair.denoiser.is_lora_pair)
    assert (st.base_rows + st.rl_rows, st.forwards, st.padded_rows) == (rows, forwards, padded)
    assert padded > 0  # the check below covers padded micro-batches, and micro-batches shared by two groups

    alone = [g.image for grp in groups for g in sampler.generate(grp)]  # each group in its own call
    reordered = sampler.generate(groups[2] + groups[0])  # other neighbours, other positions in the micro-batches
    assert all(np.array_equal(a, p.image) for a, p in zip(alone, packed))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(reordered, packed[14:] + packed[:7]))
    # another size may change the last bits of an image (so it is in the content key), never the rows made
    pair.denoiser.stats.reset()
    sampler.settings.micro_batch = 4
    sampler.generate(groups[0])
    assert pair.denoiser.stats.base_rows + pair.denoiser.stats.rl_rows == _expected_work(1, 4, False)[0]


def test_flop_counting_matches_a_hand_count():
    from benchmarks.gpu import count_flops

    lin = torch.nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    assert count_flops(lin, x) == 2 * 3 * 5 * 64 * 32  # one multiply-add = 2 FLOPs; the bias add is not counted
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    assert count_flops(conv, torch.randn(2, 4, 6, 6)) == 2 * (2 * 8 * 6 * 6) * (4 * 3 * 3)
    q = torch.randn(2, 4, 16, 8)  # (batch, heads, tokens, head dim): QK^T and AV, 2 FLOPs per multiply-add each
    assert count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q) == 2 * 2 * (2 * 4 * 16 * 16 * 8)


def test_gpu_benchmark_dry_run_checks_shapes_rows_and_bit_stability():
    from benchmarks.gpu import main

    report = main(["--dry-run"])
    res = report["results"]
    assert {(r["model"], r["kind"]) for r in res} == {(m, k) for m in ("sd3", "sd") for k in ("full", "peft_lora")}
    assert all(r["shape_ok"] for r in res)
    assert all(r["seconds"] is None and r["mfu"] is None for r in res)  # no timing claims on a CPU dry run
    n_prompts, steps = 2, 2
    minimum = n_prompts * 2 * (2 + (steps - 1) * 12)
    for r in res:
        if r["mode"] == "official":
            assert r["rows"] == n_prompts * len(GRID) * steps * 4
        else:
            assert r["rows"] == minimum, r
        if r["mode"] == "harness" and r["micro_batch"] != "0":
            assert r["bit_stable"] == "yes", r
    for name, fl in report["row_flops"].items():
        assert fl["row_flops_base"] > 0
        if name.endswith("peft_lora"):  # the RL row also runs the LoRA matmuls
            assert fl["row_flops_rl"] > fl["row_flops_base"]
        else:
            assert fl["row_flops_rl"] == fl["row_flops_base"]


def test_every_project_name_a_benchmark_imports_exists():
    """The benchmarks run by hand only, so a moved helper would break them unseen (sweep.py and evaluators.py
    once imported test helpers from their old place): every `from rlg... / tests... / benchmarks... import name`
    in benchmarks/*.py must resolve."""
    import ast
    import importlib

    root = Path(__file__).resolve().parent.parent
    missing = []
    for path in sorted((root / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                    "rlg", "tests", "benchmarks"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and not importlib.util.find_spec(f"{node.module}.{a.name}")]
    assert missing == []


def test_quickstart_profile_split_counts_each_sample_once_in_its_most_specific_category(tmp_path):
    from benchmarks.quickstart import categorise

    raw = tmp_path / "raw.txt"
    raw.write_text("main (run.py:1);forward (diffusers/models/unets/unet_2d_condition.py:9) 6\n"
                   "main (run.py:1);decode (diffusers/models/autoencoders/autoencoder_kl.py:3);"
                   "forward (diffusers/models/unets/unet_2d_condition.py:9) 2\n"
                   "main (run.py:1);save (PIL/PngImagePlugin.py:5) 1\n"
                   "main (run.py:1);idle (x.py:1) 1\n")
    assert categorise(raw) == {"network (UNet / transformer forward)": 0.6, "VAE decode": 0.2, "PNG writing": 0.1,
                               "other": 0.1}
