"""RLG with Feynman-Kac correctors on the image pipelines (sampler.correctors=fkc, issue 37): K = 1 is plain RLG bit
for bit, the weights equal an independent computation from the two networks, the cost axis counts every particle,
and the settings where the weights are not derived are refused in one line before any image. Tiny families, 2 steps,
32 px."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rlg
from rlg.sampler_spec import FKCConfig
from rlg.sampling import RLGSampler, SamplerError, SamplerSettings, WorkItem

STEPS = dict(num_inference_steps=2, height=32, width=32, micro_batch=4)
ITEMS = [WorkItem(0, "a cat", 0, 0, 1.5), WorkItem(0, "a cat", 0, 0, 3.0), WorkItem(1, "a dog", 1, 0, 3.0)]

_PAIRS: dict[str, object] = {}


def _pair(fixture_root, family: str):
    if family not in _PAIRS:
        _PAIRS[family] = rlg.load_pair(rlg.tiny_spec(family, "full", root=fixture_root))
    return _PAIRS[family]


def _generate(pair, correctors=None, **settings):
    sampler = RLGSampler(pair, SamplerSettings(**{**STEPS, **settings}, correctors=correctors))
    return sampler, sampler.generate(ITEMS)


@pytest.mark.parametrize("family,scheduler", [("sd", "default"), ("sd3", "euler_ode")])
def test_one_particle_without_resampling_is_plain_rlg_and_k_particles_cost_k_times_the_rows(fixture_root, family,
                                                                                            scheduler):
    pair = _pair(fixture_root, family)
    _, plain = _generate(pair, scheduler=scheduler)
    _, one = _generate(pair, FKCConfig(1), scheduler=scheduler)
    for a, b in zip(plain, one):
        assert np.array_equal(a.image, b.image)
        assert (a.nfe_base, a.nfe_rl) == (b.nfe_base, b.nfe_rl) == (4, 4)  # 2 steps x CFG's 2 rows, both models
    sampler, three = _generate(pair, FKCConfig(3, "every_step"), scheduler=scheduler)
    assert [(g.nfe_base, g.nfe_rl) for g in three] == [(12, 12)] * 3  # every particle's rows count
    assert [bool(r.all()) for r in sampler.last_population.resampled] == [True, False]  # never after the last step
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(plain, three))


def test_the_weights_equal_an_independent_computation_from_the_two_networks(fixture_root):
    """Final log weights of K = 2 particles (never resampled) against 1/2 w (w - 1) c_i |Δ_i|^2 summed over the steps,
    with Δ the CFG-guided difference of the two UNets run here on the particles' inputs and c_i the integral of
    beta(t) over step i divided by 1 - abar_t (docs/fkc.md §1), from the scheduler's alphas_cumprod."""
    pair = _pair(fixture_root, "sd")
    inputs = []
    hook = pair.denoiser.register_forward_pre_hook(lambda mod, args, kwargs: inputs.append(
        (args[0] if args else kwargs["sample"]).clone()), with_kwargs=True)
    try:
        sampler, _ = _generate(pair, FKCConfig(2, "ess", ess_threshold=0.01), guidance_scale=4.5)
    finally:
        hook.remove()
    assert not any(bool(r.any()) for r in sampler.last_population.resampled)
    pipe = pair.pipe
    cond, uncond = pipe.encode_prompt(["a cat", "a cat", "a cat", "a cat", "a dog", "a dog"], "cpu", 1, True,
                                      negative_prompt=[""] * 6)
    sched = pipe.scheduler
    sched.set_timesteps(2)
    abar = sched.alphas_cumprod.double()
    w = torch.tensor([1.5, 1.5, 3.0, 3.0, 3.0, 3.0], dtype=torch.float64)
    expected = torch.zeros(6, dtype=torch.float64)
    for x, t in zip(inputs, sched.timesteps):
        t = int(t)
        prev = t - 1000 // 2
        a_prev = float(abar[prev]) if prev >= 0 else (1.0 if sched.config.set_alpha_to_one else float(abar[0]))
        c = math.log(a_prev / abar[t]) / (1 - abar[t])
        emb = torch.cat([uncond, cond])
        with torch.no_grad():
            b = pair.denoiser.base(x, t, encoder_hidden_states=emb).sample.double()
            r = pair.denoiser.rl(x, t, encoder_hidden_states=emb).sample.double()
        guided = lambda p: p[:6] + 4.5 * (p[6:] - p[:6])  # noqa: E731
        diff = (guided(r) - guided(b)).reshape(6, -1)
        expected += 0.5 * w * (w - 1) * float(c) * (diff ** 2).sum(1)
    got = sampler.last_population.log_weights.reshape(-1)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7), (got, expected)
    assert bool((got[2:] > 0).all()) and float(got.abs().max()) > 1e-3  # w > 1: positive, and not trivially zero


def test_where_the_weights_are_not_derived_fkc_is_refused_in_one_line_before_any_image(fixture_root):
    from rlg.guidance import StepWindow

    sdxl = _pair(fixture_root, "sdxl")  # its own scheduler is EulerDiscreteScheduler
    with pytest.raises(SamplerError) as err:
        RLGSampler(sdxl, SamplerSettings(**STEPS, correctors=FKCConfig(2)))
    assert str(err.value) == (
        "sampler.correctors=fkc: no Feynman-Kac weights for EulerDiscreteScheduler (derived for DDIMScheduler with "
        "epsilon prediction and the FlowMatch schedulers); use sampler.scheduler=ddim (noise-prediction pipelines) or "
        "euler_ode / flow_grpo_sde (flow pipelines)")
    RLGSampler(sdxl, SamplerSettings(**STEPS, scheduler="ddim", correctors=FKCConfig(2)))  # the fix it names works
    sd = _pair(fixture_root, "sd")
    with pytest.raises(SamplerError) as err:
        RLGSampler(sd, SamplerSettings(**STEPS, window=StepWindow(0.5, 1.0), correctors=FKCConfig(2)))
    assert str(err.value) == ("sampler.correctors=fkc: the weights are derived for the RLG mix at every step "
                              "(docs/fkc.md), not inside a window; remove sampler.window")
    ddim = _pair(fixture_root, "ddim")  # the unconditional DDIMPipeline has no step callback
    with pytest.raises(SamplerError) as err:
        RLGSampler(ddim, SamplerSettings(num_inference_steps=2, correctors=FKCConfig(2)))
    assert str(err.value) == ("sampler.correctors=fkc resamples in the step callback, which DDIMPipeline does not "
                              "take; remove sampler.correctors")


BASE = ("experiment=tiny", "debug=fast", "prompts.max_prompts=1", "grid.scales=[1.5]", "evaluators.selected=[jpeg]")


@pytest.mark.parametrize("overrides,message", [
    (("sampler.fkc.particles=2",), "sampler.fkc.particles=2 has no effect without sampler.correctors=fkc; set "
                                   "sampler.correctors=fkc or drop it"),
    (("sampler.correctors=fkc", "sampler.fkc.particles=0"), "sampler.fkc particles must be an integer >= 1, got 0"),
    (("sampler.correctors=fkc", "sampler.fkc.resample=always"),
     "sampler.fkc resample='always'; use one of ['ess', 'every_step']"),
    (("sampler.correctors=fkc", "sampler.window.start=0.5"),
     "sampler.correctors=fkc: the weights are derived for the RLG mix at every step (docs/fkc.md), not inside a "
     "window; remove sampler.window"),
    (("sampler.correctors=fkc", "+sampler.extra.strength=0.5"),
     "sampler.correctors=fkc: no Feynman-Kac weights with sampler.extra.strength (a second denoiser call per step, "
     "or a schedule that does not start from noise); remove it"),
    (("sampler.correctors=fkc", "method=[cfg_rl]", "method.cfg_rl.knobs=[2]"),
     "sampler.correctors=fkc corrects RLG's mix of two networks; method cfg_rl does not mix them: run it without "
     "sampler.correctors"),
    (("sampler.correctors=smc",), "sampler.correctors='smc' is not valid; use one of: none, fkc"),
])
def test_bad_corrector_settings_are_refused_at_start_up_in_one_line(compose, overrides, message):
    from rlg.harness import build
    from rlg.harness.config import ConfigError

    with pytest.raises(ConfigError) as err:
        build.build(compose(*BASE, *overrides))
    assert str(err.value) == message


def test_plain_rlg_keeps_its_content_keys_and_fkc_gets_its_own(compose):
    from rlg.harness import build
    from rlg.store import content_key

    plain = build.build(compose(*BASE))
    assert "correctors" not in plain.identity["sampler"]  # keys of runs made before FKC existed stay valid
    fkc = build.build(compose(*BASE, "sampler.correctors=fkc"))
    assert fkc.sampler.correctors == FKCConfig(4, "ess", 0.5)
    keys = {content_key(j.identity) for j in (plain, fkc, build.build(compose(*BASE, "sampler.correctors=fkc",
                                                                              "sampler.fkc.particles=2")))}
    assert len(keys) == 3


# -- FK steering (method=fk_steering) in the pipeline ------------------------------------------------------------
def _steering(k, potential="difference", interval=1, lam=1.0, reward="jpeg_compressibility"):
    from rlg.evaluators.base import get_evaluator, reward_scorer
    from rlg.sampler_spec import SteeringSpec

    return SteeringSpec(k, reward, reward_scorer(get_evaluator("jpeg"), reward), potential, interval, lam)


def test_fk_steering_with_one_particle_is_the_plain_sampler_and_k_particles_cost_k_times(fixture_root):
    pair = _pair(fixture_root, "sd")
    items = [WorkItem(0, "a cat", 0, 0, 1.0), WorkItem(1, "a dog", 1, 0, 0.0)]  # the RL model, the base model
    settings = dict(STEPS, num_inference_steps=3, eta=1.0)
    plain = RLGSampler(pair, SamplerSettings(**settings)).generate(items)
    one = RLGSampler(pair, SamplerSettings(**settings, steering=_steering(1))).generate(items)
    for a, b in zip(plain, one):
        assert np.array_equal(a.image, b.image) and (a.nfe_base, a.nfe_rl) == (b.nfe_base, b.nfe_rl)
    assert [(g.nfe_base, g.nfe_rl) for g in plain] == [(0, 6), (6, 0)]  # 3 steps x CFG's 2 rows, one model
    sampler = RLGSampler(pair, SamplerSettings(**settings, steering=_steering(3, lam=30.0)))
    three = sampler.generate(items)
    assert [(g.nfe_base, g.nfe_rl) for g in three] == [(0, 18), (18, 0)]  # every particle's rows count
    pop = sampler.last_population
    assert len(pop.ess) == 2  # resampled after steps 0 and 1, never after the last


def test_fk_steering_final_weights_undo_the_potentials_it_resampled_by():
    """exp(lam R(x_out)) / prod G (the target p exp(lam R)): the final log weight plus the carried log product of
    the potentials is lam R for every particle, whatever the potential and the resampling did."""
    from rlg.fk_steering import FKSteeringConfig, FKSteeringPopulation

    for potential in ("difference", "max", "sum"):
        gens = [torch.Generator().manual_seed(j) for j in range(2)]
        pop = FKSteeringPopulation(2, FKSteeringConfig(4, potential, 2.0, 1), gens)
        rewards = [torch.tensor([0.1, 0.5, -0.2, 0.3, 1.0, 0.0, 0.2, 0.4], dtype=torch.float64),
                   torch.tensor([0.3, 0.1, 0.2, 0.9, -0.5, 0.5, 0.6, 0.1], dtype=torch.float64)]
        for r in rewards:
            rows = pop.potential_step(r)
            assert rows.view(2, 4).div(4).floor().long().tolist() == [[0] * 4, [1] * 4]  # within each sample's group
        final = torch.tensor([0.2, 0.4, 0.6, 0.8, 0.1, 0.3, 0.5, 0.7], dtype=torch.float64)
        pick = pop.pick(final)
        assert torch.allclose(pop.log_weights + pop.log_prod, 2.0 * final.view(2, 4))
        assert pick.div(4).floor().long().tolist() == [0, 1]


def test_fk_steering_is_refused_in_one_line_where_it_cannot_run(fixture_root):
    sdxl = _pair(fixture_root, "sdxl")  # EulerDiscreteScheduler: no predicted x0 derived here
    with pytest.raises(SamplerError) as err:
        RLGSampler(sdxl, SamplerSettings(**STEPS, steering=_steering(2)))
    assert str(err.value) == ("fk_steering: no predicted x0 for EulerDiscreteScheduler; use sampler.scheduler=ddim "
                              "(noise-prediction pipelines) or euler_ode / flow_grpo_sde (flow pipelines)")
    flux = _pair(fixture_root, "flux")  # packed latents
    with pytest.raises(SamplerError) as err:
        RLGSampler(flux, SamplerSettings(**STEPS, steering=_steering(2)))
    assert str(err.value) == ("fk_steering resamples in the step callback and decodes unpacked latents, which "
                              "FluxPipeline does not allow; use an SD / SDXL / SD3 pipeline")
    from rlg.evaluators.base import get_evaluator, reward_scorer
    from rlg.sampler_spec import SteeringSpec

    with pytest.raises(ValueError) as err:
        reward_scorer(get_evaluator("jpeg"), "digit_prob")
    assert str(err.value) == ("fk_steering: evaluator jpeg writes no metric 'digit_prob' (it writes "
                              "jpeg_compressibility, jpeg_incompressibility); steer by one of them")
    sd = _pair(fixture_root, "sd")
    with pytest.raises(SamplerError) as err:
        RLGSampler(sd, SamplerSettings(**STEPS, steering=SteeringSpec(2, "jpeg_compressibility")))
    assert str(err.value) == ("fk_steering needs a scorer of its reward 'jpeg_compressibility' (SteeringSpec.scorer, "
                              "e.g. rlg.evaluators.base.reward_scorer; the harness builds it from "
                              "method.fk_steering.pick)")
    with pytest.raises(SamplerError) as err:
        RLGSampler(sd, SamplerSettings(**STEPS, steering=_steering(2), correctors=FKCConfig(2)))
    assert str(err.value) == ("fk_steering runs one model with a reward; sampler.correctors corrects RLG's mix: "
                              "remove sampler.correctors")


@pytest.mark.parametrize("overrides,message", [
    (("method=[fk_steering]", "method.fk_steering.pick=digit_prob"),
     "method.fk_steering.pick='digit_prob' is not a metric of the selected evaluators (jpeg_compressibility, "
     "jpeg_incompressibility); pick one of them"),
    (("method=[fk_steering]", "method.fk_steering.options.potential=best"),
     "method fk_steering potential='best'; use one of ['difference', 'max', 'sum']"),
    (("method=[fk_steering]", "method.fk_steering.knobs=[1.5]"),
     "method fk_steering: particle counts [1.5] are not whole numbers >= 1; e.g. knobs=[2,4]"),
    (("method=[fk_steering]", "+method.fk_steering.options.particles=2"),
     "method fk_steering: options ['particles'] have no effect (it takes interval, lam, potential); remove them"),
    (("method=[rlg_fkc]", "method.rlg_fkc.options.resample=never"),
     "method rlg_fkc: fkc resample='never'; use one of ['ess', 'every_step']"),
])
def test_bad_particle_method_settings_are_refused_at_start_up_in_one_line(compose, overrides, message):
    from rlg.harness import build
    from rlg.harness.config import ConfigError

    with pytest.raises(ConfigError) as err:
        build.build(compose(*BASE, *overrides))
    assert str(err.value) == message


def test_a_checkpoint_scheduler_without_particle_weights_is_refused_at_start_up(compose):
    from rlg.harness import build
    from rlg.harness.config import ConfigError

    sdxl = (*BASE, "pair=tiny_sdxl_full")  # its checkpoint's scheduler is EulerDiscreteScheduler
    for extra, what in ((("sampler.correctors=fkc",), "sampler.correctors=fkc"),
                        (("method=[rlg_fkc]",), "method rlg_fkc / fk_steering")):
        with pytest.raises(ConfigError) as err:
            build.build(compose(*sdxl, *extra))
        assert str(err.value) == (f"{what}: pair tiny_sdxl_full's scheduler is EulerDiscreteScheduler, for which the "
                                  "particle weights are not derived; use sampler.scheduler=ddim (noise-prediction "
                                  "pipelines) or euler_ode / flow_grpo_sde (flow pipelines)")
        build.build(compose(*sdxl, *extra, "sampler.scheduler=ddim"))  # the fix it names starts
