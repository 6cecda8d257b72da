"""stage=report for the measurement kinds (rlg.harness.stages.measured, rlg.harness.findings): the report is
rewritten from the rows the store holds, byte for byte the report stage=all wrote, with no sampling or training
(the measuring functions are replaced by ones that raise); a run directory without the kind's rows is refused
before any work, its rows left as they were. Runs are reduced to seconds: plumbing, not the science."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlg.harness import build, runner, stages
from rlg.harness.api import compose
from rlg.harness.config import ConfigError
from rlg.store import Store, StoreError

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from store_digest import hash_run  # noqa: E402  (the lead's digest: PDF dates and the page's clock line masked)

KL_CLAIM = ["experiment=kl_claim_digits_ddpo", "kl_claim.scales=[1.0,2.0]", "prompts.samples_per_prompt=2",
            "prompts.items=['a handwritten digit 3','a handwritten digit 7']", "kl_claim.n_batches=2",
            "sampler.num_inference_steps=2", "kl_claim.n_boot=5", "kl_claim.analytic.n_per_batch=50",
            "kl_claim.analytic.n_batches=2", "kl_claim.analytic.num_inference_steps=4",
            "kl_claim.analytic.scales=[0.0,1.0]", "tracker=none"]
GROUND_TRUTH = ["experiment=ground_truth", "grid.scales=[0,1,3]", "ground_truth.num_inference_steps=8",
                "ground_truth.n_per_batch=50", "ground_truth.n_batches=2", "tracker=none"]


def _refuse(*_, **__):
    raise AssertionError("stage=report measured again")


def _no_measuring(monkeypatch) -> None:
    """Every measuring function of the kinds raises: stage=report must not reach one."""
    monkeypatch.setattr("rlg.kl_claim.run_kl_claim", _refuse)
    monkeypatch.setattr("rlg.ground_truth.run_ground_truth", _refuse)
    monkeypatch.setattr("rlg.kl_learned.run_learned_truth", _refuse)


def _tables(run: Path) -> dict[str, list[str]]:
    return {t.name: sorted(p.name for p in t.glob("*.parquet")) for t in sorted((run / "rows").iterdir())}


def report_round_trip(overrides: list[str], run: Path, monkeypatch, capsys) -> tuple[dict, dict, str]:
    """Run ``overrides`` with stage=all, keep its report, then stage=report with measuring refused. Returns the
    two invocations' meta entries and what stage=report printed; asserts the reports' digests are equal and the
    stored rows untouched."""
    first = runner.run(compose(*overrides), run_dir=run, overrides=overrides)
    kept = run.parent / f"{run.name}-report-of-stage-all"
    shutil.copytree(run / "report", kept)
    rows = _tables(run)
    capsys.readouterr()
    _no_measuring(monkeypatch)
    again = runner.run(compose(*overrides, "stage=report"), run_dir=run, overrides=[*overrides, "stage=report"])
    printed = capsys.readouterr().out
    assert hash_run(run / "report") == hash_run(kept)  # every file: figures, tables, index.md and index.html
    assert _tables(run) == rows  # no part written or removed
    assert again["stage"] == "report" and again["report"]["rows"] == first["report"]["rows"]
    assert sorted(again["report"]["files"]) == sorted(first["report"]["files"])
    return first, again, printed


def test_kl_claim_report_from_the_stored_rows_is_the_report_of_the_run(tmp_path, monkeypatch, capsys):
    """kl_claim with its analytic part: both tables are read back (df.attrs, dtypes, column and row order survive
    parquet); the metric figure's arrows come from the metric registry (digit_fd's too)."""
    run = tmp_path / "kl"
    report_round_trip(KL_CLAIM, run, monkeypatch, capsys)
    assert _tables(run).keys() == {"ground_truth", "kl_claim"}
    stored = Store(run).last_table("kl_claim")
    assert stored.attrs["settings"]["metrics"] == ["digit_prob:digit_prob", "digit_fd:digit_mahalanobis",
                                                   "jpeg:jpeg_compressibility"]
    from rlg.report.kl_claim import _arrow

    assert [_arrow(m) for m in ("digit_prob", "digit_mahalanobis", "jpeg_compressibility", "digit_fd", "x")] == [
        " ↑", " ↓", " ↑", " ↓", ""]


def test_ground_truth_report_from_the_stored_rows_prints_its_table(tmp_path, monkeypatch, capsys):
    first, again, printed = report_round_trip(GROUND_TRUTH, tmp_path / "gt", monkeypatch, capsys)
    table = (tmp_path / "gt" / "report" / "tables" / "ground_truth.md").read_text()
    assert printed == f"{table}\nReport: {again['report']['index']}\n"  # the headline table, then the page


def test_the_newest_measurement_is_reported_when_a_table_holds_two(tmp_path, monkeypatch, capsys):
    """A run measured twice holds two parts of its table; stage=report reads the last one, as stage=all reported."""
    run = tmp_path / "gt"
    runner.run(compose(*GROUND_TRUTH, "ground_truth.n_batches=3"), run_dir=run)
    first, _, _ = report_round_trip(GROUND_TRUTH, run, monkeypatch, capsys)
    assert len(_tables(run)["ground_truth"]) == 2
    assert len(Store(run).read_table("ground_truth")) > first["report"]["rows"] == len(Store(run).last_table(
        "ground_truth"))


@pytest.mark.parametrize("prepare", ["nothing", "another kind"])
def test_stage_report_without_the_kinds_rows_is_refused_before_any_work(tmp_path, monkeypatch, prepare):
    run = tmp_path / "run"
    if prepare == "another kind":
        runner.run(compose(*GROUND_TRUTH), run_dir=run)
    before = hash_run(run) if run.exists() else None
    _no_measuring(monkeypatch)
    over = [*KL_CLAIM, "stage=report"]
    with pytest.raises(StoreError) as err:
        runner.run(compose(*over), run_dir=run, overrides=over)
    missing = "kl_claim or ground_truth" if prepare == "nothing" else "kl_claim"  # the ground truth's rows are there
    assert str(err.value) == (f"stage=report: {run} holds no {missing} rows of a kind=kl_claim run "
                              "(never measured there, or another kind's run directory). Fix: run it with stage=all "
                              "first (or point name= / paths.root= at the run)")
    after = {k: v for k, v in hash_run(run).items() if k != "meta.json"}  # the failed invocation is recorded
    assert after == ({k: v for k, v in before.items() if k != "meta.json"} if before else {})
    assert Store(run).meta()["invocations"][-1]["error"].startswith("StoreError: stage=report:")


@pytest.mark.parametrize("stage", ["generate", "evaluate"])
def test_a_measurement_has_no_separate_generate_or_evaluate_stage(stage):
    with pytest.raises(ConfigError, match=rf"^stage={stage}: kind=ground_truth has no separate {stage} stage; "
                                          r"stage=all measures and writes the report, stage=report rewrites the "
                                          r"report from the stored rows$"):
        build.build(compose(*GROUND_TRUTH, f"stage={stage}"))


# -- findings: the sub-runs' stores, never a sub-run again ----------------------------------------------------------
FINDINGS = ["experiment=findings_zoo", "findings.pairs=['tiny method=[rlg] report.reward=jpeg_compressibility']",
            "findings.seeds=[0]", "findings.n_resamples=200",
            "prompts.max_prompts=2", "prompts.samples_per_prompt=1", "grid.scales=[0,0.5,1,2]",
            "evaluators.selected=[jpeg]"]


def test_findings_stage_report_reads_the_sub_runs_stores_and_makes_nothing(tmp_path, monkeypatch):
    over = [*FINDINGS, f"paths.root={tmp_path}"]
    run = tmp_path / "f"
    sub = run / "runs" / "tiny-seed0"
    # stage=generate reaches every sub-run and stops there: no scores, no findings to write yet
    runner.run(compose(*over, "stage=generate"), run_dir=run, overrides=[*over, "stage=generate"])
    assert len(Store(sub).images()) == 2 * 4 and not len(Store(sub).scores()) and not (run / "report").exists()
    runner.run(compose(*over), run_dir=run, overrides=over)  # resumes: scores, sub-report, findings
    kept, images = hash_run(run / "report"), Store(sub).images()
    assert len(images) == 2 * 4  # 2 prompts x 4 scales
    monkeypatch.setattr(stages, "generate", _refuse)
    monkeypatch.setattr(stages, "evaluate", _refuse)
    again = [*over, "stage=report"]
    runner.run(compose(*again), run_dir=run, overrides=again)
    assert hash_run(run / "report") == kept
    pd.testing.assert_frame_equal(Store(sub).images(), images)
    assert [i["stage"] for i in Store(sub).meta()["invocations"]] == ["generate", "all", "report"]  # report rewritten
    # without sub-reports the sub-runs are not run at all: the findings read their stores as they are
    runner.run(compose(*again, "findings.sub_reports=false"), run_dir=run, overrides=[*again,
                                                                                      "findings.sub_reports=false"])
    assert hash_run(run / "report") == kept and len(Store(sub).meta()["invocations"]) == 3


def test_findings_stage_report_without_the_sub_runs_is_refused_before_any_work(tmp_path):
    over = [*FINDINGS, f"paths.root={tmp_path}", "stage=report"]
    with pytest.raises(StoreError, match=r"holds no stored images of the sub-run\(s\) tiny-seed0\. Fix: run it with "
                                         r"stage=all first"):
        runner.run(compose(*over), run_dir=tmp_path / "f", overrides=over)
    assert not (tmp_path / "f" / "runs").exists()
