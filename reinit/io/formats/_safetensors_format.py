"""The safetensors format as torch sees it: the dtype table, a tensor's bytes, building a header.
Parsing and validating a header needs no torch and lives in `safetensors_header` (re-exported
here, so both spellings work)."""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Mapping, Sequence

import torch

from reinit.errors import CheckpointError, UsageError
from reinit.io.formats._safetensors_header import (
    CODE_NAMES,
    CODE_SIZES,
    MAX_HEADER_BYTES,
    MAX_TENSORS,
    NAME_CODES,
    DuplicateKey,
    Header,
    TensorInfo,
    no_duplicate_keys,
    parse_header_bytes,
    read_header,
)
from reinit.text import shown

__all__ = [
    "DuplicateKey",
    "no_duplicate_keys",
    "code_dtypes",
    "Header",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "TensorInfo",
    "build_header",
    "unwritable_name",
    "dtype_name",
    "dtype_size",
    "float_max",
    "is_float_name",
    "name_size",
    "parse_header_bytes",
    "read_header",
    "tensor_to_bytes",
    "torch_dtype",
]


@functools.cache
def code_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype code -> torch dtype, for the dtypes this torch build has (a function:
    the table needs torch loaded, and a plain copy never loads it)."""
    return {code: getattr(torch, name) for code, name in CODE_NAMES.items() if hasattr(torch, name)}


def torch_dtype(name: str, tensor: str = "") -> torch.dtype:
    """The torch dtype of a dtype name (`dtype_name`'s spelling, "bfloat16"); loads torch."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        what = f"tensor '{tensor}': " if tensor else ""
        raise CheckpointError(
            f"{what}dtype {name} needs a newer torch than {torch.__version__}; upgrade torch"
        )
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch's name without the `torch.` prefix, as the report spells dtypes."""
    return str(dtype).removeprefix("torch.")


@functools.cache
def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element (cached: it is asked once per tensor, and files hold up to
    `MAX_TENSORS`)."""
    return torch.empty((), dtype=dtype).element_size()


def is_float_name(name: str) -> bool:
    """torch's `dtype.is_floating_point` of a dtype name: from the safetensors table without
    torch (its F* and BF16 codes), else torch's own answer."""
    code = NAME_CODES.get(name)
    if code is not None:
        return code.startswith(("F", "BF"))
    return torch_dtype(name).is_floating_point


# `torch.finfo(dtype).max` of the floating dtypes safetensors stores, by name: planning checks a
# scheme's values against it with no torch loaded (tests/test_apply_no_torch.py holds it to torch's)
_FLOAT_MAX: dict[str, float] = {
    "float64": 1.7976931348623157e308,
    "float32": 3.4028234663852886e38,
    "bfloat16": 3.3895313892515355e38,
    "float16": 65504.0,
    "float8_e4m3fn": 448.0,
    "float8_e5m2": 57344.0,
    "float8_e8m0fnu": 1.7014118346046923e38,
}


def float_max(name: str) -> float | None:
    """`torch.finfo(dtype).max` of a dtype name, None for a dtype that is not floating point:
    from a table without torch for safetensors' float dtypes, else torch's own answer."""
    top = _FLOAT_MAX.get(name)
    if top is not None:
        return top
    if name in NAME_CODES:  # an integer, bool or complex code
        return None
    dtype = torch_dtype(name)
    return float(torch.finfo(dtype).max) if dtype.is_floating_point else None


def name_size(name: str) -> int:
    """Bytes per element of a dtype name: from the safetensors table without torch, else
    torch's (a dtype safetensors cannot store, read from a torch file)."""
    code = NAME_CODES.get(name)
    return CODE_SIZES[code] if code is not None else dtype_size(torch_dtype(name))


def unwritable_name(name: str) -> str | None:
    """Why a safetensors file cannot hold a tensor of this name, or None: the header's own
    `__metadata__` key, or text that is not Unicode (a lone surrogate, e.g. from bytes on the
    command line that are not UTF-8, or a `\\ud800` escape in a JSON header)."""
    if name == "__metadata__":
        return (
            "tensor name '__metadata__' is the safetensors header's own key and cannot name a "
            "tensor: --rename it"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return (
            f"tensor name '{shown(name)}' is not valid UTF-8 text (a lone surrogate) and cannot "
            "be written: --rename it"
        )
    return None


def build_header(
    entries: Sequence[tuple[str, str, Sequence[int]]],
    metadata: Mapping[str, str] | None,
) -> tuple[bytes, list[tuple[int, int]]]:
    """The header bytes (length prefix included, padded to 8 bytes) for tensors laid out in the
    given order, and each tensor's [begin, end) relative to the data section. Each entry's
    dtype is its name (`dtype_name`): no torch needed.

    Knowing every name, dtype and shape up front is what lets the writer stream: the header goes
    first and tensor bytes are appended in order."""
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offsets: list[tuple[int, int]] = []
    pos = 0
    for name, dtype, shape in entries:
        problem = unwritable_name(name)
        if problem is not None:
            raise UsageError(problem)
        if name in doc:
            raise ValueError(f"duplicate tensor name {name!r}")
        size = math.prod(shape) * name_size(dtype)
        doc[name] = {
            "dtype": NAME_CODES[dtype],
            "shape": list(shape),
            "data_offsets": [pos, pos + size],
        }
        offsets.append((pos, pos + size))
        pos += size
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-(8 + len(body)) % 8)
    return struct.pack("<Q", len(body)) + body, offsets


def tensor_to_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's bytes as safetensors stores them: C-contiguous, little-endian, no copy when
    the tensor is already contiguous on the CPU."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return flat.view(torch.uint8).numpy().data.cast("B")
