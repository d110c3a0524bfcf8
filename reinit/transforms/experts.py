"""Mixture-of-experts layouts: E per-expert tensors stacked into one `[E, ...]` tensor
(`stack=`, transformers 5's module layout: `mlp.experts.gate_up_proj` `[E, 2I, H]`), and one
expert taken out of a stacked tensor (`expert=E`, the reverse). Both copy bytes as they are.
Pure functions; a shape they cannot serve raises `TransplantError` with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

from reinit.errors import TransplantError
from reinit.transforms.fuse import cat_shape, concat

__all__ = ["select_expert", "select_shape", "stack_experts", "stack_shape"]

Shape = tuple[int, ...]
T = TypeVar("T")


def _groups(items: Sequence[T], experts: int) -> list[Sequence[T]]:
    if experts < 1 or len(items) % experts:
        raise TransplantError(f"stack=: {len(items)} source tensors for {experts} experts")
    per = len(items) // experts
    return [items[i * per : (i + 1) * per] for i in range(experts)]


def stack_shape(shapes: Sequence[Shape], experts: int, dim: int) -> Shape:
    """`[experts, *one expert's shape]`; each expert's tensors joined along `dim` first (as
    cat=), and every expert of one shape."""
    per = [cat_shape(list(g), dim) if len(g) > 1 else tuple(g[0]) for g in _groups(shapes, experts)]
    if len(set(per)) > 1:
        shown = ", ".join(str(list(s)) for s in per)
        raise TransplantError(f"stack=: the experts differ in shape ({shown})")
    return (experts, *per[0])


def stack_experts(ts: Sequence[torch.Tensor], experts: int, dim: int) -> torch.Tensor:
    """The experts' tensors (expert after expert; several per expert joined along `dim`)
    stacked along a new dim 0."""
    stack_shape([tuple(t.shape) for t in ts], experts, dim)
    per = [concat(list(g), dim) if len(g) > 1 else g[0] for g in _groups(ts, experts)]
    dtypes = {t.dtype for t in per}
    if len(dtypes) > 1:
        raise TransplantError(f"stack= sources have different dtypes ({sorted(map(str, dtypes))})")
    return torch.stack(per, dim=0)


def select_shape(shape: Shape, expert: int) -> Shape:
    """The shape of one expert of a stacked `[E, ...]` source."""
    if not shape or expert >= shape[0]:
        raise TransplantError(
            f"expert={expert}: the source {list(shape)} has "
            f"{shape[0] if shape else 0} expert(s) along dim 0 (counted from 0)"
        )
    return tuple(shape[1:])


def select_expert(t: torch.Tensor, expert: int) -> torch.Tensor:
    """Expert `expert` of a stacked source, as its own contiguous tensor."""
    select_shape(tuple(t.shape), expert)
    return t[expert].contiguous()
