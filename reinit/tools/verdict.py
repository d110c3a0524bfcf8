"""`reinit report OUT --against SRC`: apply's verdict on the written file.

Why: `report` judged every tensor of OUT as `kept`, so a file `apply` flagged 34 times
`off_reference` passed `--fail-on off_reference` with 0 flags, and a CI gate on the output
let it through. Here every tensor that differs from SRC (or is new) is judged as `apply`
judged it: by the rules OUT records (its safetensors `reinit` metadata), each differing
tensor gets the action and scheme its rule gave it (the expected std for `std_off`), and the
report then finds references (OUT's config, the untouched tensors) and flags as `apply` did.
A transplant is judged against its source: the source is not re-read, and a tensor whose
rule copies it as it is, is on reference by definition."""

from __future__ import annotations

__all__ = ["as_applied"]

from collections.abc import Sequence
from dataclasses import replace

from reinit.errors import ReinitError
from reinit.io.checkpoint import Checkpoint
from reinit.planning.planner import PlanEntry, plan
from reinit.report.entries import NOTE_CHANGED, NOTE_NEW, NOTE_SHAPE, TensorEntry
from reinit.report.reference import RESIZED, SOURCE
from reinit.rules import parse_rules
from reinit.run.entry import entry_for


def _differs(e: TensorEntry) -> bool:
    return NOTE_CHANGED in e.notes or NOTE_NEW in e.notes


def _planned(ckpt: Checkpoint, rules: Sequence[str]) -> dict[str, PlanEntry]:
    """OUT's names planned by its recorded rules; none when they cannot be (no rules, or rules
    that need a model or name tensors OUT no longer has)."""
    if not rules:
        return {}
    try:
        the_plan = plan(ckpt.refs(), parse_rules(rules), allow_unmatched=True)
    except ReinitError:
        return {}
    return {p.name: p for p in the_plan.entries}


def _judged(e: TensorEntry, p: PlanEntry | None) -> TensorEntry:
    """A differing tensor's entry as apply made it: a planned reinit with its scheme (and the
    expected std), a transplant on its source's reference, else a reinit of no known scheme
    (judged against the model's init scale only)."""
    if p is None or not p.changes:
        return _resized(e) or replace(e, action="reinit")
    fans = (e.fan_in, e.fan_out) if e.fan_in is not None and e.fan_out is not None else None
    made = entry_for(p, e.after, e.before, e.source, e.notes, fans)
    if made.action == "transplant" and made.is_float and made.transform is None:
        made = replace(made, reference=SOURCE, reference_std=e.after.std)
    return made


def as_applied(
    entries: Sequence[TensorEntry], ckpt: Checkpoint, rules: Sequence[str]
) -> list[TensorEntry]:
    """`entries` (from `report --against`) with every tensor that differs from the baseline
    judged as `apply` judged it (see the module docstring); the others left `kept`."""
    planned = _planned(ckpt, rules)
    return [
        _judged(e, planned.get(e.name)) if _differs(e) else _unchanged(e, planned.get(e.name))
        for e in entries
    ]


def _resized(e: TensorEntry) -> TensorEntry | None:
    """A tensor whose shape differs from the baseline's, as `--resize` left it when no rule
    touched it: shrunk, `kept` (its values are the baseline's leading block); grown, a
    `reinit` judged against its own std before (the rows it kept), as apply judged it."""
    old = _baseline_shape(e)
    if old is None or len(old) != len(e.shape) or e.before is None:
        return None
    if all(n <= o for n, o in zip(e.shape, old, strict=True)):
        return replace(e, action="kept")
    if not e.is_float or not e.before.std:
        return replace(e, action="reinit")
    return replace(e, action="reinit", reference=RESIZED, reference_std=e.before.std)


def _baseline_shape(e: TensorEntry) -> tuple[int, ...] | None:
    for note in e.notes:
        if note.startswith(NOTE_SHAPE):
            try:
                return tuple(int(n) for n in note[len(NOTE_SHAPE) :].strip("[]").split(",") if n)
            except ValueError:
                return None
    return None


def _unchanged(e: TensorEntry, p: PlanEntry | None) -> TensorEntry:
    """A tensor equal to the baseline (or its cast): `kept`; `skipped` with the reason where a
    rule matched it and could not take it; what its rule did where that left the same values
    (a transplant of equal values, zeros on zeros), as apply said."""
    if p is not None and p.changes:
        return _judged(e, p)
    if p is None or p.action != "skipped":
        return e
    return replace(e, action="skipped", rule=p.rule_text or None, reason=p.reason)
