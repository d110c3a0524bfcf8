"""The ranks of a run split across processes (torchrun), without torch until they talk: who
this process is (`torchrun_world`, from the variables torchrun sets), the process group
(`process_group`: gloo, set up only under torchrun), how work is shared out (`share`:
biggest first to the least loaded; `share_in_order`: contiguous runs of equal weight), and
how every step ends with every rank knowing every rank's outcome (`Group.agree`, `gather`):
a rank that fails says why, and every rank stops with one line naming itself and that rank.

Importing this module imports no torch (`reinit report` of safetensors stays torch-free);
`torch.distributed` is imported only when ranks exchange, i.e. under torchrun."""

from __future__ import annotations

__all__ = [
    "INTERRUPTED",
    "MAY_BE_IN_PLACE",
    "NOTHING",
    "Group",
    "Outcome",
    "TORCHRUN_ENV",
    "process_group",
    "share",
    "share_in_order",
    "split_map",
    "torchrun_world",
    "wait_timeout",
]

import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from reinit.errors import RankError, ReinitError

X = TypeVar("X")
Y = TypeVar("Y")
T = TypeVar("T")

#: The variables torchrun sets for every process it starts (all of them: torchrun).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
WAIT_ENV = "REINIT_TORCHRUN_TIMEOUT"
DEFAULT_WAIT_S = 24 * 3600.0
#: The longest wait: gloo's store takes its timeout as an integer count of a fine unit, so
#: `inf`, `1e15` (OverflowError) or `1e10` (an overflow that gives up at once) cannot be told.
MAX_WAIT_S = 365 * 24 * 3600.0
POLL_S = 0.05  # how often a waiting rank looks up (and lets a signal in)
NOTHING = "nothing was published"
#: what a rank other than 0 says once every rank has written its part: rank 0 may have published
MAY_BE_IN_PLACE = "the output may be in place: check it"
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


def _published_here() -> bool:
    """Whether this process has put an output in place (`io.publish.published`), looked up
    without importing it: not loaded, nothing was published."""
    publish = sys.modules.get("reinit.io.publish")
    return bool(publish is not None and publish.published())


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
        """Run `step` here: its value, or why it failed (an interrupt stops this rank).
        Alone, an error is raised as it is."""
        if self.size == 1:
            return step(), None
        try:
            return step(), None
        except ReinitError as e:
            return None, (e.exit_code, str(e).rstrip("\n"))
        except KeyboardInterrupt:
            if _published_here():  # held through the renames, let in after: said as one
                raise  # process says it (the command names what it published)
            raise RankError(f"{self.who}: {INTERRUPTED}; nothing was published", 130) from None
        except Exception as e:  # a bug: still one line, on every rank
            if os.environ.get("REINIT_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
            return None, (1, f"internal error: {type(e).__name__}: {e}")

    def exchange(self, outcome: Outcome, what: str, lost: str | None = None) -> list[Outcome]:
        """Every rank's outcome, in rank order, once every rank has one. The wait is polled,
        so an interrupt (torchrun's SIGTERM) is handled while waiting; a rank that died is a
        lost connection (gloo), a hung one the process group's timeout (`wait_timeout`). `lost`: what this
        rank says of the output then (default: nothing was published)."""
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
            raise RankError(f"{self.who}: {INTERRUPTED}; {lost or NOTHING}", 130) from None
        except RuntimeError as e:
            raise RankError(
                f"{self.who}: lost another rank while {what} (it failed or was killed: "
                f"{_cause(e)}); {lost or NOTHING}"
            ) from None
        return [o if o is not None else (None, (1, "no outcome")) for o in out]

    def verdict(self, outcomes: Sequence[Outcome]) -> list[object]:
        """Every rank's value, or (on every rank) the one line naming why it stops: its own
        failure, else the first rank that failed and why, with that rank's exit code."""
        own = outcomes[self.rank][1]
        if own is not None:
            raise RankError(f"{self.who}: {own[1].rstrip('.')}; nothing was published", own[0])
        for r, (_, failure) in enumerate(outcomes):
            if failure is not None:
                code, why = failure
                said = f"rank {r} failed: {why.rstrip('.')}"
                raise RankError(f"{self.who}: {said}; nothing was published", code)
        return [value for value, _ in outcomes]

    def speaking(self, step: Callable[[], T]) -> T:
        """Run `step` (a whole split run). A signal while it stops for a failure (torchrun
        sends SIGTERM to every rank once one exits non-zero) keeps that failure's line; any
        other interrupt is this rank's own."""
        try:
            return step()
        except KeyboardInterrupt as e:
            cause: BaseException | None = e.__context__
            while cause is not None and not isinstance(cause, RankError):
                cause = cause.__context__
            if cause is not None:
                raise cause from None
            if _published_here():  # said as one process says it (`attempt`)
                raise
            raise RankError(f"{self.who}: {INTERRUPTED}; {NOTHING}", 130) from None

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
    dist.init_process_group("gloo", timeout=timedelta(seconds=wait_timeout()))
    _own_gpu()
    try:
        yield Group(*world)
    finally:
        dist.destroy_process_group()


def wait_timeout() -> float:
    """Seconds a rank waits for the others at one step (the slowest rank's whole share of the
    writing, on a slow disk): `REINIT_TORCHRUN_TIMEOUT` (at most a year, `MAX_WAIT_S`), else
    a day. A rank that dies is noticed at once (its connection drops, or torchrun stops the
    others); this bounds a hang."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_WAIT_S
    except ValueError:
        return DEFAULT_WAIT_S
    return min(value, MAX_WAIT_S) if value > 0 else DEFAULT_WAIT_S


def _own_gpu() -> None:
    """With GPUs (`--device cuda`), each process of a node on its own (by LOCAL_RANK)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())


def share(weights: Sequence[int], size: int) -> list[list[int]]:
    """Each rank's items (indices, ascending): the heaviest first, each to the least loaded
    rank (ties: the lower rank). One item: rank 0's alone."""
    loads = [0] * size
    mine: list[list[int]] = [[] for _ in range(size)]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):  # stable: ties in order
        r = min(range(size), key=lambda j: (loads[j], j))
        mine[r].append(i)
        loads[r] += weights[i]
    return [sorted(m) for m in mine]


def share_in_order(weights: Sequence[int], size: int) -> list[range]:
    """Each rank's items as one contiguous run (neighbours in a file stay together), of about
    equal weight: an item goes to the rank whose part of the total holds its middle."""
    total = sum(weights) or 1
    starts = [0] * (size + 1)
    starts[size] = len(weights)
    seen = 0
    r = 1
    for i, w in enumerate(weights):
        while r < size and (seen + w / 2) * size >= r * total:
            starts[r] = i
            r += 1
        seen += w
    while r < size:
        starts[r] = len(weights)
        r += 1
    return [range(starts[r], starts[r + 1]) for r in range(size)]


def split_map(
    g: Group | None,
    items: Sequence[X],
    weight: Callable[[X], int],
    work: Callable[[list[X]], list[Y]],
    what: str,
) -> list[Y]:
    """`work(items)`, the items shared out in order over the ranks (`share_in_order`) and the
    results put back in order on every rank; alone (`g` None or one rank), `work(items)`."""
    if g is None or g.size == 1:
        return work(list(items))
    parts = share_in_order([weight(x) for x in items], g.size)
    mine = parts[g.rank]
    results = g.gather(what, lambda: work([items[i] for i in mine]))
    out: list[Y] = []
    for part in results:
        assert isinstance(part, list)
        out.extend(part)
    return out
