"""Every torch.nn.init scheme: std formula, distribution shape, exact patterns, and the
reproducibility contract of docs/guide/rules-and-schemes.md.

Internal: also tests reinit.rules, reinit.schemes, reinit.schemes.gain directly (not the
`reinit` API).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as sps

from reinit.errors import RuleError, SchemeError
from reinit.rules import parse_rule
from reinit.schemes import ALIASES, SCHEMES, bind_scheme, calculate_gain, generate, seed_for
from reinit.schemes.gain import measure_gain

SHAPE = (512, 384)  # n = 196,608 values: the sample std's relative SE is ~0.16% for a normal


def _std_tolerance(n: int, kurtosis: float, sigmas: float = 5.0) -> float:
    """Relative tolerance for a sample std: SE(s)/σ ≈ √((κ−1)/(4n))."""
    return sigmas * math.sqrt((kurtosis - 1.0) / (4.0 * n))


CASES = [
    ("uniform(-0.3, 0.5)", "uniform"),
    ("normal(0.1, 0.02)", "normal"),
    ("trunc_normal(0, 1, -1.5, 2)", "truncnorm"),
    ("xavier_uniform(gain=tanh)", "uniform"),
    ("xavier_normal(2)", "normal"),
    ("kaiming_uniform(nonlinearity=relu)", "uniform"),
    ("kaiming_normal(0.2, mode=fan_out)", "normal"),
    ("orthogonal(1.5)", "normal"),  # entries of a random orthogonal matrix are ≈ normal
    ("sparse(0.25, std=0.5)", None),
]


@pytest.mark.parametrize("text, shape_kind", CASES)
def test_std_matches_formula_within_sampling_error(text, shape_kind):
    name, _, rest = text.partition("(")
    args, kwargs = _parse_args(rest.rstrip(")"))
    bound = bind_scheme(name, args, kwargs)
    t = generate(bound, "layer.weight", SHAPE, torch.float32, seed=1)
    expected = bound.expected_std(SHAPE)
    got = t.double().std(unbiased=False).item()
    tol = _std_tolerance(t.numel(), bound.scheme.kurtosis)
    assert abs(got - expected) / expected < tol, (got, expected, tol)


def _parse_args(inner: str):
    from reinit.rules import parse_action

    a = parse_action(f"x({inner})") if inner else parse_action("x")
    return a.args, dict(a.kwargs)


def _ks(sample, cdf):
    return sps.kstest(sample, cdf).pvalue


def test_distribution_shapes_are_told_apart():
    """KS tests: each scheme's values fit its own family and reject the others."""
    n = 20_000

    def draw(text):
        name, _, rest = text.partition("(")
        a, k = _parse_args(rest.rstrip(")"))
        return generate(bind_scheme(name, a, k), "w", (n,), torch.float64, seed=7).numpy()

    u = draw("uniform(-1, 1)")
    g = draw("normal(0, 1)")
    tn = draw("trunc_normal(0, 1, -1, 1)")
    unif = sps.uniform(loc=-1, scale=2).cdf
    norm = sps.norm().cdf
    trunc = sps.truncnorm(-1, 1).cdf
    assert _ks(u, unif) > 1e-3 and _ks(u, norm) < 1e-6 and _ks(u, trunc) < 1e-6
    assert _ks(g, norm) > 1e-3 and _ks(g, unif) < 1e-6
    assert _ks(tn, trunc) > 1e-3 and _ks(tn, unif) < 1e-6 and _ks(tn, norm) < 1e-6
    assert tn.min() >= -1 and tn.max() <= 1


def test_kaiming_uniform_is_uniform_with_its_bound():
    shape = (256, 128)
    t = generate(
        bind_scheme("kaiming_uniform", (), {"nonlinearity": "relu"}), "w", shape, torch.float64, 0
    )
    bound = math.sqrt(2.0) * math.sqrt(3.0 / 128)
    assert t.abs().max().item() <= bound
    assert sps.kstest(t.flatten().numpy(), sps.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32), (16, 4, 3, 3)])
def test_orthogonal_gives_gain_squared_identity(shape):
    gain = 1.7
    t = generate(bind_scheme("orthogonal", (gain,), {}), "w", shape, torch.float64, 3)
    m = t.reshape(shape[0], -1)
    rows, cols = m.shape
    prod = m @ m.T if rows <= cols else m.T @ m
    torch.testing.assert_close(
        prod, gain**2 * torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-10, rtol=0
    )


def test_sparse_zero_fraction_per_column_and_reproducible():
    shape = (40, 300)
    b = bind_scheme("sparse", (0.3,), {"std": 0.5})
    t = generate(b, "w", shape, torch.float32, 0)
    zeros_per_col = (t == 0).sum(dim=0)
    assert torch.all(zeros_per_col == math.ceil(0.3 * 40))
    assert torch.equal(t, generate(b, "w", shape, torch.float32, 0))
    assert not torch.equal(t, generate(b, "w", shape, torch.float32, 1))


def test_eye_and_dirac_are_exact():
    e = generate(bind_scheme("identity"), "w", (3, 5), torch.float32, 0)
    assert torch.equal(e, torch.eye(3, 5))
    d = generate(bind_scheme("dirac", (2,), {}), "w", (4, 3, 3, 3), torch.float32, 0)
    ref = torch.empty(4, 3, 3, 3)
    torch.nn.init.dirac_(ref, 2)
    assert torch.equal(d, ref)
    for name, shape, args in [("eye", (3, 5), ()), ("dirac", (4, 3, 3, 3), (2,))]:
        b = bind_scheme(name, args, {})
        t = generate(b, "w", shape, torch.float64, 0)
        assert b.expected_std(shape) == pytest.approx(t.std(unbiased=False).item(), rel=1e-12)


@pytest.mark.parametrize("name, val", [("zeros", 0.0), ("ones", 1.0), ("constant", 0.25)])
def test_constants(name, val):
    b = bind_scheme(name, (val,) if name == "constant" else ())
    t = generate(b, "w", (4, 5), torch.bfloat16, 0)
    assert t.dtype == torch.bfloat16 and torch.all(t == val)
    assert b.expected_std((4, 5)) == 0.0


TORCH_CALLS = {
    "uniform(-0.2, 0.3)": lambda t, g: torch.nn.init.uniform_(t, -0.2, 0.3, generator=g),
    "normal(std=0.02)": lambda t, g: torch.nn.init.normal_(t, 0.0, 0.02, generator=g),
    "trunc_normal(0, 0.02, -0.04, 0.04)": lambda t, g: torch.nn.init.trunc_normal_(
        t, 0, 0.02, -0.04, 0.04, generator=g
    ),
    "xavier_uniform": lambda t, g: torch.nn.init.xavier_uniform_(t, generator=g),
    "xavier_normal(gain=relu)": lambda t, g: torch.nn.init.xavier_normal_(
        t, math.sqrt(2), generator=g
    ),
    "kaiming_uniform": lambda t, g: torch.nn.init.kaiming_uniform_(t, generator=g),
    "kaiming_normal(mode=fan_out, nonlinearity=relu)": lambda t, g: torch.nn.init.kaiming_normal_(
        t, mode="fan_out", nonlinearity="relu", generator=g
    ),
    "orthogonal(0.5)": lambda t, g: torch.nn.init.orthogonal_(t, 0.5, generator=g),
}


@pytest.mark.parametrize("text", list(TORCH_CALLS))
def test_float32_values_are_bit_identical_to_plain_torch(text):
    """The reproducibility contract: anyone can reproduce our values with torch alone."""
    name, _, rest = text.partition("(")
    a, k = _parse_args(rest.rstrip(")"))
    tensor_name = "encoder.layer.3.mlp.weight"
    ours = generate(bind_scheme(name, a, k), tensor_name, (48, 24), torch.float32, seed=42)
    ref = torch.empty(48, 24)
    TORCH_CALLS[text](ref, torch.Generator().manual_seed(seed_for(42, tensor_name)))
    assert torch.equal(ours, ref)


def test_seed_for_is_the_documented_formula():
    import hashlib

    digest = hashlib.sha256(b"7:a.b.weight").digest()
    assert seed_for(7, "a.b.weight") == int.from_bytes(digest[:8], "little") >> 1
    assert seed_for(7, "a.b.weight") < 2**63
    assert seed_for(7, "a.b.weight") != seed_for(8, "a.b.weight")


@pytest.mark.parametrize(
    "dtype",
    [torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2],
)
def test_low_and_high_precision_dtypes_are_drawn_in_float32_then_cast(dtype):
    b = bind_scheme("normal", (0.0, 0.5))
    t = generate(b, "w", (64, 64), dtype, 0)
    assert t.dtype == dtype
    if dtype == torch.float64:
        ref = torch.empty(64, 64, dtype=torch.float64).normal_(
            0, 0.5, generator=torch.Generator().manual_seed(seed_for(0, "w"))
        )
    else:
        ref = generate(b, "w", (64, 64), torch.float32, 0).to(dtype)
    assert torch.equal(t.view(torch.uint8), ref.view(torch.uint8))


def test_zero_size_and_scalar_tensors():
    assert generate(bind_scheme("kaiming"), "w", (0, 8), torch.float32, 0).shape == (0, 8)
    assert generate(bind_scheme("kaiming"), "w", (8, 0), torch.float32, 0).shape == (8, 0)
    assert bind_scheme("kaiming").expected_std((8, 0)) is None
    s = generate(bind_scheme("normal"), "w", (), torch.float32, 0)
    assert s.shape == () and torch.isfinite(s)


@pytest.mark.parametrize(
    "nl, param, value",
    [
        ("linear", None, 1.0),
        ("conv_transpose2d", None, 1.0),
        ("sigmoid", None, 1.0),
        ("tanh", None, 5 / 3),
        ("relu", None, math.sqrt(2)),
        ("leaky_relu", None, math.sqrt(2 / (1 + 0.01**2))),
        ("leaky_relu", 0.2, math.sqrt(2 / 1.04)),
        ("selu", None, 0.75),
    ],
)
def test_gains_match_torch(nl, param, value):
    assert calculate_gain(nl, param) == pytest.approx(value)
    assert calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))


def test_unknown_nonlinearity_lists_the_valid_ones():
    with pytest.raises(SchemeError, match="tanh, relu, leaky_relu, selu, gelu, silu"):
        calculate_gain("mish")


def test_measured_tanh_ratio():
    assert measure_gain("tanh") == pytest.approx(1.59, abs=0.01)
    assert measure_gain("linear") == pytest.approx(1.0)


def test_aliases():
    assert ALIASES["kaiming"] == ALIASES["he"] == "kaiming_normal"
    assert ALIASES["xavier"] == ALIASES["glorot"] == "xavier_uniform"
    assert ALIASES["identity"] == "eye"
    assert set(SCHEMES) >= {
        "uniform", "normal", "trunc_normal", "constant", "ones", "zeros", "eye", "dirac",
        "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "sparse",
    }  # fmt: skip


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform"])
@pytest.mark.parametrize("nonlinearity", ["gelu", "silu", "swish"])
def test_kaiming_with_a_gain_torch_does_not_name_is_torchs_own_fill(scheme, nonlinearity):
    """torch's calculate_gain knows no gelu/silu (kaiming_normal_ raised ValueError, an
    internal error); reinit's does, and the fill is torch's kaiming body with that gain:
    std = gain/sqrt(fan_in), then normal_ or uniform_(±sqrt(3)·std) on the tensor's generator."""
    ours = generate(
        bind_scheme(scheme, (), {"nonlinearity": nonlinearity}), "w", (48, 24), torch.float32, 3
    )
    std = calculate_gain("silu" if nonlinearity == "swish" else nonlinearity) / math.sqrt(24)
    g = torch.Generator().manual_seed(seed_for(3, "w"))
    if scheme == "kaiming_normal":
        ref = torch.empty(48, 24).normal_(0.0, std, generator=g)
    else:
        ref = torch.empty(48, 24).uniform_(-math.sqrt(3.0) * std, math.sqrt(3.0) * std, generator=g)
    assert torch.equal(ours, ref)


TORCH_NONLINEARITIES = [
    *("linear", "conv1d", "conv2d", "conv3d"),
    *("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    *("sigmoid", "tanh", "relu", "leaky_relu", "selu"),
]


@pytest.mark.parametrize("nl", TORCH_NONLINEARITIES)
def test_every_gain_torch_knows_is_torch_s_to_the_last_bit(nl):
    assert calculate_gain(nl) == torch.nn.init.calculate_gain(nl)


@pytest.mark.parametrize("slope", [0, 1, -1, 0.2, -0.2, 3, 1e-30, 1e6, 1e150])
def test_leaky_relu_gain_is_torch_s_for_any_slope_torch_can_compute(slope):
    assert calculate_gain("leaky_relu", slope) == torch.nn.init.calculate_gain("leaky_relu", slope)


@pytest.mark.parametrize("slope", [1e155, -1e200, 1.7e308])
def test_leaky_relu_gain_of_a_huge_slope_is_its_limit_not_an_overflow(slope):
    """`reinit gain leaky_relu 1e200` was an internal error (torch's own formula overflows
    in slope**2): the gain is √2/|slope| there, the formula's limit."""
    assert calculate_gain("leaky_relu", slope) == pytest.approx(math.sqrt(2) / abs(slope))


@pytest.mark.parametrize("sel", ["0:" + "9" * 5000, "9" * 5000 + ":1", "0:" + "9" * 19])
def test_a_part_index_of_too_many_digits_is_a_rule_error(sel):
    """`rows=0:<5,000 digits>` was `internal error: ValueError` (Python's cap on int())."""
    with pytest.raises(RuleError, match="digits is past any tensor's size"):
        parse_rule(f"w=normal(rows={sel})")


def test_measured_gains_of_a_huge_leaky_relu_slope_are_not_zero():
    """`reinit gain leaky_relu 1e200 --measure` printed ratios of 0: f(x)² overflowed."""
    from reinit.schemes.gain import measure_second_moment_gain

    assert measure_gain("leaky_relu", 1e200) * 1e200 == pytest.approx(
        measure_gain("leaky_relu", 1e20) * 1e20, rel=1e-6
    )
    assert measure_second_moment_gain("leaky_relu", 1e200) == pytest.approx(
        calculate_gain("leaky_relu", 1e200), rel=0.01
    )
