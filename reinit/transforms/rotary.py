"""The rotary (RoPE) row permutation between Meta's layout (rotation pairs interleaved:
rows 2i, 2i+1 of each head) and Hugging Face's (rotate-half: rows i, i + head_dim/2), for
`q_proj`/`k_proj` weights and biases. `meta_to_hf` is transformers'
`convert_llama_weights_to_hf.permute`:

    w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)

and `hf_to_meta` its inverse. `heads` is the number of heads of THIS tensor: n_heads for q,
n_kv_heads for k under grouped-query attention. Trailing dims (the input features of a
weight; none for a bias) are carried along."""

from __future__ import annotations

import torch

from reinit.errors import TransplantError

__all__ = ["DIRECTIONS", "check_rotary", "hf_to_meta", "meta_to_hf", "permute_rotary"]

DIRECTIONS = ("hf_to_meta", "meta_to_hf")


def check_rotary(shape: tuple[int, ...], heads: int) -> None:
    """Refuse a shape the permutation cannot take: its rows must be heads × an even head_dim."""
    if not shape:
        raise TransplantError("rotary= needs a tensor with rows (this one is 0-D)")
    if shape[0] % (2 * heads):
        raise TransplantError(
            f"rotary= with heads={heads}: {shape[0]} rows are not {heads} heads of an even "
            "head_dim; heads= is this tensor's own head count (n_kv_heads for k_proj under GQA)"
        )


def meta_to_hf(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta (interleaved pairs) -> HF (rotate-half) rows."""
    check_rotary(tuple(w.shape), heads)
    rows, rest = w.shape[0], tuple(w.shape[1:])
    return (
        w.reshape(heads, rows // heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape).contiguous()
    )


def hf_to_meta(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF (rotate-half) -> Meta (interleaved pairs) rows: `meta_to_hf`'s inverse."""
    check_rotary(tuple(w.shape), heads)
    rows, rest = w.shape[0], tuple(w.shape[1:])
    return (
        w.reshape(heads, 2, rows // heads // 2, *rest).transpose(1, 2).reshape(w.shape).contiguous()
    )


def permute_rotary(w: torch.Tensor, direction: str, heads: int) -> torch.Tensor:
    """`direction` is one of `DIRECTIONS`."""
    return hf_to_meta(w, heads) if direction == "hf_to_meta" else meta_to_hf(w, heads)
