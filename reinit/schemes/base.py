"""What a scheme is: a fill function, its arguments in torch's order, its std formula, and the
shapes it can take. Schemes are plain data in one registry (see `registry.py`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reinit.errors import SchemeError

REQUIRED = object()  # sentinel default: the argument must be given

Shape = tuple[int, ...]
Args = Mapping[str, Any]


def compute_fans(shape: Sequence[int]) -> tuple[int, int] | None:
    """torch's fans: fan_in = size(1)·∏size[2:], fan_out = size(0)·∏size[2:]; None under 2-D."""
    if len(shape) < 2:
        return None
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float" | "int" | "str" | "gain" | "nonlinearity" | "mode"
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None
    help: str = ""


@dataclass(frozen=True)
class Scheme:
    """One initialization scheme.

    `fill(t, generator, args)` fills a float32/float64 tensor in place (the reproducibility
    contract of DESIGN §3 fixes the generator and the dtype); `std(shape, args)` is the
    theoretical std of the result, or None where it is undefined (e.g. zero fan)."""

    name: str
    params: tuple[Param, ...]
    fill: Callable[[torch.Tensor, torch.Generator, Args], None]
    std: Callable[[Shape, Args], float | None]
    formula: str
    doc: str
    # True when the values depend on the shape only through (fan_in, fan_out): then a model's
    # own fans (ConvTranspose, grouped conv, HF Conv1D) can replace torch's shape convention.
    uses_fans: bool = False
    can_take: Callable[[Shape, Args], str | None] = field(default=lambda shape, args: None)
    kurtosis: float = 3.0  # of the value distribution; sets std_off's sampling tolerance
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoundScheme:
    """A scheme with its arguments bound (defaults filled in), as a rule names it."""

    scheme: Scheme
    args: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return self.scheme.name

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def describe(self) -> str:
        if not self.args:
            return self.scheme.name
        inner = ", ".join(f"{k}={v}" for k, v in self.args)
        return f"{self.scheme.name}({inner})"

    def expected_std(self, shape: Shape) -> float | None:
        try:
            return self.scheme.std(shape, self.kwargs)
        except (ZeroDivisionError, ValueError):
            return None


def bind(scheme: Scheme, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BoundScheme:
    """Bind positional and keyword arguments as torch does (same names, order, defaults)."""
    names = [p.name for p in scheme.params]
    if len(args) > len(names):
        raise SchemeError(
            f"{scheme.name} takes at most {len(names)} argument(s) ({', '.join(names) or 'none'}), "
            f"got {len(args)}"
        )
    values: dict[str, Any] = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise SchemeError(
                f"{scheme.name} has no argument {key!r}; its arguments: {', '.join(names) or 'none'}"
            )
        if key in values:
            raise SchemeError(f"{scheme.name}: argument {key!r} given twice")
        values[key] = value
    bound: list[tuple[str, Any]] = []
    for p in scheme.params:
        if p.name in values:
            bound.append((p.name, _coerce(scheme.name, p, values[p.name])))
        elif p.default is REQUIRED:
            raise SchemeError(f"{scheme.name} needs argument {p.name!r}, e.g. {scheme.name}(...)")
        else:
            bound.append((p.name, p.default))
    return BoundScheme(scheme, tuple(bound))


def _coerce(scheme: str, p: Param, value: Any) -> Any:
    from reinit.schemes.gain import NONLINEARITIES, calculate_gain

    def bad(expected: str) -> SchemeError:
        return SchemeError(f"{scheme}: argument {p.name!r} must be {expected}, got {value!r}")

    if p.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if p.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if p.kind == "gain":
        if isinstance(value, str):
            calculate_gain(value)  # validates, keeps the name for provenance
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number or a nonlinearity name")
        return float(value)
    if p.kind == "nonlinearity":
        if not isinstance(value, str) or value not in NONLINEARITIES:
            raise bad(f"one of {', '.join(NONLINEARITIES)}")
        return value
    if p.choices is not None:
        if not isinstance(value, str) or value not in p.choices:
            raise bad(f"one of {', '.join(p.choices)}")
        return value
    if not isinstance(value, str):
        raise bad("a word")
    return value
