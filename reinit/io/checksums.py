"""`reinit verify OUTPUT --report R.json`: check that the output holds exactly the tensors the
report lists, each with the report's dtype and shape and the sha256 of its bytes as stored, so a
copy, upload or download of the output can be checked against what reinit wrote. A header
rewrite (dtype or shape), an injected tensor or a report entry without a checksum all fail: the
bytes alone do not say what they mean."""

from __future__ import annotations

__all__ = ["ChecksumMismatch", "Expected", "verify_checksums"]

import hashlib
import os
from dataclasses import dataclass

from reinit.errors import CheckpointError, UsageError
from reinit.io.checkpoint import CHUNK_BYTES, Checkpoint, TensorRef
from reinit.io.formats import dtype_name
from reinit.io.jsonfile import read_json_file
from reinit.io.sources import open_checkpoint
from reinit.limits import MAX_REPORT_BYTES


class ChecksumMismatch(CheckpointError):
    """A tensor differs from what its report recorded (exit 1)."""


@dataclass(frozen=True)
class Expected:
    """One tensor as the report recorded it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str | None


def verify_checksums(output: str | os.PathLike[str], report: str | os.PathLike[str]) -> int:
    """Check every tensor of `output` against `report`: the same names, and for each the
    report's dtype, shape and sha256; return how many were checked. Raises `ChecksumMismatch`
    naming the first tensor that differs, is missing, is not in the report, or has no sha256 in
    it; `UsageError` when the report is unreadable or holds no checksums."""
    where = os.fspath(report)
    expected = _read_report(where)
    with open_checkpoint(os.fspath(output)) as ckpt:
        refs = {r.name: r for r in ckpt.refs()}
        extra = sorted(set(refs) - set(expected))
        if extra:
            raise ChecksumMismatch(
                f"{output}: tensor '{extra[0]}' is not in {where} (it was added after reinit "
                "wrote the output)"
            )
        for exp in expected.values():
            _check_one(ckpt, refs.get(exp.name), exp, os.fspath(output), where)
    return len(expected)


def _check_one(
    ckpt: Checkpoint, ref: TensorRef | None, exp: Expected, output: str, where: str
) -> None:
    name = exp.name
    if ref is None:
        raise ChecksumMismatch(f"{output}: tensor '{name}' of {where} is missing")
    if exp.sha256 is None:
        raise ChecksumMismatch(
            f"{output}: tensor '{name}' has no sha256 in {where}; it cannot be vouched for "
            "(write the report with `reinit apply --checksums`)"
        )
    got = (dtype_name(ref.dtype), tuple(ref.shape))
    if got != (exp.dtype, exp.shape):
        raise ChecksumMismatch(
            f"{output}: tensor '{name}' is {got[0]} {list(got[1])}, but {where} recorded "
            f"{exp.dtype} {list(exp.shape)} (the header changed after it was written)"
        )
    h = hashlib.sha256()
    for chunk in ckpt.iter_chunks(name, CHUNK_BYTES):
        h.update(chunk)
    if h.hexdigest() != exp.sha256:
        raise ChecksumMismatch(
            f"{output}: tensor '{name}' does not match its sha256 in {where} "
            "(the file changed after it was written)"
        )


def _read_report(where: str) -> dict[str, Expected]:
    doc = read_json_file(where, f"--report {where}", MAX_REPORT_BYTES, UsageError)
    try:
        expected = [_entry(t) for t in doc["tensors"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"--report {where}: not a reinit JSON report ({e})") from None
    if not any(x.sha256 is not None for x in expected):
        raise UsageError(
            f"--report {where}: holds no checksums; write it with `reinit apply --checksums`"
        )
    out: dict[str, Expected] = {}
    for x in expected:
        if x.name in out:
            raise UsageError(f"--report {where}: lists tensor '{x.name}' twice")
        out[x.name] = x
    return out


def _entry(t: object) -> Expected:
    if not isinstance(t, dict):
        raise TypeError(f"a tensor entry is {type(t).__name__}, not an object")
    name, dtype, shape, digest = t["name"], t["dtype"], t["shape"], t.get("sha256")
    if not (isinstance(name, str) and isinstance(dtype, str) and isinstance(shape, list)):
        raise TypeError(f"entry {str(name)[:80]!r} lacks a name, dtype or shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"entry {name[:80]!r} has a shape that is not a list of integers")
    if digest is not None and not isinstance(digest, str):
        raise TypeError(f"entry {name[:80]!r} has a sha256 that is not a string")
    return Expected(name, dtype, tuple(shape), digest)
