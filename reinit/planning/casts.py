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
    src = _wide(src)
    count = int(_not_fitting(src, info).sum())
    if count:
        raise TransplantError(
            f"{where}: {count} source value(s) do not fit {dtype_name(dtype)} "
            f"[{info.min}, {info.max}] (or are not finite) and would wrap around; convert the "
            "source first, or transplant into a tensor of a wider dtype"
        )


def _not_fitting(src: torch.Tensor, info: torch.iinfo) -> torch.Tensor:
    """Where `src`'s values do not fit the integer type `info` describes. Bounds are compared
    where they are exact: a float against 2**k (int32's max + 1 is 2**31, which float32 holds,
    where 2**31 - 1 rounds up and let 2**31 through to wrap), an integer in int64 unless the
    bound is uint64's max, which int64 cannot hold (every value was counted as not fitting)."""
    if src.is_floating_point():
        return src.isnan() | src.isinf() | (src < info.min) | (src >= float(info.max) + 1.0)
    if src.dtype == torch.bool:
        return torch.zeros_like(src)
    big = info.max >= 2**63  # uint64: only a negative value misses
    if src.dtype == torch.uint64:  # above int64's max its int64 view is negative
        wide = src.view(torch.int64)
        return torch.zeros_like(src, dtype=torch.bool) if big else (wide < 0) | (wide > info.max)
    wide = src.to(torch.int64)
    return wide < info.min if big else (wide < info.min) | (wide > info.max)


def lossy_cast_note(src: torch.Tensor, cast: torch.Tensor) -> str | None:
    """A note when casting changed any value (e.g. float32 -> bfloat16 rounding), with how many
    finite values fell outside the target's range: float16 makes them inf, float8_e4m3fn
    saturates them at +-448 (it has no inf)."""
    if src.dtype == cast.dtype:
        return None
    wide_src, back = _wide(src), _wide(cast.to(src.dtype))
    same = (
        torch.equal(back, wide_src)
        if not wide_src.is_floating_point()
        else bool(((back == wide_src) | (back.isnan() & wide_src.isnan())).all())
    )
    if same:
        return None
    note = f"lossy cast {dtype_name(src.dtype)} -> {dtype_name(cast.dtype)}"
    if src.is_floating_point() and cast.is_floating_point():
        note += _out_of_range(wide_src, _wide(cast), cast.dtype)
    return note


def _out_of_range(src: torch.Tensor, cast: torch.Tensor, dtype: torch.dtype) -> str:
    """'; N values overflowed to inf' (or to nan, or saturated at the largest value: float8_e4m3fn
    has no inf) for the finite `src` values beyond what `dtype` holds; '' when none."""
    out = src.isfinite() & ((src.abs() > torch.finfo(dtype).max) | ~cast.isfinite())
    count = int(out.sum())
    if not count:
        return ""
    got = cast[out]
    if bool(got.isinf().all()):
        return f"; {count} values overflowed to inf"
    if bool(got.isnan().all()):
        return f"; {count} values overflowed to nan"
    top = torch.finfo(dtype).max
    if bool((got.abs() == top).all()):
        return f"; {count} values out of range saturated at +-{top:g}"
    return f"; {count} values out of range of {dtype_name(dtype)} (saturated or not finite)"


def _wide(t: torch.Tensor) -> torch.Tensor:
    """`t` as float32 when it is a one-byte float (float8, e8m0): torch compares and tests
    those for inf/nan in no kernel, and float32 holds each of their values exactly."""
    if t.is_floating_point() and t.element_size() == 1:
        return t.float()
    return t
