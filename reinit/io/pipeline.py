"""Overlapping I/O and compute: run an iterator in a background thread, handing its items over
through a bounded queue.

Why threads work here: `os.pread`, `os.write`, `os.copy_file_range` and torch's kernels all
release the GIL, so a reader thread, a compute thread and the writing thread run on different
cores. The queue bound keeps memory at `depth` items whatever the checkpoint's size."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

from reinit.io.signals import signals_deferred, wait_held

__all__ = ["prefetch"]

T = TypeVar("T")


class _Done:
    """The producer's end-of-items marker (a class, so the queue's item type stays exact)."""


_DONE = _Done()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _next(q: queue.Queue[T]) -> T:
    """The next item, taken with SIGINT/SIGTERM held even when one is ready: `Queue.get`
    takes the queue's mutex in `Condition.__enter__`, which is Python code, so a handler
    raising there can leave right after the acquire, before the `with` holds the mutex, and
    leave it locked for good. The producer's `put` and this generator's own cleanup then
    block on it forever: `reinit apply` hung after a SIGTERM instead of exiting 130."""
    return wait_held(lambda timeout: q.get(timeout=timeout), queue.Empty)


def prefetch(
    items: Iterable[T], depth: int = 4, name: str = "reinit-prefetch"
) -> Generator[T, None, None]:
    """Yield the items of `items`, produced ahead in a daemon thread, at most `depth` ahead.

    An exception in the producer is re-raised in the consumer. If the consumer stops early
    (an error, Ctrl-C, or `close()` of this generator), the producer is told to stop and no
    thread stays blocked."""
    q: queue.Queue[T | _Done | _Failure] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: T | _Done | _Failure) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Failure(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None and stop.is_set():
                with contextlib.suppress(Exception):
                    close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = _next(q)
            if isinstance(item, _Done):
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        # a second Ctrl-C must not land inside the join (bpo-45274: "release unlocked lock"),
        # nor in `stop.set()` (its lock is taken in Python code too: see `_next`)
        with signals_deferred():
            stop.set()
            while thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
