"""The fused statistics pass (report.kernels via StatsAccumulator) against a float64 reference
computed here with torch, on every dtype safetensors has, fed as torch tensors (`add`) and as
raw bytes (`add_bytes`, no torch): zero-size, scalars, NaN/Inf sub-chunks, huge finite
values, tensors spanning many sub-chunks fed in uneven chunks, LayerNorm-like 1±0.01.

Internal: also tests reinit.report.kernels, reinit.report.stats directly (not the `reinit` API).
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from reinit.report.kernels import SUB, itemsize
from reinit.report.stats import Stats, StatsAccumulator, tensor_stats

CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
if hasattr(torch, "float8_e8m0fnu"):
    CODES["F8_E8M0"] = torch.float8_e8m0fnu
for _code, _name in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        CODES[_code] = getattr(torch, _name)


def reference(t: torch.Tensor) -> Stats:
    """mean, population std, min, max of the finite values, in float64, and the NaN/Inf count."""
    x = t.reshape(-1).to(torch.float64)
    finite = torch.isfinite(x)
    bad = int((~finite).sum())
    x = x[finite]
    if x.numel() == 0:
        return Stats(None, None, None, None, bad, 0)
    mean = float(x.mean())
    std = float(((x - mean) ** 2).mean().sqrt())
    return Stats(mean, std, float(x.min()), float(x.max()), bad, x.numel())


def close(got: Stats, want: Stats, rel: float) -> None:
    assert got.nonfinite == want.nonfinite
    assert got.count == want.count
    if want.mean is None:
        assert (got.mean, got.std, got.min, got.max) == (None, None, None, None)
        return
    assert got.mean is not None and got.std is not None
    assert got.min == want.min and got.max == want.max  # exact: a value of the tensor
    assert want.std is not None
    scale = want.std + abs(want.mean)
    assert abs(got.mean - want.mean) <= rel * scale + 1e-300, (got, want)
    assert abs(got.std - want.std) <= rel * want.std + 1e-300, (got, want)


def raw_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()).cast("B")


def via_bytes(code: str, t: torch.Tensor, chunk: int = 16 << 20) -> Stats:
    acc = StatsAccumulator(code)
    data = raw_bytes(t)
    step = max(chunk - chunk % itemsize(code), itemsize(code))
    for i in range(0, data.nbytes, step):
        acc.add_bytes(data[i : i + step])
    return acc.result()


def sample(dtype: torch.dtype, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) < 0.3
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
        return torch.randint(lo, hi, (n,), generator=g, dtype=torch.int64).to(dtype)
    if dtype == getattr(torch, "float8_e8m0fnu", None):
        return torch.randint(100, 150, (n,), generator=g, dtype=torch.uint8).view(dtype)
    return (torch.randn(n, generator=g) * 3 + 0.5).to(dtype)


def tolerance(code: str) -> float:
    return 1e-12 if code in ("F64", "I64", "I32", "U64", "U32") else 2e-6


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_dtype_matches_the_float64_reference(code):
    t = sample(CODES[code], 3 * SUB + 7)  # several sub-chunks and a ragged tail
    want = reference(t)
    close(via_bytes(code, t), want, tolerance(code))
    close(via_bytes(code, t, chunk=1 << 16), want, tolerance(code))  # fed in small chunks
    close(tensor_stats(t), want, tolerance(code))


@pytest.mark.parametrize("code", sorted(CODES))
def test_zero_size_and_scalars(code):
    dtype = CODES[code]
    empty = torch.empty((0, 3), dtype=dtype)
    assert tensor_stats(empty) == Stats(None, None, None, None, 0, 0)
    assert via_bytes(code, empty) == Stats(None, None, None, None, 0, 0)
    scalar = sample(dtype, 1).reshape(())
    s = tensor_stats(scalar)
    assert s == via_bytes(code, scalar)
    assert s.count == 1 and s.std == 0.0 and s.min == s.max == s.mean == reference(scalar).mean


@pytest.mark.parametrize("code", ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_nan_and_inf_chunks_are_counted_and_left_out(code):
    dtype = CODES[code]
    t = sample(dtype, 2 * SUB + 3).to(torch.float32)
    t[5] = math.nan
    t[SUB + 1] = math.inf if code != "F8_E4M3" else math.nan  # e4m3fn has no Inf
    t[SUB + 2] = -math.inf if code != "F8_E4M3" else math.nan
    t[-1] = math.nan
    t = t.to(dtype)
    want = reference(t)
    assert want.nonfinite == 4
    close(via_bytes(code, t), want, tolerance(code))
    close(tensor_stats(t), want, tolerance(code))


def test_all_nonfinite_gives_no_values():
    t = torch.full((10,), math.nan, dtype=torch.bfloat16)
    assert tensor_stats(t) == Stats(None, None, None, None, 10, 0)


@pytest.mark.parametrize(
    ("dtype", "big"), [(torch.float64, 1e300), (torch.float32, 3e38), (torch.float16, 6e4)]
)
def test_huge_finite_values_do_not_overflow(dtype, big):
    g = torch.Generator().manual_seed(1)
    t = (torch.randn(SUB + 11, generator=g, dtype=torch.float64).clamp(-1, 1) * big).to(dtype)
    t[0] = -big
    t[1] = big
    got, want = tensor_stats(t), reference(t)
    assert got.std is not None and math.isfinite(got.std) and got.nonfinite == 0
    close(got, want, 1e-6)


@pytest.mark.parametrize("code", ["F32", "BF16", "F16", "F64"])
def test_layernorm_like_values_do_not_cancel(code):
    g = torch.Generator().manual_seed(2)
    t = (1 + 0.01 * torch.randn(2 * SUB + 1, generator=g, dtype=torch.float64)).to(CODES[code])
    got, want = via_bytes(code, t), reference(t)
    assert want.std is not None and 0.005 < want.std < 0.02
    close(got, want, tolerance(code))


@pytest.mark.parametrize("code", ["F8_E4M3", "F8_E5M2", "F8_E8M0"])
def test_fp8_decoding_is_torchs_for_every_byte(code):
    if code not in CODES:
        pytest.skip("this torch has no float8_e8m0fnu")
    t = torch.arange(256, dtype=torch.uint8).view(CODES[code])
    got, want = via_bytes(code, t), reference(t)
    close(got, want, 1e-6)
    assert got.nonfinite == want.nonfinite > 0


def test_bf16_odd_lengths_and_unaligned_pieces():
    t = sample(torch.bfloat16, 2 * SUB + 1)
    want = reference(t)
    data = raw_bytes(t)
    acc = StatsAccumulator("BF16")
    for a, b in ((0, 6), (6, 12346), (12346, data.nbytes)):  # odd element counts
        acc.add_bytes(data[a:b])
    close(acc.result(), want, 2e-6)


def test_complex_and_undecoded_dtypes_still_work():
    # mean/min/max over the parts together (view_as_real); std is torch's sqrt(E|z - E z|^2)
    for dtype, rel in ((torch.complex64, 2e-6), (torch.complex128, 1e-12)):
        c = torch.randn(1000, dtype=dtype)
        got, pooled = tensor_stats(c), reference(torch.view_as_real(c))
        close(replace(got, std=pooled.std), pooled, rel)
        assert got.std == pytest.approx(torch.std(c, correction=0).item(), rel=max(rel, 1e-6))
    if hasattr(torch, "float8_e4m3fnuz"):  # no safetensors code: widened to float64
        t = torch.randn(500).to(torch.float8_e4m3fnuz)
        close(tensor_stats(t), reference(t), 1e-12)


def test_a_partial_element_is_refused():
    with pytest.raises(ValueError, match="whole number"):
        StatsAccumulator("F32").add_bytes(b"\0\0\0")


def test_noncontiguous_tensors():
    t = torch.randn(64, 48).t()
    close(tensor_stats(t), reference(t), 2e-6)


def test_raw_bytes_path_imports_no_torch():
    code = (
        "import sys, numpy as np\n"
        "from reinit.report.stats import StatsAccumulator\n"
        "a = StatsAccumulator('BF16'); a.add_bytes(np.arange(8, dtype=np.uint16).tobytes())\n"
        "a.result()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bytes_and_numpy_agree_with_plain_numpy_for_f32():
    x = np.random.default_rng(3).standard_normal(SUB + 5).astype(np.float32)
    acc = StatsAccumulator("F32")
    acc.add_bytes(x.tobytes())
    s = acc.result()
    x64 = x.astype(np.float64)
    assert s.min == float(x.min()) and s.max == float(x.max())
    assert s.mean is not None and abs(s.mean - x64.mean()) < 1e-7
    assert s.std is not None and abs(s.std - x64.std()) < 1e-6 * x64.std()
