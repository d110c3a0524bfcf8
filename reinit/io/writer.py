"""The streaming safetensors writer, and atomic output.

The safetensors library can only serialize a whole dict of tensors held in memory. Since every
name, dtype and shape is known before any data (the plan), we write the header first and then
append each tensor's bytes in order: peak memory is one tensor, not the model.

Output is atomic: everything is written under a temporary sibling name, fsynced, and renamed
into place only when complete; on any failure (exceptions, Ctrl-C) the temporary is removed
and the target is untouched."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

import torch

from reinit.errors import WriteError
from reinit.io.safetensors_format import build_header


def _write_error(path: str, e: OSError) -> WriteError:
    if e.errno == errno.ENOSPC:
        why = "the disk is full; free space or choose another -o"
    elif e.errno == errno.EFBIG:
        why = "the file size limit (ulimit -f) is too small for the output"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied; choose a writable -o"
    else:
        why = e.strerror or str(e)
    return WriteError(f"{path}: cannot write: {why}")


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in the order given at construction.

    Use as a context manager; `write(name, data)` must be called for each tensor in order.
    The file at `path` is written directly: atomicity is `atomic_output`'s job."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
        metadata: Mapping[str, str] | None = None,
    ):
        self.path = os.fspath(path)
        self.entries = list(entries)
        self.header, self.offsets = build_header(self.entries, metadata)
        self._next = 0
        self._left: int | None = None  # bytes left of the tensor being written
        self._fd = -1
        self.bytes_written = 0

    def __enter__(self) -> SafetensorsWriter:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._write_all(self.header)
        except OSError as e:
            self._close()
            raise _write_error(self.path, e) from None
        return self

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self.bytes_written += n

    def _begin(self, name: str) -> None:
        if self._left is not None:
            return
        if self._next >= len(self.entries):
            raise ValueError(f"writer: unexpected tensor '{name}', all tensors already written")
        want = self.entries[self._next][0]
        if name != want:
            raise ValueError(f"writer: expected tensor '{want}' next, got '{name}'")
        begin, end = self.offsets[self._next]
        self._left = end - begin

    def _advance(self, name: str, nbytes: int) -> None:
        assert self._left is not None
        if nbytes > self._left:
            raise ValueError(f"writer: tensor '{name}' got {nbytes} bytes, {self._left} were left")
        self._left -= nbytes

    def write_part(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Append the next piece of tensor `name` (its bytes in order, in any number of parts)."""
        self._begin(name)
        nbytes = memoryview(data).nbytes
        self._advance(name, nbytes)
        try:
            self._write_all(data)
        except OSError as e:
            raise _write_error(self.path, e) from None

    def copy_part(self, name: str, src_fd: int, offset: int, nbytes: int) -> None:
        """Append the next piece of tensor `name` by copying `nbytes` of `src_fd` at `offset`,
        kernel-side (`os.copy_file_range`) where the platform allows, else through a buffer."""
        self._begin(name)
        self._advance(name, nbytes)
        try:
            copy_file_span(src_fd, offset, self._fd, nbytes)
        except OSError as e:
            raise _write_error(self.path, e) from None
        self.bytes_written += nbytes

    def end_tensor(self, name: str) -> None:
        """Close tensor `name`; every one of its bytes must have been written."""
        self._begin(name)
        if self._left:
            raise ValueError(f"writer: tensor '{name}' is {self._left} bytes short")
        self._left = None
        self._next += 1

    def write(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Append a whole tensor's bytes (C-contiguous, little-endian)."""
        self.write_part(name, data)
        self.end_tensor(name)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                if self._left is not None or self._next != len(self.entries):
                    missing = self.entries[self._next][0]
                    raise ValueError(f"writer: tensor '{missing}' was never written")
                try:
                    os.fsync(self._fd)
                except OSError as e:
                    raise _write_error(self.path, e) from None
        finally:
            self._close()


_COPY_CHUNK = 64 << 20


def copy_file_span(src_fd: int, offset: int, dst_fd: int, nbytes: int) -> None:
    """Copy bytes between files without passing them through Python when the kernel can.
    `dst_fd`'s file position advances by `nbytes`."""
    remaining = nbytes
    pos = offset
    use_kernel = hasattr(os, "copy_file_range")
    while remaining > 0:
        if use_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(remaining, _COPY_CHUNK), pos)
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    use_kernel = False
                    continue
                raise
        else:
            chunk = os.pread(src_fd, min(remaining, _COPY_CHUNK), pos)
            n = len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst_fd, view) :]
        if n == 0:
            raise OSError(errno.EIO, "source ended early during copy")
        pos += n
        remaining -= n


# --- atomic output ----------------------------------------------------------------------


def temp_sibling(target: Path) -> Path:
    return target.parent / f".{target.name}.reinit-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


@contextmanager
def atomic_output(target: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success move it onto `target` (replacing what
    is there, which the caller has already allowed), on any failure remove it."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        raise WriteError(f"{target}: the folder {parent} does not exist; create it first")
    tmp = temp_sibling(target)
    try:
        if directory:
            tmp.mkdir()
    except OSError as e:
        raise _write_error(str(target), e) from None
    try:
        yield tmp
        if directory:
            _fsync_dir(tmp)
            if target.exists():
                old = temp_sibling(target)
                os.replace(target, old)
                os.replace(tmp, target)
                remove_path(old)
            else:
                os.replace(tmp, target)
        else:
            if target.is_dir():
                raise WriteError(f"{target}: is a directory; choose a file name for -o")
            os.replace(tmp, target)
        _fsync_dir(parent)
    except BaseException as e:
        remove_path(tmp)
        if isinstance(e, OSError):
            raise _write_error(str(target), e) from None
        raise
