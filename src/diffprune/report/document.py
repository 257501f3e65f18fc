"""A tiny document model rendered twice: Markdown (``report.md``) and self-contained HTML (``report.html``).

Building the report once as blocks keeps the two outputs identical in content; only the renderers differ.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    align_right_from: int = 1  # columns from this index on are numbers (right-aligned)


@dataclass
class Image:
    path: Path  # a PNG inside the report folder
    alt: str
    width: int | None = None


@dataclass
class Gallery:
    """Images side by side (sample grids); pixel art is shown without smoothing."""

    images: list[Image]


@dataclass
class Code:
    """Preformatted text shown in the document itself (a resolved config), under ``title``."""

    text: str
    title: str = ""
    language: str = ""


Block = Union[Heading, Paragraph, Bullets, Table, Image, Gallery, Code]


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> "Document":
        self.blocks.extend(blocks)
        return self


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document, folder: Path) -> str:
    """Markdown with images linked relative to ``folder`` (the report folder)."""
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("| " + " | ".join("---:" if i >= b.align_right_from else "---" for i in range(len(b.header)))
                       + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [_md_image(b, folder), ""]
        elif isinstance(b, Gallery):
            out += ["| " + " | ".join(i.alt for i in b.images) + " |",
                    "| " + " | ".join("---" for _ in b.images) + " |",
                    "| " + " | ".join(_md_image(i, folder) for i in b.images) + " |", ""]
        elif isinstance(b, Code):
            out += ([f"*{b.title}*", ""] if b.title else []) + [f"```{b.language}", b.text.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _md_image(b: Image, folder: Path) -> str:
    rel = Path(b.path).relative_to(folder) if Path(b.path).is_relative_to(folder) else Path(b.path)
    return f"![{b.alt}]({rel.as_posix()})"


def _html_image(b: Image, extra_style: str = "") -> str:
    data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
    style = (f"width:{b.width}px;" if b.width else "") + extra_style
    style_attr = f' style="{style}"' if style else ""
    return (f'<figure><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}"{style_attr}>'
            f"<figcaption>{html.escape(b.alt)}</figcaption></figure>")


CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1150px;
margin:2rem auto;padding:0 1.2rem;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;
margin-top:2.2rem}table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem}th{background:#f6f8fa;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fbfcfd}
caption{caption-side:top;text-align:left;font-style:italic;color:#57606a;padding-bottom:.3rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eaeef2}figcaption{color:#57606a;font-size:.9rem}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}
.gallery{display:flex;flex-wrap:wrap;gap:1rem}.gallery figure{margin:0}
.gallery img{image-rendering:pixelated}
.table{overflow-x:auto}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.85rem}pre code{padding:0}
"""


def to_html(doc: Document) -> str:
    """A single HTML file: inline CSS, PNGs embedded as base64 ``data:`` URIs (no external requests)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(doc.title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            lvl = min(max(b.level, 2), 6)
            parts.append(f"<h{lvl}>{_inline(b.text)}</h{lvl}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            rows = ['<div class="table"><table>']  # a wide table scrolls in its box, not the page
            if b.caption:
                rows.append(f"<caption>{_inline(b.caption)}</caption>")
            rows.append("<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b.header) + "</tr>")
            for r in b.rows:
                cells = "".join(
                    f'<td class="num">{_inline(c)}</td>' if i >= b.align_right_from else f"<td>{_inline(c)}</td>"
                    for i, c in enumerate(r)
                )
                rows.append(f"<tr>{cells}</tr>")
            rows.append("</table></div>")
            parts.append("".join(rows))
        elif isinstance(b, Image):
            parts.append(_html_image(b))
        elif isinstance(b, Gallery):
            parts.append('<div class="gallery">' + "".join(_html_image(i) for i in b.images) + "</div>")
        elif isinstance(b, Code):
            parts.append(f"<details open><summary>{_inline(b.title)}</summary><pre><code>{e(b.text)}</code></pre>"
                         "</details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape, then render `code` spans and **bold** (the only inline Markdown the report uses)."""
    import re

    s = html.escape(str(text))
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def fmt(value: object, digits: int = 3) -> str:
    """Numbers for tables: None -> 'n/a', floats to ``digits`` significant decimals, ints with separators."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def join_nonempty(items: Sequence[str], sep: str = ", ") -> str:
    return sep.join(i for i in items if i)
