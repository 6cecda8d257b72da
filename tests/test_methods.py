"""rlg.methods: weight mixing, CFG and best-of-N beside RLG, through the one grid loop, store and report.

References are independent of rlg.methods: stock diffusers pipelines (the base, the RL network, a UNet
carrying weights merged here by hand, diffusers' own ``set_adapters(weights=w)``), JPEG sizes computed
here with PIL, and network rows counted by hand.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rlg.harness import build, runner
from rlg.harness.config import ConfigError
from rlg.harness.stages import image_key, image_keys, job_arms, method_grids, work_groups
from rlg.store import Store, content_key
from rlg.methods import MethodError, get_method
from rlg.methods.best_of_n import pick_best
from rlg.methods.weight_mix import mixed_state_dict
from rlg.pairs import load_pair, tiny_spec
from rlg.report.methods import equivalence, method_points, pareto_points
from rlg.sampling import RLGSampler, WorkItem
from tests.test_core import PROMPT, SEED, fresh_base, max_diff, reference_rl, settings, stock_image


def _method_image(pair, method, arm) -> np.ndarray:
    s = settings("sd")
    if arm.guidance_scale is not None:
        s.guidance_scale = arm.guidance_scale
    with method.applied(pair.denoiser, arm):
        return RLGSampler(pair, s).generate([WorkItem(0, PROMPT, 0, SEED, arm.scale)])[0].image


@pytest.mark.parametrize("kind", ["full", "diffusers_lora"])
def test_weight_mix_equals_stock_pipelines_and_independent_mixes(kind, fixture_root):
    spec = tiny_spec("sd", kind, root=fixture_root)
    pair = load_pair(spec)
    from peft.tuners.lora import LoraLayer

    def scalings():
        return [float(m.scaling["rl"]) for m in pair.denoiser.base.modules() if isinstance(m, LoraLayer)]

    loaded = scalings()
    method = get_method("weight_mix", [0, 1, 0.5, 2])
    img = {arm.knob: _method_image(pair, method, arm) for arm in method.arms()}
    assert scalings() == loaded  # the loaded LoRA scaling is back after each call

    base_pipe, name = fresh_base(spec)
    assert max_diff(img[0.0], stock_image(base_pipe, "sd")) == 0  # w = 0: the stock base pipeline
    rl_net = reference_rl(spec, base_pipe, name)
    if kind == "full":
        base_state = base_pipe.unet.state_dict()
        setattr(base_pipe, name, rl_net)
        assert max_diff(img[1.0], stock_image(base_pipe, "sd")) == 0  # w = 1: the stock RL pipeline
        rl_state = rl_net.state_dict()
        for w in (0.5, 2.0):  # a UNet carrying theta_b + w (theta_r - theta_b), merged here by hand
            merged = type(rl_net).from_config(rl_net.config).eval()
            merged.load_state_dict({k: base_state[k] + w * (rl_state[k] - base_state[k]) for k in base_state})
            setattr(base_pipe, name, merged)
            assert max_diff(img[w], stock_image(base_pipe, "sd")) == 0
    else:
        # diffusers' own adapter scale on a fresh pipeline; the mixed-adapter batch adds the LoRA term in another
        # order than a plain adapter forward (tests/test_core.py): one uint8 level at most
        ref, _ = fresh_base(spec)
        ref.load_lora_weights(spec.rl.id, weight_name=spec.rl.weight_name, adapter_name="rl")
        for w in (1.0, 0.5, 2.0):
            ref.set_adapters(["rl"], adapter_weights=[w])
            assert max_diff(img[w], stock_image(ref, "sd")) <= 1, w
    assert max_diff(img[2.0], img[1.0]) > 0 and max_diff(img[0.5], img[1.0]) > 0


def test_mixed_state_dict_refuses_different_architectures():
    a, b = {"x": torch.ones(2)}, {"x": torch.ones(3)}
    with pytest.raises(MethodError, match="shape"):
        mixed_state_dict(a, b, 0.5)
    with pytest.raises(MethodError, match="names"):
        mixed_state_dict(a, {"y": torch.ones(2)}, 0.5)
    out = mixed_state_dict({"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0, 2.0])}, 1.5)
    assert out["x"].tolist() == [4.0, 2.0]


def test_network_rows_per_image_equal_a_hand_count(fixture_root):
    """3 steps with CFG (2 rows per step): RLG at 0 < w != 1 asks 6 rows of each model, w = 0 / 1 of one;
    the RL model alone at g = 1 runs without CFG (3 rows). Without deduplication the denoiser's own row
    counters equal the per-image sums."""
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root))
    pair.denoiser.dedupe = False
    items = [WorkItem(0, PROMPT, 0, SEED, w) for w in (0.0, 0.5, 1.0, 2.0)]
    pair.denoiser.stats.reset()
    out = RLGSampler(pair, settings("sd")).generate(items)
    assert [(g.nfe_base, g.nfe_rl) for g in out] == [(6, 0), (6, 6), (0, 6), (6, 6)]
    assert (pair.denoiser.stats.base_rows, pair.denoiser.stats.rl_rows) == (18, 18)
    assert all(g.wall_s > 0 for g in out)
    cfg = get_method("cfg_rl", [1.0, 3.0])
    rows = {}
    for arm in cfg.arms():
        s = settings("sd")
        s.guidance_scale = arm.guidance_scale
        g = RLGSampler(pair, s).generate([WorkItem(0, PROMPT, 0, SEED, arm.scale)])[0]
        rows[arm.knob] = (g.nfe_base, g.nfe_rl)
    assert rows == {1.0: (0, 3), 3.0: (0, 6)}


def test_best_of_n_picks_the_argmax_and_ties_go_to_the_first():
    frame = pd.DataFrame({"prompt_id": 0, "sample": 0, "candidate": [0, 1, 2, 3], "image_key": list("abcd"),
                          "pick": [1.0, 3.0, 3.0, np.nan], "nfe_rl": 4.0})
    out = pick_best(frame, [1, 2, 3, 4, 5]).set_index("knob")
    assert list(out.index) == [1, 2, 3, 4]  # N = 5: candidate 4 missing, no pick
    assert list(out.image_key) == ["a", "b", "b", "b"] and list(out.nfe_rl) == [4, 8, 12, 16]
    low = pick_best(frame, [3], higher_is_better=False)
    assert low.image_key.tolist() == ["a"]


def _jpeg_kb(path) -> float:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.tell() / 1000


def test_all_methods_run_through_the_harness_and_share_noise(compose, tmp_path):
    """One run with every method on the zoo pair (2 steps): content keys, shared noise, hand-counted rows,
    best-of-N against JPEG sizes computed here, the report's methods section and its circularity warning."""
    overrides = ["experiment=methods_zoo_compress", "debug=fast", "prompts.max_prompts=2", "grid.scales=[0,0.5,1]",
                 "method.cfg_rl.knobs=[1,2]", "method.best_of_n.knobs=[1,2,4]",
                 "evaluators.selected=[jpeg,digit_prob]", "evaluators.options.jpeg.direction=compressibility"]
    job = build.build(compose(*overrides))
    assert [a.method for a in job_arms(job)].count("best_of_n") == 4
    entry = runner.run(compose(*overrides), run_dir=tmp_path / "r")
    assert entry["generate"]["images_made"] == 2 * (3 + 3 + 2 + 4)
    store = Store(tmp_path / "r")
    img = store.images()
    key = {(r.method, r.knob if r.knob == r.knob else None, r.candidate, r.prompt_id): r for r in img.itertuples()}
    for p in (0, 1):
        sha = lambda m, k, c=0: key[(m, k, c, p)].image_sha256  # noqa: E731
        # one starting noise: the RL model at the sampler's CFG (2) is the same image under every method
        assert sha("rlg", 1.0) == sha("weight_mix", 1.0) == sha("cfg_rl", 2.0) == sha("best_of_n", None, 0)
        assert sha("rlg", 0.0) == sha("weight_mix", 0.0)
        assert sha("rlg", 0.5) != sha("weight_mix", 0.5)
        assert len({sha("best_of_n", None, c) for c in range(4)}) == 4
    # rows per image, by hand: 2 steps x 2 CFG rows; CFG g = 1 runs 1 row per step
    rows = {(r.method, r.knob if r.knob == r.knob else None): (r.nfe_base, r.nfe_rl) for r in img.itertuples()}
    assert rows[("rlg", 0.0)] == (4, 0) and rows[("rlg", 0.5)] == (4, 4) and rows[("rlg", 1.0)] == (0, 4)
    assert rows[("weight_mix", 0.5)] == (0, 4) and rows[("cfg_rl", 1.0)] == (0, 2) and rows[("best_of_n", None)] == (0, 4)
    # content keys: plain RLG keys are the pre-methods formula; other methods add their fields
    from rlg.grid import work_groups as grid_groups

    for method, arms, grid in method_grids(job):
        for k, it in grid_groups(grid, image_keys(job, arms))[0]:
            fields = {**job.identity, "prompt_id": it.prompt_index, "prompt": it.prompt, "sample": 0,
                      "seed": job.seed, "scale": it.scale}
            if method.name == "rlg":
                assert k == content_key(fields)
            else:
                assert k != content_key(fields) and k == image_key(job, job.prompts[0], 0, it.scale, arms[it.scale])
    assert sum(map(len, work_groups(job))) == 2 * (3 + 3 + 2 + 4)
    # best-of-N against JPEG sizes computed here
    points, notes = method_points(img.assign(image_path=[str(store.image_path(k)) for k in img.image_key]),
                                  store.scores())
    cand = img[img.method == "best_of_n"]
    for (p, n), picked in points[points.method == "best_of_n"].groupby(["prompt_id", "knob"]):
        c = cand[(cand.prompt_id == p) & (cand.candidate < n)]
        sizes = [-_jpeg_kb(store.image_path(k)) for k in c.sort_values("candidate").image_key]
        best = c.sort_values("candidate").image_key.iloc[int(np.argmax(sizes))]
        assert picked.image_key.iloc[0] == best and picked.cost.iloc[0] == 4 * n
    assert any("circular" in line for line in notes)
    index = (tmp_path / "r" / "report" / "index.md").read_text()
    assert "Methods: RLG against weight mixing" in index and "WARNING" in index and "Pareto front" in index
    assert (tmp_path / "r" / "report" / "figures" / "methods_rows_per_image__jpeg_compressibility.png").is_file()
    # the RLG sections hold RLG's images only: three scales
    summary = pd.read_csv(tmp_path / "r" / "report" / "tables" / "summary.csv")
    assert sorted(summary.scale.unique()) == [0.0, 0.5, 1.0]


def test_equivalence_and_front_on_known_curves():
    rows = []
    for method, knobs, reward, quality, cost in (("rlg", [0, 1, 2], [0, 1, 3], [5, 4, 1], [4, 4, 8]),
                                                 ("weight_mix", [0, 1, 2], [0, 1, 2], [5, 4, 3], [4, 4, 4])):
        for k, r, q, c in zip(knobs, reward, quality, cost):
            for metric, v in (("jpeg", r), ("quality", q)):
                rows.append({"method": method, "knob": float(k), "metric": metric, "higher_is_better": True,
                             "mean": float(v), "lo": float(v), "hi": float(v), "n": 1, "cost": float(c),
                             "wall_s": 0.0, "circular": False})
    s = pd.DataFrame(rows)
    eq = equivalence(s, "jpeg").set_index("w")
    assert eq.loc[1.0, "w_prime"] == 1.0 and np.isnan(eq.loc[2.0, "w_prime"])  # reward 3 is beyond weight mixing
    assert eq.loc[0.0, "quality weight_mix"] == 5.0
    front = pareto_points(s, "jpeg", "quality")
    on = set(map(tuple, front[front.front][["method", "knob"]].to_numpy()))
    assert ("rlg", 2.0) in on and ("weight_mix", 2.0) in on and ("rlg", 1.0) in on


@pytest.mark.parametrize("overrides,match", [
    (["method=[cfg_rl]", "method.cfg_rl.knobs=null"], "method.cfg_rl.knobs is not set"),
    (["method=[best_of_n]", "method.best_of_n.pick=pickscore"], "not a metric of the selected evaluators"),
    (["method=[best_of_n]", "method.best_of_n.knobs=[0,2]"], "whole numbers >= 1"),
    # digit_fd scores one metric (digit_prob now also gives digit_margin and digit_correct to judge with)
    (["method=[best_of_n]", "evaluators.selected=[digit_fd]", "method.best_of_n.pick=digit_mahalanobis"], "circular"),
    (["method=[weight_mix]", "method.weight_mix.knobs=[1,1]"], "duplicates"),
    (["method=[cfg_rl]", "method.cfg_rl.model=both"], "use rl or base"),
])
def test_bad_method_settings_are_refused_at_start(compose, overrides, match):
    with pytest.raises(ConfigError, match=match):
        build.build(compose("experiment=methods_zoo_compress", *overrides))


def test_method_keys_on_the_command_line_are_checked_by_name():
    from rlg.harness.config import misspelt_override

    assert misspelt_override(["method.cfg_rl.knobs=[1,4]", "method.best_of_n.pick=pickscore"]) is None
    assert "did you mean 'method.cfg_rl.knobs'" in misspelt_override(["method.cfg_rl.knobz=[1,4]"])


def test_a_rerun_with_another_picking_metric_is_reported_by_that_metric(compose, tmp_path):
    """Stored candidates are reused (no image is made again) and the report picks by the metric asked for now,
    not the one recorded when the candidates were made (issue 30: accepted and ignored)."""
    base = ["experiment=tiny", "debug=fast", "prompts.max_prompts=1", "method=[best_of_n]",
            "method.best_of_n.knobs=[1,2]", "evaluators.selected=[jpeg]"]
    for pick in ("jpeg_compressibility", "jpeg_incompressibility"):
        entry = runner.run(compose(*base, f"method.best_of_n.pick={pick}"), run_dir=tmp_path / "r")
        scores = Store(tmp_path / "r").scores()
        value = scores[scores.metric == pick].value.to_numpy()
        assert len(value) == 2 and abs(value[0] - value[1]) > 2e-3  # two candidates the pick tells apart
        table = pd.read_csv(tmp_path / "r" / "report" / "tables" / "methods.csv")
        best_of_2 = table[(table.knob == 2) & (table.metric == pick)]["mean"].item()
        assert best_of_2 == pytest.approx(value.max(), abs=5e-4)  # the best of both by the metric asked for
        assert f"best of N candidates by {pick}" in (tmp_path / "r" / "report" / "index.md").read_text()
    assert entry["generate"]["images_made"] == 0  # the second run reused the candidates
