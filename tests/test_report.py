"""The report layer on a synthetic store with known values: tables, intervals, win rates, exclusions,
Pareto fronts, figures and anchors. No model, no GPU; a few seconds on one core."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rlg.report import figures, tables
from rlg.report.anchors import anchors_by_key, compare_protocol, load_anchors
from rlg.report.report import write_report
from rlg.report.stats import summarize

# Module fixtures build shared runs once per process: under pytest-xdist this file stays on one worker.
pytestmark = pytest.mark.xdist_group("test_report")

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
SD35 = "stabilityai/stable-diffusion-3.5-medium"
# As evaluators/geneval writes it for the upstream mmdet back-end.
GENEVAL_VERSION = ("geneval/djghosh13/geneval@af4902f/mmdet:mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth/"
                   "clip:ViT-L-14:openai/thr0.3/count0.9/max16/nms1.0/pos0.1/bg#999/float32")
PROTOCOL = {
    "steps": 20, "cfg": 4.5, "resolution": 512, "ocr_engine": "easyocr",
    "pairs": {"sd35m_pickscore": {"base": SD35, "rl": "jieliu/SD3.5M-FlowGRPO-PickScore"},
              "sd35m_geneval": {"base": SD35, "rl": "jieliu/SD3.5M-FlowGRPO-GenEval"}},
}


def _png(path: Path, scale: float) -> str:
    shade = int(min(255, 40 * scale + 30))
    Image.new("RGB", (32, 32), (shade, 90, 255 - shade)).save(path)
    return str(path)


def _image(root, run, exp, pair, p, s, w, tag=None, nonfinite=False):
    key = f"{run}-{p}-{s}-{w:g}"
    return {"run_id": run, "run_name": exp, "pair": pair, "prompt_id": p, "prompt": f"a photo of thing number {p}",
            "sample": s, "seed": 1000 + 10 * p + s, "scale": w, "image_key": key,
            "image_path": _png(root / f"{key}.png", w), "nonfinite": nonfinite, "tag": tag}


def _score(key, evaluator, metric, value, higher=True, error=None, version="v1"):
    return {"image_key": key, "evaluator": evaluator, "version": version, "metric": metric, "value": value,
            "higher_is_better": higher, "error": error}


def pickscore_value(p, s, w):
    # Offsets -0.3, -0.1, +0.1, +0.3, ... around 20 + w; a definite value for every image.
    return 20.0 + w + 0.2 * ((p * 2 + s) % 4) - 0.3


def ocr_value(p, s, w):
    return min(1.0, 0.2 + 0.1 * w + 0.05 * p)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs of one pair (r2 has fewer scales), and a GenEval run with tags."""
    root = tmp_path_factory.mktemp("store")
    images, scores = [], []
    scales = {"r1": [0.0, 0.5, 1.0, 1.5, 2.0], "r2": [0.0, 1.0, 2.0]}
    for run, ws in scales.items():
        for p in range(6):
            for s in range(2):
                for w in ws:
                    nonfinite = run == "r1" and (p, s, w) == (0, 0, 2.0)
                    row = _image(root, run, "pickscore", "sd35m_pickscore", p, s, w, nonfinite=nonfinite)
                    images.append(row)
                    k = row["image_key"]
                    failed = run == "r1" and (p, s, w) == (1, 1, 1.5)
                    # The nonfinite image carries an absurd score: it must never reach a mean.
                    value = 1000.0 if nonfinite else (np.nan if failed else pickscore_value(p, s, w))
                    scores.append(_score(k, "pickscore", "pickscore", value, error="RuntimeError: boom" if failed else None))
                    if not (run == "r1" and (p, s, w) == (5, 1, 2.0)):  # not yet scored by OCR
                        scores.append(_score(k, "ocr", "ocr_accuracy", ocr_value(p, s, w), version="easyocr-1.7"))
    for p in range(12):
        for s in range(2):
            for w in (0.0, 1.0, 2.0):
                row = _image(root, "g1", "geneval", "sd35m_geneval", 100 + p, s, w, tag=TAGS[p // 2])
                images.append(row)
                correct = float((p + s + int(w)) % 3 != 0)
                scores.append(_score(row["image_key"], "geneval", "geneval_correct", correct,
                                     version=GENEVAL_VERSION))
    return pd.DataFrame(images), pd.DataFrame(scores)


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    images, scores = store
    out = tmp_path_factory.mktemp("report")
    result = write_report(images, scores, out, protocol=PROTOCOL, grid_prompts=4, n_resamples=200)
    return out, result


def _md_rows(text: str) -> list[list[str]]:
    lines = [l for l in text.splitlines() if l.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", l)[1:-1]] for l in lines]


def _md_table(text: str) -> pd.DataFrame:
    rows = _md_rows(text)
    return pd.DataFrame(rows[2:], columns=rows[0])


# --- means, exclusions, counts -------------------------------------------------------------------

def expected_pickscore_mean(run, w):
    vals = [pickscore_value(p, s, w) for p in range(6) for s in range(2)
            if not (run == "r1" and (p, s, w) in {(0, 0, 2.0), (1, 1, 1.5)})]
    return sum(vals) / len(vals), len(vals)


def test_tables_contain_the_exact_means(report):
    out, _ = report
    md = _md_table((out / "tables" / "metrics_pickscore.md").read_text())
    tex = (out / "tables" / "metrics_pickscore.tex").read_text()
    for run, ws in {"r1": [0, 0.5, 1, 1.5, 2], "r2": [0, 1, 2]}.items():
        for w in ws:
            mean, n = expected_pickscore_mean(run, w)
            row = md[(md["run"] == run) & md["metric"].str.startswith("PickScore [pickscore]") & md["w"].str.match(f"{w:g}( |$)")]
            assert len(row) == 1
            assert row["mean"].iloc[0] == f"{mean:.2f}"  # ~4 significant digits for values near 21
            assert row["n (prompts)"].iloc[0].startswith(f"{n} (")
            assert f"& {mean:.2f} &" in tex
    csv = pd.read_csv(out / "tables" / "summary.csv")
    r = csv[(csv.run_id == "r1") & (csv.metric == "pickscore") & (csv.scale == 2.0)].iloc[0]
    assert r["mean"] == pytest.approx(expected_pickscore_mean("r1", 2.0)[0], abs=1e-12)


def test_nonfinite_and_failed_images_are_excluded_and_counted(store, report):
    images, scores = store
    s = summarize(images, scores, n_resamples=50)
    ps = s[(s.run_id == "r1") & (s.metric == "pickscore")].set_index("scale")
    assert (ps.loc[2.0, "n"], ps.loc[2.0, "n_nonfinite"], ps.loc[2.0, "n_failed"]) == (11, 1, 0)
    assert (ps.loc[1.5, "n"], ps.loc[1.5, "n_nonfinite"], ps.loc[1.5, "n_failed"]) == (11, 0, 1)
    assert ps.loc[2.0, "mean"] < 100  # the 1000 of the nonfinite image stayed out
    ocr = s[(s.run_id == "r1") & (s.metric == "ocr_accuracy")].set_index("scale")
    assert (ocr.loc[2.0, "n"], ocr.loc[2.0, "n_nonfinite"], ocr.loc[2.0, "n_unscored"]) == (10, 1, 1)
    md = _md_table((report[0] / "tables" / "metrics_pickscore.md").read_text())
    cell = lambda metric, w: md[(md.run == "r1") & md.metric.str.contains(f"[{metric}]", regex=False) & md.w.str.match(f"{w}( |$)")]["excluded"].iloc[0]
    assert cell("pickscore", "2") == "1 nonfinite"
    assert cell("pickscore", "1.5") == "1 failed"
    assert cell("ocr_accuracy", "2") == "1 nonfinite, 1 unscored"
    assert cell("pickscore", "0") == "0"
    assert any("not yet scored" in n for n in report[1]["notes"])


def test_geneval_overall_is_the_mean_of_tag_accuracies(store, report):
    images, scores = store
    s = summarize(images, scores, n_resamples=50)
    for w in (0.0, 1.0, 2.0):
        per_tag = [np.mean([float((p + smp + int(w)) % 3 != 0) for p in (2 * t, 2 * t + 1) for smp in (0, 1)])
                   for t in range(6)]
        got = s[(s.metric == "geneval_overall") & (s.scale == w)]["mean"].iloc[0]
        assert got == pytest.approx(np.mean(per_tag), abs=1e-12)
    geneval_md = _md_table((report[0] / "tables" / "geneval_tags.md").read_text())
    assert list(geneval_md.columns[1:7]) == TAGS


# --- figures (the bootstrap, win rate and Pareto front: tests/test_report_stats.py) --------------- ------------------------------------------------------------------------------------

def test_every_figure_is_a_valid_image_of_the_expected_size(report, store):
    out, result = report
    names = {p.name for p in result["files"]}
    stems = ["scale_pickscore", "scale_ocr_accuracy", "scale_geneval_correct", "scale_geneval_overall",
             "tradeoff_ocr_accuracy__pickscore", "geneval_tags_geneval_sd35m_geneval_g1",
             "grid_pickscore_sd35m_pickscore_r1", "grid_pickscore_sd35m_pickscore_r2", "grid_geneval_sd35m_geneval_g1"]
    for stem in stems:
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    size = lambda w, h: (round(w * figures.DPI), round(h * figures.DPI))
    expected = {"scale": size(*figures.SIZES["scale"]), "tradeoff": size(*figures.SIZES["tradeoff"]),
                "geneval": size(*figures.SIZES["geneval"])}
    assert expected["scale"] == (990, 690)
    pngs = [p for p in result["files"] if p.suffix == ".png"]
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            kind = p.name.split("_")[0]
            if kind == "grid":
                n_cols = 5 if p.name.endswith("r1.png") else 3
                # 4 prompts x 2 samples (write_report's grid_samples=2; every prompt has 2); a footer when the
                # series has more prompts than the 4 shown
                images, _ = store
                more = images[images.run_id == p.stem.rsplit("_", 1)[-1]]["prompt_id"].nunique() > 4
                assert im.size == size(*figures.grid_figsize(8, n_cols, footer=more)), p.name
                assert im.size[0] == 990
            else:
                assert im.size == expected[kind], p.name
    for p in result["files"]:
        if p.suffix == ".pdf":
            assert p.read_bytes()[:5] == b"%PDF-" and p.stat().st_size > 1000


def test_grid_rows_share_noise_and_order_columns_by_scale(store):
    images, _ = store
    r1 = images[images.run_id == "r1"]
    rows = figures.choose_grid_rows(r1, n_prompts=3)
    assert rows["prompt_id"].tolist() == [0, 1, 2]
    assert (rows["n_scales"] == 5).all()  # complete rows: every scale from the same (sample, seed)
    both = figures.choose_grid_rows(r1, n_prompts=2, samples=5)  # every sample row of each prompt
    assert list(zip(both.prompt_id, both["sample"])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    picked = figures.choose_grid_rows(r1, prompt_ids=[3, 1], samples=1)
    assert list(zip(picked.prompt_id, picked["sample"])) == [(3, 0), (1, 0)]


def test_every_grid_row_is_labelled_with_its_own_noise_seed(store, tmp_path, monkeypatch):
    from rlg.sampling import noise_seed  # the generator's own seed function

    images, _ = store
    r2 = images[images.run_id == "r2"]
    texts, real = [], figures.Figure.text

    def spy(fig, x, y, s, *args, **kwargs):
        texts.append(str(s))
        return real(fig, x, y, s, *args, **kwargs)

    monkeypatch.setattr(figures.Figure, "text", spy)
    figures.plot_image_grid(r2, tmp_path / "grid", n_prompts=2, samples=1, formats=("png",))
    seed = {p: int(r2[(r2.prompt_id == p) & (r2["sample"] == 0)].seed.iloc[0]) for p in (0, 1)}  # the row's seed
    rows = [t[t.index("(sample"):] for t in texts if "noise seed" in t]
    assert rows == [f"(sample 0, noise seed {noise_seed(seed[p], p, 0)})" for p in (0, 1)]
    n = r2["prompt_id"].nunique()
    assert n > 2 and f"2 of {n} prompts, 1 of 2 samples per prompt shown; every image: images.html" in texts


# --- tables -------------------------------------------------------------------------------------

def _check_markdown(text: str):
    rows = _md_rows(text)
    assert len(rows) >= 3
    widths = {len(r) for r in rows}
    assert len(widths) == 1
    assert all(re.fullmatch(r":?-+:?", c) for c in rows[1])


def _check_latex(text: str):
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text).group(1)
    body = text.split(r"\toprule")[1].split(r"\bottomrule")[0]
    rows = [l for l in body.splitlines() if l.strip() and not l.strip().startswith(r"\midrule")]
    assert rows
    for line in rows:
        assert line.endswith(r"\\")
        assert len(re.findall(r"(?<!\\)&", line)) == len(spec) - 1, line
        assert not re.search(r"(?<!\\)[_%#]", line), line
        assert line.count("$") % 2 == 0


def test_markdown_and_latex_tables_are_well_formed(report):
    out, _ = report
    written = sorted(p.stem for p in (out / "tables").glob("*.md"))
    assert written == ["anchors", "geneval_tags", "metrics_geneval", "metrics_pickscore"]
    for name in written:
        _check_markdown((out / "tables" / f"{name}.md").read_text())
        _check_latex((out / "tables" / f"{name}.tex").read_text())


# --- anchors ------------------------------------------------------------------------------------

def test_anchors_load_with_the_published_numbers():
    anchors = load_anchors()
    by_key = anchors_by_key(anchors)
    assert len(by_key) == len(anchors)
    expect = {
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "geneval_overall"): 0.43,
        ("stabilityai/stable-diffusion-xl-base-1.0", "geneval_overall"): 0.55,
        (SD35, "geneval_overall"): 0.63, ("jieliu/SD3.5M-FlowGRPO-GenEval", "geneval_overall"): 0.95,
        (SD35, "ocr_accuracy"): 0.59, ("jieliu/SD3.5M-FlowGRPO-Text", "ocr_accuracy"): 0.92,
    }
    got = {(a.model, a.metric): a.value for a in anchors if not a.metric.startswith("hps")}
    assert got == expect
    hps = {(a.model, a.metric): a.value for a in anchors if a.metric.startswith("hps")}
    assert hps == {("CompVis/stable-diffusion-v1-4", "hps_v2.0"): 26.95, ("CompVis/stable-diffusion-v1-4", "hps_v2.1"): 25.35,
                   ("stabilityai/stable-diffusion-xl-base-0.9", "hps_v2.0"): 27.73,
                   ("stabilityai/stable-diffusion-xl-base-0.9", "hps_v2.1"): 30.63}
    assert all(a.source for a in anchors)
    ocr = by_key[(SD35, "ocr_accuracy", "flow_grpo-ocr")]
    assert ocr.protocol["steps"] == 40 and ocr.protocol["ocr_engine"] == "paddleocr"


def test_protocol_mismatch_marks_not_comparable():
    ocr = anchors_by_key(load_anchors())[(SD35, "ocr_accuracy", "flow_grpo-ocr")]
    status, diffs, _ = compare_protocol(ocr, {"steps": 20, "cfg": 4.5, "resolution": 512, "ocr_engine": "easyocr"})
    assert status == "not comparable"
    assert any(d.startswith("steps: 20 vs 40") for d in diffs) and any(d.startswith("ocr_engine: easyocr") for d in diffs)
    ok = {"num_inference_steps": 40, "guidance_scale": 4.5, "resolution": "512x512", "ocr_engine": "PaddleOCR 2.9.1"}
    assert compare_protocol(ocr, ok)[0] == "comparable"
    status, _, unverified = compare_protocol(ocr, {"steps": 40})
    assert status == "unverified" and set(unverified) == {"cfg", "resolution", "ocr_engine"}
    # Engine, detector back-end and HPS version can also come from the evaluator's version string.
    easy = "ocr/flow_grpo_accuracy/easyocr-1.7.2+weights-1.0"
    assert compare_protocol(ocr, {**ok, "ocr_engine": None, "evaluator_versions": {"ocr": easy}})[0] == "not comparable"
    by_key = anchors_by_key(load_anchors())
    geneval = by_key[("jieliu/SD3.5M-FlowGRPO-GenEval", "geneval_overall", "geneval-mask2former")]
    run = {"steps": 40, "cfg": 4.5, "resolution": 512, "prompts": 553, "samples_per_prompt": 4}
    assert compare_protocol(geneval, {**run, "evaluator_versions": {"geneval": GENEVAL_VERSION}})[0] == "comparable"
    hf = GENEVAL_VERSION.replace("mmdet:mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth", "hf:facebook/mask2former-swin-small-coco-instance@main")
    status, diffs, _ = compare_protocol(geneval, {**run, "evaluator_versions": {"geneval": hf}})
    assert status == "not comparable" and diffs[0].startswith("geneval_detector")
    hps20 = by_key[("CompVis/stable-diffusion-v1-4", "hps_v2.0", "hpsv2.0-x100")]
    v21 = {"evaluator_versions": {"hps": "hps/v2.1/100*cos/ViT-H-14/ckpt-sha256:0123456789ab/longest-resize-pad-aa/fp32"}}
    status, diffs, _ = compare_protocol(hps20, v21)
    assert status == "not comparable" and [d.split(":")[0] for d in diffs] == ["hps_version"]
    assert compare_protocol(hps20, {"hps_version": "v2.0", "hps_scale": "100*cos"})[0] == "comparable"


def test_report_places_anchors_next_to_ours(report):
    out, _ = report
    rows = pd.read_csv(out / "tables" / "anchors.csv")
    ocr = rows[(rows.anchor == "ocr_sd35m") & (rows.run_id == "r1")].iloc[0]
    assert ocr["scale"] == 0.0 and ocr["published"] == 0.59
    assert ocr["difference"] == pytest.approx(ocr["ours"] - 0.59)
    assert "not comparable" in ocr["comparability"] and "steps: 20 vs 40" in ocr["comparability"]
    assert "ocr_engine: easyocr vs paddleocr" in ocr["comparability"]
    g = rows[rows.anchor == "geneval_flowgrpo"].iloc[0]
    assert g["scale"] == 1.0 and "prompts: 12 vs 553" in g["comparability"]
    assert "geneval_detector" not in g["comparability"]  # matched through the evaluator version string
    assert "geneval_thresholds" not in g["comparability"]
    md = _md_table((out / "tables" / "anchors.md").read_text())
    assert md["comparability"].str.startswith("not comparable").all()


# --- partial and multiple runs ------------------------------------------------------------------

def test_partial_results_and_several_runs(store, tmp_path):
    images, scores = store
    keep = images[(images.run_id == "r2") & (images.scale <= 1.0)]
    only = scores[scores.image_key.isin(keep.image_key) & (scores.metric == "pickscore")]
    result = write_report(keep, only, tmp_path, anchors=[], grid_prompts=2, n_resamples=50, formats=("png",))
    s = pd.DataFrame(result["summary"])
    assert set(s["scale"]) == {0.0, 1.0} and set(s["metric"]) == {"pickscore"}
    assert (s["n"] == 12).all()
    # Nothing scored yet: grids and an empty summary, no crash.
    empty = write_report(keep, None, tmp_path / "empty", anchors=[], grid_prompts=2, formats=("png",))
    assert empty["summary"] == [] and any(p.name.startswith("grid_") for p in empty["files"])
    both = summarize(images, scores, n_resamples=50)
    assert set(both[both.metric == "pickscore"]["run_id"]) == {"r1", "r2"}


# --- one page to open ---------------------------------------------------------------------------

def test_index_md_and_self_contained_html(report):
    import base64
    import html as html_lib

    out, result = report
    assert result["index"] == out / "index.md" and result["index_html"] == out / "index.html"
    md, page = (out / "index.md").read_text(), (out / "index.html").read_text()
    for anchor in ("protocol", "results", "figures", "anchors", "geneval"):
        assert f'<a id="{anchor}"></a>' in md and f'id="{anchor}"' in page and f"(#{anchor})" in md
    # the main table of each experiment, with the exact means, intervals and win rates of its table file
    for name in ("pickscore", "geneval"):
        table = (out / "tables" / f"metrics_{name}.md").read_text()
        body = [l for l in table.splitlines() if l.startswith("|")]
        assert "\n".join(body) in md
    mean, n = expected_pickscore_mean("r1", 1.0)
    assert f"| {mean:.2f} |" in md and f">{mean:.2f}<" in page
    # protocol per series: what the caller gave and what the store tells, each under its series
    proto = md[md.index("## Protocol"):md.index("## Results")]
    assert proto.count("### ") == 3  # r1, r2, g1
    assert "| rl | jieliu/SD3.5M-FlowGRPO-GenEval |" in proto and "| steps | 20 |" in proto
    assert "| prompts | 12 |" in proto.split("### geneval")[1]
    # figures: linked in the .md, embedded (and byte-identical) in the .html, no external reference
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert linked and all((out / rel).is_file() for rel in linked)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == len(linked) and all(s.startswith("data:image/png;base64,") for s in srcs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert embedded == {(out / rel).read_bytes() for rel in linked}
    assert not re.search(r'(src|href)="(?!data:|#|tables/|figures/|images.html")', page)
    assert html_lib.unescape(page).count("<table>") >= 5


def test_anchor_table_is_not_written_when_nothing_matches(store, tmp_path):
    images, scores = store
    keep = images[images.run_id == "r2"]
    result = write_report(keep, scores[scores.image_key.isin(keep.image_key)], tmp_path, anchors=load_anchors(),
                          protocol={"pairs": {"sd35m_pickscore": {"base": "someone/else", "rl": "x/y"}}},
                          grid_prompts=0, n_resamples=20, formats=("png",))
    assert not (tmp_path / "tables" / "anchors.md").exists()
    assert "## Published anchors" not in result["index"].read_text()


def test_tradeoff_labels_sit_on_their_own_points(monkeypatch):
    """The quickstart's case: w = 0 and 0.5 a few pixels apart at the top of the axes, w = 1 just below them. A label
    offset sideways read as the neighbour's ("0" over w = 0.5): each label is centred on its own point's x, straight
    above or below it, covers no other point's marker and no other label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Annotation

    pts = {0.0: (1.0792, 1.0), 0.5: (1.0797, 1.0), 1.0: (1.0806, 0.9875), 2.0: (1.086, 0.9875), 3.0: (1.092, 0.9125)}
    rows = [dict(run_name="q", pair="p", run_id="r", config_id="c", scale=w, metric=metric, higher_is_better=True,
                 mean=v, lo=v - 0.001, hi=v + 0.001, n=80)
            for w, (x, y) in pts.items() for metric, v in (("jpeg_incompressibility", x), ("digit_correct", y))]
    seen = []
    monkeypatch.setattr(figures, "save", lambda fig, stem, formats=(): seen.append(fig) or [])
    figures.plot_tradeoff(pd.DataFrame(rows), "jpeg_incompressibility", "digit_correct", Path("unused"))
    fig = seen[0]
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    labels = {float(a.get_text()): a for a in ax.texts if isinstance(a, Annotation)}
    assert sorted(labels) == sorted(pts)
    where = {w: ax.transData.transform(xy) for w, xy in pts.items()}
    marker = 3 * fig.dpi / 72  # a marker's radius (s=16 points^2) in pixels, rounded up
    boxes = {w: a.get_window_extent(renderer) for w, a in labels.items()}
    for w, box in boxes.items():
        px, py = where[w]
        assert abs((box.x0 + box.x1) / 2 - px) < 1, f"label {w:g} is not centred on its point"
        assert box.y0 >= py or box.y1 <= py, f"label {w:g} is not above or below its point"
        for other, (ox, oy) in where.items():
            inside = box.x0 - marker < ox < box.x1 + marker and box.y0 - marker < oy < box.y1 + marker
            assert other == w or not inside, f"label {w:g} covers the point of w = {other:g}"
    assert not [(a, b) for a in boxes for b in boxes if a < b and boxes[a].overlaps(boxes[b])]


def test_figures_say_rlg_scale_w_and_readable_metric_names(store, monkeypatch, tmp_path):
    import rlg.evaluators.ocr  # noqa: F401  (labels are each metric's own declaration, registered on import)
    import rlg.evaluators.pickscore  # noqa: F401

    images, scores = store
    summary = summarize(images, scores, n_resamples=20)
    seen = []
    monkeypatch.setattr(figures, "save", lambda fig, stem, formats=(): seen.append(fig) or [])
    figures.plot_metric_vs_scale(summary, "pickscore", tmp_path / "a")
    figures.plot_tradeoff(summary, "ocr_accuracy", "pickscore", tmp_path / "b")
    (scale_ax,), (trade_ax,) = seen[0].axes, seen[1].axes
    assert scale_ax.get_xlabel() == "RLG scale w" and scale_ax.get_ylabel() == "PickScore ↑"
    assert trade_ax.get_xlabel() == "OCR accuracy ↑" and "RLG scale w" in trade_ax.get_title()
    import rlg.evaluators.hps  # noqa: F401  (its module declares the hps metrics)

    assert figures.metric_label("hps_v2.1") == "HPSv2.1" and figures.metric_label("new_metric") == "new_metric"
    assert figures.metric_label("pickscore (v2)") == "PickScore (v2)"


def test_html_tables_escape_and_align():
    text = tables.render(["a", "b"], [["<x>", "1"], ["y", "2"]], "html", "lr", notes=["n & m"], groups=[1])
    assert '<p class="note">n &amp; m</p>' in text and "&lt;x&gt;" in text
    assert '<td style="text-align:right">1</td>' in text and '<tr class="group">' in text


# --- the first screen: headline, image browser, screenshot ------------------------------------------

def test_headline_reads_its_numbers_from_the_summary(store):
    from rlg.metrics import RewardError, pick_reward
    from rlg.report.headline import MIN_PROMPTS, headlines

    images, scores = store
    s = summarize(images, scores, n_resamples=50)
    heads = {h.series[2]: h for h in headlines(s, "pickscore")}
    h = heads["r1"]
    for point, w in ((h.base, 0.0), (h.rl, 1.0), (h.best, 2.0)):  # pickscore rises with w: best is the largest
        assert point.scale == w and point.mean == pytest.approx(expected_pickscore_mean("r1", w)[0], abs=1e-12)
    r = s[(s.run_id == "r1") & (s.metric == "pickscore") & (s.scale == 2.0)].iloc[0]
    assert h.step["scale"] == 2.0 and h.step["delta"] == r["delta"] and h.step["win_rate"] == r["win_rate"]
    ocr = next(c for c in h.costs if c.metric == "ocr_accuracy")  # 0.2 + 0.1 w: better at w=2 than at 1
    assert ocr.verdict == "better" and ocr.delta == pytest.approx(0.1, abs=1e-9)
    assert h.n_prompts == 6 < MIN_PROMPTS and "6 prompt(s)" in h.caution
    assert f"w=2 vs w=1: {r['delta']:+.2f}" in h.sentence and "(11 images per scale, 6 prompts)" in h.sentence
    assert pick_reward(["pickscore", "ocr_accuracy", "jpeg_compressibility"]) == "ocr_accuracy"
    with pytest.raises(RewardError, match=r"report.reward='hps_v2.1' is not a metric of this run.*ocr_accuracy, pickscore"):
        pick_reward(["pickscore", "ocr_accuracy"], "hps_v2.1")


def test_image_browser_holds_every_image_with_its_scores(report, store):
    import json

    from rlg.report.stats import tidy

    out, _ = report
    images, scores = store
    page = (out / "images.html").read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    cells = {(r["series"], r["prompt_id"], r["sample"], w): c for r in data["rows"] for w, c in r["cells"].items()}
    assert len(cells) == len(images)  # every image once
    assert not re.search(r'(src|href)="https?:', page)  # offline: no network reference
    df = tidy(images, scores)
    for row in df.sample(40, random_state=0).itertuples():
        c = next(c for (_, p, smp, w), c in cells.items()
                 if p == row.prompt_id and smp == row.sample and float(w) == row.scale
                 and c["src"].endswith(f"{row.image_key}.png"))
        expected = row.value if np.isfinite(row.value) else None
        assert c["scores"][row.metric] == (pytest.approx(expected) if expected is not None else None)
        assert (out / c["src"]).resolve() == Path(row.image_path).resolve()


def test_first_screen_shows_the_headline_in_a_real_browser(report):
    """What a reader sees first (1400x900 in headless Chromium): the headline box and its caution."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from report_screenshot import find_browser, screenshot

    if find_browser() is None:
        pytest.skip("no Chromium/Chrome on PATH: apt-get install chromium (benchmarks/report_screenshot.py)")
    out, _ = report
    png = screenshot(out / "index.html", out / "first_screen.png", (1400, 900))
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in np.unique(pixels, axis=0)}
    assert (246, 248, 250) in colours  # the headline box (.headline background)
    assert (255, 244, 224) in colours  # the caution (6 prompts < 20)


def test_an_unscored_reward_is_named_and_the_headline_picks_by_name(store, tmp_path):
    images, scores = store
    keep = images[images.run_id == "r2"]
    result = write_report(keep, scores[scores.image_key.isin(keep.image_key)], tmp_path, anchors=[],
                          grid_prompts=0, n_resamples=20, formats=("png",), reward="hps_v2.1")
    assert result["reward"] == "ocr_accuracy" and result["headlines"][0].startswith("OCR accuracy is")
    page = (tmp_path / "index.md").read_text()
    assert "report.reward=hps_v2.1 was not scored in this run, so the run's reward is ocr_accuracy" in page


def test_pixel_diversity_is_the_mean_pairwise_rms_distance_of_a_prompts_samples(tmp_path):
    from rlg.report.headline import pixel_diversity

    rows = []
    for w, shades in ((0.0, (0, 255, 255)), (1.0, (100, 100, 100))):  # w=0: pairs at distance 1, 1, 0
        for s, shade in enumerate(shades):
            path = tmp_path / f"{w}-{s}.png"
            Image.new("RGB", (40, 40), (shade,) * 3).save(path)
            rows.append({"image_key": f"{w}-{s}", "prompt_id": 0, "sample": s, "seed": 1, "scale": w,
                         "image_path": str(path), "run_name": "r", "pair": "p"})
    rows.append({**rows[0], "image_key": "lone", "prompt_id": 1})  # one sample: no pair, left out
    d = pixel_diversity(pd.DataFrame(rows)).set_index("scale")
    assert d.loc[0.0, "diversity"] == pytest.approx(2 / 3) and d.loc[1.0, "diversity"] == 0.0
    assert (d["n_prompts"] == 1).all()


# --- the headline's edge cases: it says what is missing, never "w=1 vs w=1" -------------------------------

def _summary(points, metric="pickscore", higher=True, run="r1", n=40):
    """A summary frame as rlg.report.stats.summarize writes it, from (scale, mean, delta, lo, hi, win rate)."""
    return pd.DataFrame([{"run_name": "e", "pair": "p", "run_id": run, "config_id": "c", "metric": metric,
                          "higher_is_better": higher, "scale": w, "mean": m, "lo": m - 0.01, "hi": m + 0.01,
                          "delta": d, "delta_lo": lo, "delta_hi": hi, "win_rate": win, "n_pairs": n, "n": n,
                          "n_prompts": n} for w, m, d, lo, hi, win in points])


def test_headline_when_the_rl_model_is_the_best_scale():
    from rlg.report.headline import headlines
    from rlg.report.report import _headline_rows

    nan = float("nan")
    s = _summary([(0, 0.30, -0.20, -0.25, -0.15, 0.1), (1, 0.50, nan, nan, nan, nan),
                  (2, 0.45, -0.05, -0.08, -0.02, 0.3)])
    (h,) = headlines(s, "pickscore")
    assert h.sentence == ("PickScore is 0.3000 for the base model (w=0) and 0.5000 for the RL model (w=1); no other "
                          "scale beats the RL model; w=2 vs w=1: -0.0500 [-0.0800, -0.0200], better on 30% of paired "
                          "images (40 images per scale, 40 prompts).")
    header, rows = _headline_rows(h)
    assert header == ["metric", "w=0 (base)", "w=1 (RL, best reward)"] and "w=1 vs w=1" not in str(rows)
    assert rows == [["PickScore [pickscore]: reward (higher is better)", "0.3000", "0.5000"]]


def test_headline_with_one_scale_or_without_w1():
    from rlg.report.headline import headlines

    nan = float("nan")
    (one,) = headlines(_summary([(1.5, 0.42, nan, nan, nan, nan)]), "pickscore")
    assert one.sentence == ("Only one scale was run: PickScore is 0.4200 at w=1.5; what RLG does needs w=0, w=1 and "
                            "the scales to compare, e.g. grid.scales=[0,1,1.5,2] (40 images per scale, 40 prompts).")
    (rl,) = headlines(_summary([(1, 0.42, nan, nan, nan, nan)]), "pickscore")
    assert rl.sentence.startswith("Only one scale was run: PickScore is 0.4200 at w=1 (the RL model); ")
    (no_rl,) = headlines(_summary([(0, 0.30, nan, nan, nan, nan), (2, 0.45, nan, nan, nan, nan)]), "pickscore")
    assert no_rl.sentence == ("PickScore is 0.3000 for the base model (w=0); the RL model (w=1) was not run; the best "
                              "RLG scale is w=2 (0.4500). Without w=1 there is no paired comparison with the RL model: "
                              "add 1 to grid.scales (40 images per scale, 40 prompts).")
    (neither,) = headlines(_summary([(1.5, 0.40, nan, nan, nan, nan), (2, 0.45, nan, nan, nan, nan)]), "pickscore")
    assert neither.sentence.startswith("PickScore was scored at w=1.5, 2 only (neither the base model, w=0, nor the "
                                       "RL model, w=1); the best RLG scale is w=2 (0.4500). Without w=1")


def test_headline_names_a_missing_reward_and_a_run_without_scores(store, tmp_path):
    from rlg.report.headline import headlines
    from rlg.report.report import NOTHING_SCORED

    nan = float("nan")
    s = pd.concat([_summary([(0, 0.3, nan, nan, nan, nan), (1, 0.5, nan, nan, nan, nan)], run="r1"),
                   _summary([(0, 1.2, nan, nan, nan, nan), (1, 1.1, nan, nan, nan, nan)], "jpeg_incompressibility",
                            run="r2")])
    by_run = {h.series[2]: h for h in headlines(s, "pickscore")}
    assert by_run["r2"].best is None and by_run["r2"].sentence == (
        "PickScore, the reward, has no scored image in this series, so there is no headline: run stage=evaluate "
        "with the evaluator that scores it, or name another metric with report.reward.")
    images, _ = store
    keep = images[images.run_id == "r2"]
    result = write_report(keep, None, tmp_path, anchors=[], grid_prompts=0, n_resamples=20, formats=("png",))
    assert result["headlines"] == [NOTHING_SCORED]
    page = (tmp_path / "index.md").read_text()
    assert page.index("What RLG did here") < page.index(NOTHING_SCORED)
