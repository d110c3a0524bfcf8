"""The std reinit reports for a complex tensor is torch's: sqrt(E|z − E z|²) (issue #23 L1),
not the std of the real and imaginary parts pooled (which is off by a factor near sqrt(2) and
by the gap between the parts' means). Both the in-memory path and `reinit report` of a
safetensors file (raw bytes, chunked) are checked against `torch.std(correction=0)`.

Internal: imports reinit.report.stats."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run
from safetensors.torch import save_file

from reinit.report.stats import tensor_stats


def _complex(dtype: torch.dtype, n: int = 20_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, dtype=dtype, generator=g) * 1.5 + (1 - 3j)
    z.imag.mul_(0.25)  # unequal parts: the pooled std differs from torch's by more than 2x
    return z


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_std_is_torchs(dtype):
    z = _complex(dtype)
    want = torch.std(z, correction=0).item()
    got = tensor_stats(z).std
    assert got == pytest.approx(want, rel=1e-6)


def test_complex_std_with_nonfinite_values_left_out():
    z = _complex(torch.complex128)
    z[7] = complex(float("nan"), 1.0)
    finite = torch.cat([z[:7], z[8:]])
    assert tensor_stats(z).std == pytest.approx(torch.std(finite, correction=0).item(), rel=1e-3)


def test_report_of_a_complex64_file(tmp_path):
    z = _complex(torch.complex64, 100_000)
    save_file({"z": z}, tmp_path / "c.safetensors")
    res = run("report", tmp_path / "c.safetensors", "--json", "-q")
    assert res.exit_code == 0, res.output
    after = json.loads(res.stdout)["tensors"][0]["after"]
    assert after["std"] == pytest.approx(torch.std(z, correction=0).item(), rel=1e-5)
