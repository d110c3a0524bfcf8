"""The safetensors header, parsed and validated without torch: dtype codes, names, shapes and
where each tensor's bytes lie. One validator serves the reader, the writer's self-check and
`reinit verify`, so a file we accept is a file `safetensors` accepts, and a file we write is one
we would accept (`safetensors_format` adds what needs torch: dtypes, building a header).

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to a
multiple of 8 by writers), then the data section. Each tensor's `data_offsets` are [begin, end)
relative to the data section; tensors must tile it exactly (no holes, no overlaps).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reinit.errors import CheckpointError
from reinit.limits import MAX_TENSOR_BYTES, declared_bytes
from reinit.text import one_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "CODE_NAMES",
    "CODE_SIZES",
    "NAME_CODES",
    "DuplicateKey",
    "Header",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "TensorInfo",
    "no_duplicate_keys",
    "parse_header_bytes",
    "read_header",
]

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# Most tensors one file may declare. Real checkpoints hold at most tens of thousands per file
# (a large MoE shard); a header of a million one-element tensors fits in 100 MB but costs
# minutes and gigabytes downstream (plan, report). docs/guarantees.md states this limit.
MAX_TENSORS = 200_000

# safetensors dtype code -> torch's dtype name (as the report spells dtypes) and element size
CODE_NAMES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
}
CODE_SIZES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "C64": 8,
}

# torch's dtype name -> safetensors code: what a plan of dtype names writes, without torch
NAME_CODES: dict[str, str] = {name: code for code, name in CODE_NAMES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file; offsets are absolute file positions."""

    name: str
    code: str  # the safetensors dtype code ("BF16")
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (imports torch: the report of a safetensors file never asks)."""
        import torch

        dtype = getattr(torch, CODE_NAMES[self.code], None)
        if dtype is None:
            raise CheckpointError(
                f"tensor '{self.name}': dtype {self.code} needs a newer torch than "
                f"{torch.__version__}; upgrade torch"
            )
        return dtype

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    tensors: tuple[TensorInfo, ...]  # in data order
    metadata: dict[str, str]
    data_start: int  # 8 + header length
    file_size: int


def parse_header_bytes(raw: bytes, file_size: int, where: str) -> Header:
    """Parse and validate a header. `raw` holds at least the first 8 + N bytes of the file.

    Any malformed input raises `CheckpointError` naming `where` and the defect; no other
    exception escapes (a fuzz test holds this)."""
    if file_size < 8 or len(raw) < 8:
        raise CheckpointError(
            f"{where}: file is {file_size} bytes, too short for a safetensors header; "
            "it is truncated or not a safetensors file"
        )
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{where}: header claims {n} bytes, over the 100 MB limit; the file is corrupt "
            "or not a safetensors file"
        )
    if 8 + n > file_size:
        raise CheckpointError(
            f"{where}: header length {n} runs past the end of the {file_size}-byte file; "
            "the file is truncated or not a safetensors file"
        )
    if len(raw) < 8 + n:
        raise CheckpointError(f"{where}: could not read the {n}-byte header")
    too_many = (
        f"{where}: header declares over {MAX_TENSORS} tensors, reinit's limit per file; "
        "split the checkpoint into shards (a model folder with an index)"
    )
    try:
        doc = json.loads(raw[8 : 8 + n].decode("utf-8"), object_pairs_hook=_ObjectHook())
    except _TooManyObjects:
        raise CheckpointError(too_many) from None
    except DuplicateKey as e:
        raise CheckpointError(
            f"{where}: header names '{_shown(e.key)}' twice; the file is corrupt"
        ) from None
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError, int limits
        raise CheckpointError(
            f"{where}: header is not valid JSON ({one_line(e)}); the file is corrupt"
        ) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: header is not a JSON object; the file is corrupt")

    metadata: dict[str, str] = {}
    raw_meta = doc.pop("__metadata__", None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
        ):
            raise CheckpointError(
                f"{where}: __metadata__ must map strings to strings; the file is corrupt"
            )
        metadata = dict(raw_meta)

    if len(doc) > MAX_TENSORS:
        raise CheckpointError(too_many)
    _check_text(metadata.items(), where, "__metadata__ entry")

    data_start = 8 + n
    data_size = file_size - data_start
    infos: list[TensorInfo] = []
    for name, entry in doc.items():
        infos.append(_parse_entry(name, entry, data_start, where))
    infos.sort(key=lambda t: (t.start, t.end))
    _check_tiling(infos, data_start, data_size, where)
    return Header(tuple(infos), metadata, data_start, file_size)


class DuplicateKey(Exception):
    """A JSON object that names one key twice (raised by `no_duplicate_keys`)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class _TooManyObjects(Exception):
    pass


class _ObjectHook:
    """json.loads' object_pairs_hook for a header: refuses duplicate keys and stops parsing
    once the header holds more JSON objects than a file of `MAX_TENSORS` tensors can (one per
    tensor, plus the header and its `__metadata__`), so a header of a million tensors fails
    after a fifth of its parse instead of building it all."""

    def __init__(self) -> None:
        self.objects = 0

    def __call__(self, pairs: list[tuple[str, object]]) -> dict[str, object]:
        self.objects += 1
        if self.objects > MAX_TENSORS + 2:
            raise _TooManyObjects
        return no_duplicate_keys(pairs)


def no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An `object_pairs_hook` for json.loads, which keeps the last of two equal keys silently:
    a header or an index that names a tensor twice is ambiguous, so we refuse it."""
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(k)
        out[k] = v
    return out


def _check_text(pairs: Iterable[tuple[str, str]], where: str, what: str) -> None:
    """Every string must be encodable as UTF-8: JSON's `\\ud800` escapes decode to lone
    surrogates, which Python keeps but cannot print or write back (safetensors itself refuses
    them)."""
    for pair in pairs:
        for text in pair:
            if not _encodable(text):
                raise CheckpointError(
                    f"{where}: {what} '{_shown(text)}' holds a lone surrogate (an invalid \\u "
                    "escape); the file is corrupt"
                )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A name safe to print whatever it holds (lone surrogates as `\\udXXX`)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _parse_entry(name: str, entry: object, data_start: int, where: str) -> TensorInfo:
    if not _encodable(name):
        raise CheckpointError(
            f"{where}: tensor name '{_shown(name)}' holds a lone surrogate (an invalid \\u "
            "escape); the file is corrupt"
        )
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: entry for tensor '{name}' is not an object")
    code = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(code, str) or code not in CODE_NAMES:
        raise CheckpointError(
            f"{where}: tensor '{name}' has unknown dtype {code!r}; known: {', '.join(CODE_NAMES)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(f"{where}: tensor '{name}' has an invalid shape {shape!r}")
    itemsize = CODE_SIZES[code]
    if declared_bytes(shape, itemsize) is None:
        raise CheckpointError(
            f"{where}: tensor '{name}' has a shape whose dims multiply past "
            f"{MAX_TENSOR_BYTES} bytes (2^63 - 1, the most torch can address); "
            "the file is corrupt"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(f"{where}: tensor '{name}' has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{where}: tensor '{name}' spans {offsets[1] - offsets[0]} bytes but shape "
            f"{shape} of {code} needs {expected}; the file is corrupt"
        )
    return TensorInfo(name, code, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _check_tiling(infos: Sequence[TensorInfo], data_start: int, data_size: int, where: str) -> None:
    pos = data_start
    prev: TensorInfo | None = None
    for t in infos:
        if t.start < pos and prev is not None:
            if (t.start, t.end) == (prev.start, prev.end):
                raise CheckpointError(
                    f"{where}: tensors '{prev.name}' and '{t.name}' share data offsets "
                    f"[{t.start - data_start}, {t.end - data_start}] (aliased storage, which "
                    "safetensors forbids); the file is corrupt, save it again without aliasing"
                )
            raise CheckpointError(
                f"{where}: tensor '{t.name}' overlaps tensor '{prev.name}' in the data "
                "section; the file is corrupt"
            )
        if t.start > pos:
            raise CheckpointError(
                f"{where}: {t.start - pos} unused bytes before tensor '{t.name}'; "
                "the data section has a hole, the file is corrupt"
            )
        pos = t.end
        prev = t
    end = data_start + data_size
    if pos > end:
        last = infos[-1].name if infos else "?"
        raise CheckpointError(
            f"{where}: tensor '{last}' runs {pos - end} bytes past the end of the file; "
            "the file is truncated"
        )
    if pos < end:
        raise CheckpointError(
            f"{where}: {end - pos} bytes after the last tensor belong to none; the file is corrupt"
        )


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate the header of the safetensors file at `path`."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head += f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{where}: is a directory, expected a safetensors file") from None
    except OSError as e:
        raise CheckpointError(f"{where}: cannot read ({e.strerror})") from None
    return parse_header_bytes(head, size, where)
