"""SIGINT/SIGTERM held where a handler's exception must not land (torch-free: `reinit report`
uses it too).

Python runs a signal handler in the main thread at the next safe point of the *interpreter*,
which may be inside `threading`'s own code: a `KeyboardInterrupt` raised while `Condition.wait`
re-acquires its mutex leaves the mutex unlocked, and the `with` around it then fails with
`RuntimeError: release unlocked lock`, which replaces the interrupt ("internal error" instead of
exit 130). So the main thread never blocks on a queue or a future with a raising handler in
place: `wait_held` waits with the signals held (noted, not raised) and re-raises a held signal to
its handler once out of the lock machinery."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import ExitStack, contextmanager
from typing import TypeVar

__all__ = ["POLL_SECONDS", "result_held", "signals_deferred", "wait_held"]

T = TypeVar("T")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: How often a held wait looks at whether a signal arrived (the delay a Ctrl-C may see).
POLL_SECONDS = 0.1


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM until the block ends, so a Ctrl-C cannot land between the two steps
    of publishing an output or in the middle of removing a temporary; a signal that arrives
    meanwhile is re-raised right after, to whatever handler was there. Yields the list of the
    signals caught so far (a wait inside may stop early on it).

    Python runs signal handlers in the main thread whichever thread the kernel picked (the
    reader and compute threads, torch's pool), so holding means swapping in a handler that only
    takes note; blocking the signal in one thread would not do. Off the main thread (where
    handlers cannot be set) the block runs as is."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    try:
        with ExitStack() as restore:
            for sig in _STOP_SIGNALS:
                old = signal.getsignal(sig)
                if old is None:  # installed outside Python: cannot be restored, leave it
                    continue
                # the way back is registered before the swap, and ExitStack runs every one of
                # them even when a signal's handler raises in between (the other signal's,
                # not yet held, or a second one while restoring): none is left taking notes
                # that nobody reads, which would swallow every later Ctrl-C
                restore.callback(signal.signal, sig, old)
                signal.signal(sig, lambda signum, frame: caught.append(signum))
            yield caught
    finally:
        if caught:
            signal.raise_signal(caught[0])


def wait_held(get: Callable[[float], T], timeout_error: type[BaseException]) -> T:
    """`get(timeout)` repeated until it returns (each timeout raises `timeout_error`), with
    SIGINT/SIGTERM held while it blocks; a signal that arrives is re-raised to its handler
    between two waits, outside the queue's or future's locks (see the module docstring)."""
    while True:
        with signals_deferred() as caught:
            while not caught:
                try:
                    return get(POLL_SECONDS)
                except timeout_error:
                    continue
        # the held signal went to its handler, which did not raise (ignored): wait on


class _NotYet(Exception):
    """`result_held`'s own "not done yet" (never the future's: see there)."""


def result_held(future: Future[T]) -> T:
    """`future.result()`, waited for and taken with SIGINT/SIGTERM held (`wait_held`): a
    future takes its lock in Python code (`Condition.__enter__`), where a raising handler can
    leave it locked, and then the thread finishing the future blocks on it forever (and so
    does whoever joins that thread). An exception the future holds is raised as is: a
    TimeoutError of its own (an OSError with ETIMEDOUT) is not taken for "not done yet"."""

    def get(timeout: float) -> T:
        if not wait((future,), timeout).done:
            raise _NotYet
        return future.result()

    return wait_held(get, _NotYet)
