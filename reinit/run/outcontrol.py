"""Output control (docs/guide/outputs.md): `--dtype` (cast floating tensors as they are written),
`--max-shard-size` (the Hugging Face sharded layout, split exactly as `save_pretrained` splits)
and `--checksums` (each tensor's sha256 of the bytes as written).

It sits between the Applier's piece stream and the file writers, so a cast is done chunk by
chunk (memory bounded by one chunk, kept tensors included) and a checksum is taken over the
very bytes handed to the writer: nothing is read twice."""

from __future__ import annotations

__all__ = [
    "CAST_DTYPES",
    "OutputControl",
    "cast_note",
    "hf_shard_name",
    "model_order",
    "parse_dtype",
    "parse_size",
    "shared_storage",
    "split_like_save_pretrained",
]

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

import torch

from reinit.errors import UsageError
from reinit.io.checkpoint import TensorRef
from reinit.io.formats import dtype_name, tensor_to_bytes, torch_dtype
from reinit.planning.model import ModelView
from reinit.report.entries import TensorEntry
from reinit.run.pieces import Piece, view_bytes

#: What `--dtype` accepts.
CAST_DTYPES = ("float32", "bfloat16", "float16")  # torch's names: getattr(torch, _)

# huggingface_hub's decimal units (what save_pretrained's "5GB" means) plus the binary ones
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_dtype(value: str | None) -> torch.dtype | None:
    """`--dtype` text -> the torch dtype (None: keep each tensor's own)."""
    if value is None:
        return None
    name = value.strip().lower()
    if name not in CAST_DTYPES:
        raise UsageError(f"--dtype {value}: unknown dtype; use one of {', '.join(CAST_DTYPES)}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def parse_size(value: str | int | None) -> int | None:
    """`--max-shard-size` text -> bytes. `5GB`/`500MB` are decimal (as in transformers),
    `10MiB` binary, a bare number is bytes."""
    if value is None:
        return None
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        unit = m.group(2).upper() if m else ""
        if m is None or unit not in _UNITS:
            raise UsageError(
                f"--max-shard-size {value}: not a size; give e.g. 5GB, 500MB, 10MiB or bytes"
            )
        size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise UsageError(f"--max-shard-size {value}: must be more than 0 bytes")
    return size


def split_like_save_pretrained(
    names: Sequence[str],
    sizes: Sequence[int],
    limit: int,
    storage: Mapping[str, str] | None = None,
) -> list[list[str]]:
    """huggingface_hub's `split_state_dict_into_shards_factory` (what `save_pretrained` uses):
    greedy in order; a tensor that would tip the current shard over `limit` starts a new one;
    a tensor bigger than `limit` gets a shard of its own, placed before the current one.
    `storage` (name -> a key shared by the tensors save_pretrained writes from one storage,
    e.g. a layer's per-expert views of a stacked tensor): such tensors count as one, of their
    sizes' sum, where the first comes, and the others join its shard. Which shard holds a
    tensor is what save_pretrained decides; within a shard the tensors keep their order."""
    units, members = _storage_units(names, sizes, storage or {})
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in units:
        if size > limit:
            shards.append([name])
            continue
        if current_size + size > limit and current:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    shard_of = {m: i for i, shard in enumerate(shards) for name in shard for m in members[name]}
    out: list[list[str]] = [[] for _ in shards]
    for name in names:
        out[shard_of[name]].append(name)
    return out


def _storage_units(
    names: Sequence[str], sizes: Sequence[int], storage: Mapping[str, str]
) -> tuple[list[tuple[str, int]], dict[str, list[str]]]:
    """The split's units in order (a storage's first tensor stands for all of them, with their
    summed size) and each first tensor's whole group (itself first)."""
    first: dict[str, str] = {}
    total: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for name, size in zip(names, sizes, strict=True):
        lead = first.setdefault(storage[name], name) if name in storage else name
        total[lead] = total.get(lead, 0) + size
        members.setdefault(lead, []).append(name)
    return [(n, total[n]) for n in members], members


def model_order(refs: Sequence[TensorRef], view: ModelView) -> list[TensorRef]:
    """The tensors in the order `save_pretrained` walks, which a safetensors file does not
    keep (it stores names sorted): the model's checkpoint order (transformers 5 sorts the names
    when it reverts a conversion, e.g. Mixtral's experts); a name the model does not save (a
    tied copy, a stacked module tensor) right after the saved one before it in the model's
    parameter order. Tensors the model lacks keep their place after those it has."""
    rank = _save_rank(view)
    big = (len(rank) + 1, 0, 0)

    def key(item: tuple[int, TensorRef]) -> tuple[tuple[int, int, int], int]:
        i, r = item
        m = view.names.get(r.name)
        return (rank.get(m, big) if m is not None else big, i)

    return [r for _, r in sorted(enumerate(refs), key=key)]


def _save_rank(view: ModelView) -> dict[str, tuple[int, int, int]]:
    """Each model name's place: (its checkpoint index, 0, 0) when the model saves it, else
    (the index of the saved name before it among the model's sites, 1, its site index)."""
    saved = {t.name: i for i, t in enumerate(view.checkpoint_tensors())}
    rank: dict[str, tuple[int, int, int]] = {}
    last = -1
    for j, name in enumerate(view.model.sites):
        if name in saved:
            last = saved[name]
            rank[name] = (last, 0, 0)
        else:
            rank[name] = (last, 1, j)
    return rank


def shared_storage(view: ModelView, names: Iterable[str]) -> dict[str, str]:
    """The checkpoint names among `names` that `save_pretrained` writes from a storage shared
    with others (a layer's per-expert tensors), each with that storage's key."""
    groups = {t.name: t.storage for t in view.checkpoint_tensors() if t.storage}
    shared = {}
    for name in names:
        m = view.names.get(name)
        if m is not None and m in groups:
            shared[name] = groups[m]
    return shared


def hf_shard_name(index: int, count: int) -> str:
    """transformers' shard file name: `model-00001-of-00003.safetensors` (one shard:
    `model.safetensors`)."""
    if count == 1:
        return "model.safetensors"
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


class OutputControl:
    """Casts and hashes the piece stream on its way to the writer.

    `dtype`: the output dtype of every floating tensor (None: unchanged); `checksums`: add each
    tensor's sha256 to its report entry. Entries get the output dtype, a note per lossy cast
    (with the count of values that overflowed to inf), and `summary()` one line for the run."""

    def __init__(self, dtype: torch.dtype | None, checksums: bool):
        self.dtype = dtype
        self.checksums = checksums
        self.lossy: list[str] = []
        self.overflowed = 0

    @property
    def active(self) -> bool:
        return self.dtype is not None or self.checksums

    def out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype a tensor of `dtype` is written as."""
        if self.dtype is None or not dtype.is_floating_point:
            return dtype
        return self.dtype

    def out_dtype_name(self, name: str) -> str:
        """The dtype, by name, a tensor of dtype `name` is written as (without `--dtype`, its
        own: no torch needed)."""
        if self.dtype is None:
            return name
        return dtype_name(self.out_dtype(torch_dtype(name)))

    def stream(self, pieces: Iterator[Piece], dtypes: Mapping[str, str]) -> Iterator[Piece]:
        """The pieces with data cast and hashed (`dtypes`: each tensor's, by name); spans
        (kernel copies) pass through only when neither applies (the Applier is told to hand
        chunks instead when this is active). Neither: the pieces as they come (no torch)."""
        if not self.active:
            yield from pieces
            return
        hasher = hashlib.sha256() if self.checksums else None
        overflow = 0
        for piece in pieces:
            src = dtypes[piece.name]
            dst = self.out_dtype_name(src)  # a name: a hash alone needs no torch
            if piece.entry is not None:
                entry = piece.entry
                if dst != src:
                    entry = self._cast_entry(entry, src, dst, overflow)
                if hasher is not None:
                    entry = replace(entry, sha256=hasher.hexdigest())
                    hasher = hashlib.sha256()
                overflow = 0
                yield Piece(piece.name, entry=entry)
                continue
            data = piece.data
            if data is None and piece.span is not None and (dst != src or hasher is not None):
                fd, offset, nbytes = piece.span
                data = memoryview(os.pread(fd, nbytes, offset))
            if data is not None and dst != src:
                data, over = _cast_bytes(data, src, dst)
                overflow += over
            if data is not None and hasher is not None:
                hasher.update(data)
            if data is None:
                yield piece
            else:
                yield Piece(piece.name, data=data)

    def _cast_entry(self, entry: TensorEntry, src: str, dst: str, overflow: int) -> TensorEntry:
        """A cast tensor's entry: its output dtype and the note on the cast (`overflow`: its
        values that became inf); a lossy one is counted for `summary`."""
        lossy = _is_lossy(torch_dtype(src), torch_dtype(dst))
        note = cast_note(torch_dtype(src), torch_dtype(dst))
        if overflow and not lossy:  # a widening cast past the range
            note = f"lossy {note}"
        if lossy or overflow:
            self.lossy.append(entry.name)
        if overflow:
            note += f"; {overflow} values overflowed to inf"
            self.overflowed += overflow
        return replace(entry, dtype=dst, notes=(*entry.notes, note))

    def summary(self) -> str | None:
        """One line for the whole run, when any cast lost precision or range."""
        if not self.lossy:
            return None
        assert self.dtype is not None
        line = f"--dtype {dtype_name(self.dtype)}: {len(self.lossy)} tensors cast lossily"
        if self.overflowed:
            line += f", {self.overflowed} values overflowed to inf"
        return line


def _cast_bytes(data: memoryview, src: str, dst: str) -> tuple[memoryview, int]:
    """A chunk of `src` values (by dtype name) as `dst` bytes, and how many overflowed to inf."""
    values = view_bytes(data, torch_dtype(src))
    cast = values.to(torch_dtype(dst))
    over = _overflowed(values, cast) if dst == "float16" else 0
    return tensor_to_bytes(cast), over


def _overflowed(values: torch.Tensor, cast: torch.Tensor) -> int:
    """How many finite `values` became inf in `cast`. torch has no `isfinite` for every fp8
    dtype, so those are widened first (exactly: every fp8 value is a float32 value)."""
    if values.dtype.itemsize == 1:
        values = values.to(torch.float32)
    return int((torch.isinf(cast) & torch.isfinite(values)).sum())


def cast_note(src: torch.dtype, dst: torch.dtype) -> str:
    """The report's note on a tensor written as `dst` from `src` (`--dtype`; `report
    --against` says the same of a tensor that is its baseline's values cast)."""
    lossy = "lossy " if _is_lossy(src, dst) else ""
    return f"{lossy}cast {dtype_name(src)} -> {dtype_name(dst)}"


def _is_lossy(src: torch.dtype, dst: torch.dtype) -> bool:
    """A cast that can change values: to fewer bits, or between the two 16-bit formats."""
    return src.itemsize > dst.itemsize or (src != dst and src.itemsize == dst.itemsize)
