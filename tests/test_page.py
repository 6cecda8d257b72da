"""The one report skeleton (rlg.report.page): a measurement kind's tables and its index.md / index.html."""

from __future__ import annotations

import base64

from PIL import Image

from rlg.report.page import Page, write_kind_report
from rlg.report.tables import FORMATS, render


def test_write_kind_report_writes_tables_and_one_page_in_both_forms(tmp_path):
    (tmp_path / "figures").mkdir()
    png = tmp_path / "figures" / "reward_vs_w.png"
    Image.new("RGB", (2, 2), (255, 0, 0)).save(png)
    table = {fmt: render(["w", "reward"], [["1", "0.5 <b>"]], fmt) for fmt in FORMATS}
    files = write_kind_report(tmp_path, "A & B", {"t": table},
                              [("", ["t"]), ("Figures", [png, "A paragraph."])])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["tables/t.md", "tables/t.tex", "index.md",
                                                                   "index.html"]
    assert (tmp_path / "tables" / "t.tex").read_text() == table["latex"]
    md = (tmp_path / "index.md").read_text()
    assert md == ("# A & B\n\n[Figures](#s1)\n\n" + table["markdown"] + "\n" + '<a id="s1"></a>\n## Figures\n\n'
                  "![reward vs w](figures/reward_vs_w.png)\n\nA paragraph.\n")
    page = (tmp_path / "index.html").read_text()
    assert "<title>A &amp; B</title>" in page and table["html"] in page and "<p>A paragraph.</p>" in page
    assert base64.b64encode(png.read_bytes()).decode() in page  # the figure is embedded: one self-contained file


def test_page_sections_feed_the_table_of_contents():
    page = Page("T")
    page.section("a", "First")
    page.link("other/index.html", "another report")
    assert page.markdown().splitlines()[2] == "[First](#a)"
    assert '<nav><a href="#a">First</a></nav>' in page.html()
    assert '<li><a href="other/index.html">another report</a></li>' in page.html()
