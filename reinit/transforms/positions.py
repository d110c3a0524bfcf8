"""Position tables resampled to a new length or grid (issue 15, docs/guide/transplant.md "Transplants across
architecture changes"): `from(SRC, resample=linear|bilinear|bicubic|copy, prefix=N,
grid=HxW, init=SCHEME)`.

A table is read as `prefix` tokens kept as they are, then a grid of positions:

- a 2-D table `[L, d]` (BERT/GPT-2 `position_embeddings`) is a 1-D sequence, a grid of
  1 × L, unless `grid=` or `prefix=` says it is a 2-D grid (CLIP's `[1+H·W, d]`);
- a 3-D table `[1, N, d]` (ViT `pos_embed`) is a 2-D grid after `prefix` tokens. Without
  `prefix=`, the prefix is the first of 1, 0, 2, 3, …, 8 that leaves a square number of
  positions in both the source and the target (1 = a class token, timm's default; 0 = no class
  token; 2 = DeiT's class and distillation tokens); with `grid=HxW` it is what the grid leaves.

The source grid is the square root of its count (or `grid=`); the target grid is square, from
the target's shape. Resampling is timm's `resample_abs_pos_embed`: float32,
`torch.nn.functional.interpolate(mode=bilinear|bicubic, antialias=True)` with
`align_corners=False` (so antialiased when shrinking), cast back. `linear` on a 1-D table is
`interpolate(mode=linear, align_corners=False)` along the positions when growing (torch has
no antialias in 1-D), and the bilinear call above on its 1 × L grid when shrinking. `copy`
copies the overlapping positions (the prefix and the top-left block of the grid) and takes the
rest from a fill (the target's own values, or a scheme's draw from the tensor's own
generator)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reinit.errors import TransplantError

__all__ = [
    "MAX_AUTO_PREFIX",
    "RESAMPLE_MODES",
    "PositionLayout",
    "copy_positions",
    "parse_grid",
    "position_layout",
    "positions_value",
    "resample_positions",
]

RESAMPLE_MODES = ("linear", "bilinear", "bicubic", "copy")

MAX_AUTO_PREFIX = 8  # the largest prefix-token count tried when prefix= is not given

_AUTO_PREFIXES = (1, 0, *range(2, MAX_AUTO_PREFIX + 1))

_GRID = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*\Z")


def parse_grid(text: str, where: str) -> tuple[int, int]:
    """`grid=HxW` as (H, W), both at least 1."""
    m = _GRID.match(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise TransplantError(
            f"{where}: grid={text!r} is not HxW (two positive integers, e.g. 14x14)"
        )
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class PositionLayout:
    """How a source position table maps onto the target's: `prefix` tokens kept, then a grid
    of `src_grid` (rows, cols) positions resampled to `tgt_grid`. A 1-D table is a grid of one
    row. `tgt_shape`: the target tensor's shape."""

    prefix: int
    src_grid: tuple[int, int]
    tgt_grid: tuple[int, int]
    tgt_shape: tuple[int, ...]
    two_d: bool

    def describe(self) -> str:
        """For the report: `prefix 1 kept, grid 14x14 -> 24x24` or `positions 512 -> 1024`."""
        if not self.two_d:
            return f"positions {self.src_grid[1]} -> {self.tgt_grid[1]}"
        (h, w), (th, tw) = self.src_grid, self.tgt_grid
        pre = f"prefix {self.prefix} kept, " if self.prefix else ""
        return f"{pre}grid {h}x{w} -> {th}x{tw}"


def _square(n: int) -> int | None:
    if n < 1:
        return None
    r = math.isqrt(n)
    return r if r * r == n else None


def position_layout(
    src_shape: Sequence[int],
    tgt_shape: Sequence[int],
    *,
    prefix: int | None = None,
    grid: tuple[int, int] | None = None,
    where: str,
) -> PositionLayout:
    """The layout of a source table resampled into the target's shape, or an exit-2 error that
    says why the shapes cannot work and what to give (`prefix=`, `grid=`)."""
    src, tgt = tuple(src_shape), tuple(tgt_shape)
    pair = f"source {list(src)} -> target {list(tgt)}"
    if len(src) != len(tgt) or len(src) not in (2, 3):
        raise TransplantError(
            f"{where}: a position table is [positions, dim] or [1, positions, dim]; got {pair}"
        )
    if len(src) == 3 and (src[0] != 1 or tgt[0] != 1):
        raise TransplantError(
            f"{where}: a 3-D position table must be [1, positions, dim]; got {pair}"
        )
    if src[-1] != tgt[-1]:
        raise TransplantError(
            f"{where}: the embedding widths differ ({src[-1]} vs {tgt[-1]}): resampling changes "
            f"the number of positions only; got {pair}"
        )
    n_src, n_tgt = src[-2], tgt[-2]
    two_d = len(src) == 3 or grid is not None or prefix is not None
    if not two_d:
        return PositionLayout(0, (1, n_src), (1, n_tgt), tgt, False)
    if prefix is not None and prefix < 0:
        raise TransplantError(f"{where}: prefix={prefix} must be 0 or more")
    if grid is not None:
        h, w = grid
        p = n_src - h * w if prefix is None else prefix
        if p < 0 or p + h * w != n_src:
            raise TransplantError(
                f"{where}: grid={h}x{w}{'' if prefix is None else f' with prefix={prefix}'} "
                f"does not fit the source's {n_src} positions; {pair}"
            )
        src_grid = (h, w)
    elif prefix is not None:
        p = prefix
        side = _square(n_src - p)
        if side is None:
            raise TransplantError(
                f"{where}: the source's {n_src} positions less prefix={p} is not a square grid; "
                f"give grid=HxW; {pair}"
            )
        src_grid = (side, side)
    else:
        found = [q for q in _AUTO_PREFIXES if _square(n_src - q) and _square(n_tgt - q)]
        if not found:
            raise TransplantError(
                f"{where}: cannot tell the prefix tokens: no count 0..{MAX_AUTO_PREFIX} leaves a "
                f"square grid in both the source ({n_src} positions) and the target ({n_tgt}); "
                "give prefix=N and/or grid=HxW"
            )
        p = found[0]
        side = _square(n_src - p)
        assert side is not None
        src_grid = (side, side)
    tside = _square(n_tgt - p)
    if tside is None:
        raise TransplantError(
            f"{where}: the target's {n_tgt} positions less {p} prefix token(s) is not a square "
            f"grid (the target grid is taken as square); {pair}"
        )
    return PositionLayout(p, src_grid, (tside, tside), tgt, True)


def _split(src: torch.Tensor, layout: PositionLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix rows [p, d], grid [1, d, H, W]) of a source table, in float32."""
    d = src.shape[-1]
    table = src.float().reshape(-1, d)
    h, w = layout.src_grid
    body = table[layout.prefix :].reshape(1, h, w, d).permute(0, 3, 1, 2)
    return table[: layout.prefix], body


def resample_positions(
    src: torch.Tensor, layout: PositionLayout, mode: str, dtype: torch.dtype
) -> torch.Tensor:
    """The source table resampled into the target's shape (`mode` linear/bilinear or bicubic),
    computed in float32 and cast to `dtype`. The prefix rows are kept as they are."""
    if mode not in ("linear", "bilinear", "bicubic"):
        raise ValueError(f"resample mode {mode!r}")
    pre, body = _split(src, layout)
    (_, n), (_, m) = layout.src_grid, layout.tgt_grid
    if not layout.two_d and mode != "bicubic" and m > n:  # growing a 1-D table: plain linear
        line = torch.nn.functional.interpolate(
            body[:, :, 0], size=m, mode="linear", align_corners=False
        )
        return line[0].T.reshape(layout.tgt_shape).to(dtype)
    if layout.src_grid != layout.tgt_grid:
        body = torch.nn.functional.interpolate(
            body,
            size=layout.tgt_grid,
            mode="bicubic" if mode == "bicubic" else "bilinear",
            align_corners=False,
            antialias=True,
        )
    d = src.shape[-1]
    grid = body.permute(0, 2, 3, 1).reshape(-1, d)
    return torch.cat([pre, grid]).reshape(layout.tgt_shape).to(dtype)


def copy_positions(
    src: torch.Tensor, layout: PositionLayout, fill: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """`resample=copy`: the prefix and the overlapping block of the grid (the first positions
    of a 1-D table) copied from `src`, every other position from `fill` (target-shaped, in the
    target's dtype). Returns the tensor and how many positions were copied."""
    out = fill.clone()
    d = out.shape[-1]
    flat = out.view(-1, d)
    table = src.to(out.dtype).reshape(-1, d)
    p = layout.prefix
    flat[:p] = table[:p]
    (h, w), (th, tw) = layout.src_grid, layout.tgt_grid
    rows, cols = min(h, th), min(w, tw)
    grid_out = flat[p:].view(th, tw, d)
    grid_out[:rows, :cols] = table[p:].reshape(h, w, d)[:rows, :cols]
    return out, p + rows * cols


def positions_value(
    src: torch.Tensor,
    shape: Sequence[int],
    dtype: torch.dtype,
    *,
    mode: str,
    prefix: int | None,
    grid: tuple[int, int] | None,
    fill: torch.Tensor | None,
    where: str,
    fill_name: str = "keep",
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The value a `from(..., resample=MODE)` transplant writes, and its report note. `fill`:
    for `copy`, the target-shaped values of the positions not copied (see `rows.fill_values`),
    made as `fill_name` says."""
    layout = position_layout(src.shape, shape, prefix=prefix, grid=grid, where=where)
    if mode == "copy":
        if fill is None:
            raise ValueError("resample=copy needs a fill")
        out, copied = copy_positions(src, layout, fill)
        total = math.prod(tuple(shape)[:-1])
        rest = f"{total - copied} new ({fill_name})"
        return out, (f"resample=copy: {layout.describe()}; {copied} copied, {rest}",)
    out = resample_positions(src, layout, mode, dtype)
    return out, (f"resample={mode}: {layout.describe()}",)
