"""Report entries grouped by kind, shape, action and rule (docs/guide/report.md): what the terminal and
the Markdown report show instead of one row per tensor."""

from __future__ import annotations

__all__ = ["applied_init", "entry_groups", "kinds_markdown", "reference_of"]

from collections.abc import Sequence

from reinit.report.entries import TensorEntry
from reinit.report.views._groups import KindGroup, flag_counts, group_by_kind, layer_range, span
from reinit.report.views._text import shape_text
from reinit.text import md_cell, md_code


def reference_of(e: TensorEntry) -> float | None:
    """The entry's reference std (docs/guide/report.md "Reference scale"), where the report has one."""
    ref = getattr(e, "reference_std", None)
    return ref if isinstance(ref, int | float) else None


def applied_init(e: TensorEntry) -> str | None:
    """What the `default` scheme ran on the tensor, from its scheme text
    (`default (BertModel._init_weights on Linear: normal(std=0.02))` -> the part in
    parentheses); None for any other tensor."""
    scheme = e.scheme or ""
    head = "default ("
    if e.action == "reinit" and scheme.startswith(head) and scheme.endswith(")"):
        return scheme[len(head) : -1]
    return None


def _rule_cell(members: Sequence[TensorEntry]) -> str:
    """The group's rule as code, with the init `default` ran (`→ Linear.reset_parameters: ...`),
    as Markdown for a table cell."""
    rule = members[0].rule
    text = md_code(rule, table=True) if rule else ""
    inits = list(dict.fromkeys(x for x in map(applied_init, members) if x is not None))
    return text + (f" → {md_cell('; '.join(inits))}" if inits else "")


def entry_groups(entries: Sequence[TensorEntry]) -> list[KindGroup[TensorEntry]]:
    """One group per (kind, shape, action, rule), flagged groups first, then in order
    of first appearance."""
    groups = group_by_kind(entries, lambda e: e.name, lambda e: (e.shape, e.action, e.rule))
    return sorted(groups, key=lambda g: not any(e.flags for e in g.members))


def kinds_markdown(entries: Sequence[TensorEntry]) -> list[str]:
    """The Markdown table of the groups: kind, layers, count, shape, dtype, action, rule, std
    before and after, expected, reference, var_gain (min–max) and the flags with counts."""
    lines = [
        "| kind | layers | tensors | shape | dtype | action | rule | std before | std after "
        "| expected | reference | var_gain | flags |",
        "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in entry_groups(entries):
        m, e = g.members, g.members[0]
        reasons = sorted({x.reason for x in m if x.reason})
        before = span(x.before.std for x in m if x.before is not None)
        cells = (  # Markdown already: the code spans and the rule cell; the rest is escaped
            md_code(g.kind, table=True),
            *map(
                md_cell,
                (
                    layer_range(x.name for x in m),
                    str(len(m)),
                    shape_text(e.shape),
                    ", ".join(sorted({x.dtype for x in m})),
                    e.action + (f" ({'; '.join(reasons)})" if reasons else ""),
                ),
            ),
            _rule_cell(m),
            *map(
                md_cell,
                (
                    before if before != "-" else "",
                    span(x.after.std for x in m),
                    span(x.expected_std for x in m),
                    _with_source(span(reference_of(x) for x in m), m),
                    span(x.var_gain for x in m),
                    flag_counts([x.flags for x in m]),
                ),
            ),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _with_source(text: str, members: Sequence[TensorEntry]) -> str:
    """`0.02 (config initializer_range)`: the reference std with where it came from, when the
    whole group shares one source."""
    sources = {getattr(x, "reference", None) for x in members} - {None}
    return f"{text} ({sources.pop()})" if text and text != "-" and len(sources) == 1 else text
