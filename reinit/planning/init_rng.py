"""A private RNG for `default`: the architecture's init (`reset_parameters`, `_init_weights`)
draws from torch's one global generator, so two tensors drawn at once would have to take turns
on it. `PrivateRNG` (a `TorchFunctionMode`: thread-local) hands every random call made on its
thread a generator of its own instead, seeded as `torch.manual_seed` seeds the global one, so
the values are those the global generator would give, and two threads draw at once.

A random call that takes no generator, or a native op that draws without passing through
Python, would still use the global generator: `seeded_draw` sees its state moved, puts it back
and draws again the serial way (the global generator seeded inside `fork_rng`), with no private
draw in flight meanwhile (one could move the global generator under a serial draw); a module
type that escaped once is drawn the serial way from then on."""

from __future__ import annotations

__all__ = ["PrivateRNG", "seeded_draw"]

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

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


T = TypeVar("T")


class _Gate:
    """Who may draw how: private draws run together; a serial draw (the global generator)
    waits until none is in flight and keeps new ones out until it is done."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.in_flight = 0
        self.serial = False
        self.queued = 0  # serial draws waiting
        self.origin: torch.Tensor | None = None  # the global state when private draws began
        self.moved = False  # a private draw since `origin` moved the global generator
        self.escaped: set[object] = set()  # module types whose init escaped the private RNG

    def enter_private(self, key: object) -> torch.Tensor | None:
        """The global state now (the draw may go private), or None (it must go serial)."""
        with self.cond:
            if key in self.escaped:
                return None
            self.cond.wait_for(lambda: not self.serial and not self.queued)
            state = torch.default_generator.get_state()
            if self.origin is None:  # kept while an escape waits to put it back
                self.origin = state
            self.in_flight += 1
            return state

    def leave_private(self, before: torch.Tensor, key: object) -> bool:
        """Whether the global generator stayed where it was (the private draw holds)."""
        with self.cond:
            self.in_flight -= 1
            held = torch.equal(torch.default_generator.get_state(), before)
            if not held:
                self.escaped.add(key)
                self.moved = True
            if self.in_flight == 0 and not self.moved:
                self.origin = None  # nothing to put back: later states are the caller's
            self.cond.notify_all()
            return held

    @contextlib.contextmanager
    def serial_draw(self, seed: int) -> Iterator[None]:
        """The global generator seeded with `seed`, alone; the caller's state is put back
        after (and first, where an escaped private draw moved it)."""
        with self.cond:
            self.queued += 1  # no new private draw starts meanwhile
            self.cond.wait_for(lambda: self.in_flight == 0 and not self.serial)
            self.queued -= 1
            self.serial = True
            if self.moved and self.origin is not None:
                torch.default_generator.set_state(self.origin)
            self.origin, self.moved = None, False
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield
        finally:
            with self.cond:
                self.serial = False
                self.cond.notify_all()


_GATE = _Gate()


def seeded_draw(
    seed: int, key: object, draw: Callable[[contextlib.AbstractContextManager[Any]], T]
) -> T:
    """`draw(rng)`, whose random calls run inside `rng`: first with a `PrivateRNG(seed)`; if
    a draw escaped it (see the module doc), again with the global generator seeded with
    `seed`. Either way the values are the global generator's from `seed`, and the caller's
    global RNG state is left as it was. `key` (the module type) remembers escapes."""
    before = _GATE.enter_private(key)
    if before is not None:
        result = draw(PrivateRNG(seed))
        if _GATE.leave_private(before, key):
            return result
    return draw(_GATE.serial_draw(seed))
