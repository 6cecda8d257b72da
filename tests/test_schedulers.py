"""rlg.schedulers: the Flow-GRPO SDE scheduler against diffusers' Euler ODE step, the upstream formula (computed
independently in float64), its empirical moments, and as a drop-in scheduler of a tiny StableDiffusion3Pipeline."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rlg.schedulers import FlowGRPOSDEScheduler
from tests.helpers.runs import one_thread  # noqa: F401  (one_thread: autouse)

F64 = torch.float64


def _toy_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * (float(t) / 1000.0) - 0.3 * x + 0.1



def test_sde_scheduler_with_noise_level_zero_is_the_euler_ode_step_for_step():
    ode = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sde = FlowGRPOSDEScheduler.from_config(ode.config, noise_level=0.0)
    for sched in (ode, sde):
        sched.set_timesteps(20)
    torch.testing.assert_close(ode.timesteps, sde.timesteps, rtol=0, atol=0)
    x_ode = x_sde = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    for t in ode.timesteps:
        x_ode = ode.step(_toy_velocity(x_ode, t), t, x_ode).prev_sample
        x_sde = sde.step(_toy_velocity(x_sde, t), t, x_sde, generator=g).prev_sample
        assert x_sde.dtype == x_ode.dtype == torch.float32
        assert torch.equal(x_ode, x_sde)  # bit for bit
    # the parent's step signature is kept (noise_level is an extra keyword at the end)
    parent = list(inspect.signature(FlowMatchEulerDiscreteScheduler.step).parameters)
    assert list(inspect.signature(FlowGRPOSDEScheduler.step).parameters)[: len(parent)] == parent



def test_sde_step_mean_and_std_match_the_flow_grpo_formula():
    # Formula computed independently here, in float64 from the schedule's sigmas:
    # std = nl * sqrt(sigma / (1 - sigma)), with 1 - sigmas[1] in the denominator where sigma == 1;
    # mean = x (1 + std^2 / (2 sigma) dt) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt; noise std sqrt(-dt).
    nl = 0.7
    sched = FlowGRPOSDEScheduler(shift=3.0, noise_level=nl)
    sched.set_timesteps(10)
    sig = [float(s) for s in sched.sigmas]
    gx = torch.Generator().manual_seed(3)
    for i, t in enumerate(sched.timesteps):
        x = torch.randn(3, 5, generator=gx)
        v = torch.randn(3, 5, generator=gx)
        s, s_next = sig[i], sig[i + 1]
        dt = s_next - s
        std = nl * math.sqrt(s / (1 - (sig[1] if s == 1.0 else s)))
        mean = x.double() * (1 + std**2 / (2 * s) * dt) + v.double() * (1 + std**2 * (1 - s) / (2 * s)) * dt
        gens = [torch.Generator().manual_seed(100 + k) for k in range(3)]
        out = sched.step(v, t, x, generator=gens)
        assert float(out.std_dev_t) == pytest.approx(std, rel=1e-5)
        torch.testing.assert_close(out.prev_sample_mean.double(), mean, rtol=1e-5, atol=1e-5)
        # per-sample generators: sample k's noise is the first draw of generator k
        noise = torch.cat([torch.randn(1, 5, generator=torch.Generator().manual_seed(100 + k)) for k in range(3)])
        torch.testing.assert_close(out.prev_sample.double(), mean + std * math.sqrt(-dt) * noise.double(), rtol=1e-5, atol=1e-5)
    assert sig[0] == 1.0  # the first step did exercise the sigma == 1 branch



def test_sde_step_empirical_moments():
    # 200k draws from one state: sample mean within 5 s.e. of the formula's mean, sample std within 1%.
    sched = FlowGRPOSDEScheduler(shift=3.0, noise_level=0.9)
    sched.set_timesteps(8)
    t = sched.timesteps[3]
    s, s_next = float(sched.sigmas[3]), float(sched.sigmas[4])
    sched.set_begin_index(3)
    x = torch.full((200_000, 1), 0.4, dtype=F64)
    v = torch.full((200_000, 1), -0.8, dtype=F64)
    out = sched.step(v, t, x, generator=torch.Generator().manual_seed(5))
    dt = s_next - s
    std = 0.9 * math.sqrt(s / (1 - s))
    mean = 0.4 * (1 + std**2 / (2 * s) * dt) - 0.8 * (1 + std**2 * (1 - s) / (2 * s)) * dt
    scale = std * math.sqrt(-dt)
    assert abs(float(out.prev_sample.mean()) - mean) < 5 * scale / math.sqrt(200_000)
    assert float(out.prev_sample.std()) == pytest.approx(scale, rel=0.01)



def test_sde_scheduler_is_a_drop_in_for_stable_diffusion_3(tmp_path):
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                        pooled_projection_dim=16, out_channels=4)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, sample_size=8)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    pe, pooled = torch.randn(2, 5, 16), torch.randn(2, 16)
    kw = dict(prompt_embeds=pe, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(pe),
              negative_pooled_prompt_embeds=torch.zeros_like(pooled), num_inference_steps=4, height=8, width=8,
              guidance_scale=4.5, output_type="latent")
    ode = pipe(generator=torch.Generator().manual_seed(1), **kw).images

    pipe.scheduler = FlowGRPOSDEScheduler.from_config(pipe.scheduler.config, noise_level=0.0)
    assert pipe.scheduler.config.shift == 3.0 and pipe.scheduler.config.noise_level == 0.0
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(1), **kw).images, ode)

    pipe.scheduler.save_config(tmp_path)
    pipe.scheduler = FlowGRPOSDEScheduler.from_pretrained(tmp_path, noise_level=0.7)
    assert pipe.scheduler.config.noise_level == 0.7 and pipe.scheduler.config.shift == 3.0
    runs = []
    for _ in range(2):
        pipe.scheduler.set_noise_generator([torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
        runs.append(pipe(generator=torch.Generator().manual_seed(1), **kw).images)
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], ode)
    # the config also loads back into the stock scheduler
    assert isinstance(FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config), FlowMatchEulerDiscreteScheduler)
