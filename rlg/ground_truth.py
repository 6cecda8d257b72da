"""How exactly does RLG at scale w sample the beta/w optimum? Sweeps over analytic pairs.

``run_ground_truth(GroundTruthConfig(...))`` samples an analytic pair (``rlg.analytic``) with RLG at
every scale of the grid, with each sampler (real diffusers schedulers: FlowMatch Euler ODE, the
Flow-GRPO SDE, DDIM eta 0 and eta 1), and compares the samples with exact samples of
p_ref exp(w R / beta). It returns tidy rows; ``rlg.report.ground_truth`` draws the figures and tables.

What a run does, per sampler:

1. ``method="rlg"``: one batch with ``n = n_per_batch * n_batches`` samples per scale, all scales
   together (per-sample scales, one model pair, the same initial noise for every scale, as the image
   harness does), through the production ``rlg.denoiser.RLGDenoiser``.
   Initial latents: ``init="marginal"`` draws x_T = alpha_T x0 + sigma_T eps with x0 an exact sample of
   the scale's target, i.e. the target's exact noised marginal at the first timestep, so that only
   the guidance and the discretisation are measured (for FlowMatch alpha_T = 0 and this is plain
   N(0, I); DDIM's SD1.5 schedule starts at abar(981) ~ 0.005, where N(0, I) is not the marginal).
   ``init="noise"`` draws N(0, I), as a stock pipeline does.
2. ``method="exact_score"`` (the sampler control, ``rl_control=True``): the same sampler, steps, initial
   latents and step noise (the same generator, so row i of both runs is paired), but each block of rows
   driven by the exact closed-form denoiser of its own beta/w target instead of the RLG mix. Its error
   against exact samples is the sampler's own error at that w (discretisation; the score is exact). At
   w = 0 and w = 1 it IS the base model, resp. the RL model alone, i.e. the same computation as RLG
   there (RLGDenoiser runs one model at those scales), so the endpoint rows measure the sampler's error
   against exact samples, and RLG equals the control there bit for bit.
3. Both outputs are compared with exact target samples pushed to the sampler's final noise level
   (FlowMatch: 0; DDIM with set_alpha_to_one=False: abar = alphas_cumprod[0]).

What is subtracted, and why (``net`` columns): RLG(w) - exact(w) mixes two errors: the sampler's
discretisation error, which any finite-step sampler has even with the exact score, and the RLG-specific
error, that the mixed prediction is not the score of the beta/w optimum (the noised marginal of
p_ref^(1-w) p_rl^w is not the mixture of noised marginals). The net gap RLG(w) - exact_score(w) removes
the first: both runs share sampler, steps, initial latents and step noise and differ only in the
prediction, so the difference is what the mixing rule changes, as the sampler propagates it. Its
standard error is the paired one (std of per-row differences / sqrt(n)), much smaller than either
run's own. It is not "RLG(w) - exact(w) minus a sampler error interpolated from the endpoints": the
sampler's error depends on the field it integrates, so measuring it at each w on the exact target's
own score replaces an interpolation (and, for w > 1, an extrapolation) with a measurement. The
endpoint rows (w = 0, 1) still report the sampler's error against exact samples, as the issue asks.
Residual caveat: the two runs integrate different fields, so their discretisation errors need not be
identical; the difference of the two, which the net gap contains, vanishes as steps grow.

4. ``method="rlg_fkc"`` (``fkc_particles``: one run per particle count K): RLG with Feynman-Kac correctors
   (``rlg.fkc``; ``docs/fkc.md``), K particles per output sample drawn from the same initial law, importance
   weights and systematic resampling, one particle per sample drawn by weight at the end; at every scale but 0
   and 1 (its weights are identically 0 there: the same law as plain sampling). Not paired with the other runs
   (resampling breaks the row correspondence), so it has no net columns.
5. ``method="fk_steering"`` (``fks_particles``): FK steering (``rlg.fk_steering``) of the base model alone with
   lam = w / beta, whose target p_base exp(w R / beta) is the same beta/w optimum; at every scale but 0.

Rows: pair, d, beta, schedule, sampler, method ("rlg" | "exact_score" | "rlg_fkc" | "fk_steering"), w, metric,
value, stderr, floor, floor_stderr, exact, exact_stderr, z, control, control_stderr, net, net_stderr, net_z, n,
n_batches, steps, init, seed, particles (1 for the plain runs), network_rows (per output sample: steps x models
run; 2 K steps for FKC, K steps for FK steering), and on the particle rows ess_final, ess_min (effective sample
size / K: mean of the final weights'; smallest over samples and steps, of the weights, resp. of the scheduled
potentials) and resamples (per sample). Metrics:

* ``energy_distance``, ``mmd2``: value = distance(samples, exact), floor = distance(exact, exact');
  z = (value - floor) / sqrt(stderr^2 + floor_stderr^2); se over ``n_batches`` independent batches.
* ``mean_reward``, ``weight_k`` (posterior weight of target component k), ``mean_i`` and ``var_i``
  (per-dimension mean and unbiased variance of the output, dimensions i < ``moment_dims``): value vs
  the exact value in closed form (noised to the output level); z = (value - exact) / stderr with the
  influence-function standard error (``rlg.analytic_metrics.moment_influence``). On ``rlg`` rows,
  ``control`` is the exact_score run's value and ``net`` = value - control with its paired standard
  error and ``net_z`` = net / net_stderr (NaN at w where the two runs are identical: se = 0).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from torch import nn
from tqdm.auto import tqdm

from rlg.analytic import (AnalyticDenoiserOutput, AnalyticPair, final_alpha_sigma, initial_alpha_sigma, make_denoiser,
                          make_pair, sample_loop)
from rlg.analytic_metrics import batched, energy_distance, median_bandwidth, mmd2, moment_influence, paired_difference
from rlg.fk_steering import FKSteeringConfig, fk_steering_sample_loop
from rlg.fkc import FKCConfig, effective_sample_size, fkc_sample_loop
from rlg.kind_spec import METRICS, SAMPLERS, GroundTruthConfig
from rlg.schedulers import FlowGRPOSDEScheduler

__all__ = ["GroundTruthConfig", "SAMPLERS", "SD15_DDIM_CONFIG", "METRICS", "make_sampler", "run_ground_truth"]

# stable-diffusion-v1-5 scheduler_config.json, as DDIMScheduler reads it (clip_sample off).
SD15_DDIM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)

def make_sampler(name: str, config: GroundTruthConfig):
    """(scheduler, schedule, step_kwargs) for a sampler name."""
    if name == "flow_euler_ode":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.flow_shift), "flow", {}
    if name == "flow_grpo_sde":
        return FlowGRPOSDEScheduler(num_train_timesteps=1000, shift=config.flow_shift,
                                    noise_level=config.noise_level), "flow", {}
    if name == "ddim_eta0":
        return DDIMScheduler(**SD15_DDIM_CONFIG), "vp", {"eta": 0.0}
    if name == "ddim_eta1":
        return DDIMScheduler(**SD15_DDIM_CONFIG), "vp", {"eta": 1.0}
    raise ValueError(f"unknown sampler {name!r}; known: {sorted(SAMPLERS)}")


def _generator(seed: int, *names) -> torch.Generator:
    key = zlib.crc32("/".join(str(n) for n in names).encode())
    return torch.Generator().manual_seed((seed * 1_000_003 + key) % (2**63))


def rlg_denoiser(base, rl, scales, num_steps: int):
    """The production RLGDenoiser (the one image pipelines use) over the two analytic denoisers."""
    from rlg.denoiser import RLGDenoiser

    den = RLGDenoiser(base, rl)
    den.begin(scales.tolist(), num_steps)
    return den


class _RowBlocks(nn.Module):
    """Rows [i*n, (i+1)*n) go to ``denoisers[i]``: one batch, one generator, several exact targets, so
    the control run shares every random draw with the RLG run."""

    def __init__(self, denoisers: list[nn.Module], n: int):
        super().__init__()
        self.blocks = nn.ModuleList(denoisers)
        self.n = n

    @property
    def config(self):
        return self.blocks[0].config

    def forward(self, sample, timestep, *args, return_dict: bool = True, **kwargs):
        t = torch.as_tensor(timestep).reshape(-1)
        t = t.expand(sample.shape[0]) if t.numel() == 1 else t
        parts = [den(sample[i * self.n:(i + 1) * self.n], t[i * self.n:(i + 1) * self.n], return_dict=False)[0]
                 for i, den in enumerate(self.blocks)]
        out = torch.cat(parts)
        return AnalyticDenoiserOutput(sample=out) if return_dict else (out,)


_NAN = float("nan")


def _scalar_stats(pair, w, x, ref, af, sf, config) -> dict[str, tuple[torch.Tensor, float, float]]:
    """metric -> (per-sample influence values (n,), exact value, exact_stderr) for the scalar statistics."""
    stats = {}
    target = pair.target(w)
    noised = target.noised(af, sf) if target is not None else None
    if "mean_reward" in config.metrics:
        if noised is not None:
            ex, ese = pair.exact_mean_reward(w, af, sf), 0.0
        else:
            r = pair.reward(ref)
            ex, ese = float(r.mean()), float(r.std() / math.sqrt(r.numel()))
        stats["mean_reward"] = (pair.reward(x), ex, ese)
    if "component_weight" in config.metrics and pair.base.K > 1:
        # posterior weights under the exact target (noised to the output level) when it is a mixture;
        # else under the base, with the exact value estimated from exact samples.
        mix = noised if noised is not None else pair.base.noised(af, sf)
        resp = mix.responsibilities(x.to(torch.float64))
        resp_ref = None if noised is not None else mix.responsibilities(ref)
        for k in range(mix.K):
            if resp_ref is None:
                ex, ese = float(mix.weights[k]), 0.0
            else:
                ex, ese = float(resp_ref[:, k].mean()), float(resp_ref[:, k].std() / math.sqrt(resp_ref.shape[0]))
            stats[f"weight_{k}"] = (resp[:, k], ex, ese)
    if "moments" in config.metrics:
        for i in range(min(pair.d, config.moment_dims)):
            for moment in ("mean", "var"):
                if noised is not None:
                    ex = float((noised.mean() if moment == "mean" else noised.variance())[i])
                    ese = 0.0
                else:
                    infl = moment_influence(ref[:, i], moment)
                    ex, ese = float(infl.mean()), float(infl.std() / math.sqrt(infl.numel()))
                stats[f"{moment}_{i}"] = (moment_influence(x[:, i], moment), ex, ese)
    return stats


def _z(diff: float, *ses: float) -> float:
    se = math.sqrt(sum(s**2 for s in ses if not math.isnan(s)))
    return diff / se if se > 0 else _NAN


def _evaluate(pair, w, outs: dict[str, torch.Tensor], ref, ref2, af, sf, config) -> list[dict]:
    """Rows (without run identifiers) for scale w; ``outs`` maps method -> its (n, d) samples."""
    rows = []
    nb = config.n_batches

    def row(method, metric, value, stderr, floor=_NAN, floor_stderr=_NAN, exact=_NAN, exact_stderr=_NAN,
            control=_NAN, control_stderr=_NAN, net=_NAN, net_stderr=_NAN):
        z = _z(value - floor, stderr, floor_stderr) if not math.isnan(floor) else (
            _z(value - exact, stderr, exact_stderr) if not math.isnan(exact) else _NAN)
        rows.append(dict(method=method, w=w, metric=metric, value=value, stderr=stderr, floor=floor,
                         floor_stderr=floor_stderr, exact=exact, exact_stderr=exact_stderr, z=z, control=control,
                         control_stderr=control_stderr, net=net, net_stderr=net_stderr,
                         net_z=_z(net, net_stderr) if not math.isnan(net) else _NAN))

    rb, r2b = list(torch.chunk(ref, nb)), list(torch.chunk(ref2, nb))
    distances = {}
    if "energy_distance" in config.metrics:
        distances["energy_distance"] = energy_distance
    if "mmd2" in config.metrics:
        h = median_bandwidth(rb[0])
        distances["mmd2"] = lambda a, b: mmd2(a, b, h)
    for metric, fn in distances.items():
        f, fse = batched(fn, r2b, rb)
        for method, out in outs.items():
            v, se = batched(fn, list(torch.chunk(out, nb)), rb)
            row(method, metric, v, se, f, fse)
    per_method = {method: _scalar_stats(pair, w, out, ref, af, sf, config) for method, out in outs.items()}
    ctrl = per_method.get("exact_score")
    for method, stats in per_method.items():
        for metric, (infl, ex, ese) in stats.items():
            n = infl.numel()
            v, se = float(infl.mean()), float(infl.std() / math.sqrt(n))
            extra = {}
            if method == "rlg" and ctrl is not None:
                c = ctrl[metric][0]
                net, net_se = paired_difference(infl, c)
                extra = dict(control=float(c.mean()), control_stderr=float(c.std() / math.sqrt(n)), net=net,
                             net_stderr=net_se)
            row(method, metric, v, se, exact=ex, exact_stderr=ese, **extra)
    return rows


def run_ground_truth(config: GroundTruthConfig, pair: AnalyticPair | None = None,
                     guided_factory: Callable | None = None) -> pd.DataFrame:
    """Sweep scales x samplers for one analytic pair; tidy rows (see module docstring).

    ``pair`` overrides ``config.pair``/``d``/``beta``. ``guided_factory(base, rl, scales)`` builds the RLG
    denoiser from the two analytic denoisers and a per-sample scale tensor; the default is the
    production ``rlg.denoiser.RLGDenoiser`` (tests compare it with an independent reference mixer).
    Raises ValueError for a pair without a closed-form RL model (``mixture_tanh``).
    """
    pair = pair or make_pair(config.pair, config.d, config.beta)
    guided_factory = guided_factory or (lambda b, r, s: rlg_denoiser(b, r, s, config.num_inference_steps))
    n = config.n_per_batch * config.n_batches
    steps = config.num_inference_steps
    scales = [float(w) for w in config.scales]
    methods = ["rlg"] + (["exact_score"] if config.rl_control else [])
    rows = []
    bar = tqdm(total=len(config.samplers) * len(methods) * steps, desc=f"ground truth {pair.name}", unit="step",
               disable=not config.progress, leave=False)
    with bar:
        for sampler in config.samplers:
            scheduler, schedule, step_kwargs = make_sampler(sampler, config)
            base, rl = pair.denoisers(scheduler, torch.float64)
            a0, s0 = initial_alpha_sigma(scheduler, steps)
            af, sf = final_alpha_sigma(scheduler, steps)
            outs = {}
            for method in methods:
                bar.set_postfix_str(f"{sampler} {method}")
                g = _generator(config.seed, pair.name, sampler)  # the same draws for every method: paired rows
                eps = torch.randn(n, pair.d, generator=g, dtype=torch.float64).repeat(len(scales), 1)  # paired across w
                if config.init == "marginal":
                    latents = a0 * torch.cat([pair.exact_samples(w, n, g) for w in scales]) + s0 * eps
                else:
                    latents = eps
                if method == "rlg":
                    den = guided_factory(base, rl, torch.tensor(scales, dtype=torch.float64).repeat_interleave(n))
                else:
                    den = _RowBlocks([make_denoiser(pair.target(w), scheduler, torch.float64) for w in scales], n)
                outs[method] = sample_loop(den, scheduler, latents, steps, generator=g,
                                           callback=lambda _: bar.update(1), **step_kwargs)
            fkc = _run_fkc(pair, config, sampler, scheduler, base, rl, scales, a0, s0, step_kwargs, bar)
            fks = _run_fk_steering(pair, config, sampler, scheduler, base, scales, a0, s0, step_kwargs, bar)
            gr = _generator(config.seed, pair.name, sampler, "reference")
            for i, w in enumerate(scales):
                refs = [af * pair.exact_samples(w, n, gr)
                        + sf * torch.randn(n, pair.d, generator=gr, dtype=torch.float64)
                        for _ in range(2)]
                block = {m: out[i * n:(i + 1) * n] for m, out in outs.items()}
                ident = dict(pair=pair.name, d=pair.d, beta=pair.beta, schedule=schedule, sampler=sampler)
                run = dict(n=n, n_batches=config.n_batches, steps=steps, init=config.init, seed=config.seed)
                for r in _evaluate(pair, w, block, refs[0], refs[1], af, sf, config):
                    rows.append(dict(ident, **r, **run, particles=1, network_rows=_plain_rows(r["method"], w, steps)))
                for K, res in fkc.get(w, {}).items():
                    diag = dict(particles=K, network_rows=2 * K * steps, ess_final=float(res.ess[-1].mean()) / K,
                                ess_min=float(res.ess.min()) / K,
                                resamples=float(res.resampled.sum(0).double().mean()))
                    for r in _evaluate(pair, w, {"rlg_fkc": res.samples}, refs[0], refs[1], af, sf, config):
                        rows.append(dict(ident, **r, **run, **diag))
                for K, res in fks.get(w, {}).items():
                    diag = dict(particles=K, network_rows=K * steps,
                                ess_min=float(res.ess.min()) / K if res.ess.numel() else float("nan"),
                                ess_final=float(effective_sample_size(res.log_weights).mean()) / K,
                                resamples=float(res.ess.shape[0]))
                    for r in _evaluate(pair, w, {"fk_steering": res.samples}, refs[0], refs[1], af, sf, config):
                        rows.append(dict(ident, **r, **run, **diag))
    return pd.DataFrame(rows)


def _run_fk_steering(pair, config, sampler, scheduler, base, scales, a0, s0, step_kwargs, bar) -> dict:
    """{w: {K: FKCResult}} of FK steering from the base model (lam = w / beta) for every K of
    ``config.fks_particles`` and every scale but 0; initial particles from the base's own initial law (its exact
    noised marginal for ``init="marginal"``, else N(0, I))."""
    n, steps = config.n_per_batch * config.n_batches, config.num_inference_steps
    out: dict = {}
    for K in config.fks_particles:
        for w in scales:
            if w == 0.0:
                continue
            fk = FKSteeringConfig(K, config.fks_potential, w / pair.beta, config.fks_interval)
            bar.set_postfix_str(f"{sampler} fk_steering K={K} w={w:g}")
            g = _generator(config.seed, pair.name, sampler, "fk_steering", K, w)
            eps = torch.randn(n * K, pair.d, generator=g, dtype=torch.float64)
            latents = a0 * pair.base.sample(n * K, g) + s0 * eps if config.init == "marginal" else eps
            out.setdefault(w, {})[K] = fk_steering_sample_loop(base, scheduler, latents, pair.reward, steps, fk,
                                                               generator=g, **step_kwargs)
    return out


def _plain_rows(method: str, w: float, steps: int) -> int:
    """Network rows per output sample of a plain run: RLGDenoiser runs one model at w in {0, 1}, else two."""
    return steps * (1 if method != "rlg" or w in (0.0, 1.0) else 2)


def _run_fkc(pair, config, sampler, scheduler, base, rl, scales, a0, s0, step_kwargs, bar) -> dict:
    """{w: {K: FKCResult}} for every K of ``config.fkc_particles`` and every scale but 0 and 1; initial particles
    from the same law as the plain runs' latents (``config.init``), drawn from a stream of their own."""
    n, steps = config.n_per_batch * config.n_batches, config.num_inference_steps
    out: dict = {}
    for K in config.fkc_particles:
        fk = FKCConfig(K, config.fkc_resample, config.fkc_ess_threshold)
        for w in scales:
            if w in (0.0, 1.0):
                continue
            bar.set_postfix_str(f"{sampler} rlg_fkc K={K} w={w:g}")
            g = _generator(config.seed, pair.name, sampler, "fkc", K, w)
            eps = torch.randn(n * K, pair.d, generator=g, dtype=torch.float64)
            latents = a0 * pair.exact_samples(w, n * K, g) + s0 * eps if config.init == "marginal" else eps
            out.setdefault(w, {})[K] = fkc_sample_loop(base, rl, scheduler, latents, w, steps, fk, generator=g,
                                                       **step_kwargs)
    return out

