"""The one page skeleton of every report: ``Page`` builds a page once as Markdown (figures linked) and as
self-contained HTML (figures embedded); ``write_kind_report`` writes a measurement kind's tables and its
``index.md`` / ``index.html`` through it (the image report, ``rlg.report.report``, and the findings use ``Page``
directly)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Callable, Sequence, Union

# a section item: the stem of one of the report's tables, a figure (a .png path under the report), or a paragraph
Item = Union[str, Path]


class Page:
    """One page built twice: Markdown (figures linked) and self-contained HTML (figures embedded)."""

    CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}"
           "th,td{border-bottom:1px solid #ddd;padding:.25em .6em}th{background:#f4f4f4}"
           "tr.group td{border-top:2px solid #999}p.note{color:#555;font-size:.85em;margin:.2em 0}"
           "figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:520px}"
           "figcaption{font-size:.8em;color:#555}nav a{margin-right:1em}h1{overflow-wrap:anywhere;font-size:1.5em}"
           ".headline{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.4em 1em;margin:.6em 0}"
           ".headline blockquote{margin:.4em 0;padding:.3em .8em;border-left:4px solid #0072B2;background:#fff}"
           "p.caution{color:#8a4b00;background:#fff4e0;padding:.3em .6em;border-radius:4px}"
           ".figrow figure{width:480px;margin:.3em}.figrow figure img{max-width:480px}"
           # a cell breaks at spaces only (never inside a number or a word); a table wider than the page scrolls
           "table{display:block;max-width:100%;overflow-x:auto}td,th{overflow-wrap:normal;word-break:normal}"
           "td{font-variant-numeric:tabular-nums}td[style*=right]{white-space:nowrap}")  # numbers: never wrapped

    def __init__(self, title: str):
        self.title = title
        self.md: list[str] = [f"# {title}", ""]
        self.body: list[str] = []
        self.toc: list[tuple[str, str]] = []

    def section(self, anchor: str, title: str) -> None:
        self.toc.append((anchor, title))
        self.md += [f'<a id="{anchor}"></a>', f"## {title}", ""]
        self.body.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')

    def sub(self, title: str) -> None:
        self.md += [f"### {title}", ""]
        self.body.append(f"<h3>{html.escape(title)}</h3>")

    def text(self, line: str) -> None:
        self.md += [line, ""]
        self.body.append(f"<p>{html.escape(line)}</p>")

    def table(self, markdown: str, html_table: str) -> None:
        self.raw(markdown, html_table)  # a rendered table is a block given in both forms

    def figure(self, png: Path, rel: str, caption: str) -> None:
        self.md += [f"![{caption}]({rel})", ""]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def raw(self, markdown: str, html_block: str) -> None:
        """A block given in both forms (HTML already escaped by the caller)."""
        self.md += [markdown.rstrip(), ""]
        self.body.append(html_block)

    def link(self, rel: str, label: str) -> None:
        self.md += [f"- [{label}]({rel})"]
        self.body.append(f'<li><a href="{html.escape(rel)}">{html.escape(label)}</a></li>')

    def markdown(self) -> str:
        toc = " · ".join(f"[{t}]({a if '.' in a else '#' + a})" for a, t in self.toc)  # a file, or a section
        return "\n".join([*self.md[:2], toc, "", *self.md[2:]]).rstrip() + "\n"

    def html(self) -> str:
        nav = "".join(f'<a href="{html.escape(a if "." in a else "#" + a)}">{html.escape(t)}</a>' for a, t in self.toc)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{self.CSS}</style></head><body>\n<h1>{html.escape(self.title)}</h1>\n"
                f"<nav>{nav}</nav>\n"
                + "\n".join(self.body) + "\n</body></html>\n")


def put(path: Path, content) -> Path:
    """Write ``content`` to ``path``: a data frame as CSV without its index, else text. Returns ``path``."""
    if isinstance(content, str):
        path.write_text(content)
    else:
        content.to_csv(path, index=False)
    return path


def write_table_files(tab_dir: Path, stem: str, make: Callable[[str], str]) -> list[Path]:
    """``tab_dir/<stem>.md`` and ``.tex`` from ``make("markdown")`` and ``make("latex")``; the two paths."""
    files = [tab_dir / f"{stem}.md", tab_dir / f"{stem}.tex"]
    for path, fmt in zip(files, ("markdown", "latex")):
        path.write_text(make(fmt))
    return files


def write_kind_report(out_dir: Path, title: str, tables: dict[str, dict[str, str]],
                      sections: Sequence[tuple[str, Sequence[Item]]]) -> list[Path]:
    """Write ``tables/<stem>.md`` and ``.tex`` for every table ({"markdown": ..., "latex": ..., "html": ...}, as
    ``rlg.report.tables.render`` makes them) and ``index.md`` / ``index.html``: ``title``, then per (heading,
    items) a section (an empty heading: the items go under the title) whose items are table stems, figure PNGs
    (Paths, embedded in the HTML, linked in the Markdown) or paragraphs. Returns the paths written."""
    files = []
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    for stem, t in tables.items():
        files += write_table_files(out_dir / "tables", stem, t.__getitem__)
    page = Page(title)
    for i, (heading, items) in enumerate(sections):
        if heading:
            page.section(f"s{i}", heading)
        for item in items:
            if isinstance(item, Path):
                page.figure(item, item.relative_to(out_dir).as_posix(), item.stem.replace("_", " "))
            elif item in tables:
                page.table(tables[item]["markdown"], tables[item]["html"])
            else:
                page.text(item)
    for name, text in (("index.md", page.markdown()), ("index.html", page.html())):
        files.append(out_dir / name)
        files[-1].write_text(text)
    return files
