"""The one scheme registry. Built explicitly from tuples of `Scheme`s (no registration by
import side effect): to add schemes, add a tuple to `_ALL`."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from reinit.errors import SchemeError
from reinit.schemes.base import BoundScheme, Param, Scheme, bind, compute_fans
from reinit.schemes.gain import NONLINEARITIES, calculate_gain
from reinit.schemes.model_default import DEFAULT, DEFAULT_SCHEMES
from reinit.schemes.torch_init import TORCH_SCHEMES

__all__ = [
    "BoundScheme",
    "Param",
    "Scheme",
    "SCHEMES",
    "ALIASES",
    "DEFAULT",
    "NONLINEARITIES",
    "bind_scheme",
    "calculate_gain",
    "compute_fans",
    "generate",
    "get_scheme",
    "seed_for",
]

_ALL: tuple[Scheme, ...] = (*TORCH_SCHEMES, *DEFAULT_SCHEMES)

SCHEMES: dict[str, Scheme] = {s.name: s for s in _ALL}
ALIASES: dict[str, str] = {alias: s.name for s in _ALL for alias in s.aliases}

KEEP = "keep"  # not a scheme: leaves the tensor as it is


def get_scheme(name: str) -> Scheme:
    canonical = ALIASES.get(name, name)
    try:
        return SCHEMES[canonical]
    except KeyError:
        names = sorted([*SCHEMES, *ALIASES, KEEP, "from"])
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise SchemeError(
            f"unknown scheme {name!r}.{hint} Run `reinit schemes` for the list."
        ) from None


def bind_scheme(
    name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> BoundScheme:
    return bind(get_scheme(name), args, kwargs or {})


def seed_for(seed: int, name: str) -> int:
    """Each tensor's own seed (DESIGN §3): from the run's seed and the tensor's name only, so a
    value never depends on rule order, other tensors, sharding or thread count."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate(
    bound: BoundScheme,
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int,
    device: str = "cpu",
) -> torch.Tensor:
    """The values a scheme gives tensor `name`: drawn in float32 (float64 for float64 tensors)
    from the tensor's own generator, then cast to `dtype`. Always returned on the CPU."""
    work_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    generator = torch.Generator(device=device).manual_seed(seed_for(seed, name))
    t = torch.empty(tuple(shape), dtype=work_dtype, device=device)
    if t.numel():
        with torch.no_grad():
            bound.scheme.fill(t, generator, bound.kwargs)
    return t.to(device="cpu", dtype=dtype)


def scheme_table() -> list[dict[str, Any]]:
    """Every scheme with its signature, std formula and aliases, for `reinit schemes`."""
    from reinit.schemes.base import REQUIRED

    rows = []
    for s in SCHEMES.values():
        params = ", ".join(
            p.name
            if p.default is REQUIRED
            else f"{p.name}={p.default:g}"
            if isinstance(p.default, float)
            else f"{p.name}={p.default}"
            for p in s.params
        )
        rows.append(
            {
                "name": s.name,
                "signature": f"{s.name}({params})" if s.params else s.name,
                "arguments": [
                    {
                        "name": p.name,
                        "default": None if p.default is REQUIRED else p.default,
                        "required": p.default is REQUIRED,
                    }
                    for p in s.params
                ],
                "std": s.formula,
                "doc": s.doc,
                "aliases": list(s.aliases),
            }
        )
    return rows


# --- a model's own fans -----------------------------------------------------------------


def fans_scale(bound: BoundScheme, shape: Sequence[int], fans: tuple[int, int] | None) -> float:
    """The factor that turns torch's draw (fans from the shape) into the draw with a module's
    own `fans`: for a `uses_fans` scheme the values are a fixed distribution times a std that
    depends on the fans alone, so rescaling by the ratio of the two stds gives the module-fan
    distribution from the same generator. 1.0 when nothing differs."""
    if fans is None or not bound.scheme.uses_fans or tuple(fans) == compute_fans(shape):
        return 1.0
    torch_std = bound.expected_std(tuple(shape))
    module_std = expected_std_for(bound, shape, fans)
    if not torch_std or module_std is None:
        return 1.0
    return module_std / torch_std


def expected_std_for(
    bound: BoundScheme, shape: Sequence[int], fans: tuple[int, int] | None
) -> float | None:
    """The scheme's theoretical std, with a module's own fans where the scheme uses fans:
    evaluated on the 2-D shape (fan_out, fan_in), whose torch fans are exactly those."""
    if fans is None or not bound.scheme.uses_fans:
        return bound.expected_std(tuple(shape))
    fan_in, fan_out = fans
    return bound.expected_std((fan_out, fan_in))
