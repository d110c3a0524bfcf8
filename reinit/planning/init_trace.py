"""Which init the `default` scheme actually ran on a tensor, and the std that init gives.

`default` runs the architecture's own code (torch's `reset_parameters`, then a transformers
model's `_init_weights`), which may call anything. Rather than guess from the module's type,
`InitTrace` watches that code run (a `TorchFunctionMode`: thread-local, so a draw on a worker
thread is watched on that thread only) and records every in-place write to the tensor's
storage. A write made inside a `torch.nn.init` function (some dispatch through the mode as
themselves, others only show their inner `uniform_`, `copy_`, `mul_`) is attributed to the
outermost such function, with its arguments read from its frame: `orthogonal_` is recorded
as `orthogonal(gain=1)`, not as the `copy_` and `mul_` it is made of. Other writes are
recorded as they are: `normal_`, `uniform_`, `fill_`, `zero_` (named as our schemes), `copy_`
and the random fills (values set, std unknown), and any other in-place op (`mul_`, `add_`,
`clamp_`, `*=`, ...) as a change to values already there.

`applied_init` turns the record into an `AppliedInit`: the last call that set the whole
tensor, named as reinit's scheme of the same name (our schemes take torch's argument names,
order and defaults), with its std formula evaluated on the tensor's shape. That is the
expected std of what ran, computed, not measured: the tensor is drawn once, by the init itself.
Later calls are named too (`normal, then zeros on a part` for an Embedding's padding row); a
constant written on a part is folded into the expected std exactly (a mixture's variance), a
scalar `mul_`/`div_` of the whole tensor scales it, and anything else leaves the expected std
unknown (None) rather than wrong."""

from __future__ import annotations

__all__ = ["AppliedInit", "InitCall", "InitTrace", "applied_init", "compact"]

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from reinit.errors import SchemeError
from reinit.schemes import BoundScheme, bind_scheme, get_scheme

#: torch.nn.init functions by their scheme name (reinit's schemes mirror them one to one).
_INIT_FUNCTIONS = frozenset(
    {
        "uniform",
        "normal",
        "trunc_normal",
        "constant",
        "ones",
        "zeros",
        "eye",
        "dirac",
        "xavier_uniform",
        "xavier_normal",
        "kaiming_uniform",
        "kaiming_normal",
        "orthogonal",
        "sparse",
    }
)

_INIT_FILE = torch.nn.init.__file__

#: Tensor methods that set values in place: (scheme name, argument names in torch's order).
_METHODS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "normal_": ("normal", ("mean", "std")),
    "uniform_": ("uniform", ("a", "b")),
    "fill_": ("constant", ("val",)),
    "zero_": ("zeros", ()),
}
_METHOD_KEYS = {"from": "a", "to": "b", "value": "val"}  # Tensor.uniform_(from, to), fill_(value)

#: Other writes that set every value they touch (values copied or drawn; no std formula).
_SETTERS = frozenset(
    {"copy_", "random_", "exponential_", "bernoulli_", "cauchy_", "geometric_", "log_normal_"}
)

#: In-place arithmetic written with operators (`w *= 2`).
_INPLACE_DUNDERS = frozenset(
    {"__imul__", "__itruediv__", "__iadd__", "__isub__", "__ipow__", "__idiv__"}
)

#: Scalar scalings whose effect on the std is known: (factor from the argument).
_SCALINGS: Mapping[str, Callable[[float], float]] = {
    "mul_": lambda c: c,
    "__imul__": lambda c: c,
    "div_": lambda c: 1.0 / c,
    "__itruediv__": lambda c: 1.0 / c,
}


@dataclass(frozen=True)
class InitCall:
    """One recorded write: which phase ran it, its name and arguments, whether it set the
    values (else changed the ones there) and how much of the tensor it covered."""

    phase: str  # e.g. "Linear.reset_parameters", "BertModel._init_weights on Linear"
    name: str  # a scheme name ("normal") or the torch method's ("copy_", "mul_")
    args: tuple[tuple[str, Any], ...]  # "" names a positional argument of a method
    whole: bool
    part: float = 1.0  # the fraction of the tensor written
    shape: tuple[int, ...] = ()  # the shape written through (a view's: ViTMAE's 2-D xavier)
    sets: bool = True


@dataclass(frozen=True)
class AppliedInit:
    """What `default` ran on one tensor (`BertModel._init_weights on Linear: normal(std=0.02)`),
    and the std that init gives for the tensor's shape (None where no formula is known)."""

    description: str
    expected_std: float | None


class InitTrace(TorchFunctionMode):
    """Records the writes to `target`'s storage while active (see the module doc)."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.storage = target.untyped_storage().data_ptr()
        self.start = target.data_ptr()
        self.numel = target.numel()
        self.phase = ""
        self.calls: list[InitCall] = []
        self._frame: FrameType | None = None  # the nn.init call the last write belonged to

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        call = self._call(func, args, kwargs)
        if call is not None:
            self.calls.append(call)
        return func(*args, **kwargs)

    def _covers(self, t: object) -> tuple[bool, float, tuple[int, ...]] | None:
        """(whole, fraction, shape) when `t` is a view of the target's storage, else None: a
        view of another shape (`w.view(out, -1)`) has its own fans, which its init's std reads."""
        try:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() != self.storage:
                return None
        except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, ...)
            return None
        whole = t.data_ptr() == self.start and t.numel() == self.numel
        return whole, (t.numel() / self.numel if self.numel else 1.0), tuple(t.shape)

    def _call(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> InitCall | None:
        fname = getattr(func, "__name__", "")
        dispatched = getattr(func, "__module__", None) == "torch.nn.init"
        if dispatched and fname.endswith("_") and fname[:-1] in _INIT_FUNCTIONS:
            cover = self._covers(args[0] if args else kwargs.get("tensor"))
            if cover is None:
                return None
            rest = {k: v for k, v in kwargs.items() if k not in ("tensor", "generator")}
            named = _named(fname[:-1], args[1:], rest)
            return InitCall(self.phase, fname[:-1], named, *cover)
        in_place = fname.endswith("_") and not fname.startswith("_")
        if not (in_place or fname in _INPLACE_DUNDERS):
            return None
        cover = self._covers(args[0] if args else None)
        if cover is None:
            return None
        frame = _init_frame()
        if frame is not None:  # inside torch.nn.init: the function, once per call
            if frame is self._frame:
                return None
            self._frame = frame
            return _from_frame(self.phase, frame, self)
        rest = {_METHOD_KEYS.get(k, k): v for k, v in kwargs.items() if k != "generator"}
        if fname in _METHODS:
            scheme, names = _METHODS[fname]
            values = {**dict(zip(names, args[1:], strict=False)), **rest}
            if scheme == "constant" and values.get("val") in (0, 1):  # what ones_/zeros_ run
                scheme, values = ("zeros" if values["val"] == 0 else "ones"), {}
            return InitCall(self.phase, scheme, tuple(values.items()), *cover)
        plain = tuple(("", a) for a in args[1:] if not isinstance(a, torch.Tensor))
        return InitCall(self.phase, fname, plain, *cover, sets=fname in _SETTERS)


def _init_frame() -> FrameType | None:
    """The outermost frame of a `torch.nn.init` scheme function on the stack, if any."""
    found = None
    f: FrameType | None = sys._getframe(2)
    while f is not None:
        code = f.f_code
        if code.co_filename == _INIT_FILE and code.co_name[:-1] in _INIT_FUNCTIONS:
            found = f
        f = f.f_back
    return found


def _from_frame(phase: str, frame: FrameType, trace: InitTrace) -> InitCall | None:
    """The `torch.nn.init` call running in `frame`, with its arguments read from its locals."""
    name = frame.f_code.co_name[:-1]
    local = frame.f_locals
    cover = trace._covers(local.get("tensor"))
    if cover is None:
        return None
    params = [p.name for p in get_scheme(name).params]
    return InitCall(phase, name, tuple((k, local[k]) for k in params if k in local), *cover)


def _named(
    scheme: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[tuple[str, Any], ...]:
    """A torch.nn.init call's arguments by name (torch's names and order are our schemes')."""
    names = [p.name for p in get_scheme(scheme).params]
    return (*zip(names, args, strict=False), *kwargs.items())


def _bound(call: InitCall) -> BoundScheme | None:
    if call.name not in _INIT_FUNCTIONS:
        return None
    args = {
        k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
        for k, v in call.args
        if k != "groups"
    }
    args.update({k: v for k, v in call.args if k == "groups"})
    try:
        return bind_scheme(call.name, (), args)
    except (SchemeError, TypeError, ValueError):
        return None


def compact(call: InitCall) -> str:
    """`normal(std=0.02)`: the scheme with the arguments that differ from its defaults (4
    significant digits), as a rule would write it; anything else with its arguments."""
    bound = _bound(call)
    if bound is None:
        inner = ", ".join(f"{k}={_num(v)}" if k else _num(v) for k, v in call.args)
        return f"{call.name}({inner})" if inner else call.name
    params = {p.name: p.default for p in bound.scheme.params}
    shown = [f"{k}={_num(v)}" for k, v in bound.args if v != params.get(k)]
    return f"{call.name}({', '.join(shown)})" if shown else call.name


def _num(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _mean(call: InitCall) -> float | None:
    """The mean of the values `call` writes, where it is known."""
    args = dict(call.args)
    if call.name == "normal":
        return float(args.get("mean", 0.0))
    if call.name == "uniform":
        return (float(args.get("a", 0.0)) + float(args.get("b", 1.0))) / 2.0
    if call.name in ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal"):
        return 0.0
    if call.name == "orthogonal":
        return 0.0
    return _constant(call)


def _constant(call: InitCall) -> float | None:
    if call.name == "zeros":
        return 0.0
    if call.name == "ones":
        return 1.0
    if call.name == "constant":
        val = dict(call.args).get("val")
        return float(val) if isinstance(val, (int, float)) else None
    return None


def applied_init(calls: Sequence[InitCall], shape: Sequence[int]) -> AppliedInit | None:
    """The init that set the tensor (the last call that set all of it) with its expected std
    after what came later; None when no call set the whole tensor."""
    last = max((i for i, c in enumerate(calls) if c.whole and c.sets), default=None)
    if last is None:
        return None
    main = calls[last]
    bound = _bound(main)
    expected = bound.expected_std(main.shape or tuple(shape)) if bound is not None else None
    mean = _mean(main)
    text = f"{main.phase}: {compact(main)}"
    for c in calls[last + 1 :]:
        text += f", then {compact(c)}" + ("" if c.whole else " on a part")
        expected, mean = _after(expected, mean, c)
    return AppliedInit(text, expected)


def _after(std: float | None, mean: float | None, c: InitCall) -> tuple[float | None, float | None]:
    """The std and mean after `c`: a constant v over a fraction q of values of mean m and std
    s gives the mixture's variance (1-q)s² + q(1-q)(m-v)² and mean (1-q)m + qv (exact for a
    part whose values were drawn like the rest); a scalar mul_/div_ of the whole tensor scales
    both; anything else: (None, None)."""
    value = _constant(c) if c.sets else None
    if std is not None and mean is not None and value is not None:
        q = c.part
        var = (1 - q) * std * std + q * (1 - q) * (mean - value) ** 2
        return math.sqrt(max(var, 0.0)), (1 - q) * mean + q * value
    scale = _SCALINGS.get(c.name)
    factor = c.args[0][1] if len(c.args) == 1 and not c.args[0][0] else None
    if scale is not None and c.whole and isinstance(factor, (int, float)) and factor:
        k = scale(float(factor))
        return (abs(k) * std if std is not None else None), (k * mean if mean is not None else None)
    return None, None
