"""The adversary's check: the state of a whole folder tree (every entry's path, kind, size,
mtime and sha256, or a link's target), taken before and after a refused run, so a test can
assert that nothing outside the named output changed, not only that no output appeared."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Entry = tuple[str, int, int, str]  # kind, size, mtime_ns, sha256 or link target


def tree_state(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, Entry]:
    """Every entry under `root` (not following links, never opening a non-regular file),
    leaving out the subtrees in `skip` (e.g. a Hub cache that a refused run may fill)."""
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
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, 0, os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, 0, "")
            else:
                out[rel] = ("special", 0, st.st_mtime_ns, oct(stat.S_IFMT(st.st_mode)))
    return out


def assert_unchanged(before: dict[str, Entry], after: dict[str, Entry]) -> None:
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not (added or removed or changed), f"added {added}, removed {removed}, changed {changed}"
