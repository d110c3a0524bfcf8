"""A Ctrl-C or SIGTERM whose handler runs while the consumer of `prefetch` takes the queue's
mutex must not leave that mutex locked: the producer's `put` and the generator's own cleanup
would then wait on it forever (the hang of `reinit apply` after a SIGTERM).

`Queue.get` takes its mutex in `Condition.__enter__`, Python code: CPython runs a pending
signal handler right after the C-level acquire returns there, so a raising handler left it
before the `with` held the lock. The test makes the signal arrive exactly there (a profile hook
on that acquire's return), with a SIGALRM watchdog that ends a hang as a failure.

Internal: tests reinit.io.pipeline.prefetch directly (not the `reinit` API).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from reinit.io.pipeline import prefetch

WATCHDOG_SECONDS = 20
NAME = "reinit-test-prefetch"


class Hung(Exception):
    pass


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (raises KeyboardInterrupt), as in the `reinit` program."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


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


def _taking_an_item(frame: FrameType | None) -> bool:
    """Whether `frame` runs inside `Queue.get` called by the prefetch consumer."""
    names = []
    while frame is not None:
        names.append((frame.f_code.co_name, frame.f_code.co_filename))
        frame = frame.f_back
    in_get = any(n == "get" and f.endswith("queue.py") for n, f in names)
    return in_get and any(n == "_next" and f.endswith("pipeline.py") for n, f in names)


def signal_after_the_mutex_is_taken() -> list[str]:
    """Arrange a SIGINT the moment the consumer's `Queue.get` has acquired the queue's mutex
    (the return of the C-level acquire inside `Condition.__enter__`), once."""
    fired: list[str] = []

    def hook(frame: FrameType, event: str, arg: object) -> None:
        if fired or event != "c_return" or getattr(arg, "__name__", "") != "__enter__":
            return
        if frame.f_code.co_name == "__enter__" and _taking_an_item(frame):
            fired.append("sent")
            sys.setprofile(None)
            signal.raise_signal(signal.SIGINT)  # its handler runs here, as at a real arrival

    sys.setprofile(hook)
    return fired


def producer_alive() -> bool:
    return any(t.name == NAME and t.is_alive() for t in threading.enumerate())


def test_interrupt_while_taking_an_item_does_not_hang(default_sigint, watchdog):
    items = prefetch(iter(range(10_000)), depth=2, name=NAME)
    assert next(items) == 0  # the producer runs
    fired = signal_after_the_mutex_is_taken()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in items:
                pass
    finally:
        sys.setprofile(None)
    assert fired == ["sent"]
    assert not producer_alive()  # the cleanup joined it (a locked mutex would block both)
