"""The config fields a position table's size sets, for `config_update` (docs/guide/surgery.md,
"config.json follows the surgery").

A learned position table's rows are the model's positions, but the config says so in three
ways, and the output's config.json must say the new size in the one its model reads:
- a sequence model's `max_position_embeddings` (GPT-2: `n_positions`) is the table's rows
  (BERT's `position_embeddings.weight`, GPT-2's `wpe.weight`, CLIP text's
  `position_embedding.weight`);
- BART-style tables (`embed_positions.weight` of the model types in `_OFFSET_2`) hold 2 rows
  more than `max_position_embeddings` (transformers' `...LearnedPositionalEmbedding`, offset 2),
  and the encoder's and decoder's tables share the one field;
- a vision model's (ViT, CLIP vision: a config with `image_size` and `patch_size`) positions
  are its class token and a square grid of patches, so a table of `1 + g*g` positions is an
  `image_size` of `g * patch_size`.
A composite config (CLIP) keeps each tower's fields in its own section (`vision_config`,
`text_config`), which the tensors under `vision_model.` / `text_model.` follow.
Where no value can describe the tables (a grid that is not square, two tables that differ) a
note says what transformers will do and how to set the field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

__all__ = ["follow_positions"]

_TABLE = re.compile(r"(?:^|\.)(?:position_embeddings?|wpe|embed_positions)(?:\.weight)?$")
_LENGTH_KEYS = ("max_position_embeddings", "n_positions")
#: Model types whose learned position table keeps 2 rows before position 0 (transformers'
#: `self.offset = 2`), so the config's `max_position_embeddings` is its rows less 2.
_OFFSET_2 = frozenset({"bart", "mbart", "mvp", "opt", "plbart", "biogpt", "trocr"})
_SECTIONS = (("vision_model.", "vision_config"), ("text_model.", "text_config"))
#: Tokens before the patch grid tried in this order, as `from(..., resample=)` does (1: a class
#: token, ViT's and CLIP's; 0: none; 2: DeiT's class and distillation tokens).
_PREFIXES = (1, 0, 2)

_Tables = list[tuple[str, Sequence[int]]]


def _section(config: Mapping[str, object], name: str) -> str:
    """The composite config's section a tensor's fields live in ("" for the top level)."""
    for segment, key in _SECTIONS:
        if (name.startswith(segment) or f".{segment}" in name) and isinstance(
            config.get(key), dict
        ):
            return key
    return ""


def _positions(shape: Sequence[int]) -> int | None:
    """The positions of a `[N, d]` or `[1, N, d]` table; None for another shape."""
    if len(shape) == 2:
        return shape[0]
    if len(shape) == 3 and shape[0] == 1:
        return shape[1]
    return None


def follow_positions(config: dict[str, object], shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Set, in place, the position fields the output's position tables imply; one note per
    field changed or per table no field can describe."""
    groups: dict[str, _Tables] = {}
    for name, shape in shapes.items():
        if _TABLE.search(name):
            groups.setdefault(_section(config, name), []).append((name, shape))
    notes: list[str] = []
    for key, tables in groups.items():
        section: dict[str, object] = dict(config[key]) if key else config  # type: ignore[call-overload]
        where = f"{key}." if key else ""
        if "image_size" in section and "patch_size" in section:
            notes.extend(_follow_grid(section, tables, where))
        else:
            notes.extend(_follow_length(section, tables, where, config.get("model_type")))
        if key and section != config[key]:
            config[key] = section
    return notes


def _one_count(tables: _Tables, offset: int, where: str, field: str) -> tuple[int | None, str]:
    """The positions every table gives (rows less `offset`), or None and a note when they
    differ; None and no note when no table has a table's shape."""
    counts = {n: p - offset for n, s in tables for p in [_positions(s)] if p is not None}
    values = set(counts.values())
    if len(values) <= 1:
        return (values.pop() if values else None), ""
    shown = ", ".join(f"{n} {c + offset}" for n, c in sorted(counts.items()))
    return None, (
        f"config.json: the position tables have different rows ({shown}) and one "
        f"{where}{field} describes them all: transformers will not load this; resize them alike"
    )


def _put(section: dict[str, object], where: str, key: str, value: object, why: str) -> list[str]:
    old = section.get(key, "unset")
    if old == value:
        return []
    section[key] = value
    return [f"config.json: {where}{key} {json.dumps(old)} -> {json.dumps(value)} ({why})"]


def _follow_length(
    section: dict[str, object], tables: _Tables, where: str, top_type: object
) -> list[str]:
    """`max_position_embeddings` / `n_positions` from a sequence model's table rows."""
    field = next((k for k in _LENGTH_KEYS if k in section), None)
    if field is None:
        return []
    model_type = section.get("model_type", top_type)
    offset = 2 if model_type in _OFFSET_2 else 0
    learned = [
        (n, s) for n, s in tables if offset or not n.endswith("embed_positions.weight")
    ]  # another model's embed_positions (Whisper's) is counted by fields of its own
    count, note = _one_count(learned, offset, where, field)
    if count is None:
        return [note] if note else []
    why = "rows of the learned position table" + (
        f", less its offset of {offset}" if offset else ""
    )
    return _put(section, where, field, count, why)


def _follow_grid(section: dict[str, object], tables: _Tables, where: str) -> list[str]:
    """`image_size` from a vision model's positions: a class token and a square patch grid."""
    count, note = _one_count(tables, 0, where, "image_size")
    if count is None:
        return [note] if note else []
    patch, image = section["patch_size"], section["image_size"]
    side = next(
        (g for p in _PREFIXES if count >= p for g in [math.isqrt(count - p)] if g * g == count - p),
        None,
    )
    if side is None or not _is_size(patch):
        return [
            f"config.json: {count} positions are no class token and square grid of patches, "
            f"which {where}image_size and {where}patch_size describe: transformers will not "
            f"load this; resize the table to 1 + g*g positions (then image_size is g * "
            f"patch_size), or set both with --config"
        ]
    if isinstance(patch, list):
        value: object = [side * int(p) for p in patch]
    elif isinstance(image, list):
        value = [side * int(patch), side * int(patch)]  # type: ignore[call-overload]
    else:
        value = side * int(patch)  # type: ignore[call-overload]
    return _put(section, where, "image_size", value, f"a {side}x{side} grid of patches")


def _is_size(value: object) -> bool:
    """An int, or a list of two ints (a `patch_size` as transformers' vision configs hold it)."""
    if isinstance(value, list):
        return len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
