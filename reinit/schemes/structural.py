"""Schemes that set structure rather than draw a distribution (docs/guide/rules-and-schemes.md, "later
schemes"): the focal-loss bias prior (`bias_prior`), delta-orthogonal conv kernels
(`delta_orthogonal`), and `copy` from another tensor of the same checkpoint.

Every random draw comes from the tensor's own generator (the reproducibility contract of
docs/guide/rules-and-schemes.md); schemes that read other values declare it as data (`needs_before`, `reads`,
`from_config`) and the engine provides a `FillContext`."""

from __future__ import annotations

import math

import torch

from reinit.errors import SchemeError
from reinit.schemes.base import Args, FillContext, Param, Scheme, Shape, context_only
from reinit.schemes.gain import gain_value
from reinit.schemes.shapes import GAIN
from reinit.schemes.templates import fill_template

__all__ = ["STRUCTURAL_SCHEMES", "bias_prior_value"]


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
    torch.nn.init.orthogonal_(centre, gain_value(args["gain"]), generator=g)
    t.zero_()
    index: tuple[slice | int, ...] = (slice(None), slice(None))
    t[index + tuple(k // 2 for k in t.shape[2:])] = centre


def _delta_std(shape: Shape, args: Args) -> float:
    out_ch, in_ch = shape[:2]
    return gain_value(args["gain"]) / math.sqrt(max(out_ch, in_ch) * math.prod(shape[2:]))


def _delta_can_take(shape: Shape, args: Args) -> str | None:
    if len(shape) not in (3, 4, 5):
        return f"delta_orthogonal needs a 3-, 4- or 5-D conv kernel; this one is {len(shape)}-D"
    return None


def _copy_reads(name: str, captures: tuple[str, ...], args: Args) -> str:
    return fill_template(args["source"], name, captures, "template ", SchemeError)


def _copy_fill(t: torch.Tensor, g: torch.Generator, args: Args, ctx: FillContext) -> None:
    if ctx.other is None:
        raise SchemeError(f"copy({args['source']}) needs the source tensor")
    t.copy_(ctx.other.reshape(t.shape).to(t.dtype))


def _normal_like_fill(t: torch.Tensor, g: torch.Generator, args: Args, ctx: FillContext) -> None:
    if ctx.before is None:
        raise SchemeError("normal_like needs the tensor's current values")
    before = ctx.before.to(torch.float64)
    t.normal_(float(before.mean()), float(before.std()), generator=g)


STRUCTURAL_SCHEMES: tuple[Scheme, ...] = (
    Scheme(
        "bias_prior",
        (Param("p", "float", 0.01, help="prior probability of the positive class"),),
        lambda t, g, a: torch.nn.init.constant_(t, bias_prior_value(a["p"])),
        lambda s, a: 0.0,
        "0 (every value = −log((1−p)/p))",
        "focal-loss bias prior (Lin et al. 2017): sigmoid(bias) = p at init",
        validate=_bias_prior_validate,
    ),
    Scheme(
        "delta_orthogonal",
        (GAIN,),
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
    Scheme(
        "normal_like",
        (),
        context_only,
        lambda s, a: None,
        "the tensor's own std (before this run)",
        "N(mean, std²) with the tensor's own mean and std as read (before this run's "
        "changes): drop-upcycling's re-init (Nakamura et al. 2025), usually with rows=/cols=",
        fill_ctx=_normal_like_fill,
        needs_before=True,
    ),
)
