"""The streaming engine: a Plan's entries in, `Piece`s out (kept bytes as file spans for the
kernel copy, or with READ_ONCE as the very chunks their statistics were computed on; new
values drawn two tensors at a time), with each tensor's report entry computed on the way
(`run.entry`). Reading, drawing and statistics overlap on worker threads; memory stays bounded
by the largest changed tensors.

This is the one place rules become values: `apply` writes the pieces to files, and
`apply_to_*`, `probe` and a recipe's in-memory steps `assemble` them into tensors, so every
scheme (including those that read the tensor's own values or another tensor: `mean_resize`,
`copy(...)`) gives the same values everywhere."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

from reinit.io.buffers import BufferPool, read_span, return_big_frees
from reinit.io.checkpoint import CHUNK_BYTES, Checkpoint, TensorRef
from reinit.io.formats import torch_dtype
from reinit.io.pipeline import prefetch
from reinit.io.signals import result_held
from reinit.planning.edited import EditedCheckpoint, original_of
from reinit.planning.model import ModelView, default_init, reinit_value
from reinit.planning.planner import PlanEntry
from reinit.planning.ties import Ties
from reinit.planning.transplant import (
    EQUAL_TO_SOURCE,
    SourcePool,
    exact_source,
    transplant_value,
)
from reinit.report.kernels import code_of
from reinit.report.stats import Stats, StatsAccumulator, tensor_stats
from reinit.run import ahead
from reinit.run.entry import entry_for, refuse_overflow, with_source_std
from reinit.run.pieces import Piece, narrow_in_place, tensor_pieces, view_bytes
from reinit.schemes import (
    DEFAULT,
    FillContext,
    generate,
    generate_chunked,
    keep_thread_count,
    use_thread_count,
)
from reinit.schemes.parts import apply_part, part_indices

if TYPE_CHECKING:  # its TorchFunctionMode loads torch: imported where a model is used
    from reinit.planning.init_trace import AppliedInit

__all__ = [
    "DRAW_AHEAD",
    "DRAW_THREADS",
    "KERNEL_COPY",
    "READ_AHEAD",
    "READ_ONCE",
    "WRITE_AHEAD",
    "Applier",
    "Piece",  # re-exported from run.pieces, with the two helpers `tools.audit` reads here
    "read_stream",
    "view_bytes",
]


# How kept bytes reach the output. Both read each chunk into a reused buffer (`BufferPool`) for
# its statistics. True: the writer writes that same buffer (every byte read from the page cache
# once). False (default): the buffer goes back at once and the writer copies the span
# kernel-side with copy_file_range (KERNEL_COPY), which reads it again inside the kernel; on
# the dev machine write(2) of the buffer measured no less system time than that copy (a tie
# or worse, docs/bench/log.md "read once"), and the kernel copy holds fewer buffers. Tests compare
# both paths byte for byte.
READ_ONCE = False


KERNEL_COPY = True  # (READ_ONCE False) copy unchanged bytes with copy_file_range


READ_AHEAD = 2  # chunks read ahead of the compute thread


WRITE_AHEAD = 2  # pieces computed ahead of the writer


# re-initialized tensors drawn ahead (drawing or drawn, not yet taken), within DRAW_AHEAD_BYTES.
# More than the two threads: draws end out of order (a 2048x2048 after a 2048x5632), and with
# only two ahead one thread then idled until the writer took the earlier one. 4 vs 2, quiet
# machine, 3 pairs each: `reinit new` of the bench's config 9.7-10.1 vs 10.2-11.8 s; the
# bench's apply a tie (2.86-3.21 vs 2.90 s), peak 365 vs 319 MB (docs/bench/round3.md)
DRAW_AHEAD = 4


DRAW_THREADS = 2  # worker threads drawing them: two tensors at once, one per core


# a second tensor is drawn ahead only while the float32 sizes of the tensors drawn ahead or
# being written stay under this together (one is always drawn): two huge tensors are not held
# at once (on the bench's 27 GB folder, a 141 MB bf16 down_proj being written beside the next
# one drawn whole was 533 MB peak, docs/bench/round3.md)
DRAW_AHEAD_BYTES = 256 << 20


def _draw_bytes(p: PlanEntry) -> int:
    return TensorRef(p.name, p.dtype_name, p.shape).numel * (8 if p.dtype_name == "float64" else 4)


# buffers the pool keeps: the chunks in flight between the reader, the compute thread and the
# writer (READ_AHEAD + WRITE_AHEAD + one held by each of the three threads + one being put)
POOL_KEEP = READ_AHEAD + WRITE_AHEAD + 4


def _made(p: PlanEntry) -> bool:
    """Whether surgery makes the entry's values (--add, --resize), or `reinit new` does: they
    are not in the source's read stream, and are read whole."""
    return p.added or p.fresh or p.resized is not None


def _count(acc: StatsAccumulator, chunk: memoryview, dtype: str) -> None:
    """A chunk's statistics straight from its bytes (no tensor view, no torch) where the
    kernel decodes the dtype (`dtype`: its name); the few it does not (e.g. float8_e4m3fnuz)
    are widened through torch."""
    if acc.widen:
        acc.add(view_bytes(chunk, torch_dtype(dtype)))
    else:
        acc.add_bytes(chunk)


def _n_chunks(nbytes: int) -> int:
    return -(-nbytes // CHUNK_BYTES)


def read_stream(
    ckpt: Checkpoint, names: Sequence[str], pool: BufferPool | None = None
) -> Iterator[tuple[str, memoryview]]:
    """Every chunk of the named tensors, in order: the one sequential read of the source.
    With `pool`, tensors whose bytes lie in a file are read into its reused buffers."""
    for name in names:
        span = ckpt.span(name) if pool is not None else None
        chunks = (
            ckpt.iter_chunks(name, CHUNK_BYTES)
            if span is None or pool is None
            else read_span(span, CHUNK_BYTES, pool)
        )
        for chunk in chunks:
            yield name, chunk


class Applier:
    """Turns planned entries into pieces of output, computing statistics on the way.

    It consumes the source's chunks from `reads` (read ahead by another thread into the reused
    buffers of `pool`): for a kept tensor its chunks give the statistics, then the writer
    copies the same span kernel-side (or, with READ_ONCE, writes the chunk itself and gives
    it back with `release`); for a changed tensor they give the `before` statistics."""

    def __init__(
        self,
        ckpt: Checkpoint,
        seed: int,
        device: str,
        sources: SourcePool | None = None,
        ties: Ties | None = None,
        model: ModelView | None = None,
    ):
        return_big_frees()  # the drawn tensors and chunks go back to the kernel when freed
        self.ckpt = ckpt
        self.seed = seed
        self.device = device
        self.sources = sources  # the from(...) sources (needed when any rule transplants)
        self.model = model  # with --model: module fans and the `default` scheme
        self.fans = model.fans if model is not None else {}
        self.ties = ties or Ties()
        # False: kept bytes come as chunks, never spans (--dtype/--checksums read them here)
        self.spans = True
        # the reused read buffers (READ_ONCE); chunks go back with `release`
        self.pool = BufferPool(CHUNK_BYTES, POOL_KEEP)
        # a changed tied group's new value, kept until its last member is written
        self._tied_values: dict[str, tuple[torch.Tensor, str | None, tuple[str, ...]]] = {}
        # values drawn ahead with their statistics, by name
        self._drawn: dict[str, Future[tuple[torch.Tensor, Stats]]] = {}
        # starts the next draws (set by `stream` while it runs; called on its thread)
        self._top_up: Callable[[], None] = lambda: None
        # what `default` ran, by name (set by the draw, on whichever thread drew it)
        self._applied: dict[str, AppliedInit] = {}
        # the entries whose source statistics come from the stats worker (set by `stream`)
        self._ahead: set[str] = set()
        self._tied_left = {
            root: sum(1 for g in self.ties.groups.values() if g[0] == root)
            for root in self.ties.defining
        }

    def _chunks(
        self, reads: Iterator[tuple[str, memoryview]], p: PlanEntry, nbytes: int | None = None
    ) -> Iterator[memoryview]:
        """`p`'s chunks of the read stream (`nbytes` of them: its source's, when not its own)."""
        size = TensorRef(p.name, p.dtype_name, p.shape).nbytes if nbytes is None else nbytes
        for _ in range(_n_chunks(size)):
            name, chunk = next(reads)
            assert name == p.name, (name, p.name)
            yield chunk

    def release(self, data: memoryview | None) -> None:
        """A chunk's last holder is done with it: its buffer may be read into again."""
        self.pool.give(data)

    def _source_stats(self, reads: Iterator[tuple[str, memoryview]], p: PlanEntry) -> Stats:
        if p.name in self._ahead:
            return self._ahead_stats(p)
        acc = StatsAccumulator(p.dtype_name)
        for chunk in self._chunks(reads, p):
            _count(acc, chunk, p.dtype_name)
            self.release(chunk)
        return acc.result()

    def _copy(
        self,
        ck: Checkpoint,
        name: str,
        dtype: str,  # by name
        chunks: Iterator[memoryview],
        acc: StatsAccumulator,
    ) -> Iterator[Piece]:
        """Pieces that reproduce `name`'s bytes of `ck` exactly: spans for the writer to copy
        kernel-side when the bytes lie in a file, else the chunks themselves."""
        span = ck.span(name) if self._span_copies() else None
        pos = 0
        for chunk in chunks:
            _count(acc, chunk, dtype)
            if span is not None:
                self.release(chunk)  # counted; the writer copies its span kernel-side
                yield Piece(name, span=(span.fd, span.start + pos, chunk.nbytes))
            else:
                yield Piece(name, data=chunk)
            pos += chunk.nbytes

    def _kept_pieces(
        self, p: PlanEntry, reads: Iterator[tuple[str, memoryview]], tie_note: tuple[str, ...]
    ) -> Iterator[Piece]:
        """A tensor no rule changes: its bytes (or its --add/--resize values) and its entry."""
        acc = StatsAccumulator(p.dtype_name)
        if _made(p):  # no source bytes as such: its --add / --resize values
            for piece in tensor_pieces(p.name, self.ckpt.read(p.name)):
                assert piece.data is not None
                _count(acc, piece.data, p.dtype_name)
                yield piece
        elif p.name in self._ahead:  # copied unread; the stats worker sums it
            yield from self._span_pieces(p)
        else:
            yield from self._copy(self.ckpt, p.name, p.dtype_name, self._chunks(reads, p), acc)
        result = self._ahead_stats(p) if p.name in self._ahead else acc.result()
        if _made(p):
            refuse_overflow(p, result, None)
        entry = entry_for(p, result, notes=p.notes + tie_note, fans=self.fans.get(p.name))
        yield Piece(p.name, entry=entry)

    def _span_pieces(self, p: PlanEntry) -> Iterator[Piece]:
        """`p`'s bytes as file spans for the writer's kernel-side copy, in `CHUNK_BYTES` pieces
        (the progress bar's steps), none of them read here."""
        span = self.ckpt.span(p.name)
        assert span is not None
        for pos in range(0, span.nbytes, CHUNK_BYTES):
            yield Piece(
                p.name, span=(span.fd, span.start + pos, min(CHUNK_BYTES, span.nbytes - pos))
            )

    def _plan_ahead(self, entries: Sequence[PlanEntry]) -> set[str]:
        """The entries whose source statistics the stats worker (`run.ahead`) gives: bytes
        that lie in one of its files as they are, copied kernel-side (no --dtype, no hash)."""
        worker = ahead.current()
        if worker is None or not self._span_copies():
            return set()
        out = set()
        for p in entries:
            if _made(p) or self._grown(p):
                continue
            key = self._worker_key(p)
            if key is not None and worker.covers(*key):
                out.add(p.name)
        return out

    def _span_copies(self) -> bool:
        """Whether bytes that lie in a file as they are reach the output as file spans (the
        writer copies them) rather than as the chunks read here."""
        return KERNEL_COPY and self.spans and not READ_ONCE

    def known_bytes(self, entries: Iterable[PlanEntry]) -> dict[str, tuple[int, int]]:
        """The kept entries whose output bytes lie in the source file as they are, `(fd,
        offset)` by name: those the stream copies as file spans (`_kept_pieces`). The writer
        may write them before the stream reaches them (`SafetensorsWriter`'s `known`), which
        pays while torch loads. Not a transplant's byte copies: a run that only copies loads
        no torch, its stream writes from the start, and handing those copies to the writer's
        one prefill thread measured slower (the bench's full transplant, 6 interleaved runs:
        median 2.52 s against 2.35 s; docs/bench/round3.md)."""
        if not self._span_copies():
            return {}
        out = {}
        for p in entries:
            if p.action not in ("kept", "skipped") or _made(p) or self._grown(p):
                continue
            span = self.ckpt.span(p.name)
            if span is not None:
                out[p.name] = (span.fd, span.start)
        return out

    def _worker_key(self, p: PlanEntry) -> tuple[int, int, int, str] | None:
        """How the stats worker names `p`'s source bytes: (descriptor, start, bytes, dtype
        code), or None where they do not lie in a file as they are."""
        span = self.ckpt.span(p.name)
        code = code_of(p.dtype_name)
        return None if span is None or code is None else (span.fd, span.start, span.nbytes, code)

    def _ahead_stats(self, p: PlanEntry) -> Stats:
        """`p`'s source statistics from the stats worker, or summed here where it cannot give
        them (it ended, or the file changed): the same cut, so the same numbers."""
        key = self._worker_key(p)
        assert key is not None
        worker = ahead.current()
        got = worker.stats(*key) if worker is not None else None
        if got is not None:
            return got
        acc = StatsAccumulator(p.dtype_name)
        for chunk in self.ckpt.iter_chunks(p.name, CHUNK_BYTES):
            _count(acc, chunk, p.dtype_name)
        return acc.result()

    def pieces(self, p: PlanEntry, reads: Iterator[tuple[str, memoryview]]) -> Iterator[Piece]:
        if self._grown(p):
            yield from self._grown_pieces(p, reads)
            return
        tie_note = self.ties.note(p.name)
        if p.action in ("kept", "skipped"):
            yield from self._kept_pieces(p, reads, tie_note)
            return
        # an added tensor has no source bytes, so no "before"; a resized one's is its old value's
        before = None if _made(p) else self._source_stats(reads, p)
        if p.resized is not None:
            old = original_of(self.ckpt, p.name)
            before = tensor_stats(old) if old is not None else None
        root = self.ties.root(p.name)
        if root is not None and root in self.ties.defining:
            new, source, notes = self._tied_value(root)
            yield from tensor_pieces(p.name, new)
            entry = entry_for(
                p,
                tensor_stats(new),
                before,
                source,
                p.notes + notes + tie_note,
                self.fans.get(p.name),
                self._applied.get(self.ties.defining[root].name),
            )
            yield Piece(p.name, entry=entry)
            return
        if p.action == "transplant":
            direct = exact_source(self._pool(), p)
            if direct is not None:  # same dtype and shape: a byte copy, streamed
                src, key, label = direct
                acc = StatsAccumulator(p.dtype_name)
                chunks = read_stream(src, [key], self.pool)
                for piece in self._copy(src, key, p.dtype_name, (c for _, c in chunks), acc):
                    yield Piece(p.name, piece.data, piece.span)
                after = acc.result()  # a byte copy: the source's own statistics
                notes = (*p.notes, EQUAL_TO_SOURCE)
                entry = entry_for(p, after, before, label, notes, self.fans.get(p.name))
                yield Piece(p.name, entry=with_source_std(entry, after.std))
                return
        got: tuple[str, ...] = ()
        source = source_std = None
        if p.action == "reinit":
            new, after = self._drawn_value(p)
            refuse_overflow(p, after, before)
        else:
            new, source, got, source_std = transplant_value(
                self._pool(), p, self.ckpt.read(p.name), self.seed
            )
            after = tensor_stats(new)
        yield from tensor_pieces(p.name, new)
        del new
        applied = self._applied.pop(p.name, None)
        entry = entry_for(p, after, before, source, p.notes + got, self.fans.get(p.name), applied)
        yield Piece(p.name, entry=with_source_std(entry, source_std))

    def _grown(self, p: PlanEntry) -> bool:
        """Whether `p` is a tensor whose rows alone grow by `--resize` (its values the resize's
        own, not tied): it streams, its old bytes read from the source as they lie."""
        return (
            p.resize_fills
            and isinstance(self.ckpt, EditedCheckpoint)
            and self.ckpt.grown_rows(p.name) is not None
            and not self._tied(p)
        )

    def _grown_pieces(
        self, p: PlanEntry, reads: Iterator[tuple[str, memoryview]]
    ) -> Iterator[Piece]:
        """A `_grown` tensor: its old bytes copied as they lie (their statistics are its
        `before`), then its new rows (drawn ahead, at their own size); `after` counts both."""
        assert isinstance(self.ckpt, EditedCheckpoint)
        src, key = self.ckpt.source_of(p.name)
        before, after = StatsAccumulator(p.dtype_name), StatsAccumulator(p.dtype_name)

        def counted(chunks: Iterator[memoryview]) -> Iterator[memoryview]:
            for chunk in chunks:
                _count(before, chunk, p.dtype_name)
                yield chunk

        old = self._chunks(reads, p, src.ref(key).nbytes)
        for piece in self._copy(src, key, p.dtype_name, counted(old), after):
            yield Piece(p.name, piece.data, piece.span)
        rows, _ = self._drawn_value(p)
        for piece in tensor_pieces(p.name, rows):
            assert piece.data is not None
            _count(after, piece.data, p.dtype_name)
            yield piece
        del rows
        entry = entry_for(p, after.result(), before.result(), None, p.notes, self.fans.get(p.name))
        yield Piece(p.name, entry=entry)

    def _source_chunks(self, entries: Sequence[PlanEntry]) -> Iterator[tuple[str, memoryview]]:
        """The one sequential read: every entry's source bytes in output order (a `_grown`
        tensor's old bytes under its name; added and other resized tensors have none)."""
        for p in entries:
            if self._grown(p):
                assert isinstance(self.ckpt, EditedCheckpoint)
                ck, key = self.ckpt.source_of(p.name)
            elif _made(p) or p.name in self._ahead:
                continue
            else:
                ck, key = self.ckpt, p.name
            for _, chunk in read_stream(ck, [key], self.pool):
                yield p.name, chunk

    def _draw_on(self, threads: int, p: PlanEntry) -> tuple[torch.Tensor, Stats]:
        """`_draw` in a draw thread, on torch's thread count `threads` (the run's)."""
        use_thread_count(threads)
        return self._draw(p)

    def _draw(self, p: PlanEntry) -> tuple[torch.Tensor, Stats]:
        """A reinit entry's values and their statistics, on a drawing thread."""
        new = self._reinit(p)
        return new, tensor_stats(new)

    def _generate(self, p: PlanEntry, context: FillContext | None) -> torch.Tensor:
        """`generate`'s values; a float16/bfloat16/fp8 target is drawn in float32 (as
        `generate` always does) and cast in that tensor's own storage, so no float32 copy
        stands beside the cast one (see `narrow_in_place`)."""
        assert p.scheme is not None
        if context is None:  # a plain normal draw of a big narrow tensor: in float32 chunks
            chunked = generate_chunked(p.scheme, p.name, p.shape, p.dtype, self.seed, self.device)
            if chunked is not None:
                return chunked
        if p.dtype.is_floating_point and p.dtype.itemsize < 4:
            drawn = generate(
                p.scheme, p.name, p.shape, torch.float32, self.seed, self.device, context=context
            )
            return narrow_in_place(drawn, p.dtype)
        return generate(p.scheme, p.name, p.shape, p.dtype, self.seed, self.device, context=context)

    def _reinit(self, p: PlanEntry) -> torch.Tensor:
        """A reinit entry's values (on the chosen rows/cols only, for `rows=`/`cols=`)."""
        new = self._whole(p)
        part = p.rule.part if p.rule is not None else None
        if part is None or p.resize_fills:
            return new
        idx = part_indices(part, p.shape[part.dim], self.seed, p.name, p.captures)
        return apply_part(self.ckpt.read(p.name), new, idx, part.dim)

    def _whole(self, p: PlanEntry) -> torch.Tensor:
        """A reinit entry's values; with a model, module fans and `default` apply."""
        if p.resize_fills:  # the --resize's own values: new rows only, or the whole tensor
            if self._grown(p):
                assert isinstance(self.ckpt, EditedCheckpoint)
                return self.ckpt.new_rows(p.name)
            return self.ckpt.read(p.name)
        assert p.scheme is not None
        context = self._context(p)
        if self.model is not None and p.scheme.name == DEFAULT:
            return self._default(p)
        if self.model is not None:
            return reinit_value(
                self.model, p.scheme, p.name, p.shape, p.dtype, self.seed, self.device, context
            )
        return self._generate(p, context)

    def _default(self, p: PlanEntry) -> torch.Tensor:
        """`default`'s values. The init runs in float32; a narrower floating target is cast in
        the float32 tensor's own storage (as `_generate` does), so no second buffer of the
        tensor stands beside it (the widest, a 32000x2048 embedding, sets `new`'s peak)."""
        assert self.model is not None
        narrow = p.dtype.is_floating_point and p.dtype.itemsize < 4
        drawn = torch.float32 if narrow else p.dtype
        value, self._applied[p.name] = default_init(self.model, p.name, drawn, self.seed)
        return narrow_in_place(value, p.dtype) if narrow else value

    def _tied_value(self, root: str) -> tuple[torch.Tensor, str | None, tuple[str, ...]]:
        """A changed tied group's one new value: made once from its defining entry (the member
        the rule hit), handed to every member, dropped after the last."""
        value = self._tied_values.get(root)
        if value is None:
            d = self.ties.defining[root]
            if d.action == "reinit":
                new = self._reinit(d)
                value = (new, None, ())
            else:
                value = transplant_value(self._pool(), d, self.ckpt.read(d.name), self.seed)[:3]
            self._tied_values[root] = value
        self._tied_left[root] -= 1
        if self._tied_left[root] <= 0:
            del self._tied_values[root]
        return value

    def stream(self, entries: Sequence[PlanEntry]) -> Generator[Piece, None, None]:
        """All pieces of all entries, in output order.

        Re-initialized values are drawn ahead on `DRAW_THREADS` worker threads (at most
        `DRAW_AHEAD` tensors), each with its statistics: torch draws with an explicit generator
        on one core, so two tensors drawn at once keep both cores busy. Values do not depend
        on this: each tensor has its own generator."""
        self._ahead = self._plan_ahead(entries)
        reads = prefetch(self._source_chunks(entries), READ_AHEAD, "reinit-read")
        pending = deque(p for p in entries if p.action == "reinit" and not self._tied(p))
        # outlives the pool; each draw runs on the count the run began with
        threads = keep_thread_count() if pending else nullcontext(0)
        with (
            threads as count,
            ThreadPoolExecutor(DRAW_THREADS, thread_name_prefix="reinit-draw") as pool,
        ):
            # float32 bytes of the tensors drawn ahead or being written, by name
            ahead: dict[str, int] = {}

            def top_up() -> None:
                while pending and len(self._drawn) < DRAW_AHEAD:
                    size = _draw_bytes(pending[0])
                    if ahead and sum(ahead.values()) + size > DRAW_AHEAD_BYTES:
                        break
                    q = pending.popleft()
                    ahead[q.name] = size
                    self._drawn[q.name] = pool.submit(self._draw_on, count, q)

            self._top_up = top_up
            try:
                for p in entries:
                    top_up()
                    yield from self.pieces(p, reads)
                    ahead.pop(p.name, None)  # written (all but the writer's last pieces)
            finally:
                self._top_up = lambda: None
                reads.close()
                for future in self._drawn.values():
                    future.cancel()
                self._drawn.clear()

    def _pool(self) -> SourcePool:
        """The transplant sources; a plan with `from(...)` entries always comes with them."""
        if self.sources is None:
            raise AssertionError("a transplant entry reached the Applier without its SourcePool")
        return self.sources

    def _tied(self, p: PlanEntry) -> bool:
        root = self.ties.root(p.name)
        return root is not None and root in self.ties.defining

    def _drawn_value(self, p: PlanEntry) -> tuple[torch.Tensor, Stats]:
        future = self._drawn.pop(p.name, None)
        if future is None:
            return self._draw(p)
        self._top_up()  # the next tensors draw while this one is waited for and written
        return result_held(future)  # on the main thread too (the in-memory API, `report`)

    def _context(self, p: PlanEntry) -> FillContext | None:
        """What a scheme that reads beyond its own shape gets (see `Scheme.needs_context`):
        the tensor's values (read again: the stream only kept its statistics) and the other
        tensor it names."""
        assert p.scheme is not None
        scheme = p.scheme.scheme
        if not scheme.needs_context:
            return None
        other_name = scheme.reads(p.name, p.captures, p.scheme.kwargs) if scheme.reads else None
        return FillContext(
            before=self.ckpt.read(p.name) if scheme.needs_before else None,
            other=self.ckpt.read(other_name) if other_name is not None else None,
            other_name=other_name,
        )
