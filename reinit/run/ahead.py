"""Statistics ahead: a second process takes the statistics of a local safetensors source
while this one imports torch and plans, then keeps ahead of the writer.

Why: `reinit apply` must spend ~1 s importing torch and planning before it can draw or write
anything, on one core; the statistics of every byte it keeps (and the `before` of every tensor
it changes) need no torch at all. A worker process started before that import reads the
source's tensors in file order and sums them with the same kernel and the same cut (`CHUNK_BYTES`
pieces from each tensor's start, `report.kernels` sub-chunks), so its numbers are exactly the
ones the engine computes itself. The engine then copies those tensors' bytes kernel-side without
reading them, and takes their statistics from here (`Applier`). A process, not a thread: the
import holds the GIL, so a thread of numpy calls would wait on it between every two calls.

What keeps it safe:
- It only reads. It runs this package's own code (`python -P -c` of a fixed line, with the
  current directory off `sys.path`: no file from where the user stands is imported), never code
  from the checkpoint: the header is parsed by the same bounded reader as everywhere.
- A result is used only for a tensor of the very file the engine opened: the worker reports
  each file's device, inode, size and mtime from its own descriptor, and the engine compares
  them with `fstat` of its own; any difference, a worker that died or said something it cannot
  parse, and the engine reads and sums that tensor itself (same numbers, its own core).
- Bounded: it stays at most `lead` bytes past the last tensor the engine asked for, so on a
  checkpoint larger than RAM the pages it read are still cached when the engine copies them.
- It ends with the run: killed and reaped when the `stats_ahead` block ends (the worker also
  leaves when its stdin closes, so it cannot outlive a killed parent for long).

Started for a source of at least `MIN_SOURCE_BYTES` on a machine with two CPUs or more;
`REINIT_STATS_PROCESS=0` turns it off, `=1` starts it whatever the size (docs/environment.md)."""

from __future__ import annotations

__all__ = [
    "ENV",
    "MIN_SOURCE_BYTES",
    "StatsAhead",
    "current",
    "lead_bytes",
    "main",
    "started",
    "stats_ahead",
    "wanted",
]

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from reinit.io.checkpoint import CHUNK_BYTES
from reinit.io.formats import pread_into
from reinit.io.signals import signals_deferred, wait_held
from reinit.report.stats import Stats, StatsAccumulator

ENV = "REINIT_STATS_PROCESS"

# the most a worker reads past the furthest tensor the engine asked for: half of what this
# machine can still cache, and at least 256 MB
_MIN_LEAD = 256 << 20
_MAX_LINE = 64 << 20  # a worker's line: its list of tensors (up to MAX_TOTAL_TENSORS) fits
# below this many bytes of safetensors a worker is not started: starting an interpreter with
# numpy (~0.1 CPU-s) would cost more than the statistics it takes off the run
MIN_SOURCE_BYTES = 256 << 20
# how long the engine waits for a worker's list of tensors before it does without it (a
# worker lists them within ~0.2 s of its start on the dev machine)
LIST_WAIT_S = 10.0


def lead_bytes() -> int:
    """How far ahead of the engine a worker may read (bytes)."""
    from reinit.limits import available_memory

    return max(_MIN_LEAD, available_memory() // 2)


def wanted(source: object) -> Path | None:
    """The local safetensors file or folder of safetensors shards a worker would sum, or None:
    another form, the Hub, an open checkpoint, `REINIT_STATS_PROCESS=0`, and, unless it is
    `1`, one CPU or under `MIN_SOURCE_BYTES` (a new interpreter costs more than it saves)."""
    mode = os.environ.get(ENV, "")
    if mode == "0" or not isinstance(source, (str, os.PathLike)):
        return None
    if os.fspath(source).startswith("hf://"):
        return None
    path = Path(os.fspath(source))
    try:
        if path.is_file() and path.suffix == ".safetensors":
            size = path.stat().st_size
        elif path.is_dir() and not (path / ".metadata").exists():
            size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        else:
            return None
    except OSError:
        return None
    if mode != "1" and (size < MIN_SOURCE_BYTES or _cpus() < 2):
        return None
    return path.resolve() if size else None


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


@dataclass(frozen=True)
class _File:
    dev: int
    ino: int
    size: int
    mtime_ns: int


def _identity(st: os.stat_result) -> _File:
    return _File(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# what a worker runs: this line, nothing from the current directory (-P where Python has it;
# the line drops "" from sys.path itself before importing anything)
_BOOT = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "sys.path.insert(0, sys.argv[1]); "
    "from reinit.run.ahead import main; sys.exit(main(sys.argv[2:]))"
)


class StatsAhead:
    """The engine's side of one worker: which tensors it covers and their statistics.

    `covers(span_fd, start, nbytes, code)` answers from the worker's list of tensors (sent
    first); `stats(...)` waits for that tensor's numbers and returns None when the worker
    cannot give them (then the engine sums the tensor itself). Thread-safe."""

    def __init__(self, source: Path, lead: int, from_byte: int = 0):
        package_parent = str(Path(__file__).resolve().parents[2])
        flags = ["-P"] if sys.version_info >= (3, 11) else []
        args = [package_parent, str(source), str(lead), str(from_byte)]
        # reviewed: runs this package's own fixed line in a new interpreter (no shell, no
        # file from the checkpoint or the current directory); the source path is an argument
        self.proc = subprocess.Popen(
            [sys.executable, *flags, "-c", _BOOT, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},  # one thread: the other core is ours
        )
        self._cond = threading.Condition()
        self._files: list[_File] | None = None  # the worker's files, once it said them
        self._index: dict[tuple[int, int, int, int, str], int] = {}  # (dev, ino, start, n, code)
        self._results: dict[int, Stats] = {}
        self._asked = -1
        self._write = threading.Lock()  # one writer of asks at a time
        self._opened: dict[int, _File] = {}  # the engine's descriptors, fstat once each
        self._done = False  # the worker ended (or said something unreadable)
        self.served = 0  # results handed to the engine (tests read it)
        self._thread = threading.Thread(target=self._read, name="reinit-ahead", daemon=True)
        self._thread.start()

    # --- the worker's lines -------------------------------------------------------------

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            while True:
                line = out.readline(_MAX_LINE)
                if not line.endswith(b"\n"):
                    return  # the end, or a line too long to be the worker's
                self._take(json.loads(line))
        except (ValueError, KeyError, TypeError, IndexError, OSError):
            return
        finally:
            with self._cond:
                self._done = True
                if self._files is None:
                    self._files = []
                self._cond.notify_all()

    def _take(self, msg: dict[str, object]) -> None:
        with self._cond:
            if "files" in msg:
                files = msg["files"]
                assert isinstance(files, list)
                self._files = [_File(*map(int, f)) for f in files]
                tensors = msg["tensors"]
                assert isinstance(tensors, list)
                first = int(str(msg.get("from", 0)))  # its share: the tensors from there
                for i, (f, start, n, code) in enumerate(tensors):
                    if i < first:
                        continue
                    ident = self._files[int(f)]
                    self._index[(ident.dev, ident.ino, int(start), int(n), str(code))] = i
            else:
                v = msg["s"]
                assert isinstance(v, list)
                self._results[int(str(msg["i"]))] = Stats(
                    v[0], v[1], v[2], v[3], int(v[4]), int(v[5])
                )
            self._cond.notify_all()

    # --- what the engine asks -----------------------------------------------------------

    def _key(self, fd: int, start: int, nbytes: int, code: str) -> int | None:
        """The worker's index of this tensor, if it sums this very file's bytes there."""
        files = self._listed()
        ident = self._opened.get(fd)
        if ident is None:
            try:
                ident = self._opened[fd] = _identity(os.fstat(fd))
            except OSError:
                return None
        if ident not in files:
            return None
        return self._index.get((ident.dev, ident.ino, start, nbytes, code))

    def _listed(self) -> list[_File]:
        """The worker's files, once it said them (none if it has not within `LIST_WAIT_S`,
        e.g. on a machine too busy to start it: then this run does without it)."""
        deadline = time.monotonic() + LIST_WAIT_S

        def get(timeout: float) -> list[_File]:
            with self._cond:
                if self._files is None and time.monotonic() < deadline:
                    self._cond.wait(min(timeout, 0.05))
                if self._files is not None or time.monotonic() >= deadline:
                    return self._files or []
            raise TimeoutError

        return wait_held(get, TimeoutError)  # `report` asks on the main thread

    def covers(self, fd: int, start: int, nbytes: int, code: str) -> bool:
        return self._key(fd, start, nbytes, code) is not None

    def stats(self, fd: int, start: int, nbytes: int, code: str) -> Stats | None:
        """The statistics of `nbytes` at `start` of the file open as `fd` (read as `code`),
        waited for; None when the worker cannot give them."""
        i = self._key(fd, start, nbytes, code)
        if i is None:
            return None
        self._ask(i)

        def get(timeout: float) -> Stats | None:
            with self._cond:
                if i not in self._results and not self._done:
                    self._cond.wait(timeout)
                if i in self._results:
                    self.served += 1
                    return self._results.pop(i)
                if self._done:
                    return None
            raise TimeoutError

        return wait_held(get, TimeoutError)

    def _ask(self, i: int) -> None:
        """Tell the worker the engine reached tensor `i` (it may read `lead` bytes past it).

        Written outside `_cond`: a write that waits for the worker to read its stdin must not
        stop the reader thread from taking the worker's results (which the worker may be
        waiting to write). Held: on the main thread (`report`) a signal landing as a lock is
        taken in Python code would leave it locked (`reinit.io.signals`)."""
        with signals_deferred():
            with self._cond:
                if i <= self._asked or self._done:
                    return
                self._asked = i
            with self._write:
                stdin = self.proc.stdin
                assert stdin is not None
                try:
                    stdin.write(b"%d\n" % i)
                    stdin.flush()
                except (OSError, ValueError):  # the worker ended (or was closed)
                    with self._cond:
                        self._done = True
                        self._cond.notify_all()

    def close(self) -> None:
        """Stop the worker and wait for it (nothing of it outlives the run)."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._thread.join(timeout=5)


_current: StatsAhead | None = None


def current() -> StatsAhead | None:
    """The worker of the run in progress in this process, if one was started."""
    return _current


@contextlib.contextmanager
def started(
    source: object, lead: int | None = None, from_byte: int = 0
) -> Iterator[StatsAhead | None]:
    """A worker for `source` (where `wanted` says it helps) for the block's duration, summing
    the tensors from `from_byte` of the source's bytes in file order (its share) on."""
    path = wanted(source)
    if path is None:
        yield None
        return
    worker: StatsAhead | None = None
    try:
        # signals held while it starts: a Ctrl-C landing once the process runs but before
        # `worker` holds it would leave it unstopped and unreaped (raised below, inside the
        # `try`, so it is closed)
        with signals_deferred(), contextlib.suppress(OSError):
            worker = StatsAhead(path, lead_bytes() if lead is None else lead, from_byte)
        yield worker
    finally:
        if worker is not None:
            worker.close()


@contextlib.contextmanager
def stats_ahead(source: object) -> Iterator[StatsAhead | None]:
    """A worker for the `apply` of `source` for the block's duration: the run's engine finds
    it with `current()`."""
    global _current
    if _current is not None:
        yield None
        return
    with started(source) as worker:
        _current = worker
        try:
            yield worker
        finally:
            _current = None


# --- the worker process ---------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """The worker: `SOURCE LEAD FROM_BYTE`. Writes one line of its files and tensors, then one
    line of statistics per tensor of its share (those that start at FROM_BYTE of the source's
    bytes in file order, or later), in that order, never more than LEAD bytes past the furthest
    tensor asked for on stdin. Any failure ends it quietly (the engine then sums for itself)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the whole group: just end
    try:
        _serve(argv[0], int(argv[1]), int(argv[2]), sys.stdin.buffer, sys.stdout.buffer)
    except Exception:
        return 1
    return 0


def _serve(source: str, lead: int, from_byte: int, asks: IO[bytes], out: IO[bytes]) -> None:
    from reinit.io.sources import open_checkpoint

    ckpt = open_checkpoint(source, progress=False)
    try:
        tensors = ckpt.file_tensors() or []
        files: list[int] = []  # fds, in first-seen order
        for t in tensors:
            if t.fd not in files:
                files.append(t.fd)
        order = sorted(tensors, key=lambda t: (files.index(t.fd), t.info.start))
        for fd in files:
            with contextlib.suppress(OSError, AttributeError):  # a hint; not on every OS
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        ends, total = [], 0
        for t in order:
            total += t.info.nbytes
            ends.append(total)
        starts = [end - t.info.nbytes for end, t in zip(ends, order, strict=True)]
        first = next((i for i, start in enumerate(starts) if start >= from_byte), len(order))
        _line(
            out,
            {
                "files": [list(vars(_identity(os.fstat(fd))).values()) for fd in files],
                "tensors": [
                    [files.index(t.fd), t.info.start, t.info.nbytes, t.info.code] for t in order
                ],
                "from": first,
            },
        )
        pacer = _Pacer(asks, ends, lead)
        buf = bytearray(CHUNK_BYTES)
        for i, t in enumerate(order):
            if i < first:
                continue
            pacer.wait_for(i, starts[i])
            s = _sum(t.path, t.fd, t.info.start, t.info.nbytes, t.info.code, buf)
            _line(out, {"i": i, "s": [s.mean, s.std, s.min, s.max, s.nonfinite, s.count]})
    finally:
        ckpt.close()


def _sum(path: str, fd: int, start: int, nbytes: int, code: str, buf: bytearray) -> Stats:
    """One tensor's statistics, cut as the engine cuts it (`CHUNK_BYTES` from its start)."""
    acc = StatsAccumulator(code)
    for off in range(0, nbytes, len(buf)):
        view = memoryview(buf)[: min(len(buf), nbytes - off)]
        pread_into(fd, view, start + off, path)
        acc.add_bytes(view)
    return acc.result()


class _Pacer:
    """The worker's bound: tensor `i` starts only within `lead` bytes of the end of the
    furthest tensor the engine asked for (read from stdin; its end ends the worker)."""

    def __init__(self, asks: IO[bytes], ends: list[int], lead: int):
        self.asks = asks
        self.ends = ends
        self.lead = lead
        self.asked = -1
        self.pending = b""

    def _limit(self) -> int:
        return (self.ends[self.asked] if self.asked >= 0 else 0) + self.lead

    def wait_for(self, i: int, start: int) -> None:
        while True:
            self._poll(block=start >= self._limit() and i > self.asked)
            if start < self._limit() or i <= self.asked:
                return

    def _poll(self, block: bool) -> None:
        """Take every ask waiting on stdin (waiting for one with `block`)."""
        fd = self.asks.fileno()
        timeout = None if block else 0
        while select.select([fd], [], [], timeout)[0]:
            data = os.read(fd, 1 << 16)
            if not data:
                raise EOFError("the engine is gone")
            *lines, self.pending = (self.pending + data).split(b"\n")
            for line in lines:
                self.asked = max(self.asked, int(line))
            timeout = 0


def _line(out: IO[bytes], msg: dict[str, object]) -> None:
    out.write(json.dumps(msg).encode() + b"\n")
    out.flush()
