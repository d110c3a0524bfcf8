"""A Ctrl-C or SIGTERM whose handler runs while the main thread takes a lock another thread
needs must not leave that lock locked: the consumer of `prefetch` taking the queue's mutex
(the producer's `put` and the generator's own cleanup then waited on it forever: the hang of
`reinit apply` after a SIGTERM), the in-memory API taking a drawn value's future (the
drawing thread, and the pool's shutdown joining it, waited forever), and the direct-I/O writer
waiting for its thread's write of a staging buffer (the same: the writer's close hung).

`Queue.get` and `Future.result` take their lock in `Condition.__enter__`, Python code: CPython
runs a pending signal handler right after the C-level acquire returns there, so a raising
handler left it before the `with` held the lock. The tests make the signal arrive exactly there
(a profile hook on that acquire's return), with a SIGALRM watchdog that ends a hang as a
failure.

Also: `signals_deferred` itself leaves no handler swapped when a signal lands while it swaps
them.

Internal: tests reinit.io.pipeline.prefetch, reinit.run.stream.Applier (its drawing, slowed),
reinit.tools.raw_report._result, reinit.io.signals.signals_deferred and
reinit.io.writer.SafetensorsWriter directly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType

import pytest
import torch

import reinit
from reinit.io.pipeline import prefetch
from reinit.run.stream import Applier
from reinit.tools.raw_report import _result

WATCHDOG_SECONDS = 20
NAME = "reinit-test-prefetch"


class Hung(Exception):
    pass


@pytest.fixture
def watchdog() -> Iterator[None]:
    """A hang ends as `Hung` (a lock's wait is interrupted by SIGALRM's raising handler)."""

    def hung(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still blocked after {WATCHDOG_SECONDS} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _stack(frame: FrameType | None) -> list[tuple[str, str]]:
    names = []
    while frame is not None:
        names.append((frame.f_code.co_name, frame.f_code.co_filename))
        frame = frame.f_back
    return names


def _taking_an_item(frame: FrameType) -> bool:
    """Whether `frame` runs inside `Queue.get` called by the prefetch consumer."""
    names = _stack(frame)
    in_get = any(n == "get" and f.endswith("queue.py") for n, f in names)
    return in_get and any(n == "_next" and f.endswith("pipeline.py") for n, f in names)


def _taking_a_drawn_value(frame: FrameType) -> bool:
    """Whether `frame` runs inside concurrent.futures, called for a drawn value."""
    names = _stack(frame)
    in_futures = any(f.endswith("_base.py") and "concurrent" in f for _, f in names)
    return in_futures and any(n == "_drawn_value" for n, _ in names)


def signal_after_a_lock_is_taken(where: Callable[[FrameType], bool], then=None) -> list[str]:
    """Arrange a SIGINT the moment the main thread has acquired a lock at a place `where`
    accepts (the return of the C-level acquire), once; `then()` runs just before."""
    fired: list[str] = []

    def hook(frame: FrameType, event: str, arg: object) -> None:
        if fired or event != "c_return":
            return
        if getattr(arg, "__name__", "") in ("__enter__", "acquire") and where(frame):
            fired.append("sent")
            sys.setprofile(None)
            if then is not None:
                then()
            signal.raise_signal(signal.SIGINT)  # its handler runs here, as at a real arrival

    sys.setprofile(hook)
    return fired


def producer_alive() -> bool:
    return any(t.name == NAME and t.is_alive() for t in threading.enumerate())


def test_interrupt_while_taking_an_item_does_not_hang(default_sigint, watchdog):
    items = prefetch(iter(range(10_000)), depth=2, name=NAME)
    assert next(items) == 0  # the producer runs
    fired = signal_after_a_lock_is_taken(_taking_an_item)
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in items:
                pass
    finally:
        sys.setprofile(None)
    assert fired == ["sent"]
    assert not producer_alive()  # the cleanup joined it (a locked mutex would block both)


def draw_threads_alive() -> bool:
    return any(t.name.startswith("reinit-draw") and t.is_alive() for t in threading.enumerate())


def test_interrupt_while_taking_a_drawn_value_does_not_hang(default_sigint, watchdog, monkeypatch):
    """The in-memory API draws on worker threads and takes each value on the main thread: a
    Ctrl-C there is a KeyboardInterrupt, and no drawing thread is left blocked."""
    go = threading.Event()
    draw = Applier._draw

    def slow_draw(self, p):  # the value is still being drawn when the main thread asks for it
        go.wait(WATCHDOG_SECONDS)
        return draw(self, p)

    monkeypatch.setattr(Applier, "_draw", slow_draw)
    state = {f"layers.{i}.weight": torch.randn(64, 64) for i in range(4)}
    fired = signal_after_a_lock_is_taken(_taking_a_drawn_value, then=go.set)
    try:
        with pytest.raises(KeyboardInterrupt):
            reinit.apply_to_state_dict(state, ["*.weight=kaiming_normal"], seed=0)
    finally:
        sys.setprofile(None)
        go.set()
    assert fired == ["sent"]
    assert not draw_threads_alive()


def test_a_jobs_own_timeout_is_raised(watchdog):
    """`reinit report`'s wait on a job: a job that failed with TimeoutError (an OSError with
    ETIMEDOUT) is that error, not "wait more" (waiting on `fut.result(timeout)` took it for its
    own timeout and spun forever)."""

    def job() -> None:
        raise TimeoutError(110, "timed out")

    with ThreadPoolExecutor(1) as pool:
        fut: Future[None] = pool.submit(job)
        with pytest.raises(TimeoutError, match="timed out"):
            _result(fut)  # type: ignore[arg-type]


def test_a_signal_while_holding_begins_leaves_no_handler_swapped(default_sigint):
    """SIGTERM (raising, as the `reinit` program's handler does) arriving after
    `signals_deferred` swapped SIGINT's handler and before SIGTERM's: the interrupt goes
    through, and SIGINT's own handler is back (it was left taking notes nobody read, so every
    later Ctrl-C was swallowed)."""
    from reinit.io.signals import signals_deferred

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    fired: list[str] = []

    def hook(frame: FrameType, event: str, arg: object) -> None:
        # the return of `_signal.signal` in `signal.signal`, called by `signals_deferred`
        if fired or event != "c_return" or getattr(arg, "__name__", "") != "signal":
            return
        caller = frame.f_back
        swapped = signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        if caller is not None and caller.f_code.co_name == "signals_deferred" and swapped:
            fired.append("sent")
            sys.setprofile(None)
            signal.raise_signal(signal.SIGTERM)

    try:
        sys.setprofile(hook)
        with pytest.raises(KeyboardInterrupt), signals_deferred():
            pass
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGTERM, old_term)
    assert fired == ["sent"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _waiting_for_a_direct_write(frame: FrameType) -> bool:
    """Whether `frame` runs inside concurrent.futures, called by the direct-I/O writer waiting
    for its thread's write of the other staging buffer."""
    names = _stack(frame)
    in_futures = any(f.endswith("_base.py") and "concurrent" in f for _, f in names)
    return in_futures and any(n == "_settle" and f.endswith("writer.py") for n, f in names)


def write_threads_alive() -> bool:
    return any(t.name.startswith("reinit-write") and t.is_alive() for t in threading.enumerate())


def skip_without_direct_io(folder) -> None:
    o_direct = getattr(os, "O_DIRECT", 0)
    try:
        if not o_direct:
            raise OSError("no O_DIRECT on this platform")
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | o_direct, 0o644))
    except OSError:
        pytest.skip("no O_DIRECT here")


def test_interrupt_while_waiting_for_a_direct_write_does_not_hang(
    default_sigint, watchdog, monkeypatch, tmp_path
):
    """A safetensors output written with O_DIRECT: the main thread fills one staging buffer
    while the writer's thread writes the full ones, and waits for the oldest write before
    reusing its buffer. A
    Ctrl-C landing as that wait takes the write's lock is a KeyboardInterrupt; the writing
    thread is not left blocked on the lock (the writer's close joined it forever), and the
    output file is closed."""
    from reinit.io.writer import DIRECT_BUFFERS, DIRECT_STAGE, SafetensorsWriter

    skip_without_direct_io(tmp_path)
    go = slow_direct_writes(monkeypatch)
    fds_before = set(os.listdir("/proc/self/fd"))
    fired = signal_after_a_lock_is_taken(_waiting_for_a_direct_write, then=go.set)
    size = (DIRECT_BUFFERS + 1) * DIRECT_STAGE  # every buffer handed over, then one reused
    try:
        with (
            pytest.raises(KeyboardInterrupt),
            SafetensorsWriter(tmp_path / "out.safetensors", [("a", "uint8", (size,))]) as w,
        ):
            w.write("a", bytes(size))
    finally:
        sys.setprofile(None)
        go.set()
    assert fired == ["sent"]
    assert not write_threads_alive()
    assert set(os.listdir("/proc/self/fd")) <= fds_before


def slow_direct_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the direct-I/O writer's thread hold each write until the returned event is set
    (so a write is still in flight when the main thread waits for it or closes)."""
    from reinit.io import writer

    go = threading.Event()
    pwrite_all = writer._pwrite_all

    def slow_write(fd: int, view: memoryview, at: int) -> None:
        go.wait(WATCHDOG_SECONDS)
        pwrite_all(fd, view, at)

    monkeypatch.setattr(writer, "_pwrite_all", slow_write)
    return go


def _closing_the_direct_writer(frame: FrameType) -> bool:
    """Whether `frame` runs inside concurrent.futures, called by the direct-I/O writer's close
    (waiting for the write still in flight when the output is given up)."""
    names = _stack(frame)
    in_futures = any(f.endswith("_base.py") and "concurrent" in f for _, f in names)
    return in_futures and any(n == "close" and f.endswith("writer.py") for n, f in names)


def test_interrupt_while_the_direct_writer_closes_does_not_hang(
    default_sigint, watchdog, monkeypatch, tmp_path
):
    """The output given up (an error) while the writer's thread still writes a staging buffer:
    the writer's close waits for that write. A second Ctrl-C landing as it takes the write's
    lock is a KeyboardInterrupt once the thread is joined and the file closed (it left the lock
    taken, the thread blocked on it, and the program's exit, joining it, waited forever)."""
    from reinit.io.writer import DIRECT_STAGE, SafetensorsWriter

    skip_without_direct_io(tmp_path)
    go = slow_direct_writes(monkeypatch)
    fds_before = set(os.listdir("/proc/self/fd"))
    fired = signal_after_a_lock_is_taken(_closing_the_direct_writer, then=go.set)
    try:
        with (
            pytest.raises(KeyboardInterrupt),
            SafetensorsWriter(
                tmp_path / "out.safetensors", [("a", "uint8", (2 * DIRECT_STAGE,))]
            ) as w,
        ):
            w.write_part("a", bytes(DIRECT_STAGE + 1))  # one buffer handed to the thread
            raise RuntimeError("given up")
    finally:
        sys.setprofile(None)
        go.set()
    assert fired == ["sent"]
    assert not write_threads_alive()
    assert set(os.listdir("/proc/self/fd")) <= fds_before
