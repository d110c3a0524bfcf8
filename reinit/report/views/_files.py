"""The report as files: CSV, Markdown, JSON (chosen by extension) and the PNG plot, and the one
way they reach the disk.

Why one way: `apply --report/--plot`, `reinit report -o/--plot` and the library's
`write_report`/`plot_report` once each had their own checks and their own atomic writer. Every
report or plot file now has its path checked by `report_targets` (the one rule of
`reinit.io.targets`) and is written by `stage_report_files` into a `Publication`, so it is
published together with whatever else the run writes, or not at all."""

from __future__ import annotations

__all__ = [
    "CSV_COLUMNS",
    "RENDERERS",
    "SideOutput",
    "check_formats",
    "plot_report",
    "publish_report_files",
    "render_for_path",
    "report_targets",
    "stage_report_files",
    "to_csv",
    "to_markdown",
    "write_report",
    "write_text_file",
]

import csv
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from reinit.io.targets import Inputs, check_distinct, check_suffix, check_target
from reinit.report.entries import Report, ReportStep, step_lines
from reinit.report.views._kinds import kinds_markdown
from reinit.report.views._layers import layer_tables, layers_markdown
from reinit.report.views._plot import draw_plot
from reinit.report.views._terminal import depth_lines, summary_line
from reinit.text import bounded, md_cell, md_code, shown

if TYPE_CHECKING:  # publishing imports the writer (torch): only when a file is written
    from reinit.io.publish import Publication

StrPath = str | os.PathLike[str]

_STAT_KEYS = ("mean", "std", "min", "max", "nonfinite")

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
    *(f"before_{k}" for k in _STAT_KEYS),
    *(f"after_{k}" for k in _STAT_KEYS),
    "expected_std",
    "reference_std",
    "reference",
    "var_gain",
    "flags",
    "notes",
    "sha256",
)


def write_text_file(path: Path, text: str) -> None:
    """UTF-8 whatever the locale: a report holds tensor names from any script."""
    path.write_text(text, encoding="utf-8")


def to_csv(report: Report) -> str:
    """One row per tensor, every field of the JSON form flattened into `CSV_COLUMNS`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in report.tensors:
        before = e.before.to_dict() if e.before else dict.fromkeys(_STAT_KEYS)
        after = e.after.to_dict()
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
            *(before[k] for k in _STAT_KEYS),
            *(after[k] for k in _STAT_KEYS),
            e.expected_std,
            e.reference_std,
            e.reference,
            e.var_gain,
            ";".join(e.flags),
            "; ".join(e.notes),
            e.sha256,
        ]
        # the csv module quotes a cell with a newline, a quote or a comma; control and bidi
        # characters are escaped too, so a spreadsheet or a terminal shows them as text.
        w.writerow(["" if v is None else shown(v) if isinstance(v, str) else v for v in row])
    return buf.getvalue()


def _markdown_steps(steps: tuple[ReportStep, ...] | None) -> list[str]:
    """`- step 1 of 3: `seed 0, rules …; --drop x``: each step's text (the record's, the
    file's) in a code span, as the rules line above shows rules, so a recorded `<img …>` or
    `[link](…)` is shown, never rendered; bounded as the terminal's lines are."""
    if not steps:
        return [f"- {md_cell(line)}" for line in step_lines(steps)]
    n = len(steps)
    return [f"- step {i} of {n}: {md_code(bounded(st.text()))}" for i, st in enumerate(steps, 1)]


def to_markdown(report: Report) -> str:
    """A header, `## Tensors by kind` (one table row per group of tensors, flags with their
    counts in the last column) and
    `## Per layer` (one table per tensor kind, a column per layer)."""
    lines = [
        f"# reinit report: {md_cell(report.source)}",
        "",
        f"- output: {md_cell(report.output or '(none)')}",
        f"- seed: {report.seed}",
        f"- rules: {', '.join(md_code(r) for r in report.rules) or '(none)'}",
        *_markdown_steps(report.steps),
        f"- {summary_line(report)}",
        *(f"- warning: {md_cell(w)}" for w in report.warnings),
        *(f"- {md_cell(line)}" for line in depth_lines(report.tensors)),
        "",
        "## Tensors by kind",
        "",
        *kinds_markdown(report.tensors),
        "",
        "One row per kind (the name with its numbers replaced by `*`), shape, action and rule; "
        "numbers as min–max over the group; flagged groups first. The JSON and CSV reports "
        "list every tensor.",
    ]
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


def _to_json(report: Report) -> str:
    return report.to_json(end="\n")


#: The text report formats by extension. A new format: a renderer here and its suffix in
#: `reinit.io.targets.SUFFIXES["report"]` (which every path is checked against first).
RENDERERS: dict[str, Callable[[Report], str]] = {
    ".json": _to_json,
    ".csv": to_csv,
    ".md": to_markdown,
}


def render_for_path(report: Report, filename: str) -> str:
    """The report in the format `filename`'s extension names."""
    check_suffix(filename, "--report", "report")  # the one message for an unknown format
    suffix = next(k for k in RENDERERS if filename.lower().endswith(k))  # `.json` alone too
    return RENDERERS[suffix](report)


@dataclass(frozen=True)
class SideOutput:
    """A file written beside (or instead of) a checkpoint: a text report or the plot."""

    kind: Literal["report", "plot"]
    path: Path


def check_formats(reports: Iterable[StrPath], plot: StrPath | None, option: str) -> None:
    """Refuse an unknown report or plot extension before any work (a typo costs nothing);
    `option` names the report flag as the user gave it (`--report` or `-o`)."""
    for r in reports:
        check_suffix(r, option, "report")
    if plot is not None:
        check_suffix(plot, "--plot", "plot")


def report_targets(
    reports: Iterable[StrPath],
    plot: StrPath | None,
    option: str,
    *,
    inputs: Inputs,
    overwrite: bool,
    also: Sequence[Path] = (),
) -> list[SideOutput]:
    """The report and plot paths of a run, each checked by the one rule (`check_target`:
    known extension, never an input, never an existing file without `overwrite`), and all of
    them (with `also`, the run's other outputs) distinct."""
    out = [
        SideOutput("report", check_target(r, option, "report", inputs=inputs, overwrite=overwrite))
        for r in reports
    ]
    if plot is not None:
        path = check_target(plot, "--plot", "plot", inputs=inputs, overwrite=overwrite)
        out.append(SideOutput("plot", path))
    check_distinct([*also, *(t.path for t in out)])
    return out


def stage_report_files(
    pub: Publication, report: Report, targets: Sequence[SideOutput], how: str
) -> None:
    """Write each target into a temporary of `pub` (published by the caller's `commit`)."""
    from reinit.io.writer import write_error

    for t in targets:
        tmp = pub.stage(t.path, how=how)
        try:
            if t.kind == "plot":
                draw_plot(report, tmp)
            else:
                write_text_file(tmp, render_for_path(report, t.path.name))
        except OSError as e:  # named as the user named it, not as our temporary
            raise write_error(str(t.path), e) from None


def publish_report_files(report: Report, targets: Sequence[SideOutput], how: str) -> None:
    """Write `targets` and publish them together (all of them or none)."""
    if not targets:
        return
    from reinit.io.publish import Publication

    with Publication() as pub:
        stage_report_files(pub, report, targets, how)
        pub.commit()


def write_report(report: Report, path: StrPath, *, replace: bool = True) -> None:
    """Write `report` to `path` in the format its extension names (.json, .csv, .md),
    atomically (a temporary beside it, renamed when complete; without `replace`, an existing
    file is an error, even one that appears meanwhile).

    Example:
        >>> write_report(reinit.report_checkpoint("model.safetensors"), "r.md")  # doctest: +SKIP
    """
    from reinit.io.publish import how_to_publish

    check_suffix(path, "--report", "report")
    target = SideOutput("report", Path(path))
    publish_report_files(report, [target], how_to_publish(overwrite=replace))


def plot_report(
    report: Report, path: StrPath, title: str | None = None, *, replace: bool = True
) -> None:
    """Write the `--plot` PNG of `report` (see `draw_plot`) to `path` atomically.

    Example:
        >>> plot_report(reinit.report_checkpoint("model.safetensors"), "std.png")  # doctest: +SKIP
    """
    from reinit.io.publish import Publication, how_to_publish

    check_suffix(path, "--plot", "plot")
    with Publication() as pub:
        tmp = pub.stage(Path(path), how=how_to_publish(overwrite=replace))
        draw_plot(report, tmp, title)
        pub.commit()
