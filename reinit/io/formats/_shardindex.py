"""The shard index of a Hugging Face folder (`*.safetensors.index.json`,
`pytorch_model.bin.index.json`) and the one rule that ties it to its shards, shared by the
reader (`apply`, `inspect`, `report`, `from()`) and by `reinit verify`, so that every command
accepts and refuses the same folders:

- the index is a JSON object whose `weight_map` maps each tensor name (once: a name listed twice
  is refused) to a shard file with a plain relative name inside the folder (`confine`);
- each shard holds exactly the tensors the index puts in it: a tensor the index puts in another
  shard (a tensor in two shards) or does not list at all is refused, as is an index entry its
  shard lacks. Nothing is silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reinit.errors import CheckpointError
from reinit.io.confine import check_relname
from reinit.io.formats._safetensors_header import DuplicateKey, no_duplicate_keys
from reinit.io.jsonfile import read_text_file
from reinit.limits import MAX_INDEX_BYTES, MAX_TOTAL_TENSORS
from reinit.text import one_line

__all__ = ["ShardIndex", "check_shard", "parse_index", "read_index"]


@dataclass(frozen=True)
class ShardIndex:
    """A parsed, validated index: `weight_map` tensor name -> shard name (plain relative)."""

    where: str  # the index as named in messages
    weight_map: Mapping[str, str]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    by_shard: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def shards(self) -> list[str]:
        return sorted(self.by_shard)

    def names_in(self, shard: str) -> frozenset[str]:
        return self.by_shard.get(shard, frozenset())


def parse_index(text: str, where: str) -> ShardIndex:
    """Parse and validate an index's text; every defect is a `CheckpointError` naming `where`
    (and the tensor and shard where one is at fault)."""
    try:
        doc = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except DuplicateKey as d:
        raise CheckpointError(
            f"{where}: the index lists {d.key!r} twice; a name must live in one shard: "
            "fix or regenerate the index"
        ) from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{where}: unreadable index ({one_line(e)})") from None
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in wm.items()
    ):
        raise CheckpointError(f"{where}: index has no valid weight_map of name -> shard file")
    if len(wm) > MAX_TOTAL_TENSORS:
        raise CheckpointError(
            f"{where}: the index lists {len(wm):,} tensors, over reinit's limit of "
            f"{MAX_TOTAL_TENSORS:,} for a checkpoint (all its shards together)"
        )
    for name, shard in wm.items():
        check_relname(shard, where, f"the index puts tensor '{name}' in shard")
    meta = doc.get("metadata")
    groups: dict[str, set[str]] = {}
    for name, shard in wm.items():
        groups.setdefault(shard, set()).add(name)
    by_shard = {s: frozenset(ns) for s, ns in groups.items()}
    return ShardIndex(where, dict(wm), dict(meta) if isinstance(meta, dict) else {}, by_shard)


def read_index(path: str | Path, where: str) -> ShardIndex:
    text = read_text_file(path, where, MAX_INDEX_BYTES, CheckpointError)
    return parse_index(text, where)


def check_shard(index: ShardIndex, shard: str, held: Iterable[str]) -> None:
    """Refuse a shard whose tensors are not exactly those the index puts in it."""
    held_set = set(held)
    missing = index.names_in(shard).difference(held_set)
    if missing:
        raise CheckpointError(
            f"{index.where}: the index puts '{sorted(missing)[0]}' in {shard}, but that shard "
            "lacks it; the index or the shard is corrupt"
        )
    for name in sorted(held_set):
        owner = index.weight_map.get(name)
        if owner is None:
            raise CheckpointError(
                f"{index.where}: shard {shard} holds '{name}', which the index does not list; "
                "the index or the shard is corrupt: regenerate the index"
            )
        if owner != shard:
            raise CheckpointError(
                f"{index.where}: tensor '{name}' is in shard {shard}, but the index puts it in "
                f"{owner}; a name must live in one shard: regenerate the index"
            )
