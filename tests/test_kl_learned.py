"""The learned-model ground truth of the KL claim (rlg.kl_learned, rlg.report.kl_learned); its statistics over
training seeds: tests/test_kl_stats.py. Reduced sizes: seconds, not the science."""

from __future__ import annotations

import pytest
import torch


# Module fixtures build shared runs once per process: under pytest-xdist this file stays on one worker.
pytestmark = pytest.mark.xdist_group("test_kl_learned")


# -- rlg.kl_learned ---------------------------------------------------------------------------------
def test_path_kl_matches_the_gaussian_kl_of_one_ddim_step():
    """The per-step KL of _PathKL equals |mean_model - mean_base|^2 / (2 sigma^2) of DDIMScheduler.step's own
    means (computed with zero step noise), an independent path through diffusers."""
    from rlg.kl_learned import LearnedTruthConfig, MLPDenoiser, _PathKL, _scheduler

    torch.manual_seed(0)
    model, base = MLPDenoiser(2, 16, 1), MLPDenoiser(2, 16, 1)
    cfg = LearnedTruthConfig(num_inference_steps=10, eta=1.0, seeds=[0, 1])
    s = _scheduler()
    s.set_timesteps(10)
    x = torch.randn(5, 2)
    for t in (s.timesteps[0], s.timesteps[5], s.timesteps[-1]):
        den = _PathKL(model, base, s, 10, 1.0, 5)
        with torch.no_grad():
            den(x, t.expand(5), return_dict=False)
            zero = torch.zeros(5, 2)
            m1 = s.step(model(x, t, return_dict=False)[0], t, x, eta=1.0, variance_noise=zero).prev_sample
            m0 = s.step(base(x, t, return_dict=False)[0], t, x, eta=1.0, variance_noise=zero).prev_sample
        prev = int(t) - 100
        abar, abar_prev = s.alphas_cumprod[int(t)], (s.alphas_cumprod[prev] if prev >= 0 else s.final_alpha_cumprod)
        var = float((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        ref = ((m1 - m0).double() ** 2).sum(1) / (2 * var)
        assert torch.allclose(den.kl, ref, rtol=1e-4, atol=1e-9), (int(t), den.kl, ref)
    assert cfg.eta == 1.0


def test_weight_extrapolation_is_affine_in_w():
    from rlg.kl_learned import MLPDenoiser, weight_extrapolation

    torch.manual_seed(1)
    base, tuned = MLPDenoiser(2, 8, 1), MLPDenoiser(2, 8, 1)
    for w, expect in [(0.0, lambda b, t: b), (1.0, lambda b, t: t), (2.5, lambda b, t: b + 2.5 * (t - b))]:
        out = weight_extrapolation(base, tuned, w)
        for p, pb, pt in zip(out.parameters(), base.parameters(), tuned.parameters()):
            assert torch.allclose(p, expect(pb, pt), atol=1e-6)


LEARNED = ["experiment=kl_ground_truth_learned", "kl_learned.seeds=[0,1]", "kl_learned.scales=[0.5,1.0,2.0]",
           "kl_learned.base_steps=150", "kl_learned.tune_steps=80", "kl_learned.hidden=64", "kl_learned.depth=2",
           "kl_learned.n_samples=400", "kl_learned.num_inference_steps=10", "kl_learned.pg_steps=8",
           "kl_learned.pg_batch=32", "kl_learned.dpo_steps=20", "kl_learned.dpo_pairs=64"]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """The kl_ground_truth_learned preset through the harness, reduced to seconds."""
    from hydra import compose, initialize_config_dir

    from rlg.harness import runner
    from rlg.store import Store
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "rlg" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=LEARNED)
    run_dir = tmp_path_factory.mktemp("kl") / "learned"
    entry = runner.run(cfg, run_dir=run_dir)
    return entry, Store(run_dir).read_table("kl_learned"), run_dir


def test_learned_preset_runs_and_rlg_at_w1_is_the_beta_model(learned_run):
    entry, df, run_dir = learned_run
    assert entry["kind"] == "kl_learned"
    assert set(df.arm) == {"exact", "rlg_exact", "oracle", "retrained", "rlg", "weights"}
    assert set(df.objective) == {"", "rwr", "pg", "dpo"}
    assert len(df) == 3 * (2 + 2 * (1 + 3 * 3))  # per w: 2 exact arms; per seed: oracle + 3 arms per objective
    at1 = df[df.w == 1.0].set_index(["objective", "arm", "seed"]).reward
    for obj in ("rwr", "pg", "dpo"):
        for s in (0.0, 1.0):  # RLG at w = 1 runs the RL model alone; w = 1 weight extrapolation is the RL net
            assert at1[(obj, "rlg", s)] == at1[(obj, "retrained", s)]
            assert at1[(obj, "weights", s)] == pytest.approx(at1[(obj, "retrained", s)], abs=1e-6)
    assert df[(df.w == 1.0) & (df.arm == "rlg_exact")].reward.iloc[0] == df[(df.w == 1.0) & (df.arm == "exact")
                                                                           ].reward.iloc[0]
    # retraining responds to beta: a lower KL coefficient gives a higher reward, for every seed
    r = df[(df.arm == "retrained") & (df.objective == "rwr")].pivot(index="seed", columns="w", values="reward")
    assert (r[2.0] > r[1.0]).all() and (r[1.0] > r[0.5]).all()
    report = (run_dir / "report" / "index.md").read_text()
    assert report.startswith("# Does the RLG scale act as the KL coefficient? Learned-model ground truth")
    assert "<h1>Does the RLG scale act as the KL coefficient?" in (run_dir / "report" / "index.html").read_text()
    assert "| rwr | 1 | 1 | holds |" in report and "| dpo | 1 | 1 | holds |" in report and "RLG's own gap" in report
    assert (run_dir / "report" / "figures" / "kl_learned_frontier.png").is_file()


def test_the_errors_add_up_and_exact_rlg_is_exact_on_the_gaussian_linear_pair(learned_run):
    """retrained - exact score = network + fine-tuning (per seed, hence for the means); and RLG with exact scores is
    exact on gaussian_linear (the known case: the mixed prediction is the score of the beta/w optimum)."""
    from rlg.kl_learned import LearnedTruthConfig, run_learned_truth
    from rlg.kl_stats import decompose

    _, df, _ = learned_run
    dec = decompose(df)
    assert sorted(set(dec.objective)) == ["dpo", "pg", "rwr"] and len(dec) == 9
    for r in dec.itertuples():
        ret = df[(df.w == r.w) & (df.arm == "retrained") & (df.objective == r.objective)].reward.mean()
        assert ret - r.exact_score_reward == pytest.approx(r.network + r.fine_tuning, abs=1e-12)
        assert r.rlg_vs_retrained_lo <= r.rlg_vs_retrained <= r.rlg_vs_retrained_hi or r.w == 1.0
    lin = run_learned_truth(LearnedTruthConfig(pair="gaussian_linear", seeds=[0, 1], scales=[2.0], base_steps=5,
                                               tune_steps=2, hidden=8, depth=1, n_samples=64, num_inference_steps=5,
                                               objectives=["rwr"], progress=False))
    g = lin[lin.arm.isin(["exact", "rlg_exact"])].set_index("arm").reward
    assert g["rlg_exact"] == pytest.approx(g["exact"], abs=1e-9)


def test_stage_report_rewrites_the_report_from_the_stored_rows_without_training(learned_run, monkeypatch, capsys):
    """The report of stage=report is the report of the run, byte for byte: the rows, their order and dtypes, and
    ``df.attrs`` (the training curves of the kl_learned_training figure, the wall time the page states) come back
    from the store; run_learned_truth is never called; the console shows the verdict table, not the whole page."""
    import shutil
    import sys
    from pathlib import Path

    from rlg.harness import runner
    from rlg.harness.api import compose
    from rlg.store import Store

    sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
    from store_digest import hash_run

    first, stored, run_dir = learned_run
    kept = run_dir.parent / "report-of-stage-all"
    shutil.copytree(run_dir / "report", kept)
    assert stored.attrs["curves"] and stored.attrs["seconds"] == first["report"]["seconds"]

    def refuse(*_, **__):
        raise AssertionError("stage=report trained again")

    monkeypatch.setattr("rlg.kl_learned.run_learned_truth", refuse)
    capsys.readouterr()
    again = runner.run(compose(*LEARNED, "stage=report"), run_dir=run_dir)
    assert hash_run(run_dir / "report") == hash_run(kept)
    assert again["report"]["seconds"] == first["report"]["seconds"] and again["report"]["rows"] == len(stored)
    assert len(list((run_dir / "rows" / "kl_learned").glob("*.parquet"))) == 1
    verdict = (run_dir / "report" / "tables" / "kl_learned_verdict.md").read_text()
    assert capsys.readouterr().out == f"{verdict}\nReport: {again['report']['index']}\n"
    assert Store(run_dir).last_table("kl_learned").attrs == stored.attrs


def test_bad_settings_fail_with_their_name(compose):
    from rlg.harness import build
    from rlg.harness.config import ConfigError

    with pytest.raises(ConfigError, match="kl_learned: seeds needs >= 2"):
        build.build(compose("experiment=kl_ground_truth_learned", "kl_learned.seeds=[0]"))
    with pytest.raises(ConfigError, match="kl_learned: eta must be > 0"):
        build.build(compose("experiment=kl_ground_truth_learned", "kl_learned.eta=0"))
    with pytest.raises(ConfigError, match=r"kl_learned: objectives must be a non-empty subset of \['rwr', 'pg'"):
        build.build(compose("experiment=kl_ground_truth_learned", "kl_learned.objectives=[rwr,ppo]"))


def test_the_preset_is_the_config_of_the_shipped_numbers():
    """docs/kl_claim.md's numbers come from LearnedTruthConfig() (seed 0): the preset must build exactly that."""
    from rlg.harness.api import job
    from rlg.kl_learned import LearnedTruthConfig

    assert job("experiment=kl_ground_truth_learned").settings == LearnedTruthConfig()
