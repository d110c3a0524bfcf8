"""Schemes beyond `torch.nn.init` (DESIGN §3, "later schemes").

In timm's `layers/weight_init.py` style: one parametric `variance_scaling` fill (Keras/JAX,
truncated std corrected by 0.87962566103423978) with thin wrappers (`lecun_normal`,
`lecun_uniform`), plus the transformer-era schemes: TF-style truncated normal with bounds in
std units, GPT-2's scaled residual init, small init, HF's mean-resizing of new embedding rows,
the focal-loss bias prior, delta-orthogonal conv kernels, and `copy` from another tensor.

Every random draw comes from the tensor's own generator (the reproducibility contract of
DESIGN §3); schemes that read other values declare it as data (`needs_before`, `reads`,
`from_config`) and the engine provides a `FillContext`."""

from __future__ import annotations

import math

import torch
from torch.nn import init

from reinit.errors import SchemeError
from reinit.schemes.base import (
    Args,
    FillContext,
    Param,
    Scheme,
    Shape,
    context_only,
    fans_of,
    needs_2d_or_more,
)
from reinit.schemes.gain import gain_value
from reinit.schemes.template import fill_template
from reinit.schemes.torch_init import truncated_normal_std

# std of N(0, 1) truncated to [-2, 2]: Keras/JAX divide by it so the truncated result keeps
# the intended variance (Keras' `VarianceScaling`, JAX's `variance_scaling`).
TRUNC_CORRECTION = 0.87962566103423978
MEAN_RESIZE_EPS = 1e-9  # HF's covariance scale for new embedding rows
VS_MODES = ("fan_in", "fan_out", "fan_avg")
VS_DISTRIBUTIONS = ("truncated_normal", "normal", "untruncated_normal", "uniform")


# --- variance scaling (Keras / JAX) ------------------------------------------------------


def variance_scaling_variance(shape: Shape, scale: float, mode: str) -> float:
    """Keras' `scale / max(1, fan)`, with torch's fans (fan_in = size(1)·∏size[2:])."""
    fan_in, fan_out = fans_of(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    return scale / max(1.0, fan)


def _vs_std(shape: Shape, args: Args) -> float:
    variance = variance_scaling_variance(shape, args["scale"], args["mode"])
    if args["distribution"] == "truncated_normal":
        stddev = math.sqrt(variance) / TRUNC_CORRECTION
        return truncated_normal_std(0.0, stddev, -2.0 * stddev, 2.0 * stddev)
    return math.sqrt(variance)


def _vs_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    variance = variance_scaling_variance(tuple(t.shape), args["scale"], args["mode"])
    dist = args["distribution"]
    if dist == "truncated_normal":
        stddev = math.sqrt(variance) / TRUNC_CORRECTION
        init.trunc_normal_(t, 0.0, stddev, -2.0 * stddev, 2.0 * stddev, generator=g)
    elif dist in ("normal", "untruncated_normal"):
        init.normal_(t, 0.0, math.sqrt(variance), generator=g)
    else:
        limit = math.sqrt(3.0 * variance)
        init.uniform_(t, -limit, limit, generator=g)


def _vs_validate(args: Args) -> str | None:
    if args["scale"] <= 0:
        return f"scale must be positive, got {args['scale']}"
    return None


def _lecun(distribution: str):
    def fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
        _vs_fill(t, g, {"scale": 1.0, "mode": "fan_in", "distribution": distribution})

    def std(shape: Shape, args: Args) -> float:
        return _vs_std(shape, {"scale": 1.0, "mode": "fan_in", "distribution": distribution})

    return fill, std


_lecun_normal_fill, _lecun_normal_std = _lecun("truncated_normal")
_lecun_uniform_fill, _lecun_uniform_std = _lecun("uniform")


# --- truncated normal with bounds in std units (TF / timm) -------------------------------


def _trunc_tf_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    """timm's `trunc_normal_tf_`: sample N(0, 1) truncated to [a, b], then scale and shift,
    so the bounds are mean + a·std and mean + b·std."""
    init.trunc_normal_(t, 0.0, 1.0, args["a"], args["b"], generator=g)
    t.mul_(args["std"]).add_(args["mean"])


def _trunc_tf_validate(args: Args) -> str | None:
    if not args["a"] < args["b"]:
        return f"needs a < b, got a={args['a']}, b={args['b']}"
    if args["std"] < 0:
        return f"std must not be negative, got {args['std']}"
    return None


# --- GPT-2 scaled residual init and small init -------------------------------------------

LAYER_KEYS = ("n_layer", "num_hidden_layers", "num_layers", "n_layers")
DIM_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


def _scaled_std(shape: Shape, args: Args) -> float:
    layers = args["layers"]
    if layers is None:
        raise ValueError("layers unknown")
    return args["std"] / math.sqrt(2.0 * layers)


def _scaled_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    init.normal_(t, 0.0, _scaled_std(tuple(t.shape), args), generator=g)


def _positive(*names: str):
    def check(args: Args) -> str | None:
        for n in names:
            v = args.get(n)
            if v is not None and v <= 0:
                return f"{n} must be positive, got {v}"
        return None

    return check


def _small_dim(shape: Shape, args: Args) -> int:
    dim = args["dim"]
    if dim is None:
        if not shape:
            raise ValueError("no dim for a 0-D tensor")
        dim = shape[-1]
    return dim


def _small_std(shape: Shape, args: Args) -> float:
    return math.sqrt(2.0 / (5.0 * _small_dim(shape, args)))


def _small_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    init.normal_(t, 0.0, _small_std(tuple(t.shape), args), generator=g)


def _small_can_take(shape: Shape, args: Args) -> str | None:
    if args["dim"] is None and not shape:
        return "small_init without dim= (and no model config) needs a tensor of 1 or more dims"
    return None


# --- mean-resizing of new embedding rows (transformers >= 4.46) --------------------------


def mean_resize_rows(old: torch.Tensor, new_rows: int, g: torch.Generator) -> torch.Tensor:
    """New rows ~ MVN(μ, 1e-9·Σ) of the old rows (population covariance, as transformers'
    `_init_added_embeddings_weights_with_mean`), or μ itself when 1e-9·Σ is not positive
    definite. Drawn as μ + z·Lᵀ with z from `g` (torch's MultivariateNormal would draw from
    the global RNG)."""
    n, d = old.shape
    mean = old.mean(dim=0)
    centered = old - mean
    cov = centered.T @ centered / n
    chol, info = torch.linalg.cholesky_ex(MEAN_RESIZE_EPS * cov)
    if int(info) != 0:
        return mean.expand(new_rows, d).clone()
    z = torch.randn((new_rows, d), generator=g, dtype=old.dtype, device=old.device)
    return mean + z @ chol.T


def _mean_resize_fill(t: torch.Tensor, g: torch.Generator, args: Args, ctx: FillContext) -> None:
    if ctx.before is None:
        raise SchemeError("mean_resize needs the tensor's current values")
    n = args["old_rows"]
    old = ctx.before[:n].to(t.dtype)
    t[:n] = old
    t[n:] = mean_resize_rows(old, t.shape[0] - n, g)


def _mean_resize_can_take(shape: Shape, args: Args) -> str | None:
    if len(shape) != 2:
        return f"mean_resize needs a 2-D tensor (rows × dim); this one is {len(shape)}-D"
    if args["old_rows"] >= shape[0]:
        return (
            f"mean_resize(old_rows={args['old_rows']}) needs more than {args['old_rows']} rows; "
            f"this tensor has {shape[0]}"
        )
    return None


# --- bias prior, delta-orthogonal, copy --------------------------------------------------


def bias_prior_value(p: float) -> float:
    """−log((1−p)/p): the bias that makes a sigmoid output p at init (RetinaNet's focal loss)."""
    return -math.log((1.0 - p) / p)


def _bias_prior_validate(args: Args) -> str | None:
    if not 0.0 < args["p"] < 1.0:
        return f"p must lie strictly between 0 and 1, got {args['p']}"
    return None


def _delta_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    """Xiao et al. (2018): zero everywhere but the kernel's centre, which holds a (semi-)
    orthogonal out×in matrix; the centre is at size//2 in each spatial dim, as torch's dirac."""
    out_ch, in_ch = t.shape[:2]
    centre = torch.empty((out_ch, in_ch), dtype=t.dtype, device=t.device)
    init.orthogonal_(centre, gain_value(args["gain"]), generator=g)
    t.zero_()
    t[(slice(None), slice(None), *(k // 2 for k in t.shape[2:]))] = centre


def _delta_std(shape: Shape, args: Args) -> float:
    out_ch, in_ch = shape[:2]
    return gain_value(args["gain"]) / math.sqrt(max(out_ch, in_ch) * math.prod(shape[2:]))


def _delta_can_take(shape: Shape, args: Args) -> str | None:
    if len(shape) not in (3, 4, 5):
        return f"delta_orthogonal needs a 3-, 4- or 5-D conv kernel; this one is {len(shape)}-D"
    return None


def _copy_reads(name: str, captures: tuple[str, ...], args: Args) -> str:
    return fill_template(args["source"], name, captures)


def _copy_fill(t: torch.Tensor, g: torch.Generator, args: Args, ctx: FillContext) -> None:
    if ctx.other is None:
        raise SchemeError(f"copy({args['source']}) needs the source tensor")
    t.copy_(ctx.other.reshape(t.shape).to(t.dtype))


_GAIN = Param("gain", "gain", 1.0, help="number or nonlinearity name")

EXTRA_SCHEMES: tuple[Scheme, ...] = (
    Scheme(
        "variance_scaling",
        (
            Param("scale", "float", 1.0),
            Param("mode", "mode", "fan_in", choices=VS_MODES),
            Param("distribution", "str", "truncated_normal", choices=VS_DISTRIBUTIONS),
        ),
        _vs_fill,
        _vs_std,
        "√(scale/max(1, fan)), fan = fan_in, fan_out or (fan_in+fan_out)/2",
        "Keras/JAX VarianceScaling: truncated_normal (±2σ, σ corrected by 0.8796…), "
        "normal (= untruncated_normal) or uniform; torch's fans",
        can_take=needs_2d_or_more("variance_scaling"),
        uses_fans=True,
        validate=_vs_validate,
    ),
    Scheme(
        "lecun_normal",
        (),
        _lecun_normal_fill,
        _lecun_normal_std,
        "1/√fan_in",
        "LeCun normal as Keras/JAX: variance_scaling(1, fan_in, truncated_normal)",
        can_take=needs_2d_or_more("lecun_normal"),
        uses_fans=True,
        kurtosis=2.4,
        aliases=("lecun",),
    ),
    Scheme(
        "lecun_uniform",
        (),
        _lecun_uniform_fill,
        _lecun_uniform_std,
        "1/√fan_in",
        "LeCun uniform as Keras/JAX: variance_scaling(1, fan_in, uniform)",
        can_take=needs_2d_or_more("lecun_uniform"),
        uses_fans=True,
        kurtosis=1.8,
    ),
    Scheme(
        "trunc_normal_tf",
        (
            Param("mean", "float", 0.0),
            Param("std", "float", 1.0),
            Param("a", "float", -2.0, help="lower bound in std units"),
            Param("b", "float", 2.0, help="upper bound in std units"),
        ),
        _trunc_tf_fill,
        lambda s, a: a["std"] * truncated_normal_std(0.0, 1.0, a["a"], a["b"]),
        "std·(std of N(0,1) truncated to [a, b])",
        "N(mean, std²) truncated to [mean+a·std, mean+b·std] (TF/timm: bounds in std units)",
        kurtosis=3.0,
        validate=_trunc_tf_validate,
    ),
    Scheme(
        "scaled_normal",
        (
            Param("std", "float", 0.02),
            Param(
                "layers", "int", None, help="L; default: n_layer/num_hidden_layers of the config"
            ),
        ),
        _scaled_fill,
        _scaled_std,
        "std/√(2·layers)",
        "GPT-2's residual projections: N(0, (std/√(2L))²), L read from the model config "
        "when not given",
        from_config=(("layers", LAYER_KEYS, True),),
        validate=_positive("std", "layers"),
    ),
    Scheme(
        "small_init",
        (Param("dim", "int", None, help="d; default: the config's hidden size, else size(-1)"),),
        _small_fill,
        _small_std,
        "√(2/(5·dim))",
        "Nguyen & Salazar (2019) small init: N(0, 2/(5d)); d from the model config, else the "
        "tensor's last dim",
        can_take=_small_can_take,
        from_config=(("dim", DIM_KEYS, False),),
        validate=_positive("dim"),
    ),
    Scheme(
        "mean_resize",
        (Param("old_rows", "int", help="rows to keep; the rest are new"),),
        context_only,
        lambda s, a: None,
        "none (kept rows unchanged; new rows ≈ the old rows' mean, spread √1e-9·σ)",
        "transformers ≥ 4.46 resize: keep the first old_rows rows, draw the rest from "
        "MVN(μ, 1e-9·Σ) of them (μ itself when that is not positive definite)",
        can_take=_mean_resize_can_take,
        fill_ctx=_mean_resize_fill,
        needs_before=True,
        validate=_positive("old_rows"),
    ),
    Scheme(
        "bias_prior",
        (Param("p", "float", 0.01, help="prior probability of the positive class"),),
        lambda t, g, a: init.constant_(t, bias_prior_value(a["p"])),
        lambda s, a: 0.0,
        "0 (every value = −log((1−p)/p))",
        "focal-loss bias prior (Lin et al. 2017): sigmoid(bias) = p at init",
        validate=_bias_prior_validate,
    ),
    Scheme(
        "delta_orthogonal",
        (_GAIN,),
        _delta_fill,
        _delta_std,
        "gain/√(max(out, in)·∏kernel)",
        "Xiao et al. (2018): zero kernel with a (semi-)orthogonal out×in matrix at its centre "
        "(3/4/5-D)",
        can_take=_delta_can_take,
        kurtosis=3.0 * 125,  # mostly zeros: heavy-tailed; a loose std_off tolerance
    ),
    Scheme(
        "copy",
        (Param("source", "str", help="tensor name; {name} and {1}, {2}, … as in key templates"),),
        context_only,
        lambda s, a: None,
        "the std of the source tensor",
        "the values of another tensor of the same checkpoint (as read, before this run's "
        "changes), cast to this tensor's dtype; shapes must match",
        fill_ctx=_copy_fill,
        reads=_copy_reads,
    ),
)
