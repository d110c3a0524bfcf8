"""A `torch.distributed.checkpoint` (DCP) directory as a `Checkpoint`.

Names, dtypes and whole shapes come from `.metadata` (read by `dcp_metadata`, no code run).
The model's state is found inside the saved nesting (`{"model": ..., "optimizer": ...,
"step": ...}`) by the one rule torch files follow (`nested_state.find_state`: auto `model`,
`--key K`); other entries (optimizer state, counters) are never read. A tensor is read when
asked for, one at a time: each of its chunks (a DTensor sharded across ranks is one chunk per
rank, in the rank's `__R_0.distcp`) is a `torch.save` blob at an offset of its file, loaded with
`weights_only=True` from that byte range alone and copied into place."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from reinit.errors import CheckpointError, UnsafePickleError
from reinit.io.checkpoint import Checkpoint, ConfigDict, TensorRef, read_config_file
from reinit.io.dcp_metadata import DcpChunk, DcpTensor, read_metadata
from reinit.io.memory import check_tensor_names
from reinit.io.nested_state import find_state
from reinit.io.safetensors_format import tensor_to_bytes
from reinit.io.safetensors_reader import pread_into
from reinit.io.torch_reader import TORCH_FLOOR, torch_version
from reinit.text import one_line

__all__ = ["DcpCheckpoint", "load_blob"]


class _ByteRange(io.RawIOBase):
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


def load_blob(fd: int, start: int, length: int, where: str) -> object:
    """The object `torch.save` wrote at `start` of an open file (`length` bytes), loaded with
    `weights_only=True`: a blob that needs any other global is an `UnsafePickleError`."""
    if torch_version() < TORCH_FLOOR:
        raise UnsafePickleError(
            f"{where}: torch {torch.__version__}'s weights-only loader has a code-execution "
            "flaw (CVE-2025-32434); upgrade to torch>=2.6 to read DCP checkpoints"
        )
    view = _ByteRange(fd, start, length, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(view, map_location="cpu", weights_only=True)  # type: ignore[arg-type]
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"{where}: the blob at byte {start} is refused by the weights-only unpickler "
            f"({one_line(e)[:200]}); loading it would run code from the file: get the "
            "checkpoint from a trusted source"
        ) from None
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{where}: the blob at byte {start} is not a readable torch.save record "
            f"({type(e).__name__}: {one_line(e)[:200]}); the file may be truncated or corrupt"
        ) from None


def _state_of(
    tensors: Mapping[str, DcpTensor],
    nesting: Mapping[str, tuple[object, ...]],
    where: str,
    key: str,
    flag: str,
) -> dict[str, DcpTensor]:
    """The model's tensors under their names in the state dict the checkpoint nests (found
    as in a nested torch file), built over shape-only stand-ins (meta tensors)."""
    root: dict[object, object] = {}
    whose: dict[int, DcpTensor] = {}
    for fqn, path in nesting.items():
        node: dict[object, object] = root
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            t = tensors.get(fqn)
            stand_in = torch.empty(t.shape, dtype=t.dtype, device="meta") if t else None
            node[path[-1]] = stand_in
            if t is not None:
                whose[id(stand_in)] = t
    state = find_state(root, where, key, flag)
    found = {k: whose[id(v)] for k, v in state.items() if isinstance(v, torch.Tensor)}
    check_tensor_names(found, where)
    return found  # type: ignore[return-value]


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
        self.tensors = _state_of(tensors, nesting, self.source, key, flag)
        self._fds: dict[str, int] = {}

    def names(self) -> list[str]:
        return list(self.tensors)

    def _get(self, name: str) -> DcpTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: has no tensor '{name}'") from None

    def ref(self, name: str) -> TensorRef:
        t = self._get(name)
        return TensorRef(name, t.dtype, t.shape)

    def _fd(self, file: str) -> int:
        if file not in self._fds:
            path = self.folder / file
            try:
                self._fds[file] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        return self._fds[file]

    def _chunk(self, t: DcpTensor, c: DcpChunk) -> torch.Tensor:
        where = str(self.folder / c.file)
        got = load_blob(self._fd(c.file), c.start, c.length, where)
        if not isinstance(got, torch.Tensor) or got.dtype != t.dtype or tuple(got.shape) != c.sizes:
            what = (
                f"a {got.dtype} tensor of shape {list(got.shape)}"
                if isinstance(got, torch.Tensor)
                else f"a {type(got).__name__}"
            )
            raise CheckpointError(
                f"{where}: the chunk of '{t.fqn}' at byte {c.start} holds {what}; the metadata "
                f"says {t.dtype} {list(c.sizes)}: the checkpoint is corrupt"
            )
        return got

    def read(self, name: str) -> torch.Tensor:
        t = self._get(name)
        if len(t.chunks) == 1 and t.chunks[0].sizes == t.shape:
            return self._chunk(t, t.chunks[0]).contiguous()
        out = torch.empty(t.shape, dtype=t.dtype)
        for c in t.chunks:
            part = self._chunk(t, c)
            view = out
            for dim, (o, s) in enumerate(zip(c.offsets, c.sizes, strict=True)):
                view = view.narrow(dim, o, s)
            view.copy_(part)
            del part
        return out

    def read_bytes(self, name: str) -> memoryview:
        return tensor_to_bytes(self.read(name))

    def config(self) -> ConfigDict | None:
        candidate = self.folder / "config.json"
        return read_config_file(candidate) if candidate.is_file() else None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
