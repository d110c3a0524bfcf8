"""Conv stems adapted to another number of input channels (issue 15, docs/guide/transplant.md):
`from(SRC, adapt=channels)`.

timm's `adapt_input_conv`, for a convolution weight `[out, in, *kernel]` (any number of kernel
dims): computed in float32; 1 input channel = the sum over the source's input filters (RGB to
grey); N channels = the source's filters repeated ceil(N/in) times, the first N taken, scaled
by in/N (so a constant image gives the same response as before). With a 3-channel source this
is timm's formula exactly (repeat ceil(N/3) times, scale by 3/N). The output channels and the
kernel must match the target's."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reinit.errors import TransplantError

__all__ = ["adapt_channels", "check_stem", "stem_value"]


def check_stem(src_shape: Sequence[int], tgt_shape: Sequence[int], where: str) -> None:
    """Refuse (exit 2) shapes that `adapt=channels` cannot map: not a conv weight, or output
    channels / kernel that differ."""
    src, tgt = tuple(src_shape), tuple(tgt_shape)
    pair = f"source {list(src)} -> target {list(tgt)}"
    if len(src) < 3 or len(src) != len(tgt):
        raise TransplantError(
            f"{where}: needs a convolution weight [out, in, *kernel] on both sides; got {pair}"
        )
    if src[0] != tgt[0] or src[2:] != tgt[2:]:
        raise TransplantError(
            f"{where}: changes the input channels (dim 1) only; the output channels or the "
            f"kernel differ: {pair}"
        )
    if src[1] < 1 or tgt[1] < 1:
        raise TransplantError(f"{where}: needs at least one input channel; {pair}")


def adapt_channels(
    src: torch.Tensor, tgt_shape: Sequence[int], dtype: torch.dtype, where: str
) -> torch.Tensor:
    """The source conv weight with its input channels adapted to the target's (see the module
    doc), cast to `dtype`."""
    check_stem(src.shape, tgt_shape, where)
    w = src.float()
    have, want = w.shape[1], int(tgt_shape[1])
    if want == have:
        out = w
    elif want == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(want / have)
        out = w.repeat(1, reps, *([1] * (w.dim() - 2)))[:, :want] * (have / float(want))
    return out.to(dtype).contiguous()


def stem_value(
    src: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, where: str = "adapt=channels"
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The value a `from(..., adapt=channels)` transplant writes, and its report note."""
    out = adapt_channels(src, shape, dtype, where)
    have, want = src.shape[1], int(shape[1])
    how = (
        "same channels" if want == have else "summed" if want == 1 else f"repeated, x{have}/{want}"
    )
    return out, (f"adapt=channels: {have} -> {want} input channels ({how})",)
