"""The std of a transplant's source tensor(s): the reference its result is judged by
(DESIGN §8), measured while the planner holds them for the transform."""

from __future__ import annotations

__all__ = ["pooled_std"]

import math
from collections.abc import Sequence

import torch

CHUNK = 1 << 20  # values summed at a time: float64 copies stay at 8 MB, whatever the tensor


def pooled_std(tensors: Sequence[torch.Tensor]) -> float | None:
    """The population std of all finite values of float `tensors` together (a `cat=`'s parts
    pooled), summed in float64 chunks of `CHUNK` values (no whole-tensor copy), without
    concatenating them; None for a non-float tensor or fewer than 2 values."""
    n, total, squares = 0, 0.0, 0.0
    for t in tensors:
        if not t.is_floating_point():
            return None
        for chunk in t.detach().reshape(-1).split(CHUNK):
            x = chunk.to(torch.float64)
            x = x[torch.isfinite(x)]
            n += x.numel()
            total += float(x.sum())
            squares += float((x * x).sum())
    if n < 2:
        return None
    mean = total / n
    return math.sqrt(max(squares / n - mean * mean, 0.0))
