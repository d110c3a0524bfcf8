"""`reinit report` of safetensors files (one file, or a folder of safetensors shards) without
torch: the header gives each tensor's dtype code, shape and byte range; the bytes are read
once with positioned reads into a small ring of reused buffers (one thread reads ahead), and
their statistics are summed by numpy on two worker threads (`report.kernels`), merged in
file order on this thread.

Why it gives the same report as the streaming engine (`run.stream`, which `apply` uses): the
tensors are cut into the same pieces (a tensor of up to `CHUNK_BYTES` whole, a larger one in
`CHUNK_BYTES` pieces from its start), each piece's sums are a pure function of its bytes and
the tensor's pivot, and the parts are merged in the same order; the entries are
`report.entries.kept_entry`, as the engine builds them for a tensor no rule touched.
tests/test_report_no_torch.py compares the JSON of both paths and checks torch stays out."""

from __future__ import annotations

__all__ = ["READ_AHEAD", "WORKERS", "Read", "plan_reads", "raw_entries"]

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from reinit.io.checkpoint import CHUNK_BYTES, FileTensor
from reinit.io.formats import CODE_NAMES, pread_into
from reinit.io.pipeline import prefetch
from reinit.io.signals import result_held
from reinit.report.entries import TensorEntry, kept_entry
from reinit.report.kernels import FLOAT_CODES
from reinit.report.progress import Progress
from reinit.report.stats import Buffers, ChunkSums, Stats, StatsAccumulator
from reinit.run import ahead

READ_AHEAD = 2  # reads queued ahead of the compute
WORKERS = 2  # threads summing pieces (numpy and BLAS release the GIL)
# with a second process (`run.ahead`): where its share of the bytes starts (it sums the second
# half; a smaller share measured no faster although it starts an interpreter first)
WORKER_SHARE = 0.5


@dataclass(frozen=True)
class Read:
    """One positioned read and the tensor pieces it holds: (tensor index, offset in the read,
    bytes, whether it is the tensor's last piece)."""

    path: str
    fd: int
    start: int
    nbytes: int
    parts: tuple[tuple[int, int, int, bool], ...]


def plan_reads(tensors: Sequence[FileTensor], size: int = CHUNK_BYTES) -> list[Read]:
    """The reads that cover `tensors` in order: neighbours of at most `size` bytes together
    share one read (a folder of small tensors costs few syscalls); a tensor over `size`
    bytes is read in `size` pieces from its start, as `Checkpoint.iter_chunks` cuts it."""
    reads: list[Read] = []
    group: list[tuple[int, int, int, bool]] = []
    head: FileTensor | None = None
    used = 0

    def flush() -> None:
        nonlocal group, head, used
        if head is not None:
            reads.append(Read(head.path, head.fd, head.info.start, used, tuple(group)))
        group, head, used = [], None, 0

    for i, t in enumerate(tensors):
        n = t.info.nbytes
        if n > size:
            flush()
            for off in range(0, n, size):
                take = min(size, n - off)
                last = off + take == n
                reads.append(Read(t.path, t.fd, t.info.start + off, take, ((i, 0, take, last),)))
            continue
        joins = (
            head is not None
            and head.fd == t.fd
            and head.info.start + used == t.info.start
            and used + n <= size
        )
        if not joins:
            flush()
            head = t
        group.append((i, used, n, True))
        used += n
    flush()
    return reads


def _result(fut: Future[Job]) -> Job:
    """The job's result, waited for with SIGINT/SIGTERM held (`reinit.io.signals`)."""
    return result_held(fut)


def _read_all(reads: Sequence[Read], ring: list[bytearray]) -> Iterator[tuple[Read, memoryview]]:
    """Each read's bytes, filled into the ring's buffers in turn (the caller bounds how far
    ahead it runs, so a buffer is refilled only after its bytes were summed)."""
    for j, r in enumerate(reads):
        view = memoryview(ring[j % len(ring)])[: r.nbytes]
        pread_into(r.fd, view, r.start, r.path)
        yield r, view


_local = threading.local()


def _buffers(code: str) -> Buffers:
    """This thread's work buffers for `code` (threads never share them)."""
    bufs: dict[str, Buffers] | None = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    if code not in bufs:
        bufs[code] = Buffers(code)
    return bufs[code]


Job = list[tuple[int, list[ChunkSums], bool]]


def raw_entries(
    tensors: Sequence[FileTensor], bar: Progress, source: object = None
) -> list[TensorEntry]:
    """Every tensor's report entry (`kept`, with its statistics), in order.

    With `source` (the path the tensors were opened from) big enough for it (`run.ahead`), a
    second process sums the later part of the bytes while this one sums the first (one thread
    each, so neither waits on the other's GIL); whatever it cannot give is summed here."""
    total = sum(t.info.nbytes for t in tensors)
    with ahead.started(source, lead=total, from_byte=int(total * WORKER_SHARE)) as worker:
        if worker is None:
            return _summed(tensors, bar, WORKERS)
        theirs = {i for i, t in enumerate(tensors) if worker.covers(*_key(t))}
        entries: list[TensorEntry | None] = [None] * len(tensors)
        mine = [i for i in range(len(tensors)) if i not in theirs]
        for i, e in zip(mine, _summed([tensors[i] for i in mine], bar, 1), strict=True):
            entries[i] = e
        missing = []
        for i in sorted(theirs):
            got = worker.stats(*_key(tensors[i]))
            if got is None:
                missing.append(i)
                continue
            entries[i] = _entry(tensors[i], got)
            bar.update(tensors[i].info.nbytes)
    for i, e in zip(missing, _summed([tensors[i] for i in missing], bar, WORKERS), strict=True):
        entries[i] = e
    assert all(e is not None for e in entries)
    return [e for e in entries if e is not None]


def _key(t: FileTensor) -> tuple[int, int, int, str]:
    return t.fd, t.info.start, t.info.nbytes, t.info.code


def _entry(t: FileTensor, stats: Stats) -> TensorEntry:
    i = t.info
    return kept_entry(i.name, i.shape, CODE_NAMES[i.code], i.code in FLOAT_CODES, stats)


def _summed(tensors: Sequence[FileTensor], bar: Progress, workers: int) -> list[TensorEntry]:
    """The entries of `tensors`, summed here on `workers` threads."""
    accs: dict[int, StatsAccumulator] = {}
    entries: list[TensorEntry | None] = [None] * len(tensors)
    reads = plan_reads(tensors)
    biggest = max((r.nbytes for r in reads), default=0)
    ring = [bytearray(biggest) for _ in range(min(len(reads), READ_AHEAD + workers + 2))]

    def job(parts: list[tuple[int, StatsAccumulator, memoryview, bool]]) -> Job:
        out: Job = []
        for i, acc, piece, last in parts:
            values = acc.values_of(piece)
            out.append((i, acc.sums(values, _buffers(acc.code)) if values.shape[0] else [], last))
        return out

    def finish(done: Job, nbytes: int) -> None:
        for i, parts, last in done:
            acc = accs[i]
            acc.merge(parts)
            if last:
                entries[i] = _entry(tensors[i], acc.result())
                del accs[i]
        bar.update(nbytes)

    pending: deque[tuple[Future[Job], int]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="reinit-stats") as pool:
        try:
            for r, view in prefetch(_read_all(reads, ring), READ_AHEAD, "reinit-read"):
                parts = []
                for i, off, n, last in r.parts:  # in file order: each tensor's first values
                    acc = accs.get(i)
                    if acc is None:
                        acc = accs[i] = StatsAccumulator(tensors[i].info.code)
                    piece = view[off : off + n]
                    acc.set_pivot(acc.values_of(piece))
                    parts.append((i, acc, piece, last))
                pending.append((pool.submit(job, parts), r.nbytes))
                while len(pending) > workers:
                    fut, nbytes = pending.popleft()
                    finish(_result(fut), nbytes)
            while pending:
                fut, nbytes = pending.popleft()
                finish(_result(fut), nbytes)
        finally:
            for fut, _ in pending:
                fut.cancel()
    assert all(e is not None for e in entries)
    return [e for e in entries if e is not None]
