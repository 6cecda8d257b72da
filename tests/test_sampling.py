"""rlg.sampling on the tiny pairs (issue 12 items 1 and 9): every random draw comes from the image's own
generator, under every sampler preset as the builder makes it, and the window, micro-batch and scheduler are
set per call with no state left behind. Expected values come from stock diffusers pipelines run here, or from a
second run of the same thing.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusers
from rlg.guidance import StepWindow
from rlg.pairs import load_pair, tiny_spec
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem, make_scheduler, noise_seed

SIZE, STEPS, CFG = 32, 3, 4.5
PROMPT, SEED = "a red cube on a table", 11
SAMPLER_DIR = Path(__file__).resolve().parents[1] / "rlg" / "conf" / "sampler"
# every sampler preset on the tiny family of the pipeline it is meant for
PRESET_FAMILIES = {"ddim": ["sd", "ddim"], "flowgrpo_eval": ["sd3"], "flowgrpo_sde": ["sd3", "flux"],
                   "flux": ["flux"], "rlg_sd3": ["sd3"], "sd15": ["sd_inpaint"], "sdxl": ["sdxl"], "tiny": ["sd"],
                   "zoo_digits": ["sd"], "zoo_text_ode": ["sd3"], "zoo_text_sde": ["sd3"], "zoo_geneval_ode": ["sd3"]}


@functools.lru_cache(maxsize=None)
def preset(name: str) -> SamplerSettings:
    """The SamplerSettings the builder makes of sampler preset ``name`` (rlg.harness.build.sampler_settings)."""
    from rlg.harness.api import compose
    from rlg.harness.build import sampler_settings

    return sampler_settings(compose(f"sampler={name}").sampler)


def test_every_sampler_preset_is_covered():
    assert sorted(p.stem for p in SAMPLER_DIR.glob("*.yaml")) == sorted(PRESET_FAMILIES)


def settings_for(name: str, family: str, steps: int = STEPS) -> SamplerSettings:
    # the preset's scheduler, shift, noise level, eta and extra; this test's steps, CFG, size and micro-batch
    size = None if family == "ddim" else SIZE
    s = dataclasses.replace(preset(name), num_inference_steps=steps, guidance_scale=CFG, micro_batch=2, height=size,
                            width=size, extra=dict(preset(name).extra))
    if family.endswith("inpaint"):
        from PIL import Image

        s.extra = {"image": Image.new("RGB", (SIZE, SIZE), (150, 40, 40)),
                   "mask_image": Image.fromarray(np.tri(SIZE, dtype=np.uint8) * 255), "strength": 0.8}
    return s


def image(sampler, item, global_seed: int = 0):
    torch.manual_seed(global_seed)
    return sampler.generate([item])[0].image


CASES = [(name, fam) for name, fams in PRESET_FAMILIES.items() for fam in fams]


@pytest.mark.parametrize("preset_name,family", CASES)
def test_every_draw_comes_from_the_image_generator(preset_name, family, fixture_root):
    pair = load_pair(tiny_spec(family, "full", root=fixture_root))
    sampler = RLGSampler(pair, settings_for(preset_name, family))
    target = WorkItem(0, PROMPT, 0, SEED, 1.5)
    alone = image(sampler, target, global_seed=1)
    others = [WorkItem(i, f"prompt number {i}", i % 2, SEED + i, 0.5 * i) for i in (1, 2, 3)]
    torch.manual_seed(2)
    in_batch = sampler.generate(others[:2] + [target] + others[2:])[2].image
    again = image(sampler, target, global_seed=3)  # a second call, another global seed
    assert np.array_equal(alone, in_batch)
    assert np.array_equal(alone, again)
    # all scales of a (prompt, sample) share the noise: w = 0 and w = 1 inside a grid are the images
    # made alone at those scales
    grid = sampler.generate([WorkItem(0, PROMPT, 0, SEED, w) for w in (0.0, 1.0, 1.5)])
    assert np.array_equal(grid[2].image, alone)
    for g in grid[:2]:
        assert np.array_equal(g.image, image(sampler, g.item, global_seed=4))


def _stock_sd3_sde(spec, prompt: str, generator_seed: int, steps: int, noise_level: float, shift: float):
    """The stock SD3 pipeline with the base transformer and Flow-GRPO's SDE scheduler, its step noise
    drawn from the image's generator (set_noise_generator): the official w = 0 image."""
    from rlg.schedulers import FlowGRPOSDEScheduler

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(spec.base.id)
    pipe.scheduler = FlowGRPOSDEScheduler.from_config(pipe.scheduler.config, noise_level=noise_level, shift=shift)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(generator_seed)
    pipe.scheduler.set_noise_generator([g])
    with torch.no_grad():
        out = pipe(prompt=[prompt], negative_prompt=[""], guidance_scale=CFG, num_inference_steps=steps,
                   height=SIZE, width=SIZE, generator=[g], output_type="np").images[0]
    return (np.asarray(out).clip(0, 1) * 255).round().astype(np.uint8)


def test_issue_example_tiny_sd3_flow_grpo_sde(fixture_root):
    """tiny_sd3_full, flow_grpo_sde, 4 steps, scales [0, 1, 2]: byte-identical across runs and global
    seeds, two copies of one item in one call agree, and w = 0 is the stock pipeline's SDE image."""
    spec = tiny_spec("sd3", "full", root=fixture_root)
    pair = load_pair(spec)
    s = SamplerSettings(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE,
                        scheduler="flow_grpo_sde", shift=3.0, noise_level=0.7, micro_batch=2)
    sampler = RLGSampler(pair, s)
    items = [WorkItem(0, "a cat", 0, 0, w) for w in (0.0, 1.0, 2.0)]
    torch.manual_seed(1)
    a = [g.image for g in sampler.generate(items)]
    torch.manual_seed(2)
    b = [g.image for g in sampler.generate(items + items[2:])]  # run "b", with a copy of one item
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert np.array_equal(b[2], b[3])
    stock = _stock_sd3_sde(spec, "a cat", noise_seed(0, 0, 0), 4, 0.7, 3.0)
    # the stock pipeline runs base CFG rows in one forward of 2 rows, as micro_batch=2 does here
    assert np.abs(a[0].astype(int) - stock.astype(int)).max() <= 1
    # the SDE noise is really drawn: the deterministic Euler sampler gives another image
    ode = RLGSampler(pair, SamplerSettings(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE,
                                           scheduler="euler_ode", shift=3.0, micro_batch=2))
    assert np.abs(ode.generate(items[:1])[0].image.astype(int) - a[0].astype(int)).max() > 10


def test_ancestral_default_scheduler_uses_the_image_generator(fixture_root):
    """A pipeline loaded with an ancestral scheduler (noise at every step) as its own default."""
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root))
    pipe = pair.pipe
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    sampler = RLGSampler(pair, SamplerSettings(num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE,
                                               width=SIZE, micro_batch=2))
    item = WorkItem(0, PROMPT, 0, SEED, 0.5)
    first = image(sampler, item, 1)
    assert np.array_equal(first, image(sampler, item, 2))
    torch.manual_seed(5)
    assert np.array_equal(first, sampler.generate([WorkItem(3, "x", 1, 4, 2.0), item])[1].image)


# --- item 9 and issue 11: per-call state ------------------------------------------------------
def _pipe_kwargs(n: int, steps: int = STEPS):
    return dict(prompt=["a cat"] * n, num_inference_steps=steps, guidance_scale=CFG, height=SIZE, width=SIZE,
                output_type="np", generator=[torch.Generator().manual_seed(i) for i in range(n)])


def test_scales_are_consumed_by_one_pipeline_call(fixture_root):
    """The issue's misuse: begin([0, .5, 1, 2], n), one call, then a call with two prompts."""
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root))
    pipe, den = pair.pipe, pair.denoiser
    den.begin([0, 0.5, 1, 2], STEPS)
    with torch.no_grad():
        pipe(**_pipe_kwargs(4))
        with pytest.raises(RuntimeError, match=r"begin\(\)"):
            pipe(**_pipe_kwargs(2))
        # the state is gone after the error too: the next call without begin() raises as well
        with pytest.raises(RuntimeError, match=r"begin\(scales, num_steps\)"):
            pipe(**_pipe_kwargs(2))
        # a call right after the sampler's call has no scales either
        RLGSampler(pair, SamplerSettings(num_inference_steps=STEPS, height=SIZE, width=SIZE)).generate(
            [WorkItem(0, "a cat", 0, 0, 1.0)])
        with pytest.raises(RuntimeError, match=r"begin\(scales, num_steps\)"):
            pipe(**_pipe_kwargs(2))
        # with the context manager the scales end with the block
        with den.call([0.0, 1.0], STEPS):
            pipe(**_pipe_kwargs(2))
        assert not den.in_call
        with pytest.raises(RuntimeError, match=r"begin\(scales, num_steps\)"):
            pipe(**_pipe_kwargs(2))
        # a call with more steps than begin() was told is refused, not run with a shifted window
        den.begin([1.0, 1.0], STEPS)
        with pytest.raises(RuntimeError, match="one pipeline call of 3 steps"):
            pipe(**_pipe_kwargs(2, steps=STEPS + 2))


def test_window_micro_batch_and_scheduler_are_per_call(fixture_root):
    """One loaded pair serves samplers with different windows, micro-batches and schedulers; each gives
    the image of a pair loaded with that setting, and leaves nothing behind."""
    spec = tiny_spec("sd", "peft_lora", root=fixture_root)
    pair = load_pair(spec)
    default_scheduler = pair.pipe.scheduler
    item = WorkItem(0, PROMPT, 0, SEED, 2.0)
    base = dict(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE)
    plain = RLGSampler(pair, SamplerSettings(**base))
    before = plain.generate([item])[0].image
    window = StepWindow(start=0.5, stop=1.0, outside="rl")
    windowed = RLGSampler(pair, SamplerSettings(**base, window=window, micro_batch=2))
    ddim_eta = RLGSampler(pair, SamplerSettings(**base, scheduler="ddim", eta=1.0))
    pair.denoiser.stats.reset()
    w_img = windowed.generate([item])[0].image
    # steps 0, 1 outside (RL only), 2, 3 inside; micro_batch=2 -> one forward per CFG pair
    assert (pair.denoiser.stats.base_rows, pair.denoiser.stats.rl_rows) == (4, 8)
    assert pair.denoiser.stats.forwards == 6
    e_img = ddim_eta.generate([item])[0].image
    assert pair.pipe.scheduler is default_scheduler
    assert (pair.denoiser.window, pair.denoiser.micro_batch) == (StepWindow(), None)
    assert np.array_equal(plain.generate([item])[0].image, before)
    # independent: the same settings through a pair loaded with them (old keywords) / the pipeline's eta
    fresh = load_pair(spec, window=window, micro_batch=2)
    assert np.array_equal(RLGSampler(fresh, SamplerSettings(**base)).generate([item])[0].image, w_img)
    assert not np.array_equal(w_img, before) and not np.array_equal(e_img, before)
    with pytest.raises(ValueError, match="flow-matching"):
        make_scheduler(pair.pipe, "flow_grpo_sde")
