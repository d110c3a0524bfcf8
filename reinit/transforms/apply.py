"""The one dispatch from a `TransformSpec` to the transforms, in the documented order:
select (several sources concatenated by `cat=`, then `chunk=`) -> `rotary=` -> at most one
adapter (`resample=`, `adapt=`, `rows=`). Casting and `on_mismatch=` follow in the planner.

`result_shape` answers from the source shapes alone (the planner checks every transplant
before anything is read); `transform` makes the values. Both raise `TransplantError` with the
reason when the shapes cannot work. Nothing here draws except an adapter's new values, and
those come from the tensor's own generator (`TransformContext.generator`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from reinit.errors import TransplantError
from reinit.schemes import seed_for
from reinit.transforms.experts import select_expert, select_shape, stack_experts, stack_shape
from reinit.transforms.fuse import cat_shape, chunk_bounds, chunk_shape, concat, take_chunk
from reinit.transforms.positions import position_layout, positions_value
from reinit.transforms.rotary import check_rotary, permute_rotary
from reinit.transforms.rows import (
    NewFill,
    RowNames,
    describe_fill,
    fill_values,
    map_rows,
    rows_value,
)
from reinit.transforms.spec import TransformSpec
from reinit.transforms.stems import check_stem, stem_value

__all__ = [
    "ADAPTER_IMPLS",
    "AdapterApply",
    "AdapterShape",
    "Shape",
    "TransformContext",
    "other_dim_hint",
    "result_shape",
    "transform",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TransformContext:
    """What a transform may know besides its sources: the target tensor (name, shape, dtype,
    current values when known), the run's seed, and the source tensors' names (for notes)."""

    name: str
    target_shape: Shape
    target_dtype: torch.dtype
    seed: int = 0
    target: torch.Tensor | None = None  # the target's current values (None at plan time)
    source_keys: tuple[str, ...] = ()
    rule: str = ""
    # resample=copy's init= / rows=' new= bound (planning/adapters.py), and rows=' names
    fill: NewFill | None = None
    names: RowNames | None = None

    def generator(self) -> torch.Generator:
        """The tensor's own generator (docs/guide/rules-and-schemes.md): new values stay reproducible."""
        return torch.Generator().manual_seed(seed_for(self.seed, self.name))


# an adapter: (the spec, the selected source's shape, the target's shape) -> the result's shape;
# (the spec, the selected source tensor, the context) -> the values and notes for the report
AdapterShape = Callable[[TransformSpec, Shape, Shape], Shape]
AdapterApply = Callable[
    [TransformSpec, "torch.Tensor", TransformContext], tuple["torch.Tensor", tuple[str, ...]]
]  # (quoted: read at import, and torch loads only when a run computes)


def _target(ctx: TransformContext) -> torch.Tensor:
    if ctx.target is None:
        raise TransplantError("needs the target's current values")
    return ctx.target


def _resample_shape(spec: TransformSpec, source: Shape, target: Shape) -> Shape:
    where = f"resample={spec.resample}"
    return position_layout(
        source, target, prefix=spec.prefix, grid=spec.grid, where=where
    ).tgt_shape


def _resample(
    spec: TransformSpec, t: torch.Tensor, ctx: TransformContext
) -> tuple[torch.Tensor, tuple[str, ...]]:
    assert spec.resample is not None
    fill = None
    if spec.resample == "copy":
        how = ctx.fill if ctx.fill is not None else "keep"
        tgt = _target(ctx)
        fill = fill_values(how, ctx.name, ctx.target_shape, ctx.target_dtype, ctx.seed, tgt)
    return positions_value(
        t,
        ctx.target_shape,
        ctx.target_dtype,
        mode=spec.resample,
        prefix=spec.prefix,
        grid=spec.grid,
        fill=fill,
        where=f"resample={spec.resample}",
        fill_name=describe_fill(ctx.fill if ctx.fill is not None else "keep"),
    )


def _adapt_shape(spec: TransformSpec, source: Shape, target: Shape) -> Shape:
    check_stem(source, target, f"adapt={spec.adapt}")
    return target


def _adapt(
    spec: TransformSpec, t: torch.Tensor, ctx: TransformContext
) -> tuple[torch.Tensor, tuple[str, ...]]:
    return stem_value(t, ctx.target_shape, ctx.target_dtype, f"adapt={spec.adapt}")


def _rows_shape(spec: TransformSpec, source: Shape, target: Shape) -> Shape:
    if len(source) != len(target) or source[1:] != target[1:] or not source:
        raise TransplantError(
            f"rows={spec.rows} maps rows (dim 0) only; the other dims must match: "
            f"source {list(source)} -> target {list(target)}"
        )
    return target


def _rows(
    spec: TransformSpec, t: torch.Tensor, ctx: TransformContext
) -> tuple[torch.Tensor, tuple[str, ...]]:
    where = f"rows={spec.rows}"
    if ctx.names is None or ctx.fill is None:
        raise TransplantError(f"{where}: the row names were not resolved (a plan without a run)")
    what = "vocab" if spec.rows == "tokens" else "id2label"
    n = ctx.names
    rowmap = map_rows(n.source, n.target, t.shape[0], ctx.target_shape[0], where=where, what=what)
    return rows_value(t, _target(ctx), rowmap, ctx.fill, name=ctx.name, seed=ctx.seed, how=n.how)


# resample= (position tables), adapt= (conv stems), rows= (vocab / labels): one entry each
ADAPTER_IMPLS: dict[str, tuple[AdapterShape, AdapterApply]] = {
    "resample": (_resample_shape, _resample),
    "adapt": (_adapt_shape, _adapt),
    "rows": (_rows_shape, _rows),
}


def result_shape(spec: TransformSpec, sources: Sequence[Shape], target: Shape) -> Shape:
    """The shape `transform` would give, from the source shapes alone (before the cast and
    on_mismatch=, which the planner applies)."""
    if spec.experts:
        shape = stack_shape(sources, spec.experts, spec.dim)
    else:
        shape = cat_shape(sources, spec.dim) if len(sources) > 1 else tuple(sources[0])
    if spec.expert is not None:
        shape = select_shape(shape, spec.expert)
    if spec.chunk is not None:
        shape = chunk_shape(shape, spec.chunk, spec.dim)
    if spec.rotary is not None:
        check_rotary(shape, spec.heads)
    if spec.adapter is not None:
        shape = ADAPTER_IMPLS[spec.adapter][0](spec, shape, target)
    return shape


def other_dim_hint(spec: TransformSpec, sources: Sequence[Shape], target: Shape) -> str:
    """For a `chunk=` or `cat=` that cannot make the target's shape along its dim: the dim
    along which it would (GPT-2's Conv1D weights are [in, out], so its fused `c_attn` splits
    along dim=1 where a Linear's `qkv` splits along dim 0), as text to add to the refusal;
    "" when no other dim does."""
    if spec.experts or (spec.chunk is None and len(sources) < 2):
        return ""
    for d in range(min(len(s) for s in sources)):
        if d == spec.dim:
            continue
        try:
            fits = result_shape(replace(spec, dim=d), sources, target) == tuple(target)
        except TransplantError:
            continue
        if fits:
            return (
                f"; with dim={d} it gives {list(target)}: add dim={d} (a GPT-2 Conv1D weight "
                "is [in, out]: its fused c_attn splits and joins along dim=1)"
            )
    return ""


def transform(
    spec: TransformSpec, sources: Sequence[torch.Tensor], ctx: TransformContext
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The transformed value (in the sources' dtype unless an adapter says otherwise) and
    notes saying what was done, for the report."""
    # notes name no tensor (the report's `from` does), so the terminal groups equal ones
    notes: list[str] = []
    if spec.experts:
        t = stack_experts(sources, spec.experts, spec.dim)
        notes.append(f"stack: {spec.experts} experts stacked along a new dim 0")
    elif len(sources) > 1:
        t = concat(sources, spec.dim)
        notes.append(f"cat: {len(sources)} source tensors joined along dim {spec.dim}")
    else:
        t = sources[0]
    if spec.expert is not None:
        whole = list(t.shape)
        t = select_expert(t, spec.expert)
        notes.append(f"expert {spec.expert}: index {spec.expert} along dim 0 of a {whole} source")
    if spec.chunk is not None:
        a, b = chunk_bounds(spec.chunk, t.shape[spec.dim] if spec.dim < t.dim() else 0, spec.dim)
        whole = list(t.shape)
        t = take_chunk(t, spec.chunk, spec.dim)
        notes.append(
            f"chunk {spec.chunk.text}: indices {a}:{b} along dim {spec.dim} of a {whole} source"
        )
    if spec.rotary is not None:
        t = permute_rotary(t, spec.rotary, spec.heads)
        notes.append(f"rotary {spec.rotary}: rows permuted for {spec.heads} heads")
    if spec.adapter is not None:
        t, more = ADAPTER_IMPLS[spec.adapter][1](spec, t, ctx)
        notes += more
    return t, tuple(notes)
