"""rlg.grid: the grid protocol (groups, packing, ranks) and its one loop, against the harness's generate stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlg.grid import Grid, pack_calls, work_groups
from rlg.guidance import ScaleError


def test_groups_hold_every_scale_of_a_prompt_sample_and_ranks_split_them_without_overlap():
    g = Grid(prompts=("a", "b", "c"), scales=(0, 1.5), samples=2, seed=7, prompt_ids=(4, 9, 2))
    groups = work_groups(g)
    assert len(groups) == 6  # prompts x samples, prompt-major
    assert [[k for k, _ in grp] for grp in groups[:2]] == [[(4, 0, 0.0), (4, 0, 1.5)], [(4, 1, 0.0), (4, 1, 1.5)]]
    item = groups[5][1][1]
    assert (item.prompt_index, item.prompt, item.sample_index, item.seed, item.scale) == (2, "c", 1, 7, 1.5)
    # three ranks: every world-th group from its rank, together exactly the whole grid
    parts = [work_groups(g, lambda p, s, w: f"{p}/{s}/{w}", rank=r, world=3) for r in range(3)]
    assert [k for grp in parts[1] for k, _ in grp] == ["4/1/0.0", "4/1/1.5", "2/0/0.0", "2/0/1.5"]
    keys = [k for part in parts for grp in part for k, _ in grp]
    assert len(keys) == len(set(keys)) == 12


def test_calls_keep_groups_whole_where_they_fit_and_split_a_group_larger_than_a_call():
    groups = [[f"g{i}w{j}" for j in range(3)] for i in range(3)]
    assert pack_calls(groups, 6) == [groups[0] + groups[1], groups[2]]
    assert pack_calls(groups, 4) == [groups[0], groups[1], groups[2]]  # a group never straddles two calls
    # a group larger than a call is cut into call-sized chunks; a chunk fills no gap left by another chunk
    assert pack_calls(groups, 2) == [["g0w0", "g0w1"], ["g0w2"], ["g1w0", "g1w1"], ["g1w2"], ["g2w0", "g2w1"], ["g2w2"]]
    assert pack_calls([["a"], ["b", "c", "d"], ["e"]], 2) == [["a"], ["b", "c"], ["d", "e"]]
    assert pack_calls([], 5) == []


@pytest.mark.parametrize("kw,match", [(dict(prompts=()), "at least one prompt"), (dict(samples=0), "must be >= 1"),
                                      (dict(batch_size=0), "must be >= 1"), (dict(prompt_ids=(1, 1)), "distinct"),
                                      (dict(scales=(0, float("nan"))), "finite")])
def test_bad_grids_are_refused(kw, match):
    args = dict(prompts=("a", "b"), scales=(0, 1)) | kw
    with pytest.raises((ValueError, ScaleError), match=match):
        Grid(**args)


def test_generate_grid_gives_the_harness_images_bit_for_bit(tmp_path):
    """Same (prompt, sample, seed, scale) -> the same PNG bits, though the harness makes calls of 2 and 1
    images (each group of 3 scales split) and generate_grid makes one call of all 12; run_grid skips what it
    is told to."""
    import rlg
    from rlg.grid import run_grid
    from rlg.harness import runner
    from rlg.harness.api import job as make_job
    from rlg.store import Store

    overrides = ["experiment=tiny", "debug=fast", "prompts.samples_per_prompt=2", "grid.scales=[0,0.5,2]",
                 "sampler.batch_size=2", "sampler.micro_batch=4", "stage=generate", f"paths.root={tmp_path}",
                 "name=g"]
    job = make_job(*overrides)
    runner.run_job(job, tmp_path / "g")
    store = Store(tmp_path / "g")
    rows = store.images(verify=True)
    assert len(rows) == 2 * 2 * 3
    s = job.sampler
    assert s.micro_batch == 4 and job.config.sampler.batch_size == 2
    settings = {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "extra"} | s.extra
    pair = rlg.load_pair(job.pair)  # loaded again: nothing shared with the run but the files
    texts = [p.text for p in job.prompts]
    got = rlg.generate_grid(pair, texts, list(job.scales), seed=job.seed, samples=2, output="np", batch_size=12,
                            **settings)
    for r in rows.itertuples():
        harness = np.asarray(store.load_image(r))
        w = list(job.scales).index(r.scale)
        assert np.array_equal(got[r.prompt_id][r.sample][w], harness), r
    # run_grid with a skip list makes only the rest, with the same bits
    grid = Grid(tuple(texts), job.scales, samples=2, seed=job.seed, settings=s, batch_size=5)
    skip = {(p, k, w) for p in (0, 1) for k in (0, 1) for w in job.scales if (p, k) != (1, 0)}
    calls = list(run_grid(pair, grid, skip=skip))
    assert [[key for key, _ in c] for c in calls] == [[(1, 0, w) for w in job.scales]]
    for (_, gen), w in zip(calls[0], job.scales):
        assert np.array_equal(gen.image, got[1][0][list(job.scales).index(w)])
