"""Publishing a run's outputs: all of them, or none.

Every file a run writes (the checkpoint, or each file of a directory output, its reports, its
plot) is first written complete under a temporary sibling name (`.NAME.reinit-tmp-*`). Only when
all are complete are they renamed into place, one after another, with SIGINT/SIGTERM held, so a
Ctrl-C either lands before the first rename (nothing published, every temporary removed) or
after the last (everything published; `published()` says what, so the command line reports it
truthfully instead of "no partial output").

Three ways to put a staged output in place:
- no-replace (no --overwrite): `renameat2(RENAME_NOREPLACE)` where the kernel has it, else
  `link`+`unlink` for a file and a plain rename for a folder (which fails onto a non-empty one):
  of two concurrent runs to the same path exactly one wins; the loser removes what it had
  already published in this batch and fails with "exists". No-replace renames go first, so a
  loser has replaced nothing.
- replace (--overwrite): `os.replace` for a file; for a folder one atomic swap
  (`RENAME_EXCHANGE`) where the kernel allows it.
- merge (--in-place on a folder): each file of the staged folder is renamed onto its path in
  the target folder, weight files first, then the index, then the report; every other entry of
  the target (`.git/`, other weight formats, ...) stays as it was. A replaced file's mode (and
  owner, where permitted) carry over to its replacement."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from reinit.errors import OutputError, WriteError
from reinit.io.renameat import RENAME_NOREPLACE, renameat2
from reinit.io.signals import signals_deferred
from reinit.io.writer import (
    publish_directory,
    remove_path,
    temp_sibling,
    write_error,
)

__all__ = [
    "Publication",
    "Staged",
    "atomic_output",
    "forget_published",
    "how_to_publish",
    "keep_mode",
    "published",
    "rename_noreplace",
]

_PUBLISHED: list[str] = []


def published() -> tuple[str, ...]:
    """The paths this process has published since `forget_published()` (the CLI resets it per
    command): what a late Ctrl-C must not call "no partial output"."""
    return tuple(_PUBLISHED)


def forget_published() -> None:
    _PUBLISHED.clear()


# --- renames -------------------------------------------------------------------------------


def _exists_error(dst: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError when `dst` exists, with no window
    between the check and the rename (two runs racing for `dst`: exactly one wins)."""
    err = renameat2(src, dst, RENAME_NOREPLACE)
    if err is not None:
        if err == 0:
            return
        if err == errno.EEXIST:
            raise _exists_error(dst)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise _exists_error(dst)
    if src.is_dir():
        try:  # onto a folder that appeared meanwhile: fails unless it is empty
            os.rename(src, dst)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise _exists_error(dst) from None
            raise
        return
    try:
        os.link(src, dst)  # fails with EEXIST when another run got there first
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: the check above is all we have
        os.rename(src, dst)
        return
    os.unlink(src)


def keep_mode(new: Path, old: Path) -> None:
    """Give `new` the permission bits (and, where permitted, owner and group) of `old`, the
    file it is about to replace: --in-place keeps a 0600 file 0600."""
    try:
        st = os.stat(old)
    except OSError:
        return
    os.chmod(new, st.st_mode & 0o7777)
    with suppress(OSError):
        os.chown(new, st.st_uid, st.st_gid)


# --- a batch of outputs --------------------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    """One output written under `tmp`, to be put at `target` in the way `how` names."""

    tmp: Path
    target: Path
    how: str  # "noreplace" | "replace" | "merge"
    directory: bool
    first: tuple[str, ...] = ()  # merge: relative names renamed before the rest (weights)
    last: tuple[str, ...] = ()  # merge: relative names renamed after the rest (report)


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            _fsync(Path(dirpath) / f)
        _fsync(Path(dirpath), directory=True)


def _files_under(root: Path) -> list[str]:
    out = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def _merge_order(s: Staged) -> list[str]:
    files = _files_under(s.tmp)
    rank = {n: 0 for n in s.first} | {n: 2 + i for i, n in enumerate(s.last)}
    return sorted(files, key=lambda n: (rank.get(n, 1), n))


class Publication:
    """A batch of outputs published together: `stage` each (it returns the temporary path to
    write), then `commit()`; leaving the block without committing (an error, Ctrl-C) removes
    every temporary and publishes nothing."""

    def __init__(self) -> None:
        self.staged: list[Staged] = []
        self.committed = False

    def stage(
        self,
        target: str | os.PathLike[str],
        *,
        how: str,
        directory: bool = False,
        first: tuple[str, ...] = (),
        last: tuple[str, ...] = (),
    ) -> Path:
        target = Path(target)
        if not target.parent.is_dir():
            raise WriteError(
                f"{target}: the folder {target.parent} does not exist; create it first"
            )
        # merge: the new files are staged inside the target folder, so that renaming them onto
        # their names stays on one file system (a model folder may be a mount point) and needs
        # no write access to the folder above; the reader skips hidden entries
        merge = how == "merge"
        tmp = target / f".reinit-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}" if merge else None
        tmp = tmp or temp_sibling(target)
        if directory:
            try:
                tmp.mkdir()
            except OSError as e:
                raise write_error(str(target), e) from None
        self.staged.append(Staged(tmp, target, how, directory, first, last))
        return tmp

    def __enter__(self) -> Publication:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            self.abort()
        if isinstance(exc, WriteError):
            for s in self.staged:  # name the output the user asked for, not our temporary
                if str(s.tmp) in str(exc):
                    raise WriteError(str(exc).replace(str(s.tmp), str(s.target))) from None

    def abort(self) -> None:
        with signals_deferred():
            for s in self.staged:
                remove_path(s.tmp)

    def commit(self) -> None:
        """Flush every temporary to disk, then rename them all into place with signals held:
        no-replace ones first (a loser of a race undoes its own and fails with "exists"),
        then replacing and merging ones."""
        try:
            for s in self.staged:
                if s.directory:
                    _fsync_tree(s.tmp)
                else:
                    if s.target.is_dir():
                        raise WriteError(f"{s.target}: is a directory; choose a file name")
                    _fsync(s.tmp)
        except OSError as e:
            self.abort()
            raise write_error(str(s.target), e) from None
        except BaseException:
            self.abort()
            raise
        order = [s for s in self.staged if s.how == "noreplace"]
        order += [s for s in self.staged if s.how != "noreplace"]
        done: list[Staged] = []
        with signals_deferred():
            try:
                for s in order:
                    self._put(s)
                    done.append(s)
                    _PUBLISHED.append(os.fspath(s.target))
            except BaseException as e:
                self._undo(done, e)
                raise self._error(s, e) from None
            finally:
                self.committed = True
        folders = {s.target.parent for s in order} | {s.target for s in order if s.how == "merge"}
        for folder in folders:
            _fsync(folder, directory=True)

    def _put(self, s: Staged) -> None:
        if s.how == "noreplace":
            rename_noreplace(s.tmp, s.target)
        elif s.how == "merge":
            for rel in _merge_order(s):
                src, dst = s.tmp / rel, s.target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                keep_mode(src, dst)
                os.replace(src, dst)
            remove_path(s.tmp)
        elif s.directory:
            publish_directory(s.tmp, s.target)
        else:
            if s.target.is_dir():
                raise WriteError(f"{s.target}: is a directory; choose a file name")
            keep_mode(s.tmp, s.target)
            os.replace(s.tmp, s.target)

    def _undo(self, done: list[Staged], e: BaseException) -> None:
        """A rename failed: take back the no-replace outputs this batch created (nobody else's:
        they did not exist a moment ago) and remove every temporary left."""
        for s in done:
            if s.how == "noreplace":
                remove_path(s.target)
                with suppress(ValueError):
                    _PUBLISHED.remove(os.fspath(s.target))
        for s in self.staged:
            remove_path(s.tmp)

    @staticmethod
    def _error(s: Staged, e: BaseException) -> BaseException:
        if isinstance(e, FileExistsError):
            return OutputError(
                f"{s.target}: exists (another run published it first?); nothing was written; "
                "pass --overwrite to replace it"
            )
        if isinstance(e, OSError):
            return write_error(str(s.target), e)
        if isinstance(e, WriteError) and str(s.tmp) in str(e):
            return WriteError(str(e).replace(str(s.tmp), str(s.target)))
        return e


def how_to_publish(*, overwrite: bool, in_place: bool = False) -> str:
    """The rename a target gets: replacing only when the user allowed it."""
    return "replace" if (overwrite or in_place) else "noreplace"


@contextmanager
def atomic_output(
    target: str | os.PathLike[str], *, directory: bool = False, replace: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and move it onto `target`
    (replacing what is there when `replace`, which the caller has already allowed; else failing
    with "exists" if another run got there first), on any failure, Ctrl-C and SIGTERM included,
    remove it and leave `target` untouched. One output alone: see `reinit.io.publish` for a
    batch published together."""
    with Publication() as pub:
        tmp = pub.stage(target, how="replace" if replace else "noreplace", directory=directory)
        try:
            yield tmp
        except OSError as e:
            raise write_error(os.fspath(target), e) from None
        pub.commit()
