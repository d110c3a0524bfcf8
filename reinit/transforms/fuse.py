"""Split and join: a chunk of one source tensor along a dim (`chunk=I/N`, `chunk=START:STOP`:
fused `qkv` -> `q`/`k`/`v`, grouped-query included) and several source tensors concatenated
(`cat=K1;K2;K3`: the reverse). Pure functions; a shape they cannot serve raises
`TransplantError` with the reason (the planner adds the rule and the tensor)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reinit.errors import TransplantError
from reinit.transforms.spec import Chunk

__all__ = ["cat_shape", "chunk_bounds", "chunk_shape", "concat", "take_chunk"]

Shape = tuple[int, ...]


def _check_dim(shape: Shape, dim: int, what: str) -> None:
    if dim >= len(shape):
        raise TransplantError(
            f"{what} along dim={dim}, but the tensor {list(shape)} has {len(shape)} dim(s)"
        )


def chunk_bounds(chunk: Chunk, size: int, dim: int = 0) -> tuple[int, int]:
    """The index range `[start, stop)` a chunk takes from a dim of `size`."""
    if chunk.count:
        if size % chunk.count:
            raise TransplantError(
                f"chunk={chunk.text}: dim {dim} has size {size}, which does not split into "
                f"{chunk.count} equal chunks; give the range as chunk=START:STOP"
            )
        step = size // chunk.count
        return chunk.index * step, (chunk.index + 1) * step
    if chunk.stop > size:
        raise TransplantError(f"chunk={chunk.text} runs past dim {dim}'s size {size}")
    return chunk.start, chunk.stop


def chunk_shape(shape: Shape, chunk: Chunk, dim: int) -> Shape:
    """The shape of `take_chunk`'s result, without reading anything."""
    _check_dim(shape, dim, f"chunk={chunk.text}")
    a, b = chunk_bounds(chunk, shape[dim], dim)
    return shape[:dim] + (b - a,) + shape[dim + 1 :]


def take_chunk(t: torch.Tensor, chunk: Chunk, dim: int) -> torch.Tensor:
    """The chunk's values, as their own contiguous tensor."""
    _check_dim(tuple(t.shape), dim, f"chunk={chunk.text}")
    a, b = chunk_bounds(chunk, t.shape[dim], dim)
    return t.narrow(dim, a, b - a).contiguous()


def cat_shape(shapes: Sequence[Shape], dim: int) -> Shape:
    """The shape of `concat`'s result: every other dim must agree."""
    first = shapes[0]
    for s in shapes:
        _check_dim(s, dim, "cat=")
        if len(s) != len(first) or s[:dim] + s[dim + 1 :] != first[:dim] + first[dim + 1 :]:
            shown = ", ".join(str(list(x)) for x in shapes)
            raise TransplantError(
                f"cat= along dim={dim} needs every other dim equal; the sources are {shown}"
            )
    return first[:dim] + (sum(s[dim] for s in shapes),) + first[dim + 1 :]


def concat(ts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """The tensors joined along `dim` (all of one dtype)."""
    cat_shape([tuple(t.shape) for t in ts], dim)
    dtypes = {t.dtype for t in ts}
    if len(dtypes) > 1:
        raise TransplantError(
            f"cat= sources have different dtypes ({', '.join(sorted(map(str, dtypes)))})"
        )
    return torch.cat(list(ts), dim=dim)
