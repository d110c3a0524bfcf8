"""What `verify --forward --against` measures between two models' outputs on the same inputs:
for logits, the KL over positions (mean, median, p99, max: llama.cpp's perplexity KL statistics,
llama.cpp#5076) and top-1 agreement; for hidden states, per layer, the cosine similarity and the
relative error, and the first layer whose relative error exceeds `DIVERGENCE` (where a
conversion went wrong).

Why: one mean KL said "something moved" but not where; a KL over a softmax of hidden features
means nothing; and a new-head classifier could not be compared with its encoder at all, though
their shared trunk must agree exactly."""

from __future__ import annotations

__all__ = [
    "DIVERGENCE",
    "LayerDiff",
    "LogitStats",
    "first_divergent",
    "hidden_diff",
    "layer_diffs",
    "logit_stats",
]

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: A layer diverges when ‖a − b‖ / ‖b‖ over its hidden states exceeds this (float32 rounding
#: of the same computation stays below 1e-5; a bf16 round trip is ~4e-3).
DIVERGENCE = 1e-2


@dataclass(frozen=True)
class LogitStats:
    """KL(P_against ‖ P_output) in nats over positions (from the narrower side when the class
    counts differ), and how often the top token agrees."""

    kl_mean: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1: float
    positions: int
    classes: int


@dataclass(frozen=True)
class LayerDiff:
    """One layer's hidden states compared: `layer` is `embeddings` or the block's index (as in
    the tensor names: hidden state i+1 is block i's output)."""

    layer: str
    cosine: float
    rel_error: float

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "cosine": self.cosine, "rel_error": self.rel_error}


def per_position_kl(ref: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """KL per position over the first n = min(classes) classes, the narrower distribution
    counting as zero on the extra ones (see `forward.output_distance`)."""
    narrow, wide = (ref, out) if ref.shape[-1] <= out.shape[-1] else (out, ref)
    logp = torch.log_softmax(narrow, dim=-1)
    logq = torch.log_softmax(wide, dim=-1)[..., : narrow.shape[-1]]
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1).reshape(-1).clamp_min(0.0)  # rounding gives -1e-17 for equal inputs


def logit_stats(ref: torch.Tensor, out: torch.Tensor) -> LogitStats:
    """The KL statistics and top-1 agreement of two logit tensors of the same positions. Top-1
    is each model's argmax over all its own classes (the first n are the same ones): a class
    only the wider head has that wins a position is a disagreement there."""
    kl = per_position_kl(ref, out)
    n = min(ref.shape[-1], out.shape[-1])
    top_ref = ref.argmax(-1).reshape(-1)
    top_out = out.argmax(-1).reshape(-1)
    q = torch.quantile(kl, torch.tensor([0.5, 0.99], dtype=kl.dtype))
    return LogitStats(
        kl_mean=float(kl.mean()),
        kl_median=float(q[0]),
        kl_p99=float(q[1]),
        kl_max=float(kl.max()),
        top1=float((top_ref == top_out).to(torch.float64).mean()),
        positions=kl.numel(),
        classes=n,
    )


def hidden_diff(layer: str, ref: torch.Tensor, out: torch.Tensor) -> LayerDiff:
    """Cosine similarity of the flattened states and ‖out − ref‖ / ‖ref‖."""
    a, b = out.reshape(-1).to(torch.float64), ref.reshape(-1).to(torch.float64)
    norm_a, norm_b = float(a.norm()), float(b.norm())
    cosine = float(a @ b) / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else float(a.equal(b))
    rel = float((a - b).norm()) / norm_b if norm_b > 0 else (0.0 if norm_a == 0 else math.inf)
    return LayerDiff(layer, cosine, rel)


def layer_diffs(
    ref: Sequence[torch.Tensor], out: Sequence[torch.Tensor], names: Sequence[str] = ()
) -> tuple[LayerDiff, ...]:
    """Each layer's hidden states compared (transformers' `hidden_states`: the embeddings'
    output, then each block's; `names` where they are not these, as a final norm's);
    empty when the two models' states do not pair up."""
    if (
        not ref
        or len(ref) != len(out)
        or any(a.shape != b.shape for a, b in zip(ref, out, strict=True))
    ):
        return ()
    if len(names) != len(ref):
        names = ["embeddings", *(str(i) for i in range(len(ref) - 1))]
    return tuple(hidden_diff(n, r, o) for n, r, o in zip(names, ref, out, strict=True))


def first_divergent(diffs: Sequence[LayerDiff], threshold: float = DIVERGENCE) -> str | None:
    """The first layer whose relative error exceeds `threshold`, or None."""
    return next((d.layer for d in diffs if not d.rel_error <= threshold), None)
