"""RLG with Feynman-Kac correctors (rlg.fkc) on the analytic pairs, where every score and normaliser is known.

* Gaussian base, linear reward: the score difference s_rl - s_base = alpha k / C_t (k = Sigma a / beta,
  C_t = alpha^2 Sigma + sigma^2) does not depend on x, so every particle gets the same weight (ESS = K, no
  resampling), and the accumulated log weight is log Z_0 - log Z_T for Z_t = ∫ p_base,t^(1-w) p_rl,t^w =
  exp(-1/2 w (1 - w) D_t), D_t = alpha_t^2 k^T C_t^-1 k: an independent closed form for the discretised weights.
* Two-mode mixture, quadratic reward: plain RLG misses the target; FKC with enough particles must be closer.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlg.analytic import final_alpha_sigma, initial_alpha_sigma, make_pair, sample_loop
from rlg.analytic_metrics import energy_distance
from rlg.fkc import FKCConfig, effective_sample_size, fkc_sample_loop, systematic_resample, weight_coefficient
from rlg.ground_truth import GroundTruthConfig, make_sampler, rlg_denoiser, run_ground_truth

F64 = torch.float64


def _gaussian_linear_log_z_ratio(pair, w, a_start, s_start, a_end, s_end) -> float:
    """log Z_end - log Z_start with Z = exp(-1/2 w (1 - w) D), D = alpha^2 sum_i k_i^2 / C_i."""
    var = pair.base.variances[0]
    k = var * pair.reward.a / pair.beta

    def D(a, s):
        return float((a**2 * k**2 / (a**2 * var + s**2)).sum())

    return 0.5 * w * (w - 1) * (D(a_end, s_end) - D(a_start, s_start))


@pytest.mark.parametrize("sampler", ["ddim_eta1", "flow_grpo_sde"])
def test_gaussian_linear_weights_are_uniform_and_add_up_to_the_normaliser_ratio(sampler):
    pair = make_pair("gaussian_linear", d=3)
    w, K, n = 3.0, 4, 8
    errors = []
    for steps in (25, 100):
        scheduler, _, kw = make_sampler(sampler, GroundTruthConfig())
        base, rl = pair.denoisers(scheduler, F64)
        g = torch.Generator().manual_seed(0)
        res = fkc_sample_loop(base, rl, scheduler, torch.randn(n * K, 3, generator=g, dtype=F64), w, steps,
                              FKCConfig(K), generator=g, **kw)
        # equal weights within every group: no resampling, ESS = K
        assert not bool(res.resampled.any())
        assert torch.allclose(res.ess, torch.full_like(res.ess, K), rtol=1e-12)
        spread = res.log_weights - res.log_weights[:, :1]
        assert float(spread.abs().max()) < 1e-9 * float(res.log_weights.abs().max())
        a0, s0 = initial_alpha_sigma(scheduler, steps)
        af, sf = final_alpha_sigma(scheduler, steps)
        expected = _gaussian_linear_log_z_ratio(pair, w, a0, s0, af, sf)
        assert expected > 0.1  # w > 1: the weights grow; the test is not of zeros
        errors.append(abs(float(res.log_weights.mean()) / expected - 1))
        assert res.network_rows == 2 * n * K * steps and res.samples.shape == (n, 3)
    # the Euler sum converges to the integral: within 5% at 100 steps, and closer than at 25
    assert errors[1] < 0.05 and errors[1] < errors[0], errors


def test_weight_coefficients_follow_the_schedules():
    scheduler, _, _ = make_sampler("flow_euler_ode", GroundTruthConfig())
    scheduler.set_timesteps(10)
    s = scheduler.sigmas
    assert float(s[0]) == 1.0 and weight_coefficient(scheduler, 0) == 0.0  # at pure noise both scores are -x
    assert weight_coefficient(scheduler, 3) == pytest.approx(float(2 * (1 - s[3]) * (s[3] - s[4]) / s[3]))
    ddim, _, _ = make_sampler("ddim_eta1", GroundTruthConfig())
    ddim.set_timesteps(10)
    t, ac = int(ddim.timesteps[2]), ddim.alphas_cumprod.double().tolist()
    assert weight_coefficient(ddim, 2) == pytest.approx(math.log(ac[t - 100] / ac[t]) / (1 - ac[t]), rel=1e-5)
    last = int(ddim.timesteps[-1])
    assert weight_coefficient(ddim, 9) == pytest.approx(
        math.log(float(ddim.final_alpha_cumprod) / ac[last]) / (1 - ac[last]), rel=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        weight_coefficient(ddim, 10)
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler()
    euler.set_timesteps(10)
    with pytest.raises(TypeError, match="use DDIMScheduler"):
        weight_coefficient(euler, 0)


def test_systematic_resampling_copies_each_particle_floor_or_ceil_of_k_p_times():
    g = torch.Generator().manual_seed(3)
    K = 16
    logw = torch.randn(200, K, generator=g, dtype=F64) * 2
    logw[:, 5] = -math.inf  # a particle of weight 0 is never chosen
    idx = systematic_resample(logw, g)
    counts = torch.zeros(200, K, dtype=F64).scatter_add_(1, idx, torch.ones_like(idx, dtype=F64))
    kp = K * torch.softmax(logw, -1)
    assert bool((counts >= kp.floor() - 1e-9).all()) and bool((counts <= kp.ceil() + 1e-9).all())
    assert int(counts[:, 5].sum()) == 0
    assert effective_sample_size(torch.zeros(2, K)).tolist() == [K, K]


def test_bad_fkc_settings_name_the_fix():
    with pytest.raises(ValueError, match="particles must be an integer >= 1"):
        FKCConfig(0)
    with pytest.raises(ValueError, match="resample='always'"):
        FKCConfig(4, "always")
    with pytest.raises(ValueError, match="particles must be an integer >= 1"):
        GroundTruthConfig(fkc_particles=[2.5])
    scheduler, _, _ = make_sampler("ddim_eta1", GroundTruthConfig())
    base, rl = make_pair("gaussian_linear").denoisers(scheduler, F64)
    with pytest.raises(ValueError, match="not a multiple of particles=4"):
        fkc_sample_loop(base, rl, scheduler, torch.zeros(6, 2, dtype=F64), 2.0, 2, FKCConfig(4))


def test_fkc_beats_plain_rlg_on_the_mixture_at_w3():
    # ddim eta 0 (probability-flow ODE) at 30 steps: plain RLG's distance to the w = 3 target is ~0.1 (the mixing
    # rule's gap); FKC's weights remove most of it. Independent draws for the reference samples.
    pair, w, n, K, steps = make_pair("mixture_quadratic", d=2), 3.0, 400, 32, 30
    scheduler, _, kw = make_sampler("ddim_eta0", GroundTruthConfig())
    base, rl = pair.denoisers(scheduler, F64)
    a0, s0 = initial_alpha_sigma(scheduler, steps)
    af, sf = final_alpha_sigma(scheduler, steps)
    g = torch.Generator().manual_seed(1)
    ref = af * pair.exact_samples(w, n, g) + sf * torch.randn(n, 2, generator=g, dtype=F64)
    lat = a0 * pair.exact_samples(w, n, g) + s0 * torch.randn(n, 2, generator=g, dtype=F64)
    plain = sample_loop(rlg_denoiser(base, rl, torch.full((n,), w, dtype=F64), steps), scheduler, lat, steps, **kw)
    lat = a0 * pair.exact_samples(w, n * K, g) + s0 * torch.randn(n * K, 2, generator=g, dtype=F64)
    fkc = fkc_sample_loop(base, rl, scheduler, lat, w, steps, FKCConfig(K), generator=g, **kw)
    d_plain, d_fkc = energy_distance(plain, ref), energy_distance(fkc.samples, ref)
    assert d_plain > 0.05 and d_fkc < 0.4 * d_plain, (d_plain, d_fkc)
    assert bool(fkc.resampled.any())  # the weights did act


def test_ground_truth_gains_fkc_rows_and_table(tmp_path):
    from rlg.report.ground_truth import ground_truth_fkc_tables, ground_truth_tables, write_ground_truth_report

    cfg = GroundTruthConfig(pair="mixture_quadratic", scales=[0.0, 1.0, 2.0], samplers=["ddim_eta1"],
                            num_inference_steps=5, n_per_batch=20, n_batches=2, fkc_particles=[2, 4],
                            fks_particles=[3], metrics=["energy_distance", "mean_reward"], progress=False)
    df = run_ground_truth(cfg)
    fk = df[df.method == "rlg_fkc"]
    assert set(fk.w) == {2.0} and set(fk.particles) == {2, 4}  # not at w = 0, 1, where its weights are 0
    assert set(fk.network_rows) == {2 * 2 * 5, 2 * 4 * 5}
    assert set(df[df.method == "rlg"].network_rows) == {5, 10}  # one model at w in {0, 1}
    assert ((fk.ess_final > 0) & (fk.ess_final <= 1)).all()
    fs = df[df.method == "fk_steering"]
    assert set(fs.w) == {1.0, 2.0} and set(fs.network_rows) == {3 * 5}  # one model; not at w = 0 (lam = 0)
    table = ground_truth_fkc_tables(df)["markdown"]
    assert "| ddim_eta1 | 2 | rlg_fkc | 4 |" in table and "| ddim_eta1 | 1 | fk_steering | 3 |" in table
    assert "z RLG-FKC (K)" in ground_truth_tables(df)["markdown"]
    names = {p.name for p in write_ground_truth_report(df, tmp_path)}
    assert {"ground_truth_fkc.md", "ground_truth_fkc.tex"} <= names


def test_the_ground_truth_preset_passes_the_fkc_settings_through():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from rlg.harness import build
    from rlg.harness.config import ConfigError

    conf_dir = str(Path(__file__).resolve().parent.parent / "rlg" / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=ground_truth", "ground_truth.fkc_particles=[4,16]",
                                           "ground_truth.fkc_resample=every_step", "ground_truth.fks_particles=[8]",
                                           "ground_truth.fks_potential=max", "ground_truth.fks_interval=5",
                                           "tracker=none"])
        bad = compose("config", overrides=["experiment=ground_truth", "ground_truth.fkc_particles=[0]", "tracker=none"])
    gt = build.build(cfg).settings
    assert gt.fkc_particles == [4, 16] and gt.fkc_resample == "every_step"
    assert gt.fks_particles == [8] and gt.fks_potential == "max" and gt.fks_interval == 5
    with pytest.raises(ConfigError, match="particles must be an integer >= 1"):
        build.build(bad)


def test_learned_fkc_rows_and_gaps_add_up():
    """rlg.fkc_learned at a toy size: every arm at every w, FKC's network rows are 2 K per step, the decomposition's
    gaps are the row differences, and on gaussian_linear (equal weights) exact-score FKC is exact within its se."""
    from rlg.fkc_learned import decompose_fkc, run_learned_fkc
    from rlg.kl_learned import LearnedTruthConfig

    small = dict(seeds=[0, 1], base_steps=5, tune_steps=2, hidden=8, depth=1, n_samples=64, num_inference_steps=5,
                 objectives=["rwr"], progress=False)
    df = run_learned_fkc(LearnedTruthConfig(pair="gaussian_linear", scales=[1.0, 3.0], **small), particles=[2])
    assert set(df.w) == {3.0}  # w = 1 is skipped: the weights are 0 there
    assert sorted(df.arm.value_counts().items()) == [("exact", 1), ("fkc", 2), ("fkc_exact", 1), ("retrained", 2),
                                                     ("rlg", 2), ("rlg_exact", 1)]
    assert set(df[df.arm == "fkc"].network_rows) == {2 * 2 * 5}
    dec = decompose_fkc(df).iloc[0]
    fk, ret = df[df.arm == "fkc"].sort_values("seed"), df[df.arm == "retrained"].sort_values("seed")
    assert dec.fkc_vs_retrained == pytest.approx(float((fk.reward.to_numpy() - ret.reward.to_numpy()).mean()))
    assert dec.fkc_gap_exact_lo <= 0 <= dec.fkc_gap_exact_hi
    assert dec.ess_final_exact == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs a scale w != 1"):
        run_learned_fkc(LearnedTruthConfig(pair="gaussian_linear", scales=[1.0], **small), particles=[2])


def test_fk_steering_of_the_base_reaches_the_tilted_target():
    """FK steering targets p_sampler(x0) exp(lam R(x0)) for the distribution p_sampler the base's sampler actually
    produces (at 20 DDIM steps its variance is too small, so not the exact tilt); reference: self-normalised
    importance weighting of 20000 plain base samples by exp(lam R), independent of the steering code. The base
    alone (K = 1) is far from it. (The "max" and "sum" potentials overshoot here when resampling every step: their
    final correction exp(lam R) / prod G cannot undo 20 greedy resamplings at K = 64; docs/fkc.md.)"""
    from rlg.fk_steering import FKSteeringConfig, fk_steering_sample_loop

    pair, lam, n, steps = make_pair("gaussian_linear", d=2), 1.0, 200, 20
    scheduler, _, kw = make_sampler("ddim_eta1", GroundTruthConfig())
    base, _ = pair.denoisers(scheduler, F64)
    a0, s0 = initial_alpha_sigma(scheduler, steps)

    def latents(m, g):
        return a0 * pair.base.sample(m, g) + s0 * torch.randn(m, 2, generator=g, dtype=F64)

    g = torch.Generator().manual_seed(11)
    plain = pair.reward(sample_loop(base, scheduler, latents(20_000, g), steps, generator=g, **kw))
    target = float((torch.softmax(lam * plain, 0) * plain).sum())
    means = {}
    for K in (1, 64):
        g = torch.Generator().manual_seed(5)
        res = fk_steering_sample_loop(base, scheduler, latents(n * K, g), pair.reward, steps,
                                      FKSteeringConfig(K, "difference", lam), generator=g, **kw)
        r = pair.reward(res.samples)
        means[K] = (float(r.mean()), float(r.std()) / math.sqrt(n))
        assert res.network_rows == n * K * steps
    assert abs(means[1][0] - target) > 5 * means[1][1]
    assert abs(means[64][0] - target) < 3 * means[64][1], (means, target)
    with pytest.raises(ValueError, match="potential='avg'"):
        FKSteeringConfig(4, "avg")
