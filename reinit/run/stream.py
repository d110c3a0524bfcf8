"""The streaming engine: a Plan's entries in, `Piece`s out (kept bytes as file spans for the
kernel copy, new values drawn one tensor at a time), with each tensor's report entry computed on
the way. Reading, drawing and statistics overlap on worker threads; memory stays bounded by the
largest changed tensor.

This is the one place rules become values: `apply` writes the pieces to files, and
`apply_to_*`, `probe` and a recipe's in-memory steps `assemble` them into tensors, so every
scheme (including those that read the tensor's own values or another tensor: `mean_resize`,
`copy(...)`) gives the same values everywhere."""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from reinit.io.checkpoint import CHUNK_BYTES, Checkpoint, TensorRef
from reinit.io.pipeline import prefetch
from reinit.io.safetensors_format import dtype_name
from reinit.planning.edited import original_of
from reinit.planning.init_trace import AppliedInit
from reinit.planning.model import ModelView, default_init, reinit_value
from reinit.planning.planner import PlanEntry
from reinit.planning.ties import Ties
from reinit.planning.transplant import (
    SourcePool,
    exact_source,
    transform_label,
    transplant_value,
)
from reinit.report.entries import TensorEntry, var_gain
from reinit.report.stats import Stats, StatsAccumulator, tensor_stats
from reinit.run.pieces import Piece, progress_bar, tensor_pieces, view_bytes
from reinit.schemes import (
    DEFAULT,
    FillContext,
    compute_fans,
    expected_std_for,
    generate,
)

__all__ = [
    "DRAW_AHEAD",
    "KERNEL_COPY",
    "READ_AHEAD",
    "WRITE_AHEAD",
    "Applier",
    "Piece",  # re-exported from run.pieces, with the two helpers `tools.audit` reads here
    "progress_bar",
    "read_stream",
    "view_bytes",
]


def _entry(
    p: PlanEntry,
    after: Stats,
    before: Stats | None = None,
    source: str | None = None,
    notes: tuple[str, ...] = (),
    fans: tuple[int, int] | None = None,
    applied: AppliedInit | None = None,
) -> TensorEntry:
    """`fans`: the owning module's own fans when a model is given (else torch's, from the shape).
    `applied`: what the `default` scheme ran on this tensor; its expected std is that init's and
    the scheme reads `default (BertModel._init_weights on Linear: normal(std=0.02))`."""
    fans = fans or compute_fans(p.shape)
    fan_in, fan_out = fans if fans else (None, None)
    bound = p.scheme
    # a grown tensor's std mixes its kept and its new entries: no one scheme's std to expect
    scored = bound if not p.resize_fills else None
    expected = expected_std_for(scored, p.shape, fans) if scored is not None else None
    scheme = bound.describe() if bound is not None else None
    if applied is not None and bound is not None and bound.name == DEFAULT:
        expected = applied.expected_std
        scheme = f"{scheme} ({applied.description})"
    return TensorEntry(
        name=p.name,
        shape=p.shape,
        dtype=dtype_name(p.dtype),
        action=p.action,
        after=after,
        rule=p.rule_text or None,
        scheme=scheme,
        source=source,
        reason=p.reason,
        fan_in=fan_in,
        fan_out=fan_out,
        before=before,
        expected_std=expected,
        var_gain=var_gain(fan_in, after.std) if p.dtype.is_floating_point else None,
        notes=notes,
        transform=transform_label(p),
        kurtosis=scored.scheme.kurtosis if scored is not None else 3.0,
    )


KERNEL_COPY = True  # copy unchanged bytes with copy_file_range; tests compare both paths


READ_AHEAD = 2  # chunks read ahead of the compute thread


WRITE_AHEAD = 2  # pieces computed ahead of the writer


DRAW_AHEAD = 1  # re-initialized tensors drawn ahead on a worker thread


def _made(p: PlanEntry) -> bool:
    """Whether surgery makes the entry's values (--add, --resize): they are not in the source's
    read stream, and are read whole."""
    return p.added or p.resized is not None


def _n_chunks(nbytes: int) -> int:
    return -(-nbytes // CHUNK_BYTES)


def read_stream(ckpt: Checkpoint, names: Sequence[str]) -> Iterator[tuple[str, memoryview]]:
    """Every chunk of the named tensors, in order: the one sequential read of the source."""
    for name in names:
        for chunk in ckpt.iter_chunks(name, CHUNK_BYTES):
            yield name, chunk


class Applier:
    """Turns planned entries into pieces of output, computing statistics on the way.

    It consumes the source's chunks from `reads` (read ahead by another thread), so each
    source byte is read once: for a kept tensor its chunks give the statistics and the writer
    copies the same span kernel-side; for a changed tensor they give the `before` statistics."""

    def __init__(
        self,
        ckpt: Checkpoint,
        seed: int,
        device: str,
        sources: SourcePool | None = None,
        ties: Ties | None = None,
        model: ModelView | None = None,
    ):
        self.ckpt = ckpt
        self.seed = seed
        self.device = device
        self.sources = sources  # the from(...) sources (needed when any rule transplants)
        self.model = model  # with --model: module fans and the `default` scheme
        self.fans = model.fans if model is not None else {}
        self.ties = ties or Ties()
        # False: kept bytes come as chunks, never spans (--dtype/--checksums read them here)
        self.spans = True
        # a changed tied group's new value, kept until its last member is written
        self._tied_values: dict[str, tuple[torch.Tensor, str | None, tuple[str, ...]]] = {}
        self._drawn: dict[str, Future[torch.Tensor]] = {}  # values drawn ahead, by name
        # what `default` ran, by name (set by the draw, on whichever thread drew it)
        self._applied: dict[str, AppliedInit] = {}
        self._tied_left = {
            root: sum(1 for g in self.ties.groups.values() if g[0] == root)
            for root in self.ties.defining
        }

    def _chunks(
        self, reads: Iterator[tuple[str, memoryview]], p: PlanEntry
    ) -> Iterator[memoryview]:
        for _ in range(_n_chunks(TensorRef(p.name, p.dtype, p.shape).nbytes)):
            name, chunk = next(reads)
            assert name == p.name, (name, p.name)
            yield chunk

    def _source_stats(self, reads: Iterator[tuple[str, memoryview]], p: PlanEntry) -> Stats:
        acc = StatsAccumulator(p.dtype)
        for chunk in self._chunks(reads, p):
            acc.add(view_bytes(chunk, p.dtype))
        return acc.result()

    def _copy(
        self,
        ck: Checkpoint,
        name: str,
        dtype: torch.dtype,
        chunks: Iterator[memoryview],
        acc: StatsAccumulator,
    ) -> Iterator[Piece]:
        """Pieces that reproduce `name`'s bytes of `ck` exactly: spans for the writer to copy
        kernel-side when the bytes lie in a file, else the chunks themselves."""
        span = ck.span(name) if KERNEL_COPY and self.spans else None
        pos = 0
        for chunk in chunks:
            acc.add(view_bytes(chunk, dtype))
            if span is not None:
                yield Piece(name, span=(span.fd, span.start + pos, chunk.nbytes))
            else:
                yield Piece(name, data=chunk)
            pos += chunk.nbytes

    def pieces(self, p: PlanEntry, reads: Iterator[tuple[str, memoryview]]) -> Iterator[Piece]:
        tie_note = self.ties.note(p.name)
        if p.action in ("kept", "skipped"):
            acc = StatsAccumulator(p.dtype)
            if _made(p):  # no source bytes as such: its --add / --resize values
                for piece in tensor_pieces(p.name, self.ckpt.read(p.name)):
                    assert piece.data is not None
                    acc.add(view_bytes(piece.data, p.dtype))
                    yield piece
            else:
                for piece in self._copy(self.ckpt, p.name, p.dtype, self._chunks(reads, p), acc):
                    yield piece
            entry = _entry(p, acc.result(), notes=p.notes + tie_note, fans=self.fans.get(p.name))
            yield Piece(p.name, entry=entry)
            return
        # an added tensor has no source bytes, so no "before"; a resized one's is its old value's
        before = None if p.added else self._source_stats(reads, p) if not _made(p) else None
        if p.resized is not None:
            old = original_of(self.ckpt, p.name)
            before = tensor_stats(old) if old is not None else None
        root = self.ties.root(p.name)
        if root is not None and root in self.ties.defining:
            new, source, notes = self._tied_value(root)
            yield from tensor_pieces(p.name, new)
            entry = _entry(
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
                acc = StatsAccumulator(p.dtype)
                for piece in self._copy(src, key, p.dtype, src.iter_chunks(key, CHUNK_BYTES), acc):
                    yield Piece(p.name, piece.data, piece.span)
                entry = _entry(p, acc.result(), before, label, p.notes, self.fans.get(p.name))
                yield Piece(p.name, entry=entry)
                return
        got: tuple[str, ...] = ()
        source = None
        if p.action == "reinit":
            new = self._drawn_value(p)
        else:
            new, source, got = transplant_value(self._pool(), p, self.ckpt.read(p.name), self.seed)
        after = tensor_stats(new)
        yield from tensor_pieces(p.name, new)
        applied = self._applied.pop(p.name, None)
        entry = _entry(p, after, before, source, p.notes + got, self.fans.get(p.name), applied)
        yield Piece(p.name, entry=entry)

    def _reinit(self, p: PlanEntry) -> torch.Tensor:
        """A reinit entry's values; with a model, module fans and `default` apply."""
        if p.resize_fills:  # the --resize's own values (kept block and new entries)
            return self.ckpt.read(p.name)
        assert p.scheme is not None
        context = self._context(p)
        if self.model is not None and p.scheme.name == DEFAULT:
            value, self._applied[p.name] = default_init(self.model, p.name, p.dtype, self.seed)
            return value
        if self.model is not None:
            return reinit_value(
                self.model, p.scheme, p.name, p.shape, p.dtype, self.seed, self.device, context
            )
        return generate(p.scheme, p.name, p.shape, p.dtype, self.seed, self.device, context=context)

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
                value = transplant_value(self._pool(), d, self.ckpt.read(d.name), self.seed)
            self._tied_values[root] = value
        self._tied_left[root] -= 1
        if self._tied_left[root] <= 0:
            del self._tied_values[root]
        return value

    def stream(self, entries: Sequence[PlanEntry]) -> Generator[Piece, None, None]:
        """All pieces of all entries, in output order.

        Re-initialized values are drawn ahead on a worker thread (at most `DRAW_AHEAD`
        tensors): torch draws with an explicit generator on one core, so drawing the next
        tensor while this thread computes statistics keeps the second core busy. Values do
        not depend on this: each tensor has its own generator."""
        reads = prefetch(
            read_stream(self.ckpt, [p.name for p in entries if not _made(p)]),
            READ_AHEAD,
            "reinit-read",
        )
        pending = deque(p for p in entries if p.action == "reinit" and not self._tied(p))
        with ThreadPoolExecutor(1, thread_name_prefix="reinit-draw") as pool:

            def top_up() -> None:
                while pending and len(self._drawn) < DRAW_AHEAD:
                    q = pending.popleft()
                    self._drawn[q.name] = pool.submit(self._reinit, q)

            try:
                for p in entries:
                    top_up()
                    yield from self.pieces(p, reads)
            finally:
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

    def _drawn_value(self, p: PlanEntry) -> torch.Tensor:
        future = self._drawn.pop(p.name, None)
        return future.result() if future is not None else self._reinit(p)

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
