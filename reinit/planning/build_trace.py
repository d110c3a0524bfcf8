"""The values a model's constructor gives its tensors, kept while it is built on the meta device.

A model built on the meta device has no values; most tensors get theirs from the init that
`default` runs (`reset_parameters`, `_init_weights`). A few get them only from the constructor:
CLIP's `nn.Parameter(torch.tensor(config.logit_scale_init_value))`, a bias made by
`torch.zeros(n)` that no init touches. `ConstructedValues` (a `TorchFunctionMode` active while
the model is built) computes, beside every meta tensor made from known values, the same
tensor on the CPU: factories with definite values (`torch.tensor`, `full`, `ones`, `zeros`,
`arange`, ...) run again on the CPU, and an operation whose tensor inputs all have such a value
runs on those values (views stay views of them, so an in-place write through a view reaches
the tensor it views). A random draw, or an in-place write that cannot be computed, forgets the
values of the storage it touches. Small tensors only (`MAX_ELEMENTS`, `MAX_BYTES` in all).

Imported only where a model is built (it subclasses torch's `TorchFunctionMode`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["MAX_BYTES", "MAX_ELEMENTS", "ConstructedValues"]

MAX_ELEMENTS = 1 << 16  # per tensor (a norm weight of a 65,536-wide model)
MAX_BYTES = 16 << 20  # all values kept, together

#: Factories whose result is fully determined by their arguments (not `empty`, not random).
_FACTORIES = frozenset(
    {
        "tensor",
        "as_tensor",
        "scalar_tensor",
        "full",
        "ones",
        "zeros",
        "arange",
        "linspace",
        "logspace",
        "eye",
        "ones_like",
        "zeros_like",
        "full_like",
    }
)

#: In-place writes whose values are drawn: never computed on the CPU copy.
_RANDOM = frozenset(
    {
        "normal_",
        "uniform_",
        "random_",
        "bernoulli_",
        "exponential_",
        "cauchy_",
        "geometric_",
        "log_normal_",
    }
)

#: In-place writes written as operators or item assignment (`w *= 2`, `w[0] = 1`).
_INPLACE_DUNDERS = frozenset(
    {
        "__setitem__",
        "__iadd__",
        "__isub__",
        "__imul__",
        "__itruediv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__iand__",
        "__ior__",
        "__ixor__",
        "__ilshift__",
        "__irshift__",
        "__imatmul__",
    }
)

_Key = tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype]


def _key(t: torch.Tensor) -> _Key:
    """A meta tensor's identity: its storage, offset, shape, strides and dtype (a view
    differs; so does `t.view(torch.int32)` of a float32 `t`, which has the same shape)."""
    storage: int = t.untyped_storage()._cdata
    return (storage, int(t.storage_offset()), tuple(t.shape), tuple(t.stride()), t.dtype)


class ConstructedValues(TorchFunctionMode):
    """While active, the CPU value of every small meta tensor made from known values (see the
    module doc); `value(t)` reads one."""

    def __init__(self) -> None:
        super().__init__()
        # by storage, then by view of it: the CPU value, and the meta tensor (kept alive, so
        # its storage's address is not reused while the build runs)
        self._values: dict[int, dict[_Key, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._bytes = 0

    def value(self, t: torch.Tensor) -> torch.Tensor | None:
        """The CPU value of meta tensor `t` (as it stands now), or None when not known."""
        if not self._values:
            return None
        try:
            key = _key(t)
        except (RuntimeError, NotImplementedError):
            return None
        found = self._values.get(key[0], {}).get(key)
        return found[1] if found is not None else None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        out = func(*args, **kwargs)
        try:
            self._follow(func, args, kwargs, out)
        except Exception:  # noqa: BLE001 (a value not computed is a value not known)
            self._forget(args[0] if args else None)
        return out

    def _follow(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], out: object
    ) -> None:
        name = getattr(func, "__name__", "")
        in_place = (name.endswith("_") and not name.startswith("_")) or name in _INPLACE_DUNDERS
        if isinstance(kwargs.get("out"), torch.Tensor):  # written through `out=`
            self._forget(kwargs["out"])
            return
        if in_place or getattr(func, "__module__", None) == "torch.nn.init":
            self._write(func, name, args, kwargs)
            return
        if not _small_meta(out) or "generator" in kwargs:
            return
        assert isinstance(out, torch.Tensor)
        value = self._compute(func, name, args, kwargs)
        if value is None or value.device.type != "cpu" or value.shape != out.shape:
            return
        if value.dtype != out.dtype:
            return
        if self._bytes + value.numel() * value.element_size() > MAX_BYTES:
            return
        self._bytes += value.numel() * value.element_size()
        key = _key(out)
        self._values.setdefault(key[0], {})[key] = (out, value)

    def _compute(
        self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> torch.Tensor | None:
        """The result on the CPU: a factory run there, or the op run on its inputs' values."""
        if name in _FACTORIES and getattr(func, "__module__", "").startswith("torch"):
            like = name.endswith("_like")
            if not like and _tensors(args, kwargs):
                return None  # torch.tensor(a_meta_tensor): no values to start from
            out = func(*args, **{**kwargs, "device": "cpu"})
            return out if isinstance(out, torch.Tensor) else None
        cpu_args, cpu_kwargs = self._substitute(args), self._substitute(kwargs)
        if cpu_args is None or cpu_kwargs is None or not _tensors(args, kwargs):
            return None
        out = func(*cpu_args, **cpu_kwargs)
        return out if isinstance(out, torch.Tensor) else None

    def _write(
        self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> None:
        """An in-place write: done on the target's value too, when every input has one and it
        is not a draw; else the values of the target's storage are forgotten."""
        target = args[0] if args else kwargs.get("tensor")
        if not isinstance(target, torch.Tensor) or target.device.type != "meta":
            return
        if self.value(target) is None:
            self._forget(target)  # a write to a part of a tensor with a value
            return
        random = name in _RANDOM or getattr(func, "__module__", None) == "torch.nn.init"
        cpu_args, cpu_kwargs = self._substitute(args), self._substitute(kwargs)
        if random or "generator" in kwargs or cpu_args is None or cpu_kwargs is None:
            self._forget(target)
            return
        func(*cpu_args, **cpu_kwargs)

    def _forget(self, target: object) -> None:
        if not isinstance(target, torch.Tensor) or target.device.type != "meta":
            return
        if self._values:
            self._values.pop(target.untyped_storage()._cdata, None)

    def _substitute(self, value: Any) -> Any:
        """`value` with every meta tensor replaced by its CPU value (None if one has none),
        one level into lists, tuples and dicts."""
        if isinstance(value, torch.Tensor):
            return self.value(value) if value.device.type == "meta" else value
        if isinstance(value, (list, tuple)):
            items = [self._substitute(v) for v in value]
            if any(i is None and v is not None for i, v in zip(items, value, strict=True)):
                return None
            return type(value)(items) if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            subs = {k: self._substitute(v) for k, v in value.items()}
            if any(subs[k] is None and v is not None for k, v in value.items()):
                return None
            return subs
        return value


def _small_meta(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta" and t.numel() <= MAX_ELEMENTS


def _tensors(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether any argument (one level into lists and tuples) is a tensor."""
    flat = [*args, *kwargs.values()]
    flat += [v for a in flat if isinstance(a, (list, tuple)) for v in a]
    return any(isinstance(a, torch.Tensor) for a in flat)
