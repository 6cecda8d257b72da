"""rlg.run: a preset from Python through the CLI's build and checks; its frames against a direct read of the
store. One tiny run (2 prompts x 3 scales, 2 steps, 32 px, JPEG): about 20 s on an idle core."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rlg
from rlg.harness.config import ConfigError
from tests.helpers.store_read import direct_read


def test_run_returns_the_stores_results_as_frames_and_the_report(tmp_path, fixture_root):
    res = rlg.run(experiment="tiny", overrides=["debug=fast", f"paths.root={tmp_path}", "name=py",
                                                f"paths.fixtures={fixture_root}"])
    assert res.run_dir == tmp_path / "py" and res.report == tmp_path / "py" / "report" / "index.html"
    assert res.report.is_file() and res.headlines and res.meta["stage"] == "all"
    direct = direct_read(res.run_dir)
    assert len(res.scores) == len(direct) == 2 * 3 * 2  # 2 prompts x 3 scales x JPEG (in)compressibility
    got = res.scores.set_index(["image_key", "metric"])["value"].sort_index()
    want = direct.set_index(["image_key", "metric"])["value"].sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False)
    # the summary's means are the means of the stored values per scale
    means = direct[~direct.nonfinite].groupby(["metric", "scale"])["value"].mean()
    s = res.summary.set_index(["metric", "scale"])["mean"]
    assert np.allclose(s.loc[means.index].to_numpy(), means.to_numpy())
    again = rlg.run(experiment="tiny", overrides=["debug=fast", f"paths.root={tmp_path}", "name=py",
                                                  f"paths.fixtures={fixture_root}"])
    assert again.meta["generate"]["images_made"] == 0  # the same run directory: resumed, nothing remade
    # issue 30: a smaller work list in that directory would get the whole directory's summary: refused, naming name=
    with pytest.raises(ConfigError, match=r"already holds 4 images outside this call's work list .*name=<another"):
        rlg.run(experiment="tiny", overrides=["debug=fast", f"paths.root={tmp_path}", "name=py",
                                              f"paths.fixtures={fixture_root}", "prompts.max_prompts=1",
                                              "grid.scales=[0,1]"])
    assert len(direct_read(res.run_dir)) == len(direct)  # nothing stored was touched


def test_run_refuses_a_misspelt_key_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="num_inference_steps"):
        rlg.run(experiment="tiny", overrides=["sampler.num_inference_step=3", f"paths.root={tmp_path}"])
    assert not any(tmp_path.iterdir())
