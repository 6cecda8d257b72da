"""The findings (rlg.report.findings, rlg.harness.findings): claims decided on constructed data with known answers,
the two-way cluster bootstrap against the report's own prompt-clustered bootstrap, the methods comparison in words,
and ``experiment=findings_zoo`` end to end on a reduced setting (one pair, two seeds, seconds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rlg.report.findings import ClusterBootstrap, findings_table, pair_claims
from rlg.report.methods_words import methods_in_words

COST = {"rlg": {0.0: 2, 0.5: 4, 1.0: 2, 2.0: 4}, "weight_mix": {0.0: 2, 0.5: 2, 1.0: 2, 2.0: 2},
        "cfg_rl": {1.0: 1, 7.5: 2}, "best_of_n": {1.0: 2, 2.0: 4}, "rlg_fkc": {2.0: 8},
        "fk_steering": {2.0: 4, 4.0: 8}}


def _frame(seeds=(0, 1, 2), prompts=10, samples=2, noise=0.01, seed=0, particles=False) -> pd.DataFrame:
    """A pair with known answers. Reward r (higher is better): RLG r = w; weight mixing r = min(w, 1) (it
    saturates); CFG leaves it at 1; best-of-N reaches 1.2. Held-out h (lower is better): w^2 for RLG and weight
    mixing alike (the same knob), 0.5 for best-of-N. Held-out g (higher is better): best-of-N far worse. Each
    prompt shifts h and g by its own offset (sd 1, shared by every arm: the base's spread the margins scale with)."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0, 1, prompts)
    rows = []
    for s in seeds:
        for p in range(prompts):
            for j in range(samples):
                def add(method, knob, r, h, g):
                    e = rng.normal(0, noise, 3)
                    rows.append(dict(seed=s, prompt_id=f"p{p}", sample=j, method=method, knob=knob,
                                     cost=COST[method][knob], r=r + e[0], h=h + offset[p] + e[1],
                                     g=g + offset[p] + e[2]))
                for w in (0.0, 0.5, 1.0, 2.0):
                    add("rlg", w, w, w * w, 1.0)
                    add("weight_mix", w, min(w, 1.0), min(w, 1.0) ** 2, 1.0)
                for k in (1.0, 7.5):
                    add("cfg_rl", k, 1.0, 1.0, 1.0)
                add("best_of_n", 1.0, 1.0, 1.0, 1.0)
                add("best_of_n", 2.0, 1.2, 0.5, -5.0)
                if particles:  # RLG-FKC K = 2 at w = 2 (2 x RLG's rows), FK steering K = 2 (RLG's), K = 4 (RLG-FKC's)
                    add("rlg_fkc", 2.0, 2.5, 3.0, 1.0)
                    add("fk_steering", 2.0, 3.0, 4.5, 0.0)
                    add("fk_steering", 4.0, 3.5, 2.0, 2.0)
    return pd.DataFrame(rows)


HIGHER = {"r": True, "h": False, "g": True}


def test_claims_on_constructed_data():
    t = findings_table([("toy", _frame(), HIGHER, "r")], n_resamples=4000).set_index(["claim", "metric", "comparison"]).sort_index()
    v = t["verdict"]
    assert v.loc["interpolates", "r"].item() == "holds"  # steps 0.5 and 0.5 toward the RL model
    assert t.loc["interpolates", "r"]["estimate"].item() == pytest.approx(0.5, abs=0.01)
    assert v.loc["extrapolates", "r"].item() == "holds"
    assert t.loc["extrapolates", "r"]["estimate"].item() == pytest.approx(1.0, abs=0.01)
    assert v.loc["beyond weight mixing", "r"].item() == "holds"  # RLG 2 against weight mixing's best, 1
    same = t.loc["same as weight mixing", "h"]
    assert same.index.str.contains(r"RLG w = 0.5 vs weight mixing w' = 0.(?:49|50)").all() and (same["verdict"] == "holds").all()
    base_sd = _frame().query("method == 'rlg' and knob == 0")["h"].std(ddof=1)
    assert same["margin"].item() == pytest.approx(0.2 * base_sd)
    assert (same["cost_ratio"] == 2).all() and (same["test"] == "equivalence").all()
    bon = t.loc["best-of-N at equal cost"]
    assert bon.loc["r", "verdict"].item() == "no verdict (circular)" and np.isnan(bon.loc["r", "p_holm"].item())
    assert bon.loc["h", "verdict"].item() == "holds"  # 0.5 against RLG 2's 4, lower is better
    assert bon.loc["h", "estimate"].item() == pytest.approx(3.5, abs=0.01)  # signed: > 0 favours best-of-N
    assert bon.loc["g", "verdict"].item() == "does not hold"  # -5 against 1: RLG is better
    cfg = t.loc["CFG leaves the reward", "r"]
    assert cfg["verdict"].item() == "holds" and cfg["margin"].item() == pytest.approx(0.25, abs=0.01)  # 1/4 of gain 1
    # one family: Holm over every tested row (the circular row left out)
    tested = t[t["p"].notna()]
    order = np.argsort(tested["p"].to_numpy())
    assert tested["p_holm"].to_numpy()[order[0]] == pytest.approx(min(1, len(tested) * tested["p"].to_numpy()[order[0]]))


def test_rlg_fkc_and_fk_steering_rows_at_matched_network_cost():
    t = findings_table([("toy", _frame(particles=True), HIGHER, "r")], n_resamples=4000)
    t = t.set_index(["claim", "metric", "comparison"]).sort_index()
    fkc = t.loc["RLG-FKC vs RLG"]
    assert list(fkc.index.get_level_values("comparison").unique()) == ["RLG-FKC (K = 2) vs RLG, w = 2"]
    assert fkc.loc["r", "estimate"].item() == pytest.approx(0.5, abs=0.01) and fkc.loc["r", "verdict"].item() == "holds"
    assert fkc.loc["h", "estimate"].item() == pytest.approx(1.0, abs=0.01)  # 3 against 4, lower is better
    assert fkc.loc["g", "verdict"].item() == "undecided" and (fkc["cost_ratio"] == 2).all()
    fks = t.loc["FK steering at equal cost"]
    vs_rlg = "FK steering K = 2 vs RLG w = 2 (4 rows per image each)"
    vs_fkc = "FK steering K = 4 vs RLG-FKC (K = 2) w = 2 (8 rows per image each)"
    assert sorted(fks.index.get_level_values("comparison").unique()) == [vs_rlg, vs_fkc]
    assert (fks.loc["r", "verdict"] == "no verdict (circular)").all()  # the steering maximised the reward
    assert fks.loc[("h", vs_rlg), "estimate"] == pytest.approx(-0.5, abs=0.01)  # 4.5 against 4: RLG better
    assert fks.loc[("g", vs_rlg), "verdict"] == "does not hold"
    assert fks.loc[("h", vs_fkc), "estimate"] == pytest.approx(1.0, abs=0.01)  # 2 against 3
    assert fks.loc[("g", vs_fkc), "verdict"] == "holds" and (fks["cost_ratio"] == 1).all()
    assert (t.loc["best-of-N at equal cost"].index.get_level_values("comparison") ==
            "best-of-2 vs RLG w = 2 (4 rows per image each)").all()  # no best-of-N at RLG-FKC's 8 rows here


def test_intervals_widen_with_noise_and_count_seeds_and_images():
    width = {}
    for noise in (0.01, 1.0):
        t = findings_table([("toy", _frame(seeds=(0,), prompts=6, samples=2, noise=noise), HIGHER, "r")],
                           n_resamples=2000).set_index("claim")
        assert (t["seeds"] == 1).all() and t.loc["extrapolates", "n"] == 12
        row = t.loc["extrapolates"]
        assert row["lo"] <= row["estimate"] <= row["hi"]
        width[noise] = row["hi"] - row["lo"]
    assert width[1.0] > 20 * width[0.01]


def test_cluster_bootstrap_matches_the_report_bootstrap_with_one_seed():
    """With one seed the two-way bootstrap is the prompt-clustered one of rlg.report.stats.bootstrap_ci (the
    report's own, written independently): the paired mean and its 95% interval agree."""
    from rlg.report.stats import bootstrap_ci

    f = _frame(seeds=(0,), prompts=12, samples=3, noise=0.3, seed=3)
    a = f[(f.method == "rlg") & (f.knob == 2.0)].set_index(["seed", "prompt_id", "sample"])["r"]
    b = f[(f.method == "rlg") & (f.knob == 1.0)].set_index(["seed", "prompt_id", "sample"])["r"]
    boot = ClusterBootstrap(a.index, 20000, seed=1)
    est, reps, n = boot.mean(a - b)
    assert est == pytest.approx((a - b).mean()) and n == 36
    lo, hi = np.percentile(reps, [2.5, 97.5])
    tidy = f[f.method == "rlg"].assign(metric="r", value=f["r"], status="ok", scale=f["knob"], run_name="",
                                       pair="", run_id="", config_id="")
    ref = bootstrap_ci(tidy, "r", n_resamples=20000, seed=2, reference_scale=1.0).set_index("scale").loc[2.0]
    assert ref["delta"] == pytest.approx(est)
    width = ref["delta_hi"] - ref["delta_lo"]
    assert lo == pytest.approx(ref["delta_lo"], abs=0.05 * width) and hi == pytest.approx(ref["delta_hi"], abs=0.05 * width)


def test_an_unscored_reward_is_refused():
    with pytest.raises(ValueError, match="its reward 'missing' is not scored"):
        pair_claims("toy", _frame(seeds=(0,), prompts=2, samples=1), HIGHER, "missing", n_resamples=200)


def test_methods_in_words_gives_the_cost_front_and_leaves_out_circular_values():
    summary = pd.DataFrame([
        dict(method="rlg", knob=2.0, metric="r", higher_is_better=True, mean=2.0, lo=1.9, hi=2.1, cost=80, circular=False),
        dict(method="best_of_n", knob=2.0, metric="r", higher_is_better=True, mean=3.0, lo=2.9, hi=3.1, cost=80,
             circular=True),
        dict(method="weight_mix", knob=2.0, metric="r", higher_is_better=True, mean=1.0, lo=0.9, hi=1.1, cost=40,
             circular=False),
        dict(method="rlg", knob=2.0, metric="h", higher_is_better=False, mean=4.0, lo=3.8, hi=4.2, cost=80,
             circular=False),
        dict(method="best_of_n", knob=2.0, metric="h", higher_is_better=False, mean=0.5, lo=0.4, hi=0.6, cost=80,
             circular=False)])
    lines = methods_in_words(summary, "r")
    assert lines[0] == ("r (reward, higher is better), the best point within each cost (rows per image): 40 rows: "
                        "weight_mix 2 (1 [0.9, 1.1]); 80 rows: rlg 2 (2 [1.9, 2.1]) (best overall).")  # best-of-N's 3: circular
    assert lines[1] == ("h (held-out, lower is better), the best point within each cost (rows per image): 80 rows: "
                        "best_of_n 2 (0.5 [0.4, 0.6]) (best overall).")


# -- experiment=findings_zoo end to end, reduced ------------------------------------------------------
REDUCED = ["experiment=findings_zoo", "findings.pairs=[zoo_compress_ddpo]", "findings.seeds=[0,1]",
           "findings.n_resamples=500", "findings.sub_reports=false", "prompts.max_prompts=2",
           "prompts.samples_per_prompt=1", "sampler.num_inference_steps=2", "grid.scales=[0,0.5,1,2]",
           "method.cfg_rl.knobs=[1,2]", "method.best_of_n.knobs=[1,2]", "evaluators.selected=[jpeg,digit_prob]"]


@pytest.mark.slow  # two sub-runs of a real zoo pair: about a minute of CPU (model loading and the plan's checks)
def test_findings_zoo_runs_and_reports(tmp_path):
    from rlg.harness.api import compose
    from rlg.harness.runner import run
    from rlg.store import Store

    over = REDUCED + [f"paths.root={tmp_path}"]
    run(compose(*over), run_dir=tmp_path / "f", overrides=over)
    subs = sorted(p.name for p in (tmp_path / "f" / "runs").iterdir())
    assert subs == ["zoo_compress_ddpo-seed0", "zoo_compress_ddpo-seed1"]
    n = {s: len(Store(tmp_path / "f" / "runs" / s).images()) for s in subs}
    # 2 prompts x (4 RLG + 4 weight-mix + 2 CFG + 2 candidates + RLG-FKC at w = 2 + FK steering K = 2, 4)
    assert n == {s: 2 * (4 + 4 + 2 + 2 + 1 + 2) for s in subs}
    table = pd.read_csv(tmp_path / "f" / "report" / "tables" / "findings.csv")
    assert set(table["pair"]) == {"zoo_compress_ddpo"} and (table["seeds"] == 2).all()
    assert {"interpolates", "extrapolates", "best-of-N at equal cost", "CFG leaves the reward", "RLG-FKC vs RLG",
            "FK steering at equal cost"} <= set(table["claim"])
    index = (tmp_path / "f" / "report" / "index.md").read_text()
    assert index.index("## Findings") < index.index("## Runs") and "Verdict rule (rlg.verdicts)" in index
    assert "±" in (tmp_path / "f" / "report" / "index.html").read_text()  # the margin beside each verdict


def test_a_pair_without_a_reward_is_refused_before_any_work(tmp_path):
    from rlg.harness.api import compose
    from rlg.harness.config import ConfigError
    from rlg.harness.runner import run

    over = REDUCED + ["findings.pairs=[tiny]", f"paths.root={tmp_path}"]
    with pytest.raises(ConfigError, match="experiment=tiny sets no report.reward"):
        run(compose(*over), run_dir=tmp_path / "f", overrides=over)
    assert not (tmp_path / "f").exists()


def test_a_derived_reward_is_refused_before_any_work(tmp_path):
    """GenEval overall is a mean over tags the report derives: the findings pair images, so the plan refuses it
    (the findings run once failed on it after generating every image) and names the per-image metric."""
    from rlg.harness.api import compose
    from rlg.harness.config import ConfigError
    from rlg.harness.runner import run

    over = ["experiment=findings_zoo", 'findings.pairs=["zoo_geneval_flowgrpo method=[rlg]"]', "findings.seeds=[0]",
            "prompts.max_prompts=2", "prompts.samples_per_prompt=1", "sampler.num_inference_steps=2",
            f"paths.root={tmp_path}"]
    with pytest.raises(ConfigError, match=r"^findings pair zoo_geneval_flowgrpo: its reward geneval_overall is a set "
                                          r"metric the report derives.*e\.g\. geneval_correct for GenEval\)$"):
        run(compose(*over), run_dir=tmp_path / "f", overrides=over)
    assert not (tmp_path / "f").exists()


def test_methods_figure_knob_labels_do_not_overlap(monkeypatch, tmp_path):
    """Methods that share a point (w = 0 and 1 of RLG and weight mixing, the RL model at its own CFG scale) and
    points close together (a saturated weight mixing): every knob label's box is clear of every other's."""
    from matplotlib.text import Annotation

    from rlg.report import figures, methods

    pts = [("rlg", 0, 1.0, 0.30), ("rlg", 1, 1.5, 0.20), ("rlg", 2, 2.0, 0.10), ("weight_mix", 0, 1.0, 0.30),
           ("weight_mix", 1, 1.5, 0.20), ("weight_mix", 2, 1.70, 0.15), ("weight_mix", 3, 1.701, 0.149),
           ("cfg_rl", 2, 1.5, 0.20), ("cfg_rl", 5, 1.5, 0.45), ("best_of_n", 2, 1.5, 0.21)]
    rows = [dict(method=m, knob=float(k), metric=metric, higher_is_better=True, mean=v, lo=v, hi=v, n=40,
                 cost=40.0, wall_s=0.0, circular=False)
            for m, k, r, q in pts for metric, v in (("reward", r), ("quality", q))]
    captured = []
    monkeypatch.setattr(figures, "save", lambda fig, stem, formats: captured.append(fig) or [])
    methods.plot_methods(pd.DataFrame(rows), "reward", "quality", tmp_path / "m")
    fig = captured[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # as savefig draws it
    renderer = canvas.get_renderer()
    labels = [a for a in fig.axes[0].texts if isinstance(a, Annotation)]
    assert len(labels) == len(pts)
    boxes = [a.get_window_extent(renderer) for a in labels]
    overlaps = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes)) for j in range(i)
                if boxes[i].overlaps(boxes[j])]
    assert not overlaps


def test_the_plan_gives_each_pair_its_reward_seeds_and_own_overrides():
    """A pair's own line beats the common overrides, the command line beats both, best-of-N picks the pair's
    reward, every seed is its own sub-run and the findings' own keys never reach a sub-run."""
    from rlg.harness.api import compose
    from rlg.harness.build import build
    from rlg.harness.findings import findings_plan

    over = ["experiment=findings_zoo", 'findings.pairs=["zoo_compress_ddpo prompts.samples_per_prompt=3"]',
            "findings.seeds=[5,7]", "prompts.max_prompts=2"]
    job = build(compose(*over), overrides=over)
    plan = findings_plan(job.config, over)
    assert [(r.preset, r.seed, r.reward) for r in plan.runs] == [("zoo_compress_ddpo", 5, "jpeg_compressibility"),
                                                                  ("zoo_compress_ddpo", 7, "jpeg_compressibility")]
    for r in plan.runs:
        c = r.job.config
        assert (c.seed, c.prompts.samples_per_prompt, c.prompts.max_prompts) == (r.seed, 3, 2)
        assert c.method["best_of_n"].pick == "jpeg_compressibility" and list(c.method["best_of_n"].knobs) == [1, 2, 4]
        assert not any(o.startswith("findings") for o in r.overrides) and r.dir_name == f"zoo_compress_ddpo-seed{r.seed}"


def test_a_pair_line_narrows_the_methods_and_the_particle_methods_get_the_pairs_reward():
    from rlg.harness.api import compose
    from rlg.harness.build import build
    from rlg.harness.config import ConfigError
    from rlg.harness.findings import findings_plan

    over = ["experiment=findings_zoo", 'findings.pairs=["zoo_sd_dpo", "zoo_compress_ddpo method=[rlg,rlg_fkc]"]',
            "findings.seeds=[0]", "prompts.max_prompts=2"]
    plan = findings_plan(build(compose(*over), overrides=over).config, over)
    methods = {r.preset: [m.label for m in r.job.methods] for r in plan.runs}
    assert methods == {"zoo_sd_dpo": ["rlg", "weight_mix", "cfg_rl", "best_of_n", "rlg_fkc", "fk_steering"],
                       "zoo_compress_ddpo": ["rlg", "rlg_fkc"]}
    steer = next(m for m in plan.runs[0].job.methods if m.label == "fk_steering")
    fkc = next(m for m in plan.runs[1].job.methods if m.label == "rlg_fkc")
    assert (steer.pick, steer.knobs, fkc.knobs, fkc.config.particles) == ("digit_margin", [2.0, 4.0], [2.0], 2)
    bad = ["experiment=findings_zoo", 'findings.pairs=["zoo_sd_dpo method=[weight_mix]"]', "findings.seeds=[0]"]
    with pytest.raises(ConfigError) as err:
        build(compose(*bad), overrides=bad)  # the plan is made at start-up
    assert str(err.value) == ("findings pair zoo_sd_dpo: method=[weight_mix] must hold rlg and only methods of the "
                              "run's method=[rlg,weight_mix,cfg_rl,best_of_n,rlg_fkc,fk_steering]")
