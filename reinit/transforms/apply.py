"""The one dispatch from a `TransformSpec` to the transforms, in the documented order:
select (several sources concatenated by `cat=`, then `chunk=`) -> `rotary=` -> at most one
adapter (`resample=`, `adapt=`, `rows=`). Casting and `on_mismatch=` follow in the planner.

`result_shape` answers from the source shapes alone (the planner checks every transplant
before anything is read); `transform` makes the values. Both raise `TransplantError` with the
reason when the shapes cannot work. Nothing here draws except an adapter's new values, and
those come from the tensor's own generator (`TransformContext.generator`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from reinit.errors import TransplantError
from reinit.schemes import seed_for
from reinit.transforms.fuse import cat_shape, chunk_bounds, chunk_shape, concat, take_chunk
from reinit.transforms.rotary import check_rotary, permute_rotary
from reinit.transforms.spec import TransformSpec

__all__ = [
    "ADAPTER_IMPLS",
    "AdapterApply",
    "AdapterShape",
    "Shape",
    "TransformContext",
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

    def generator(self) -> torch.Generator:
        """The tensor's own generator (DESIGN §3): new values stay reproducible."""
        return torch.Generator().manual_seed(seed_for(self.seed, self.name))


# an adapter: (the spec, the selected source's shape, the target's shape) -> the result's shape;
# (the spec, the selected source tensor, the context) -> the values and notes for the report
AdapterShape = Callable[[TransformSpec, Shape, Shape], Shape]
AdapterApply = Callable[
    [TransformSpec, torch.Tensor, TransformContext], tuple[torch.Tensor, tuple[str, ...]]
]


def _pending(kind: str) -> tuple[AdapterShape, AdapterApply]:
    def refuse() -> TransplantError:
        return TransplantError(f"{kind}= is not implemented yet (issue 15); leave it out")

    def shape(spec: TransformSpec, source: Shape, target: Shape) -> Shape:
        raise refuse()

    def apply(
        spec: TransformSpec, t: torch.Tensor, ctx: TransformContext
    ) -> tuple[torch.Tensor, tuple[str, ...]]:
        raise refuse()

    return shape, apply


# resample= (position tables), adapt= (conv stems), rows= (vocab / labels): one entry each
ADAPTER_IMPLS: dict[str, tuple[AdapterShape, AdapterApply]] = {
    "resample": _pending("resample"),
    "adapt": _pending("adapt"),
    "rows": _pending("rows"),
}


def result_shape(spec: TransformSpec, sources: Sequence[Shape], target: Shape) -> Shape:
    """The shape `transform` would give, from the source shapes alone (before the cast and
    on_mismatch=, which the planner applies)."""
    shape = cat_shape(sources, spec.dim) if len(sources) > 1 else tuple(sources[0])
    if spec.chunk is not None:
        shape = chunk_shape(shape, spec.chunk, spec.dim)
    if spec.rotary is not None:
        check_rotary(shape, spec.heads)
    if spec.adapter is not None:
        shape = ADAPTER_IMPLS[spec.adapter][0](spec, shape, target)
    return shape


def transform(
    spec: TransformSpec, sources: Sequence[torch.Tensor], ctx: TransformContext
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The transformed value (in the sources' dtype unless an adapter says otherwise) and
    notes saying what was done, for the report."""
    # notes name no tensor (the report's `from` does), so the terminal groups equal ones
    notes: list[str] = []
    if len(sources) > 1:
        t = concat(sources, spec.dim)
        notes.append(f"cat: {len(sources)} source tensors joined along dim {spec.dim}")
    else:
        t = sources[0]
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
