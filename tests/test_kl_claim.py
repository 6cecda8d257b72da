"""The pipeline of the trained-model KL-claim measurement (rlg.kl_claim, rlg.report.kl_claim), on the tiny
random-weight SD pair (rlg.tiny_pairs) in seconds. It checks plumbing, not the scientific outcome.

The "trainer" here is a stand-in with a known answer (tests.helpers.trainers.shifted_unet): the model at
coefficient b is the base UNet with every weight moved along one fixed random direction by 0.02 / b (a
larger move for a smaller b, as a KL-regularised fine-tune would), and it ignores the seed. So the two "retrained" seeds are the same
model, and RLG(1) (the beta model alone) is that model too: with paired noise their images must be
identical, their paired differences exactly 0, and the distance equal to the floor.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rlg.analytic_metrics import energy_distance
from rlg.grid import Grid
from rlg.kl_claim import KLClaimSettings, model_dir, required_models, run_kl_claim
from rlg.report.kl_claim import write_kl_claim_report
from rlg.sampler_spec import SamplerSettings

# Module fixtures build shared runs once per process: under pytest-xdist this file stays on one worker.
pytestmark = pytest.mark.xdist_group("test_kl_claim")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from rlg.tiny_pairs import build_pair

    return build_pair("sd", root=tmp_path_factory.mktemp("tiny")) / "base"


def settings(tmp_path, base, **kw):
    opts = dict(task="tiny", base=str(base), trainer="tests.helpers.trainers:shifted_unet",
                trainer_kwargs={"base_dir": str(base)}, train_missing=True, beta=0.1,
                scales=[1.0, 2.0], source_seed=0, floor_seeds=[1, 2], weights_dir=str(tmp_path / "w"),
                metrics=["jpeg:jpeg_incompressibility"], set_metrics=[], features="pixels", n_batches=2, progress=False)
    opts.update(kw)
    return KLClaimSettings(**opts)


# what every arm samples: the shared prompts and sampler groups, as the harness passes them
GRID = Grid(("a handwritten digit 1", "a handwritten digit 7"), (1.0,), samples=4,
            settings=SamplerSettings(num_inference_steps=3, guidance_scale=2.0, eta=1.0))


def test_kl_claim_pipeline_rows_pairing_and_report(tmp_path, tiny_base):
    s = settings(tmp_path, tiny_base)
    assert required_models(s) == [(0.1, 0), (0.1, 1), (0.1, 2), (0.05, 1), (0.05, 2)]
    images = {}
    df = run_kl_claim(s, GRID, images_out=images)
    for b, seed in required_models(s):  # trained, with a training config beside the weights
        cfg = json.loads((model_dir(s, b, seed) / "training_config.json").read_text())
        assert cfg["beta"] == b and cfg["seed"] == seed and cfg["trainer_info"] == {"kl_coefficient": b}
    dist = df[df.kind == "distance"].set_index("w")
    metric = df[(df.kind == "metric") & (df.arm == "rlg")].set_index("w")
    assert list(dist.index) == [1.0, 2.0] and list(dist.beta_eff) == pytest.approx([0.1, 0.05])
    # paired noise: the same model in two arms gives the same images
    np.testing.assert_array_equal(images[("rlg", 1.0, 0)], images[("retrained", 1.0, 1)])
    np.testing.assert_array_equal(images[("retrained", 2.0, 1)], images[("retrained", 2.0, 2)])
    assert dist.loc[1.0, "value"] == dist.loc[1.0, "floor"] and dist.loc[1.0, "gap"] == 0
    assert metric.loc[1.0, "diff"] == 0 and metric.loc[1.0, "diff_stderr"] == 0
    assert (metric.diff_floor == 0).all()
    # the distance is the batched energy distance on pixels, recomputed independently
    feats = {k: torch.from_numpy(v.reshape(len(v), -1).astype(np.float64) / 255) for k, v in images.items()}
    batches = [np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7])]  # sample halves of both prompts
    expect = np.mean([energy_distance(feats[("rlg", 2.0, 0)][i], feats[("retrained", 2.0, 1)][i], paired=True)
                      for i in batches])
    assert dist.loc[2.0, "value"] == pytest.approx(expect, rel=1e-12)
    # RLG at w != 1 is not the retrained model (the stand-in's tilt is not linear in 1/b): a non-zero gap
    assert dist.loc[2.0, "gap"] != 0
    # per-image metric rows with intervals, per arm
    jpeg = df[(df.kind == "metric") & (df.metric == "jpeg_incompressibility")]
    assert len(jpeg) == 2 * 3 and (jpeg.lo <= jpeg.value).all() and (jpeg.value <= jpeg.hi).all()
    paths = write_kl_claim_report(df, None, tmp_path / "report")
    names = {p.name for p in paths}
    assert {"kl_claim_metrics.png", "kl_claim_distance.pdf", "kl_claim.md", "kl_claim_metrics.tex", "index.md",
            "index.html"} <= names
    text = (tmp_path / "report" / "tables" / "kl_claim.md").read_text()
    assert "| 2 | 0.05 |" in text
    # a model tuned from another base is refused
    cfg_file = model_dir(s, 0.05, 2) / "training_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "base_unet_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="fine-tuned from a base UNet"):
        run_kl_claim(s, GRID)


def test_missing_models_name_the_fix_and_settings_validate(tmp_path, tiny_base):
    with pytest.raises(FileNotFoundError, match="train_missing=true"):
        run_kl_claim(settings(tmp_path, tiny_base, train_missing=False), GRID)
    with pytest.raises(ValueError, match="source_seed"):
        settings(tmp_path, tiny_base, source_seed=1)
    with pytest.raises(ValueError, match="w = 0 is the base"):
        settings(tmp_path, tiny_base, scales=[0.0, 1.0])
    with pytest.raises(ValueError, match="reward_metric='x' is not among the metrics"):
        settings(tmp_path, tiny_base, reward_metric="x")
    with pytest.raises(ValueError, match="trainer must be 'module:function', got 'train'"):
        settings(tmp_path, tiny_base, trainer="train")
    with pytest.raises(ValueError, match=r"\(2 images per arm, n_batches=2\); raise prompts.samples_per_prompt"):
        run_kl_claim(settings(tmp_path, tiny_base), Grid(("a",), (1.0,), samples=2))


def test_report_puts_the_analytic_result_beside(tmp_path):
    from rlg.ground_truth import GroundTruthConfig, run_ground_truth

    gt = run_ground_truth(GroundTruthConfig(scales=[0.0, 1.0, 2.0], samplers=["ddim_eta1"], num_inference_steps=5,
                                            n_per_batch=20, n_batches=2, progress=False))
    rows = [dict(kind="distance", arm="rlg", w=w, beta_eff=1.0 / w, model_seed=0, metric="energy_distance/pixels",
                 value=0.1, stderr=0.01, floor=0.05, floor_stderr=0.01, gap=0.05, gap_in_floor_se=5.0, z=3.5,
                 task="t", beta=1.0, n=8, n_batches=2, steps=3, eta=1.0, guidance_scale=2.0, seed=0) for w in (1.0, 2.0)]
    paths = write_kl_claim_report(pd.DataFrame(rows), gt, tmp_path)
    report = (tmp_path / "index.md").read_text()
    assert "Analytic ground truth" in report and "| ddim_eta1 | 2 |" in report
    assert any(p.parent.name == "analytic" and p.name == "mean_reward_vs_w.png" for p in paths)


def test_verdicts_use_the_training_seed_spread_and_holm():
    """kl_claim_verdicts on hand-made rows, against an independent computation with scipy: the per-model sd is
    pooled over the models at each coefficient (the source joins the beta group), RLG is one model, Holm over
    w != 1, the verdicts follow the one rule (equivalence within half the response), and a retraining arm that does
    not move with beta/w makes the verdict 'undecided' with no test."""
    from scipy import stats

    from rlg.report.kl_claim import kl_claim_verdicts

    beta = 0.1
    # retrained values per w (seeds 1, 2); RLG(w) from the source; w = 1: RLG(1) is the source (0.50)
    ret = {0.5: [0.30, 0.34], 1.0: [0.49, 0.53], 2.0: [0.71, 0.69], 3.0: [0.52, 0.50]}
    rlg = {0.5: 0.31, 1.0: 0.50, 2.0: 0.95, 3.0: 0.90}
    common = dict(kind="metric", metric="jpeg_compressibility", reward_metric="jpeg_compressibility", task="t",
                  beta=beta, n=8, n_batches=2, steps=3, eta=1.0, guidance_scale=2.0, seed=0, stderr=0.0)
    rows = [dict(arm="rlg", w=w, beta_eff=beta / w, model_seed=0, value=v, **common) for w, v in rlg.items()]
    rows += [dict(arm="retrained", w=w, beta_eff=beta / w, model_seed=s, value=v, **common)
             for w, vs in ret.items() for s, v in zip((1, 2), vs)]
    out = kl_claim_verdicts(pd.DataFrame(rows)).set_index("w")
    groups = [ret[0.5], ret[1.0] + [0.50], ret[2.0], ret[3.0]]
    dfp = sum(len(g) - 1 for g in groups)
    var = sum((len(g) - 1) * np.var(g, ddof=1) for g in groups) / dfp
    assert out.pooled_df.iloc[0] == dfp == 5 and out.pooled_sd.iloc[0] == pytest.approx(np.sqrt(var))
    se = np.sqrt(var + np.var(ret[2.0], ddof=1) / 2)
    assert out.loc[2.0, "claim_estimate"] == pytest.approx(0.95 - 0.70)
    assert out.loc[2.0, "claim_stderr"] == pytest.approx(se)
    resp = stats.ttest_ind(ret[2.0], ret[1.0] + [0.50], equal_var=False)
    assert out.loc[2.0, "response_p"] == pytest.approx(resp.pvalue)
    # the one rule (rlg.verdicts): equivalence within half the response, Holm over the w whose response is significant
    margin = abs(np.mean(ret[2.0]) - np.mean(ret[1.0] + [0.50])) / 2
    assert out.loc[2.0, "margin"] == pytest.approx(margin)
    c = out.loc[2.0]
    p_fails = stats.t.sf((c.claim_estimate - margin) / c.claim_stderr, c.claim_df)  # RLG - retrained > +margin
    p_holds = max(stats.t.sf((c.claim_estimate + margin) / c.claim_stderr, c.claim_df),
                  stats.t.cdf((c.claim_estimate - margin) / c.claim_stderr, c.claim_df))
    c5 = out.loc[0.5]
    m5 = abs(np.mean(ret[0.5]) - np.mean(ret[1.0] + [0.50])) / 2
    p5 = min(max(stats.t.sf((c5.claim_estimate + m5) / c5.claim_stderr, c5.claim_df),
                 stats.t.cdf((c5.claim_estimate - m5) / c5.claim_stderr, c5.claim_df)),
             min(stats.t.sf((c5.claim_estimate - m5) / c5.claim_stderr, c5.claim_df),
                 stats.t.cdf((c5.claim_estimate + m5) / c5.claim_stderr, c5.claim_df)))
    raw = [min(1, 2 * min(p_holds, p_fails)), min(1, 2 * p5)]  # w = 2, w = 0.5 (w = 3: no response, no test)
    lo, hi = sorted(raw)
    holm = {r: min(1, max(2 * lo, hi) if r == hi else 2 * lo) for r in raw}
    assert out.loc[2.0, "p_holm"] == pytest.approx(holm[raw[0]]) and out.loc[0.5, "p_holm"] == pytest.approx(holm[raw[1]])
    assert np.isnan(out.loc[3.0, "p_holm"])
    assert out.loc[2.0, "verdict"] == "does not hold"  # the arm responds (+0.19) and RLG overshoots by 0.25 > 0.097
    assert out.loc[0.5, "verdict"] == "undecided" and holm[raw[1]] > 0.05  # gap -0.01, interval just past the margin
    assert out.loc[3.0, "verdict"] == "undecided"  # retrained(beta/3) is where retrained(beta) is: no response
    assert out.loc[1.0, "verdict"] == "holds" and out.loc[1.0, "reason"].startswith("control")
    assert np.isnan(out.loc[1.0, "p_holm"])


def test_ship_models_records_each_model_in_the_manifest_through_the_zoos_locked_atomic_writer(tmp_path):
    """Two ship_models calls add their entries to one manifest (the second keeps the first's), each file's sha256
    is the project's files.sha256_file, and the atomic write leaves no temporary file beside the manifest."""
    import json

    from rlg.files import sha256_file
    from rlg.kl_claim import ship_models

    s = KLClaimSettings(task="t", beta=1.0, scales=[1.0], weights_dir=str(tmp_path / "weights"))
    for b, seed in ((1.0, 0), (1.0, 1)):
        p = model_dir(s, b, seed)
        p.mkdir(parents=True)
        (p / "training_config.json").write_text(json.dumps({"seed": seed}))
        (p / "pytorch_lora_weights.safetensors").write_bytes(bytes([seed]) * 10)
    manifest = tmp_path / "kl_manifest.json"
    ship_models(s, manifest, models=[(1.0, 0)])
    data = ship_models(s, manifest, models=[(1.0, 1)])
    assert data == json.loads(manifest.read_text())
    assert sorted(data["models"]) == ["kl_t/beta1_seed0", "kl_t/beta1_seed1"]
    entry = data["models"]["kl_t/beta1_seed1"]
    weights = model_dir(s, 1.0, 1) / "pytorch_lora_weights.safetensors"
    assert entry["sha256"]["pytorch_lora_weights.safetensors"] == sha256_file(weights)
    assert entry["role"] == "retrained" and entry["stored_dtype"] == "as trained"
    assert entry["training_config"] == {"seed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kl_manifest.json", "weights"]


def test_shipped_kl_models_match_the_manifest_and_the_lora_presets_models_load():
    """Every model recorded in rlg/zoo/kl_manifest.json is on disk with the recorded sha256 per file, every model
    directory on disk is recorded, and the models the kl_claim_digits_ddpo and kl_claim_digits_dpo presets need
    load through the production loader (rl_kind=diffusers_lora on the preset's base) as non-zero LoRAs of one layout,
    tuned from that base."""
    from safetensors import safe_open

    from rlg.files import sha256_file
    from rlg.harness.api import job
    from rlg.kl_claim import DEFAULT_WEIGHTS_DIR, _base_digest, _rl_checkpoint
    from rlg.pairs import Checkpoint, PairSpec, load_pair
    from rlg.zoo import resolve_zoo_id

    manifest = json.loads((DEFAULT_WEIGHTS_DIR.parent / "kl_manifest.json").read_text())["models"]
    on_disk = {p.parent.relative_to(DEFAULT_WEIGHTS_DIR).as_posix()
               for p in DEFAULT_WEIGHTS_DIR.glob("kl_*/*/training_config.json")}
    assert on_disk == set(manifest)
    for name, entry in manifest.items():
        files = {f.relative_to(DEFAULT_WEIGHTS_DIR / name).as_posix()
                 for f in (DEFAULT_WEIGHTS_DIR / name).rglob("*") if f.is_file()}
        assert files == set(entry["sha256"]), name
        for f, digest in entry["sha256"].items():
            assert sha256_file(DEFAULT_WEIGHTS_DIR / name / f) == digest, f"{name}/{f}"

    from rlg.kl_claim import ensure_models

    v1 = job("experiment=kl_claim_digits_ddpo_v1").settings  # the first generation, moved to kl_<task>_v1
    assert set(ensure_models(v1).values()) == {model_dir(v1, b, seed) for b, seed in required_models(v1)}
    for name in ("kl_claim_digits_ddpo", "kl_claim_digits_dpo"):
        s = job(f"experiment={name}").settings
        need = required_models(s)
        assert s.paired and len(s.floor_seeds) >= 3  # RLG from every seed's beta model: no separate source
        assert set(need) == {(s.beta / w, seed) for w in s.scales for seed in s.floor_seeds}
        keys = None
        for b, seed in need:
            p = model_dir(s, b, seed)
            entry = manifest[p.relative_to(DEFAULT_WEIGHTS_DIR).as_posix()]
            assert entry["training_config"]["base_unet_sha256"] == _base_digest(s)
            assert entry["training_config"]["steps"] == s.train_steps and entry["beta"] == pytest.approx(b)
            with safe_open(str(p / "pytorch_lora_weights.safetensors"), "pt") as f:
                keys = keys or set(f.keys())
                assert set(f.keys()) == keys, p.name
        for b, seed in need[-1:]:  # one (the smallest beta's, the largest LoRA move) through the claim's own loader
            rl, kind = _rl_checkpoint(model_dir(s, b, seed))
            pair = load_pair(PairSpec(name="kl", base=Checkpoint(resolve_zoo_id(s.base)), rl=rl, rl_kind=kind,
                                      offline=True))
            assert kind == "diffusers_lora" and pair.info["lora_layers"] * 2 == len(keys), name
            assert pair.info["lora_nonzero"], name


def test_paired_verdicts_test_per_seed_differences_and_the_control_is_exact():
    """A paired run (RLG from each seed's beta model): the claim and the response are one-sample t tests on the
    per-seed differences (scipy's ttest_rel), the margin half the paired response, and the w = 1 control holds
    only when RLG(1) equals the beta model exactly."""
    from scipy import stats

    from rlg.report.kl_claim import kl_claim_verdict_tables, kl_claim_verdicts

    beta = 0.1
    ret = {1.0: [-1.064, -1.069, -1.065], 3.0: [-1.058, -1.065, -1.061]}  # seeds 1-3; seed spread > response
    rlg = {1.0: ret[1.0], 3.0: [-1.059, -1.0655, -1.0605]}
    common = dict(kind="metric", metric="jpeg_compressibility", reward_metric="jpeg_compressibility", task="t",
                  beta=beta, n=8, n_batches=2, steps=3, eta=1.0, guidance_scale=2.0, seed=0, stderr=0.0, paired=True)
    rows = [dict(arm=arm, w=w, beta_eff=beta / w, model_seed=s, value=v, **common)
            for arm, table in (("rlg", rlg), ("retrained", ret))
            for w, vs in table.items() for s, v in zip((1, 2, 3), vs)]
    df = pd.DataFrame(rows)
    out = kl_claim_verdicts(df).set_index("w")
    resp = stats.ttest_rel(ret[3.0], ret[1.0])
    claim = stats.ttest_rel(rlg[3.0], ret[3.0])
    assert out.loc[3.0, "response_p"] == pytest.approx(resp.pvalue) and resp.pvalue < 0.05
    assert stats.ttest_ind(ret[3.0], ret[1.0], equal_var=False).pvalue > 0.05  # unpaired, it would not respond
    assert out.loc[3.0, "claim_estimate"] == pytest.approx(np.mean(np.subtract(rlg[3.0], ret[3.0])))
    assert out.loc[3.0, "claim_t"] == pytest.approx(claim.statistic) and out.loc[3.0, "claim_df"] == 2
    margin = abs(np.mean(np.subtract(ret[3.0], ret[1.0]))) / 2
    assert out.loc[3.0, "margin"] == pytest.approx(margin)
    est, se = out.loc[3.0, "claim_estimate"], out.loc[3.0, "claim_stderr"]
    p_holds = max(stats.t.sf((est + margin) / se, 2), stats.t.cdf((est - margin) / se, 2))  # TOST at the margin
    assert p_holds < 0.05 and out.loc[3.0, "verdict"] == "holds"  # the only test: no Holm adjustment
    assert out.loc[1.0, "verdict"] == "holds" and out.loc[1.0, "reason"].startswith("control")
    df.loc[(df.arm == "rlg") & (df.w == 1.0) & (df.model_seed == 2), "value"] += 1e-6  # not the same model
    assert kl_claim_verdicts(df).set_index("w").loc[1.0, "verdict"] == "does not hold"
    assert "paired by training seed" in kl_claim_verdict_tables(df)["markdown"]


def test_paired_run_samples_rlg_from_every_seed_and_reports_every_seed(tmp_path, tiny_base):
    s = settings(tmp_path, tiny_base, paired=True, floor_seeds=[1, 2, 3],
                 trainer_kwargs={"base_dir": str(tiny_base), "per_seed": 0.5})
    assert required_models(s) == [(0.1, 1), (0.1, 2), (0.1, 3), (0.05, 1), (0.05, 2), (0.05, 3)]
    images = {}
    df = run_kl_claim(s, GRID, images_out=images)
    m = df[df.kind == "metric"]
    for arm in ("rlg", "retrained"):
        assert sorted(m[(m.arm == arm)].groupby("w").model_seed.apply(sorted).tolist()) == [[1, 2, 3]] * 2
    for seed in (1, 2, 3):  # RLG(1) from seed s is seed s's beta model on the same noise
        np.testing.assert_array_equal(images[("rlg", 1.0, seed)], images[("retrained", 1.0, seed)])
    rlg2 = m[(m.arm == "rlg") & (m.w == 2.0)].set_index("model_seed")
    ret2 = m[(m.arm == "retrained") & (m.w == 2.0)].set_index("model_seed")
    for seed in (1, 2, 3):  # diff is against the same seed's retrain; the floor is always seed 2 - seed 1
        assert rlg2.loc[seed, "diff"] == pytest.approx(rlg2.loc[seed, "value"] - ret2.loc[seed, "value"])
        assert rlg2.loc[seed, "diff_floor"] == pytest.approx(ret2.loc[2, "value"] - ret2.loc[1, "value"])
    assert ret2.loc[2, "value"] != ret2.loc[1, "value"]  # the seeds differ, so a wrong floor would show
    write_kl_claim_report(df, None, tmp_path / "report")
    table = (tmp_path / "report" / "tables" / "kl_claim_metrics.md").read_text()
    assert "retrained seed 3" in table and "RLG - retrained same seed" in table


def test_metrics_figure_draws_every_seed_when_there_are_more_seeds_than_colours(tmp_path):
    """A claim with 10 training seeds (more than rlg.report.figures.COLORS holds) draws the metrics figure with one
    legend entry per RLG seed and per retrained seed (it raised IndexError at the 8th retrained seed)."""
    import matplotlib
    from PIL import Image

    from rlg.report.figures import COLORS
    from rlg.report.kl_claim import write_kl_claim_figures

    seeds = range(1, 11)
    assert len(seeds) > len(COLORS)
    common = dict(kind="metric", metric="digit_margin", reward_metric="digit_margin", task="t", beta=1500.0, n=8,
                  n_batches=2, steps=3, eta=1.0, guidance_scale=2.0, seed=0, stderr=0.1, paired=True)
    rows = [dict(arm=arm, w=w, beta_eff=1500.0 / w, model_seed=s, value=20.0 + w + 0.01 * s,
                 lo=19.8 + w, hi=20.3 + w, **common)
            for arm in ("rlg", "retrained") for w in (0.5, 1.0, 2.0) for s in seeds]
    seen = []
    original = matplotlib.figure.FigureBase.legend

    def spy(self, handles, labels, *a, **kw):
        seen.extend(labels)
        return original(self, handles, labels, *a, **kw)

    matplotlib.figure.FigureBase.legend = spy
    try:
        files = write_kl_claim_figures(pd.DataFrame(rows), tmp_path, formats=("png",))
    finally:
        matplotlib.figure.FigureBase.legend = original
    assert [f.name for f in files] == ["kl_claim_metrics.png"]
    assert Image.open(files[0]).size[0] > 0
    assert seen == [f"RLG from the beta model, seed {s}" for s in seeds] + [f"retrained at beta/w, seed {s}"
                                                                             for s in seeds]
