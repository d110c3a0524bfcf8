"""`reinit inspect`: the tensors of a checkpoint, optionally filtered, with statistics.

Safetensors (a file or a folder of shards) is listed from its headers and its statistics are
computed from the raw bytes, without importing torch (as `reinit report` does); other forms
are read through torch."""

from __future__ import annotations

__all__ = ["InspectRow", "inspect_checkpoint"]

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from reinit.errors import RuleError
from reinit.io.checkpoint import Checkpoint, FileTensor
from reinit.io.formats import CODE_NAMES, pread_into
from reinit.io.sources import open_checkpoint
from reinit.report.jsonio import JSON
from reinit.report.stats import TORCH_STEP, Stats, StatsAccumulator


@dataclass(frozen=True)
class InspectRow:
    """One tensor as `reinit inspect` lists it (statistics only with `--stats`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    shard: str
    stats: Stats | None = None

    def to_dict(self) -> dict[str, JSON]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bytes": self.nbytes,
            "shard": self.shard or None,
            "stats": self.stats.to_dict() if self.stats else None,
        }


def inspect_checkpoint(
    source: str | os.PathLike[str],
    pattern: str | None = None,
    *,
    stats: bool = False,
    key: str = "",
) -> list[InspectRow]:
    """The tensors of a checkpoint (optionally only those matching `pattern`, a rule's
    name pattern: glob or `re:`; a `type:` one is a RuleError (a usage error)), reading a tensor only when `stats` asks for it. `key`:
    the state's dotted path inside a torch training checkpoint (`--key`)."""
    wanted = _matcher(pattern)
    with open_checkpoint(source, key=key) as ckpt:
        stored = ckpt.file_tensors()
        if stored is not None:  # safetensors: no torch
            return [_raw_row(t, stats) for t in stored if wanted(t.info.name)]
        return _torch_rows(ckpt, wanted, stats)


def _matcher(pattern: str | None) -> Callable[[str], bool]:
    """Whether a name is listed (the rules' pattern language imports torch: only with one)."""
    if not pattern:
        return lambda name: True
    from reinit.rules import parse_pattern

    pat = parse_pattern(pattern)
    if pat.module_types:  # it would match nothing, as if the checkpoint had no such module
        raise RuleError(
            f"--filter {pattern}: selecting by module type needs a model, which inspect does "
            "not take; give a glob or re: pattern (e.g. '*.attention.*')"
        )
    return lambda name: pat.match(name) is not None


def _raw_row(t: FileTensor, stats: bool) -> InspectRow:
    info = t.info
    st = _raw_stats(t) if stats else None
    return InspectRow(info.name, info.shape, CODE_NAMES[info.code], info.nbytes, t.shard, st)


def _raw_stats(t: FileTensor) -> Stats:
    """`tensor_stats` of the stored bytes, fed in the same steps (the same numbers)."""
    acc = StatsAccumulator(t.info.code)
    numel = math.prod(t.info.shape)
    step = TORCH_STEP * (t.info.nbytes // numel) if numel else 0
    for start in range(t.info.start, t.info.end, max(step, 1)):
        buf = bytearray(min(step, t.info.end - start))
        pread_into(t.fd, buf, start, t.path)
        acc.add_bytes(buf)
    return acc.result()


def _torch_rows(ckpt: Checkpoint, wanted: Callable[[str], bool], stats: bool) -> list[InspectRow]:
    from reinit.io.formats import dtype_name
    from reinit.report.stats import tensor_stats

    rows = []
    for r in ckpt.refs():
        if not wanted(r.name):
            continue
        st = tensor_stats(ckpt.read(r.name)) if stats else None
        rows.append(InspectRow(r.name, r.shape, dtype_name(r.dtype), r.nbytes, r.shard, st))
    return rows
