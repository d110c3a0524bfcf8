"""docs/reference.md's "Command line" synopsis lists exactly the options each command takes:
every option of `reinit COMMAND` (click's own parameter list, what `--help` prints) appears in
that command's lines, every option written there exists, a repeatable option is written `[...]...`
and a choice shows its values. A flag added to the CLI without its line in the reference (or a
flag the reference keeps after the CLI dropped it) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from reinit.cli import main

REFERENCE = Path(__file__).parents[1] / "docs" / "reference.md"
_OPTION = re.compile(r"(?<![\w-])(--?[a-z][\w-]*)")


def synopsis() -> dict[str, str]:
    """Each command's lines of the reference's synopsis block (a command's line and its
    continuation lines, up to the next `reinit COMMAND`)."""
    text = REFERENCE.read_text(encoding="utf-8").split("## Command line", 1)[1]
    block = text.split("```", 2)[1]
    out: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        line = line.split("#", 1)[0]  # a trailing comment is prose
        m = re.match(r"reinit (\w+)", line)
        if m:
            current = m.group(1)
            out[current] = ""
        if current is not None:
            out[current] += line + "\n"
    return out


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def group_of(name: str, lines: str) -> str:
    """The text from the `[` that opens the option's group to the end of that group
    (`...` after it included), or "" when the option is not in a bracket."""
    at = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", lines)
    assert at is not None
    start = lines.rfind("[", 0, at.start())
    depth, i = 0, start
    while i < len(lines):
        depth += {"[": 1, "]": -1}.get(lines[i], 0)
        if depth == 0:
            break
        i += 1
    return lines[start : i + 4]


def test_every_command_has_a_synopsis_and_no_other():
    assert sorted(synopsis()) == sorted(main.commands)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_synopsis_names_exactly_the_commands_options(name):
    lines = synopsis()[name]
    written = set(_OPTION.findall(lines))
    command = main.commands[name]
    real = {o for p in options(command) for o in (*p.opts, *p.secondary_opts)}
    assert written <= real, f"reference lists {sorted(written - real)} that `reinit {name}` lacks"
    missing = [p.opts for p in options(command) if not written & set(p.opts)]
    assert not missing, f"`reinit {name}` takes {missing}, which the reference's synopsis omits"


@pytest.mark.parametrize("name", sorted(main.commands))
def test_a_repeatable_option_is_written_with_dots_and_a_choice_with_its_values(name):
    lines = synopsis()[name]
    for p in options(main.commands[name]):
        shown = next(o for o in p.opts if re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", lines))
        group = group_of(shown, lines)
        if p.multiple:
            assert group.endswith("..."), f"{name} {shown}: repeatable, written {group!r}"
        elif group:
            assert not group.endswith("]..."), f"{name} {shown}: not repeatable, written {group!r}"
        if isinstance(p.type, click.Choice):
            assert "|".join(map(str, p.type.choices)) in group, (name, shown, group)


def test_group_of_reads_nested_brackets():
    lines = "reinit x [--dry-run [--all]] [-r|--rule R]... [--by kind|tensor]\n"
    assert group_of("--all", lines) == "[--all]] ["
    assert group_of("--rule", lines) == "[-r|--rule R]..."
    assert group_of("--by", lines).startswith("[--by kind|tensor]")
