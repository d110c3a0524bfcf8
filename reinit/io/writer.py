"""The streaming safetensors writer, and atomic output.

The safetensors library can only serialize a whole dict of tensors held in memory. Since every
name, dtype and shape is known before any data (the plan), we write the header first and then
append each tensor's bytes in order: peak memory is one tensor, not the model.

Output is atomic: everything is written under a temporary sibling name, fsynced, and renamed
into place only when complete; on any failure (exceptions, Ctrl-C) the temporary is removed
and the target is untouched."""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

from reinit.errors import CheckpointError, WriteError
from reinit.io.formats import build_header
from reinit.io.renameat import RENAME_EXCHANGE, renameat2
from reinit.io.signals import result_held, signals_deferred

__all__ = [
    "SafetensorsWriter",
    "WRITEBACK_BYTES",
    "copy_file_span",
    "publish_directory",
    "remove_path",
    "save_to",
    "temp_sibling",
    "write_error",
    "write_torch_file",
]


def write_error(path: str, e: OSError) -> WriteError:
    """The one-line `WriteError` for an OSError met while writing `path` (the output, report or
    plot as the user named it), saying what the user can do about it. Every write failure
    goes through here, so each errno reads the same whichever file hit it."""
    if e.errno == errno.ENOSPC:
        why = "the disk is full; free space or choose another -o"
    elif e.errno == errno.EFBIG:
        why = "the file size limit (ulimit -f) is too small for the output"
    elif e.errno == errno.EROFS:
        why = "read-only file system; choose a folder on a writable one"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied; choose a writable -o"
    else:
        why = e.strerror or str(e)
    return WriteError(f"{path}: cannot write: {why}")


class _SourceEnded(OSError):
    """A source file held fewer bytes than the tensors copied from it: it was truncated (or
    replaced) while the run read it. `fd` is its descriptor (which names the file)."""

    def __init__(self, fd: int):
        super().__init__(errno.EIO, "source ended early during copy")
        self.fd = fd


def _source_ended_error(e: _SourceEnded) -> CheckpointError:
    """The one-line error for a source that ended early while its bytes were copied: it names
    the source (by its descriptor), not the output, whose disk is not at fault."""
    try:
        name = os.readlink(f"/proc/self/fd/{e.fd}")
    except OSError:
        name = "a source file"
    return CheckpointError(
        f"{name}: unexpected end of file while its tensors were copied; the file was "
        "truncated or replaced during the run, run it again once the file is complete"
    )


WRITEBACK_BYTES = 64 << 20
_HAVE_FADVISE = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")

#: Direct I/O (`O_DIRECT`, Linux): the file's bytes go from a staging buffer to the disk
#: without a copy into the page cache. Writes are whole aligned blocks of the staging buffer;
#: the last partial block is written the ordinary way. `REINIT_DIRECT_IO=0` turns it off.
DIRECT_ALIGN = 4096
DIRECT_STAGE = 8 << 20
# staging buffers: one filling, up to three written. Four against two, the bench's 2.7 GB,
# interleaved, 7 runs each: transplant 2.21 against 2.40 s, apply 2.46 against 2.59 s (median;
# docs/bench/round3.md); eight measured no better
DIRECT_BUFFERS = 4
# write the tensors a source file holds as they are from the start, on another thread
# (`_Prefill`), rather than when the in-order stream reaches them
PREFILL = True
# what it reads and writes at a time. Not small, because the thread needs the GIL back after
# each read and write, and torch's import (on another thread) holds it but for a forced switch
# every 5 ms: with 8 MB windows the prefill wrote at ~0.6 GB/s while torch loaded. 16 MB
# measured no slower than 32 MB (8 interleaved runs: 2.56 against 2.72 s median) and holds
# 16 MB less beside the draws (the 27 GB folder's apply peaked at 498 MB with 32 MB)
PREFILL_WINDOW = 16 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)
# what a file system that cannot take direct I/O answers at open or at the first write
_NO_DIRECT = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


def direct_io_wanted() -> bool:
    """Whether writers try `O_DIRECT` (the platform has it and `REINIT_DIRECT_IO` is not 0)."""
    return bool(_O_DIRECT) and os.environ.get("REINIT_DIRECT_IO", "").strip() != "0"


class _Covered:
    """Block-aligned byte ranges of a file that another writer (`_Prefill`) writes: sorted,
    disjoint `(start, end)` pairs, both multiples of `DIRECT_ALIGN`."""

    def __init__(self, ranges: Sequence[tuple[int, int]] = ()):
        self.ranges = [r for r in ranges if r[1] > r[0]]
        self._starts = [r[0] for r in self.ranges]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of `[start, end)` no range covers, in order."""
        out: list[tuple[int, int]] = []
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        pos = start
        while pos < end and i < len(self.ranges):
            a, b = self.ranges[i]
            if b <= pos:
                i += 1
                continue
            if a >= end:
                break
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
            i += 1
        if pos < end:
            out.append((pos, end))
        return out


# a run of the output that `_Prefill` copies: its block-aligned `[start, end)`, and the source
# segments that fill it, in order: `(out_start, out_end, src_fd, src_offset)`
PrefillRun = tuple[int, int, list[tuple[int, int, int, int]]]


def prefill_plan(
    offsets: Sequence[tuple[int, int]], known: Sequence[tuple[int, int] | None], base: int
) -> list[PrefillRun]:
    """What `_Prefill` copies: the block-aligned interior of every run of consecutive tensors
    whose bytes lie in a source file as they are (`known[i]`: `(fd, offset)` of tensor i's
    bytes, or None). `offsets` are the tensors' data offsets, `base` where the data begins in
    the file. A run's first and last partial blocks are left to the in-order stream, which also
    writes every other tensor."""
    runs: list[PrefillRun] = []
    for i, j in _known_runs(known):
        lo = -(-(base + offsets[i][0]) // DIRECT_ALIGN) * DIRECT_ALIGN
        hi = (base + offsets[j][1]) // DIRECT_ALIGN * DIRECT_ALIGN
        if lo < hi:
            spans = [
                (base + offsets[k][0], base + offsets[k][1], known[k]) for k in range(i, j + 1)
            ]
            runs.append((lo, hi, _segments(spans, lo, hi)))
    return runs


def _known_runs(known: Sequence[tuple[int, int] | None]) -> Iterator[tuple[int, int]]:
    """`(first, last)` indices of each run of consecutive entries that are not None."""
    i = 0
    while i < len(known):
        if known[i] is None:
            i += 1
            continue
        j = i
        while j + 1 < len(known) and known[j + 1] is not None:
            j += 1
        yield i, j
        i = j + 1


def _segments(
    spans: Sequence[tuple[int, int, tuple[int, int] | None]], lo: int, hi: int
) -> list[tuple[int, int, int, int]]:
    """The source pieces that fill `[lo, hi)`: each tensor's `(start, end, (fd, offset))` cut
    to it, one piece where a tensor's bytes follow the previous one's in the same file."""
    out: list[tuple[int, int, int, int]] = []
    for start, end, fd_at in spans:
        a, b = max(lo, start), min(hi, end)
        if a >= b or fd_at is None:
            continue
        fd, src_at = fd_at[0], fd_at[1] + a - start
        if out and out[-1][2] == fd and out[-1][3] + out[-1][1] - out[-1][0] == src_at:
            out[-1] = (out[-1][0], b, fd, out[-1][3])  # the next bytes of the same source
        else:
            out.append((a, b, fd, src_at))
    return out


class _Prefill:
    """Writes the tensors whose bytes a source file already holds, at their places in the
    output, on its own thread and descriptor (`O_DIRECT`), while the in-order stream waits for
    torch or for draws: the disk works from the first moment rather than only once the stream
    reaches those tensors. The stream skips the blocks written here (`covered`).

    Why: `reinit apply` spends its first ~0.7 s importing torch, and its stream stops at the
    first tensor it draws; 80% of the bench's output is kept bytes, all known before then.
    A refusal of direct I/O on its descriptor: the rest the ordinary way (same bytes)."""

    def __init__(self, fd: int, runs: Sequence[PrefillRun]):
        self.covered = _Covered([(lo, hi) for lo, hi, _ in runs])
        self._runs = list(runs)
        self._stop = threading.Event()
        self._fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | _O_DIRECT)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reinit-prefill")
        self._done: Future[None] | None = self._pool.submit(self._run)

    def _run(self) -> None:
        buf = mmap.mmap(-1, PREFILL_WINDOW)
        view = memoryview(buf)
        direct = True
        try:
            for lo, hi, segments in self._runs:
                for c in range(lo, hi, PREFILL_WINDOW):
                    if self._stop.is_set():
                        return
                    e = min(c + PREFILL_WINDOW, hi)
                    _fill_window(view, c, e, segments)
                    direct = _pwrite_maybe_direct(self._fd, view[: e - c], c, direct)
        finally:
            view.release()
            with suppress(BufferError):  # a slice held by a failed write's traceback
                buf.close()

    def check(self) -> None:
        """Raise its error now if it has ended with one (a full disk), so the stream stops."""
        d = self._done
        if d is not None and d.done():
            result_held(d)

    def wait(self) -> None:
        """Wait for every block to be written; its error (a full disk) is raised here."""
        if self._done is not None:
            result_held(self._done)

    def close(self) -> None:
        """Stop and wait for the thread (signals held, as `_DirectFile.close`), close the
        descriptor."""
        with signals_deferred():
            self._stop.set()
            if self._done is not None:
                with suppress(Exception):
                    self._done.result()
                self._done = None
            self._pool.shutdown(wait=True)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


# how many places of the source `source_cached` probes
CACHE_PROBES = 16


def source_cached(runs: Sequence[PrefillRun]) -> bool:
    """Whether the source bytes of `runs` look like they are in the page cache: 4 KB at
    `CACHE_PROBES` places spread over them, each read with `RWF_NOWAIT` (Linux), which fails
    rather than wait for the disk. Why: from a cold source, the prefill's reads compete with
    the statistics worker's, whose order the stream waits on (a 1.9 GB cold source: 4.4-4.5 s
    with it against 3.6-3.9 s without; docs/bench/round3.md); from the cache it only takes the
    disk's write time out of the import's shadow. No way to ask: assume cold."""
    flags = getattr(os, "RWF_NOWAIT", 0)
    if not flags or not hasattr(os, "preadv"):
        return False
    segments = [seg for _, _, segs in runs for seg in segs]
    total = sum(b - a for a, b, _, _ in segments)
    buf = bytearray(4096)
    for k in range(CACHE_PROBES):
        want, at = total * k // CACHE_PROBES, 0
        for a, b, src, start in segments:
            if want < at + b - a:
                try:
                    if os.preadv(src, [buf], start + want - at, flags) <= 0:
                        return False
                except OSError:  # EAGAIN: not cached; or the flag not taken
                    return False
                break
            at += b - a
    return True


def _fill_window(
    view: memoryview, c: int, e: int, segments: Sequence[tuple[int, int, int, int]]
) -> None:
    """Read the output's bytes `[c, e)` into `view` from the segments that hold them (sorted
    and contiguous)."""
    i = max(0, bisect.bisect_right(segments, (c, 1 << 62)) - 1)
    for a, b, src, at in segments[i:]:
        if a >= e:
            break
        lo, hi = max(a, c), min(b, e)
        if lo < hi:
            _pread_all(src, view[lo - c : hi - c], at + lo - a)


def _pread_all(fd: int, view: memoryview, at: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], at + done)
        if n == 0:
            raise _SourceEnded(fd)
        done += n


def _pwrite_maybe_direct(fd: int, view: memoryview, at: int, direct: bool) -> bool:
    """Write `view` at `at`; a refusal of direct I/O clears it and writes the ordinary way.
    Returns whether the descriptor is still direct."""
    if direct:
        try:
            _pwrite_all(fd, view, at)
            return True
        except OSError as e:
            if e.errno not in _NO_DIRECT:
                raise
            _clear_direct(fd)
    _pwrite_all(fd, view, at)
    return False


class _DirectFile:
    """A file opened with `O_DIRECT`, written from its start through `DIRECT_BUFFERS`
    page-aligned staging buffers: one fills (tensor bytes copied in, or a source's bytes read
    straight in) while a thread writes the full ones, in order, to the disk. Nothing passes
    through the page cache, so writing costs the disk's time rather than the CPU's copy into
    page-cache pages (on this project's machines 0.8-2.4 system-s less for 2.7 GB;
    docs/bench/round3.md).

    The last partial block is written the ordinary way (`O_DIRECT` cleared) by `finish`, so the
    file is exactly its bytes. A file system that refuses a direct write after the open
    (`EINVAL`) gets everything held here, and the rest of the file, the ordinary way: `active`
    turns False and the file position is left at the end of what was written."""

    def __init__(self, fd: int, covered: _Covered | None = None):
        self.fd = fd
        self.active = True
        # blocks another writer writes (`_Prefill`): neither read nor written here
        self.covered = covered if covered is not None else _Covered()
        self._maps = [mmap.mmap(-1, DIRECT_STAGE) for _ in range(DIRECT_BUFFERS)]
        self._views = [memoryview(m) for m in self._maps]
        self._cur = 0  # the buffer filling
        self._at = 0  # the file offset of its first byte (a multiple of DIRECT_ALIGN)
        self._fill = 0
        self._pool: ThreadPoolExecutor | None = None
        # the writes in flight, oldest first: (write, buffer, offset)
        self._pending: deque[tuple[Future[None], int, int]] = deque()

    def write(self, view: memoryview) -> None:
        """Append `view`'s bytes."""
        while view and self.active:
            n = min(len(view), DIRECT_STAGE - self._fill)
            self._views[self._cur][self._fill : self._fill + n] = view[:n]
            view = view[n:]
            self._filled(n)
        if view:  # refused part-way: the rest the ordinary way
            _write_fd(self.fd, view)

    def copy_from(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append `nbytes` of `src_fd` at `offset`, read straight into the staging buffer
        (what `covered` holds is skipped: another writer writes it)."""
        while nbytes and self.active:
            want = min(nbytes, DIRECT_STAGE - self._fill)
            here = self._at + self._fill
            view = self._views[self._cur]
            for a, b in (
                self.covered.gaps(here, here + want) if self.covered else [(here, here + want)]
            ):
                _pread_all(src_fd, view[a - self._at : b - self._at], offset + a - here)
            offset += want
            nbytes -= want
            self._filled(want)
        if nbytes:
            copy_file_span(src_fd, offset, self.fd, nbytes)

    def _filled(self, n: int) -> None:
        self._fill += n
        if self._fill < DIRECT_STAGE:
            return
        if len(self._pending) == len(self._views) - 1:
            self._settle()  # the oldest write is done: its buffer fills next
        if not self.active:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="reinit-write")
        view = self._views[self._cur]
        self._pending.append(
            (self._pool.submit(self._pwrite_gaps, view, self._at), self._cur, self._at)
        )
        self._cur = (self._cur + 1) % len(self._views)
        self._at += DIRECT_STAGE
        self._fill = 0

    def _settle(self) -> None:
        """Wait for the oldest write in flight; a refusal of direct I/O ends it (`_leave`).
        Interrupted while waiting, the write stays pending: `close` waits for it before the
        file closes."""
        if not self._pending:
            return
        future, buf, at = self._pending[0]
        refused = _refused(future)
        self._pending.popleft()
        del future
        if refused:
            self._leave(buf, at)

    def _leave(self, buf: int, at: int) -> None:
        """Direct I/O refused: the buffer whose write failed (at `at`), the ones written after
        it, then the one filling, written the ordinary way; the file position ends after them."""
        later = list(self._pending)
        for future, _, _ in later:  # done (or refused too) before their bytes are rewritten
            with suppress(OSError):
                result_held(future)
        self._pending.clear()
        _clear_direct(self.fd)
        for b, a in [(buf, at), *((b, a) for _, b, a in later)]:
            self._pwrite_gaps(self._views[b], a)
        self._pwrite_gaps(self._views[self._cur][: self._fill], self._at)
        os.lseek(self.fd, self._at + self._fill, os.SEEK_SET)
        self.active = False

    def _pwrite_gaps(self, view: memoryview, at: int) -> None:
        """Write `view` at `at`, but for the blocks `covered` holds."""
        if not self.covered:
            _pwrite_all(self.fd, view, at)
            return
        for a, b in self.covered.gaps(at, at + len(view)):
            _pwrite_all(self.fd, view[a - at : b - at], a)

    def finish(self) -> None:
        """Write what is left: its whole blocks directly, the last partial block the ordinary
        way (a fresh file system refusal: all of it the ordinary way)."""
        while self._pending and self.active:
            self._settle()
        if not self.active:
            return
        view = self._views[self._cur]
        whole = self._fill - self._fill % DIRECT_ALIGN
        try:
            self._pwrite_gaps(view[:whole], self._at)
        except OSError as e:
            if e.errno not in _NO_DIRECT:
                raise
            whole = 0  # all of it the ordinary way
        _clear_direct(self.fd)
        self._pwrite_gaps(view[whole : self._fill], self._at + whole)
        self.active = False

    def close(self) -> None:
        """Wait for a write in flight (its error, if any, is the caller's no more: the file is
        being given up or was finished) and free the buffers. SIGINT/SIGTERM are held until
        the thread is joined (`reinit.io.signals`): an interrupt raised inside the future's or
        the join's lock machinery could leave a lock taken and the join waiting forever."""
        with signals_deferred():
            for future, _, _ in self._pending:
                with suppress(Exception):
                    future.result()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for v in self._views:
                v.release()
            for m in self._maps:
                # a slice of it still held (by a failed write's traceback) keeps it mapped
                # until that is collected: nothing is written through it any more
                with suppress(BufferError):
                    m.close()
            self._views, self._maps = [], []


def _refused(future: Future[None]) -> bool:
    """Wait for a direct write done by the writer's thread, with SIGINT/SIGTERM held while
    blocked (`result_held`: the main thread never blocks in a future's lock with a raising
    handler in place, which could leave the lock taken and the thread finishing the write
    stuck on it forever). True if the file system refused it; its other errors are raised."""
    try:
        result_held(future)
    except OSError as e:
        if e.errno in _NO_DIRECT:
            return True
        raise
    return False


def _pwrite_all(fd: int, view: memoryview, at: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], at + done)


def _write_fd(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _clear_direct(fd: int) -> None:
    """Clear `O_DIRECT` on an open file (Linux lets `F_SETFL` change it)."""
    import fcntl

    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in the order given at construction.

    Use as a context manager; `write(name, data)` must be called for each tensor in order.
    The file at `path` is written directly: atomicity is `reinit.io.publish`'s job."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: Sequence[tuple[str, str, Sequence[int]]],  # (name, dtype name, shape)
        metadata: Mapping[str, str] | None = None,
        known: Mapping[str, tuple[int, int]] | None = None,
    ):
        """`known`: the tensors whose bytes lie in a source file as they are, `(fd, offset)`
        by name: with direct I/O their blocks are written from the start, on another thread
        (`_Prefill`), and the in-order writes of them skip those blocks."""
        self.path = os.fspath(path)
        self.entries = list(entries)
        self.header, self.offsets = build_header(self.entries, metadata)
        self._known = dict(known or {})
        self._prefill: _Prefill | None = None
        self._next = 0
        self._left: int | None = None  # bytes left of the tensor being written
        self._fd = -1
        self.bytes_written = 0
        self._flushed = 0  # bytes handed to the kernel's write-back so far
        self._direct: _DirectFile | None = None  # opened with O_DIRECT

    def __enter__(self) -> SafetensorsWriter:
        try:
            self._open()
            self._write_all(self.header)
        except OSError as e:
            self._close()
            raise write_error(self.path, e) from None
        except BaseException:  # an interrupt: `__exit__` will not run, so close here
            self._close()
            raise
        return self

    def _open(self) -> None:
        """Open the file, with `O_DIRECT` and a staging buffer where the platform and the
        file system take it (`direct_io_wanted`), else the ordinary way."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if direct_io_wanted():
            try:
                self._fd = os.open(self.path, flags | _O_DIRECT, 0o644)
            except OSError as e:
                if e.errno not in _NO_DIRECT:
                    raise
            else:
                self._direct = _DirectFile(self._fd)
                self._start_prefill(self._direct)
                return
        self._fd = os.open(self.path, flags, 0o644)

    def _start_prefill(self, direct: _DirectFile) -> None:
        """Start writing the `known` tensors' blocks (`_Prefill`), where there are any and the
        descriptor can be opened again; else the in-order stream writes them all."""
        if not PREFILL or not self._known:
            return
        known = [self._known.get(name) for name, _, _ in self.entries]
        runs = prefill_plan(self.offsets, known, len(self.header))
        if not runs or not source_cached(runs):
            return
        # signals held: a Ctrl-C landing once its descriptor is open and its thread started,
        # but before it is ours, would leave both running past the run (`_close` stops it)
        with signals_deferred():
            try:
                self._prefill = _Prefill(self._fd, runs)
            except OSError:
                return
        direct.covered = self._prefill.covered

    def _staged(self) -> _DirectFile | None:
        """The direct-I/O staging, while it is in use (a refusal ends it)."""
        d = self._direct
        return d if d is not None and d.active else None

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        direct = self._staged()
        if direct is not None:
            direct.write(view)
            self.bytes_written += len(view)
            return
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self.bytes_written += n

    def _start_writeback(self) -> None:
        """Hand every full `WRITEBACK_BYTES` written so far to the kernel's write-back now.

        Why: the output is fsynced before it is renamed into place; without this, the disk
        starts writing only when dirty pages pile up, and the final fsync then waits for
        gigabytes. POSIX_FADV_DONTNEED on written ranges starts their write-back without
        waiting (Linux), so the disk writes while we read and compute, and the page cache does
        not fill with our output. Advisory: a platform without it just fsyncs at the end."""
        if (
            self._staged() is not None
            or self.bytes_written - self._flushed < WRITEBACK_BYTES
            or not _HAVE_FADVISE
        ):
            return
        end = self.bytes_written - self.bytes_written % WRITEBACK_BYTES
        with suppress(OSError):
            os.posix_fadvise(self._fd, self._flushed, end - self._flushed, os.POSIX_FADV_DONTNEED)
        self._flushed = end

    def _begin(self, name: str) -> None:
        if self._left is not None:
            return
        if self._next >= len(self.entries):
            raise ValueError(f"writer: unexpected tensor '{name}', all tensors already written")
        want = self.entries[self._next][0]
        if name != want:
            raise ValueError(f"writer: expected tensor '{want}' next, got '{name}'")
        begin, end = self.offsets[self._next]
        self._left = end - begin

    def _advance(self, name: str, nbytes: int) -> None:
        assert self._left is not None
        if nbytes > self._left:
            raise ValueError(f"writer: tensor '{name}' got {nbytes} bytes, {self._left} were left")
        self._left -= nbytes

    def write_part(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Append the next piece of tensor `name` (its bytes in order, in any number of parts)."""
        self._begin(name)
        nbytes = memoryview(data).nbytes
        self._advance(name, nbytes)
        try:
            self._write_all(data)
            self._start_writeback()
            if self._prefill is not None:
                self._prefill.check()
        except _SourceEnded as e:  # the prefill's read of a source that shrank
            raise _source_ended_error(e) from None
        except OSError as e:
            raise write_error(self.path, e) from None

    def copy_part(self, name: str, src_fd: int, offset: int, nbytes: int) -> None:
        """Append the next piece of tensor `name` by copying `nbytes` of `src_fd` at `offset`,
        kernel-side (`os.copy_file_range`) where the platform allows, else through a buffer."""
        self._begin(name)
        self._advance(name, nbytes)
        try:
            direct = self._staged()
            if direct is not None:
                direct.copy_from(src_fd, offset, nbytes)
            else:
                copy_file_span(src_fd, offset, self._fd, nbytes)
            if self._prefill is not None:
                self._prefill.check()
        except _SourceEnded as e:
            raise _source_ended_error(e) from None
        except OSError as e:
            raise write_error(self.path, e) from None
        self.bytes_written += nbytes
        self._start_writeback()

    def end_tensor(self, name: str) -> None:
        """Close tensor `name`; every one of its bytes must have been written."""
        self._begin(name)
        if self._left:
            raise ValueError(f"writer: tensor '{name}' is {self._left} bytes short")
        self._left = None
        self._next += 1

    def write(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Append a whole tensor's bytes (C-contiguous, little-endian)."""
        self.write_part(name, data)
        self.end_tensor(name)

    def _close(self) -> None:
        direct, self._direct = self._direct, None
        prefill, self._prefill = self._prefill, None
        try:
            if prefill is not None:
                prefill.close()
            if direct is not None:
                direct.close()  # its write in flight ends before the file closes
        finally:  # an interrupt held during it is raised after it: the file still closes
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                if self._left is not None or self._next != len(self.entries):
                    missing = self.entries[self._next][0]
                    raise ValueError(f"writer: tensor '{missing}' was never written")
                try:
                    if self._direct is not None:
                        self._direct.finish()
                    if self._prefill is not None:
                        self._prefill.wait()
                    os.fsync(self._fd)
                except _SourceEnded as e:
                    raise _source_ended_error(e) from None
                except OSError as e:
                    raise write_error(self.path, e) from None
        finally:
            self._close()


def write_torch_file(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor]) -> int:
    """`torch.save` into a file we own and fsync it; returns its size. Tensors that are the same
    object stay tied in the file (torch.save keeps shared storage).

    Saving through our own file object is what lets a full disk or a file size limit surface
    as its OSError (torch reports a path write failure only as an opaque RuntimeError)."""
    where = os.fspath(path)
    try:
        with open(path, "wb") as f:
            save_to(f, dict(state), where)
            f.flush()
            os.fsync(f.fileno())
            return f.tell()
    except OSError as e:
        raise write_error(where, e) from None


def save_to(f: BinaryIO, obj: object, where: str) -> None:
    """`torch.save(obj, f)` into our own file object `f` (of the output `where`), with
    SIGINT/SIGTERM held until it returns (`reinit.io.signals`); a write's OSError (a full
    disk, `ulimit -f`) fails as `write_error`.

    Why held: torch's zip writer calls `f.write` from C++, in the main thread, where Python
    runs signal handlers. An interrupt raised inside it either reached torch's `__exit__`,
    whose end of the archive then failed ("unexpected pos") and replaced the interrupt with a
    RuntimeError (exit 1, "internal error", instead of 130), or skipped that `__exit__`, and the
    writer left unfinished wrote its end from its destructor, after `f` was closed: an
    exception in a C++ destructor, so the process aborted (SIGABRT). Held, the signal is raised
    as soon as the record is complete: a Ctrl-C waits at most for one `torch.save` (a DCP
    record is one tensor; the `.bin/.pt` output is the whole model)."""
    try:
        with signals_deferred():
            torch.save(obj, f)
    except OSError as e:
        raise write_error(where, e) from None
    except RuntimeError as e:  # torch's own end replaced the write's OSError (see above)
        cause = _os_error_in_chain(e)
        if cause is not None:
            raise write_error(where, cause) from None
        raise WriteError(f"{where}: cannot write: {str(e).splitlines()[0]}") from None


def _os_error_in_chain(e: BaseException) -> OSError | None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


_COPY_CHUNK = 64 << 20


def copy_file_span(src_fd: int, offset: int, dst_fd: int, nbytes: int) -> None:
    """Copy bytes between files without passing them through Python when the kernel can.
    `dst_fd`'s file position advances by `nbytes`."""
    remaining = nbytes
    pos = offset
    use_kernel = hasattr(os, "copy_file_range")
    while remaining > 0:
        if use_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(remaining, _COPY_CHUNK), pos)
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    use_kernel = False
                    continue
                raise
        else:
            chunk = os.pread(src_fd, min(remaining, _COPY_CHUNK), pos)
            n = len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst_fd, view) :]
        if n == 0:
            raise _SourceEnded(src_fd)
        pos += n
        remaining -= n


# --- atomic output ----------------------------------------------------------------------


def temp_sibling(target: Path) -> Path:
    return target.parent / f".{target.name}.reinit-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_path(path: Path) -> None:
    """Remove a file or folder if it is there. A path that is not there is no error, whatever
    the file system says about unlinking it (a read-only one answers EROFS, not ENOENT)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_symlink() or path.exists():
        with suppress(FileNotFoundError):
            path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False when the platform
    or file system cannot, so the caller falls back to two renames."""
    return renameat2(a, b, RENAME_EXCHANGE) == 0


def publish_directory(tmp: Path, target: Path) -> None:
    """Move a finished directory onto `target`. Replacing an existing directory is one atomic
    swap where the kernel allows it; otherwise the old one is moved aside first (with signals
    held, so an interrupt cannot strike between the two renames)."""
    if not target.exists():
        os.replace(tmp, target)
        return
    if not target.is_dir() or target.is_symlink():
        raise WriteError(f"{target}: exists and is not a directory; choose another -o")
    if _exchange(tmp, target):
        remove_path(tmp)  # now holds the old directory
        return
    old = temp_sibling(target)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    remove_path(old)
