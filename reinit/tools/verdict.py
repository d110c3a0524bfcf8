"""`reinit report OUT --against SRC`: apply's verdict on the written file.

Why: `report` judged every tensor of OUT as `kept`, so a file `apply` flagged 34 times
`off_reference` passed `--fail-on off_reference` with 0 flags, and a CI gate on the output
let it through. Here every tensor that differs from SRC (or is new) is judged as `apply`
judged it, by replaying what OUT records (its safetensors `reinit` metadata, `run.record`):

- the surgery (`--drop`, `--rename`, `--resize`, `--add`) is run again on SRC's names
  (`replay_of`): each of OUT's tensors is compared with the SRC tensor it came from (a renamed
  one under its old name), an added one is new, and a grown one is judged against its std
  before, with its fill as its scheme, as apply judged it. A record that does not give OUT's
  tensors from SRC (another baseline, a file edited after apply) is set aside with a warning;
- the rules are planned on OUT's names: each differing tensor gets the action and scheme its
  rule gave it (the expected std for `std_off`). Rules that need a model (`default`, `type:`)
  are replayed with `--model` (the recorded model is a name to show, never loaded from the
  file); without it they are set aside with a warning naming the recorded model;
- a tensor that differs though the record, replayed in full, does not change it was changed by
  something the record does not hold (a recipe's or a chain's earlier step: a multi-step
  recipe records its last step, as chained applies do; an edit after): it is judged against
  no reference (`UNRECORDED`: no `off_reference` against a config it never followed), and one
  warning names those tensors.

The report then finds references (OUT's config, the model's init with `--model`, the untouched
tensors) and flags as `apply` did. A transplant is judged against its source: the source is not
re-read, and a tensor whose rule copies it as it is, is on reference by definition."""

from __future__ import annotations

__all__ = ["Replay", "as_applied", "replay_of"]

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from reinit.errors import ReinitError, SchemeError
from reinit.io.checkpoint import Checkpoint, TensorRef
from reinit.planning.config_ties import config_ties
from reinit.planning.init_trace import AppliedInit
from reinit.planning.model import ModelInput, ModelView, check_default, default_init
from reinit.planning.planner import Plan, PlanEntry, check_model_needs, plan
from reinit.planning.session import model_view
from reinit.planning.surgery import Edited, edit_refs, mark_plan, parse_surgery
from reinit.planning.ties import resolve_ties
from reinit.report.entries import NOTE_CHANGED, NOTE_NEW, NOTE_SHAPE, TensorEntry
from reinit.report.flags import kind_of
from reinit.report.reference import RESIZED, SOURCE, UNRECORDED
from reinit.rules import Rule, parse_rules
from reinit.run.entry import entry_for
from reinit.run.record import RECORD_FORMAT, Provenance
from reinit.schemes import DEFAULT


@dataclass(frozen=True)
class Replay:
    """What `report --against` knows of how OUT was made: its record, its surgery replayed on
    the baseline's names (None: none recorded, or set aside), the `--model` view, and what
    could not be replayed (the report's warnings)."""

    record: Provenance
    edited: Edited | None = None
    view: ModelView | None = None
    warnings: tuple[str, ...] = ()
    recorded: bool = False  # OUT has a record (written by reinit), not the stand-in

    def origins(self) -> dict[str, str | None]:
        """OUT's name -> the baseline name its values came from (None: added by `--add`);
        empty without a replayed surgery (then names are matched as they are)."""
        if self.edited is None:
            return {}
        return {**self.edited.origin, **dict.fromkeys(self.edited.added)}


def replay_of(
    record: Provenance | None,
    ckpt: Checkpoint,
    base: Checkpoint,
    model: ModelInput | None = None,
) -> Replay:
    """OUT's record (seed 0 and no rules when it has none) with its surgery replayed on
    `base` and the view of `model` (given on the command line) over OUT's names."""
    recorded = record is not None
    record = record or Provenance(0, ())
    edited, warnings = _surgery_on(record, ckpt, base)
    view = model_view(model, ckpt) if model is not None else None
    return Replay(record, edited, view, warnings, recorded)


def _surgery_on(
    record: Provenance, ckpt: Checkpoint, base: Checkpoint
) -> tuple[Edited | None, tuple[str, ...]]:
    """The recorded surgery run again on the baseline's names, when it gives OUT's tensors
    (names and shapes); else None and why."""
    out = os.fspath(ckpt.source)
    if record.surgery is None:
        why = (
            f"was recorded by a later reinit (record format {record.format})"
            if record.format > RECORD_FORMAT
            else "was not recorded (too large)"
        )
        return None, (f"{out}: its surgery {why}; {_UNREPLAYED}",)
    if not record.surgery:
        return None, ()
    s = record.surgery
    try:
        surgery = parse_surgery(s.add, s.drop, s.rename, s.resize)
        edited = edit_refs(base.refs(), surgery, allow_unmatched=True, aliases=base.aliases())
    except ReinitError as e:
        why = f"does not replay on the baseline ({e})"
        return None, (f"{out}: its recorded surgery {why}; {_UNREPLAYED}",)
    if _shapes(edited.refs) != _shapes(ckpt.refs()):
        why = (
            f"run on {base.source}, does not give its tensors (another baseline, or a file "
            "changed after apply)"
        )
        return None, (f"{out}: its recorded surgery, {why}; {_UNREPLAYED}",)
    return edited, ()


_UNREPLAYED = "the tensors it added, renamed or resized are judged without it"


def _shapes(refs: Sequence[TensorRef]) -> dict[str, tuple[int, ...]]:
    return {r.name: tuple(r.shape) for r in refs}


def as_applied(
    entries: Sequence[TensorEntry], ckpt: Checkpoint, replay: Replay
) -> tuple[list[TensorEntry], tuple[str, ...]]:
    """`entries` (from `report --against`) with every tensor that differs from the baseline
    judged as `apply` judged it (see the module docstring); the others left `kept`. With the
    warnings of what could not be replayed."""
    the_plan, warnings = _planned(ckpt, replay)
    planned = {p.name: p for p in the_plan.entries}
    judge = _Judge(replay.view, replay.record.seed)
    whole = _replayed_whole(replay) and not warnings
    out, unrecorded = [], []
    for e in entries:
        p = planned.get(e.name)
        if not _differs(e):
            out.append(_unchanged(judge, e, p))
        elif whole and not _recorded_change(p):
            unrecorded.append(e.name)
            out.append(_unrecorded(e))
        else:
            out.append(judge(e, p))
    if unrecorded:
        warnings = (*warnings, _unrecorded_warning(ckpt, unrecorded))
    return out, (*replay.warnings, *warnings)


def _replayed_whole(replay: Replay) -> bool:
    """Whether OUT's record (this format: rules and surgery) replayed in full, so a tensor it
    does not change was not changed by the run that wrote OUT."""
    return replay.recorded and replay.record.format == RECORD_FORMAT and not replay.warnings


def _recorded_change(p: PlanEntry | None) -> bool:
    """Whether the replayed record changes this tensor (a rule that changes it, an --add, a
    --resize); apply changes nothing else (a --dtype cast is equal values, not a change)."""
    return p is not None and (p.changes or p.added or p.resized is not None)


def _unrecorded(e: TensorEntry) -> TensorEntry:
    """A differing tensor the record does not explain: changed, by nothing it says, so judged
    against no reference (`UNRECORDED`): its flags are the ones its values alone give."""
    made = _resized(e) or replace(e, action="reinit")
    return replace(made, reference=UNRECORDED, reference_std=None)


def _unrecorded_warning(ckpt: Checkpoint, names: Sequence[str]) -> str:
    out = os.fspath(ckpt.source)
    first = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f"{out}: {len(names)} tensor(s) differ from the baseline though its recorded rules "
        f"and surgery do not change them ({first}): the baseline is not the input of the run "
        "that wrote it (a recipe or a chain of applies records its last step only: compare "
        "against that step's input), or the file changed after; they are judged against no "
        "reference"
    )


def _differs(e: TensorEntry) -> bool:
    return NOTE_CHANGED in e.notes or NOTE_NEW in e.notes


def _planned(ckpt: Checkpoint, replay: Replay) -> tuple[Plan, tuple[str, ...]]:
    """OUT's names planned by its recorded rules (none when they cannot be: rules that need a
    model without `--model`, or that name tensors OUT no longer has), marked by the replayed
    surgery as apply marked them."""
    warnings: tuple[str, ...] = ()
    try:
        rules = parse_rules(replay.record.rules)
        the_plan = _plan_rules(ckpt, rules, replay.view)
    except ReinitError as e:
        warnings = (_unplanned(ckpt, replay, e),)
        the_plan = plan(ckpt.refs(), ())
    if replay.edited is not None:
        the_plan = mark_plan(the_plan, replay.edited)
    return the_plan, warnings


def _plan_rules(ckpt: Checkpoint, rules: Sequence[Rule], view: ModelView | None) -> Plan:
    """OUT's names planned by the rules as apply planned them, tied groups included (a rule
    on one tied name changed the others)."""
    if view is None:
        check_model_needs(rules, None)
        the_plan = plan(ckpt.refs(), rules, allow_unmatched=True)
    else:
        the_plan = plan(
            ckpt.refs(),
            rules,
            allow_unmatched=True,
            module_types=view.module_types,
            held_elsewhere=view.held_elsewhere(),
        )
        the_plan = check_default(the_plan, view)
    tied_by_config = config_ties(the_plan, ckpt, view)
    return resolve_ties(the_plan, ckpt.aliases(), tied_by_config)[0]


def _unplanned(ckpt: Checkpoint, replay: Replay, e: ReinitError) -> str:
    """Why the recorded rules were set aside: a model to pass (naming the recorded one), or
    the planner's own words."""
    out = os.fspath(ckpt.source)
    unjudged = "the tensors that differ are judged without its rules"
    if replay.view is None and any(
        r.pattern.module_types or (r.scheme is not None and r.scheme.name == DEFAULT)
        for r in parse_rules(replay.record.rules)
    ):
        model = replay.record.model
        had = f" (apply had {model.shown()})" if model is not None else ""
        return (
            f"{out}: its rules need the model (default, type:): pass --model{had} to judge them "
            f"as apply did; {unjudged}"
        )
    return f"{out}: its recorded rules do not plan on its tensors ({e}); {unjudged}"


class _Judge:
    """A differing tensor's entry as apply made it: a planned reinit with its scheme (and the
    expected std; for `default`, the std of the init the model runs), a transplant on its
    source's reference, else a reinit of no known scheme (judged against the model's init
    scale only)."""

    def __init__(self, view: ModelView | None, seed: int):
        self.view = view
        self.seed = seed
        self.fans = view.fans if view is not None else {}
        self._inits: dict[tuple[str, tuple[int, ...]], AppliedInit | None] = {}

    def __call__(self, e: TensorEntry, p: PlanEntry | None) -> TensorEntry:
        if p is None or not p.changes:
            return _resized(e) or replace(e, action="reinit")
        fans = self.fans.get(e.name)
        if fans is None and e.fan_in is not None and e.fan_out is not None:
            fans = (e.fan_in, e.fan_out)
        made = entry_for(p, e.after, e.before, e.source, e.notes, fans, self._applied(p))
        if made.action == "transplant" and made.is_float and made.transform is None:
            made = replace(made, reference=SOURCE, reference_std=e.after.std)
        return made

    def _applied(self, p: PlanEntry) -> AppliedInit | None:
        """What `default` ran on `p` (one init per kind and shape: layers share it)."""
        if self.view is None or p.scheme is None or p.scheme.name != DEFAULT:
            return None
        key = (kind_of(p.name), tuple(p.shape))
        if key not in self._inits:
            try:
                self._inits[key] = default_init(self.view, p.name, torch.float32, self.seed)[1]
            except SchemeError:
                self._inits[key] = None
        return self._inits[key]


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


def _unchanged(judge: _Judge, e: TensorEntry, p: PlanEntry | None) -> TensorEntry:
    """A tensor equal to the baseline (or its cast): `kept`; `skipped` with the reason where a
    rule matched it and could not take it; what its rule did where that left the same values
    (a transplant of equal values, zeros on zeros), as apply said."""
    if p is not None and p.changes:
        return judge(e, p)
    if p is None or p.action != "skipped":
        return e
    return replace(e, action="skipped", rule=p.rule_text or None, reason=p.reason)
