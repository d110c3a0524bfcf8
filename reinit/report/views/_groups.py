"""Tensors grouped by kind (docs/guide/report.md "Terminal report by kind"): a real model changes 40-700
tensors, and a reader wants one row per (kind, shape, action, rule), not one per tensor. The
renderers (terminal, Markdown, --dry-run) share the grouping and the label helpers here."""

from __future__ import annotations

__all__ = [
    "KindGroup",
    "common_prefix",
    "fit_items",
    "flag_counts",
    "group_by_kind",
    "layer_range",
    "span",
    "wrap_label",
]

import textwrap
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from reinit.report.flags import kind_of, layer_index
from reinit.report.views._text import fmt

T = TypeVar("T")


@dataclass(frozen=True)
class KindGroup(Generic[T]):
    """The members (report or plan entries, in their order) that share a kind and a key."""

    kind: str
    key: tuple[Hashable, ...]
    members: tuple[T, ...]


def group_by_kind(
    items: Iterable[T], name: Callable[[T], str], key: Callable[[T], tuple[Hashable, ...]]
) -> list[KindGroup[T]]:
    """Group `items` by (kind of `name(item)`, `key(item)`), groups in order of first
    appearance."""
    groups: dict[tuple[Hashable, ...], list[T]] = {}
    for item in items:
        groups.setdefault((kind_of(name(item)), *key(item)), []).append(item)
    return [KindGroup(str(k[0]), k[1:], tuple(m)) for k, m in groups.items()]


def layer_range(names: Iterable[str]) -> str:
    """The layer numbers of the names as runs: `20-23`, `0,2,5-7`; `-` when none has one."""
    nums = sorted({n for n in (layer_index(x) for x in names) if n is not None})
    if not nums:
        return "-"
    runs: list[list[int]] = []
    for n in nums:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def span(values: Iterable[float | None]) -> str:
    """`min–max` of the values to 3 significant digits, one value when they print alike."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    lo, hi = fmt(min(xs)), fmt(max(xs))
    return lo if lo == hi else f"{lo}–{hi}"


def flag_counts(flags: Sequence[Sequence[str]]) -> str:
    """`off_reference×4, outlier×1` from the members' flags: each flag once, with how many
    members carry it (no count for a group of one tensor)."""
    counts = Counter(f for fs in flags for f in fs)
    return ", ".join(f if len(flags) == 1 else f"{f}×{n}" for f, n in counts.items())


def common_prefix(labels: Sequence[str]) -> str:
    """The dotted parts every label starts with, up to its last layer number where it has
    one (`model.layers.*.`), keeping at least the last part of each label; empty when there is
    nothing worth dropping (under 4 characters, or fewer than 3 rows)."""
    if len(labels) < 3:
        return ""
    split = [x.split(".") for x in labels]
    n = 0
    while all(len(p) > n + 1 for p in split) and len({p[n] for p in split}) == 1:
        n += 1
    if len({tuple(p[n:]) for p in split}) < 2:
        return ""  # the rows would all read alike
    parts = split[0][:n]
    stack = [i for i, p in enumerate(parts) if p == "*" or p.isdigit()]
    if stack:  # `model.layers.*.`: the block's parts stay together after the layer number
        parts = parts[: stack[-1] + 1]
    prefix = "".join(p + "." for p in parts)
    return prefix if len(prefix) >= 4 else ""


def wrap_label(label: str, width: int) -> list[str]:
    """The label on as many lines of `width` as it needs, broken after a dot (never elided:
    a name cut into fragments cannot be read); a part longer than the width is split."""
    width = max(width, 1)
    lines: list[str] = []
    current = ""
    for part in label.split("."):
        piece = part if not current else "." + part
        if len(current) + len(piece) <= width:
            current += piece
            continue
        if current:
            lines.append(current)
            piece = "." + part if lines else part
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        current = piece
    lines.append(current)
    return lines


def fit_items(items: Sequence[str], width: int) -> list[str]:
    """`a, b, c` on as many lines of `width` as it needs, broken between items; an item longer
    than a line (a sentence, such as the summary's "no reference scale … pass --model …") is
    broken between its words."""
    lines = [""]
    for item in items:
        piece = f"{lines[-1]}, {item}" if lines[-1] else item
        if len(piece) > width and lines[-1]:
            lines[-1] += ","
            lines.append(item)
        else:
            lines[-1] = piece
        if len(lines[-1]) > width:
            lines[-1:] = textwrap.wrap(
                lines[-1], width, break_long_words=False, break_on_hyphens=False
            )
    return lines
