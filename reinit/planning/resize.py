"""`--resize NAME=[d0,d1,...][:SCHEME]`: a named tensor grown or shrunk in place (issue 14 item
4), e.g. a vocabulary grown by 8 tokens (`transformer.wte.weight=[1008,*]`).

What it does, for every dim (`*` keeps a dim as it is):
- the leading block the old and new shapes share is kept, byte for byte (shrinking keeps the
  leading rows / columns);
- the new entries are filled by SCHEME. Default: `mean_resize` when only the rows (dim 0) of a
  1-D or 2-D tensor grow (transformers >= 4.46's `resize_token_embeddings`: new rows ~
  MVN(μ, 1e-9·Σ) of the kept rows, so a grown vocabulary barely moves the model's outputs; for
  a 1-D tensor such as an LM head's bias, the kept values' mean with spread 1e-9·std, as
  transformers does for the bias), else `zeros` (new columns of a Linear's weight then ignore
  the new inputs, so the layer computes what it did; integer tensors take zeros only).
  Any other scheme draws the whole new shape (fans from the new shape) from the tensor's own
  generator, then the kept block is put back, so new values are reproducible (docs/guide/rules-and-schemes.md);
- tied names (one storage, e.g. a `.bin` GPT-2's `wte` and `lm_head`) are resized together,
  with one value drawn under the name given.

A tensor whose rows alone grow streams like any other (its old bytes copied as they lie, the
new rows made at their own size: `new_rows`); any other resize is built whole in memory (like an
`--add`ed one), and every other tensor still streams. Resizing runs after `--drop` and `--rename` (names as renamed) and before `--add`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reinit import limits
from reinit.errors import RuleError, SchemeError
from reinit.io.checkpoint import TensorRef
from reinit.io.formats import dtype_name, dtype_size
from reinit.limits import MAX_TENSOR_BYTES, declared_bytes
from reinit.rules import Action, Pattern, Rule, parse_action
from reinit.schemes import KEEP, BoundScheme, bind_scheme, generate, seed_for
from reinit.schemes.transformer import mean_resize_values

__all__ = [
    "MEAN_RESIZE",
    "Resized",
    "ResizeSpec",
    "bind_fill",
    "check_whole_in_memory",
    "grows_rows_only",
    "new_rows",
    "parse_resize",
    "resize_ref",
    "resized_value",
]

MEAN_RESIZE = "mean_resize"

_RESIZE = re.compile(
    r"\s*(?P<name>[^=]+?)\s*=\s*\[(?P<shape>[^\]]*)\]\s*(?::(?P<rest>.+))?\Z", re.S
)


@dataclass(frozen=True)
class ResizeSpec:
    """`--resize` as written: the name, the new shape (None: the dim as it is), and the scheme
    for new entries (None: the default, chosen per tensor; `mean_resize` as its own fill)."""

    text: str
    name: str
    shape: tuple[int | None, ...]
    scheme: BoundScheme | None
    mean: bool = False  # `:mean_resize` given explicitly


@dataclass(frozen=True)
class Resized:
    """A resize resolved against the tensor it names: old and new shape, and how new entries
    are filled (`fill` is None for a pure shrink: nothing new)."""

    spec: ResizeSpec
    old: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: BoundScheme | None  # for a scheme other than mean_resize
    mean: bool  # new entries by mean_resize
    seed_name: str  # the name whose generator draws (the name given, for every tied name)

    @property
    def grows(self) -> bool:
        return any(n > o for o, n in zip(self.old, self.shape, strict=True))

    @property
    def fill_text(self) -> str:
        return MEAN_RESIZE if self.mean else (self.fill.describe() if self.fill else "")

    def note(self) -> str:
        """The report note: `resized [1000, 32] -> [1008, 32] (8 new rows by mean_resize)`."""
        head = f"resized {list(self.old)} -> {list(self.shape)}"
        if not self.grows:
            return f"{head} (leading entries kept)"
        new = [
            f"{n - o} new {_DIM_NAMES[i] if i < 2 else f'dim-{i} entries'}"
            for i, (o, n) in enumerate(zip(self.old, self.shape, strict=True))
            if n > o
        ]
        return f"{head} ({', '.join(new)} by {self.fill_text})"

    def rule(self) -> Rule:
        """The rule a grown tensor is reported under when no `--rule` overrides it."""
        if self.mean:
            scheme = bind_scheme(MEAN_RESIZE, (), {"old_rows": min(self.old[0], self.shape[0])})
        else:
            assert self.fill is not None
            scheme = self.fill
        text = f"--resize {self.spec.text}"
        return Rule(text, Pattern.literal(self.spec.name), parse_action(scheme.describe()), scheme)


_DIM_NAMES = ("rows", "columns")


def bind_fill(action: Action, where: str, needs_scheme: str) -> BoundScheme:
    """The scheme that fills values `--add`/`--resize` make: `keep` and `from(...)` have no
    values to give there (`needs_scheme` says what to write instead), and a bad scheme is a
    usage error naming the option."""
    if action.name in (KEEP, "from"):
        raise RuleError(f"{where}: {needs_scheme}")
    try:
        return bind_scheme(action.name, action.args, action.kwargs_dict())
    except SchemeError as e:
        raise RuleError(f"{where}: {e}") from None


def parse_resize(text: str) -> ResizeSpec:
    """`NAME=[d0,d1,...][:SCHEME]`, a dim `*` for unchanged: `wte.weight=[1008,*]`,
    `head.weight=[10,768]:normal(std=0.02)`."""
    where = f"--resize {text!r}"
    m = _RESIZE.match(text)
    if not m:
        raise RuleError(
            f"{where}: write NAME=[d0,d1,...][:SCHEME] ('*' keeps a dim), "
            "e.g. 'transformer.wte.weight=[1008,*]' or 'classifier.weight=[5,*]:normal(std=0.02)'"
        )
    dims: list[int | None] = []
    for d in m.group("shape").split(","):
        d = d.strip()
        if d == "*":
            dims.append(None)
            continue
        try:
            dims.append(int(d))
        except ValueError:
            raise RuleError(f"{where}: each dim must be an integer or '*', got {d!r}") from None
        if dims[-1] is not None and dims[-1] < 0:
            raise RuleError(f"{where}: the dim {d} is negative")
    rest = (m.group("rest") or "").strip()
    if not rest:
        return ResizeSpec(text, m.group("name"), tuple(dims), None)
    action = parse_action(rest, where)
    if action.name == MEAN_RESIZE:
        if action.args or action.kwargs:
            raise RuleError(f"{where}: write plain ':mean_resize' (the kept rows are the old ones)")
        return ResizeSpec(text, m.group("name"), tuple(dims), None, mean=True)
    bound = bind_fill(
        action,
        where,
        "new entries need a scheme (e.g. zeros, normal(std=0.02), mean_resize); to copy values "
        "into them, resize and then use --rule NAME=from(..., on_mismatch=slice)",
    )
    if bound.scheme.needs_context or bound.scheme.name == "default":
        raise RuleError(
            f"{where}: {bound.describe()} reads other values or the model; resize with the "
            "default fill, then give a --rule for the tensor"
        )
    return ResizeSpec(text, m.group("name"), tuple(dims), bound)


def resize_ref(spec: ResizeSpec, ref: TensorRef, seed_name: str) -> Resized:
    """The resize of tensor `ref` (its name after --rename): shapes checked, fill chosen."""
    where = f"--resize {spec.text!r}"
    old = ref.shape
    if len(spec.shape) != len(old):
        raise RuleError(
            f"{where}: '{ref.name}' is {list(old)} ({len(old)}-D); give {len(old)} dims "
            f"('*' keeps one), e.g. [{','.join(str(d) for d in old)}]"
        )
    shape = tuple(o if n is None else n for o, n in zip(old, spec.shape, strict=True))
    grows = [i for i, (o, n) in enumerate(zip(old, shape, strict=True)) if n > o]
    integer = not (ref.dtype.is_floating_point or ref.dtype.is_complex)
    mean, fill = spec.mean, spec.scheme
    if grows and not spec.mean and spec.scheme is None:  # the default fill
        mean = grows == [0] and len(old) in (1, 2) and not integer and min(old) > 0
        fill = None if mean else bind_scheme("zeros")
    if grows and mean:
        if grows != [0] or len(old) not in (1, 2):
            raise RuleError(
                f"{where}: mean_resize fills new rows of a 1-D or 2-D tensor; '{ref.name}' "
                f"{list(old)} -> {list(shape)} grows other dims (give a scheme, e.g. :zeros)"
            )
        if integer or old[0] == 0:
            raise RuleError(f"{where}: mean_resize needs float rows to average in '{ref.name}'")
    if grows and fill is not None:
        if integer and fill.scheme.name != "zeros":
            raise RuleError(
                f"{where}: '{ref.name}' is {dtype_name(ref.dtype)}: new entries of an integer "
                "tensor can only be zeros"
            )
        reason = fill.scheme.can_take(shape, fill.kwargs)
        if reason is not None:
            raise RuleError(f"{where}: {fill.describe()} cannot fill '{ref.name}': {reason}")
        overflow = fill.overflow(ref.dtype, shape)
        if overflow is not None:
            raise RuleError(f"{where}: '{ref.name}': {overflow}")
    if shape != old:
        check_whole_in_memory(where, shape, ref.dtype, "a resized tensor")
    return Resized(
        spec, old, shape, ref.dtype, fill if grows else None, mean and bool(grows), seed_name
    )


def check_whole_in_memory(
    where: str, shape: tuple[int, ...], dtype: torch.dtype, what: str
) -> None:
    """A tensor built whole in memory before it is written (`what`: an added or resized one):
    refuse, before any allocation, a size torch cannot address or this machine cannot hold."""
    nbytes = declared_bytes(shape, dtype_size(dtype))
    if nbytes is None:
        raise RuleError(
            f"{where}: the shape {list(shape)} needs more than {MAX_TENSOR_BYTES} bytes "
            "(2^63 - 1, the most torch can address); check the dims"
        )
    free = limits.available_memory()
    if nbytes > free:
        raise RuleError(
            f"{where}: the shape {list(shape)} of {dtype_name(dtype)} needs {nbytes:,} bytes, "
            f"more than the {free:,} bytes of memory available ({what} is generated whole in "
            "memory); check the dims"
        )


def resized_value(old: torch.Tensor, r: Resized, seed: int, device: str = "cpu") -> torch.Tensor:
    """The tensor `old` resized as `r` says: the shared leading block byte-identical, new
    entries drawn from the generator of (`seed`, `r.seed_name`). Returned on the CPU."""
    keep = tuple(slice(0, min(o, n)) for o, n in zip(r.old, r.shape, strict=True))
    kept = old[keep]
    if not r.grows:
        return kept.contiguous().clone()
    if r.mean:
        out = torch.empty(r.shape, dtype=old.dtype)
        out[: r.old[0]] = kept
        out[r.old[0] :] = _mean_rows(kept, r, seed, device)
        return out
    assert r.fill is not None
    out = generate(r.fill, r.seed_name, r.shape, old.dtype, seed, device)
    out[keep] = kept
    return out


def grows_rows_only(r: Resized) -> bool:
    """Whether only dim 0 grows: the old tensor's bytes are then the new one's leading bytes,
    as they lie, and the new rows follow them (so the engine can stream it)."""
    return r.shape[1:] == r.old[1:] and r.shape[0] > r.old[0]


def new_rows(
    r: Resized, old: Callable[[], torch.Tensor], seed: int, device: str = "cpu"
) -> torch.Tensor:
    """The rows a rows-only growth (`grows_rows_only`) appends, byte for byte those of
    `resized_value`: zeros made at their own size, `mean_resize` from the old values (`old()`
    is read only then), any other scheme drawn on the whole new shape in its working dtype (the
    generator's sequence depends on it) and only the new rows cast. On the CPU."""
    start = r.old[0]
    if r.mean:
        return _mean_rows(old(), r, seed, device)
    assert r.fill is not None
    if r.fill.scheme.name == "zeros":
        return torch.zeros((r.shape[0] - start, *r.shape[1:]), dtype=r.dtype)
    work = torch.float64 if r.dtype == torch.float64 else torch.float32  # as `generate` draws
    drawn = generate(r.fill, r.seed_name, r.shape, work, seed, device)
    return drawn[start:].to(r.dtype, copy=True)


def _mean_rows(kept: torch.Tensor, r: Resized, seed: int, device: str) -> torch.Tensor:
    """`mean_resize`'s new rows from the kept ones, in their dtype, on the CPU."""
    work = torch.float64 if kept.dtype == torch.float64 else torch.float32
    g = torch.Generator(device=device).manual_seed(seed_for(seed, r.seed_name))
    rows = kept.to(device=device, dtype=work)
    new = mean_resize_values(rows, r.shape[0] - r.old[0], g)
    return new.to(device="cpu", dtype=kept.dtype)
