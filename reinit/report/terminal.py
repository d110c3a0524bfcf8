"""The terminal report: the summary line, the changed and flagged tensors as an aligned table,
the unstable-depth lines and the per-layer view."""

from __future__ import annotations

__all__ = ["depth_lines", "render_table", "render_terminal", "summary_line"]

import textwrap
from collections import defaultdict
from collections.abc import Sequence

from reinit.report.entries import NOTE_CHANGED, Report, TensorEntry
from reinit.report.flags import depth_checks
from reinit.report.layers import is_changed, layer_tables, render_layer_table
from reinit.report.reference import reference_text
from reinit.report.text import (
    click_style,
    column_widths,
    fmt,
    shape_text,
    shorten,
    table_row,
)
from reinit.text import shown


def summary_line(report: Report) -> str:
    """`12 tensors, 3 reinit, …, 0.41s; reference: config initializer_range 0.02`: the counts
    every rendering starts with, and the reference scale the changed tensors were judged by."""
    s = report.summary
    parts = [
        f"{s.tensors} tensors",
        f"{s.reinit} reinit",
        f"{s.transplant} transplanted",
        f"{s.kept} kept",
        f"{s.skipped} skipped",
        f"{s.flagged} flagged",
    ]
    changed = sum(1 for e in report.tensors if NOTE_CHANGED in e.notes)
    if changed or any(e.before is not None for e in report.tensors if e.action == "kept"):
        parts.insert(1, f"{changed} changed vs baseline")
    if s.bytes_written:
        parts.append(f"{s.bytes_written / 1e6:.1f} MB written")
    parts.append(f"{s.seconds:.2f}s")
    reference = reference_text(report.tensors)  # which scale off_reference judged by
    return ", ".join(parts) + (f"; {reference}" if reference else "")


def depth_lines(entries: Sequence[TensorEntry]) -> list[str]:
    """One line per kind flagged unstable_depth, with the number that explains it."""
    lines = []
    for c in depth_checks(entries):
        if c.unstable:
            way = "explode" if c.gmean_var_gain > 1 else "vanish"
            lines.append(
                f"unstable_depth: {c.kind}: {c.layers} layers, geometric-mean var_gain "
                f"{fmt(c.gmean_var_gain)}: signals {way} through depth "
                "(stable: ≈1, ≈2 in front of a ReLU)"
            )
    return lines


_TABLE_HEADER = ("name", "shape", "action", "std before → after", "expected", "var_gain", "flags")


_MIN_WIDTH = (16, 7, 6, 11, 8, 8, 7)


def _fit_widths(widths: list[int], width: int) -> list[int]:
    """Shrink the widest shrinkable columns (name first in practice) until the row fits."""
    widths = list(widths)
    while sum(widths) + 2 * (len(widths) - 1) > width:
        excess = [w - m for w, m in zip(widths, _MIN_WIDTH, strict=True)]
        i = max(range(len(widths)), key=lambda k: (excess[k], k == 0))
        if excess[i] <= 0:
            break
        widths[i] -= 1
    return widths


def render_table(entries: Sequence[TensorEntry], width: int = 100, color: bool = False) -> str:
    """An aligned table (flagged rows first) that fits `width` columns: long names are
    shortened in the middle, numbers have 3 significant digits."""
    rows = sorted(entries, key=lambda e: (not e.flags,))
    cols = [
        (
            shown(e.name),
            shape_text(e.shape),
            e.action,
            (fmt(e.before.std) + " → " if e.before else "") + fmt(e.after.std),
            fmt(e.expected_std),
            fmt(e.var_gain),
            ",".join(e.flags),
        )
        for e in rows
    ]
    widths = _fit_widths(column_widths(_TABLE_HEADER, cols), width)
    out = [
        "  ".join(
            shorten(h, w).ljust(w) for h, w in zip(_TABLE_HEADER, widths, strict=True)
        ).rstrip()
    ]
    for e, c in zip(rows, cols, strict=True):
        line = table_row(c, widths)
        out.append(
            click_style(line, color, fg="red" if e.flags else "green" if is_changed(e) else None)
        )
    return "\n".join(out)


def render_terminal(
    report: Report, width: int = 100, color: bool = False, per_layer: str = "changed"
) -> str:
    """The one-line summary, the changed and the flagged tensors as a table (flagged first;
    a kind flagged only for unstable_depth takes one line, not one row per layer), then the
    per-layer view: `per_layer="all"` every kind with something to read, `"changed"` only the
    kinds with a changed or flagged member, `"none"` nothing."""
    listed = [e for e in report.tensors if set(e.flags) - {"unstable_depth"} or is_changed(e)]
    skipped = [e for e in report.tensors if e.action == "skipped"]
    # the summary may wrap (it names the reference scale at its end)
    summary = textwrap.fill(summary_line(report), width, subsequent_indent="  ")
    lines = [summary]
    if report.output:
        lines.append(f"wrote {shown(report.output)}")
    if listed:
        lines.append(render_table(listed, width, color))
    for line in depth_lines(report.tensors):
        wrapped = textwrap.fill(
            shown(line), width, subsequent_indent="    ", break_on_hyphens=False
        )
        lines.append(click_style(wrapped, color, fg="red"))
    if skipped:
        reasons: dict[str, int] = defaultdict(int)
        for e in skipped:
            reasons[e.reason or ""] += 1
        for reason, n in reasons.items():
            lines.append(f"skipped {n}: {shown(reason)}")
    if per_layer != "none":
        tables = [
            t
            for t in layer_tables(report.tensors)
            if t.interesting and (per_layer == "all" or t.flags or any(c.changed for c in t.cells))
        ]
        if tables:
            lines.append("")
            lines.append("per layer (std of each tensor kind by layer index; ! = flagged):")
            for t in tables:
                lines.append(render_layer_table(t, width, color))
    return "\n".join(lines)
