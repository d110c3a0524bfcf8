"""`reinit report OUT --against SRC`: apply's verdict on the written file.

Why: `report` judged every tensor of OUT as `kept`, so a file `apply` flagged 34 times
`off_reference` passed `--fail-on off_reference` with 0 flags, and a CI gate on the output
let it through. Here every tensor that differs from SRC (or is new) is judged as `apply`
judged it, by replaying what OUT records (its safetensors `reinit` metadata, a DCP's
`reinit.json`, `run.record`):

- the steps: OUT records every step that made it (a recipe's, or a chain of applies through
  files: `before`), and the ones after those SRC itself records are replayed in order (all of
  them when SRC records none: it is their first input; OUT's own run alone when SRC's steps
  do not begin OUT's: `steps_from`);
- each step's surgery (`--drop`, `--rename`, `--resize`, `--add`) is run again on the names
  before it, from SRC's (`replay_of`): each of OUT's tensors is compared with the SRC tensor
  it came from (a renamed one under its old name, through every step), an added one is new,
  and a grown one is judged against its std before, with its fill as its scheme, as apply
  judged it. A record that does not give OUT's tensors from SRC (another baseline, a file
  edited after apply) is set aside with a warning;
- each step's rules are planned on the names after its surgery: each differing tensor gets
  the action and scheme the rule of the last step that changed it gave it (the expected std
  for `std_off`). Rules that need a model (`default`, `type:`) are replayed with `--model`
  (the recorded model is a name to show, never loaded from the file); without it they are
  set aside with a warning naming the recorded model;
- a tensor that differs though the steps, replayed in full, do not change it was changed by
  something the record does not hold (SRC is not the input of the steps replayed; an edit
  after): it is judged against no reference (`UNRECORDED`: no `off_reference` against a
  config it never followed), and one warning names those tensors.

The report then finds references (OUT's config, the model's init with `--model`, the untouched
tensors) and flags as `apply` did. A transplant is judged against its source: the source is not
re-read, and a tensor whose rule copies it as it is, is on reference by definition."""

from __future__ import annotations

__all__ = ["Replay", "Stage", "as_applied", "replay_of", "steps_from"]

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from reinit.errors import ReinitError, RuleError, SchemeError
from reinit.io.checkpoint import Checkpoint, TensorRef
from reinit.planning.config_ties import config_ties, resize_ties
from reinit.planning.init_trace import AppliedInit
from reinit.planning.model import ModelInput, ModelView, check_default, default_init
from reinit.planning.planner import Plan, PlanEntry, check_model_needs, plan
from reinit.planning.session import model_view, resolve_rules
from reinit.planning.surgery import Edited, edit_refs, mark_plan, parse_surgery
from reinit.planning.ties import resolve_ties
from reinit.report.entries import NOTE_CHANGED, NOTE_NEW, NOTE_SHAPE, TensorEntry
from reinit.report.flags import kind_of
from reinit.report.reference import NOT_RE_READ, RESIZED, SOURCE, UNRECORDED
from reinit.rules import Rule, parse_rules
from reinit.run.entry import entry_for
from reinit.run.record import RECORD_FORMAT, STEP_FORMAT, Provenance, recorded
from reinit.schemes import DEFAULT


@dataclass(frozen=True)
class Stage:
    """One recorded step as replayed from the baseline: its record, its surgery run again on
    the names before it (None: it had none, or the surgery was set aside) and the tensors its
    rules are planned on (the names and shapes after its surgery), and the baseline's tied
    names still there after it (shared storage in a `.bin`, a config's tie of two equal
    copies): apply tied them, whatever OUT's own form still says of it."""

    step: Provenance
    edited: Edited | None
    refs: tuple[TensorRef, ...]
    tied: Mapping[str, str] = field(default_factory=dict)

    def earlier_name(self, name: str) -> str | None:
        """`name`'s name before this step (None: this step's `--add` made it)."""
        if self.edited is None:
            return name
        if name in self.edited.added:
            return None
        return self.edited.origin.get(name, name)


@dataclass(frozen=True)
class Replay:
    """What `report --against` knows of how OUT was made: its record, the steps replayed from
    the baseline (`stages`, in order, OUT's own run last: every step OUT records when the
    baseline is their first input), the `--model` view, and what could not be replayed (the
    report's warnings)."""

    record: Provenance
    stages: tuple[Stage, ...]
    surgery: bool = False  # the stages' surgery replayed (some recorded, and it gives OUT)
    view: ModelView | None = None
    warnings: tuple[str, ...] = ()
    recorded: bool = False  # OUT has a record (written by reinit), not the stand-in
    # the baseline names a replayed --drop removed: with a replayed surgery, or one that
    # gives OUT's tensors as a --format dcp output holds them (then set aside all the same)
    dropped: tuple[str, ...] = ()
    # the config apply read its schemes' arguments from (scaled_normal's layers): the baseline's
    config: Mapping[str, Any] | None = None

    def origin(self, name: str) -> str | None:
        """The baseline name OUT's `name` came from, followed back through every stage
        (None: added by an `--add`); `name` itself without a replayed surgery."""
        at: str | None = name
        for stage in reversed(self.stages):
            at = stage.earlier_name(at) if at is not None else None
        return at

    def origins(self) -> dict[str, str | None]:
        """OUT's name -> the baseline name its values came from (None: added by `--add`);
        empty without a replayed surgery (then names are matched as they are)."""
        if not self.surgery:
            return {}
        return {r.name: self.origin(r.name) for r in self.stages[-1].refs}


def _dropped(stages: Sequence[Stage]) -> tuple[str, ...]:
    """The baseline names the stages' `--drop` removed (each under its baseline name, followed
    back through the stages before the one that dropped it)."""
    names = []
    for i, stage in enumerate(stages):
        for name in stage.edited.dropped if stage.edited is not None else ():
            at: str | None = name
            for earlier in reversed(stages[:i]):
                at = earlier.earlier_name(at) if at is not None else None
            if at is not None:  # None: an earlier step's --add made it
                names.append(at)
    return tuple(names)


def replay_of(
    record: Provenance | None,
    ckpt: Checkpoint,
    base: Checkpoint,
    model: ModelInput | None = None,
) -> Replay:
    """OUT's record (seed 0 and no rules when it has none) replayed from `base`: the steps it
    records after the ones `base` records (all of them when `base` records none), their
    surgery on `base`'s names, and the view of `model` (given on the command line) over OUT's
    names."""
    has_record = record is not None
    record = record or Provenance(0, ())
    steps = steps_from(record, recorded(base))
    stages, warnings, dropped = _surgery_on(steps, ckpt, base)
    surgery = not warnings and any(st.edited is not None for st in stages)
    view = model_view(model, ckpt) if model is not None else None
    config = _config_of(base) or _config_of(ckpt)
    return Replay(record, stages, surgery, view, warnings, has_record, dropped, config)


def _config_of(ckpt: Checkpoint) -> Mapping[str, Any] | None:
    """A checkpoint's config.json; None when it cannot be read (as for the references)."""
    try:
        return ckpt.config()
    except ReinitError:
        return None


def steps_from(record: Provenance, base: Provenance | None) -> tuple[Provenance, ...]:
    """The steps of OUT's record that start from the baseline: all of them when the baseline
    records none (it is their first input), the ones after the baseline's own when OUT's
    begin with those (it is a later step's input); else OUT's own run alone (the baseline is
    no input the record names: judged as a one-step record is)."""
    steps = record.steps
    done = base.steps if base is not None else ()
    if steps is None or done is None or len(done) >= len(steps):
        return (record,)
    if not all(a.same_step(b) for a, b in zip(done, steps, strict=False)):
        return (record,)
    return steps[len(done) :]


def _surgery_on(
    steps: Sequence[Provenance], ckpt: Checkpoint, base: Checkpoint
) -> tuple[tuple[Stage, ...], tuple[str, ...], tuple[str, ...]]:
    """Each step's recorded surgery run again on the names before it, from the baseline's,
    when together they give OUT's tensors (names and shapes); else stages planned on OUT's
    names with no surgery, and why. Tied names resize together, as apply resized them. Then
    the baseline names it dropped, where it gives OUT's tensors (as they are, or as a DCP
    holds them)."""
    refs, aliases = tuple(base.refs()), _resize_aliases(steps, base)
    stages: list[Stage] = []
    for i, step in enumerate(steps):
        edited, why = _step_surgery(step, refs, aliases)
        if why is not None:
            return _unedited(steps, ckpt), (_set_aside(ckpt, why, i, len(steps)),), ()
        if edited is not None:
            refs, aliases = edited.refs, _still(aliases, edited.refs)
        stages.append(Stage(step, edited, refs, aliases))
    if any(st.edited is not None for st in stages) and _shapes(refs) != _shapes(ckpt.refs()):
        why, placed = _not_given(refs, ckpt, base)
        gone = _dropped(stages) if placed else ()
        return _unedited(steps, ckpt), (_set_aside(ckpt, why, None, len(steps)),), gone
    last, out = stages[-1], tuple(ckpt.refs())
    return (
        (*stages[:-1], replace(last, refs=out, tied=_still(last.tied, out))),
        (),
        _dropped(stages),
    )


def _not_given(refs: Sequence[TensorRef], ckpt: Checkpoint, base: Checkpoint) -> tuple[str, bool]:
    """Why the replayed surgery's tensors (`refs`) are not OUT's: OUT a `--format dcp` output
    that holds them under the model's `state_dict()` names (its config's model, as the writer
    placed them: True), else another baseline or a file changed after apply."""
    from reinit.planning.model_named import dcp_shapes
    from reinit.run.config_update import update_config

    out, config = os.fspath(ckpt.source), base.config()  # a DCP output has no config.json:
    config = update_config(config, _shapes(refs)).config if config is not None else None
    if dcp_shapes(refs, config, out) == _shapes(ckpt.refs()):  # the writer's, as surgery left it
        return (
            f"run on {base.source}, gives its tensors as it holds them: under the model's "
            "state_dict() names (a --format dcp output), which are not paired with the "
            "baseline's per-expert names"
        ), True
    return (
        f"run on {base.source}, does not give its tensors (another baseline, or a file "
        "changed after apply)"
    ), False


def _resize_aliases(steps: Sequence[Provenance], base: Checkpoint) -> dict[str, str]:
    """The baseline's tied names (shared storage, or the config's tie of two equal copies:
    read only when a step resizes)."""
    if not any(st.surgery is not None and st.surgery.resize for st in steps):
        return base.aliases()
    return {**base.aliases(), **resize_ties(base, None, _resized_names(steps))}


def _resized_names(steps: Sequence[Provenance]) -> set[str] | None:
    """The baseline names the steps' `--resize` name, as apply asks (None: any may be, after
    a `--rename`, or a record that does not parse: `_step_surgery` says so)."""
    names: set[str] = set()
    for st in steps:
        s = st.surgery
        if s is None or s.rename:
            return None
        try:
            names.update(r.name for r in parse_surgery((), (), (), s.resize).resizes)
        except ReinitError:
            return None
    return names


def _step_surgery(
    step: Provenance, refs: Sequence[TensorRef], aliases: dict[str, str]
) -> tuple[Edited | None, str | None]:
    """One step's surgery replayed on `refs` (None: it had none), or why it cannot be."""
    if step.surgery is None:
        if step.format > RECORD_FORMAT:
            return None, f"was recorded by a later reinit (record format {step.format})"
        return None, "was not recorded (too large)"
    if not step.surgery:
        return None, None
    s = step.surgery
    try:
        surgery = parse_surgery(s.add, s.drop, s.rename, s.resize)
        return edit_refs(refs, surgery, allow_unmatched=True, aliases=aliases), None
    except ReinitError as e:
        return None, f"does not replay on the baseline ({e})"


def _still(aliases: Mapping[str, str], refs: Sequence[TensorRef]) -> dict[str, str]:
    """The tied names that are both still there after a step's surgery."""
    names = {r.name for r in refs}
    return {n: t for n, t in aliases.items() if n in names and t in names}


def _unedited(steps: Sequence[Provenance], ckpt: Checkpoint) -> tuple[Stage, ...]:
    refs = tuple(ckpt.refs())
    return tuple(Stage(step, None, refs) for step in steps)


def _set_aside(ckpt: Checkpoint, why: str, index: int | None, count: int) -> str:
    out = os.fspath(ckpt.source)
    which = (
        f" (step {index + 1} of the {count} it records)" if index is not None and count > 1 else ""
    )
    return f"{out}: its recorded surgery{which} {why}; {_UNREPLAYED}"


_UNREPLAYED = "the tensors it added, renamed or resized are judged without it"


def _shapes(refs: Sequence[TensorRef]) -> dict[str, tuple[int, ...]]:
    return {r.name: tuple(r.shape) for r in refs}


def as_applied(
    entries: Sequence[TensorEntry],
    ckpt: Checkpoint,
    replay: Replay,
    stacked: frozenset[str] = frozenset(),
) -> tuple[list[TensorEntry], tuple[str, ...]]:
    """`entries` (from `report --against`) with every tensor that differs from the baseline
    judged as `apply` judged it (see the module docstring); the others left `kept`. With the
    warnings of what could not be replayed. `stacked`: OUT's names that hold several baseline
    tensors (a `--format dcp` output's stacked experts, the baseline seen under its names),
    which rules naming the baseline's per-expert tensors do not match here."""
    plans, warnings = _planned(ckpt, replay)
    judges = [_Judge(replay.view, st.step.seed) for st in replay.stages]
    whole = _replayed_whole(replay) and not warnings
    out: list[TensorEntry] = []
    unrecorded: list[str] = []
    unmatched: list[str] = []
    for e in entries:
        k, p = _acted(e, replay, plans)
        if not _differs(e):
            out.append(_unchanged(judges[k], e, p))
        elif whole and not _recorded_change(p):
            (unmatched if e.name in stacked else unrecorded).append(e.name)
            out.append(_unrecorded(e))
        else:
            out.append(judges[k](e, p))
    if unrecorded:
        warnings = (*warnings, _unrecorded_warning(ckpt, unrecorded, len(replay.stages)))
    if unmatched:
        warnings = (*warnings, _stacked_warning(ckpt, unmatched))
    return out, (*replay.warnings, *warnings)


def _stacked_warning(ckpt: Checkpoint, names: Sequence[str]) -> str:
    out = os.fspath(ckpt.source)
    first = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f"{out}: {len(names)} stacked tensor(s) differ from the baseline though its recorded "
        f"rules, replayed on its own names, do not change them ({first}): it holds the "
        "baseline's per-expert tensors stacked under the model's state_dict() names, which "
        "rules naming the per-expert tensors do not match; they are judged against no "
        "reference (compare against a DCP of the baseline written the same way to replay them)"
    )


def _acted(
    e: TensorEntry, replay: Replay, plans: Sequence[dict[str, PlanEntry]]
) -> tuple[int, PlanEntry | None]:
    """The last stage whose replayed record changes OUT's tensor `e` (followed back through
    the stages' renames) and its plan entry, as OUT holds the tensor (its name and dtype);
    else the last stage's entry (a rule that matched it and left it, or none)."""
    at: str | None = e.name
    last = len(plans) - 1
    for k in range(last, -1, -1):
        if at is None:
            break
        p = plans[k].get(at)
        if p is not None and _recorded_change(p):
            return k, p if k == last else replace(p, name=e.name, dtype_name=e.dtype)
        at = replay.stages[k].earlier_name(at)
    return last, plans[last].get(e.name)


def _replayed_whole(replay: Replay) -> bool:
    """Whether OUT's record (format 2 or later: rules and surgery) replayed in full, so a
    tensor it does not change was not changed by the runs it records."""
    fmt = replay.record.format
    return replay.recorded and STEP_FORMAT <= fmt <= RECORD_FORMAT and not replay.warnings


def _recorded_change(p: PlanEntry | None) -> bool:
    """Whether the replayed record changes this tensor (a rule that changes it, an --add, a
    --resize); apply changes nothing else (a --dtype cast is equal values, not a change)."""
    return p is not None and (p.changes or p.added or p.resized is not None)


def _unrecorded(e: TensorEntry) -> TensorEntry:
    """A differing tensor the record does not explain: changed, by nothing it says, so judged
    against no reference (`UNRECORDED`): its flags are the ones its values alone give."""
    made = _resized(e) or replace(e, action="reinit")
    return replace(made, reference=UNRECORDED, reference_std=None)


def _unrecorded_warning(ckpt: Checkpoint, names: Sequence[str], steps: int) -> str:
    out = os.fspath(ckpt.source)
    first = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    replayed = f"the {steps} steps it records" if steps > 1 else "its recorded rules and surgery"
    return (
        f"{out}: {len(names)} tensor(s) differ from the baseline though {replayed} do not "
        f"change them ({first}): the baseline is not the input of the runs it records (an "
        "output records the steps that made its input only when that input was written by "
        "reinit: compare against the input of its first recorded step), or the file changed "
        "after; they are judged against no reference"
    )


def _differs(e: TensorEntry) -> bool:
    return NOTE_CHANGED in e.notes or NOTE_NEW in e.notes


def _planned(
    ckpt: Checkpoint, replay: Replay
) -> tuple[list[dict[str, PlanEntry]], tuple[str, ...]]:
    """Each stage's names planned by its recorded rules (none when they cannot be: rules that
    need a model without `--model`, or that name tensors it no longer has), marked by its
    replayed surgery as apply marked them; by name."""
    plans: list[dict[str, PlanEntry]] = []
    warnings: list[str] = []
    for i, stage in enumerate(replay.stages):
        try:
            rules = _resolved(parse_rules(stage.step.rules), replay.config)
            the_plan = _plan_rules(stage.refs, rules, replay.view, ckpt, stage.tied)
        except ReinitError as e:
            warnings.append(_unplanned(ckpt, replay, i, e))
            the_plan = plan(stage.refs, ())
        if stage.edited is not None:
            the_plan = mark_plan(the_plan, stage.edited)
        plans.append({p.name: p for p in the_plan.entries})
    return plans, tuple(warnings)


def _resolved(rules: Sequence[Rule], config: Mapping[str, Any] | None) -> Sequence[Rule]:
    """The rules with the arguments apply read from the config (scaled_normal's layers), as
    it drew them; as recorded where the config does not give them (apply had `--config`)."""
    try:
        return resolve_rules(rules, config)
    except RuleError:
        return rules


def _plan_rules(
    refs: Sequence[TensorRef],
    rules: Sequence[Rule],
    view: ModelView | None,
    ckpt: Checkpoint,
    tied: Mapping[str, str],
) -> Plan:
    """A stage's names planned by its rules as apply planned them, tied groups included (a
    rule on one tied name changed the others; the ties are OUT's, `ckpt`'s, and the
    baseline's still there, `tied`: a `.bin`'s shared storage written as two safetensors
    copies is tied no more in OUT, but was when apply ran)."""
    if view is None:
        check_model_needs(rules, None)
        the_plan = plan(refs, rules, allow_unmatched=True)
    else:
        the_plan = plan(
            refs,
            rules,
            allow_unmatched=True,
            module_types=view.module_types,
            held_elsewhere=view.held_elsewhere(),
        )
        the_plan = check_default(the_plan, view)
    tied_by_config = config_ties(the_plan, ckpt, view)
    return resolve_ties(the_plan, {**tied, **ckpt.aliases()}, tied_by_config)[0]


def _unplanned(ckpt: Checkpoint, replay: Replay, index: int, e: ReinitError) -> str:
    """Why a stage's recorded rules were set aside: a model to pass (naming the recorded
    one), or the planner's own words."""
    out = os.fspath(ckpt.source)
    step = replay.stages[index].step
    count = len(replay.stages)
    which = f" (step {index + 1} of the {count} it replays)" if count > 1 else ""
    unjudged = "the tensors that differ are judged without its rules"
    if replay.view is None and _needs_model(step.rules):
        model = step.model
        had = f" (apply had {model.shown()})" if model is not None else ""
        return (
            f"{out}: its rules{which} need the model (default, type:): pass --model{had} to "
            f"judge them as apply did; {unjudged}"
        )
    return f"{out}: its recorded rules{which} do not plan on its tensors ({e}); {unjudged}"


def _needs_model(texts: Sequence[str]) -> bool:
    """Whether recorded rules need the model (`default`, `type:`); False for rules that do
    not parse (a record edited by hand: the planner's words say why)."""
    try:
        rules = parse_rules(texts)
    except ReinitError:
        return False
    return any(
        r.pattern.module_types or (r.scheme is not None and r.scheme.name == DEFAULT) for r in rules
    )


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
        elif made.action == "transplant" and made.is_float:  # judged by apply, from its source
            made = replace(made, reference=NOT_RE_READ, reference_std=None)
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
