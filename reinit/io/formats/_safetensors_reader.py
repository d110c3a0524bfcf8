"""One safetensors file as a `Checkpoint`: the header validated once (`safetensors_format`),
tensors read with positioned reads (no whole-file mapping, so RSS stays at one tensor). Opening
one imports no torch (`reinit report` reads `file_tensors` without it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from reinit.errors import CheckpointError
from reinit.io.checkpoint import (
    CHUNK_BYTES,
    Checkpoint,
    ConfigDict,
    FileSpan,
    FileTensor,
    TensorRef,
    beside_config,
    tensor_from_bytes,
)
from reinit.io.formats._safetensors_header import CODE_NAMES, TensorInfo, read_header

if TYPE_CHECKING:
    import torch

__all__ = ["SAFETENSORS_SUFFIXES", "SafetensorsFile", "pread_into"]

SAFETENSORS_SUFFIXES = (".safetensors",)


def pread_into(fd: int, buf: bytearray | memoryview, offset: int, where: str) -> None:
    """Fill `buf` from `fd` at `offset`; a short file is a `CheckpointError` naming `where`."""
    view = memoryview(buf)
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as e:
            raise CheckpointError(f"{where}: cannot read ({e.strerror})") from None
        if n == 0:
            raise CheckpointError(f"{where}: unexpected end of file; the file is truncated")
        done += n


class SafetensorsFile(Checkpoint):
    """One safetensors file, read with positioned reads (no whole-file mapping)."""

    kind = "safetensors"

    def __init__(self, path: str | os.PathLike[str], shard: str = "", source: str | None = None):
        self.path = os.fspath(path)
        self.source = source if source is not None else self.path
        self.shard = shard
        self.header = read_header(self.path)
        self._infos: dict[str, TensorInfo] = {t.name: t for t in self.header.tensors}
        self.fd = os.open(self.path, os.O_RDONLY)

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: has no tensor '{name}'") from None

    def ref(self, name: str) -> TensorRef:
        t = self.info(name)
        return TensorRef(t.name, CODE_NAMES[t.code], t.shape, self.shard)

    def read_bytes(self, name: str) -> bytearray:
        t = self.info(name)
        buf = bytearray(t.nbytes)
        pread_into(self.fd, buf, t.start, self.path)
        return buf

    def read(self, name: str) -> torch.Tensor:
        t = self.info(name)
        return tensor_from_bytes(self.read_bytes(name), t.dtype, t.shape)

    def span(self, name: str) -> FileSpan:
        t = self.info(name)
        return FileSpan(self.path, self.fd, t.start, t.nbytes)

    def iter_chunks(self, name: str, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        t = self.info(name)
        for off in range(t.start, t.end, size):
            buf = bytearray(min(size, t.end - off))
            pread_into(self.fd, buf, off, self.path)
            yield memoryview(buf)

    def file_tensors(self) -> list[FileTensor]:
        return [FileTensor(t, self.path, self.fd, self.shard) for t in self.header.tensors]

    def shards(self) -> list[str]:
        return [self.shard]

    def metadata(self, shard: str = "") -> dict[str, str]:
        return dict(self.header.metadata)

    def config(self) -> ConfigDict | None:
        return beside_config(self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
