"""The notebook API (issue 15) and the library's import rules (issue 11), on the tiny pipelines.

docs/python.md's hub example is run line for line with the hub ids replaced by the tiny offline pair; the
expected images come from the stock diffusers pipeline run here with the base or the RL UNet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusers
from rlg.sampling import noise_seed
from rlg.tiny_pairs import build_pair

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red cube on a table"


def stock(pipe, unet, seed: int, prompt: str = PROMPT, steps: int = 3, cfg: float = 7.5) -> np.ndarray:
    """The stock pipeline with ``unet``, noise from the generator of (seed, prompt 0, sample 0)."""
    pipe.unet = unet
    g = torch.Generator().manual_seed(noise_seed(seed, 0, 0))
    with torch.no_grad():
        out = pipe(prompt=[prompt], negative_prompt=[""], num_inference_steps=steps, guidance_scale=cfg, height=32,
                   width=32, generator=[g], output_type="np").images[0]
    return (np.asarray(out).clip(0, 1) * 255).round().astype(np.uint8)


def test_readme_notebook_example(fixture_root):
    d = build_pair("sd", fixture_root)
    base_id, rl_id = str(d / "base"), str(d / "rl-full")  # docs/python.md: the hub ids of SD1.5 and Diffusion-DPO
    # --- docs/python.md's example (hub ids, fp16 and .to("cuda") aside) ---
    import rlg

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(base_id)
    rl_unet = diffusers.UNet2DConditionModel.from_pretrained(rl_id, subfolder="unet")
    pair = rlg.from_pipeline(pipe, rl=rl_unet)
    grid = rlg.generate_grid(pair, [PROMPT], scales=[0, 0.5, 1, 1.5], seed=0, num_inference_steps=3,
                             guidance_scale=7.5, height=32, width=32)
    sheet = diffusers.utils.make_image_grid(grid[0][0], rows=1, cols=4)
    # --- checks ---
    assert sheet.size == (4 * 32, 32) and len(grid) == 1 and len(grid[0]) == 1 and len(grid[0][0]) == 4
    images = [np.asarray(im) for im in grid[0][0]]
    reference = diffusers.StableDiffusionPipeline.from_pretrained(base_id)
    reference.set_progress_bar_config(disable=True)
    base_unet = reference.unet
    # w = 0 is the stock base pipeline and w = 1 the stock pipeline with the RL UNet, same noise. Within one
    # level: the grid batches 4 rows where the stock call runs 2, and CPU kernels are not batch invariant
    # everywhere (an AMD EPYC put one pixel of 3072 one level off at w = 0).
    base_stock = stock(reference, base_unet, seed=0)
    assert np.abs(images[0].astype(int) - base_stock.astype(int)).max() <= 1
    assert np.abs(images[2].astype(int) - stock(reference, rl_unet, seed=0).astype(int)).max() <= 1
    assert not np.array_equal(images[0], images[2])
    # no stale state: another grid with another number of scales and prompts, then a direct pipeline call
    again = rlg.generate_grid(pair, [PROMPT, "a blue sphere"], scales=[1.5, 0], seed=0, num_inference_steps=3,
                              guidance_scale=7.5, height=32, width=32, output="np")
    assert np.array_equal(again[0][0][0], images[3]) and np.array_equal(again[0][0][1], images[0])
    with pytest.raises(RuntimeError, match=r"begin\(scales, num_steps\)"):
        pipe(prompt=["x"] * 2, num_inference_steps=2, height=32, width=32)
    # unwrap gives the stock pipeline back
    assert pair.unwrap() is pipe and pipe.unet is not pair.denoiser
    assert np.array_equal(stock(pipe, pipe.unet, seed=0), base_stock)


def test_notebook_api_with_an_adapter_path_matches_load_pair(fixture_root):
    import rlg

    d = build_pair("sd3", fixture_root)
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(d / "base")
    pair = rlg.from_pipeline(pipe, rl=d / "rl-peft")
    kw = dict(scales=[0, 1, 2], seed=3, num_inference_steps=2, height=32, width=32, output="np")
    got = rlg.generate_grid(pair, [PROMPT], **kw)[0][0]
    want = rlg.generate_grid(rlg.load_pair(rlg.tiny_spec("sd3", "peft_lora", root=fixture_root)), [PROMPT], **kw)[0][0]
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    with pytest.raises(rlg.PairError, match="already carries an RLGDenoiser"):
        rlg.from_pipeline(pipe, rl=d / "rl-peft")


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout.strip()


def test_import_rlg_is_light_and_exports_the_api():
    out = _fresh_python("import sys, rlg; heavy = [m for m in ('torch', 'diffusers') if m in sys.modules]; "
                        "print(heavy, sorted(rlg.__all__))")
    assert out.startswith("[]"), out
    for name in ("from_pipeline", "generate_grid", "load_pair", "RLGSampler", "SamplerSettings", "rlg_mix",
                 "RLGDenoiser", "weights_identity", "StepWindow"):
        assert f"'{name}'" in out


def test_library_imports_no_hydra_and_no_harness():
    modules = ["rlg.guidance", "rlg.denoiser", "rlg.pairs", "rlg.sampling", "rlg.schedulers", "rlg.tiny_pairs"]
    out = _fresh_python("import sys; " + "; ".join(f"import {m}" for m in modules) +
                        "; print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf') "
                        "or m.startswith('rlg.harness')))")
    assert out == "[]", out
