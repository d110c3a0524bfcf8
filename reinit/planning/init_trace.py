"""Which init the `default` scheme actually ran on a tensor, and the std that init gives.

`default` runs the architecture's own code (torch's `reset_parameters`, then a transformers
model's `_init_weights`), which may call anything. Rather than guess from the module's type,
`InitTrace` watches that code run (a `TorchFunctionMode`, thread-local, so a draw on a worker
thread is watched on that thread only) and records every in-place init call that writes the
tensor's storage: `torch.nn.init.*_` functions (which dispatch through the mode before doing
their work, so `kaiming_uniform_` is seen as itself, not as the `uniform_` inside it) and the
tensor methods `normal_`, `uniform_`, `fill_`, `zero_`, `copy_`, ...

`applied_init` turns the record into an `AppliedInit`: the last call that wrote the whole
tensor, named as reinit's scheme of the same name (our schemes take torch's argument names,
order and defaults), with its std formula evaluated on the tensor's shape. That is the
expected std of what ran, computed, not measured: the tensor is drawn once, by the init itself.
Later calls on a part of the tensor (an Embedding's padding row set to 0) are named too; a
constant written on a part is folded into the expected std exactly (a mixture's variance),
anything else on a part leaves the expected std unknown (None) rather than wrong."""

from __future__ import annotations

__all__ = ["AppliedInit", "InitCall", "InitTrace", "applied_init", "compact"]

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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

#: Tensor methods that write values in place: (scheme name, argument names in torch's order).
_METHODS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "normal_": ("normal", ("mean", "std")),
    "uniform_": ("uniform", ("a", "b")),
    "fill_": ("constant", ("val",)),
    "zero_": ("zeros", ()),
}
_METHOD_KEYS = {"from": "a", "to": "b", "value": "val"}  # Tensor.uniform_(from, to), fill_(value)

#: Other in-place writes, named as they are (no std formula: values copied or computed).
_OTHER_WRITES = frozenset({"copy_", "random_", "exponential_", "bernoulli_", "cauchy_"})


@dataclass(frozen=True)
class InitCall:
    """One recorded write: which phase ran it, its name and arguments, and whether it
    covered the whole tensor."""

    phase: str  # e.g. "Linear.reset_parameters", "BertModel._init_weights"
    name: str  # a scheme name ("normal") or the torch method's ("copy_")
    args: tuple[tuple[str, Any], ...]
    whole: bool
    part: float = 1.0  # the fraction of the tensor written


@dataclass(frozen=True)
class AppliedInit:
    """What `default` ran on one tensor (`BertModel._init_weights: normal(std=0.02)`), and
    the std that init gives for the tensor's shape (None where no formula is known)."""

    description: str
    expected_std: float | None


class InitTrace(TorchFunctionMode):
    """Records the init calls that write `target`'s storage while active (see the module doc)."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.storage = target.untyped_storage().data_ptr()
        self.start = target.data_ptr()
        self.numel = target.numel()
        self.phase = ""
        self.calls: list[InitCall] = []

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

    def _call(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> InitCall | None:
        fname = getattr(func, "__name__", "")
        module = getattr(func, "__module__", None)
        is_init = (
            module == "torch.nn.init" and fname.endswith("_") and fname[:-1] in _INIT_FUNCTIONS
        )
        if not (is_init or fname in _METHODS or fname in _OTHER_WRITES):
            return None
        t = args[0] if args else kwargs.get("tensor")
        try:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() != self.storage:
                return None
        except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, ...)
            return None
        whole = t.data_ptr() == self.start and t.numel() == self.numel
        part = t.numel() / self.numel if self.numel else 1.0
        rest = {k: v for k, v in kwargs.items() if k not in ("tensor", "generator")}
        if is_init:
            return InitCall(self.phase, fname[:-1], _named(fname[:-1], args[1:], rest), whole, part)
        if fname in _METHODS:
            scheme, names = _METHODS[fname]
            values = dict(zip(names, args[1:], strict=False))
            values.update({_METHOD_KEYS.get(k, k): v for k, v in rest.items()})
            if scheme == "constant" and values.get("val") in (0, 1):  # what ones_/zeros_ run
                scheme, values = ("zeros" if values["val"] == 0 else "ones"), {}
            return InitCall(self.phase, scheme, tuple(values.items()), whole, part)
        return InitCall(self.phase, fname, (), whole, part)


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
        k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in call.args
    }
    if call.name == "constant" and "val" in args:
        args["val"] = float(args["val"])
    try:
        return bind_scheme(call.name, (), args)
    except (SchemeError, TypeError, ValueError):
        return None


def compact(call: InitCall) -> str:
    """`normal(std=0.02)`: the scheme with the arguments that differ from its defaults (4
    significant digits), as a rule would write it; a method without a scheme as itself."""
    bound = _bound(call)
    if bound is None:
        inner = ", ".join(f"{k}={_num(v)}" for k, v in call.args)
        return f"{call.name}({inner})" if inner else call.name
    defaults = dict(
        bind_scheme(call.name, (), {"val": 0.0} if call.name == "constant" else {}).args
    )
    shown = [
        f"{k}={_num(v)}"
        for k, v in bound.args
        if call.name == "constant" or k not in defaults or v != defaults[k]
    ]
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
    if call.name in ("constant", "zeros", "ones"):
        return _constant(call)
    return None


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
    """The init that set the tensor (the last whole-tensor call) with its expected std; None
    when no call wrote the whole tensor."""
    last = max((i for i, c in enumerate(calls) if c.whole), default=None)
    if last is None:
        return None
    main = calls[last]
    bound = _bound(main)
    expected = bound.expected_std(tuple(shape)) if bound is not None else None
    mean = _mean(main)
    text = f"{main.phase}: {compact(main)}"
    for c in calls[last + 1 :]:  # all on a part: a whole-tensor call would be the last
        text += f", then {compact(c)} on a part"
        expected, mean = _after_part(expected, mean, c)
    return AppliedInit(text, expected)


def _after_part(
    std: float | None, mean: float | None, c: InitCall
) -> tuple[float | None, float | None]:
    """The std and mean after `c` writes a constant v over a fraction q of values of mean m
    and std s: the mixture's variance (1-q)s² + q(1-q)(m-v)² and mean (1-q)m + qv (exact for
    a part whose values were drawn like the rest); (None, None) for anything but a constant."""
    value = _constant(c)
    if std is None or value is None or mean is None:
        return None, None
    q = c.part
    var = (1 - q) * std * std + q * (1 - q) * (mean - value) ** 2
    return math.sqrt(max(var, 0.0)), (1 - q) * mean + q * value
