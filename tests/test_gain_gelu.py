"""`reinit gain gelu|silu`: the gain that keeps the second moment for a unit normal input,
computed, matching a Monte-Carlo estimate; `--measure` says what it measured and why relu's
number is not √2.

Internal: also tests reinit.schemes, reinit.schemes.gain directly (not the `reinit` API).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import run

from reinit.schemes import calculate_gain
from reinit.schemes.gain import gain_value


@pytest.mark.parametrize(("name", "value"), [("gelu", 1.5335), ("silu", 1.6765)])
def test_gelu_silu_gain_keeps_the_second_moment(name, value):
    g = calculate_gain(name)
    assert g == pytest.approx(value, abs=1e-4)
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = torch.nn.functional.gelu if name == "gelu" else torch.nn.functional.silu
    # E[(g f(x))^2] = 1 within sampling error (rel. se of a mean of squares ~ 1e-3 here)
    assert float((g * f(x)).pow(2).mean()) == pytest.approx(1.0, rel=5e-3)
    assert gain_value(name) == g
    r = run("gain", name)
    assert r.exit_code == 0 and f"{name}: gain {g:.6g}" in r.stdout and "E[f(x)^2]" in r.stdout


def test_relu_gain_by_the_same_definition_is_sqrt2():
    from reinit.schemes.gain import measure_second_moment_gain

    assert measure_second_moment_gain("relu") == pytest.approx(math.sqrt(2), rel=2e-3)


def test_measure_says_what_was_measured():
    r = run("gain", "relu", "--measure")
    assert r.exit_code == 0
    assert "std(x)/std(f(x)) = 1.71" in r.stdout
    assert "rms(x)/rms(f(x)) = 1.41" in r.stdout
    assert "mean" in r.stdout and "1.598" in r.stdout


def test_a_rule_takes_gain_gelu(tmp_path):
    from safetensors.torch import save_file

    import reinit

    src = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(256, 256)}, src)
    rep = reinit.apply(src, ["w=xavier_normal(gain=gelu)"], output=tmp_path / "o.safetensors")
    (e,) = rep.tensors
    assert e.expected_std == pytest.approx(calculate_gain("gelu") * math.sqrt(2 / 512))
