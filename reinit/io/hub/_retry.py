"""huggingface_hub's chatter and retries, under reinit's control (issue #18).

A Hub failure must be one line (ours), and must not take long. huggingface_hub (tested with 2.4.0)
retries on its own and says so on stderr through its `huggingface_hub` logger (which has its own
stderr handler): `HTTP Error 500 thrown while requesting HEAD …`, `Retrying in 8s [Retry 5/5]`,
`Error while downloading from …`, `Trying to resume download...`, `Max retries exceeded.`,
`Ignored error while caching commit hash …` (read-only cache). A 500 on a file costs its full
backoff (1+2+4+8+8 s of sleeps), and a server that cuts every download of a file short past its
first 10 MB chunk makes it resume forever (its resume counter resets whenever a chunk arrived;
measured: a 25.6 MB file cut at half, 24 resumes in 40 s and still going).

`library_call()` wraps each call reinit makes into the library:

- **Chatter**: for the duration (process-wide: the handlers are swapped once, reference-counted,
  so concurrent calls in threads nest safely), the `huggingface_hub` logger's records go to one
  handler of ours instead of the library's stderr handler (and do not propagate); each is
  re-logged at DEBUG on
  `reinit.hub` (`REINIT_DEBUG=1` keeps the library's own handler as well, to see them live). The
  logger's level is lowered to WARNING if it was set higher, so the retry records are always seen.
  The library's `warnings.warn` calls are silenced by the CLI (a `warnings` filter), not here: the
  `warnings` machinery is process-global and not thread-safe to swap per call.
- **Retry budget**: the library keeps its retries, but each retry is announced by a log record
  before its sleep; when the current streak of failures has lasted, counting the announced wait,
  more than `retry_budget()` seconds (default 8, `REINIT_HUB_RETRY_SECONDS`), the handler raises
  `RetryBudgetSpent`, which ends the library call at once (it derives from BaseException so that
  no `except Exception` in the library swallows it; the library's `finally` blocks still remove
  its partial download). A streak ends when the transfer ran for longer than the budget without a
  failure, so a long download that survives a few network drops is not cut off. For a 500 the
  retries are then 1 + 2 + 4 s of sleeps (the next, 8 s, would pass 8 s): a failing file gives up
  after about 7 s plus its requests' time, instead of about 25 s.

`failure_message()` turns the errors the budget or the library ends with into reinit's one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator

__all__ = [
    "DEFAULT_RETRY_BUDGET_S",
    "RETRY_ENV",
    "RetryBudgetSpent",
    "cut_short",
    "failure_message",
    "library_call",
    "retry_budget",
]

RETRY_ENV = "REINIT_HUB_RETRY_SECONDS"
DEFAULT_RETRY_BUDGET_S = 8.0
_LIBRARY_LOGGER = "huggingface_hub"
_RESUME_WAIT_S = 1.0  # http_get sleeps 1 s before each resume (not announced in the message)
_WAIT_RE = re.compile(r"^(?:Retrying in|Rate limited\. Waiting) ([0-9.]+)s")
_STATUS_RE = re.compile(r"^HTTP Error (\d{3}) thrown while requesting")

log = logging.getLogger("reinit.hub")


class RetryBudgetSpent(BaseException):
    """huggingface_hub kept retrying past the budget. A BaseException on purpose: it must pass
    through the library's `except Exception` handlers to end its retry loop."""

    def __init__(self, retries: int, seconds: float, status: int | None, last: str | None):
        super().__init__(f"gave up after {retries} retries in {seconds:.0f} s")
        self.retries = retries
        self.seconds = seconds
        self.status = status  # the last HTTP status the library reported, if any
        self.last = last  # the library's last message about the failure


def retry_budget() -> float:
    """Seconds one streak of retries may last (`REINIT_HUB_RETRY_SECONDS`, default 8; 0 = give up
    at the first retry)."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
            if value >= 0:
                return value
        except ValueError:
            pass
    return DEFAULT_RETRY_BUDGET_S


class _Streak:
    """The retry state of one library call, in the thread that makes it."""

    def __init__(self, budget: float):
        self.budget = budget
        self.start: float | None = None  # when the current streak of failures began
        self.last_at = 0.0
        self.last_wait = 0.0
        self.retries = 0
        self.status: int | None = None
        self.last: str | None = None

    def observe(self, message: str) -> None:
        status = _STATUS_RE.match(message)
        if status:
            self.status = int(status.group(1))
            self.last = message
            return
        wait = _WAIT_RE.match(message)
        if wait:
            seconds = float(wait.group(1))
        elif "Trying to resume download" in message:
            seconds = _RESUME_WAIT_S
            self.last = message.split("\n", 1)[0]
        else:
            return
        now = time.monotonic()
        if self.start is None or now - self.last_at > self.last_wait + self.budget:
            self.start, self.retries = now, 0  # a new streak (the transfer ran in between)
        if now - self.start + seconds > self.budget:
            raise RetryBudgetSpent(self.retries, now - self.start, self.status, self.last)
        self.retries += 1
        self.last_at, self.last_wait = now, seconds


_local = threading.local()


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not break the download
            return
        log.debug("huggingface_hub: %s", message)
        streak: _Streak | None = getattr(_local, "streak", None)
        if streak is not None:
            streak.observe(message)  # may raise RetryBudgetSpent, which ends the library call

    def handle(self, record: logging.LogRecord) -> bool:
        # logging.Handler.handle would hold our lock while emit raises; nothing to guard here.
        if self.filter(record):
            self.emit(record)
            return True
        return False


_CAPTURE = _Capture()
_install_lock = threading.Lock()
_depth = 0
_saved: tuple[list[logging.Handler], bool, int] | None = None


def _install() -> None:
    global _depth, _saved
    # The library adds its stderr handler when first imported: import it before saving the
    # handlers, or that handler would be added inside our window and dropped by the restore.
    import huggingface_hub.utils.logging  # noqa: F401

    with _install_lock:
        _depth += 1
        if _depth > 1:
            return
        lib = logging.getLogger(_LIBRARY_LOGGER)
        _saved = (lib.handlers[:], lib.propagate, lib.level)
        debug = os.environ.get("REINIT_DEBUG", "") not in ("", "0")
        lib.handlers = [*lib.handlers, _CAPTURE] if debug else [_CAPTURE]
        lib.propagate = debug and lib.propagate
        if lib.level == logging.NOTSET or lib.level > logging.WARNING:
            lib.setLevel(logging.WARNING)


def _uninstall() -> None:
    global _depth, _saved
    with _install_lock:
        _depth -= 1
        if _depth > 0 or _saved is None:
            return
        lib = logging.getLogger(_LIBRARY_LOGGER)
        lib.handlers, lib.propagate = _saved[0], _saved[1]
        lib.setLevel(_saved[2])
        _saved = None


@contextlib.contextmanager
def library_call() -> Iterator[None]:
    """Around one call into huggingface_hub: its log records are captured (see the module doc)
    and its retries bounded by `retry_budget()`; `RetryBudgetSpent` ends the call when spent."""
    previous = getattr(_local, "streak", None)
    _local.streak = _Streak(retry_budget())
    _install()
    try:
        yield
    finally:
        _uninstall()
        _local.streak = previous


def cut_short(exc: BaseException) -> bool:
    """The download ended before the announced size: the connection closed mid-body (httpx's
    RemoteProtocolError) or the library's size check failed."""
    chain: BaseException | None = exc
    for _ in range(4):
        if chain is None:
            break
        if type(chain).__name__ == "RemoteProtocolError":
            return True
        if isinstance(chain, OSError) and str(chain).startswith("Consistency check failed"):
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def failure_message(
    display: str, filename: str | None, exc: BaseException, detail: str
) -> str | None:
    """reinit's one line for a spent retry budget or a download cut short; None for any other
    error (hub.py's `_error` handles those). `detail` is a short text of the underlying error."""
    subject = f"'{filename}'" if filename is not None else "the repository information"
    if isinstance(exc, RetryBudgetSpent):
        gave_up = f"gave up after {exc.retries} retries in {exc.seconds:.0f} s"
        if exc.status is not None:
            return (
                f"{display}: the Hub answered HTTP {exc.status} for {subject} ({gave_up}): retry"
                " later, or set HF_HUB_OFFLINE=1 to use files already in the cache"
            )
        context = exc.__context__
        if context is not None and cut_short(context):
            return _cut_short_line(display, subject, context, detail, gave_up)
        why = f": {exc.last.strip()}" if exc.last else ""
        return (
            f"{display}: could not get {subject} from the Hub ({gave_up}{why}): check your"
            f" network and proxy, or set HF_HUB_OFFLINE=1 to use files already in the cache"
        )
    if filename is not None and cut_short(exc):
        return _cut_short_line(display, subject, exc, detail, "after the library's retries")
    return None


def _cut_short_line(
    display: str, subject: str, exc: BaseException, detail: str, gave_up: str
) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 120:
        text = text[:117] + "..."
    return (
        f"{display}: the download of {subject} was cut short (HTTP 200, {text or detail};"
        f" {gave_up}): retry later, check your network and proxy, or set HF_HUB_OFFLINE=1 to use"
        " files already in the cache"
    )
