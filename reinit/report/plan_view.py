"""The `--dry-run` view of a Plan."""

from __future__ import annotations

__all__ = ["render_plan"]

from collections import Counter

from reinit.io.safetensors_format import dtype_name
from reinit.planning.planner import Plan
from reinit.report.text import shape_text, shorten_name
from reinit.text import shown

__all__ = ["render_plan"]


def render_plan(plan: Plan, width: int = 100) -> str:
    """The `--dry-run` view: each tensor, the rule that won, the action, or why it is skipped."""
    rows = []
    for e in plan.entries:
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
        rows.append(
            (
                shown(e.name),
                shape_text(e.shape),
                dtype_name(e.dtype),
                e.action,
                shown(what),
                shown(e.rule.text) if e.rule else "-",
            )
        )
    header = ("name", "shape", "dtype", "action", "what", "rule")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(4)]
    widths[0] = max(16, min(widths[0], width // 2))
    lines = []
    for r in [header, *rows]:
        head = "  ".join(
            (shorten_name(c, widths[i]) if i == 0 else c).ljust(widths[i])
            for i, c in enumerate(r[:4])
        )
        lines.append(f"{head}  {r[4]}" + (f"   [{r[5]}]" if r[5] not in ("-", "rule") else ""))
    counts = Counter(e.action for e in plan.entries)
    summary = ", ".join(f"{counts[a]} {a}" for a in ("reinit", "transplant", "kept", "skipped"))
    return "\n".join(
        [f"plan: {len(plan.entries)} tensors: {summary} (dry run, nothing written)", *lines]
    )
