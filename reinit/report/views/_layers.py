"""The per-layer view: one table per tensor kind, one column per layer index (a layer's
mixture-of-experts experts share its column: their std as a min–max span)."""

from __future__ import annotations

__all__ = [
    "LayerCell",
    "LayerTable",
    "is_changed",
    "layer_tables",
    "layers_markdown",
    "render_layer_table",
]

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from reinit.report.entries import NOTE_CHANGED, TensorEntry
from reinit.report.flags import (
    depth_key,
    geometric_mean,
    kind_of,
    layer_index,
    layer_key,
    takes_part,
)
from reinit.report.views._groups import span, wrap_label
from reinit.report.views._text import click_style, fmt, shape_text, shorten
from reinit.text import md_code, shown


def is_changed(e: TensorEntry) -> bool:
    """Re-initialized, transplanted, or (report --against) different from the baseline."""
    return e.changes or NOTE_CHANGED in e.notes


@dataclass(frozen=True)
class LayerCell:
    label: str  # the tensor's numbers, "3" or "3.7"
    name: str
    after: float | None
    before: float | None
    var_gain: float | None
    flags: tuple[str, ...]
    changed: bool


@dataclass(frozen=True)
class LayerTable:
    """One tensor kind across depth: a row reads as the layers of the stack, in order."""

    kind: str
    shapes: tuple[str, ...]
    cells: tuple[LayerCell, ...]
    gmean_var_gain: float | None  # over the members that take part in unstable_depth

    @property
    def flags(self) -> tuple[str, ...]:
        seen = dict.fromkeys(f for c in self.cells for f in c.flags)
        return tuple(seen)

    @property
    def columns(self) -> tuple[tuple[str, tuple[LayerCell, ...]], ...]:
        """(label, cells) per column: one per depth (`depth_key`), so a layer's experts
        (`layers.3.experts.7`) share the layer's column; in the cells' order."""
        cols: dict[str, list[LayerCell]] = {}
        for c in self.cells:
            depth = depth_key(c.name) or layer_key(c.name)
            cols.setdefault(".".join(map(str, depth)), []).append(c)
        return tuple((label, tuple(cells)) for label, cells in cols.items())

    @property
    def has_before(self) -> bool:
        return any(c.before is not None for c in self.cells)

    @property
    def has_var_gain(self) -> bool:
        return any(c.var_gain is not None for c in self.cells)

    @property
    def interesting(self) -> bool:
        """Worth a reader's lines: something changed, something is flagged, or the std is
        not zero everywhere (all-zero biases and all-one norm gains say nothing per layer)."""
        return (
            bool(self.flags)
            or any(c.changed for c in self.cells)
            or any(c.after not in (None, 0.0) for c in self.cells)
        )


def layer_tables(entries: Sequence[TensorEntry]) -> tuple[LayerTable, ...]:
    """Every float kind with at least two layer-indexed members, in order of first
    appearance, its columns sorted by layer numbers."""
    groups: dict[str, list[TensorEntry]] = defaultdict(list)
    for e in entries:
        if e.is_float and layer_index(e.name) is not None:
            groups[kind_of(e.name)].append(e)
    tables = []
    for kind, members in groups.items():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda e: layer_key(e.name))
        cells = tuple(
            LayerCell(
                ".".join(map(str, layer_key(e.name))),
                e.name,
                e.after.std,
                e.before.std if e.before else None,
                e.var_gain,
                e.flags,
                is_changed(e),
            )
            for e in members
        )
        shapes = tuple(dict.fromkeys(shape_text(e.shape) for e in members))
        gm = geometric_mean(e.var_gain or 0.0 for e in members if takes_part(e) and e.var_gain)
        tables.append(LayerTable(kind, shapes, cells, gm))
    return tuple(tables)


def _table_title(t: LayerTable) -> str:
    parts = [", ".join(t.shapes) if len(t.shapes) <= 2 else f"{len(t.shapes)} shapes"]
    columns = t.columns
    per = {len(cells) for _, cells in columns}
    if len(columns) == len(t.cells):
        parts.append(f"{len(t.cells)} layers")
    elif len(per) == 1:
        parts.append(f"{len(columns)} layers × {per.pop()} experts")
    else:
        parts.append(f"{len(columns)} layers, {len(t.cells)} tensors")
    if t.gmean_var_gain is not None:
        parts.append(f"geometric-mean var_gain {fmt(t.gmean_var_gain)}")
    return "  ".join(parts)


def _layer_rows(t: LayerTable, mark: str) -> list[tuple[str, list[str]]]:
    """(label, cells) rows, a cell per column: std after (a flagged column's std carries
    `mark`), std before, var_gain; a column of several tensors shows their min–max."""
    columns = [cells for _, cells in t.columns]

    def flagged(cells: tuple[LayerCell, ...], text: str) -> str:
        return text + mark if any(c.flags for c in cells) else text

    rows = [
        (
            "std after" if t.has_before else "std",
            [flagged(cs, span(c.after for c in cs)) for cs in columns],
        )
    ]
    if t.has_before:
        rows.append(("std before", [_before_text(cs) for cs in columns]))
    if t.has_var_gain:
        rows.append(("var_gain", [span(c.var_gain for c in cs) for cs in columns]))
    return rows


def _before_text(cells: tuple[LayerCell, ...]) -> str:
    """The std before of a column: `=` when no tensor of it has one (unchanged)."""
    if all(c.before is None for c in cells):
        return "="
    return span(c.before for c in cells)


def _column_flagged(t: LayerTable) -> list[bool]:
    return [any(c.flags for c in cells) for _, cells in t.columns]


def render_layer_table(t: LayerTable, width: int = 100, color: bool = False) -> str:
    """The kind's title line, then rows `layer / std / std before / var_gain` with one
    column per layer, wrapped into blocks that fit `width`."""
    rest = _table_title(t) + (f"  [{', '.join(t.flags)}]" if t.flags else "")
    kind = shown(t.kind)
    if len(kind) + 2 + len(rest) <= width:
        titles = [f"{kind}  {rest}"]
    else:  # the kind on its own line, what it is below
        titles = [*wrap_label(kind, width), "  " + shorten(rest, width - 2)]
    lines = [click_style(x, color, bold=True) for x in titles]  # kind: shown() above
    rows = [("layer", [label for label, _ in t.columns]), *_layer_rows(t, "!")]
    flagged = _column_flagged(t)
    label_w = max(len(r[0]) for r in rows)
    count = len(flagged)
    col_w = [max(len(r[1][i]) for r in rows) for i in range(count)]
    start = 0
    while start < count:
        used, stop = 2 + label_w, start
        while stop < count and (stop == start or used + 2 + col_w[stop] <= width):
            used += 2 + col_w[stop]
            stop += 1
        for label, cells in rows:
            parts = []
            for i in range(start, stop):
                text = cells[i].rjust(col_w[i])
                if label.startswith("std") and flagged[i] and label != "std before":
                    text = click_style(text, color, fg="red", bold=True)
                parts.append(text)
            lines.append(f"  {label.ljust(label_w)}  " + "  ".join(parts))
        start = stop
    return "\n".join(lines)


def layers_markdown(t: LayerTable) -> list[str]:
    """The Markdown form of `render_layer_table`: a `###` title and a table, flagged in bold."""
    title = _table_title(t).replace("  ", " · ")
    if t.flags:
        title += " · " + ", ".join(f"**{f}**" for f in t.flags)
    lines = [f"### {md_code(t.kind)}", "", title, ""]
    flagged = _column_flagged(t)
    lines.append("| layer | " + " | ".join(label for label, _ in t.columns) + " |")
    lines.append("| --- |" + " ---: |" * len(flagged))
    for label, cells in _layer_rows(t, ""):
        marked = [
            f"**{v}**" if label != "std before" and f and label.startswith("std") else v
            for v, f in zip(cells, flagged, strict=True)
        ]
        lines.append(f"| {label} | " + " | ".join(marked) + " |")
    lines.append("")
    return lines
