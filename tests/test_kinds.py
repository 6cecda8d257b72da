"""rlg.harness.kinds: a new measurement kind is its own module (settings dataclass, stage, report section), one
registry line and a preset. The toy kind below is all of that, defined here: no file of rlg/ knows it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.runs import one_thread  # noqa: F401  (autouse)


@dataclass
class ToySettings:
    """The toy kind's settings and its config node ``toy_count``: the squares of 0 .. n-1."""

    n: int = 3
    title: str = "Toy count"

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


def toy_stage(job, store) -> dict:
    """The toy kind's stage: its rows into the store's ``toy_count`` table, its report through the kind's section."""
    from rlg.harness.stages import _index, _section, _written

    df = pd.DataFrame({"i": range(job.settings.n), "square": [i * i for i in range(job.settings.n)]})
    store.write_table("toy_count", df)
    files = _written(store, lambda tmp: _section(job)(df, job.settings.title, tmp))
    return {"files": files, "rows": len(df), **_index(store)}


def write_toy_report(df: pd.DataFrame, title: str, out_dir: Path) -> list[Path]:
    """The toy kind's report section: one table, through the shared page skeleton (rlg.report.page)."""
    from rlg.report.page import write_kind_report
    from rlg.report.tables import render_all

    table = render_all(["i", "square"], [[str(i), str(s)] for i, s in zip(df["i"], df["square"])], align="rr")
    return write_kind_report(Path(out_dir), title, {"toy_count": table}, [("Squares", ["toy_count"])])


# the preset and its kind group option, as the built-in kinds have them (rlg/conf/experiment, rlg/conf/kind)
PRESET = """# @package _global_
defaults:
  - override /kind: toy_count
name: toy_run
toy_count:
  n: 3
"""
KIND = """# @package _global_
kind: toy_count
"""


@pytest.fixture
def toy_kind(tmp_path, monkeypatch):
    """The toy kind registered (one call), its preset in a config folder of its own; both gone afterwards.
    Yields the overrides that reach the preset (Hydra's search path) and write under ``tmp_path``."""
    from rlg.harness.config import register_schema
    from rlg.harness.kinds import KINDS, Kind

    monkeypatch.setattr(KINDS, "_entries", dict(KINDS._entries))  # restored afterwards: other tests see no toy
    monkeypatch.setattr(KINDS, "_loaded", dict(KINDS._loaded))
    KINDS.register("toy_count", Kind("toy_count", None, f"{__name__}:toy_stage", f"{__name__}:write_toy_report",
                                     schema=ToySettings))
    conf = tmp_path / "conf"
    for group, text in (("experiment", PRESET), ("kind", KIND)):
        (conf / group).mkdir(parents=True)
        (conf / group / "toy_count.yaml").write_text(text)
    yield [f"hydra.searchpath=[file://{conf}]", f"paths.root={tmp_path / 'runs'}"]
    monkeypatch.undo()
    register_schema()  # Hydra's schema without the toy node again


def test_a_kind_defined_outside_rlg_runs_end_to_end_through_rlg_run(toy_kind, tmp_path):
    import rlg
    from rlg.store import Store

    res = rlg.run(experiment="toy_count", overrides=[*toy_kind, "toy_count.n=4"])
    run = tmp_path / "runs" / "toy_run"
    assert res.run_dir == run and res.meta["kind"] == "toy_count" and res.meta["report"]["rows"] == 4
    rows = Store(run).read_table("toy_count").drop(columns="written_ns")  # the store stamps each row
    assert rows.to_dict("list") == {"i": [0, 1, 2, 3], "square": [0, 1, 4, 9]}
    page = (run / "report" / "index.md").read_text()
    assert page.startswith("# Toy count\n") and "## Squares" in page
    assert "| 0 | 0 |\n| 1 | 1 |\n| 2 | 4 |\n| 3 | 9 |" in page
    assert res.report == run / "report" / "index.html" and "<h1>Toy count</h1>" in res.report.read_text()
    assert (run / "report" / "tables" / "toy_count.tex").is_file()


def test_a_new_kinds_node_is_checked_as_the_built_in_kinds_nodes_are(toy_kind):
    from rlg.harness.api import job
    from rlg.harness.config import ConfigError

    assert job("experiment=toy_count", *toy_kind, "toy_count.n=2").settings == ToySettings(n=2)

    def refusal(*overrides: str) -> str:
        with pytest.raises(ConfigError) as err:
            job(*overrides)
        return str(err.value)

    built_in = refusal("experiment=kl_claim_digits_ddpo", "kl_claim.betaa=2")
    toy = refusal("experiment=toy_count", *toy_kind, "toy_count.nn=2")
    assert "\n" not in toy and toy == built_in.replace("kl_claim.betaa", "toy_count.nn").replace("kl_claim.beta",
                                                                                                "toy_count.n")
    assert refusal("experiment=toy_count", *toy_kind, "toy_count.n=0") == "toy_count: n must be >= 1, got 0"
    assert refusal("experiment=toy_count", *toy_kind, "kind=images").startswith(
        "toy_count settings are given but kind=images; they would have no effect")
    assert refusal("experiment=tiny", *toy_kind, "kind=toy_count").startswith(
        "kind=toy_count needs its toy_count settings")


def test_a_kind_declares_its_node_and_schema_together():
    from rlg.harness.kinds import Kind

    with pytest.raises(ValueError, match="node and schema come together"):
        Kind("toy_count", None, "m:stage", "m:report")
