"""Partial re-initialization: a scheme applied to chosen rows or columns of a tensor, the
rest kept as it is. Any scheme rule takes `rows=SEL` or `cols=SEL` (and `group=TEMPLATE`):

- `SEL` is `START:STOP` (an index range along dim 0 for rows, dim 1 for cols) or `random(R)`
  (a fraction R of the indices, `round(R·n)` of them, drawn without replacement);
- `group=` names the key the random indices are drawn from (`{name}`, `{1}`, … as in key
  templates; default the tensor's own name): the indices are
  `torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, KEY)))[:k]`, so
  tensors with the same key get the same indices (drop-upcycling: one expert's gate/up rows
  and down columns), tensors with another key other indices.

The scheme is drawn for the whole tensor from the tensor's own generator (as without
`rows=`/`cols=`, so `default` and every scheme keep their per-tensor seeding) and only the
chosen indices are written."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from reinit.errors import SchemeError
from reinit.schemes import seed_for
from reinit.schemes.templates import fill_template

__all__ = ["PART_ARGS", "Part", "apply_part", "parse_part", "part_indices", "why_part_cannot_take"]

PART_ARGS = ("rows", "cols", "group")

_RANGE = re.compile(r"(\d+):(\d+)\Z")
_RANDOM = re.compile(r"random\(\s*([0-9.eE+-]+)\s*\)\Z")


@dataclass(frozen=True)
class Part:
    """Which indices along `dim` (0: rows, 1: cols) a rule re-initializes."""

    dim: int
    start: int = 0
    stop: int = 0  # a range when fraction is None
    fraction: float | None = None  # random(R)
    group: str | None = None  # the key template the random indices are drawn from

    @property
    def text(self) -> str:
        what = "rows" if self.dim == 0 else "cols"
        sel = (
            f"random({self.fraction:g})"
            if self.fraction is not None
            else f"{self.start}:{self.stop}"
        )
        return f"{what}={sel}" + (f", group={self.group}" if self.group else "")


def parse_part(kw: Mapping[str, object], where: str) -> Part | None:
    """The `rows=`/`cols=`/`group=` arguments of a scheme rule, checked (None: the whole
    tensor)."""
    given = [a for a in ("rows", "cols") if a in kw]
    if not given:
        if "group" in kw:
            raise SchemeError("group= only applies with rows=random(R) or cols=random(R)")
        return None
    if len(given) > 1:
        raise SchemeError("give rows= or cols=, not both (use two rules)")
    sel = str(kw[given[0]]).strip()
    dim = 0 if given[0] == "rows" else 1
    group = str(kw["group"]) if "group" in kw else None
    m = _RANGE.match(sel)
    if m and any(len(g) > 18 for g in m.groups()):  # past any tensor's size (and int()'s cap)
        raise SchemeError(
            f"{given[0]}={sel[:40]}…: an index of {max(map(len, m.groups()))} "
            "digits is past any tensor's size"
        )
    if m and int(m.group(1)) < int(m.group(2)):
        if group is not None:
            raise SchemeError("group= only applies with random(R)")
        return Part(dim, int(m.group(1)), int(m.group(2)))
    r = _RANDOM.match(sel)
    if r:
        try:
            fraction = float(r.group(1))
        except ValueError:
            fraction = -1.0
        if 0 < fraction <= 1:
            return Part(dim, fraction=fraction, group=group)
    raise SchemeError(
        f"{given[0]}={sel!r} must be START:STOP (START < STOP) or random(R) with 0 < R <= 1, "
        f"e.g. {given[0]}=0:128 or {given[0]}=random(0.5)"
    )


def why_part_cannot_take(part: Part, shape: Sequence[int]) -> str | None:
    """Why `part` does not fit a tensor of `shape` (too few dims, a range past the dim), or
    None; the planner skips or refuses the tensor with it, before anything is written."""
    what = "rows" if part.dim == 0 else "cols"
    if len(shape) <= part.dim:
        return f"{what}= needs a tensor of {part.dim + 1} or more dims; this one is {len(shape)}-D"
    if part.fraction is None and part.stop > shape[part.dim]:
        return f"{part.text} runs past dim {part.dim}'s size {shape[part.dim]}"
    return None


def part_indices(
    part: Part, size: int, seed: int, name: str, captures: Sequence[str] = ()
) -> torch.Tensor:
    """The indices (sorted, int64) the part takes from a dim of `size`."""
    if part.fraction is None:
        if part.stop > size:
            raise SchemeError(f"{part.text} runs past the dim's size {size}")
        return torch.arange(part.start, part.stop)
    key = (
        name
        if part.group is None
        else fill_template(part.group, name, captures, "group ", SchemeError)
    )
    g = torch.Generator().manual_seed(seed_for(seed, key))
    k = round(part.fraction * size)
    return torch.randperm(size, generator=g)[:k].sort().values


def apply_part(
    before: torch.Tensor, drawn: torch.Tensor, idx: torch.Tensor, dim: int
) -> torch.Tensor:
    """`before` with the indices `idx` along `dim` taken from `drawn`."""
    if before.dim() <= dim:
        raise SchemeError(f"{'cols' if dim else 'rows'}= needs a tensor with {dim + 1}+ dims")
    out, new = before.clone(), drawn.to(before.dtype)
    if out.is_floating_point() and out.element_size() == 1:  # float8: no index_copy kernel,
        out.view(torch.uint8).index_copy_(dim, idx, new.view(torch.uint8).index_select(dim, idx))
        return out  # so its bytes are copied
    out.index_copy_(dim, idx, new.index_select(dim, idx))
    return out
