"""Rows mapped by name (issue 15, docs/guide/transplant.md): `from(SRC, rows=tokens|labels, vocab=PATH,
src_vocab=PATH, new=SCHEME)`.

Each target row (dim 0: embedding rows, LM-head rows, a classifier's weight rows and bias
entries) takes the source row of the same token string (or class name); rows whose name the
source lacks, and rows no name points at (padding rows past the tokenizer), are *new* and take
`new=`:

- `mean_resize` (the default for tokens): the mean of the copied rows plus noise with 1e-9
  times their covariance, as transformers ≥ 4.46 resizes embeddings (`mean_resize_rows`);
  a 1-D tensor (a bias) is read as rows of width 1;
- `keep` (the default for labels): the target's own values, as a freshly built head has them;
- any scheme (`normal(std=0.02)`): the values that scheme gives the whole tensor, at the new
  rows, so a new row equals what `--rule NAME=SCHEME` would have written there.

Every draw comes from the tensor's own generator (docs/guide/rules-and-schemes.md `seed_for`). Copied rows are cast
to the target's dtype, so with equal dtypes they are byte-identical to the source's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from reinit.errors import TransplantError
from reinit.schemes import BoundScheme, generate, seed_for
from reinit.schemes.transformer import mean_resize_rows

__all__ = [
    "KEEP",
    "MEAN_RESIZE",
    "NewFill",
    "RowMap",
    "RowNames",
    "describe_fill",
    "fill_values",
    "map_rows",
    "remap_rows",
    "rows_value",
]

MEAN_RESIZE = "mean_resize"
KEEP = "keep"

# What new rows (or positions) get: "mean_resize", "keep", or a bound scheme.
NewFill = BoundScheme | str


def describe_fill(new: NewFill) -> str:
    return new if isinstance(new, str) else new.describe()


@dataclass(frozen=True)
class RowNames:
    """The names of the source's and the target's rows (name -> row), and how they were
    found (for the report: `by token (tokenizer.json -> vocab.txt)`)."""

    source: Mapping[str, int]
    target: Mapping[str, int]
    how: str


@dataclass(frozen=True)
class RowMap:
    """Per target row, the source row it copies, or -1 for a new row."""

    sources: tuple[int, ...]

    @property
    def copied(self) -> int:
        return sum(1 for s in self.sources if s >= 0)

    @property
    def new(self) -> int:
        return len(self.sources) - self.copied

    def note(self, new: NewFill) -> str:
        """The report's count: `rows: 50000 copied, 262 new (mean_resize)`."""
        return f"rows: {self.copied} copied, {self.new} new ({describe_fill(new)})"


def _check_ids(names: Mapping[str, int], rows: int, where: str, what: str) -> None:
    beyond = [(n, i) for n, i in names.items() if i >= rows]
    if beyond:
        n, i = max(beyond, key=lambda x: x[1])
        raise TransplantError(
            f"{where}: the {what} gives {n!r} id {i}, but the {what.split()[0]} tensor has "
            f"{rows} rows ({len(beyond)} id(s) past the end); is it the right file?"
        )


def map_rows(
    src_names: Mapping[str, int],
    tgt_names: Mapping[str, int],
    src_rows: int,
    tgt_rows: int,
    *,
    where: str,
    what: str = "vocab",
) -> RowMap:
    """Each target row's source row by name. A target id past the target's rows, or a source
    id past the source's, is an exit-2 error (the file does not describe the tensor). When two
    names share a target id, the one the file lists last wins (its added tokens)."""
    _check_ids(src_names, src_rows, where, f"source {what}")
    _check_ids(tgt_names, tgt_rows, where, f"target {what}")
    sources = [-1] * tgt_rows
    for name, tid in tgt_names.items():
        sid = src_names.get(name)
        sources[tid] = -1 if sid is None else sid
    return RowMap(tuple(sources))


def fill_values(
    new: NewFill,
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int,
    target: torch.Tensor,
) -> torch.Tensor:
    """A target-shaped tensor whose values at new rows/positions are what `new` gives them
    (`keep`: the target's; a scheme: its draw for the whole tensor). Not for mean_resize, which
    depends on the copied rows (see `remap_rows`)."""
    if isinstance(new, str):
        if new != KEEP:
            raise ValueError(f"fill {new!r}")
        return target.to(dtype)
    if new.scheme.needs_context:
        raise TransplantError(
            f"'{name}': {new.describe()} reads other tensors and cannot fill new rows; "
            f"use {MEAN_RESIZE}, {KEEP} or a scheme such as normal(std=0.02)"
        )
    return generate(new, name, shape, dtype, seed)


def remap_rows(
    src: torch.Tensor,
    rowmap: RowMap,
    new: NewFill,
    *,
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int,
    target: torch.Tensor,
) -> torch.Tensor:
    """The target tensor: the mapped rows copied from `src` (cast to `dtype`), the new rows
    from `new` (see the module doc)."""
    shape = tuple(shape)
    if src.dim() != len(shape) or tuple(src.shape[1:]) != shape[1:]:
        raise TransplantError(
            f"'{name}': rows= maps dim 0 only; the other dims differ: source "
            f"{list(src.shape)} -> target {list(shape)}"
        )
    picked = [(t, s) for t, s in enumerate(rowmap.sources) if s >= 0]
    tgt_idx = torch.tensor([t for t, _ in picked], dtype=torch.long)
    src_idx = torch.tensor([s for _, s in picked], dtype=torch.long)
    fresh = [t for t, s in enumerate(rowmap.sources) if s < 0]
    if new == MEAN_RESIZE:
        out = torch.empty(shape, dtype=dtype)
        if fresh:
            if not picked:
                raise TransplantError(
                    f"'{name}': no row's name is in both vocabularies, so {MEAN_RESIZE} has no "
                    "rows to take a mean of; check vocab=/src_vocab= or give new=SCHEME"
                )
            work = torch.float64 if dtype == torch.float64 else torch.float32
            old = src.to(work)[src_idx].reshape(len(picked), -1)
            g = torch.Generator().manual_seed(seed_for(seed, name))
            drawn = mean_resize_rows(old, len(fresh), g)
            out[torch.tensor(fresh, dtype=torch.long)] = drawn.reshape(len(fresh), *shape[1:]).to(
                dtype
            )
    else:
        out = fill_values(new, name, shape, dtype, seed, target).clone()
    if picked:
        out[tgt_idx] = src.to(dtype)[src_idx]
    return out.contiguous()


def rows_value(
    src: torch.Tensor,
    target: torch.Tensor,
    rowmap: RowMap,
    new: NewFill,
    *,
    name: str,
    seed: int,
    how: str,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The value a `from(..., rows=...)` transplant writes, and its report notes (the counts,
    how the rows were named)."""
    out = remap_rows(
        src,
        rowmap,
        new,
        name=name,
        shape=target.shape,
        dtype=target.dtype,
        seed=seed,
        target=target,
    )
    return out, (rowmap.note(new), f"rows mapped {how}")
