"""Checks and fan arithmetic that several scheme families share: which shapes a scheme can
take (`needs_2d_or_more`, `needs_exactly_2d`), which argument values are positive, torch's fans
as a pair, and the one `gain` parameter (a number or a nonlinearity name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from reinit.schemes.base import Args, Param, Shape, compute_fans

__all__ = [
    "GAIN",
    "ShapeCheck",
    "ValueCheck",
    "fans",
    "needs_2d_or_more",
    "needs_exactly_2d",
    "positive",
]

ShapeCheck: TypeAlias = Callable[[Shape, Args], str | None]
ValueCheck: TypeAlias = Callable[[Args], str | None]

GAIN = Param("gain", "gain", 1.0, help="number or nonlinearity name")


def fans(shape: Shape) -> tuple[int, int]:
    """torch's (fan_in, fan_out); a `ValueError` under 2-D (a std formula then has no value)."""
    pair = compute_fans(shape)
    if pair is None:
        raise ValueError("no fans under 2-D")
    return pair


def needs_2d_or_more(name: str) -> ShapeCheck:
    """`can_take` of a scheme that computes fans."""

    def check(shape: Shape, args: Args) -> str | None:
        if len(shape) < 2:
            return f"{name} needs a tensor of 2 or more dims to compute fans; this one is {len(shape)}-D"
        return None

    return check


def needs_exactly_2d(name: str) -> ShapeCheck:
    """`can_take` of a scheme defined on matrices only."""

    def check(shape: Shape, args: Args) -> str | None:
        if len(shape) != 2:
            return f"{name} needs a 2-D tensor; this one is {len(shape)}-D"
        return None

    return check


def positive(*names: str) -> ValueCheck:
    """`validate` refusing a given (not None) argument of `names` that is not positive."""

    def check(args: Args) -> str | None:
        for n in names:
            v = args.get(n)
            if v is not None and v <= 0:
                return f"{n} must be positive, got {v}"
        return None

    return check
