"""Transformer-era schemes (docs/guide/rules-and-schemes.md, "later schemes"): GPT-2's scaled residual init
(`scaled_normal`), Nguyen & Salazar's `small_init`, and transformers' mean-resizing of new
embedding rows (`mean_resize`). The first two read their size from the model config when not
given.

Every random draw comes from the tensor's own generator (the reproducibility contract of
docs/guide/rules-and-schemes.md); schemes that read other values declare it as data (`needs_before`, `reads`,
`from_config`) and the engine provides a `FillContext`."""

from __future__ import annotations

import math

import torch

from reinit.errors import SchemeError
from reinit.schemes.base import Args, FillContext, Param, Scheme, Shape, context_only
from reinit.schemes.shapes import positive

__all__ = ["DIM_KEYS", "LAYER_KEYS", "MEAN_RESIZE_EPS", "TRANSFORMER_SCHEMES", "mean_resize_rows"]

MEAN_RESIZE_EPS = 1e-9  # HF's covariance scale for new embedding rows


# --- GPT-2 scaled residual init and small init -------------------------------------------

LAYER_KEYS = ("n_layer", "num_hidden_layers", "num_layers", "n_layers")
DIM_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


def _scaled_std(shape: Shape, args: Args) -> float:
    layers = args["layers"]
    if layers is None:
        raise ValueError("layers unknown")
    return args["std"] / math.sqrt(2.0 * layers)


def _scaled_fill(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    torch.nn.init.normal_(t, 0.0, _scaled_std(tuple(t.shape), args), generator=g)


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
    torch.nn.init.normal_(t, 0.0, _small_std(tuple(t.shape), args), generator=g)


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


def mean_resize_values(old: torch.Tensor, new_rows: int, g: torch.Generator) -> torch.Tensor:
    """`mean_resize_rows` for a 2-D `old`; for a 1-D one (an LM head's bias, as transformers
    resizes it) N(mean, (1e-9·std)²) of its values."""
    if old.dim() == 2:
        return mean_resize_rows(old, new_rows, g)
    std = old.std() if old.numel() > 1 else torch.zeros((), dtype=old.dtype, device=old.device)
    z = torch.randn((new_rows,), generator=g, dtype=old.dtype, device=old.device)
    return old.mean() + MEAN_RESIZE_EPS * std * z


def _mean_resize_fill(t: torch.Tensor, g: torch.Generator, args: Args, ctx: FillContext) -> None:
    if ctx.before is None:
        raise SchemeError("mean_resize needs the tensor's current values")
    n = args["old_rows"]
    old = ctx.before[:n].to(t.dtype)
    t[:n] = old
    t[n:] = mean_resize_values(old, t.shape[0] - n, g)


def _mean_resize_can_take(shape: Shape, args: Args) -> str | None:
    if len(shape) not in (1, 2):
        return (
            "mean_resize needs a 2-D tensor (rows × dim) or a 1-D one (a bias); this one is "
            f"{len(shape)}-D"
        )
    if args["old_rows"] >= shape[0]:
        return (
            f"mean_resize(old_rows={args['old_rows']}) needs more than {args['old_rows']} rows; "
            f"this tensor has {shape[0]}"
        )
    return None


TRANSFORMER_SCHEMES: tuple[Scheme, ...] = (
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
        validate=positive("std", "layers"),
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
        validate=positive("dim"),
    ),
    Scheme(
        "mean_resize",
        (Param("old_rows", "int", help="rows to keep; the rest are new"),),
        context_only,
        lambda s, a: None,
        "none (kept rows unchanged; new rows ≈ the old rows' mean, spread √1e-9·σ)",
        "transformers ≥ 4.46 resize: keep the first old_rows rows, draw the rest from "
        "MVN(μ, 1e-9·Σ) of them (μ itself when that is not positive definite); a 1-D tensor: "
        "N(mean, (1e-9·std)²) of its first old_rows",
        can_take=_mean_resize_can_take,
        fill_ctx=_mean_resize_fill,
        needs_before=True,
        validate=positive("old_rows"),
    ),
)
