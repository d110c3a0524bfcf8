"""docs/reference.md's two scheme tables list every scheme `reinit schemes --json` lists, with
its aliases and its arguments' defaults as the command states them (a default of None is
written `auto`, a required argument by its name alone, a scheme without arguments `—`), and
no scheme the command does not have. A scheme added, renamed or given another default without
its row fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run

REFERENCE = Path(__file__).parents[1] / "docs" / "reference.md"


def rows() -> dict[str, list[str]]:
    """Each table row of the reference's "Schemes" section, keyed by every scheme name its
    first cell writes in backticks: [names cell, arguments cell, std cell]."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("\n## Schemes\n", 1)[1].split("\n### Partial re-init", 1)[0]
    out: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`(\w+)`", cells[0]):
            out[name] = cells
    return out


def listed() -> list[dict]:
    r = run("schemes", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def default_text(value: object) -> str:
    if value is None:
        return "auto"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_the_tables_name_every_scheme_and_alias_and_nothing_else():
    names = {s["name"] for s in listed()} | {a for s in listed() for a in s["aliases"]}
    assert set(rows()) == names | {"keep"}  # keep: the table's row for the non-scheme action


@pytest.mark.parametrize("scheme", listed(), ids=lambda s: s["name"])
def test_a_schemes_row_states_its_arguments_and_defaults(scheme):
    table = rows()
    names, arguments, _std = table[scheme["name"]]
    for alias in scheme["aliases"]:
        assert table[alias] is table[scheme["name"]], (scheme["name"], alias)
    if not scheme["arguments"]:
        assert arguments.startswith("—"), (scheme["name"], arguments)
        return
    code = " ".join(re.findall(r"`([^`]+)`", arguments)).replace("\\|", "|")
    for arg in scheme["arguments"]:
        if arg["required"]:
            assert re.search(rf"(?<![\w=]){arg['name']}(?![\w=])", code), (scheme["name"], arg)
        else:
            want = f"{arg['name']}={default_text(arg['default'])}"
            assert re.search(rf"(?<!\w){re.escape(want)}(?![\w.])", code), (scheme["name"], want)
