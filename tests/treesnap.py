"""The adversary's check: the state of a whole folder tree (every entry's path, kind, size,
permission bits, mtime and sha256, or a link's target), taken before and after a run, so a test
can assert that nothing outside the named output changed, not only that no output appeared."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Entry = tuple[str, int, int, int, str]  # kind, size, mode bits, mtime_ns, sha256 or link target


def tree_state(root: Path, skip: tuple[Path, ...] = (), *, mtime: bool = True) -> dict[str, Entry]:
    """Every entry under `root` (not following links, never opening a non-regular file),
    leaving out the subtrees in `skip` (e.g. a Hub cache that a refused run may fill).
    `mtime=False` leaves modification times out: for a run that may rewrite a folder (its
    mtime changes) and should change only some files in it."""
    out: dict[str, Entry] = {}
    skipped = {os.fspath(s) for s in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            if full in skipped:
                continue
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            mode = stat.S_IMODE(st.st_mode)
            when = st.st_mtime_ns if mtime else 0
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, 0, 0, os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                out[rel] = ("file", st.st_size, mode, when, digest)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, mode, 0, "")
            else:
                out[rel] = ("special", 0, mode, when, oct(stat.S_IFMT(st.st_mode)))
    return out


def assert_unchanged(before: dict[str, Entry], after: dict[str, Entry]) -> None:
    """Nothing added, removed or changed, each named in the failure."""
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not (added or removed or changed), f"added {added}, removed {removed}, changed {changed}"
