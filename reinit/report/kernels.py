"""The statistics kernel on raw little-endian bytes, numpy only (no torch): every dtype the
safetensors format has, decoded one cache-sized sub-chunk at a time into a reused float32
(float64 for 64-bit and 32-bit integer types) work buffer, then reduced while it stays in L2:
min, max, and the sum and sum of squares around a pivot (rows of 1024 values summed by BLAS
in float32, the row sums in float64). Memory is read once per sub-chunk; the numpy operations
after the decode touch only cache.

Why this shape: `reinit report` and `apply` push every byte of a checkpoint through here.
torch's path (copy into a buffer, aminmax, sub, sum, square, sum over 1M values) cost
1.3–2 ns per bf16 value on one core here; this costs ~0.9–1.1 (f32: 1.5–2 -> 0.8–1.0; the
log is in docs/bench/log.md, issue 19). The non-finite count is taken only when the fast sums are not
finite (NaN propagates through min/max, an Inf shows in them), so a clean chunk pays nothing
for it.

Decoding (bit-exact, no rounding): bf16 is its 16 bits shifted into the high half of a
float32; fp8 (E4M3FN, E5M2, E8M0) goes through a 256-entry table of float32 values; float16
is widened by numpy; integers and bool are summed from their own arrays (min/max exact)."""

from __future__ import annotations

__all__ = [
    "CODE_NAMES",
    "FLOAT_CODES",
    "SUB",
    "Buffers",
    "ChunkSums",
    "Decoded",
    "chunk_sums",
    "code_of",
    "decode",
    "first_value",
    "fused_sums",
    "itemsize",
    "masked_sums",
    "raw_dtype",
]

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from reinit.io.formats import CODE_NAMES

#: Values per sub-chunk: 128 Ki float32 values (512 KiB) and their differences stay in L2.
SUB = 1 << 17

_NAME_CODES = {name: code for code, name in CODE_NAMES.items()}

#: The codes whose values are floating point (a report's `var_gain` is only for these).
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0"})

# code -> the numpy dtype its bytes are read as (little-endian)
_RAW: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "F8_E4M3": "u1",
    "F8_E5M2": "u1",
    "F8_E8M0": "u1",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "u1",
    "C64": "<f4",  # (real, imag) pairs, summarized together as torch's view_as_real does
    "C128": "<f8",  # not a safetensors code: complex128 tensors handed in by torch
}
_WIDE = frozenset({"F64", "I64", "I32", "U64", "U32", "C128"})  # worked in float64
_INTS = frozenset({"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"})


def code_of(dtype_name: str) -> str | None:
    """The code for a torch dtype name ("bfloat16" -> "BF16"; complex128 -> "C128"), or None
    for a dtype this kernel does not decode (the caller widens it to float64 first)."""
    if dtype_name == "complex128":
        return "C128"
    return _NAME_CODES.get(dtype_name)


def itemsize(code: str) -> int:
    """Bytes per element of a code."""
    return np.dtype(_RAW[code]).itemsize * (2 if code in ("C64", "C128") else 1)


def _fp8_value(bits: int, exp_bits: int, bias: int, ieee_specials: bool) -> float:
    """One fp8 (1 sign, `exp_bits` exponent, rest mantissa) byte as a float."""
    man_bits = 7 - exp_bits
    sign = -1.0 if bits & 0x80 else 1.0
    e = (bits >> man_bits) & ((1 << exp_bits) - 1)
    m = bits & ((1 << man_bits) - 1)
    top = (1 << exp_bits) - 1
    if ieee_specials and e == top:  # E5M2: Inf and NaN as IEEE
        return sign * math.inf if m == 0 else math.nan
    if not ieee_specials and e == top and m == (1 << man_bits) - 1:  # E4M3FN: S.1111.111
        return math.nan
    if e == 0:
        return sign * math.ldexp(m, 1 - bias - man_bits)
    return sign * math.ldexp((1 << man_bits) + m, e - bias - man_bits)


@functools.cache
def _table(code: str) -> npt.NDArray[np.float32]:
    """The 256 float32 values an fp8 byte stands for (exact: every fp8 value is a float32)."""
    if code == "F8_E4M3":
        vals = [_fp8_value(b, 4, 7, False) for b in range(256)]
    elif code == "F8_E5M2":
        vals = [_fp8_value(b, 5, 15, True) for b in range(256)]
    else:  # F8_E8M0: an unsigned power of two, 2**(b - 127); 0xFF is NaN
        vals = [math.nan if b == 255 else math.ldexp(1.0, b - 127) for b in range(256)]
    return np.array(vals, dtype=np.float32)


#: Row length of the sums: a sub-chunk is summed as rows of `ROW` values (BLAS gemv against
#: ones: vectorized, and each row's float32 accumulation stays short), the row sums in float64.
ROW = 1024


@functools.cache
def _ones(wide: bool) -> npt.NDArray[np.floating]:
    """A read-only row of ones: a matrix of rows times it gives every row's sum (one pass)."""
    ones = np.ones(ROW, dtype=np.float64 if wide else np.float32)
    ones.flags.writeable = False
    return ones


def _total(v: npt.NDArray[np.floating]) -> float:
    """Σv: rows of `ROW` summed by gemv, the row sums and the ragged tail in float64.

    Why not one dot product: BLAS accumulates a dot in a few float32 lanes, thousands of terms
    each, which on bf16-valued data drifts by ~3e-6 relative (round-to-even ties all lean one
    way); rows of 1024 keep it near 1e-7, as torch's cascade sum was."""
    k = v.shape[0]
    m = k - k % ROW
    total = float(
        np.add.reduce(v[:m].reshape(-1, ROW) @ _ones(v.dtype == np.float64), dtype=np.float64)
    )
    if m < k:  # only a tensor's last sub-chunk has a ragged tail
        total += float(np.add.reduce(v[m:], dtype=np.float64))
    return total


@dataclass(frozen=True)
class ChunkSums:
    """One sub-chunk's finite values: count, Σ(x − pivot) and Σ(x − pivot)² in units of 2**e
    (squares: 2**2e), min, max, and how many values were NaN/Inf (left out)."""

    k: int
    s1: float
    s2: float
    lo: float
    hi: float
    e: int = 0
    bad: int = 0

    @property
    def finite(self) -> bool:
        return all(map(math.isfinite, (self.s1, self.s2, self.lo, self.hi)))


@dataclass(frozen=True)
class Decoded:
    """A sub-chunk as numbers: `values` (the work dtype, or the integers themselves) and
    where its differences from the pivot go (`diff`, a reused buffer of the work dtype)."""

    values: npt.NDArray[np.generic]
    diff: npt.NDArray[np.floating]


class Buffers:
    """The reused work buffers of one accumulator (one per thread: never shared)."""

    def __init__(self, code: str, size: int = SUB):
        wide = code in _WIDE
        self.work = np.empty(size, dtype=np.float64 if wide else np.float32)
        self.diff = np.empty(size, dtype=np.float64 if wide else np.float32)
        self.bits = np.empty(size, dtype=np.uint32) if code == "BF16" else None


def decode(code: str, raw: npt.NDArray[np.generic], buf: Buffers) -> Decoded:
    """`raw` (the sub-chunk viewed as `_RAW[code]`, at most `SUB` values) as numbers."""
    k = raw.shape[0]
    diff = buf.diff[:k]
    if code in ("F32", "F64", "C64", "C128") or code in _INTS:
        return Decoded(raw, diff)
    work = buf.work[:k]
    if code == "BF16":
        assert buf.bits is not None
        bits = buf.bits[:k]
        # two bf16 values a, b read as one little-endian uint32 are b<<16 | a: masking gives
        # b's float32 bits and shifting gives a's, in two contiguous passes (the order of the
        # values changes, which no statistic sees)
        half, even = k // 2, k - k % 2
        pairs = raw[:even].view(np.uint32)
        np.bitwise_and(pairs, np.uint32(0xFFFF0000), out=bits[:half])
        np.left_shift(pairs, np.uint32(16), out=bits[half:even])
        if even < k:
            bits[even] = np.uint32(raw[even]) << np.uint32(16)
        return Decoded(bits.view(np.float32), diff)
    if code == "F16":
        np.copyto(work, raw)
        return Decoded(work, diff)
    np.take(_table(code), raw.view(np.uint8), out=work)  # fp8
    return Decoded(work, diff)


def fused_sums(d: Decoded, pivot: float) -> ChunkSums:
    """Min, max and the sums around `pivot` of one decoded sub-chunk, in passes over data
    that stays in cache. Non-finite values make the result non-finite (not counted)."""
    x = d.values
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or Inf: the caller counts them
        return ChunkSums(x.shape[0], math.nan, math.nan, lo, hi)
    diff = d.diff
    if max(-lo, hi, abs(pivot)) < _SAFE[diff.dtype == np.float64]:
        return ChunkSums(x.shape[0], *_sums(x, diff, pivot), lo, hi)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: an Inf sends it back
        return ChunkSums(x.shape[0], *_sums(x, diff, pivot), lo, hi)


# Below these magnitudes no difference, square or row sum of squares can overflow (float32,
# float64), so the sums skip numpy's error-state switch (a fixed cost per sub-chunk).
_SAFE = {False: 1e17, True: 1e150}


def _sums(
    x: npt.NDArray[np.generic], diff: npt.NDArray[np.floating], pivot: float
) -> tuple[float, float]:
    np.subtract(x, diff.dtype.type(pivot), out=diff)
    s1 = _total(diff)
    np.square(diff, out=diff)
    return s1, _total(diff)


def masked_sums(values: npt.NDArray[np.generic], pivot: float) -> ChunkSums:
    """The exact path for a sub-chunk the fast sums found non-finite: finite values only, in
    float64; scaled by a power of two when the squares (or the differences from the pivot)
    would overflow, e.g. values near 1e200. k = 0 when none is finite."""
    with np.errstate(invalid="ignore"):  # a signalling NaN's payload, widened
        xd = values.astype(np.float64)
    finite = np.isfinite(xd)
    kept = int(np.count_nonzero(finite))
    bad = xd.shape[0] - kept
    if kept == 0:
        return ChunkSums(0, 0.0, 0.0, math.inf, -math.inf, 0, bad)
    xd = xd[finite]
    lo, hi = float(xd.min()), float(xd.max())
    with np.errstate(over="ignore", invalid="ignore"):
        d = xd - pivot
        s1, s2 = float(d.sum()), float(np.dot(d, d))
    if math.isfinite(s1) and math.isfinite(s2):
        return ChunkSums(kept, s1, s2, lo, hi, 0, bad)
    # |x|, |pivot| < 2**(e-1), so every scaled difference lies in (-1, 1) and its square
    # sum is below k: nothing overflows, and a power of two scales exactly
    e = math.frexp(max(abs(lo), abs(hi), abs(pivot)))[1] + 1
    scale = math.ldexp(1.0, -e)
    y = xd * scale - pivot * scale
    return ChunkSums(kept, float(y.sum()), float(np.dot(y, y)), lo, hi, e, bad)


def chunk_sums(
    code: str, raw: npt.NDArray[np.generic], pivot: float, buf: Buffers
) -> list[ChunkSums]:
    """The sums of every sub-chunk of `raw` (values of `code`, as `raw_dtype` reads them):
    a pure function of its inputs, so chunks may be summed on several threads (each with its
    own `buf`) and merged in order, giving the same result as one thread."""
    out = []
    for i in range(0, raw.shape[0], SUB):
        d = decode(code, raw[i : i + SUB], buf)
        sums = fused_sums(d, pivot)
        out.append(sums if sums.finite else masked_sums(d.values, pivot))
    return out


def first_value(code: str, raw: npt.NDArray[np.generic]) -> float:
    """The value of the first element of `raw` (at least one)."""
    if code == "BF16":
        return float((np.uint32(raw[0]) << np.uint32(16)).view(np.float32))
    if code in ("F8_E4M3", "F8_E5M2", "F8_E8M0"):
        return float(_table(code)[raw[0]])
    return float(raw[0])


def raw_dtype(code: str) -> np.dtype[np.generic]:
    """The numpy dtype a code's bytes are read as (a complex value as two floats)."""
    return np.dtype(_RAW[code])
