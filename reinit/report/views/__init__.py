"""The report's renderers: terminal tables (by kind, per layer), the dry-run plan, notes, the plot, the
report files (CSV, Markdown, JSON, PNG) and the number/name formatting they share. Modules here are
private; the rest of reinit imports these names. Loaded lazily: a name loads only its own module (no
matplotlib until a plot is drawn)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reinit.lazy import lazy_exports

if TYPE_CHECKING:
    from reinit.report.views._files import (
        SideOutput,
        check_formats,
        publish_report_files,
        render_for_path,
        report_targets,
        stage_report_files,
        write_text_file,
    )
    from reinit.report.views._notes_view import note_lines
    from reinit.report.views._plan_view import plan_json, render_plan
    from reinit.report.views._plot import require_matplotlib
    from reinit.report.views._terminal import render_terminal
    from reinit.report.views._text import (
        click_style,
        column_widths,
        fmt,
        shape_text,
        shorten,
        table_row,
    )

_WHERE = {
    "SideOutput": "_files",
    "check_formats": "_files",
    "click_style": "_text",
    "column_widths": "_text",
    "fmt": "_text",
    "note_lines": "_notes_view",
    "publish_report_files": "_files",
    "render_for_path": "_files",
    "plan_json": "_plan_view",
    "render_plan": "_plan_view",
    "render_terminal": "_terminal",
    "report_targets": "_files",
    "require_matplotlib": "_plot",
    "shape_text": "_text",
    "shorten": "_text",
    "stage_report_files": "_files",
    "table_row": "_text",
    "write_text_file": "_files",
}

__all__ = [
    "SideOutput",
    "check_formats",
    "click_style",
    "column_widths",
    "fmt",
    "note_lines",
    "plan_json",
    "publish_report_files",
    "render_for_path",
    "render_plan",
    "render_terminal",
    "report_targets",
    "require_matplotlib",
    "shape_text",
    "shorten",
    "stage_report_files",
    "table_row",
    "write_text_file",
]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
