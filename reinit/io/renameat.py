"""Linux `renameat2(2)` through ctypes: the two atomic renames the writer and the publisher
need and `os.rename` cannot do: swap two paths in one step (`RENAME_EXCHANGE`), and rename
without replacing an existing target (`RENAME_NOREPLACE`). Elsewhere (another platform, an old
libc, a file system that refuses the flags) callers fall back to plain renames."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stubs' name for a function looked up on a CDLL (no runtime class)
    from ctypes import _NamedFuncPointer

__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "renameat2"]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _libc_renameat2() -> _NamedFuncPointer | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def renameat2(src: Path | str, dst: Path | str, flags: int) -> int | None:
    """`renameat2(AT_FDCWD, src, AT_FDCWD, dst, flags)`: None when the C library has no such
    call, else the errno of the failure (0 on success)."""
    fn = _libc_renameat2()
    if fn is None:
        return None
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    return 0 if rc == 0 else ctypes.get_errno()
