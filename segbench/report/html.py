"""``summary.html``: the report as one page that opens in a browser and can be mailed to a collaborator.

It is summary.md rendered (Python-Markdown, with its tables), every figure of the report dir embedded
as a PNG data URI, and a few lines of inline script that sort a table by the column whose header is
clicked (numbers as numbers; "0.912 ± 0.010" by its mean). Self-contained: no stylesheet, script or
image is fetched from anywhere.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ..runs.atomic import write_text

SUMMARY_HTML = "summary.html"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1300px;
       padding: 0 1em; color: #1d2430; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #c9d1dc; padding: 0.3em 0.6em; text-align: left; }
th { background: #dde4ee; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
tr:nth-child(even) td { background: #f5f7fa; }
code { background: #eef1f5; padding: 0 0.2em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #c9d1dc; }
figcaption { font-size: 0.9em; color: #4a5565; }
"""

SCRIPT = """
function cellValue(cell) {
  const text = cell.textContent.trim();
  const number = parseFloat(text.replace(/,/g, ""));
  return isNaN(number) ? text.toLowerCase() : number;
}
function sortBy(table, column, header) {
  const body = table.tBodies[0];
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a.cells[column]), y = cellValue(b.cells[column]);
    const order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
  table.querySelectorAll("th").forEach(th => th.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
}
document.querySelectorAll("table").forEach(table => {
  table.classList.add("sortable");
  table.querySelectorAll("thead th").forEach((header, column) => {
    header.title = "sort by this column";
    header.addEventListener("click", () => sortBy(table, column, header));
  });
});
window.addEventListener("load", () => {
  const shown = Array.from(document.images).filter(img => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.figuresShown = shown;  // how many figures decoded (what a reader sees)
});
"""


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (f'<figure id="fig-{name}"><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{name}</figcaption></figure>")


def write_html(markdown_text: str, out_dir: Path, title: str = "segbench comparison") -> Path:
    """``out_dir/summary.html`` from summary.md's text and the PNG figures of ``out_dir`` (those the text
    names first, in its order, then the others); a figure's name in the text links to it."""
    import markdown

    out_dir = Path(out_dir)
    pngs = {p.name: p for p in sorted(out_dir.glob("*.png"))}
    named = [n for n in dict.fromkeys(re.findall(r"`([^`/]+\.png)`", markdown_text)) if n in pngs]
    order = named + [n for n in pngs if n not in named]
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    for name in order:  # `curves.png` in the text: a link to the figure below
        code = f"<code>{html.escape(name)}</code>"
        body = body.replace(code, f'<a href="#fig-{html.escape(name)}">{code}</a>')
    figures = "\n".join(_figure(pngs[n]) for n in order)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            f"{'<h2>Figures</h2>' + figures if figures else ''}\n<script>{SCRIPT}</script>\n</body></html>\n")
    path = out_dir / SUMMARY_HTML
    write_text(path, page)
    return path
