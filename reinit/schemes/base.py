"""What a scheme is: a fill function, its arguments in torch's order, its std formula, and the
shapes it can take. Schemes are plain data in one registry (see `registry.py`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reinit.errors import SchemeError
from reinit.fans import compute_fans
from reinit.io.formats import dtype_name, float_max

__all__ = [
    "Args",
    "BoundScheme",
    "ContextFill",
    "Fill",
    "FillContext",
    "Param",
    "REQUIRED",
    "ReadsFn",
    "Scheme",
    "Shape",
    "StdFormula",
    "bind",
    "compute_fans",
    "context_only",
]

REQUIRED = object()  # sentinel default: the argument must be given

Shape = tuple[int, ...]
# A scheme's bound arguments. Values differ in type by name (a float `std`, a str `mode`, a gain
# that is a number or a name, None for "from the config"); `bind` checks each against its
# `Param.kind`, so a fill reads every value as the kind its Param declares.
Args = Mapping[str, Any]


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float" | "int" | "str" | "gain" | "nonlinearity" | "mode"
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None
    help: str = ""
    # The allowed range of a number (checked when a rule is parsed, exit 2): `low`/`high`
    # bounds, `low_open` makes `low` itself refused. Every float must also be finite.
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    # True when the value lands in the tensor (a bound, a constant, a mean or std): it must
    # then fit the target tensor's dtype, checked at plan time (see `BoundScheme.overflow`).
    in_tensor: bool = False

    def range_text(self) -> str:
        """The allowed range as the error message shows it."""
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high is None else ']'}"

    def check_range(self, scheme: str, value: Any) -> None:
        """Refuse a number outside the declared range (or a non-finite float)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemeError(
                f"{scheme}: argument {self.name!r} must be a finite number in "
                f"{self.range_text()}, got {value}"
            )
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and value > self.high
        if below or above:
            raise SchemeError(
                f"{scheme}: argument {self.name!r} must be in {self.range_text()}, got {value:g}"
            )


@dataclass(frozen=True)
class FillContext:
    """What a scheme may see beyond its own tensor's shape: the tensor's current values
    (`before`) and one other tensor of the same checkpoint (`other`, as read before this run
    changed anything). The engine fills in only what the scheme declares it needs, so a fill
    stays a pure function of its inputs."""

    before: torch.Tensor | None = None
    other: torch.Tensor | None = None
    other_name: str | None = None


# A fill works in place; torch.nn.init's functions also return the tensor, which is ignored.
# (quoted: read at import, and torch loads only when a run draws)
Fill = Callable[["torch.Tensor", "torch.Generator", Args], "torch.Tensor | None"]
StdFormula = Callable[[Shape, Args], float | None]
ContextFill = Callable[["torch.Tensor", "torch.Generator", Args, FillContext], None]
# (mean, std) of the one `normal_(mean, std)` call a fill makes, from the shape and arguments
PlainNormal = Callable[[Shape, Args], tuple[float, float]]
ReadsFn = Callable[[str, tuple[str, ...], Args], str]


def context_only(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    raise SchemeError("this scheme needs a fill context (use `generate(..., context=...)`)")


@dataclass(frozen=True)
class Scheme:
    """One initialization scheme.

    `fill(t, generator, args)` fills a float32/float64 tensor in place (the reproducibility
    contract of docs/guide/rules-and-schemes.md fixes the generator and the dtype); `std(shape, args)` is the
    theoretical std of the result, or None where it is undefined (e.g. zero fan).

    Schemes that need data beyond their own tensor say so as data, and the engine provides it:
    `fill_ctx` (used instead of `fill`) gets a `FillContext`; `needs_before` asks for the
    tensor's current values; `reads(name, captures, args)` names another tensor of the same
    checkpoint to read; `from_config` lists, per argument left unset (None), the model-config
    keys that supply it (first present wins)."""

    name: str
    params: tuple[Param, ...]
    fill: Fill
    std: StdFormula
    formula: str
    doc: str
    # True when the values depend on the shape only through (fan_in, fan_out): then a model's
    # own fans (ConvTranspose, grouped conv, HF Conv1D) can replace torch's shape convention.
    uses_fans: bool = False
    can_take: Callable[[Shape, Args], str | None] = field(default=lambda shape, args: None)
    kurtosis: float = 3.0  # of the value distribution; sets std_off's sampling tolerance
    aliases: tuple[str, ...] = ()
    fill_ctx: ContextFill | None = None
    needs_before: bool = False
    reads: ReadsFn | None = None
    from_config: tuple[tuple[str, tuple[str, ...], bool], ...] = ()  # (arg, keys, required)
    validate: Callable[[Args], str | None] | None = None  # bad argument values, at parse time
    # (low, high, strict): argument `low` must be below (strict) or at most `high`
    ordered: tuple[tuple[str, str, bool], ...] = ()
    # set when `fill` is exactly one `t.normal_(mean, std, generator=g)`: torch draws that
    # one value after another, so a big tensor can be drawn in chunks (`generate_chunked`)
    plain_normal: PlainNormal | None = None

    @property
    def needs_context(self) -> bool:
        return self.fill_ctx is not None


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

    def overflow(self, dtype: torch.dtype | str, shape: Shape | None = None) -> str | None:
        """Why the values this scheme writes into a `dtype` tensor (a torch dtype, or its name:
        then no torch is loaded for safetensors' dtypes) of `shape` cannot be stored (or
        drawn), or None: an argument that lands in the tensor beyond the dtype's largest finite
        value; a std beyond it (some value must then be beyond it too); or a spread, 2·√3·std
        (a uniform's b − a), beyond the largest value of the float32/float64 the values are
        drawn in (torch's uniform_ computes b − a there)."""
        label = dtype if isinstance(dtype, str) else dtype_name(dtype)
        top = float_max(label)
        if top is None:
            return None
        values = self.kwargs
        for p in self.scheme.params:
            v = values.get(p.name)
            if p.in_tensor and isinstance(v, (int, float)) and abs(v) > top:
                return (
                    f"{self.scheme.name}: argument {p.name!r}={v:g} overflows {label} "
                    f"(largest finite {label} value: {top:g})"
                )
        std = self.expected_std(shape) if shape is not None else None
        if std is None or not math.isfinite(std):
            return None if std is None else f"{self.describe()}: its std overflows {label}"
        work = "float64" if label == "float64" else "float32"
        spread = 2 * math.sqrt(3) * std
        if std > top:
            what = f"its values (std {std:.3g} on shape {list(shape or ())}) overflow {label}"
        elif spread > (float_max(work) or math.inf):
            what = f"its spread (2·√3·std = {spread:.3g}) overflows the {work} it is drawn in"
        else:
            return None
        return f"{self.describe()}: {what} (largest finite {label} value: {top:g}); use a smaller gain, std or range"

    def expected_std(self, shape: Shape) -> float | None:
        try:
            return self.scheme.std(shape, self.kwargs)
        except (ZeroDivisionError, ValueError, OverflowError):
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
    for p in scheme.params:
        p.check_range(scheme.name, dict(bound)[p.name])
    args_now = dict(bound)
    for lo, hi, strict in scheme.ordered:
        a, b = args_now[lo], args_now[hi]
        if a is not None and b is not None and (a >= b if strict else a > b):
            rel = "<" if strict else "<="
            raise SchemeError(f"{scheme.name}: needs {lo} {rel} {hi}, got {lo}={a:g}, {hi}={b:g}")
    if scheme.validate is not None:
        problem = scheme.validate(dict(bound))
        if problem:
            raise SchemeError(f"{scheme.name}: {problem}")
    return BoundScheme(scheme, tuple(bound))


def _coerce(scheme: str, p: Param, value: Any) -> Any:
    from reinit.schemes.gain import NONLINEARITIES, calculate_gain, canonical

    def bad(expected: str) -> SchemeError:
        return SchemeError(f"{scheme}: argument {p.name!r} must be {expected}, got {value!r}")

    if p.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        try:
            return float(value)
        except OverflowError:
            raise bad("a number within float64's range") from None
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
        if not isinstance(value, str) or canonical(value) not in NONLINEARITIES:
            raise bad(f"one of {', '.join(NONLINEARITIES)}")
        return canonical(value)
    if p.choices is not None:
        if not isinstance(value, str) or value not in p.choices:
            raise bad(f"one of {', '.join(p.choices)}")
        return value
    if not isinstance(value, str):
        raise bad("a word")
    return value
