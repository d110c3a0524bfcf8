"""The one scheme registry. Built explicitly from tuples of `Scheme`s (no registration by
import side effect): to add schemes, add a tuple to `_ALL`."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from reinit.errors import SchemeError, UsageError
from reinit.schemes.base import BoundScheme, FillContext, Param, Scheme, bind, compute_fans
from reinit.schemes.gain import NONLINEARITIES, calculate_gain
from reinit.schemes.model_default import DEFAULT, DEFAULT_SCHEMES
from reinit.schemes.structural import STRUCTURAL_SCHEMES
from reinit.schemes.torch_init import TORCH_SCHEMES, keep_thread_count, use_thread_count
from reinit.schemes.transformer import TRANSFORMER_SCHEMES
from reinit.schemes.variance import VARIANCE_SCHEMES

__all__ = [
    "BoundScheme",
    "DRAW_CHUNK",
    "FillContext",
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
    "generate_chunked",
    "get_scheme",
    "keep_thread_count",
    "use_thread_count",
    "resolve_from_config",
    "seed_for",
]

_ALL: tuple[Scheme, ...] = (
    *TORCH_SCHEMES,
    *VARIANCE_SCHEMES,
    *TRANSFORMER_SCHEMES,
    *STRUCTURAL_SCHEMES,
    *DEFAULT_SCHEMES,
)

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
    """Each tensor's own seed (docs/guide/rules-and-schemes.md): from the run's seed and the tensor's name only, so a
    value never depends on rule order, other tensors, sharding or thread count."""
    if not isinstance(seed, int) or isinstance(seed, bool):  # `seed_for(name, seed)` once passed
        raise UsageError(f"seed_for: seed must be an int, got {type(seed).__name__}")
    if not isinstance(name, str):
        raise UsageError(f"seed_for: name must be a str, got {type(name).__name__}")
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate(
    bound: BoundScheme,
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int,
    device: str = "cpu",
    context: FillContext | None = None,
) -> torch.Tensor:
    """The values a scheme gives tensor `name`: drawn in float32 (float64 for float64 tensors)
    from the tensor's own generator, then cast to `dtype`. Always returned on the CPU.

    Schemes that read more than their own shape (`Scheme.needs_context`) need `context`."""
    work_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    generator = torch.Generator(device=device).manual_seed(seed_for(seed, name))
    t = torch.empty(tuple(shape), dtype=work_dtype, device=device)
    if t.numel():
        with torch.no_grad():
            fill_ctx = bound.scheme.fill_ctx
            if fill_ctx is not None:
                if context is None:
                    raise SchemeError(
                        f"{bound.describe()} on '{name}': this scheme reads other values; "
                        "pass a FillContext"
                    )
                moved = FillContext(
                    before=None if context.before is None else context.before.to(device),
                    other=None if context.other is None else context.other.to(device),
                    other_name=context.other_name,
                )
                fill_ctx(t, generator, bound.kwargs, moved)
            else:
                bound.scheme.fill(t, generator, bound.kwargs)
    return t.to(device="cpu", dtype=dtype)


DRAW_CHUNK = 1 << 20  # float32 values `generate_chunked` draws at a time (a multiple of 16)


def generate_chunked(
    bound: BoundScheme,
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int,
    device: str = "cpu",
) -> torch.Tensor | None:
    """`generate`'s values for a float target narrower than float32, without the whole float32
    draw: DRAW_CHUNK values drawn at a time into one float32 buffer and cast into the result.
    The same bytes, because a scheme with `plain_normal` fills with one CPU `normal_`, which
    takes its uniforms from the generator value after value and transforms them 16 at a time
    (redrawing the last 16 when the count is not a multiple of 16): every chunk but the last
    is a multiple of 16, and the last has at least 16 values. None where this does not hold
    (another scheme, another device, a small or float32/float64 tensor): use `generate`."""
    plain = bound.scheme.plain_normal
    numel = 1
    for d in shape:
        numel *= d
    narrow = dtype.is_floating_point and dtype.itemsize < 4
    if plain is None or device != "cpu" or not narrow or numel <= 2 * DRAW_CHUNK:
        return None
    mean, std = plain(tuple(shape), bound.kwargs)
    g = torch.Generator().manual_seed(seed_for(seed, name))
    out = torch.empty(tuple(shape), dtype=dtype)
    flat = out.view(-1)
    buf = torch.empty(DRAW_CHUNK + 16, dtype=torch.float32)
    start = 0
    with torch.no_grad():
        while start < numel:
            end = min(numel, start + DRAW_CHUNK)
            if numel - end < 16:
                end = numel  # the last chunk takes the tail: torch's redraw stays inside it
            part = buf[: end - start]
            part.normal_(mean, std, generator=g)
            flat[start:end].copy_(part)
            start = end
    return out


def missing_from_config(bound: BoundScheme) -> str | None:
    """Why a scheme cannot run: a required argument that neither the rule nor the model config
    gave (e.g. scaled_normal's layers), or None."""
    args = bound.kwargs
    for param, keys, required in bound.scheme.from_config:
        if required and args.get(param) is None:
            return (
                f"{bound.scheme.name} needs {param}=N: give it in the rule, or keep a model config "
                f"(config.json with {' or '.join(keys)}) beside the checkpoint"
            )
    return None


CONFIG_NESTS = ("text_config", "language_config", "llm_config")


def config_value(config: Mapping[str, Any] | None, keys: Sequence[str]) -> Any:
    """The first of `keys` present in a model config (looking into a multimodal model's text
    config too), or None."""
    if not config:
        return None
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    for nest in CONFIG_NESTS:
        sub = config.get(nest)
        if isinstance(sub, Mapping):
            found = config_value(sub, keys)
            if found is not None:
                return found
    return None


def resolve_from_config(bound: BoundScheme, config: Mapping[str, Any] | None) -> BoundScheme:
    """Fill the arguments a scheme takes from the model config (`Scheme.from_config`) when the
    rule left them unset; arguments the rule gives always win."""
    if not bound.scheme.from_config:
        return bound
    args = dict(bound.args)
    changed = False
    for param, keys, _required in bound.scheme.from_config:
        if args.get(param) is None:
            value = config_value(config, keys)
            if isinstance(value, int) and not isinstance(value, bool):
                args[param] = value
                changed = True
    if not changed:
        return bound
    return BoundScheme(bound.scheme, tuple((p.name, args[p.name]) for p in bound.scheme.params))


def scheme_table() -> list[dict[str, Any]]:
    """Every scheme with its signature, std formula and aliases, for `reinit schemes`."""
    from reinit.schemes.base import REQUIRED

    rows = []
    for s in SCHEMES.values():
        params = ", ".join(
            p.name
            if p.default is REQUIRED
            else f"{p.name}=auto"  # from the model config (or the tensor), see `from_config`
            if p.default is None
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
