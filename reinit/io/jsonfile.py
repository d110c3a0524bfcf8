"""Reading the small JSON files beside a checkpoint (config.json, tokenizer files, a shard
index, a report) the one bounded way: a regular file only (a FIFO would block forever, a
device such as /dev/zero would never end), at most a size cap read (checked before parsing,
so a 250 MB tokenizer.json cannot take gigabytes of memory), and parsed with every failure,
nesting too deep included, turned into one typed error naming the file.

The caps are in `reinit.limits`."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reinit.errors import CheckpointError, ReinitError
from reinit.limits import MAX_JSON_DEPTH
from reinit.text import one_line

__all__ = ["JsonError", "json_depth_ok", "parse_json", "read_json_file", "read_text_file"]

MB = 1024 * 1024


class JsonError(CheckpointError):
    """A JSON file beside a checkpoint is too big, not a regular file, or not JSON (exit 1)."""


def _size_text(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n} bytes"


def read_text_file(
    path: str | os.PathLike[str],
    where: str,
    max_bytes: int,
    error: type[ReinitError] = JsonError,
) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes`; anything else is `error`
    naming `where` (e.g. "config /m/config.json"; a FIFO is opened without blocking and
    refused, a file that grows past the cap while read is refused too)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{where}: cannot be read ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{where}: not a regular file (a FIFO, device or socket); give a file")
        if info.st_size > max_bytes:
            raise error(
                f"{where}: is {_size_text(info.st_size)}, more than the {_size_text(max_bytes)} "
                "reinit reads for such a file; check that it is the right file"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{where}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise error(f"{where}: grew past {_size_text(max_bytes)} while it was read")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{where}: is not UTF-8 text") from None


def json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` (json.loads' output) nests lists/objects at most `limit` deep;
    iterative, so any depth is measured without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def parse_json(
    text: str,
    where: str,
    error: type[ReinitError] = JsonError,
    hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """json.loads with every failure as `error` naming `where`: bad JSON, nesting deeper than
    `MAX_JSON_DEPTH` (Python's recursion would end first, as RecursionError), numbers past
    Python's digit limit, memory."""
    try:
        value = json.loads(text, object_pairs_hook=hook)
    except RecursionError:
        value = _TOO_DEEP
    except (ValueError, MemoryError) as e:
        raise error(f"{where}: not valid JSON ({one_line(e, limit=120)})") from None
    if value is _TOO_DEEP or not json_depth_ok(value):
        raise error(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return value


_TOO_DEEP = object()


def read_json_file(
    path: str | os.PathLike[str] | Path,
    where: str,
    max_bytes: int,
    error: type[ReinitError] = JsonError,
    hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """`read_text_file` + `parse_json`: the bounded way to read a JSON file."""
    return parse_json(read_text_file(path, where, max_bytes, error), where, error, hook)
