"""`reinit inspect`: the tensors of a checkpoint, optionally filtered, with statistics."""

from __future__ import annotations

__all__ = ["InspectRow", "inspect_checkpoint"]

import os
from dataclasses import dataclass

from reinit.io.formats import dtype_name
from reinit.planning.session import open_source
from reinit.report.jsonio import JSON
from reinit.report.stats import Stats, tensor_stats
from reinit.rules import parse_pattern


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
    pattern: glob, `re:` or `type:`), reading a tensor only when `stats` asks for it. `key`:
    the state's dotted path inside a torch training checkpoint (`--key`)."""
    pat = parse_pattern(pattern) if pattern else None
    with open_source(source, key=key) as ckpt:
        rows = []
        for r in ckpt.refs():
            if pat is not None and pat.match(r.name) is None:
                continue
            st = tensor_stats(ckpt.read(r.name)) if stats else None
            rows.append(InspectRow(r.name, r.shape, dtype_name(r.dtype), r.nbytes, r.shard, st))
        return rows
