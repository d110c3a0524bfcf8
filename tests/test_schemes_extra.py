"""The schemes beyond torch.nn.init: std formulas and distribution shapes checked statistically
(fixed seeds, tolerances from sampling error), variance_scaling against a reference of Keras'
formula written here, mean_resize against its formula, and the context the engine provides
(the tensor's own values, another tensor, the model config).

Internal: also tests reinit.rules, reinit.schemes directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run
from safetensors.torch import load_file, save_file
from scipy import stats as sps

import reinit
from reinit.errors import RuleError
from reinit.rules import parse_action
from reinit.schemes import SCHEMES, FillContext, bind_scheme, generate

SHAPE = (256, 128)  # 32,768 values: a normal's sample std has a relative SE of ~0.4%


def _bound(text: str):
    a = parse_action(text)
    return bind_scheme(a.name, a.args, a.kwargs_dict())


def _std_tol(n: int, kurtosis: float = 3.0, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt((kurtosis - 1.0) / (4.0 * n))


def _pop_std(t: torch.Tensor) -> float:
    return t.double().std(unbiased=False).item()


# --- variance_scaling vs Keras ------------------------------------------------------------


def keras_variance_scaling(keras_shape, scale, mode, distribution):
    """Keras' VarianceScaling.__call__ (keras/src/initializers/random_initializers.py), as
    a distribution: `compute_fans` on the Keras kernel layout (..., in, out), then the
    truncated std corrected by .87962566103423978 and ±2 std truncation."""
    shape = keras_shape
    if len(shape) == 0:
        fan_in = fan_out = 1
    elif len(shape) == 1:
        fan_in = fan_out = shape[0]
    elif len(shape) == 2:
        fan_in, fan_out = shape
    else:
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    if mode == "fan_in":
        scale /= max(1.0, fan_in)
    elif mode == "fan_out":
        scale /= max(1.0, fan_out)
    else:
        scale /= max(1.0, (fan_in + fan_out) / 2.0)
    if distribution == "truncated_normal":
        stddev = math.sqrt(scale) / 0.87962566103423978
        return sps.truncnorm(-2, 2, scale=stddev), 2 * stddev
    if distribution in ("untruncated_normal", "normal"):
        return sps.norm(scale=math.sqrt(scale)), math.inf
    limit = math.sqrt(3.0 * scale)
    return sps.uniform(-limit, 2 * limit), limit


def _to_keras_layout(torch_shape):
    """torch (out, in, *kernel) -> Keras (*kernel, in, out)."""
    out_ch, in_ch, *kernel = torch_shape
    return (*kernel, in_ch, out_ch)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
@pytest.mark.parametrize("shape", [(96, 160), (48, 16, 3, 3)])
def test_variance_scaling_matches_keras(mode, distribution, shape):
    scale = 2.0
    b = _bound(f"variance_scaling({scale}, {mode}, {distribution})")
    t = generate(b, "layer.weight", shape, torch.float64, seed=11)
    ref, bound = keras_variance_scaling(_to_keras_layout(shape), scale, mode, distribution)
    # the formula: our expected std is the Keras distribution's std (exactly)
    assert b.expected_std(shape) == pytest.approx(ref.std(), rel=1e-12)
    # the values: drawn from that very distribution (KS), within its bounds
    x = t.flatten().numpy()
    assert sps.kstest(x, ref.cdf).pvalue > 1e-4
    assert abs(x).max() <= bound
    kurt = {"truncated_normal": 2.4, "normal": 3.0, "uniform": 1.8}[distribution]
    assert abs(_pop_std(t) - ref.std()) / ref.std() < _std_tol(t.numel(), kurt)


def test_truncated_variance_scaling_keeps_the_intended_variance():
    """The 0.8796… correction makes a truncated draw's std √(scale/fan), not 0.88 of it."""
    b = _bound("variance_scaling(1, fan_in, truncated_normal)")
    assert b.expected_std((64, 400)) == pytest.approx(1 / math.sqrt(400), rel=1e-9)


def test_lecun_are_variance_scaling_wrappers_as_in_keras_and_jax():
    for lecun, vs in [
        ("lecun_normal", "variance_scaling(1, fan_in, truncated_normal)"),
        ("lecun_uniform", "variance_scaling(1.0, mode=fan_in, distribution=uniform)"),
    ]:
        a = generate(_bound(lecun), "w", SHAPE, torch.float32, seed=5)
        b = generate(_bound(vs), "w", SHAPE, torch.float32, seed=5)
        assert torch.equal(a, b)
        assert _bound(lecun).expected_std(SHAPE) == pytest.approx(1 / math.sqrt(SHAPE[1]))
    assert SCHEMES["lecun_normal"].formula == "1/√fan_in"


def test_variance_scaling_rejects_bad_arguments():
    with pytest.raises(RuleError, match="mode"):
        reinit.parse_rule("w=variance_scaling(1, fan_max)")
    with pytest.raises(RuleError, match="distribution"):
        reinit.parse_rule("w=variance_scaling(1, fan_in, gamma)")
    with pytest.raises(RuleError, match="scale must be positive"):
        reinit.parse_rule("w=variance_scaling(0)")


# --- truncated normal in std units, scaled normal, small init ----------------------------


def test_trunc_normal_tf_bounds_are_in_std_units():
    mean, std, a, b = 0.5, 0.02, -1.5, 2.0
    bound = _bound(f"trunc_normal_tf({mean}, {std}, {a}, {b})")
    t = generate(bound, "w", SHAPE, torch.float64, seed=2)
    x = t.flatten().numpy()
    assert x.min() >= mean + a * std and x.max() <= mean + b * std
    ref = sps.truncnorm(a, b, loc=mean, scale=std)
    assert sps.kstest(x, ref.cdf).pvalue > 1e-4
    assert bound.expected_std(SHAPE) == pytest.approx(ref.std(), rel=1e-9)
    assert abs(_pop_std(t) - ref.std()) / ref.std() < _std_tol(t.numel(), 2.5)
    # the torch trunc_normal bounds are absolute: the same numbers mean something else there
    assert _bound(f"trunc_normal({mean}, {std}, {a}, {b})").expected_std(SHAPE) != pytest.approx(
        ref.std()
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("scaled_normal(0.02, 12)", 0.02 / math.sqrt(24)),
        ("scaled_normal(std=0.1, layers=3)", 0.1 / math.sqrt(6)),
        ("small_init(64)", math.sqrt(2 / (5 * 64))),
        ("small_init", math.sqrt(2 / (5 * SHAPE[-1]))),  # d = the tensor's last dim
    ],
)
def test_normal_family_std_formulas(text, expected):
    b = _bound(text)
    assert b.expected_std(SHAPE) == pytest.approx(expected, rel=1e-12)
    t = generate(b, "w", SHAPE, torch.float64, seed=9)
    assert abs(t.mean().item()) < 5 * expected / math.sqrt(t.numel())
    assert abs(_pop_std(t) - expected) / expected < _std_tol(t.numel())
    assert sps.kstest(t.flatten().numpy(), sps.norm(scale=expected).cdf).pvalue > 1e-4


def _model_dir(tmp_path, config):
    d = tmp_path / "model"
    d.mkdir()
    torch.manual_seed(0)
    tensors = {
        "h.0.attn.c_proj.weight": torch.randn(32, 32),
        "h.1.attn.c_proj.weight": torch.randn(32, 32),
        "wte.weight": torch.randn(50, 32),
    }
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_scaled_normal_reads_layers_and_small_init_reads_dim_from_the_config(tmp_path):
    d = _model_dir(tmp_path, {"model_type": "gpt2", "n_layer": 6, "n_embd": 40})
    rep = reinit.apply(
        d,
        ["h.*.c_proj.weight=scaled_normal", "wte.weight=small_init"],
        tmp_path / "out",
        default_report=False,
    )
    e = rep.entry("h.0.attn.c_proj.weight")
    assert e.scheme == "scaled_normal(std=0.02, layers=6)"
    assert e.expected_std == pytest.approx(0.02 / math.sqrt(12))
    assert rep.entry("wte.weight").expected_std == pytest.approx(math.sqrt(2 / (5 * 40)))
    # a value given in the rule wins over the config
    rep2 = reinit.plan(d, ["h.*.c_proj.weight=scaled_normal(layers=2)"])
    assert rep2.entries[0].scheme.describe() == "scaled_normal(std=0.02, layers=2)"
    # the single file beside config.json reads it too; the same file alone cannot
    f = d / "model.safetensors"
    assert (
        reinit.plan(f, ["h.*.c_proj.weight=scaled_normal"]).entries[0].scheme.kwargs["layers"] == 6
    )
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(f.read_bytes())
    with pytest.raises(RuleError, match="scaled_normal needs layers=N.*n_layer"):
        reinit.plan(lone, ["h.*.c_proj.weight=scaled_normal"])


# --- mean_resize ---------------------------------------------------------------------------


def test_mean_resize_follows_the_formula():
    """Kept rows unchanged; new rows ~ MVN(μ, 1e-9·Σ) with Σ the population covariance of the
    old rows: whitened by the Cholesky factor of 1e-9·Σ they are standard normal."""
    g = torch.Generator().manual_seed(0)
    old_n, new_n, d = 400, 3000, 6
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    before = (torch.randn(old_n + new_n, d, generator=g, dtype=torch.float64) @ mix) + 0.3
    b = _bound(f"mean_resize(old_rows={old_n})")
    t = generate(
        b, "emb.weight", before.shape, torch.float64, seed=4, context=FillContext(before=before)
    )
    old = before[:old_n]
    assert torch.equal(t[:old_n], old)
    mu = old.mean(0)
    cov = (old - mu).T @ (old - mu) / old_n
    chol = torch.linalg.cholesky(1e-9 * cov)
    z = torch.linalg.solve_triangular(chol, (t[old_n:] - mu).T, upper=False).T
    assert sps.kstest(z.flatten().numpy(), sps.norm().cdf).pvalue > 1e-4
    zc = torch.cov(z.T)
    se = 5 / math.sqrt(new_n)
    assert torch.allclose(zc, torch.eye(d, dtype=torch.float64), atol=se)
    assert b.expected_std(before.shape) is None


def test_mean_resize_falls_back_to_the_mean_when_not_positive_definite():
    before = torch.randn(10, 8, generator=torch.Generator().manual_seed(1))
    b = _bound("mean_resize(3)")  # 3 rows in 8 dims: Σ has rank 2, not positive definite
    t = generate(b, "e", before.shape, torch.float32, 0, context=FillContext(before=before))
    assert torch.equal(t[:3], before[:3])
    assert torch.allclose(t[3:], before[:3].mean(0).expand(7, 8), atol=1e-7, rtol=0)


def test_mean_resize_in_apply_and_its_limits(tmp_path):
    src = tmp_path / "m.safetensors"
    torch.manual_seed(3)
    emb = torch.randn(40, 16).to(torch.bfloat16)
    conv = torch.randn(16, 2, 3)
    save_file({"emb.weight": emb, "ln.weight": torch.ones(16), "conv.weight": conv}, src)
    rep = reinit.apply(src, ["emb.weight=mean_resize(old_rows=30)"], default_report=False)
    new = load_file(tmp_path / "m.reinit.safetensors")["emb.weight"]
    assert torch.equal(new[:30], emb[:30])
    mu = emb[:30].float().mean(0)
    assert torch.allclose(new[30:].float(), mu.expand(10, 16), atol=0.01)
    assert rep.entry("emb.weight").expected_std is None
    with pytest.raises(RuleError, match="needs more than 40 rows"):
        reinit.plan(src, ["emb.weight=mean_resize(40)"])
    by = {e.name: e for e in reinit.plan(src, ["*.weight=mean_resize(8)"]).entries}
    assert by["conv.weight"].action == "skipped" and "3-D" in by["conv.weight"].reason
    # a 1-D tensor (a bias, as --resize fills one) takes it: N(mean, (1e-9·std)²) of its rows
    assert by["emb.weight"].action == by["ln.weight"].action == "reinit"


# --- bias prior, delta-orthogonal, copy --------------------------------------------------


def test_bias_prior_makes_the_sigmoid_output_p():
    b = _bound("bias_prior(0.01)")
    t = generate(b, "cls.bias", (5,), torch.float32, 0)
    assert torch.allclose(t, torch.full((5,), -math.log(99.0)))
    assert torch.allclose(torch.sigmoid(t.double()), torch.full((5,), 0.01, dtype=torch.float64))
    assert b.expected_std((5,)) == 0.0
    with pytest.raises(RuleError, match="strictly between 0 and 1"):
        reinit.parse_rule("b=bias_prior(1)")


@pytest.mark.parametrize("shape", [(24, 8, 3), (16, 16, 3, 3), (8, 12, 3, 3, 3), (8, 4, 4, 2)])
def test_delta_orthogonal_is_an_orthogonal_centre(shape):
    gain = 1.3
    b = _bound(f"delta_orthogonal({gain})")
    t = generate(b, "conv.weight", shape, torch.float64, seed=6)
    centre_idx = (slice(None), slice(None), *(k // 2 for k in shape[2:]))
    centre = t[centre_idx]
    rest = t.clone()
    rest[centre_idx] = 0
    assert torch.count_nonzero(rest) == 0
    out_ch, in_ch = shape[:2]
    prod = centre.T @ centre if out_ch >= in_ch else centre @ centre.T
    eye = gain**2 * torch.eye(min(out_ch, in_ch), dtype=torch.float64)
    torch.testing.assert_close(prod, eye, atol=1e-10, rtol=0)
    # std formula: sum of squares is exact; only the (tiny) sample mean moves the std
    assert b.expected_std(shape) == pytest.approx(_pop_std(t), rel=0.02)
    with pytest.raises(RuleError, match="3-, 4- or 5-D"):
        reinit.plan({"w": torch.zeros(4, 4)}, ["w=delta_orthogonal"])


def test_copy_reads_another_tensor_before_this_runs_changes(tmp_path):
    torch.manual_seed(0)
    sd = {
        "enc.0.w": torch.randn(4, 3),
        "enc.1.w": torch.randn(4, 3),
        "dec.0.w": torch.zeros(4, 3, dtype=torch.bfloat16),
        "dec.1.w": torch.zeros(4, 3, dtype=torch.bfloat16),
        "odd": torch.zeros(3, 4),
    }
    new, rep = reinit.apply_to_state_dict(
        sd, ["enc.*=kaiming_normal", "dec.*.w=copy(enc.{1}.w)"], seed=1
    )
    for i in (0, 1):
        assert torch.equal(new[f"dec.{i}.w"], sd[f"enc.{i}.w"].to(torch.bfloat16))
        assert not torch.equal(new[f"enc.{i}.w"], sd[f"enc.{i}.w"])
    assert rep.entry("dec.0.w").scheme == "copy(source=enc.{1}.w)"
    with pytest.raises(RuleError, match="no tensor 'enc.9.w'"):
        reinit.plan(sd, ["dec.0.w=copy(enc.9.w)"])
    with pytest.raises(RuleError, match="shapes differ"):
        reinit.plan(sd, ["odd=copy(enc.0.w)"])


# --- reproducibility and listing -----------------------------------------------------------


def test_every_new_scheme_follows_the_per_tensor_generator_contract():
    """Values depend only on (seed, name): same inputs, same values; another name, others."""
    for text in [
        "variance_scaling(1, fan_avg, uniform)",
        "lecun_normal",
        "trunc_normal_tf(0, 0.02)",
        "scaled_normal(0.02, 4)",
        "small_init(32)",
        "delta_orthogonal",
    ]:
        b = _bound(text)
        shape = (8, 8, 3) if "delta" in text else (32, 16)
        a1 = generate(b, "x.weight", shape, torch.float32, 3)
        assert torch.equal(a1, generate(b, "x.weight", shape, torch.float32, 3)), text
        assert not torch.equal(a1, generate(b, "y.weight", shape, torch.float32, 3)), text


def test_reinit_schemes_lists_every_new_scheme_with_its_std():
    out = run("schemes", "--json").output
    rows = {r["name"]: r for r in json.loads(out)}
    for name in [
        "variance_scaling",
        "lecun_normal",
        "lecun_uniform",
        "trunc_normal_tf",
        "scaled_normal",
        "small_init",
        "mean_resize",
        "bias_prior",
        "delta_orthogonal",
        "copy",
    ]:
        assert rows[name]["std"], name
    assert rows["variance_scaling"]["signature"] == (
        "variance_scaling(scale=1, mode=fan_in, distribution=truncated_normal)"
    )
