"""Per-tensor statistics in float64 accumulation, one chunk at a time: mean, std, min, max over
the finite values and the count of NaN/Inf (scaled before squaring so huge finite values
do not overflow). The hot loop is `report.kernels` (numpy on the raw bytes); torch is imported
only where a torch tensor is handed in, so `reinit report` of a safetensors file runs without
it."""

from __future__ import annotations

__all__ = ["TORCH_STEP", "Buffers", "ChunkSums", "Stats", "StatsAccumulator", "tensor_stats"]

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reinit.report.jsonio import JSON, number
from reinit.report.kernels import (
    CODE_NAMES,
    SUB,
    Buffers,
    ChunkSums,
    chunk_sums,
    code_of,
    first_value,
    raw_dtype,
)

if TYPE_CHECKING:
    import torch


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


TORCH_STEP = 1 << 22  # elements of a non-CPU (or non-contiguous) tensor moved at a time


class StatsAccumulator:
    """Streaming mean/std/min/max/nonfinite of one tensor, fed chunk by chunk in order.

    `dtype` is a torch dtype, its name ("bfloat16", as `TensorRef.dtype_name`) or a safetensors
    code ("BF16", "F8_E4M3", ...). Feed it torch tensors (`add`) or the raw little-endian bytes
    of that dtype (`add_bytes`, no torch).

    Why it looks like this: statistics are on the hot path of every command (every byte of a
    checkpoint passes through here), so each chunk is decoded one cache-sized sub-chunk at a
    time into a reused float32 buffer (float64 for 64-bit and 32-bit integer types), shifted
    by a pivot (the tensor's first finite value, so E[x²]−E[x]² does not cancel for tensors
    like LayerNorm weights ≈ 1 ± 0.01) and reduced in one fused pass (`report.kernels`);
    sub-chunk sums are accumulated in float64. A sub-chunk holding NaN/Inf (or values whose
    squares overflow) takes an exact masked path instead."""

    def __init__(self, dtype: torch.dtype | str):
        self.dtype = dtype
        if isinstance(dtype, str) and dtype in CODE_NAMES:
            code: str | None = dtype
        else:  # a name, or a torch dtype (whose str is "torch." and its name)
            code = code_of(str(dtype).removeprefix("torch."))
        # a torch dtype the kernel does not decode (e.g. float8_e4m3fnuz) is widened first
        self.code = code or "F64"
        self.widen = code is None
        self._raw = raw_dtype(self.code)
        self._bufs: Buffers | None = None
        self.n = 0
        self.s1 = 0.0  # Σ(x − pivot)
        self.s2 = 0.0  # Σ(x − pivot)²
        self.pivot: float | None = None
        self.exp = 0  # s1 is in units of 2**exp, s2 in units of 2**(2*exp)
        self.lo = math.inf
        self.hi = -math.inf
        self.bad = 0
        self.pair_diff = 0.0  # complex: Σ(re − im) over the pairs with both parts finite
        self.pairs = 0

    def add(self, chunk: torch.Tensor) -> None:
        """A torch tensor's values (any device, any layout), in order."""
        flat = chunk.detach().reshape(-1)
        if self.widen:
            import torch

            flat = flat.to(torch.float64)
        for i in range(0, flat.numel(), TORCH_STEP):
            part = flat[i : i + TORCH_STEP].cpu().contiguous()
            self.add_bytes(_bytes_of(part))

    def add_bytes(self, raw: bytes | bytearray | memoryview) -> None:
        """The next values as raw little-endian bytes of the accumulator's dtype (a whole
        number of elements); no torch needed."""
        values = self.values_of(raw)
        if values.shape[0] == 0:
            return
        self.set_pivot(values)
        if self._bufs is None or self._bufs.diff.shape[0] < min(values.shape[0], SUB):
            self._bufs = Buffers(self.code, min(max(values.shape[0], 1 << 12), SUB))
        self.merge(self.sums(values, self._bufs))

    def values_of(self, raw: bytes | bytearray | memoryview) -> np.ndarray:
        """`raw` as an array of the accumulator's raw dtype (no copy)."""
        view = memoryview(raw).cast("B")
        if view.nbytes % self._raw.itemsize:
            raise ValueError(f"{view.nbytes} bytes is not a whole number of {self.code} elements")
        return np.frombuffer(view, dtype=self._raw)

    def set_pivot(self, values: np.ndarray) -> None:
        """The pivot from the tensor's first value (0 when it is NaN/Inf): call with the
        first values before `sums` of any."""
        if self.pivot is None and values.shape[0]:
            first = first_value(self.code, values)
            self.pivot = first if math.isfinite(first) else 0.0

    def sums(self, values: np.ndarray, bufs: Buffers) -> list[ChunkSums]:
        """The sums of `values` around the pivot (set): pure, so it may run on any thread
        with its own `bufs`; `merge` the parts in order to get what `add_bytes` gives."""
        assert self.pivot is not None, "set_pivot first"
        parts = chunk_sums(self.code, values, self.pivot, bufs)
        return [*parts, _pair_diff(values)] if self.code in _COMPLEX else parts

    def merge(self, parts: list[ChunkSums]) -> None:
        """Add parts' sums, each in units of 2**e (squares: 2**2e), to the running ones,
        which are kept in units of 2**self.exp: both go to the larger unit."""
        for c in parts:
            if isinstance(c, _PairDiff):
                self.pair_diff += c.s1
                self.pairs += int(c.s2)
                continue
            self.bad += c.bad
            if c.k == 0:
                continue
            top = max(self.exp, c.e)
            self.s1 = math.ldexp(self.s1, self.exp - top) + math.ldexp(c.s1, c.e - top)
            self.s2 = math.ldexp(self.s2, 2 * (self.exp - top)) + math.ldexp(c.s2, 2 * (c.e - top))
            self.exp = top
            self.n += c.k
            self.lo = min(self.lo, c.lo)
            self.hi = max(self.hi, c.hi)

    def result(self) -> Stats:
        if self.n == 0:
            return Stats(None, None, None, None, self.bad, 0)
        m1 = self.s1 / self.n
        var = max(self.s2 / self.n - m1 * m1, 0.0)
        mean = (self.pivot or 0.0) + _unscale(m1, self.exp)
        # the shifted sums can round outside [min, max] for near-constant tensors
        mean = min(max(mean, self.lo), self.hi)
        std = _unscale(math.sqrt(var), self.exp)
        if self.code in _COMPLEX:
            std = self._complex_std(std)
        return Stats(mean, std, self.lo, self.hi, self.bad, self.n)

    def _complex_std(self, pooled: float) -> float:
        """torch's std of a complex tensor, sqrt(E|z − E z|²), from the std `pooled` of its
        real and imaginary parts taken together (what the sums hold) and the mean difference
        d = E re − E im of the parts: E|z − E z|² = 2·pooled² − d²/2."""
        d = self.pair_diff / self.pairs if self.pairs else 0.0
        return math.sqrt(max(2.0 * pooled * pooled - d * d / 2.0, 0.0))


_COMPLEX = frozenset({"C64", "C128"})


@dataclass(frozen=True)
class _PairDiff(ChunkSums):
    """A complex chunk's Σ(re − im) (in s1) over its pairs with both parts finite (count in
    s2); k = 0, so it adds no values."""


def _pair_diff(values: np.ndarray) -> _PairDiff:
    """`values` (re, im, re, im, ...) as the sum of re − im, in float64, a sub-chunk at a time."""
    total, pairs = 0.0, 0
    step = 2 * SUB
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, values.shape[0], step):
            part = values[i : i + step].astype(np.float64).reshape(-1, 2)
            diff = part[:, 0] - part[:, 1]
            ok = np.isfinite(diff)
            total += float(diff[ok].sum())
            pairs += int(ok.sum())
    return _PairDiff(0, total, float(pairs), 0.0, 0.0)


def _bytes_of(t: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, without a copy."""
    import torch

    if t.numel() == 0:
        return memoryview(b"")
    data: np.ndarray = t.view(torch.uint8).numpy()
    return memoryview(data.data).cast("B")


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
    acc.add(t)
    return acc.result()
