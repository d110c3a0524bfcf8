"""Number and name formatting shared by the renderers (3 significant digits, shapes, names
clipped from the left so the layer number and the specific tail stay)."""

from __future__ import annotations

__all__ = [
    "click_style",
    "column_widths",
    "fmt",
    "shape_text",
    "shorten",
    "shorten_name",
    "table_row",
]

from collections.abc import Sequence

import click


def fmt(x: float | None) -> str:
    """3 significant digits, exponents without padding (`1e37`, `2.56e-5`); '-' for none."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    text = f"{x:.3g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    return text


def shape_text(shape: Sequence[int]) -> str:
    """`768×3072`; `scalar` for a 0-d tensor."""
    return "×".join(map(str, shape)) if shape else "scalar"


def shorten_name(name: str, width: int) -> str:
    """Shorten a dotted tensor name to `width` by clipping its non-numeric parts from the
    left (`bert.encoder.layer.3.attention.output.dense.weight` ->
    `b….e….l….3.attent….output.dense.weight`): a name goes from general to specific, so the
    leading parts are the ones every row shares, while the layer numbers and the trailing
    parts tell tensors apart. In the middle if that is not enough."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    excess = len(name) - width
    for i, p in enumerate(parts[:-1]):
        if excess <= 0:
            break
        if p.isdigit() or p == "*" or len(p) <= 2:  # "m…" still says where a part was
            continue
        keep = max(len(p) - excess, 2)
        excess -= len(p) - keep
        parts[i] = p[: keep - 1] + "…"
    return shorten(".".join(parts), width)


def shorten(text: str, width: int) -> str:
    """Shorten in the middle, keeping both ends (the ends of a tensor name carry the meaning)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    keep = width - 1
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head) :]


def column_widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """The width of each column: its longest cell, header included."""
    return [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]


def table_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One aligned row of a renderer's table: the first cell is a tensor name, never cut (it
    is what a rule or a grep is written from: one too long for its column stands whole on a
    line of its own, the row below it), the others shortened in the middle; trailing blanks
    dropped."""
    name = cells[0]
    head = f"{name}\n" if len(name) > widths[0] else ""
    parts = ["".ljust(widths[0]) if head else name.ljust(widths[0])]
    parts += [shorten(c, w).ljust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
    return head + "  ".join(parts).rstrip()


def click_style(text: str, color: bool, *, fg: str | None = None, bold: bool | None = None) -> str:
    """`text` styled for a terminal when `color` and a style is given, as it is otherwise."""
    if not color or (fg is None and bold is None):
        return text
    return click.style(text, fg=fg, bold=bold)
