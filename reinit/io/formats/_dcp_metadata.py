"""A `torch.distributed.checkpoint` (DCP) directory's `.metadata`, read without running code.

`.metadata` is a pickle of torch's own `Metadata` (`torch.distributed.checkpoint.metadata`):
per tensor its dtype, whole size and chunks (`ChunkStorageMetadata`: offsets and sizes), and
per chunk where its bytes lie (`MetadataIndex` -> `_StorageInfo`: file, offset, length). A
plain `pickle.load` (what torch's `FileSystemReader` does) would call whatever the file names;
`read_metadata` admits only those DCP classes, `torch.Size`, dtypes and layouts and plain
containers, and refuses everything else before it is called (`UnsafePickleError`, exit 1).
What was read is then checked as data (`DcpTensor`): chunk files are plain names inside the
directory, chunks lie inside their tensor without overlapping, offsets and lengths are
non-negative integers."""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reinit.errors import CheckpointError, UnsafePickleError
from reinit.io.confine import check_relname, local_file
from reinit.limits import MAX_TENSOR_BYTES, declared_bytes
from reinit.text import one_line

if TYPE_CHECKING:
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

__all__ = [
    "METADATA_NAME",
    "DCP_RECORD_NAME",
    "DcpChunk",
    "DcpTensor",
    "is_dcp_dir",
    "is_dcp_file",
    "read_metadata",
]

METADATA_NAME = ".metadata"  # torch's name (filesystem._metadata_fn)
DCP_RECORD_NAME = "reinit.json"  # what a `--format dcp` output records about its run (`run.record`)
_MAX_METADATA_BYTES = 1 << 30

_DCP_MD = "torch.distributed.checkpoint.metadata"
_DCP_FS = "torch.distributed.checkpoint.filesystem"
# (module, name) a DCP `.metadata` may name; each is a plain data class, an enum or a lookup
_ALLOWED = {
    (_DCP_MD, "Metadata"),
    (_DCP_MD, "TensorStorageMetadata"),
    (_DCP_MD, "ChunkStorageMetadata"),
    (_DCP_MD, "BytesStorageMetadata"),
    (_DCP_MD, "TensorProperties"),
    (_DCP_MD, "StorageMeta"),
    (_DCP_MD, "MetadataIndex"),
    (_DCP_MD, "_MEM_FORMAT_ENCODING"),
    (_DCP_FS, "_StorageInfo"),
    (_DCP_FS, "_StoragePrefix"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a name -> torch.layout table lookup
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


def is_dcp_dir(path: Path) -> bool:
    """Whether `path` is a DCP checkpoint directory (it holds `.metadata`)."""
    return path.is_dir() and (path / METADATA_NAME).is_file()


def is_dcp_file(name: str) -> bool:
    """Whether a file of that name is one of a DCP directory's own (`.metadata`, `*.distcp`,
    and the record reinit writes beside them, `reinit.json`)."""
    return name in (METADATA_NAME, DCP_RECORD_NAME) or name.endswith(".distcp")


class _MetadataUnpickler(pickle.Unpickler):
    """Admits the DCP metadata classes, `torch.Size`, dtypes and plain containers only."""

    def find_class(self, module: str, name: str) -> object:
        import torch

        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout)
        ):
            return getattr(torch, name)
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")
        import importlib

        found = importlib.import_module(module)  # reviewed: only (module, name) in _ALLOWED
        return getattr(found, name)

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("a persistent id (DCP metadata holds none)")


@dataclass(frozen=True)
class DcpChunk:
    """One stored piece of a tensor: where it sits in the whole tensor and in which file."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str  # relative to the directory
    start: int
    length: int


@dataclass(frozen=True)
class DcpTensor:
    """A tensor of the checkpoint (its flattened DCP name) and its chunks."""

    fqn: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: tuple[DcpChunk, ...]


def read_metadata(folder: Path) -> tuple[dict[str, DcpTensor], dict[str, tuple[object, ...]]]:
    """The tensors of the DCP directory `folder` (flattened names, storage order) and the
    nesting path of every entry (`planner_data`: `"model.w" -> ("model", "w")`)."""
    path = local_file(folder, METADATA_NAME, str(folder), "holds")  # inside, regular
    md = _unpickle(path)
    where = str(path)
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, Mapping):
        raise CheckpointError(f"{where}: not a torch.distributed.checkpoint metadata file")
    storage = md.storage_data if isinstance(md.storage_data, Mapping) else {}
    tensors: dict[str, DcpTensor] = {}
    for fqn, entry in md.state_dict_metadata.items():
        if not isinstance(fqn, str):
            raise CheckpointError(f"{where}: an entry name is {fqn!r}, not a string")
        tensor = _tensor(fqn, entry, storage, where)
        if tensor is not None:
            tensors[fqn] = tensor
    return tensors, _nesting(md.planner_data, list(md.state_dict_metadata))


def _unpickle(path: Path) -> object:
    try:
        size = path.stat().st_size
        if size > _MAX_METADATA_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, too large for DCP metadata")
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        text = str(e)
        if text.startswith("GLOBAL "):
            raise UnsafePickleError(
                f"{path}: refusing to unpickle {text[7:]}: a DCP .metadata holds only torch's "
                "checkpoint metadata classes, and loading this would run code from the file; "
                "get the checkpoint from a trusted source"
            ) from None
        raise CheckpointError(f"{path}: not a DCP metadata file ({one_line(e)})") from None
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable DCP metadata file ({type(e).__name__}: {one_line(e)}); "
            "it may be truncated or corrupt"
        ) from None


def _ints(value: object, where: str, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise CheckpointError(f"{where}: {what} is {value!r}, not a list of sizes")
    return tuple(int(v) for v in value)


def _tensor(
    fqn: str, entry: object, storage: Mapping[object, object], where: str
) -> DcpTensor | None:
    """The tensor `fqn` of the metadata, checked; None for a non-tensor entry (bytes)."""
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    if not isinstance(entry, TensorStorageMetadata):
        return None
    dtype = getattr(entry.properties, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"{where}: tensor '{fqn}' has no dtype")
    shape = _ints(entry.size, where, f"the size of '{fqn}'")
    if declared_bytes(shape, dtype.itemsize) is None:
        raise CheckpointError(
            f"{where}: tensor '{fqn}' has a size {list(shape)} whose dims multiply past "
            f"{MAX_TENSOR_BYTES} bytes (2^63 - 1, the most torch can address); the metadata is "
            "corrupt"
        )
    chunks = []
    for c in _chunk_records(entry.chunks, fqn, where):
        offsets = _ints(c.offsets, where, f"a chunk offset of '{fqn}'")
        sizes = _ints(c.sizes, where, f"a chunk size of '{fqn}'")
        if (
            len(offsets) != len(shape)
            or len(sizes) != len(shape)
            or any(o + s > n for o, s, n in zip(offsets, sizes, shape, strict=True))
        ):
            raise CheckpointError(
                f"{where}: a chunk of '{fqn}' (at {list(offsets)}, {list(sizes)}) lies outside "
                f"its size {list(shape)}; the metadata is corrupt"
            )
        info = storage.get(MetadataIndex(fqn, offsets))
        if info is None:
            raise CheckpointError(
                f"{where}: the chunk of '{fqn}' at {list(offsets)} has no storage entry"
            )
        chunks.append(_chunk(offsets, sizes, info, fqn, where))
    covered = sum(math.prod(c.sizes) for c in chunks)
    if covered != math.prod(shape):
        raise CheckpointError(
            f"{where}: the chunks of '{fqn}' cover {covered} of its {math.prod(shape)} elements; "
            "the checkpoint is incomplete or corrupt"
        )
    _check_disjoint(chunks, fqn, where)
    return DcpTensor(fqn, dtype, shape, tuple(chunks))


def _chunk_records(value: object, fqn: str, where: str) -> list[ChunkStorageMetadata]:
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    if not isinstance(value, (list, tuple)) or not all(
        isinstance(c, ChunkStorageMetadata) for c in value
    ):
        raise CheckpointError(
            f"{where}: the chunks of '{fqn}' are not a list of chunk records; the metadata is "
            "corrupt"
        )
    return list(value)


def _overlap(a: DcpChunk, b: DcpChunk) -> bool:
    return all(
        max(oa, ob) < min(oa + sa, ob + sb)
        for oa, sa, ob, sb in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
    )


def _check_disjoint(chunks: list[DcpChunk], fqn: str, where: str) -> None:
    """Refuse chunks that overlap: with as many elements as the tensor, they leave a hole.
    A sweep along the dimension the chunks are split most by, so a rank's chunk is compared
    only with the chunks beside it (not every pair of thousands of ranks)."""
    boxes = [c for c in chunks if all(c.sizes)]
    if len(boxes) < 2:
        return
    dim = max(range(len(boxes[0].offsets)), key=lambda d: len({c.offsets[d] for c in boxes}))
    open_: list[DcpChunk] = []
    for c in sorted(boxes, key=lambda c: c.offsets[dim]):
        open_ = [o for o in open_ if o.offsets[dim] + o.sizes[dim] > c.offsets[dim]]
        other = next((o for o in open_ if _overlap(o, c)), None)
        if other is not None:
            raise CheckpointError(
                f"{where}: chunks of '{fqn}' overlap (at {list(other.offsets)}, "
                f"{list(other.sizes)} and at {list(c.offsets)}, {list(c.sizes)}), so part of "
                "the tensor is stored twice and part never; the metadata is corrupt"
            )
        open_.append(c)


def _chunk(
    offsets: tuple[int, ...], sizes: tuple[int, ...], info: object, fqn: str, where: str
) -> DcpChunk:
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    if not isinstance(info, _StorageInfo):
        raise CheckpointError(f"{where}: the storage entry of '{fqn}' is not a file range")
    if getattr(info, "transform_descriptors", None):
        raise CheckpointError(
            f"{where}: '{fqn}' is stored with transforms {info.transform_descriptors!r} "
            "(a storage extension), which reinit does not read; save it without them"
        )
    file = check_relname(info.relative_path, where, f"'{fqn}' is stored in")
    start, length = _ints((info.offset, info.length), where, f"the file range of '{fqn}'")
    return DcpChunk(offsets, sizes, file, start, length)


def _nesting(planner_data: object, fqns: list[str]) -> dict[str, tuple[object, ...]]:
    """Each entry's path in the saved (nested) state dict; the flat name where unknown."""
    paths = planner_data if isinstance(planner_data, Mapping) else {}
    out: dict[str, tuple[object, ...]] = {}
    for fqn in fqns:
        path = paths.get(fqn)
        ok = isinstance(path, tuple) and path and all(isinstance(p, (str, int)) for p in path)
        out[fqn] = path if ok else (fqn,)  # type: ignore[assignment]
    return out
