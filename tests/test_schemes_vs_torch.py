"""The torch.nn.init schemes on conv (4-D) shapes and both fan modes, against torch's own
functions and against the formulas docs/reference.md and `reinit schemes` print, written out
here (not the code's `expected_std`): values bit-identical to the torch call with the tensor's
generator, the documented mean and std within sampling error (fixed seeds; tolerance 5 standard
errors), the documented bounds of the uniform and truncated schemes, and the exact patterns.
test_schemes.py holds the 2-D cases of the same contract (std, KS shape, bit identity at one
2-D shape, orthogonality, sparsity per column, eye/dirac, constants).

Internal: draws through reinit.schemes (bind_scheme, generate) as test_schemes.py does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from scipy import stats as sps

from reinit.rules import parse_action
from reinit.schemes import bind_scheme, generate, seed_for

SHAPES = [(96, 160), (48, 16, 3, 3), (24, 12, 5)]
NAME = "encoder.layer.3.conv.weight"
SEED = 11


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """torch's fans, as docs/reference.md states them: size(1)·∏size[2:], size(0)·∏size[2:]."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def bound(text: str):
    a = parse_action(text)
    return bind_scheme(a.name, a.args, a.kwargs_dict())


def draw(text: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return generate(bound(text), NAME, shape, dtype, seed=SEED)


def torch_fill(fill: Callable[..., object], shape: tuple[int, ...]) -> torch.Tensor:
    """The torch call with the tensor's generator, on one thread: docs/reference.md's
    exception for `orthogonal` (its QR runs on one thread); the other fills do not care."""
    t = torch.empty(shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fill(t, generator=torch.Generator().manual_seed(seed_for(SEED, NAME)))
    finally:
        torch.set_num_threads(threads)
    return t


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(
    "text, fill",
    [
        ("xavier_uniform(gain=tanh)", lambda t, generator: torch.nn.init.xavier_uniform_(t, 5 / 3, generator)),
        ("xavier_normal(0.5)", lambda t, generator: torch.nn.init.xavier_normal_(t, 0.5, generator)),
        ("kaiming_uniform", lambda t, generator: torch.nn.init.kaiming_uniform_(t, generator=generator)),
        ("kaiming_uniform(0.3, mode=fan_out)", lambda t, generator: torch.nn.init.kaiming_uniform_(t, 0.3, "fan_out", generator=generator)),
        ("kaiming_normal(nonlinearity=relu)", lambda t, generator: torch.nn.init.kaiming_normal_(t, nonlinearity="relu", generator=generator)),
        ("kaiming_normal(mode=fan_out, nonlinearity=tanh)", lambda t, generator: torch.nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="tanh", generator=generator)),
        ("orthogonal(2)", lambda t, generator: torch.nn.init.orthogonal_(t, 2, generator)),
        ("uniform(-0.1, 0.3)", lambda t, generator: torch.nn.init.uniform_(t, -0.1, 0.3, generator)),
        ("normal(0.5, 0.02)", lambda t, generator: torch.nn.init.normal_(t, 0.5, 0.02, generator)),
        ("trunc_normal(0.1, 0.5, -0.2, 0.9)", lambda t, generator: torch.nn.init.trunc_normal_(t, 0.1, 0.5, -0.2, 0.9, generator)),
    ],
)  # fmt: skip
def test_float32_is_bit_identical_to_torch_on_every_rank_and_fan_mode(text, fill, shape):
    assert torch.equal(draw(text, shape, torch.float32), torch_fill(fill, shape))


def gain_of(nonlinearity: str, a: float = 0.0) -> float:
    return torch.nn.init.calculate_gain(nonlinearity, a)


# scheme text -> (shape -> (documented mean, documented std, documented bound or None), kurtosis)
Doc = Callable[[tuple[int, ...]], tuple[float, float, float | None]]
UNIFORM, NORMAL = 1.8, 3.0


def truncated(a: float, b: float) -> float:
    """The kurtosis of N(0, 1) truncated to [a, b] (for the sample std's standard error)."""
    return float(sps.truncnorm(a, b).stats(moments="k")) + 3.0


def _xavier_u(s):
    std = 5 / 3 * math.sqrt(2 / sum(fans(s)))
    return 0.0, std, math.sqrt(3) * std  # torch: gain·√(6/(fan_in+fan_out))


def _kaiming_u_out(s):
    std = gain_of("leaky_relu", 0.3) / math.sqrt(fans(s)[1])
    return 0.0, std, math.sqrt(3) * std  # torch: gain·√(3/fan)


def _trunc(mean, std, a, b):
    dist = sps.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    return lambda s: (dist.mean(), dist.std(), None)


DOCUMENTED: dict[str, tuple[Doc, float]] = {
    "uniform(-0.1, 0.3)": (lambda s: (0.1, 0.4 / math.sqrt(12), None), UNIFORM),
    "normal(0.5, 0.02)": (lambda s: (0.5, 0.02, None), NORMAL),
    "trunc_normal(0.1, 0.5, -0.2, 0.9)": (_trunc(0.1, 0.5, -0.2, 0.9), truncated(-0.6, 1.6)),
    "xavier_uniform(gain=tanh)": (_xavier_u, UNIFORM),
    "xavier_normal(0.5)": (lambda s: (0.0, 0.5 * math.sqrt(2 / sum(fans(s))), None), NORMAL),
    "kaiming_uniform(0.3, mode=fan_out)": (_kaiming_u_out, UNIFORM),
    "kaiming_normal(mode=fan_out, nonlinearity=tanh)": (
        lambda s: (0.0, 5 / 3 / math.sqrt(fans(s)[1]), None),
        NORMAL,
    ),
    "kaiming_normal": (lambda s: (0.0, math.sqrt(2) / math.sqrt(fans(s)[0]), None), NORMAL),
    "orthogonal(2)": (
        lambda s: (0.0, 2 / math.sqrt(max(s[0], math.prod(s[1:]))), None),
        NORMAL,
    ),
    "lecun_uniform": (
        lambda s: (0.0, 1 / math.sqrt(fans(s)[0]), math.sqrt(3 / fans(s)[0])),
        UNIFORM,
    ),
    "lecun_normal": (
        lambda s: (0.0, 1 / math.sqrt(fans(s)[0]), 2 / math.sqrt(fans(s)[0]) / 0.87962566103423978),
        truncated(-2, 2),
    ),
    "trunc_normal_tf(0.2, 0.05, -1, 3)": (
        lambda s: (
            sps.truncnorm(-1, 3, loc=0.2, scale=0.05).mean(),
            sps.truncnorm(-1, 3, loc=0.2, scale=0.05).std(),
            None,
        ),
        truncated(-1, 3),
    ),
    "variance_scaling(2, fan_avg, uniform)": (
        lambda s: (0.0, math.sqrt(2 / (sum(fans(s)) / 2)), math.sqrt(6 / (sum(fans(s)) / 2))),
        UNIFORM,
    ),
    "delta_orthogonal(1.5)": (
        lambda s: (0.0, 1.5 / math.sqrt(max(s[0], s[1]) * math.prod(s[2:])), None),
        NORMAL,
    ),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("text", list(DOCUMENTED))
def test_mean_std_and_bounds_are_the_documented_ones(text, shape):
    if text.startswith("delta_orthogonal") and len(shape) < 3:
        pytest.skip("delta_orthogonal takes 3/4/5-D tensors")
    doc, kurtosis = DOCUMENTED[text]
    mean, std, limit = doc(shape)
    t = draw(text, shape)
    n = t.numel()
    assert bound(text).expected_std(shape) == pytest.approx(std, rel=1e-9)  # what the report uses
    if text.startswith(("orthogonal", "delta_orthogonal")):  # exact by construction
        assert t.pow(2).mean().item() == pytest.approx(std**2, rel=1e-9)
        return
    assert abs(t.mean().item() - mean) < 5 * std / math.sqrt(n), (t.mean().item(), mean)
    got = t.std(unbiased=False).item()
    assert abs(got / std - 1) < 5 * math.sqrt((kurtosis - 1) / (4 * n)), (got, std)
    if limit is not None:
        assert t.abs().max().item() <= limit * (1 + 1e-12)
        assert t.abs().max().item() > 0.95 * limit  # the bound is the distribution's, not looser


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_truncated_schemes_stay_inside_their_documented_bounds(shape):
    t = draw("trunc_normal(0.1, 0.5, -0.2, 0.9)", shape)
    assert t.min().item() >= -0.2 and t.max().item() <= 0.9
    tf = draw("trunc_normal_tf(0.2, 0.05, -1, 3)", shape)  # bounds in std units
    assert tf.min().item() >= 0.2 - 0.05 and tf.max().item() <= 0.2 + 3 * 0.05
    assert (
        sps.kstest(tf.flatten().numpy(), sps.truncnorm(-1, 3, loc=0.2, scale=0.05).cdf).pvalue
        > 1e-4
    )


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)], ids=str)
def test_eye_is_torchs_eye(shape):
    assert torch.equal(draw("eye", shape, torch.float32), torch.nn.init.eye_(torch.empty(shape)))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("shape", [(8, 4, 3), (8, 4, 3, 3), (8, 2, 3, 3, 3)], ids=str)
def test_dirac_is_torchs_dirac_on_3_4_and_5_d(shape, groups):
    ours = draw(f"dirac({groups})", shape, torch.float32)
    assert torch.equal(ours, torch.nn.init.dirac_(torch.empty(shape), groups))
    ones = (ours == 1).sum().item()
    assert (
        ones == min(shape[0] // groups, shape[1]) * groups
        and (ours == 0).sum() == ours.numel() - ones
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("text, value", [("zeros", 0.0), ("ones", 1.0), ("constant(-0.75)", -0.75)])
def test_constants_on_every_rank(text, value, shape):
    assert torch.equal(draw(text, shape, torch.float32), torch.full(shape, value))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_sparse_matches_torchs_sparsity_and_the_printed_std(sparsity):
    """torch.nn.init.sparse_ draws its zero positions from the global RNG, so values cannot be
    compared; the count of zeros per column and the std `reinit schemes` prints can:
    std·√(1−⌈sparsity·rows⌉/rows)."""
    rows, cols = 64, 400
    ours = draw(f"sparse({sparsity}, std=0.3)", (rows, cols))
    torch.manual_seed(0)
    ref = torch.nn.init.sparse_(torch.empty(rows, cols), sparsity, 0.3)
    assert torch.equal((ours == 0).sum(0), (ref == 0).sum(0))
    expected = 0.3 * math.sqrt(1 - math.ceil(sparsity * rows) / rows)
    assert bound(f"sparse({sparsity}, std=0.3)").expected_std((rows, cols)) == pytest.approx(
        expected
    )
    # the zeros are exact, the rest normal: the std of the whole is within sampling error
    kept = ours[ours != 0]
    assert abs(kept.std(unbiased=False).item() / 0.3 - 1) < 5 * math.sqrt(2 / (4 * kept.numel()))
    assert abs(ours.std(unbiased=False).item() / expected - 1) < 0.05


@pytest.mark.parametrize("shape", [(200, 300), (32, 16, 5, 5)], ids=str)
def test_normal_like_is_normal_with_the_tensors_own_mean_and_std(shape):
    """`normal_like` (docs/reference.md): N(mean, std²) with the tensor's own mean and std as
    read. The input here is uniform, so a result that copied its shape would fail the KS test."""
    import reinit

    source = torch.rand(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    source = 0.3 + 0.4 * source  # U(0.3, 0.7): mean 0.5, std 0.4/√12
    new, report = reinit.apply_to_state_dict({"w": source}, ["w=normal_like"], seed=SEED)
    t, n = new["w"], source.numel()
    mean, std = source.mean().item(), source.std(unbiased=False).item()
    assert abs(t.mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(t.std(unbiased=False).item() / std - 1) < 5 * math.sqrt(2 / (4 * n))
    assert sps.kstest(t.flatten().numpy(), sps.norm(mean, std).cdf).pvalue > 1e-4
    assert report.entry("w").scheme.startswith("normal_like")
