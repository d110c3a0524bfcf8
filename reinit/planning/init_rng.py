"""A private RNG for `default`: the architecture's init (`reset_parameters`, `_init_weights`)
draws from torch's one global generator, so two tensors drawn at once would have to take turns
on it. `PrivateRNG` (a `TorchFunctionMode`: thread-local) hands every random call made on its
thread a generator of its own instead, seeded as `torch.manual_seed` seeds the global one, so
the values are those the global generator would give, and two threads draw at once.

A random call that takes no generator, or a native op that draws without passing through
Python, would still use the global generator: the caller (`planning.model._run_init`) sees its
state moved, and draws again the serial way (the global generator, under a lock)."""

from __future__ import annotations

__all__ = ["PrivateRNG"]

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: The random calls (Tensor methods, torch functions, torch.nn.init schemes) that take
#: `generator=`; a call that already names one keeps it.
_RANDOM = frozenset(
    {
        # Tensor methods
        "normal_",
        "uniform_",
        "random_",
        "exponential_",
        "bernoulli_",
        "cauchy_",
        "geometric_",
        "log_normal_",
        # torch functions
        "rand",
        "randn",
        "randint",
        "randperm",
        "rand_like",
        "randn_like",
        "randint_like",
        "normal",
        "bernoulli",
        "multinomial",
        "poisson",
        # torch.nn.init (they pass `generator` down to the methods above)
        "trunc_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "orthogonal_",
        "sparse_",
    }
)


class PrivateRNG(TorchFunctionMode):
    """Random calls on this thread draw from a generator seeded with `seed` (see the module
    doc)."""

    def __init__(self, seed: int):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if getattr(func, "__name__", "") in _RANDOM and kwargs.get("generator") is None:
            kwargs["generator"] = self.generator
        return func(*args, **kwargs)
