"""What casting a transplanted tensor into the target's dtype may do to its values, checked:
wrapping into an integer dtype and dropping a complex source's imaginary part are refused,
rounding and overflow to inf are noted."""

from __future__ import annotations

import torch

from reinit.errors import TransplantError
from reinit.io.formats import dtype_name

__all__ = ["lossy_cast_note", "refuse_out_of_range"]


def refuse_out_of_range(src: torch.Tensor, dtype: torch.dtype, where: str) -> None:
    """Casting into an integer dtype wraps what does not fit (300 -> 44 in int8) and turns
    NaN/inf into garbage: such a source is refused (exit 2) instead of written wrapped.
    Float-to-float casts round (a "lossy cast" note) and overflow to inf (counted there)."""
    if src.is_complex() and not dtype.is_complex and src.numel():
        raise TransplantError(
            f"{where}: a complex source cannot go into {dtype_name(dtype)} (its imaginary part "
            "would be dropped); save its real part as a source first, or transplant into a complex "
            "tensor"
        )
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool or src.numel() == 0:
        return
    info = torch.iinfo(dtype)
    bad = src.isnan() if src.is_floating_point() else torch.zeros_like(src, dtype=torch.bool)
    if src.is_floating_point():
        bad |= (src < info.min) | (src > info.max) | src.isinf()
    elif src.dtype == torch.uint64:  # above int64's max its int64 view is negative
        wide = src.view(torch.int64)
        bad |= (wide < 0) | (wide > info.max)
    elif src.dtype != torch.bool:
        wide = src.to(torch.int64)
        bad |= (wide < info.min) | (wide > info.max)
    count = int(bad.sum())
    if count:
        raise TransplantError(
            f"{where}: {count} source value(s) do not fit {dtype_name(dtype)} "
            f"[{info.min}, {info.max}] (or are not finite) and would wrap around; convert the "
            "source first, or transplant into a tensor of a wider dtype"
        )


def lossy_cast_note(src: torch.Tensor, cast: torch.Tensor) -> str | None:
    """A note when casting changed any value (e.g. float32 -> bfloat16 rounding)."""
    if src.dtype == cast.dtype:
        return None
    back = cast.to(src.dtype)
    same = (
        torch.equal(back, src)
        if not src.is_floating_point()
        else bool(((back == src) | (back.isnan() & src.isnan())).all())
    )
    if same:
        return None
    note = f"lossy cast {dtype_name(src.dtype)} -> {dtype_name(cast.dtype)}"
    if src.is_floating_point() and cast.is_floating_point():
        overflowed = int((cast.isinf() & src.isfinite()).sum())
        if overflowed:
            note += f"; {overflowed} values overflowed to inf"
    return note
