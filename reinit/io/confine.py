"""Where every file a model folder, an index or a Hub repo names may lie: the one place that
decides it (issue 17 "writes outside the output", issue 16 "reading outside the model folder").

A model from someone else must neither pull other local files into an output that may be
published nor make the tool write anywhere but its own temporary output folder. The rules:

- A *name* from an index's `weight_map`, a Hub listing or a folder walk is a plain relative
  POSIX name (`check_relname`): non-empty parts separated by `/`, none of them `.` or `..`, no
  leading `/`, no drive (`C:`), no backslash, no NUL or other control character. Every output
  path inside the temporary output folder is built from such a name (`output_path`), so nothing
  can be written outside it.
- A *local file* behind a name (`local_file`) must resolve inside the folder: a symlink inside
  the folder that points inside it is fine; one that leaves it is refused, except into the
  `blobs/` of the Hugging Face cache repo the folder is a snapshot of (snapshots link to
  `../../blobs/<hash>`, so a snapshot folder given as a local path keeps working). It must be a
  regular file: a FIFO or device is never opened (opening a FIFO would block forever).
- A Hub revision is a git ref name, a 40-hex commit or `refs/pr/N` (`check_revision`): never a
  `..` part, `%`, a leading `/`, a backslash or a control character, so the cache's `refs/` file
  cannot be written outside the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reinit.errors import InputNotFoundError, OutputError, UnsafePathError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from reinit.io.checkpoint import Checkpoint

__all__ = [
    "cache_blobs",
    "check_output_names",
    "check_relname",
    "check_revision",
    "copy_regular",
    "extras_to_copy",
    "local_file",
    "output_path",
    "relname_problem",
    "require_regular",
    "revision_problem",
]

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def relname_problem(name: object) -> str | None:
    """Why `name` is not a plain relative name inside a folder, or None when it is one."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if _CONTROL.search(name):
        return "it holds a control character"
    if "\\" in name:
        return "it holds a backslash"
    if name.startswith("/") or _DRIVE.match(name):
        return "it is an absolute path"
    parts = name.split("/")
    if any(p == ".." for p in parts):
        return "it climbs out of the folder with '..'"
    if any(p in ("", ".") for p in parts):
        return "it has an empty or '.' part"
    return None


def check_relname(name: object, where: str, what: str) -> str:
    """`name` when it is a plain relative name; else an `UnsafePathError` naming `where` (the
    folder or index) and `what` (what named it, e.g. "the index puts 'w' in shard")."""
    problem = relname_problem(name)
    if problem is not None:
        raise UnsafePathError(
            f"{where}: {what} {name!r}, which is not a file inside the model folder ({problem}); "
            "refusing to read or write it: fix the name or get the model from a trusted source"
        )
    assert isinstance(name, str)
    return name


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def cache_blobs(root: Path) -> Path | None:
    """The `blobs/` folder of the Hugging Face cache repo whose snapshot `root` is (or lies in):
    `.../models--o--n/snapshots/<commit>[/sub]` -> `.../models--o--n/blobs`; None otherwise."""
    parts = Path(os.path.realpath(root)).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots":
            repo = Path(*parts[:i])
            blobs = repo / "blobs"
            # a blobs/ that links out of the repo's folder would let its links reach any file
            inside = _inside(os.path.realpath(blobs), os.fspath(repo))
            return blobs if blobs.is_dir() and inside else None
    return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def local_file(root: Path, relname: str, where: str, what: str = "names") -> Path:
    """The path of `relname` inside the local folder `root`, refused (`UnsafePathError`) when
    the name is not plain, when it resolves outside the folder (a symlink that leaves it), or
    when it is not a regular file. A name that does not exist is returned as is (the caller
    says it is missing)."""
    check_relname(relname, where, what)
    path = root / relname
    real = os.path.realpath(path)
    top = os.path.realpath(root)
    if not _inside(real, top):
        blobs = cache_blobs(root)
        if blobs is None or not _inside(real, os.path.realpath(blobs)):
            raise UnsafePathError(
                f"{where}: {relname} is a link to {real}, outside the model folder; refusing to "
                "read it: copy the file into the folder or remove the link"
            )
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise UnsafePathError(f"{where}: cannot read {relname} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise UnsafePathError(
            f"{where}: {relname} is {_kind(mode)}, not a regular file; refusing to read it: "
            "remove it from the model folder"
        )
    return path


def require_regular(path: str | os.PathLike[str], what: str = "") -> None:
    """Refuse (exit 2) a source that exists but is not a regular file or folder: a FIFO would
    block the reader forever, a device would never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the reader says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        label = f"{what} " if what else ""
        raise InputNotFoundError(
            f"{os.fspath(path)}: {label}is {_kind(mode)}, not a checkpoint file; "
            "give a regular file, a model folder or hf://OWNER/NAME"
        )


def output_path(tmp: Path, relname: str, where: str) -> Path:
    """`tmp / relname` for a file written into a directory output, after checking that
    `relname` is a plain relative name, so the path stays inside `tmp`."""
    return tmp / check_relname(relname, where, "would write")


def check_output_names(produced: list[tuple[str, str]], where: str) -> None:
    """Refuse (exit 2, before anything is written) a directory output in which two source files
    would land on one output name (`x.bin` and `x.pt` both become `x.safetensors`;
    `pytorch_model-00001-of-00002.bin` and `model-00001-of-00002.safetensors` both become the
    latter), or in which one output file would sit where another needs a folder. `produced`
    holds (output relname, the source file it comes from) pairs."""
    seen: dict[str, str] = {}
    for rel, src in produced:
        if rel in seen:
            raise OutputError(
                f"{where}: {seen[rel]} and {src} would both be written as {rel}; refusing to "
                "let one replace the other: remove or rename one of them in the source"
            )
        seen[rel] = src
    for rel, src in produced:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in seen:
                raise OutputError(
                    f"{where}: {seen[folder]} would be written as {folder}, where {src} needs "
                    "a folder; remove or rename one of them in the source"
                )


def extras_to_copy(
    ckpt: Checkpoint, shard_outputs: Sequence[tuple[str, str]], where: str
) -> list[tuple[str, Path]]:
    """The non-weight files a directory output copies, as (relname, local path), checked before
    anything is written: each name plain and relative (a Hub sibling named `/tmp/x` or `../x`
    is refused), each file regular and inside the folder (`LocalFiles.fetch`: a link to
    `../secret.txt` or `/dev/zero` is refused, named), and no name shared with an output shard."""
    out: list[tuple[str, Path]] = []
    for rel in ckpt.extra_files():
        check_relname(rel, ckpt.source, "lists the file")
        out.append((rel, Path(ckpt.fetch_extra(rel))))
    check_output_names([*shard_outputs, *((rel, rel) for rel, _ in out)], where)
    return out


def copy_regular(src: Path, dst: Path, where: str) -> int:
    """Copy the regular file `src` to `dst` (bytes copied); refuses anything else, checked on
    the open descriptor (O_NONBLOCK: a FIFO swapped in after the checks cannot block)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UnsafePathError(f"{where}: cannot read {src} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f"{where}: {src} is {_kind(mode)}, not a regular file")
        with open(dst, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
            return out.tell()


_REF_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\%]")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def revision_problem(rev: str) -> str | None:
    """Why `rev` is not a safe git ref name (git check-ref-format, plus no `%`), or None."""
    if _COMMIT.fullmatch(rev):
        return None
    if not rev:
        return "it is empty"
    if _REF_BAD.search(rev):
        return "it holds a space, control character or one of ~^:?*[\\%"
    if rev.startswith("/") or rev.endswith(("/", ".")) or "@{" in rev or rev == "@":
        return "it is not a branch, tag or commit name"
    for part in rev.split("/"):
        if part in ("", ".", "..") or part.startswith(".") or part.endswith(".lock"):
            return f"it has the part {part!r} (empty, '..' or starting with '.')"
    if ".." in rev:
        return "it holds '..'"
    return None


def check_revision(rev: str | None, url: str) -> None:
    """Refuse (exit 2) a Hub revision that is not a safe ref before huggingface_hub sees it (it
    writes the revision as a path under the cache's `refs/`)."""
    if rev is None:
        return
    problem = revision_problem(rev)
    if problem is not None:
        raise UsageError(
            f"bad Hub URL {url!r}: revision {rev!r} is not a branch, tag or commit ({problem}); "
            "give a branch (main, refs/pr/1), a tag or a 40-hex commit after '@'"
        )
