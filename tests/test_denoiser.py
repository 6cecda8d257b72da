"""rlg.denoiser: which rows each network runs (the step window, deduplicated scales 0 and 1) and the refusal of a
bad scale, counted by the denoiser's own statistics on the tiny SD pair."""

from __future__ import annotations

import numpy as np
import pytest

from rlg.guidance import ScaleError, StepWindow
from rlg.pairs import load_pair, tiny_spec
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem

STEPS, CFG, SIZE = 3, 4.5, 32
PROMPT, SEED = "a photo of a red cube on a table", 7
SD = SamplerSettings(num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE, width=SIZE)


def test_window_outside_runs_one_model(fixture_root):
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root), window=StepWindow(start=0.5, stop=1.0, outside="rl"))
    pair.denoiser.stats.reset()
    sampler = RLGSampler(pair, SamplerSettings(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE))
    sampler.generate([WorkItem(0, PROMPT, 0, SEED, 2.0)])
    # steps 0,1 outside (RL only: 2 CFG rows each), steps 2,3 inside (both models)
    assert (pair.denoiser.stats.base_rows, pair.denoiser.stats.rl_rows) == (4, 8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.5", None])
def test_non_finite_scales_are_refused(bad, fixture_root):
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root))
    with pytest.raises(ScaleError, match="finite numbers"):
        pair.denoiser.begin([1.0, bad], STEPS)


@pytest.mark.parametrize("kind", ["full", "peft_lora"])
def test_grid_makes_the_minimum_network_evaluations(kind, fixture_root):
    grid = [WorkItem(0, PROMPT, 0, SEED, w) for w in (0, 0.5, 1, 1.5, 2, 2.5, 3)]
    pair = load_pair(tiny_spec("sd", kind, root=fixture_root), micro_batch=4)
    sampler = RLGSampler(pair, SD)
    pair.denoiser.stats.reset()
    images = [g.image for g in sampler.generate(grid)]
    # step 0: every scale has the same input -> (uncond, cond) once per model; steps 1-2: w=0 needs
    # only base, w=1 only RL, the 5 others both; 2 CFG rows each
    assert (pair.denoiser.stats.base_rows, pair.denoiser.stats.rl_rows) == (2 + 2 * 12, 2 + 2 * 12)
    pair.denoiser.dedupe = False
    assert all(np.array_equal(a, g.image) for a, g in zip(images, sampler.generate(grid)))

    # before the window every scale follows the RL model, so rows stay identical: one RL row pair per
    # step, and the first step inside the window is again a shared input
    pair = load_pair(tiny_spec("sd", kind, root=fixture_root), micro_batch=4,
                     window=StepWindow(start=0.5, outside="rl"))
    sampler = RLGSampler(pair, SamplerSettings(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE))
    pair.denoiser.stats.reset()
    sampler.generate(grid)
    assert (pair.denoiser.stats.base_rows, pair.denoiser.stats.rl_rows) == (2 + 12, 2 + 2 + 2 + 12)
