"""Variance scaling as Keras and JAX define it (docs/guide/rules-and-schemes.md, "later schemes"), in timm's
`layers/weight_init.py` style: one parametric `variance_scaling` fill (truncated std corrected by
0.87962566103423978) with thin wrappers (`lecun_normal`, `lecun_uniform`), and TF/timm's
truncated normal with bounds in std units (`trunc_normal_tf`).

Every random draw comes from the tensor's own generator (the reproducibility contract of
docs/guide/rules-and-schemes.md); schemes that read other values declare it as data (`needs_before`, `reads`,
`from_config`) and the engine provides a `FillContext`."""

from __future__ import annotations

import math

import torch

from reinit.schemes.base import Args, Fill, Param, Scheme, Shape, StdFormula
from reinit.schemes.shapes import fans, needs_2d_or_more
from reinit.schemes.torch_init import truncated_normal_std

__all__ = [
    "TRUNC_CORRECTION",
    "VARIANCE_SCHEMES",
    "VS_DISTRIBUTIONS",
    "VS_MODES",
    "variance_scaling_variance",
]

# std of N(0, 1) truncated to [-2, 2]: Keras/JAX divide by it so the truncated result keeps
# the intended variance (Keras' `VarianceScaling`, JAX's `variance_scaling`).
TRUNC_CORRECTION = 0.87962566103423978
VS_MODES = ("fan_in", "fan_out", "fan_avg")
VS_DISTRIBUTIONS = ("truncated_normal", "normal", "untruncated_normal", "uniform")


# --- variance scaling (Keras / JAX) ------------------------------------------------------


def variance_scaling_variance(shape: Shape, scale: float, mode: str) -> float:
    """Keras' `scale / max(1, fan)`, with torch's fans (fan_in = size(1)·∏size[2:])."""
    fan_in, fan_out = fans(shape)
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
        torch.nn.init.trunc_normal_(t, 0.0, stddev, -2.0 * stddev, 2.0 * stddev, generator=g)
    elif dist in ("normal", "untruncated_normal"):
        torch.nn.init.normal_(t, 0.0, math.sqrt(variance), generator=g)
    else:
        limit = math.sqrt(3.0 * variance)
        torch.nn.init.uniform_(t, -limit, limit, generator=g)


def _vs_validate(args: Args) -> str | None:
    if args["scale"] <= 0:
        return f"scale must be positive, got {args['scale']}"
    return None


def _lecun(distribution: str) -> tuple[Fill, StdFormula]:
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
    torch.nn.init.trunc_normal_(t, 0.0, 1.0, args["a"], args["b"], generator=g)
    t.mul_(args["std"]).add_(args["mean"])


def _trunc_tf_validate(args: Args) -> str | None:
    if not args["a"] < args["b"]:
        return f"needs a < b, got a={args['a']}, b={args['b']}"
    if args["std"] < 0:
        return f"std must not be negative, got {args['std']}"
    return None


VARIANCE_SCHEMES: tuple[Scheme, ...] = (
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
)
