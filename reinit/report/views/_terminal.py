"""The terminal report: the summary line, the changed and flagged tensors as an aligned table,
the unstable-depth lines and the per-layer view."""

from __future__ import annotations

__all__ = ["depth_lines", "render_kind_table", "render_table", "render_terminal", "summary_line"]

import textwrap
from collections import defaultdict
from collections.abc import Sequence

from reinit.report.entries import NOTE_CHANGED, Report, TensorEntry, step_lines
from reinit.report.flags import depth_checks
from reinit.report.reference import reference_text
from reinit.report.views._group_table import GroupRow, render_group_table
from reinit.report.views._groups import fit_items, flag_counts, layer_range, span
from reinit.report.views._kinds import entry_groups, reference_of
from reinit.report.views._layers import is_changed, layer_tables, render_layer_table
from reinit.report.views._text import (
    click_style,
    fmt,
    shape_text,
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


def garbage_size(entries: Sequence[TensorEntry]) -> str:
    """` (max |x| 1e+37)` beside a `garbage` flag: a constant 1e37 tensor has std 0, and the
    std column alone would not show its magnitude."""
    sizes = [
        max(abs(e.after.min or 0.0), abs(e.after.max or 0.0))
        for e in entries
        if "garbage" in e.flags
    ]
    return f" (max |x| {fmt(max(sizes))})" if sizes else ""


def render_table(entries: Sequence[TensorEntry], width: int = 100, color: bool = False) -> str:
    """One row per tensor (flagged rows first) that fits `width` columns: the prefix every
    name shares is named once above the table, a name too long for its column is wrapped
    after a dot (never elided), numbers have 3 significant digits."""
    rows = sorted(entries, key=lambda e: (not e.flags,))
    with_ref = any(reference_of(e) is not None for e in rows)
    with_flags = any(e.flags for e in rows)
    header = ["name", "shape", "action", "std before → after", "expected"]
    header += ["reference"] * with_ref + ["var_gain"] + ["flags"] * with_flags
    table = []
    for e in rows:
        cells = [
            shape_text(e.shape),
            e.action,
            (fmt(e.before.std) + " → " if e.before else "") + fmt(e.after.std),
            fmt(e.expected_std),
        ]
        cells += [fmt(reference_of(e))] * with_ref + [fmt(e.var_gain)]
        cells += [",".join(e.flags) + garbage_size([e])] * with_flags
        fg = "red" if e.flags else "green" if is_changed(e) else None
        table.append(GroupRow(e.name, tuple(cells), fg))
    return "\n".join(render_group_table(header, table, width, color))


def render_kind_table(entries: Sequence[TensorEntry], width: int = 100, color: bool = False) -> str:
    """One row per (kind, shape, action, rule): the layer range, std before → after as
    min–max, expected, reference (when known), var_gain and the flags with their counts;
    flagged groups first. Columns with nothing to say (reference, flags) are left out."""
    groups = entry_groups(entries)
    with_ref = any(reference_of(e) is not None for e in entries)
    with_flags = any(e.flags for e in entries)
    header = ["kind", "layers", "shape", "action", "std before → after", "expected"]
    header += ["reference"] * with_ref + ["var_gain"] + ["flags"] * with_flags
    rows = []
    for g in groups:
        m = g.members
        before = span(e.before.std for e in m if e.before is not None)
        after = span(e.after.std for e in m)
        cells = [
            layer_range(e.name for e in m),
            shape_text(m[0].shape),
            m[0].action,
            after if before == "-" else f"{before} → {after}",
            span(e.expected_std for e in m),
        ]
        cells += [span(reference_of(e) for e in m)] * with_ref + [span(e.var_gain for e in m)]
        cells += [flag_counts([e.flags for e in m]) + garbage_size(m)] * with_flags
        flagged = any(e.flags for e in m)
        fg = "red" if flagged else "green" if any(is_changed(e) for e in m) else None
        rows.append(GroupRow(g.kind, tuple(cells), fg))
    return "\n".join(render_group_table(header, rows, width, color))


def render_terminal(
    report: Report,
    width: int = 100,
    color: bool = False,
    per_layer: str = "changed",
    by: str = "tensor",
) -> str:
    """The one-line summary, the changed and the flagged tensors as a table (flagged first;
    a kind flagged only for unstable_depth takes one line, not one row per layer), then the
    per-layer view: `per_layer="all"` every kind with something to read, `"changed"` only the
    kinds with a changed or flagged member, `"none"` nothing. `by="kind"` groups the table
    (one row per kind, shape, action and rule); `by="tensor"` lists every tensor."""
    listed = [e for e in report.tensors if set(e.flags) - {"unstable_depth"} or is_changed(e)]
    skipped = [e for e in report.tensors if e.action == "skipped"]
    lines = fit_items(summary_line(report).split(", "), width)
    for line in step_lines(report.steps):  # an output made in several steps: each of them
        lines.append(
            textwrap.fill(shown(line), width, subsequent_indent="    ", break_on_hyphens=False)
        )
    if report.output:
        lines.append(f"wrote {shown(report.output)}")
    if listed:
        table = render_kind_table if by == "kind" else render_table
        lines.append(table(listed, width, color))
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
            line = f"skipped {n}: {shown(reason)}"
            lines.append(
                textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False)
            )
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
