"""Per-tensor statistics in float64 accumulation, one chunk at a time: mean, std, min, max over
the finite values and the count of NaN/Inf (scaled before squaring so huge finite values
do not overflow)."""

from __future__ import annotations

__all__ = ["Stats", "StatsAccumulator", "tensor_stats"]

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from reinit.report.jsonio import JSON, number


@dataclass(frozen=True)
class Stats:
    """Mean, std, min, max over the finite values (None when there are none) and the count
    of NaN/Inf values."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    nonfinite: int
    count: int = 0  # finite values counted; not part of the JSON schema

    def to_dict(self) -> dict[str, JSON]:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "nonfinite": self.nonfinite,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Stats:
        return Stats(
            number(d["mean"]),  # "NaN"/"Infinity" strings back as floats
            number(d["std"]),
            number(d["min"]),
            number(d["max"]),
            int(d["nonfinite"]),
        )


_FLOAT_CHUNK = 1 << 20  # elements per float32 work buffer (4 MB: stays in cache)


class StatsAccumulator:
    """Streaming mean/std/min/max/nonfinite of one tensor, fed chunk by chunk in order.

    Why it looks like this: statistics are on the hot path of every command (every byte of a
    checkpoint passes through here), so each chunk is converted once into a reused float32
    buffer (float64 for 64-bit types), shifted by a pivot (the tensor's first finite value, so
    E[x²]−E[x]² does not cancel for tensors like LayerNorm weights ≈ 1 ± 0.01), and reduced with
    torch's cascade summation; chunk sums are accumulated in float64. A chunk holding NaN/Inf
    (or values whose squares overflow) takes an exact masked path instead."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        wide = dtype in (torch.float64, torch.int64, torch.uint64, torch.int32, torch.uint32)
        self.work = torch.float64 if wide or dtype.is_complex else torch.float32
        self.is_float = dtype.is_floating_point
        self._buf: torch.Tensor | None = None
        self.n = 0
        self.s1 = 0.0  # Σ(x − pivot)
        self.s2 = 0.0  # Σ(x − pivot)²
        self.pivot: float | None = None
        self.exp = 0  # s1 is in units of 2**exp, s2 in units of 2**(2*exp)
        self.lo = math.inf
        self.hi = -math.inf
        self.bad = 0

    def add(self, chunk: torch.Tensor) -> None:
        flat = chunk.reshape(-1)
        if flat.dtype.is_complex:
            flat = torch.view_as_real(flat).reshape(-1)
        for i in range(0, flat.numel(), _FLOAT_CHUNK):
            self._add(flat[i : i + _FLOAT_CHUNK])

    def _add(self, part: torch.Tensor) -> None:
        k = part.numel()
        if k == 0:
            return
        if self._buf is None or self._buf.numel() < k:
            self._buf = torch.empty(max(k, min(_FLOAT_CHUNK, 1 << 16)), dtype=self.work)
        x = self._buf[:k]
        x.copy_(part)
        if self.pivot is None:
            first = float(x[0])
            self.pivot = first if math.isfinite(first) else 0.0
        lo, hi = torch.aminmax(x)
        lo_f, hi_f = float(lo), float(hi)
        x.sub_(self.pivot)
        s1 = float(x.sum())
        x.square_()
        s2 = float(x.sum())
        if math.isfinite(s1) and math.isfinite(s2) and math.isfinite(lo_f) and math.isfinite(hi_f):
            self._merge(k, s1, s2, lo_f, hi_f)
        else:
            self._add_masked(part)

    def _add_masked(self, part: torch.Tensor) -> None:
        """The exact path: finite values only, in float64; scaled by a power of two when the
        squares (or the differences from the pivot) would overflow, e.g. values near 1e200."""
        xd = part.to(torch.float64)
        finite = torch.isfinite(xd)
        self.bad += int(xd.numel() - int(finite.sum()))
        xd = xd[finite]
        k = xd.numel()
        if k == 0:
            return
        lo, hi = torch.aminmax(xd)
        lo_f, hi_f = float(lo), float(hi)
        if self.pivot is None or not math.isfinite(self.pivot):
            self.pivot = float(xd[0])
        d = xd - self.pivot
        s1, s2 = float(d.sum()), float(d.square().sum())
        if math.isfinite(s1) and math.isfinite(s2):
            self._merge(k, s1, s2, lo_f, hi_f)
            return
        # |x|, |pivot| < 2**(e-1), so every scaled difference lies in (-1, 1) and its square
        # sum is below k: nothing overflows, and a power of two scales exactly
        e = math.frexp(max(abs(lo_f), abs(hi_f), abs(self.pivot)))[1] + 1
        scale = math.ldexp(1.0, -e)
        y = xd * scale - self.pivot * scale
        self._merge(k, float(y.sum()), float(y.square().sum()), lo_f, hi_f, e)

    def _merge(self, k: int, s1: float, s2: float, lo: float, hi: float, e: int = 0) -> None:
        """Add a part's sums, given in units of 2**e (squares: 2**2e), to the running ones,
        which are kept in units of 2**self.exp: both go to the larger unit."""
        top = max(self.exp, e)
        self.s1 = math.ldexp(self.s1, self.exp - top) + math.ldexp(s1, e - top)
        self.s2 = math.ldexp(self.s2, 2 * (self.exp - top)) + math.ldexp(s2, 2 * (e - top))
        self.exp = top
        self.n += k
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)

    def result(self) -> Stats:
        if self.n == 0:
            return Stats(None, None, None, None, self.bad, 0)
        m1 = self.s1 / self.n
        var = max(self.s2 / self.n - m1 * m1, 0.0)
        mean = (self.pivot or 0.0) + _unscale(m1, self.exp)
        # the shifted sums can round outside [min, max] for near-constant tensors
        mean = min(max(mean, self.lo), self.hi)
        return Stats(mean, _unscale(math.sqrt(var), self.exp), self.lo, self.hi, self.bad, self.n)


def _unscale(x: float, e: int) -> float:
    """x * 2**e; inf only where the true value is beyond float64 (a std of values spanning
    ±1.8e308)."""
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(math.inf, x)


def tensor_stats(t: torch.Tensor) -> Stats:
    """Stats of any tensor: float (incl. bf16/fp16/fp8), integer and bool (never changed,
    but their values are summarized too)."""
    acc = StatsAccumulator(t.dtype)
    acc.add(t.detach())
    return acc.result()
