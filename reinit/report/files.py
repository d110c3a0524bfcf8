"""The report as files: CSV, Markdown and JSON, chosen by extension."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reinit.io.targets import (
    check_suffix,
)
from reinit.report.entries import Report
from reinit.report.layers import layer_tables, layers_markdown
from reinit.report.terminal import depth_lines, summary_line
from reinit.report.text import fmt, shape_text

if TYPE_CHECKING:
    pass
import csv
import io

from reinit.text import md_cell, shown


def write_text_file(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


CSV_COLUMNS = (
    "name",
    "shape",
    "dtype",
    "action",
    "rule",
    "scheme",
    "from",
    "reason",
    "fan_in",
    "fan_out",
    *(f"before_{k}" for k in ("mean", "std", "min", "max", "nonfinite")),
    *(f"after_{k}" for k in ("mean", "std", "min", "max", "nonfinite")),
    "expected_std",
    "var_gain",
    "flags",
    "notes",
)


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in report.tensors:
        d = e.to_dict()
        before = d["before"] or dict.fromkeys(("mean", "std", "min", "max", "nonfinite"))
        row = [
            e.name,
            "x".join(map(str, e.shape)),
            e.dtype,
            e.action,
            e.rule,
            e.scheme,
            e.source,
            e.reason,
            e.fan_in,
            e.fan_out,
            *(before[k] for k in ("mean", "std", "min", "max", "nonfinite")),
            *(d["after"][k] for k in ("mean", "std", "min", "max", "nonfinite")),
            e.expected_std,
            e.var_gain,
            ";".join(e.flags),
            "; ".join(e.notes),
        ]
        # the csv module quotes a cell with a newline, a quote or a comma; control and bidi
        # characters are escaped too, so a spreadsheet or a terminal shows them as text.
        w.writerow(["" if v is None else shown(v) if isinstance(v, str) else v for v in row])
    return buf.getvalue()


def _md_cell(text: str) -> str:
    return md_cell(text)


def to_markdown(report: Report) -> str:
    """A header, `## Tensors` (one table row per tensor, flags in the last column) and
    `## Per layer` (one table per tensor kind, a column per layer)."""
    lines = [
        f"# reinit report: {_md_cell(report.source)}",
        "",
        f"- output: {_md_cell(report.output or '(none)')}",
        f"- seed: {report.seed}",
        f"- rules: {', '.join(f'`{_md_cell(r)}`' for r in report.rules) or '(none)'}",
        f"- {summary_line(report)}",
        *(f"- warning: {_md_cell(w)}" for w in report.warnings),
        *(f"- {_md_cell(line)}" for line in depth_lines(report.tensors)),
        "",
        "## Tensors",
        "",
        "| name | shape | dtype | action | rule | std before | std after | expected | var_gain | flags |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in report.tensors:
        lines.append(
            "| "
            + " | ".join(
                _md_cell(c)
                for c in (
                    f"`{e.name}`",
                    shape_text(e.shape),
                    e.dtype,
                    e.action + (f" ({e.reason})" if e.reason else ""),
                    f"`{e.rule}`" if e.rule else "",
                    fmt(e.before.std) if e.before else "",
                    fmt(e.after.std),
                    fmt(e.expected_std),
                    fmt(e.var_gain),
                    ", ".join(e.flags),
                )
            )
            + " |"
        )
    tables = layer_tables(report.tensors)
    if tables:
        lines += ["", "## Per layer", ""]
        lines.append(
            "std per layer for each tensor kind (the name with its numbers replaced by `*`); "
            "var_gain = fan_in·std², the factor by which the layer scales the variance of its "
            "input (≈1 keeps a stack stable, ≈2 in front of a ReLU). Flagged tensors in bold."
        )
        lines.append("")
        for t in tables:
            lines += layers_markdown(t)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(report: Report, path: str | Any, *, replace: bool = True) -> None:
    """Write `report` to `path` in the format its extension names (.json, .csv, .md),
    atomically (a temporary beside it, renamed when complete; without `replace`, an existing
    file is an error, even one that appears meanwhile)."""
    from pathlib import Path

    from reinit.io.publish import atomic_output

    p = Path(path)
    text = render_for_path(report, p.name)
    with atomic_output(p, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")


def render_for_path(report: Report, filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".json"):
        return report.to_json() + "\n"
    if lower.endswith(".csv"):
        return to_csv(report)
    if lower.endswith(".md"):
        return to_markdown(report)

    check_suffix(filename, "--report", "report")  # raises: the one message for every path
    raise AssertionError(filename)
