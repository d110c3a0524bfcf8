"""A `torch.distributed.checkpoint` (DCP) directory as a `Checkpoint`.

Names, dtypes and whole shapes come from `.metadata` (read by `dcp_metadata`, no code run).
The model's state is found inside the saved nesting (`{"model": ..., "optimizer": ...,
"step": ...}`) by the one rule torch files follow (`nested_state.find_state`: auto `model`,
`--key K`); other entries (optimizer state, counters) are never read.

Each chunk of a tensor (a DTensor sharded across ranks is one chunk per rank, in the rank's
`__R_0.distcp`) is a `torch.save` record (a zip archive) at an offset of its file. Its small
`data.pkl` is read by `lazy_pickle`'s restricted unpickler, which admits torch's tensor records
only (stricter than `torch.load(weights_only=True)`: anything else is refused, nothing run),
and it must describe the tensor the metadata promises; its data is then read with positioned
reads straight from the file. A tensor split by rows (`Shard(0)`, or a single chunk) is
streamed in `CHUNK_BYTES` pieces (a single chunk is even a `FileSpan` for kernel-side copies),
so memory holds a piece, not the tensor; other splits are assembled a tensor at a time."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from reinit.errors import CheckpointError, ReinitError
from reinit.io.checkpoint import (
    CHUNK_BYTES,
    Checkpoint,
    ConfigDict,
    FileSpan,
    TensorRef,
    read_config_file,
    tensor_from_bytes,
)
from reinit.io.confine import local_file
from reinit.io.formats._dcp_metadata import DCP_RECORD_NAME, DcpChunk, DcpTensor, read_metadata
from reinit.io.formats._lazy_pickle import LazyFile, LazyTensor, open_lazy
from reinit.io.formats._nested_state import beside_state, find_state
from reinit.io.formats._safetensors_format import dtype_size, tensor_to_bytes
from reinit.io.jsonfile import read_text_file
from reinit.io.memory import check_tensor_names
from reinit.limits import MAX_CONFIG_BYTES

__all__ = ["DcpCheckpoint"]


def _state_of(
    tensors: Mapping[str, DcpTensor],
    nesting: Mapping[str, tuple[object, ...]],
    where: str,
    key: str,
    flag: str,
) -> tuple[dict[str, DcpTensor], tuple[str, ...]]:
    """The model's tensors under their names in the state dict the checkpoint nests (found
    as in a nested torch file), built over shape-only stand-ins (meta tensors), and what the
    checkpoint holds besides them (`beside_state`)."""
    root: dict[object, object] = {}
    whose: dict[int, DcpTensor] = {}
    for fqn, path in nesting.items():
        node: dict[object, object] = root
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise _clash(where, fqn, path)
            node = nxt
        if path[-1] in node:
            raise _clash(where, fqn, path)
        t = tensors.get(fqn)
        # a non-tensor entry (a counter, a config) is stored as pickled bytes, never read
        stand_in = torch.empty(t.shape, dtype=t.dtype, device="meta") if t else b""
        node[path[-1]] = stand_in
        if t is not None:
            whose[id(stand_in)] = t
    state = find_state(root, where, key, flag)
    found = {k: whose[id(v)] for k, v in state.items() if isinstance(v, torch.Tensor)}
    check_tensor_names(found, where)
    return found, beside_state(root, state)  # type: ignore[return-value]


def _clash(where: str, fqn: str, path: tuple[object, ...]) -> CheckpointError:
    at = ".".join(map(str, path))
    return CheckpointError(
        f"{where}: '{fqn}' nests at {at}, where another entry of the metadata already is (or "
        "lies below it); one of them would be lost: the metadata is corrupt"
    )


class DcpCheckpoint(Checkpoint):
    """A DCP directory (`.metadata` + `*.distcp`), read through its metadata."""

    kind = "dcp"

    def __init__(
        self,
        folder: str | os.PathLike[str],
        source: str | None = None,
        key: str = "",
        flag: str = "--key",
    ):
        self.folder = Path(folder)
        self.source = source if source is not None else os.fspath(folder)
        tensors, nesting = read_metadata(self.folder)
        self.tensors, self._beside = _state_of(tensors, nesting, self.source, key, flag)
        self._fds: dict[str, int] = {}

    def names(self) -> list[str]:
        return list(self.tensors)

    def beside_state(self) -> tuple[str, ...]:
        return self._beside

    def aliases(self) -> dict[str, str]:
        """Tied tensors: a name listed with the very records of an earlier one (same dtype,
        shape and chunks: `--format dcp` lists a tied `lm_head.weight` so) -> that name."""
        first: dict[tuple[object, ...], str] = {}
        out: dict[str, str] = {}
        for name, t in self.tensors.items():
            out_of = first.setdefault((t.dtype, t.shape, t.chunks), name)
            if out_of != name:
                out[name] = out_of
        return out

    def _get(self, name: str) -> DcpTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: has no tensor '{name}'") from None

    def ref(self, name: str) -> TensorRef:
        t = self._get(name)
        return TensorRef.of(name, t.dtype, t.shape)

    def _fd(self, file: str) -> int:
        if file not in self._fds:
            path = local_file(self.folder, file, self.source, "stores a tensor in")  # no FIFO
            try:
                self._fds[file] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        return self._fds[file]

    def _record(self, t: DcpTensor, c: DcpChunk) -> tuple[LazyFile, LazyTensor]:
        """The chunk's record, checked against what the metadata says it holds."""
        where = str(self.folder / c.file)
        rec = open_lazy(self._fd(c.file), c.start, c.length, where)
        got = rec.obj
        if not isinstance(got, LazyTensor) or got.dtype != t.dtype or got.shape != c.sizes:
            what = (
                f"a {got.dtype} tensor of shape {list(got.shape)}"
                if isinstance(got, LazyTensor)
                else f"a {type(got).__name__}"
            )
            raise CheckpointError(
                f"{where}: the chunk of '{t.fqn}' at byte {c.start} holds {what}; the metadata "
                f"says {t.dtype} {list(c.sizes)}: the checkpoint is corrupt"
            )
        return rec, got

    def _rows(self, t: DcpTensor) -> list[DcpChunk] | None:
        """The chunks in order when they split `t` by rows only (each chunk's bytes are then
        one run of the whole tensor's bytes); else None."""
        if not t.shape:
            return list(t.chunks)
        chunks = sorted(t.chunks, key=lambda c: c.offsets[0])
        row = 0
        for c in chunks:
            if c.offsets[1:] != (0,) * (len(t.shape) - 1) or c.sizes[1:] != t.shape[1:]:
                return None
            if c.offsets[0] != row:
                return None
            row += c.sizes[0]
        return chunks

    def iter_chunks(self, name: str, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        """Pieces of exactly `size` bytes (the last one shorter), cut across chunk records:
        the engine counts a tensor's pieces from its size."""
        t = self._get(name)
        chunks = self._rows(t)
        if chunks is None:
            yield from super().iter_chunks(name, size)
            return
        item = dtype_size(t.dtype)
        size = max(item, size - size % item)
        left = self.ref(name).nbytes
        out, filled = memoryview(bytearray(0)), 0
        for c in chunks:
            rec, lt = self._record(t, c)
            pos = 0
            while pos < lt.numel:
                if filled == out.nbytes:
                    out, filled = memoryview(bytearray(min(size, left))), 0
                take = min(lt.numel - pos, (out.nbytes - filled) // item)
                rec.read_into(lt, pos, out[filled : filled + take * item])
                pos, filled, left = pos + take, filled + take * item, left - take * item
                if filled == out.nbytes:
                    yield out

    def span(self, name: str) -> FileSpan | None:
        t = self._get(name)
        if len(t.chunks) != 1 or t.chunks[0].sizes != t.shape:
            return None
        c = t.chunks[0]
        rec, lt = self._record(t, c)
        nbytes = self.ref(name).nbytes
        return FileSpan(str(self.folder / c.file), rec.fd, rec.byte_offset(lt), nbytes)

    def read(self, name: str) -> torch.Tensor:
        t = self._get(name)
        out = torch.empty(t.shape, dtype=t.dtype)
        for c in t.chunks:
            rec, lt = self._record(t, c)
            part = tensor_from_bytes(rec.read_flat(lt, 0, lt.numel), t.dtype, c.sizes)
            view = out
            for dim, (o, s) in enumerate(zip(c.offsets, c.sizes, strict=True)):
                view = view.narrow(dim, o, s)
            view.copy_(part)
        return out

    def read_bytes(self, name: str) -> bytearray | memoryview:
        if self._rows(self._get(name)) is None:
            return tensor_to_bytes(self.read(name))
        out = bytearray(self.ref(name).nbytes)
        at = 0
        for piece in self.iter_chunks(name):
            out[at : at + piece.nbytes] = piece
            at += piece.nbytes
        return out

    def metadata(self, shard: str = "") -> dict[str, str]:
        """What reinit recorded about the run that wrote this DCP (`reinit.json`, the
        safetensors metadata's `reinit` value) under `reinit`; {} when there is none or it
        cannot be read (a file of another kind, too large, outside the folder)."""
        if not (self.folder / DCP_RECORD_NAME).exists():
            return {}
        try:
            path = local_file(self.folder, DCP_RECORD_NAME, self.source, "records its run in")
            return {"reinit": read_text_file(path, f"record {path}", MAX_CONFIG_BYTES)}
        except ReinitError:
            return {}

    def config(self) -> ConfigDict | None:
        candidate = self.folder / "config.json"
        return read_config_file(candidate) if candidate.is_file() else None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
