"""A stall timeout for Hub requests.

huggingface_hub bounds each network *read* (`HF_HUB_DOWNLOAD_TIMEOUT`, `HF_HUB_ETAG_TIMEOUT`), so
a server that stops sending is caught, but one that trickles a byte at a time never is: every
read succeeds and a download can run for hours. Here a Hub call runs in a daemon thread while
the caller waits; the call must finish, or report progress (huggingface_hub's progress bar
reports every 10 MB chunk), within the stall timeout. Past it the caller gets `HubStalled`
and the abandoned thread ends with the process (its partial file stays as the cache's
`.incomplete`, which huggingface_hub resumes or replaces next time)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "DEFAULT_STALL_S",
    "HubStalled",
    "STALL_ENV",
    "call_with_stall_timeout",
    "pinging_bar",
    "stall_timeout",
]

T = TypeVar("T")

STALL_ENV = "REINIT_HUB_STALL_TIMEOUT"
DEFAULT_STALL_S = 60.0


class HubStalled(Exception):
    """A Hub call made no progress within the stall timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no progress for {seconds:g} s")
        self.seconds = seconds


def stall_timeout() -> float:
    """Seconds a Hub call may go without progress: `REINIT_HUB_STALL_TIMEOUT`, else 60."""
    raw = os.environ.get(STALL_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_STALL_S
    except ValueError:
        return DEFAULT_STALL_S
    return value if value > 0 else DEFAULT_STALL_S


def call_with_stall_timeout(fn: Callable[[Callable[[], None]], T], seconds: float) -> T:
    """`fn(ping)` in a daemon thread; `ping()` marks progress. Returns its result, re-raises
    its exception, or raises `HubStalled` after `seconds` without progress."""
    last = [time.monotonic()]
    result: list[T] = []
    error: list[BaseException] = []

    def ping() -> None:
        last[0] = time.monotonic()

    def target() -> None:
        try:
            result.append(fn(ping))
        except BaseException as exc:  # handed to the caller's thread below
            error.append(exc)

    worker = threading.Thread(target=target, name="reinit-hub-call", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=min(0.25, seconds))
        if worker.is_alive() and time.monotonic() - last[0] > seconds:
            raise HubStalled(seconds)
    if error:
        raise error[0]
    return result[0]


def pinging_bar(base: type, ping: Callable[[], None]) -> type:
    """A subclass of the tqdm class `base` whose updates count as progress."""

    class PingingBar(base):
        def update(self, n: float | None = 1) -> bool | None:
            ping()
            return super().update(n)

    return PingingBar
