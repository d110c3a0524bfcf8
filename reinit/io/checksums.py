"""`reinit verify OUTPUT --report R.json`: recompute every tensor's sha256 (of its bytes as
stored) and compare it with the one `apply --checksums` put in the report, so a copy, upload
or download of the output can be checked against what reinit wrote."""

from __future__ import annotations

__all__ = ["ChecksumMismatch", "verify_checksums"]

import hashlib
import os

from reinit.errors import CheckpointError, UsageError
from reinit.io.checkpoint import CHUNK_BYTES
from reinit.io.jsonfile import read_json_file
from reinit.io.sources import open_checkpoint
from reinit.limits import MAX_REPORT_BYTES


class ChecksumMismatch(CheckpointError):
    """A tensor's bytes differ from the sha256 its report recorded (exit 1)."""


def verify_checksums(output: str | os.PathLike[str], report: str | os.PathLike[str]) -> int:
    """Check every tensor of `report` that carries a `sha256` against `output`; return how
    many were checked. Raises `ChecksumMismatch` naming the first tensor that differs or is
    missing, `UsageError` when the report is unreadable or holds no checksums."""
    where = os.fspath(report)
    doc = read_json_file(report, f"--report {where}", MAX_REPORT_BYTES, UsageError)
    try:
        expected = {t["name"]: t["sha256"] for t in doc["tensors"] if t.get("sha256") is not None}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"--report {where}: not a reinit JSON report ({e})") from None
    if not expected:
        raise UsageError(
            f"--report {where}: holds no checksums; write it with `reinit apply --checksums`"
        )
    with open_checkpoint(os.fspath(output)) as ckpt:
        present = {r.name for r in ckpt.refs()}
        for name, digest in expected.items():
            if name not in present:
                raise ChecksumMismatch(f"{output}: tensor '{name}' of {where} is missing")
            h = hashlib.sha256()
            for chunk in ckpt.iter_chunks(name, CHUNK_BYTES):
                h.update(chunk)
            if h.hexdigest() != digest:
                raise ChecksumMismatch(
                    f"{output}: tensor '{name}' does not match its sha256 in {where} "
                    "(the file changed after it was written)"
                )
    return len(expected)
