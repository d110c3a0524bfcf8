"""Every `torch.nn.init` scheme, with torch's argument names, positional order and defaults.

Fills call the torch function itself with the tensor's own generator, so a float32 result is
bit-identical to the plain torch call (docs/guide/rules-and-schemes.md). The one exception is `sparse`, whose zero
positions torch draws from the global RNG; ours come from the tensor's generator."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch

from reinit.schemes.base import Args, Param, Scheme, Shape
from reinit.schemes.gain import calculate_gain, canonical, gain_value
from reinit.schemes.shapes import GAIN, fans, needs_2d_or_more, needs_exactly_2d

__all__ = ["TORCH_SCHEMES", "keep_thread_count", "truncated_normal_std", "use_thread_count"]

_SQRT12 = math.sqrt(12.0)


# --- what a scheme can take -------------------------------------------------------------


def _dirac_can_take(shape: Shape, args: Args) -> str | None:
    if len(shape) not in (3, 4, 5):
        return f"dirac needs a 3-, 4- or 5-D tensor; this one is {len(shape)}-D"
    groups = args.get("groups", 1)
    if groups < 1 or shape[0] % groups != 0:
        return f"dirac(groups={groups}) needs dim 0 ({shape[0]}) divisible by groups"
    return None


# --- std formulas -----------------------------------------------------------------------


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def truncated_normal_std(mean: float, std: float, a: float, b: float) -> float:
    """Std of N(mean, std²) truncated to [a, b] (absolute bounds)."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    z = _Phi(beta) - _Phi(alpha)
    if z <= 0:
        raise ValueError("empty truncation interval")
    t1 = (alpha * _phi(alpha) - beta * _phi(beta)) / z
    t2 = (_phi(alpha) - _phi(beta)) / z
    return std * math.sqrt(max(0.0, 1.0 + t1 - t2 * t2))


def _pattern_std(ones: int, numel: int) -> float:
    """Population std of a 0/1 pattern with `ones` ones among `numel` entries."""
    p = ones / numel
    return math.sqrt(p * (1.0 - p))


def _eye_std(shape: Shape, args: Args) -> float:
    return _pattern_std(min(shape), math.prod(shape))


def _dirac_std(shape: Shape, args: Args) -> float:
    groups = args["groups"]
    ones = groups * min(shape[0] // groups, shape[1])
    return _pattern_std(ones, math.prod(shape))


def _xavier_std(shape: Shape, args: Args) -> float:
    fan_in, fan_out = fans(shape)
    return gain_value(args["gain"]) * math.sqrt(2.0 / (fan_in + fan_out))


def _kaiming_std(shape: Shape, args: Args) -> float:
    fan_in, fan_out = fans(shape)
    fan = fan_in if args["mode"] == "fan_in" else fan_out
    return calculate_gain(args["nonlinearity"], args["a"]) / math.sqrt(fan)


# Nonlinearities reinit's calculate_gain knows and torch's does not (gelu, silu/swish): the fill
# is torch's own kaiming_*_ body (std = gain/sqrt(fan), then normal_ or uniform_ on the
# tensor's generator), so a float32 result is what torch would give if it knew the gain.
_TORCH_NONLINEARITIES = frozenset(
    ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d")
    + ("conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")
)


def _kaiming_fill(t: torch.Tensor, g: torch.Generator, a: Args, normal: bool) -> torch.Tensor:
    name = canonical(a["nonlinearity"])
    if name in _TORCH_NONLINEARITIES:
        fill = torch.nn.init.kaiming_normal_ if normal else torch.nn.init.kaiming_uniform_
        return fill(t, a["a"], a["mode"], cast("Any", name), generator=g)
    std = _kaiming_std(tuple(t.shape), a)
    with torch.no_grad():
        if normal:
            return t.normal_(0.0, std, generator=g)
        bound = math.sqrt(3.0) * std
        return t.uniform_(-bound, bound, generator=g)


def _orthogonal_std(shape: Shape, args: Args) -> float:
    rows = shape[0]
    cols = math.prod(shape) // rows
    return gain_value(args["gain"]) / math.sqrt(max(rows, cols))


def _sparse_std(shape: Shape, args: Args) -> float:
    rows = shape[0]
    zeros = math.ceil(args["sparsity"] * rows)
    return args["std"] * math.sqrt(max(0.0, 1.0 - zeros / rows))


# --- fills ------------------------------------------------------------------------------


# Held by every `_orthogonal_fill` and every change of torch's thread count in a run. The
# count LAPACK's QR (MKL here) runs on is process-wide, not per thread: a draw thread setting
# it while another thread's QR runs would run that QR on several threads, which rounds
# differently (a 3000x1500 QR here: 2.8e-7 apart on 1 and 2 threads), so the values would
# depend on timing. So QRs run one at a time, and no count changes under one.
_THREAD_COUNT = threading.Lock()


def _orthogonal_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    """torch's orthogonal_, with LAPACK's QR on one thread: a blocked QR on several threads
    rounds differently, and the output must not depend on the machine's thread count. (Equal,
    bit for bit, to `init.orthogonal_` run under `torch.set_num_threads(1)`.) One at a time,
    under `_THREAD_COUNT`."""
    with _THREAD_COUNT:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.nn.init.orthogonal_(t, gain_value(args["gain"]), generator=g)
        finally:
            torch.set_num_threads(threads)


@contextmanager
def keep_thread_count() -> Iterator[int]:
    """Put torch's thread count back as it was when the block began, for threads made later;
    the block gets that count, for `use_thread_count` in its draw threads.

    `_orthogonal_fill` runs in reinit's draw threads. `torch.set_num_threads` there sets the
    count each thread adopts when it first uses torch, process-wide: a draw thread that starts
    while another holds 1 adopts 1, and its own restore puts back 1. Left so, every thread a
    caller makes after the run (a data loader's, a training loop's) would compute on one core.
    Wrap the span in which draw threads run; the block's end sets the count once more, after
    every draw thread has finished."""
    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        with _THREAD_COUNT:
            torch.set_num_threads(threads)


def use_thread_count(threads: int) -> None:
    """The calling draw thread's torch thread count set to `threads`, the count its run began
    with (`keep_thread_count`), where it differs. A draw thread that first used torch while
    another held 1 for `_orthogonal_fill` adopted 1, and its own orthogonal put back 1: it
    drew on one core for the rest of the run. Called before each draw, so a thread is at 1
    only inside its own `_orthogonal_fill`. Under `_THREAD_COUNT`: never while a QR runs."""
    if torch.get_num_threads() != threads:
        with _THREAD_COUNT:
            torch.set_num_threads(threads)


def _sparse_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    """Martens' sparse init with zero positions drawn from `g` (torch draws them from the
    global RNG, which would break per-tensor reproducibility). One random permutation per
    column, vectorized: argsort of uniform noise."""
    rows, cols = t.shape
    t.normal_(0.0, args["std"], generator=g)
    zeros = math.ceil(args["sparsity"] * rows)
    if zeros and rows and cols:
        order = torch.rand((rows, cols), generator=g).argsort(dim=0)
        t.scatter_(0, order[:zeros], 0.0)


_KAIMING = (
    Param("a", "float", 0.0, help="negative slope of leaky_relu", low=-1e6, high=1e6),
    Param("mode", "mode", "fan_in", choices=("fan_in", "fan_out")),
    Param("nonlinearity", "nonlinearity", "leaky_relu"),
)

TORCH_SCHEMES: tuple[Scheme, ...] = (
    Scheme(
        "uniform",
        (Param("a", "float", 0.0, in_tensor=True), Param("b", "float", 1.0, in_tensor=True)),
        lambda t, g, a: torch.nn.init.uniform_(t, a["a"], a["b"], generator=g),
        lambda s, a: (a["b"] - a["a"]) / _SQRT12,
        "(b−a)/√12",
        "U(a, b)",
        kurtosis=1.8,
        ordered=(("a", "b", False),),
    ),
    Scheme(
        "normal",
        (
            Param("mean", "float", 0.0, in_tensor=True),
            Param("std", "float", 1.0, low=0.0, in_tensor=True),
        ),
        lambda t, g, a: torch.nn.init.normal_(t, a["mean"], a["std"], generator=g),
        lambda s, a: a["std"],
        "std",
        "N(mean, std²)",
        plain_normal=lambda s, a: (a["mean"], a["std"]),
    ),
    Scheme(
        "trunc_normal",
        (
            Param("mean", "float", 0.0, in_tensor=True),
            Param("std", "float", 1.0, low=0.0, low_open=True, in_tensor=True),
            Param("a", "float", -2.0, help="absolute lower bound", in_tensor=True),
            Param("b", "float", 2.0, help="absolute upper bound", in_tensor=True),
        ),
        lambda t, g, a: torch.nn.init.trunc_normal_(
            t, a["mean"], a["std"], a["a"], a["b"], generator=g
        ),
        lambda s, a: truncated_normal_std(a["mean"], a["std"], a["a"], a["b"]),
        "std of N(mean, std²) truncated to [a, b]",
        "N(mean, std²) truncated to [a, b] (absolute bounds)",
        kurtosis=2.8,
        ordered=(("a", "b", True),),
    ),
    Scheme(
        "constant",
        (Param("val", "float", in_tensor=True),),
        lambda t, g, a: torch.nn.init.constant_(t, a["val"]),
        lambda s, a: 0.0,
        "0",
        "every value = val",
    ),
    Scheme(
        "ones", (), lambda t, g, a: torch.nn.init.ones_(t), lambda s, a: 0.0, "0", "every value = 1"
    ),
    Scheme(
        "zeros",
        (),
        lambda t, g, a: torch.nn.init.zeros_(t),
        lambda s, a: 0.0,
        "0",
        "every value = 0",
    ),
    Scheme(
        "eye",
        (),
        lambda t, g, a: torch.nn.init.eye_(t),
        _eye_std,
        "√(p(1−p)), p = min(n,m)/(n·m)",
        "identity matrix (2-D)",
        can_take=needs_exactly_2d("eye"),
        aliases=("identity",),
    ),
    Scheme(
        "dirac",
        (Param("groups", "int", 1),),
        lambda t, g, a: torch.nn.init.dirac_(t, a["groups"]),
        _dirac_std,
        "√(p(1−p)), p = fraction of ones in the dirac pattern",
        "Dirac delta: convolution that preserves its input (3/4/5-D)",
        can_take=_dirac_can_take,
    ),
    Scheme(
        "xavier_uniform",
        (GAIN,),
        lambda t, g, a: torch.nn.init.xavier_uniform_(t, gain_value(a["gain"]), generator=g),
        _xavier_std,
        "gain·√(2/(fan_in+fan_out))",
        "Glorot & Bengio (2010), uniform",
        can_take=needs_2d_or_more("xavier_uniform"),
        uses_fans=True,
        kurtosis=1.8,
        aliases=("xavier", "glorot"),
    ),
    Scheme(
        "xavier_normal",
        (GAIN,),
        lambda t, g, a: torch.nn.init.xavier_normal_(t, gain_value(a["gain"]), generator=g),
        _xavier_std,
        "gain·√(2/(fan_in+fan_out))",
        "Glorot & Bengio (2010), normal",
        can_take=needs_2d_or_more("xavier_normal"),
        uses_fans=True,
        plain_normal=lambda s, a: (0.0, _xavier_std(s, a)),
    ),
    Scheme(
        "kaiming_uniform",
        _KAIMING,
        lambda t, g, a: _kaiming_fill(t, g, a, normal=False),
        _kaiming_std,
        "gain/√fan, gain = calculate_gain(nonlinearity, a)",
        "He et al. (2015), uniform",
        can_take=needs_2d_or_more("kaiming_uniform"),
        uses_fans=True,
        kurtosis=1.8,
    ),
    Scheme(
        "kaiming_normal",
        _KAIMING,
        lambda t, g, a: _kaiming_fill(t, g, a, normal=True),
        _kaiming_std,
        "gain/√fan, gain = calculate_gain(nonlinearity, a)",
        "He et al. (2015), normal",
        can_take=needs_2d_or_more("kaiming_normal"),
        uses_fans=True,
        aliases=("kaiming", "he"),
        plain_normal=lambda s, a: (0.0, _kaiming_std(s, a)),
    ),
    Scheme(
        "orthogonal",
        (GAIN,),
        _orthogonal_fill,
        _orthogonal_std,
        "gain/√max(rows, cols) (trailing dims flattened)",
        "Saxe et al. (2013): (semi-)orthogonal matrix via QR",
        can_take=needs_2d_or_more("orthogonal"),
    ),
    Scheme(
        "sparse",
        (
            Param("sparsity", "float", low=0.0, high=1.0),
            Param("std", "float", 0.01, low=0.0, in_tensor=True),
        ),
        _sparse_fill,
        _sparse_std,
        "std·√(1−⌈sparsity·rows⌉/rows)",
        "Martens (2010): N(0, std²) with a fraction `sparsity` of each column zeroed (2-D)",
        can_take=needs_exactly_2d("sparse"),
        kurtosis=3.0 / 0.05,  # heavy-tailed mixture of zeros and normals; a loose tolerance
    ),
)
