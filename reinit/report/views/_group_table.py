"""An aligned table whose first column is a name that is never elided: the prefix every row
shares is dropped and named once above the table, and a label still too long for its column
goes on lines of its own (broken after a dot) above the row's cells. Cells are never cut:
when the cells alone do not fit the width, they wrap onto continuation lines.

Cells stand two spaces apart; when that leaves the longest label a column or a few short
(a 31-character `post_attention_layernorm.weight` beside the reference column at 120
columns), cells without spaces in them (layers, shape, action, ...) close up to one space,
as few as needed, so every label stays on its row."""

from __future__ import annotations

__all__ = ["GroupRow", "render_group_table"]

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from reinit.report.views._groups import common_prefix, wrap_label
from reinit.report.views._text import click_style
from reinit.text import shown

#: The narrowest label column worth keeping beside the cells; below it labels get own lines.
MIN_LABEL = 16


@dataclass(frozen=True)
class GroupRow:
    label: str  # raw (escaped here)
    cells: tuple[str, ...]
    fg: str | None = None  # colour on a terminal


def _pack(
    cells: Sequence[str],
    widths: Sequence[int],
    width: int,
    indent: int,
    gaps: Sequence[int] | None = None,
) -> list[str]:
    """The cells aligned to `widths`, `gaps[i]` spaces between cell i and the next (2 when
    not given), continuing on a new line (indented) where the next cell would pass `width`."""
    lines: list[str] = []
    current, fresh = " " * indent, True
    for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
        text = c.ljust(w) if i < len(cells) - 1 else c
        sep = "" if fresh else " " * (gaps[i - 1] if gaps else 2)
        if current.strip() and len(current) + len(sep) + len(text.rstrip()) > width:
            lines.append(current.rstrip())
            current, sep = " " * (indent + 2), ""
            if len(current) + len(text.rstrip()) > width:  # a long last cell: at its spaces
                *whole, text = textwrap.wrap(
                    text, width - len(current), break_long_words=False, break_on_hyphens=False
                )
                lines += [current + x for x in whole]
        current += sep + text
        fresh = False
    lines.append(current.rstrip())
    return lines


def _gaps(columns: Sequence[Sequence[str]], short: int) -> list[int]:
    """The spaces between neighbouring columns: 2, or 1 for up to `short` of them (from the
    left) where neither column holds a space in any cell, so `20-23 64×64 reinit` still
    reads as three cells; a cell like `0.02 → 0.07` keeps two spaces either side."""
    plain = [not any(" " in c for c in col) for col in columns]
    gaps = [2] * (len(columns) - 1)
    for i in range(len(gaps)):
        if short > 0 and plain[i] and plain[i + 1]:
            gaps[i], short = 1, short - 1
    return gaps


def render_group_table(
    header: Sequence[str],
    rows: Sequence[GroupRow],
    width: int = 100,
    color: bool = False,
    what: str = "names",
) -> list[str]:
    """The table's lines: `all <what> start with P` when a prefix is shared, the header, one
    line per row where the label fits its column, more where it does not."""
    labels = [shown(r.label) for r in rows]
    prefix = common_prefix(labels)
    labels = [x[len(prefix) :] for x in labels]
    out = wrap_label(f"all {what} start with {prefix}", width) if prefix else []
    columns = [[h, *(r.cells[i] for r in rows)] for i, h in enumerate(header[1:])]
    cell_w = [max(len(c) for c in col) for col in columns]
    longest = max([len(header[0])] + [len(x) for x in labels])
    short = longest + 2 + sum(cell_w) + 2 * (len(cell_w) - 1) - width  # columns missing
    gaps = _gaps(columns, short)
    if sum(gaps) > 2 * len(gaps) - short:  # closing up does not make the labels fit
        gaps = [2] * len(gaps)
    cells_total = sum(cell_w) + sum(gaps)
    label_w = min(longest, width - 2 - cells_total)
    if label_w < min(MIN_LABEL, longest):  # the labels on their own lines, the cells below them
        out += _pack(header[1:], cell_w, width, 2, gaps)
        for label, r in zip(labels, rows, strict=True):
            block = wrap_label(label, width)
            block += _pack(r.cells, cell_w, width, 2, gaps)
            out += [click_style(x, color, fg=r.fg) for x in block]
        return out
    widths = [label_w, *cell_w]
    gaps = [2, *gaps]
    out += _pack([header[0].ljust(label_w), *header[1:]], widths, width, 0, gaps)
    for label, r in zip(labels, rows, strict=True):
        if len(label) <= label_w:
            block = _pack([label, *r.cells], widths, width, 0, gaps)
        else:
            *above, last = wrap_label(label, width)
            if len(last) > label_w:
                above, last = [*above, last], ""
            block = above + _pack([last.ljust(label_w), *r.cells], widths, width, 0, gaps)
        out += [click_style(x, color, fg=r.fg) for x in block]
    return out
