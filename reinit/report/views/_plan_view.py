"""The `--dry-run` view of a Plan: by default one row per (kind, shape, dtype, action, rule) of
the tensors that change or are skipped, the rule printed once per group; `--all` adds the
unchanged ones and
`--by tensor` lists every tensor."""

from __future__ import annotations

__all__ = ["plan_json", "plan_what", "render_plan"]

import json
from collections import Counter

from reinit.planning.planner import Plan, PlanEntry
from reinit.report.jsonio import JSON
from reinit.report.views._group_table import GroupRow, render_group_table
from reinit.report.views._groups import fit_items, group_by_kind, layer_range
from reinit.report.views._text import shape_text
from reinit.text import shown


def plan_what(e: PlanEntry) -> str:
    """What happens to the tensor: the scheme, the transplant's source, or why it is skipped."""
    if e.action == "reinit" and e.scheme is not None:
        what = e.scheme.describe()
    elif e.action == "transplant" and e.rule is not None and e.rule.transplant is not None:
        what = e.rule.transplant.describe()
        if e.source_key is not None and e.source_key != e.name:
            what += f" <- {e.source_key}"
    elif e.action == "skipped":
        what = e.reason or ""
    else:
        what = "unchanged" if e.rule is None else "keep"
    if e.changes and e.reason:  # e.g. a tied tensor's partner
        what += f" ({e.reason})"
    if e.notes:  # --add / --rename
        what += f" [{', '.join(e.notes)}]"
    return what


def _by_tensor(entries: list[PlanEntry], width: int) -> list[str]:
    rows = [
        (
            shown(e.name),
            shape_text(e.shape),
            e.dtype_name,
            e.action,
            shown(plan_what(e)),
            shown(e.rule.text) if e.rule else "-",
        )
        for e in entries
    ]
    header = ("name", "shape", "dtype", "action", "what", "rule")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(4)]
    widths[0] = max(16, min(widths[0], width // 2))
    lines = []
    for r in [header, *rows]:
        if len(r[0]) > widths[0]:  # a name is never cut: whole on its own line, its row below
            lines.append(r[0])
            r = ("", *r[1:])
        head = "  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:4]))
        lines.append(f"{head}  {r[4]}" + (f"   [{r[5]}]" if r[5] not in ("-", "rule") else ""))
    return lines


def _by_kind(entries: list[PlanEntry], width: int) -> list[str]:
    """One row per group; `what` (the scheme or source, once per group) then the rule."""
    groups = group_by_kind(
        entries,
        lambda e: e.name,
        lambda e: (e.shape, e.dtype_name, e.action, e.rule.text if e.rule else None),
    )
    rows = []
    for g in groups:
        e = g.members[0]
        whats = list(dict.fromkeys(plan_what(m) for m in g.members))
        what = whats[0] if len(whats) == 1 else f"{whats[0]} (+{len(whats) - 1} more)"
        rule = f"[{e.rule.text}]" if e.rule else ""
        rows.append(
            GroupRow(
                g.kind,
                (
                    layer_range(m.name for m in g.members),
                    shape_text(e.shape),
                    e.dtype_name,
                    e.action,
                    shown(f"{what} {rule}".strip()),
                ),
            )
        )
    if not rows:
        return ["(no tensor changes; --all lists every tensor)"]
    header = ("kind", "layers", "shape", "dtype", "action", "what [rule]")
    return render_group_table(header, rows, width)


def _summary(plan: Plan) -> dict[str, int]:
    counts = Counter(e.action for e in plan.entries)
    return {a: counts[a] for a in ("reinit", "transplant", "kept", "skipped")}


def _entry_dict(e: PlanEntry) -> dict[str, JSON]:
    return {
        "name": e.name,
        "shape": list(e.shape),
        "dtype": e.dtype_name,
        "action": e.action,
        "what": plan_what(e),
        "rule": e.rule.text if e.rule is not None else None,
    }


def plan_dict(plan: Plan) -> dict[str, JSON]:
    """`--dry-run --json`'s document: every tensor (its action, what and winning rule), the
    names `--drop` removes, the plan's warnings and the counts."""
    return {
        "dry_run": True,
        "summary": {"tensors": len(plan.entries), **_summary(plan)},
        "tensors": [_entry_dict(e) for e in plan.entries],
        "dropped": list(plan.dropped),
        "warnings": list(plan.warnings),
    }


def plan_json(plans: list[Plan]) -> str:
    """The JSON `--dry-run --json` prints on stdout: one plan's document, or `{"steps": [...]}`
    for a recipe of several steps."""
    docs = [plan_dict(p) for p in plans]
    doc: JSON = docs[0] if len(docs) == 1 else {"dry_run": True, "steps": list[JSON](docs)}
    return json.dumps(doc, indent=2, ensure_ascii=False)


def render_plan(plan: Plan, width: int = 100, *, by: str = "tensor", every: bool = True) -> str:
    """The `--dry-run` view: the summary line, then the tensors (`every=False`: only those
    that change) grouped by kind (`by="kind"`) or one row each (`by="tensor"`)."""
    summary = ", ".join(f"{n} {a}" for a, n in _summary(plan).items())
    entries = [e for e in plan.entries if every or e.changes or e.notes or e.action == "skipped"]
    lines = _by_kind(entries, width) if by == "kind" else _by_tensor(entries, width)
    head = f"plan: {len(plan.entries)} tensors: {summary} (dry run, nothing written)"
    return "\n".join([*fit_items(head.split(", "), width), *lines])
