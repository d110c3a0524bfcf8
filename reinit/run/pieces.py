"""The output stream's unit (`Piece`) and the way it is consumed besides the file writers:
`assemble` (into tensors: the `.bin/.pt` output and the in-memory API).
Kept apart from `stream` (which produces pieces) so both sides read the same definitions."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from reinit.io.checkpoint import CHUNK_BYTES, tensor_from_bytes
from reinit.io.formats import tensor_to_bytes
from reinit.planning.planner import PlanEntry
from reinit.planning.ties import Ties
from reinit.report.entries import TensorEntry

__all__ = [
    "CAST_CHUNK",
    "Piece",
    "assemble",
    "narrow_in_place",
    "tensor_pieces",
    "view_bytes",
]


@dataclass(frozen=True)
class Piece:
    """One step of the output stream: some bytes of a tensor, a span of a file to copy
    kernel-side, or (with `entry`) the end of the tensor and its report entry."""

    name: str
    data: memoryview | None = None
    span: tuple[int, int, int] | None = None  # (fd, offset, nbytes)
    entry: TensorEntry | None = None

    @property
    def nbytes(self) -> int:
        if self.data is not None:
            return self.data.nbytes
        return self.span[2] if self.span is not None else 0


def view_bytes(raw: bytes | bytearray | memoryview, dtype: torch.dtype) -> torch.Tensor:
    """A tensor over raw bytes without copying (the statistics read chunks in place)."""
    if memoryview(raw).nbytes == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(raw, dtype=dtype)


CAST_CHUNK = 1 << 20  # elements cast at a time by narrow_in_place


def narrow_in_place(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t.to(dtype)` for a float32 `t` and a smaller floating `dtype`, written into `t`'s own
    storage chunk by chunk: the same values, with at most one chunk beside `t` instead of a
    second tensor of half its size. The result views the front of `t`'s storage (which is
    freed with the result). Each chunk is cast into a temporary before it is stored, and its
    destination bytes lie over float32 values already read, so nothing is overwritten early."""
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        return t.to(device="cpu", dtype=dtype)
    n = t.numel()
    src = t.reshape(-1)
    dst = src.view(torch.uint8)[: n * dtype.itemsize].view(dtype)
    for i in range(0, n, CAST_CHUNK):
        dst[i : i + CAST_CHUNK] = src[i : i + CAST_CHUNK].to(dtype)
    return dst.view(t.shape)


def tensor_pieces(name: str, t: torch.Tensor) -> Iterator[Piece]:
    """A whole tensor's bytes as pieces of at most `CHUNK_BYTES`."""
    data = tensor_to_bytes(t)
    for i in range(0, data.nbytes, CHUNK_BYTES):
        yield Piece(name, data=data[i : i + CHUNK_BYTES])


def assemble(
    pieces: Iterator[Piece],
    by_name: Mapping[str, PlanEntry],
    ties: Ties | None = None,
    own: Mapping[str, torch.Tensor] | None = None,
    on_piece: Callable[[int], object] | None = None,
) -> tuple[dict[str, torch.Tensor], list[TensorEntry]]:
    """Every tensor of the output stream as a CPU tensor, with the report entries, in stream
    order: what the `.bin/.pt` writer saves (`torch.save` needs them all at once) and what the
    in-memory API returns. Tied names stay one tensor object. With `own` (an in-memory
    source's tensors), unchanged tensors are its own objects, not copies. `on_piece` gets
    each piece's byte count (a progress bar)."""
    ties = ties or Ties()
    shared: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    entries: list[TensorEntry] = []
    buf = bytearray()
    for piece in pieces:
        if on_piece is not None:
            on_piece(piece.nbytes)
        p = by_name[piece.name]
        reuse = own is not None and not p.changes and p.name in own
        if piece.entry is not None:
            if own is not None and reuse:
                out[p.name] = own[p.name]
            else:
                value = tensor_from_bytes(buf, p.dtype, p.shape)
                root = ties.root(p.name)
                out[p.name] = shared.setdefault(root, value) if root else value
            entries.append(piece.entry)
            buf = bytearray()
        elif reuse:
            continue
        elif piece.span is not None:
            fd, offset, nbytes = piece.span
            buf += os.pread(fd, nbytes, offset)
        elif piece.data is not None:
            buf += piece.data
    return out, entries
