"""Strict JSON: non-finite floats written as the strings "NaN"/"Infinity"/"-Infinity" (never
bare NaN, which most JSON parsers refuse), and read back as floats."""

from __future__ import annotations

__all__ = ["JSON", "NONFINITE", "dumps", "json_safe", "number"]

import json
import math
from typing import TypeAlias

#: A JSON value as Python holds it: what every `to_dict` of the report returns.
JSON: TypeAlias = "None | bool | int | float | str | list[JSON] | dict[str, JSON]"

NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_safe(obj: JSON) -> JSON:
    """`obj` with every non-finite float written as a string ("NaN", "Infinity", "-Infinity"):
    strict JSON has no such numbers, and Python's json would emit bare NaN, which other parsers
    reject. Finite numbers stay numbers; `number()` reads the strings back."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return NONFINITE[repr(obj)]
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):  # a tuple too, for callers outside the type
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: JSON, indent: int | None = 2) -> str:
    """Strict JSON of `obj` (see `json_safe`): never a bare NaN/Infinity."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def number(v: JSON) -> float | None:
    """A number of our JSON back as a float: "NaN"/"Infinity"/"-Infinity" strings included;
    anything else is not one of our numbers (ValueError)."""
    if v is None:
        return None
    if isinstance(v, str) and v in NONFINITE.values():
        return float(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise ValueError(f"not a number: {v!r}")
