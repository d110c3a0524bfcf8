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
rank that hangs is given up on after the process group's timeout (torch's default, 30 min).

An output of one file (or a `.bin`) has one shard: rank 0 writes it all and the others wait.
Without torchrun nothing here runs (`torchrun_world()` is None)."""

from __future__ import annotations

__all__ = [
    "Group",
    "Part",
    "apply_split",
    "assign_shards",
    "process_group",
    "run_split",
    "torchrun_world",
]

import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from reinit.errors import RankError, ReinitError, WriteError
from reinit.io.checkpoint import Checkpoint
from reinit.io.writer import remove_path
from reinit.options import APPLY_FIELDS, ApplyOptions, OptionKwargs, with_kwargs
from reinit.planning.session import RuleInput
from reinit.report.entries import Report
from reinit.run.layout import Layout, OutputRequest, lay_out
from reinit.run.prepare import Job, Prepared, prepare
from reinit.run.write import Staging, Written, publish, report_of, stage, write, write_side_files

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")

#: The variables torchrun sets for every process it starts (all of them: torchrun).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
POLL_S = 0.05  # how often a waiting rank looks up (and lets a signal in)
INTERRUPTED = "interrupted (Ctrl-C, or SIGTERM: torchrun stops every rank when one fails)"

Outcome = tuple[object, tuple[int, str] | None]  # a step's value, or (exit code, why)


def torchrun_world(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several torchrun started, else None."""
    env = os.environ if env is None else env
    if not all(env.get(k) for k in TORCHRUN_ENV):
        return None
    try:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        return None
    return (rank, size) if size > 1 else None


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks (size 1: alone, nothing exchanged)."""

    rank: int
    size: int

    @property
    def primary(self) -> bool:
        return self.rank == 0

    @property
    def who(self) -> str:
        return f"rank {self.rank} of {self.size}"

    def attempt(self, step: Callable[[], T]) -> Outcome:
        """Run `step` here: its value, or why it failed (an interrupt stops this rank)."""
        try:
            return step(), None
        except ReinitError as e:
            return None, (e.exit_code, str(e).rstrip("\n"))
        except KeyboardInterrupt:
            raise RankError(f"{self.who}: {INTERRUPTED}; nothing was published", 130) from None
        except Exception as e:  # a bug: still one line, on every rank
            return None, (1, f"internal error: {type(e).__name__}: {e}")

    def exchange(self, outcome: Outcome, what: str) -> list[Outcome]:
        """Every rank's outcome, in rank order, once every rank has one. The wait is polled,
        so an interrupt (torchrun's SIGTERM) is handled while waiting; a rank that died is a
        lost connection (gloo), a hung one the process group's timeout."""
        if self.size == 1:
            return [outcome]
        import torch.distributed as dist

        out: list[Outcome | None] = [None] * self.size
        try:
            work = dist.barrier(async_op=True)
            while not work.is_completed():
                time.sleep(POLL_S)
            work.wait()
            dist.all_gather_object(out, outcome)
        except KeyboardInterrupt:
            raise RankError(f"{self.who}: {INTERRUPTED}; nothing was published", 130) from None
        except RuntimeError as e:
            raise RankError(
                f"{self.who}: lost another rank while {what} (it failed or was killed: "
                f"{_cause(e)}); nothing was published"
            ) from None
        return [o if o is not None else (None, (1, "no outcome")) for o in out]

    def verdict(self, outcomes: Sequence[Outcome]) -> list[object]:
        """Every rank's value, or (on every rank) the one line naming why it stops: its own
        failure, else the first rank that failed and why, with that rank's exit code."""
        own = outcomes[self.rank][1]
        if own is not None:
            raise RankError(f"{self.who}: {own[1]}; nothing was published", own[0])
        for r, (_, failure) in enumerate(outcomes):
            if failure is not None:
                code, why = failure
                raise RankError(f"{self.who}: rank {r} failed: {why}; nothing was published", code)
        return [value for value, _ in outcomes]

    def agree(self, what: str, step: Callable[[], T]) -> T:
        """Run `step` on every rank; this rank's value once every rank's step succeeded, else
        every rank stops (`verdict`). Only the outcome crosses the wire, not the value."""
        value, failure = self.attempt(step)
        self.verdict(self.exchange((None, failure), what))
        return value  # type: ignore[return-value]  # `step`'s value: it did not fail

    def gather(self, what: str, step: Callable[[], T]) -> list[object]:
        """`agree`, with every rank's value (pickled across), in rank order."""
        return self.verdict(self.exchange(self.attempt(step), what))


def _cause(e: RuntimeError) -> str:
    """gloo's error, short: `Read error [HOST]:PORT: Connection reset by peer`, without its
    source location and advice."""
    text = " ".join(str(e).split())
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # [.../gloo/transport/tcp/pair.cc:537]
    return text.split(". ")[0].rstrip(".") or type(e).__name__


@contextmanager
def process_group() -> Iterator[Group]:
    """The ranks: the process group already set up (a script under torchrun), else the one
    torchrun's variables describe (gloo, destroyed after), else this process alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield Group(dist.get_rank(), dist.get_world_size())
        return
    world = torchrun_world()
    if world is None:
        yield Group(0, 1)
        return
    dist.init_process_group("gloo")
    try:
        yield Group(*world)
    finally:
        dist.destroy_process_group()


def assign_shards(layout: Layout, size: int) -> list[tuple[str, ...]]:
    """Each rank's output shards: the biggest (by source bytes) first, each to the least
    loaded rank (ties: the lower rank), listed in layout order. One file: rank 0's alone."""
    weight = {f.relname: sum(layout.in_bytes[n] for n in f.names) for f in layout.files}
    loads = [0] * size
    mine: list[set[str]] = [set() for _ in range(size)]
    for name in sorted(weight, key=lambda s: -weight[s]):  # stable: ties in layout order
        r = min(range(size), key=lambda i: (loads[i], i))
        mine[r].add(name)
        loads[r] += weight[name]
    return [tuple(s for s in layout.shards() if s in m) for m in mine]


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
        leftover = stack.enter_context(_closing(_Leftover(tmp)))
        mine = assign_shards(layout, g.size)[g.rank]
        parts = g.gather(
            "writing", lambda: _part(prepared, layout, tmp, mine, progress and g.primary)
        )
        leftover.hand_over()
        return _finish(g, prepared, layout, held, [p for p in parts if isinstance(p, Part)])


@contextmanager
def _closing(leftover: _Leftover) -> Iterator[_Leftover]:
    try:
        yield leftover
    finally:
        leftover.close()


def _part(
    prepared: Prepared, layout: Layout, tmp: Path, mine: Sequence[str], progress: bool
) -> Part:
    """This rank's shards written under the shared `tmp` (none: nothing to do)."""
    if not mine:
        return Part(Written((), 0))
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
    step = (lambda: _publish(prepared, layout, held[0], parts)) if g.primary else (lambda: None)
    outcome = g.attempt(step)
    try:
        outcomes = g.exchange(outcome, "rank 0 published")
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
