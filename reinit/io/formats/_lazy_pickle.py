"""A `torch.save` file (zip format) read lazily and without running code: `load_lazy`.

Its `data.pkl` is unpickled by an unpickler that admits only torch's tensor rebuild functions,
storage types, dtypes, `torch.Size` and plain containers; classes of an allow-listed foreign
package (`inert`: DeepSpeed's loss scaler, enums and fragment records, which a ZeRO optimizer
file holds beside the weights) become `Inert` records that keep their arguments and run
nothing, and every other global is refused (`UnsafePickleError`). Tensors are not loaded: each
is a `LazyTensor` naming its storage record, read later with positioned reads of exactly the
elements asked for (`read_flat`), so memory holds what is read, never the file."""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reinit.errors import CheckpointError, UnsafePickleError
from reinit.io.formats._safetensors_format import dtype_size
from reinit.io.formats._safetensors_reader import pread_into
from reinit.text import one_line

if TYPE_CHECKING:
    import torch

__all__ = ["ByteRange", "Inert", "LazyFile", "LazyTensor", "load_lazy", "open_lazy"]

_REBUILDS = ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter")


class Inert:
    """What an allow-listed foreign class became: its name and arguments, nothing run (both
    `cls(*args)` and `cls.__new__(cls, *args)` only record them)."""

    name = ""
    args: tuple[object, ...]
    state: object

    def __new__(cls, *args: object, **kwargs: object) -> Inert:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        self.state = state


def _inert(qualname: str) -> type[Inert]:
    return type("Inert", (Inert,), {"name": qualname})


@dataclass(frozen=True)
class LazyTensor:
    """A tensor of the file: its storage record, dtype, element offset and shape (C order)."""

    key: str
    dtype: torch.dtype
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ByteRange(io.RawIOBase):
    """A read-only, seekable view of `length` bytes of an open file at `start` (positioned
    reads: the file's own offset is never moved)."""

    def __init__(self, fd: int, start: int, length: int, where: str):
        self.fd, self.start, self.length, self.where = fd, start, length, where
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buf), self.length - self.pos))
        if n:
            pread_into(self.fd, memoryview(buf)[:n], self.start + self.pos, self.where)
        self.pos += n
        return n


@dataclass(frozen=True)
class LazyFile:
    """An open `torch.save` record (a file, or a byte range of one): what its pickle holds,
    and where each storage lies."""

    path: str
    obj: object
    starts: dict[str, int]  # storage key -> byte offset of its data in the file
    fd: int
    owns_fd: bool = True
    sizes: dict[str, int] = field(default_factory=dict)  # storage key -> its bytes

    def byte_offset(self, t: LazyTensor, start: int = 0) -> int:
        """Where element `start` of `t` lies in the file, once `t` is known to lie inside its
        storage record (a pickle that says otherwise is a corrupt file, never a read of the
        bytes after the record)."""
        if t.key not in self.starts:
            raise CheckpointError(
                f"{self.path}: a tensor names storage record '{t.key}', which the archive does "
                "not hold; the file is corrupt"
            )
        size = dtype_size(t.dtype)
        if t.offset < 0 or (t.offset + t.numel) * size > self.sizes[t.key]:
            raise CheckpointError(
                f"{self.path}: a tensor of {t.numel} elements at element {t.offset} runs past "
                f"its storage ({self.sizes[t.key]} bytes); the file is corrupt"
            )
        return self.starts[t.key] + (t.offset + start) * size

    def read_flat(self, t: LazyTensor, start: int, count: int) -> bytearray:
        """Elements [start, start+count) of `t` (flattened), as bytes."""
        size = dtype_size(t.dtype)
        if start < 0 or start + count > t.numel:
            raise CheckpointError(f"{self.path}: a read of {count} elements past its tensor")
        buf = bytearray(count * size)
        pread_into(self.fd, buf, self.byte_offset(t, start), self.path)
        return buf

    def read_into(self, t: LazyTensor, start: int, view: memoryview) -> None:
        """Fill `view` with `t`'s elements from `start` on (flattened)."""
        if start < 0 or start + view.nbytes // dtype_size(t.dtype) > t.numel:
            raise CheckpointError(f"{self.path}: a read past the end of its tensor")
        pread_into(self.fd, view, self.byte_offset(t, start), self.path)

    def close(self) -> None:
        if self.owns_fd:
            os.close(self.fd)


def _rebuild(storage: object, offset: object, size: object, stride: object, *_: object) -> object:
    if not isinstance(storage, tuple) or not isinstance(offset, int):
        raise pickle.UnpicklingError("a tensor without a storage")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor without a shape")
    shape = tuple(int(n) for n in size)
    want = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    contiguous = all(s == w for n, s, w in zip(shape, stride, want, strict=True) if n > 1)
    if not contiguous and 0 not in shape:  # no elements: any strides are contiguous
        raise pickle.UnpicklingError("a non-contiguous tensor")
    key, dtype = storage
    return LazyTensor(key, dtype, offset, shape)


def _rebuild_v3(
    storage: object, offset: object, size: object, stride: object, *rest: object
) -> object:
    """`torch._utils._rebuild_tensor_v3`: what `torch.save` writes for the dtypes it keeps in an
    `UntypedStorage` (float8, uint16/32/64, ...); the tensor's dtype is an argument, and its
    offset counts elements of that dtype."""
    dtype = rest[2] if len(rest) >= 3 else None
    if not isinstance(storage, tuple) or not _is_dtype(dtype):
        raise pickle.UnpicklingError("a tensor without a storage or dtype")
    return _rebuild((storage[0], dtype), offset, size, stride)


def _is_dtype(value: object) -> bool:
    import torch

    return isinstance(value, torch.dtype)


def _parameter(data: object, *_: object) -> object:
    return data


def _from_type(func: object, new_type: object, args: object, state: object) -> object:
    """`torch._tensor._rebuild_from_type_v2` (a tensor saved as a subclass, as DeepSpeed's
    stage 3 saves its partitions): the tensor itself; the subclass and its state are dropped."""
    if func not in (_rebuild, _rebuild_v3, _parameter) or new_type != _TENSOR_TYPE:
        raise pickle.UnpicklingError("a tensor of an unknown subclass")
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("a tensor without arguments")
    return func(*args)


_TENSOR_TYPE = "a tensor type"  # what torch.Tensor / Parameter become: a marker, never called


class _Restricted(pickle.Unpickler):
    def __init__(self, data: bytes, inert: tuple[str, ...]):
        super().__init__(io.BytesIO(data))
        self.inert = inert

    def find_class(self, module: str, name: str) -> object:
        import torch

        if module == "torch._utils" and name in _REBUILDS:
            return _parameter if name == "_rebuild_parameter" else _rebuild
        if (module, name) == ("torch._utils", "_rebuild_tensor_v3"):
            return _rebuild_v3
        if name == "UntypedStorage" and module in ("torch", "torch.storage"):
            return ("storage", torch.uint8)  # bytes; `_rebuild_v3` names the dtype
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return _from_type
        if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
            return _TENSOR_TYPE
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name.endswith("Storage") and hasattr(torch, name):
            with warnings.catch_warnings():  # TypedStorage's deprecation, for its dtype
                warnings.simplefilter("ignore")
                return ("storage", getattr(torch, name).dtype)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module.split(".")[0] in self.inert:
            return _inert(f"{module}.{name}")
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")

    def persistent_load(self, pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("an unknown persistent id")
        kind, key = pid[1], pid[2]
        if not (isinstance(kind, tuple) and kind[0] == "storage" and isinstance(key, str)):
            raise pickle.UnpicklingError("an unknown storage type")
        return (key, kind[1])


def _record_starts(
    z: zipfile.ZipFile, view: ByteRange, path: str
) -> tuple[str, dict[str, int], dict[str, int]]:
    """The archive's `data.pkl` name, and the byte offset (in the file) and size of every
    record's data."""
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise CheckpointError(f"{path}: not a torch.save file (no single data.pkl)")
    prefix = pkl[0][: -len("data.pkl")]
    starts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for info in z.infolist():
        if not info.filename.startswith(prefix + "data/"):
            continue
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: {info.filename} is compressed; save it again")
        head = bytearray(30)
        pread_into(view.fd, head, view.start + info.header_offset, path)
        name_len, extra_len = struct.unpack("<HH", bytes(head[26:30]))
        begin = info.header_offset + 30 + name_len + extra_len
        if begin + info.file_size > view.length:
            raise CheckpointError(f"{path}: record {info.filename} runs past its end")
        starts[info.filename[len(prefix) + 5 :]] = view.start + begin
        sizes[info.filename[len(prefix) + 5 :]] = info.file_size
    return pkl[0], starts, sizes


def load_lazy(path: str, inert: tuple[str, ...] = ()) -> LazyFile:
    """Open the `torch.save` file at `path` lazily (see the module docstring)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return open_lazy(fd, 0, os.fstat(fd).st_size, path, inert, owns_fd=True)
    except BaseException:
        os.close(fd)
        raise


def open_lazy(
    fd: int,
    start: int,
    length: int,
    where: str,
    inert: tuple[str, ...] = (),
    owns_fd: bool = False,
) -> LazyFile:
    """The `torch.save` record in bytes [start, start+length) of the open file `fd`, lazily
    (see the module docstring); `where` names the file in messages."""
    view = ByteRange(fd, start, length, where)
    at = f"{where} (the record at byte {start})" if start else where
    try:
        with zipfile.ZipFile(view) as z:
            name, starts, sizes = _record_starts(z, view, at)
            data = z.read(name)
        obj = _Restricted(data, inert).load()
    except pickle.UnpicklingError as e:
        text = str(e)
        if text.startswith("GLOBAL "):
            raise UnsafePickleError(
                f"{at}: refusing to unpickle {text[7:]}: loading it would run code from the "
                "file; get the checkpoint from a trusted source"
            ) from None
        raise CheckpointError(f"{at}: not a readable torch.save record ({one_line(e)})") from None
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{at}: not a readable torch.save record ({type(e).__name__}: "
            f"{one_line(e)[:200]}); it may be truncated, or in torch's legacy (pre-1.6) format"
        ) from None
    return LazyFile(where, obj, starts, fd, owns_fd, sizes)
