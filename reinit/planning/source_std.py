"""The std of a transplant's source tensor(s): the reference its result is judged by
(DESIGN §8), measured while the planner holds them for the transform."""

from __future__ import annotations

__all__ = ["pooled_std"]

import math
from collections.abc import Sequence

import torch


def pooled_std(tensors: Sequence[torch.Tensor]) -> float | None:
    """The population std of all finite values of float `tensors` together (a `cat=`'s parts
    pooled), in float64, without concatenating them."""
    n, total, squares = 0, 0.0, 0.0
    for t in tensors:
        if not t.is_floating_point():
            return None
        x = t.detach().to(torch.float64).flatten()
        x = x[torch.isfinite(x)]
        n, total, squares = n + x.numel(), total + float(x.sum()), squares + float((x * x).sum())
    if n < 2:
        return None
    mean = total / n
    return math.sqrt(max(squares / n - mean * mean, 0.0))
