"""Writing a `torch.distributed.checkpoint` (DCP) directory, tensor by tensor (`--format dcp`).

`DcpWriter` is a sink with the streaming safetensors writer's interface (`write_part`,
`copy_part`, `end_tensor`, `bytes_written`), so the apply loop feeds either the same way. It
writes what torch's `FileSystemWriter` writes for one process: `__0_0.distcp`, each tensor a
`torch.save` record appended at an offset, then `.metadata`, a pickle of torch's own
`Metadata` (one whole chunk per tensor, `planner_data` and `storage_data` as torch's planner
and writer fill them). `torch.distributed.checkpoint.load` reads it into a state dict of the
same names, and `format_utils.dcp_to_torch_save` converts it. What the run records about
itself (the safetensors metadata's `reinit` value, `run.record`) is `reinit.json` beside them:
plain JSON that torch's reader never opens (it reads `.metadata` and the files it names).

A tensor given a `DcpBox` is written as that chunk of another, larger tensor instead (one
expert's matrix as its box of a module's stacked `[E, ...]` parameter, at its offsets): its
record holds the box's values in the large tensor's axis order, and `.metadata` lists the
large tensor under its own name, its chunks being the tensors written into it, as torch lists
a DTensor's shards. Memory is one tensor (a record is made from the whole tensor; a box whose
axes come in another order is permuted, one copy). The folder is written as is: atomicity is
`reinit.io.publish`'s job."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

from reinit.io.formats._dcp_metadata import DCP_RECORD_NAME, METADATA_NAME
from reinit.io.formats._safetensors_format import dtype_size, torch_dtype
from reinit.io.formats._safetensors_reader import pread_into
from reinit.io.writer import save_to, write_error

__all__ = ["DATA_NAME", "DcpBox", "DcpWriter"]

DATA_NAME = "__0_0.distcp"  # rank 0's file, as torch names it


@dataclass(frozen=True)
class DcpBox:
    """Where one tensor goes in the DCP: the box `offsets` .. `offsets + sizes` of the tensor
    `name`, whose whole shape is `whole`. `perm`: the tensor's dimensions in the order of the
    large tensor's (None: already in that order); its dimensions of length 1 that the box
    lacks, or the box's that it lacks, are dropped or added by a reshape."""

    name: str
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    whole: tuple[int, ...]
    perm: tuple[int, ...] | None = None

    def arrange(self, t: torch.Tensor) -> torch.Tensor:
        """`t` (the tensor as written) as the box's values, in the large tensor's axis order."""
        if self.perm is not None:
            t = t.permute(self.perm).contiguous()
        return t.reshape(self.sizes)


class DcpWriter:
    """Write a DCP directory tensor by tensor, in the order given at construction.

    Args:
        folder: an existing, empty folder (the staged output).
        entries: (name, dtype name, shape) of every tensor, in the order they will come.
        metadata: the safetensors metadata the call would give `SafetensorsWriter`; its
            `reinit` value (the run's record) is written as `reinit.json` (DCP's `.metadata`
            has no free-form field), the rest has no place in a DCP.
        chunks: the tensors written as a chunk of a larger tensor (see `DcpBox`), by name;
            the others are written whole under their own names.
        aliases: more names of a tensor written (a tied name -> the DCP name it is written
            under), listed in `.metadata` with the same records: no bytes twice.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        entries: Sequence[tuple[str, str, Sequence[int]]],
        metadata: Mapping[str, str] | None = None,
        chunks: Mapping[str, DcpBox] | None = None,
        aliases: Mapping[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.entries = [(n, torch_dtype(d, n), tuple(int(x) for x in s)) for n, d, s in entries]
        self.chunks = dict(chunks or {})
        self.aliases = dict(aliases or {})
        self.record = (metadata or {}).get("reinit")
        self._next = 0
        self._buf: bytearray | None = None
        self._filled = 0
        self._file: BinaryIO | None = None
        self._stored: list[tuple[int, int]] = []  # (offset, length) of each tensor's record
        self.bytes_written = 0

    def __enter__(self) -> DcpWriter:
        try:
            self._file = open(self.folder / DATA_NAME, "wb")  # noqa: SIM115 (closed in __exit__)
        except OSError as e:
            raise write_error(str(self.folder), e) from None
        return self

    def _begin(self, name: str) -> bytearray:
        if self._buf is not None:
            return self._buf
        if self._next >= len(self.entries):
            raise ValueError(f"writer: unexpected tensor '{name}', all tensors already written")
        want, dtype, shape = self.entries[self._next]
        if name != want:
            raise ValueError(f"writer: expected tensor '{want}' next, got '{name}'")
        nbytes = dtype_size(dtype)
        for n in shape:
            nbytes *= n
        self._buf, self._filled = bytearray(nbytes), 0
        return self._buf

    def _room(self, name: str, nbytes: int) -> memoryview:
        buf = self._begin(name)
        if self._filled + nbytes > len(buf):
            left = len(buf) - self._filled
            raise ValueError(f"writer: tensor '{name}' got {nbytes} bytes, {left} were left")
        view = memoryview(buf)[self._filled : self._filled + nbytes]
        self._filled += nbytes
        return view

    def write_part(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """The next piece of tensor `name` (its bytes in order, in any number of parts)."""
        src = memoryview(data).cast("B")
        self._room(name, src.nbytes)[:] = src

    def copy_part(self, name: str, src_fd: int, offset: int, nbytes: int) -> None:
        """The next piece of tensor `name`: `nbytes` of `src_fd` at `offset`."""
        pread_into(src_fd, self._room(name, nbytes), offset, f"fd {src_fd}")

    def end_tensor(self, name: str) -> None:
        """Close tensor `name` (every byte given) and append its `torch.save` record."""
        buf = self._begin(name)
        if self._filled != len(buf):
            raise ValueError(f"writer: tensor '{name}' is {len(buf) - self._filled} bytes short")
        _, dtype, shape = self.entries[self._next]
        t = (
            torch.frombuffer(buf, dtype=dtype).reshape(shape)
            if buf
            else torch.empty(shape, dtype=dtype)
        )
        chunk = self.chunks.get(name)
        if chunk is not None:
            t = chunk.arrange(t)
        assert self._file is not None
        start = self._file.tell()
        save_to(self._file, t, str(self.folder))  # whole, a Ctrl-C meanwhile raised after
        self._stored.append((start, self._file.tell() - start))
        self._buf = None
        self._next += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                if self._buf is not None or self._next != len(self.entries):
                    missing = self.entries[self._next][0]
                    raise ValueError(f"writer: tensor '{missing}' was never written")
                self._finish()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _finish(self) -> None:
        assert self._file is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self.bytes_written = self._file.tell()
            with open(self.folder / METADATA_NAME, "wb") as f:
                pickle.dump(self._metadata(), f)
                f.flush()
                os.fsync(f.fileno())
                self.bytes_written += f.tell()
            if self.record is not None:
                self.bytes_written += _write_record(self.folder / DCP_RECORD_NAME, self.record)
        except OSError as e:
            raise write_error(str(self.folder), e) from None

    def _metadata(self) -> object:
        """torch's `Metadata` for the records written: one whole chunk per tensor."""
        from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo
        from torch.distributed.checkpoint.metadata import (
            ChunkStorageMetadata,
            Metadata,
            MetadataIndex,
            StorageMeta,
            TensorProperties,
            TensorStorageMetadata,
        )

        tensors: dict[str, TensorStorageMetadata] = {}
        storage: dict[object, object] = {}
        for (name, dtype, shape), (start, length) in zip(self.entries, self._stored, strict=True):
            part = self.chunks.get(name) or DcpBox(name, (0,) * len(shape), shape, shape)
            offsets = torch.Size(part.offsets)
            chunk = ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(part.sizes))
            entry = tensors.setdefault(
                part.name,
                TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(part.whole), []),
            )
            entry.chunks.append(chunk)
            where = MetadataIndex(part.name, offsets, len(entry.chunks) - 1)
            storage[where] = _StorageInfo(DATA_NAME, start, length)
        for alias, name in self.aliases.items():  # the same records under a tied name
            entry = tensors[name]
            tensors[alias] = TensorStorageMetadata(entry.properties, entry.size, entry.chunks)
            for i, c in enumerate(entry.chunks):
                record = storage[MetadataIndex(name, c.offsets)]
                storage[MetadataIndex(alias, c.offsets, i)] = record
        return Metadata(
            state_dict_metadata=tensors,  # type: ignore[arg-type]
            planner_data={name: (name,) for name in tensors},
            storage_data=storage,
            storage_meta=StorageMeta(),
            version=CURRENT_DCP_VERSION,
        )


def _write_record(path: Path, record: str) -> int:
    """The run's record as `reinit.json` (synced like the rest); its size in bytes."""
    data = record.encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return len(data)
