"""A tensor's fans as torch computes them, from its shape alone (no torch: the report of a
safetensors file needs them for `fan_in`, `fan_out` and `var_gain`)."""

from __future__ import annotations

__all__ = ["compute_fans"]

import math
from collections.abc import Sequence


def compute_fans(shape: Sequence[int]) -> tuple[int, int] | None:
    """torch's fans: fan_in = size(1)·∏size[2:], fan_out = size(0)·∏size[2:]; None under 2-D."""
    if len(shape) < 2:
        return None
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive
