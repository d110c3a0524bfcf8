"""The JSON report is built row by row and joined once (issue #23 M6: no dict per row kept, no
placeholder replace, no `+ "\\n"` copy); its text is unchanged: one line per tensor.

Internal: imports reinit.report.entries."""

from __future__ import annotations

import json

from reinit.errors import UsageError
from reinit.report.entries import Report


def _report(n: int) -> Report:
    row = {
        "name": "",
        "shape": [4],
        "dtype": "float32",
        "action": "reinit",
        "rule": "*=normal",
        "scheme": "normal",
        "from": None,
        "reason": None,
        "fan_in": 4,
        "fan_out": 4,
        "before": {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "nonfinite": 0},
        "after": {"mean": 0.1, "std": 1.0, "min": -2.0, "max": 2.0, "nonfinite": 0},
        "expected_std": 1.0,
        "reference_std": None,
        "reference": None,
        "var_gain": None,
        "flags": [],
        "notes": [],
    }
    rows = [{**row, "name": f"model.layers.{i}.weight"} for i in range(n)]
    summary = {"reinit": n, "transplanted": 0, "kept": 0, "skipped": 0, "flagged": 0}
    d = {
        "reinit_version": "0",
        "source": "s",
        "output": "o",
        "seed": 0,
        "rules": [],
        "tensors": rows,
        "summary": summary,
    }
    try:
        return Report.from_dict(d)
    except UsageError:  # the summary's fields, as this version has them (not a report)
        from reinit.report.entries import Summary

        fields = Summary.__dataclass_fields__
        return Report.from_dict({**d, "summary": {k: 0 for k in fields}})


def test_report_json_rows_one_per_line_and_end():
    report = _report(3_000)
    text = report.to_json(end="\n")
    assert json.loads(text)["tensors"][-1]["name"] == "model.layers.2999.weight"
    assert text.endswith("}\n") and text.count("\n    {") == 3_000
    assert report.to_json() + "\n" == text


def test_empty_report_json():
    report = _report(0)
    assert json.loads(report.to_json())["tensors"] == []
