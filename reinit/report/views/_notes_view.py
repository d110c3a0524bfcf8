"""The entries' notes as terminal lines: one `note:` line per distinct note with its count.

Why: notes such as "lossy cast float32 -> bfloat16" (a transplant from a float32 source into
bf16 targets) were only in the JSON; a user reading the terminal never learned that values
were rounded. Grouped by text so a 700-tensor transplant gives one line, not 700."""

from __future__ import annotations

__all__ = ["note_lines"]

from collections import Counter

from reinit.report.entries import NOTE_CHANGED, NOTE_NEW, Report
from reinit.report.views._kinds import applied_init
from reinit.text import shown

QUIET_NOTES = (NOTE_CHANGED, NOTE_NEW)  # already counted by the summary of `report --against`


#: Notes that differ for every tensor, said once with a count and one example: a `--rename`
#: of 101 tensors is one line, not 101 (prefix -> the line's text).
FAMILIES = {"renamed from ": "renamed"}


def _family(note: str, name: str) -> tuple[str, str]:
    """(the note's line key, its example): a family note's key is the family, its example
    `NAME (renamed from OLD)`; any other note is its own key, its example the tensor's name."""
    for prefix, family in FAMILIES.items():
        if note.startswith(prefix):
            return family, f"{note} ({name})"
    return note, name


def note_lines(report: Report) -> list[str]:
    """`note: TEXT (N tensors)` per distinct note, most frequent first; the first tensor named.
    A tensor re-initialized by `default` adds `note: default ran Linear.reset_parameters:
    kaiming_uniform(a=2.236) (...)`: which init the architecture's code ran."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for e in report.tensors:
        for note in e.notes:
            if note in QUIET_NOTES:
                continue
            key, example = _family(note, e.name)
            counts[key] += 1
            first.setdefault(key, example)
    for e in report.tensors:  # which init `default` ran, said once per distinct init
        init = applied_init(e)
        if init is not None:
            note = f"default ran {init}"
            counts[note] += 1
            first.setdefault(note, e.name)
    lines = []
    for note, n in counts.most_common():
        if n == 1 and note in FAMILIES.values():  # one renamed tensor: its own note, as it was
            lines.append(f"note: {shown(first[note])}")
            continue
        where = first[note] if n == 1 else f"{n} tensors, e.g. {first[note]}"
        lines.append(f"note: {shown(note)} ({shown(where)})")  # they quote tensor names
    return lines
