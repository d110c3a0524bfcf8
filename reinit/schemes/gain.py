"""Gains by nonlinearity name, with torch's values (`torch.nn.init.calculate_gain`), plus
`gelu` and `silu`, which torch does not name.

For gelu and silu the gain is the one that keeps the second moment through the nonlinearity
for a unit normal input: g = 1/√E[f(x)²], x ~ N(0,1) — the definition behind relu's √2
(E[relu(x)²] = 1/2). It is computed (Simpson's rule on [-12, 12], see `second_moment_gain`):
gelu 1.5335, silu 1.6765 (tanh would give 1.5925 by this definition; torch keeps 5/3).

Kept as our own table so that every error can list the valid names, and so that a `gain=`
argument can take a name (`xavier_uniform(gain=tanh)`)."""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from reinit.errors import SchemeError

if TYPE_CHECKING:  # torch is imported only where a gain is measured
    from torch import Tensor

__all__ = [
    "ALIASES",
    "LINEAR_LIKE",
    "NONLINEARITIES",
    "activation",
    "calculate_gain",
    "canonical",
    "gain_value",
    "measure_gain",
    "measure_second_moment_gain",
    "second_moment_gain",
    "torch_sigmoid",
]

LINEAR_LIKE = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)
NONLINEARITIES = (*LINEAR_LIKE, "tanh", "relu", "leaky_relu", "selu", "gelu", "silu")

#: Other names of the same nonlinearities (`swish` is SiLU).
ALIASES = {"swish": "silu"}


def canonical(nonlinearity: str) -> str:
    """The nonlinearity's name as NONLINEARITIES spells it (`Swish` -> `silu`)."""
    if not isinstance(nonlinearity, str):
        raise SchemeError(
            f"a nonlinearity is a name (e.g. 'relu'), got {type(nonlinearity).__name__}"
        )
    name = nonlinearity.strip().lower()
    return ALIASES.get(name, name)


def gelu_scalar(x: float) -> float:
    """GELU, exact (erf) form, as torch.nn.functional.gelu's default."""
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def silu_scalar(x: float) -> float:
    """SiLU (swish): x·sigmoid(x), written to stay finite for large |x|."""
    return x / (1.0 + math.exp(-x)) if x >= 0 else x * math.exp(x) / (1.0 + math.exp(x))


@functools.cache
def second_moment_gain(name: str, steps: int = 4000, half_width: float = 12.0) -> float:
    """1/√E[f(x)²] for x ~ N(0,1), by Simpson's rule on [-12, 12] (the tails beyond carry
    < 1e-30 of the mass): the gain that keeps the second moment through f."""
    f = {"gelu": gelu_scalar, "silu": silu_scalar}[name]
    h = 2 * half_width / steps
    total = 0.0
    for i in range(steps + 1):
        x = -half_width + i * h
        weight = 1 if i in (0, steps) else (4 if i % 2 else 2)
        total += weight * f(x) ** 2 * math.exp(-x * x / 2)
    return 1.0 / math.sqrt(total * h / 3 / math.sqrt(2 * math.pi))


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity; `param` is leaky_relu's negative slope."""
    name = canonical(nonlinearity)
    if name in LINEAR_LIKE:
        return 1.0
    if name == "tanh":
        return 5.0 / 3.0
    if name == "relu":
        return math.sqrt(2.0)
    if name == "selu":
        return 3.0 / 4.0
    if name in ("gelu", "silu"):
        return second_moment_gain(name)
    if name == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise SchemeError(f"leaky_relu's negative slope must be a number, got {slope!r}")
        if not math.isfinite(slope):
            raise SchemeError(f"leaky_relu's negative slope must be finite, got {slope!r}")
        try:
            return math.sqrt(2.0 / (1.0 + float(slope) ** 2))  # torch's formula, to the bit
        except OverflowError:  # slope**2 past float's range: the formula's limit
            return math.sqrt(2.0) / abs(float(slope))
    raise SchemeError(
        f"unknown nonlinearity {nonlinearity!r}{_did_you_mean(nonlinearity)}; use one of: "
        f"{', '.join(NONLINEARITIES)} (or {', '.join(f'{a} = {b}' for a, b in ALIASES.items())})"
    )


def _did_you_mean(nonlinearity: object) -> str:
    """` (did you mean relu?)` for a typo of a known name, else ''."""
    if not isinstance(nonlinearity, str):
        return ""
    close = difflib.get_close_matches(nonlinearity, [*NONLINEARITIES, *ALIASES], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def gain_value(value: object) -> float:
    """A `gain=` argument: a number, or a nonlinearity name (`tanh` -> 5/3)."""
    if isinstance(value, bool):
        raise SchemeError(f"gain must be a number or a nonlinearity name, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return calculate_gain(value)
    raise SchemeError(f"gain must be a number or a nonlinearity name, got {value!r}")


# Elementwise functions for `reinit gain --measure`.
def activation(nonlinearity: str, param: float | None = None) -> Callable[[Tensor], Tensor]:
    import torch.nn.functional as F

    name = canonical(nonlinearity)
    calculate_gain(name, param)  # validates the name
    if name in LINEAR_LIKE and name != "sigmoid":
        return lambda x: x
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "sigmoid": torch_sigmoid,
        "tanh": lambda x: x.tanh(),
        "relu": F.relu,
        "leaky_relu": lambda x: F.leaky_relu(x, 0.01 if param is None else float(param)),
        "selu": F.selu,
        "gelu": F.gelu,
        "silu": F.silu,
    }
    return table[name]


def torch_sigmoid(x: Tensor) -> Tensor:  # a named function keeps `activation` a plain table
    return x.sigmoid()


def measure_gain(nonlinearity: str, param: float | None = None, n: int = 1_000_000) -> float:
    """std(x)/std(f(x)) for x ~ N(0,1), seed 0: the empirical factor by which the
    nonlinearity shrinks the spread of its input (tanh ≈ 1.59 beside its gain 5/3)."""
    import torch

    x = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, scale = _scaled(activation(nonlinearity, param)(x))
    return float(x.std() / y.std()) / scale


def _scaled(y: Tensor) -> tuple[Tensor, float]:
    """`y`, or `y / s` and `s` = max |y| when squares of `y` would overflow float64 (a
    leaky_relu slope of 1e200: its measured gain read 0)."""
    s = float(y.abs().max()) if y.numel() else 0.0
    return (y / s, s) if 1e150 < s < math.inf else (y, 1.0)


def measure_second_moment_gain(
    nonlinearity: str, param: float | None = None, n: int = 1_000_000
) -> float:
    """rms(x)/rms(f(x)) for x ~ N(0,1), seed 0: the gain that keeps the second moment (what
    kaiming's √2 for relu keeps; unlike std, the mean is not taken out)."""
    import torch

    x = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, scale = _scaled(activation(nonlinearity, param)(x))
    return float(x.pow(2).mean().sqrt() / y.pow(2).mean().sqrt()) / scale
