"""Reading a file span into reused buffers (`BufferPool`, `read_span`).

Why: every kept byte of `apply` and every byte of `reinit report` is read into the process for
its statistics. A fresh 8 MB buffer per chunk costs the zeroing and first-touch page faults of
every page; measured on the dev machine, reading 2.7 GB into fresh buffers took about twice
the system time of reading it into one reused buffer (docs/bench/log.md, "read once"). So buffers are
recycled: whoever is done with a chunk gives it back. With `stream.READ_ONCE` the writer
writes the very buffer the statistics were computed on and gives it back after.

A buffer that is never given back is simply garbage-collected (a consumer that keeps the
chunks, such as the in-memory API, is safe without knowing about the pool); one that is given
back is handed out again, so only the last holder of a chunk may give it back."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Iterator

from reinit.io.checkpoint import FileSpan
from reinit.io.formats import pread_into

__all__ = ["BufferPool", "MMAP_THRESHOLD", "read_span", "return_big_frees"]


# glibc serves allocations of at least this many bytes with their own mapping, given back to
# the kernel when freed. By default glibc raises its threshold to the size of each mapped block
# freed (up to 32 MB), after which the engine's 4-23 MB buffers and drawn tensors come from
# per-thread heaps that keep freed memory: +55-65 MB peak RSS on the bench's apply (535 vs
# 470 MB; 357 MB with the threshold fixed), BENCH round three.
MMAP_THRESHOLD = 1 << 22
_fixed = False


def return_big_frees() -> None:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD (once per process; nothing elsewhere):
    big blocks then go back to the kernel when freed instead of staying in the heaps."""
    global _fixed
    if _fixed or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    _fixed = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (also stops its dynamic raising)
    except (OSError, AttributeError):
        pass


class _Pooled(bytearray):
    """A buffer made by a pool: only these are taken back (a plain bytearray never is)."""

    pool: BufferPool


class BufferPool:
    """Reusable bytearrays of `size` bytes shared by the threads of one run, at most `keep`
    of them waiting on the free list.

    `take(n)` returns a view of `n` bytes of a free buffer (a new one when none is free);
    `give(view)` puts the view's buffer back on the free list, once, if this pool made it.
    Views of anything else are ignored, so a consumer may give back whatever data it was
    handed; a buffer never given back is freed as usual when its last view goes."""

    def __init__(self, size: int, keep: int = 8):
        self.size = size
        self.keep = keep
        self._lock = threading.Lock()
        self._free: list[_Pooled] = []
        self.made = 0  # buffers allocated: how well recycling worked

    def take(self, n: int) -> memoryview:
        if n > self.size:
            return memoryview(bytearray(n))
        with self._lock:
            buf = self._free.pop() if self._free else None
            if buf is None:
                self.made += 1
        if buf is None:
            buf = _Pooled(self.size)
            buf.pool = self
        return memoryview(buf)[:n]

    def give(self, view: memoryview | bytes | bytearray | None) -> None:
        if not isinstance(view, memoryview):
            return
        obj = view.obj
        if not isinstance(obj, _Pooled) or obj.pool is not self:
            return
        with self._lock:
            if len(self._free) < self.keep and all(b is not obj for b in self._free):
                self._free.append(obj)


def read_span(span: FileSpan, size: int, pool: BufferPool) -> Iterator[memoryview]:
    """The span's bytes in chunks of at most `size`, each read once with positioned reads
    into a buffer of `pool`: the caller gives each chunk back when done with it."""
    for pos in range(0, span.nbytes, size):
        view = pool.take(min(size, span.nbytes - pos))
        pread_into(span.fd, view, span.start + pos, span.path)
        yield view
