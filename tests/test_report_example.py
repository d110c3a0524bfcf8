"""docs/report-example.md is the Markdown report `scripts/make_docs_plot` writes now (its
timing aside): the page the report guide sends readers to cannot go stale when the report's
columns, flags or references change. (It had: 12 layers and no reference column's values
while the script and the plot beside it had moved on to 24 layers and the reference scale.)
Regenerate both with `.venv/bin/python scripts/make_docs_plot`.

Internal: writes the page with reinit.report.views._files.write_report, as the script does.
"""

from __future__ import annotations

import importlib.util
import re
from importlib.machinery import SourceFileLoader
from pathlib import Path

from reinit.report.views._files import write_report

ROOT = Path(__file__).parents[1]


def without_timing(text: str) -> str:
    return re.sub(r"\b\d+(\.\d+)?s\b", "<seconds>", text)


def test_the_report_example_page_is_what_the_script_writes(tmp_path):
    loader = SourceFileLoader("make_docs_plot", str(ROOT / "scripts" / "make_docs_plot"))
    spec = importlib.util.spec_from_loader("make_docs_plot", loader)
    assert spec is not None
    script = importlib.util.module_from_spec(spec)
    loader.exec_module(script)
    report = script.example_report()
    write_report(report, tmp_path / "example.md")
    written = without_timing((tmp_path / "example.md").read_text(encoding="utf-8"))
    page = without_timing((ROOT / "docs" / "report-example.md").read_text(encoding="utf-8"))
    assert page == written, "docs/report-example.md is stale: run scripts/make_docs_plot"
