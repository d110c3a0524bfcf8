"""`apply` split across the processes `torchrun` starts (DESIGN §9): the same stages as one
process (`prepare`, `lay_out`, `write`, `publish`), with the output's shards shared out.

Every rank prepares and lays out the run itself (the same plan and layout: they are pure
functions of the command and the source), so no plan crosses the wire. Rank 0 stages the
output (the one temporary folder beside the target, on the file system every rank shares)
and tells the others its path; each rank writes its own shards there (`assign_shards`: the
biggest first, each to the least loaded rank), reading only the tensors of those shards.
Once every rank has written its part, rank 0 gets every rank's report entries, writes the
side files (index, config.json, copied files) and the report, and publishes. The bytes are
those of one process: each tensor's values come from its own seed, never from the split.

Each step ends with every rank learning every rank's outcome (`Group.agree`, over the gloo
process group torchrun sets up): a rank that fails says why, and every rank then stops with
one line naming itself and the failing rank; nothing is published and the shared temporary
is removed (by rank 0's publication, or by the other ranks when rank 0 is gone). A rank that
dies (killed) is noticed by the others as a lost connection at the next step, or by torchrun,
which stops every rank when one fails (SIGTERM: an interrupt, cleaned up the same way). A
rank that hangs is given up on after `ranks.wait_timeout()` (a day, `REINIT_TORCHRUN_TIMEOUT`).

An output of one file (or a `.bin`) has one shard: rank 0 writes it all and the others wait.
Without torchrun nothing here runs (`ranks.torchrun_world()` is None); the ranks, their
process group and how they agree are `run/ranks.py`."""

from __future__ import annotations

__all__ = ["Part", "apply_split", "assign_shards", "new_split", "run_split"]

import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reinit.errors import RankError, WriteError
from reinit.io.checkpoint import Checkpoint
from reinit.io.signals import signals_deferred
from reinit.io.writer import remove_path
from reinit.options import APPLY_FIELDS, ApplyOptions, OptionKwargs, with_kwargs
from reinit.planning.session import RuleInput
from reinit.report.entries import Report
from reinit.run.layout import Layout, OutputRequest, lay_out
from reinit.run.new import NEW_FIELDS, check_new_output, prepare_new
from reinit.run.prepare import Job, Prepared, prepare
from reinit.run.ranks import INTERRUPTED, MAY_BE_IN_PLACE, Group, Outcome, process_group, share
from reinit.run.write import Staging, Written, publish, report_of, stage, write, write_side_files

if TYPE_CHECKING:
    from torch import nn
    from typing_extensions import Unpack


def assign_shards(layout: Layout, size: int) -> list[tuple[str, ...]]:
    """Each rank's output shards (`share` by source bytes: the biggest first, each to the
    least loaded rank), in layout order. One file: rank 0's alone, the others wait."""
    weights = [sum(layout.in_bytes[n] for n in f.names) for f in layout.files]
    return [tuple(layout.files[i].relname for i in mine) for mine in share(weights, size)]


@dataclass(frozen=True)
class Part:
    """What one rank wrote: its `Written`, and its lossy casts (for the run's one summary)."""

    written: Written
    lossy: tuple[str, ...] = ()
    overflowed: int = 0


class _Leftover:
    """A rank's claim on the shared temporary: removed when the run fails before rank 0 has
    everyone's part (rank 0's publication removes it too; removing twice is no harm)."""

    def __init__(self, tmp: Path):
        self.tmp: Path | None = tmp

    def hand_over(self) -> None:  # every part is written: the temporary is rank 0's now
        self.tmp = None

    def close(self) -> None:
        if self.tmp is not None:
            with signals_deferred():  # removed whole, even as torchrun's SIGTERM arrives
                remove_path(self.tmp)


Planned = Callable[[ExitStack], tuple[Prepared, Layout]]


def apply_split(
    source: str | os.PathLike[str] | Checkpoint,
    rules: Sequence[RuleInput],
    output: str | os.PathLike[str] | None = None,
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> Report:
    """`reinit.apply` with the output's shards written by the ranks torchrun started (or of
    the process group already set up); the same files, and every rank returns the report.
    Alone (no torchrun), it is `apply`. Raises `RankError` on every rank when one fails."""
    o = with_kwargs("apply_split", options, kwargs, APPLY_FIELDS)
    with process_group() as g:
        return g.speaking(lambda: _apply_over(g, source, rules, output, o))


def new_split(
    source: str | os.PathLike[str] | nn.Module,
    output: str | os.PathLike[str],
    rules: Sequence[RuleInput] = (),
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> Report:
    """`reinit.new` with the output's shards written by the ranks (as `apply_split`): every
    rank builds the model's checkpoint from its config alike; the same files as one process."""
    o = with_kwargs("new_split", options, kwargs, NEW_FIELDS)
    check_new_output("new_split", output)
    with process_group() as g:
        return g.speaking(lambda: _new_over(g, source, output, rules, o))


def _new_over(
    g: Group,
    source: str | os.PathLike[str] | nn.Module,
    output: str | os.PathLike[str],
    rules: Sequence[RuleInput],
    o: ApplyOptions,
) -> Report:
    """The model's checkpoint built on every rank alike, then `apply`'s split."""
    ckpt, rule_objs, run = g.agree(
        "reading the model", lambda: prepare_new(source, rules, o, output)
    )
    with ckpt:
        return _apply_over(g, ckpt, rule_objs, output, run)


def _apply_over(
    g: Group,
    source: str | os.PathLike[str] | Checkpoint,
    rules: Sequence[RuleInput],
    output: str | os.PathLike[str] | None,
    o: ApplyOptions,
) -> Report:
    """`apply`'s stages over the ranks of `g` (`run_split`), the command checked on each."""
    job, request = g.agree(
        "checking the command",
        lambda: (Job.of(source, rules, o), OutputRequest.of(output, o)),
    )

    def planned(stack: ExitStack) -> tuple[Prepared, Layout]:
        prepared = prepare(stack, job, o)
        return prepared, lay_out(prepared, request)

    return run_split(g, planned, progress=o.progress)


def run_split(g: Group, planned: Planned, *, progress: bool = False) -> Report:
    """The stages after the command is checked, split over `g`: `planned` prepares and lays
    out the run (on every rank alike: any `Prepared` and `Layout`, e.g. `reinit new`'s)."""
    with ExitStack() as stack:
        prepared, layout = g.agree("planning", lambda: planned(stack))
        held: list[Staging] = []

        def stage_here() -> Path | None:
            if g.primary:
                held.append(stage(stack, layout))
                return held[0].tmp
            return None

        tmp = g.gather("staging the output", stage_here)[0]
        assert isinstance(tmp, Path)
        leftover = stack.enter_context(closing(_Leftover(tmp)))
        mine = assign_shards(layout, g.size)[g.rank]
        parts = g.gather(
            "writing", lambda: _part(prepared, layout, tmp, mine, progress and g.primary)
        )
        try:
            leftover.hand_over()
            return _finish(g, prepared, layout, held, [p for p in parts if isinstance(p, Part)])
        except KeyboardInterrupt:  # every part is written: rank 0 may publish without us
            if g.primary:
                raise
            raise RankError(f"{g.who}: {INTERRUPTED}; {MAY_BE_IN_PLACE}", 130) from None


def _part(
    prepared: Prepared, layout: Layout, tmp: Path, mine: Sequence[str], progress: bool
) -> Part:
    """This rank's shards written under the shared `tmp` (none: nothing to do)."""
    if not mine:
        return Part(Written((), 0))
    if layout.spec.fmt == "directory" and not tmp.is_dir():
        raise WriteError(
            f"{layout.spec.path}: the temporary folder {tmp} that rank 0 made is not there; "
            "every rank must see the output's folder on one shared file system"
        )
    try:
        written = write(prepared, layout, tmp, shards=mine, progress=progress)
    except WriteError as e:  # name the output asked for, not the shared temporary
        raise WriteError(str(e).replace(str(tmp), str(layout.spec.path))) from None
    control = layout.control
    return Part(written, tuple(control.lossy), control.overflowed)


def _finish(
    g: Group, prepared: Prepared, layout: Layout, held: Sequence[Staging], parts: Sequence[Part]
) -> Report:
    """Rank 0 publishes; every rank learns how it went and returns its report. Rank 0 has
    published once its own step succeeded, whatever became of a rank after its part."""
    outcome: Outcome = (None, None)  # a rank other than 0 has nothing left to do
    if g.primary:
        outcome = g.attempt(lambda: _publish(prepared, layout, held[0], parts))
    try:
        lost = None if g.primary else MAY_BE_IN_PLACE
        outcomes = g.exchange(outcome, "rank 0 published", lost)
    except RankError:
        if g.primary and outcome[1] is None:
            assert isinstance(outcome[0], Report)
            return outcome[0]
        raise
    report = g.verdict(outcomes)[0]
    assert isinstance(report, Report)
    return report


def _publish(prepared: Prepared, layout: Layout, staging: Staging, parts: Sequence[Part]) -> Report:
    """Rank 0, every part written: the side files, the report of every rank's entries (one
    lossy-cast line for the run, as one process gives), then publish."""
    _check_all_there(layout, staging.tmp)
    side = write_side_files(prepared, layout, staging.tmp)
    control = layout.control
    control.lossy = [n for p in parts for n in p.lossy]
    control.overflowed = sum(p.overflowed for p in parts)
    line = control.summary()
    entries = tuple(e for p in parts for e in p.written.entries)
    total = sum(p.written.bytes_written for p in parts) + side
    written = Written(entries, total, (line,) if line is not None else ())
    report = report_of(prepared, layout, written)
    publish(staging, layout, report)
    return report


def _check_all_there(layout: Layout, tmp: Path) -> None:
    """Every shard the ranks wrote is in rank 0's temporary folder (a rank that wrote to a
    file system of its own would otherwise leave a hole in the published folder)."""
    if layout.spec.fmt != "directory":
        return
    missing = [f.relname for f in layout.files if not (tmp / f.relname).is_file()]
    if missing:
        raise WriteError(
            f"{layout.spec.path}: shard {missing[0]} is not in the temporary folder though its "
            "rank wrote it; every rank must see the output's folder on one shared file system"
        )
