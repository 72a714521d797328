"""Self-contained HTML building blocks: escaped text, tables, base64-embedded PNG figures.

The page has no JavaScript and no network resources: styles are inline in ``<style>`` and every
image is a ``data:image/png;base64,...`` URI. All user text (run names, class labels, the title)
goes through :func:`esc`.

Example:
    >>> table(["run", "R@1"], [["<b>", "0.5000"]])
    '<table>\\n<thead><tr><th>run</th><th>R@1</th></tr></thead>\\n<tbody>\\n<tr><td>&lt;b&gt;</td><td>0.5000</td></tr>\\n</tbody>\\n</table>'
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

__all__ = ["Cell", "esc", "figure", "page", "png_data_uri", "raw", "table"]


class Cell(str):
    """A table cell whose text is already HTML (not escaped again)."""


def raw(s: str) -> Cell:
    """Mark ``s`` as trusted HTML for :func:`table`."""
    return Cell(s)


def esc(s: object) -> str:
    """HTML-escape ``str(s)`` including quotes (safe in text and attribute values)."""
    return html.escape(str(s), quote=True)


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, *, alt: str, filename: str, caption: str) -> str:
    """A ``<figure>`` with the embedded PNG; ``caption`` is escaped, ``filename`` is shown."""
    return (
        f'<figure><img src="{png_data_uri(png)}" alt="{esc(alt)}">'
        f"<figcaption>{esc(caption)} <span class=file>[{esc(filename)}]</span></figcaption>"
        "</figure>"
    )


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    css_class: str | None = None,
) -> str:
    """An HTML table; headers and cells are escaped unless they are :class:`Cell` instances."""

    def cell(tag: str, v: str) -> str:
        return f"<{tag}>{v if isinstance(v, Cell) else esc(v)}</{tag}>"

    cls = f' class="{esc(css_class)}"' if css_class else ""
    head = "".join(cell("th", h) for h in headers)
    body = "\n".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in rows)
    return f"<table{cls}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


_CSS = """
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 48px; background: #fff;
       min-height: 100vh; box-shadow: 0 0 12px rgba(0,0,0,0.06); }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 2px solid #dde1e8;
     padding-bottom: 4px; }
h3 { font-size: 1.08em; margin: 1.2em 0 0.4em; }
p.meta { color: #5b6475; margin-top: 0; font-size: 0.92em; }
p.note { color: #4a5263; font-size: 0.9em; max-width: 70em; }
table { border-collapse: collapse; margin: 10px 0 6px; font-size: 0.86em; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e2e5eb; text-align: right;
         white-space: nowrap; }
th { background: #eef1f6; font-weight: 600; }
td:first-child, th:first-child { text-align: left; white-space: normal; min-width: 9em;
                                 max-width: 26em; overflow-wrap: anywhere; }
div.scroll { overflow-x: auto; max-width: 100%; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.best, td .best { font-weight: 700; color: #16733a; }
sup { color: #8a5a00; }
span.ci { color: #6b7385; font-size: 0.85em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px;
          margin-right: 6px; vertical-align: -0.05em; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
        gap: 12px 20px; }
figure { margin: 8px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e5eb; border-radius: 4px; }
figcaption { font-size: 0.86em; color: #4a5263; margin-top: 4px; }
span.file { color: #8b93a3; font-family: monospace; }
section.run { border-left: 4px solid #dde1e8; padding-left: 14px; margin-top: 1.2em; }
footer { margin-top: 3em; color: #8b93a3; font-size: 0.82em; }
"""


def page(title: str, body: str) -> str:
    """A complete HTML5 document with inline CSS; ``title`` is escaped, ``body`` is trusted."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
