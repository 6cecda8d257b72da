"""RLG with Feynman-Kac correctors on the learned ground truth: does FKC close RLG's gap to the beta/w optimum
when the two scores are networks?

The setting is ``rlg.kl_learned``'s (MLP epsilon denoisers on the analytic two-mode mixture, SD1.5's DDPM
schedule, DDIM eta ``eta``, the same initial-latent law and reference samples per w); only the RWR retraining
objective is trained (its population optimum is exactly p_ref exp(R / b), and it reaches it: ``docs/kl_claim.md``).
Per training seed s: base_s, tuned_s(beta) (the RL model RLG and FKC start from) and tuned_s(beta / w) (the
retrained arm, "the RWR optimum"). Arms at each w:

* ``exact`` (the exact score of the w target), ``rlg_exact`` and ``fkc_exact`` (RLG and RLG-FKC over the exact
  base and beta optimum): the mixing rule's own gap, and what FKC leaves of it, without network error;
* per seed: ``retrained`` (tuned_s(beta / w) alone), ``rlg`` (RLG over base_s and tuned_s(beta)), ``fkc`` (RLG-FKC
  over the same two networks, K particles per sample, ``rlg.fkc``).

``decompose_fkc`` gives, per w and K, the reward gaps to the RWR optimum, rlg - retrained and fkc - retrained,
paired over training seeds (t interval, df = seeds - 1, ``rlg.kl_stats.paired``), beside the exact-score gaps
(normal intervals over samples) and the energy distances to exact samples of the w target (mean over seeds).
Runs in one process; ``threads`` torch threads (default 1).

    python -m rlg.fkc_learned --particles 8 32 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import math
import time

import pandas as pd
import torch

from rlg.analytic import initial_alpha_sigma
from rlg.analytic_metrics import batched, energy_distance
from rlg.fkc import FKCConfig, fkc_sample_loop
from rlg.kl_learned import LearnedTruthConfig, _exact, _pair, _rlg, _scheduler, _Setting, fine_tune, train_base
from rlg.kl_stats import normal_interval

__all__ = ["run_learned_fkc", "decompose_fkc"]


def _fkc_arm(at: _Setting, name: str, base, rl, fk: FKCConfig, seed=math.nan) -> None:
    """Append the row of RLG-FKC over (``base``, ``rl``) at ``at``'s w: initial particles from the same law as the
    other arms' latents (the exact noised marginal of the w target), from a stream of their own per K."""
    config, pair, n, K = at.config, at.pair, at.config.n_samples, fk.particles
    scheduler = _scheduler()
    a0, s0 = initial_alpha_sigma(scheduler, config.num_inference_steps)
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + int(round(1000 * at.w)) + 7919 * K)
    lat = a0 * pair.exact_samples(at.w, n * K, g) + s0 * torch.randn(n * K, pair.d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        res = fkc_sample_loop(base, rl, scheduler, lat, at.w, config.num_inference_steps, fk, generator=g,
                              eta=config.eta)
    x = res.samples.double()
    r = pair.reward(x)
    e, ese = batched(energy_distance, list(torch.chunk(x, config.n_batches)), at.ref_b)
    at.rows.append(dict(arm=name, objective="rwr", w=at.w, beta_eff=at.b, seed=seed, particles=K,
                        reward=float(r.mean()), reward_stderr=float(r.std() / math.sqrt(n)),
                        exact_reward=at.exact_reward, energy=e, energy_stderr=ese, energy_floor=at.floor,
                        energy_floor_stderr=at.floor_se, path_kl=math.nan, path_kl_stderr=math.nan, n=n,
                        steps=config.num_inference_steps, eta=config.eta, pair=pair.name, d=pair.d, beta=config.beta,
                        ess_final=float(res.ess[-1].mean()) / K, ess_min=float(res.ess.min()) / K,
                        resamples=float(res.resampled.sum(0).double().mean()),
                        network_rows=res.network_rows // n))


def run_learned_fkc(config: LearnedTruthConfig, particles=(8, 32), resample: str = "ess", log=print) -> pd.DataFrame:
    """Train base_s and the RWR fine-tunes per seed, sample every arm (module docstring) at every w != 1; tidy rows
    as ``rlg.kl_learned.run_learned_truth``'s (arm, w, seed, particles, reward, reward_stderr, exact_reward, energy,
    energy_stderr, energy_floor, ...; FKC rows add ess_final, ess_min, resamples, network_rows per sample);
    ``df.attrs`` holds seconds and cpu_seconds. Raises ValueError for bad particle counts or resample."""
    from rlg.runtime import torch_threads

    fks = [FKCConfig(int(k), resample) for k in particles]
    scales = [float(w) for w in config.scales if float(w) != 1.0]
    if not scales:
        raise ValueError("fkc on the learned ground truth needs a scale w != 1 (at w = 1 the weights are 0)")
    t0, cpu0 = time.time(), time.process_time()
    with torch_threads(config.threads):
        pair = _pair(config)
        scheduler = _scheduler()
        ex_base, ex_rl = _exact(pair.base, scheduler), _exact(pair.target(1.0), scheduler)
        settings = {w: _Setting(pair, config, w) for w in scales}
        for w, at in settings.items():
            r_exact = at.arm("exact", _exact(pair.target(w), scheduler), ex_base)
            d = at.arm("rlg_exact", _rlg(ex_base, ex_rl, w, config.n_samples, config.num_inference_steps),
                       ex_base) - r_exact  # the same noise: a paired gap, as rlg.kl_learned reports it
            at.rows[-1].update(paired_gap=float(d.mean()), paired_gap_stderr=float(d.std() / math.sqrt(d.numel())))
            for fk in fks:
                _fkc_arm(at, "fkc_exact", ex_base, ex_rl, fk)
            if config.progress:
                log(f"fkc_learned: exact arms at w={w:g}, {time.time() - t0:.0f} s")
        for s in config.seeds:
            base, _ = train_base(pair, s, config)
            src, _ = fine_tune(base, pair, config.beta, s, config, "rwr")
            for w, at in settings.items():
                tuned, _ = fine_tune(base, pair, config.beta / w, s, config, "rwr")
                at.arm("retrained", tuned, base, s, "rwr")
                at.arm("rlg", _rlg(base, src, w, config.n_samples, config.num_inference_steps), base, s, "rwr")
                for fk in fks:
                    _fkc_arm(at, "fkc", base, src, fk, s)
            if config.progress:
                log(f"fkc_learned: seed {s} done, {time.time() - t0:.0f} s")
    df = pd.DataFrame([r for at in settings.values() for r in at.rows])
    df["particles"] = df["particles"].fillna(1).astype(int) if "particles" in df else 1
    df.attrs.update(seconds=round(time.time() - t0, 1), cpu_seconds=round(time.process_time() - cpu0, 1),
                    resample=resample)
    return df


def decompose_fkc(df: pd.DataFrame) -> pd.DataFrame:
    """Per w and particle count K: ``rlg_vs_retrained`` and ``fkc_vs_retrained`` (mean reward minus the RWR
    optimum's, paired over training seeds, 95% t interval: estimate, _lo, _hi, _p), ``rlg_gap_exact`` and
    ``fkc_gap_exact`` (exact-score RLG / RLG-FKC minus the exact score, se over samples, normal interval),
    ``exact_reward`` (closed form), the mean energy distances of retrained, rlg and fkc over seeds (and of the
    exact arms) with the exact-vs-exact floor, and FKC's mean final ESS / K."""
    from rlg.kl_stats import paired

    out = []
    for w, at in df.groupby("w"):
        def one(arm, K=1):
            return at[(at.arm == arm) & (at.particles == K)]

        ret = one("retrained").sort_values("seed")
        rlg = one("rlg").sort_values("seed")
        ex, rex = one("exact").iloc[0], one("rlg_exact").iloc[0]
        for K in sorted(set(at[at.arm == "fkc"].particles)):
            fk, fex = one("fkc", K).sort_values("seed"), one("fkc_exact", K).iloc[0]
            row = dict(w=w, particles=K, beta_eff=float(ex.beta_eff), exact_reward=float(ex.exact_reward),
                       exact_score_reward=float(ex.reward), seeds=len(ret))
            for name, a in (("rlg_vs_retrained", rlg), ("fkc_vs_retrained", fk)):
                t = paired(a.reward.to_numpy(), ret.reward.to_numpy())
                row.update({name: t.estimate, f"{name}_lo": t.lo, f"{name}_hi": t.hi, f"{name}_p": t.p})
            for name, a in (("rlg_gap_exact", rex), ("fkc_gap_exact", fex)):
                d = float(a.reward - ex.reward)
                se = math.sqrt(float(a.reward_stderr) ** 2 + float(ex.reward_stderr) ** 2) if name == "fkc_gap_exact" \
                    else float(a.paired_gap_stderr)  # rlg_exact shares exact's noise: paired se
                row.update(dict(zip((name, f"{name}_lo", f"{name}_hi"), (d, *normal_interval(d, se)))))
            row.update(energy_retrained=float(ret.energy.mean()), energy_rlg=float(rlg.energy.mean()),
                       energy_fkc=float(fk.energy.mean()), energy_fkc_se=float(fk.energy.std() / math.sqrt(len(fk))),
                       energy_exact=float(ex.energy), energy_rlg_exact=float(rex.energy),
                       energy_fkc_exact=float(fex.energy), energy_fkc_exact_se=float(fex.energy_stderr),
                       energy_floor=float(ex.energy_floor), energy_floor_se=float(ex.energy_floor_stderr),
                       ess_final=float(fk.ess_final.mean()), ess_final_exact=float(fex.ess_final))
            out.append(row)
    return pd.DataFrame(out)


def _main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--particles", type=int, nargs="+", default=[8, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 2.0, 3.0])
    p.add_argument("--resample", default="ess")
    p.add_argument("--out", default=None, help="write the rows (pickle) here")
    a = p.parse_args(argv)
    cfg = LearnedTruthConfig(scales=a.scales, seeds=a.seeds, objectives=["rwr"])
    df = run_learned_fkc(cfg, a.particles, a.resample)
    if a.out:
        df.to_pickle(a.out)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(decompose_fkc(df).round(4).to_string())
    print(f"wall {df.attrs['seconds']} s, cpu {df.attrs['cpu_seconds']} s")


if __name__ == "__main__":
    _main()
