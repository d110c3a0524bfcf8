"""The reader interface every checkpoint offers (`Checkpoint`), what it hands out without data
(`TensorRef`) and where exact bytes lie for kernel-side copies (`FileSpan`).

Every reader is lazy: names, dtypes and shapes come from headers and indexes; tensor bytes are
read one tensor at a time, on demand, so memory stays at about one tensor. The readers
themselves live beside this module: `safetensors_reader`, `torch_reader`, `memory` (a state
dict in memory), `directory` (a Hugging Face folder, local or on the Hub); `sources` opens any
of them from what the user typed."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reinit.io.formats import TensorInfo
from reinit.io.jsonfile import JsonError, parse_json, read_text_file
from reinit.limits import MAX_CONFIG_BYTES

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHUNK_BYTES",
    "TORCH_SUFFIXES",
    "Checkpoint",
    "ConfigDict",
    "FileSpan",
    "FileTensor",
    "TensorRef",
    "beside_config",
    "iter_chunks",
    "read_config_file",
    "tensor_from_bytes",
]

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # the files `torch_reader` opens

CHUNK_BYTES = 8 << 20  # streaming unit: big enough for full-speed I/O, small against RSS

# A config.json as parsed: JSON values of any shape, which only the schemes that need one read.
ConfigDict = dict[str, Any]


@dataclass(frozen=True)
class TensorRef:
    """A tensor's identity without its data: enough to plan and to lay out the output. Its
    dtype is held by name (torch's spelling, "bfloat16": what a safetensors header gives
    without torch); `dtype` is the torch dtype, for the paths that compute."""

    name: str
    dtype_name: str
    shape: tuple[int, ...]
    shard: str = ""  # the file within a directory checkpoint that holds it ("" for one file)

    @classmethod
    def of(
        cls, name: str, dtype: torch.dtype, shape: tuple[int, ...], shard: str = ""
    ) -> TensorRef:
        """The ref of a tensor whose torch dtype is at hand (a torch file, a state dict)."""
        from reinit.io.formats import dtype_name

        return cls(name, dtype_name(dtype), shape, shard)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (loads torch: a plain copy never asks)."""
        from reinit.io.formats import torch_dtype

        return torch_dtype(self.dtype_name, self.name)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        from reinit.io.formats import name_size

        return self.numel * name_size(self.dtype_name)


@dataclass(frozen=True)
class FileSpan:
    """Where a tensor's exact bytes lie in a file, for kernel-side copies."""

    path: str
    fd: int
    start: int
    nbytes: int


@dataclass(frozen=True)
class FileTensor:
    """A tensor as a safetensors file stores it: its header entry (dtype code, shape, byte
    range) and the open file. What `reinit report` reads without torch."""

    info: TensorInfo
    path: str
    fd: int
    shard: str = ""  # the file within a directory checkpoint ("" for one file), as TensorRef's


class Checkpoint:
    """The interface every reader offers. Subclasses implement the abstract parts."""

    source: str = ""  # as the user named it, for messages and the report
    kind: str = ""  # "safetensors" | "torch" | "directory" | "memory"

    def names(self) -> list[str]:
        """Tensor names in storage order; cheap (no shard is opened for a sharded index)."""
        raise NotImplementedError

    def ref(self, name: str) -> TensorRef:
        raise NotImplementedError

    def refs(self) -> list[TensorRef]:
        return [self.ref(n) for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._name_set()

    def _name_set(self) -> set[str]:
        cached: set[str] | None = getattr(self, "_names_cache", None)
        if cached is None:
            cached = set(self.names())
            self._names_cache = cached
        return cached

    def read(self, name: str) -> torch.Tensor:
        """The tensor as an independent CPU tensor (safe to modify)."""
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | bytearray | memoryview:
        """The tensor's bytes, C-contiguous little-endian: what a safetensors file stores."""
        raise NotImplementedError

    def span(self, name: str) -> FileSpan | None:
        """Where the bytes lie in a file, when they lie there exactly; else None."""
        return None

    def iter_chunks(self, name: str, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        """The tensor's bytes in pieces of at most `size` bytes (a multiple of every element
        size), so a tensor of any size passes through bounded memory."""
        yield from iter_chunks(self.read_bytes(name), size)

    def file_tensors(self) -> list[FileTensor] | None:
        """Every tensor in `refs()` order as stored in safetensors files, or None when this
        form does not store them so (torch files, state dicts): no torch needed."""
        return None

    def shards(self) -> list[str]:
        return [""]

    def metadata(self, shard: str = "") -> dict[str, str]:
        return {}

    def aliases(self) -> dict[str, str]:
        """Tied tensors: name -> the first name sharing its storage (torch files, DCP)."""
        return {}

    def overlaps(self) -> dict[str, dict[str, bool]]:
        """Tensors whose memory overlaps another's without being the same view (slices,
        transposes, reshapes of one storage: torch files, state dicts): name -> {other name:
        True, or False where assumed} (`memory.find_overlaps`). A change to one would change
        or desert the other, so planning refuses it."""
        return {}

    def extra_files(self) -> list[str]:
        """Non-weight files a directory output copies (relative names)."""
        return []

    def left_out(self) -> tuple[str, ...]:
        """Warnings about entries of the file that are not tensors and so are not in the
        output (a training checkpoint's `epoch` beside its weights); () for most forms."""
        return ()

    def beside_state(self) -> tuple[str, ...]:
        """What the source file holds besides the tensors read (the nest they sit in, an
        optimizer state, a step counter): a rewrite of the file in place would lose it; ()
        for most forms."""
        return ()

    def fetch_extra(self, relname: str) -> Path:
        raise NotImplementedError

    def config(self) -> ConfigDict | None:
        """The model's config.json (Hugging Face layout) when the checkpoint has one: some
        schemes read arguments from it (scaled_normal's layers, small_init's dim)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_config_file(path: str | os.PathLike[str]) -> ConfigDict | None:
    """A config.json as a dict, or None when absent or not a JSON object (a config we cannot
    read is not an error: only schemes that need it say so, naming what to pass instead)."""
    text = read_text_file(path, os.fspath(path), MAX_CONFIG_BYTES)  # too big, a FIFO: refused
    try:
        doc = parse_json(text, os.fspath(path))
    except JsonError:  # not JSON, or nested past MAX_JSON_DEPTH: not a config we can use
        return None
    return doc if isinstance(doc, dict) else None


def beside_config(path: str) -> ConfigDict | None:
    """config.json in the same folder as a single weight file (the HF layout)."""
    candidate = Path(path).parent / "config.json"
    return read_config_file(candidate) if candidate.is_file() else None


def tensor_from_bytes(buf: bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor over `buf` (no copy): the bytes a reader returned, as the tensor they store."""
    import torch

    if not buf:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def iter_chunks(buf: bytes | bytearray | memoryview, size: int) -> Iterator[memoryview]:
    """`buf` in views of at most `size` bytes (no copy)."""
    view = memoryview(buf).cast("B")
    for i in range(0, len(view), size):
        yield view[i : i + size]
