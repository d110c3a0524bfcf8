"""The flags and what they compare: per-tensor (nonfinite, garbage, constant, std_off;
off_reference against the model's own scale is in `reference`) and cross-layer (outlier by
kind and shape, unstable_depth by geometric-mean var_gain)."""

from __future__ import annotations

__all__ = [
    "FLAGS",
    "SELF_FLAGS",
    "ZERO_INIT_NAMES",
    "DepthCheck",
    "depth_checks",
    "depth_key",
    "geometric_mean",
    "is_norm",
    "kind_of",
    "layer_index",
    "layer_key",
    "layer_prefix",
    "outliers",
    "std_off",
    "std_tolerance",
    "takes_part",
    "tensor_flags",
]

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reinit.report.entries import TensorEntry

GARBAGE_ABS = 1e10


STD_OFF_REL = 0.10


STD_OFF_SIGMAS = 5.0


OUTLIER_FACTOR = 5.0


OUTLIER_MIN_KIND = 3


UNSTABLE_MIN_LAYERS = 8


UNSTABLE_GAIN = 4.0


FLAGS = (
    "nonfinite",
    "garbage",
    "constant",
    "std_off",
    "off_reference",
    "untrained",
    "outlier",
    "unstable_depth",
)


#: Parameters that architectures initialize to zero on purpose (LoRA's B matrices, ControlNet's
#: zero convolutions, DiT's adaLN-Zero modulation): all-zero, they are not `constant`.
ZERO_INIT_NAMES = ("lora_B", "lora_embedding_B", "zero_conv", "adaLN_modulation")


#: Flags a tensor earns on its own. A tensor that has one of these is not also compared with
#: its siblings (`outlier`, `unstable_depth`): the first flag already names the problem, and
#: its absurd std must not move the median or the geometric mean the siblings are judged by.
SELF_FLAGS = ("nonfinite", "garbage", "constant")


def tensor_flags(e: TensorEntry) -> tuple[str, ...]:
    """The flags one tensor earns on its own (the cross-layer ones come from `finalize`)."""
    flags: list[str] = []
    s = e.after
    if not e.is_float:
        return ()
    if s.nonfinite:
        flags.append("nonfinite")
    if s.min is not None and max(abs(s.min), abs(s.max or 0.0)) > GARBAGE_ABS:
        flags.append("garbage")
    meant_constant = (e.action == "reinit" and e.expected_std == 0.0) or (
        s.max == 0.0 and s.min == 0.0 and any(z in e.name for z in ZERO_INIT_NAMES)
    )
    if len(e.shape) >= 2 and s.count > 1 and s.std == 0.0 and not meant_constant:
        flags.append("constant")
    if std_off(e):
        flags.append("std_off")
    return tuple(flags)


def std_tolerance(n: int, kurtosis: float = 3.0) -> float:
    """The relative deviation of a sample std that std_off forgives for a tensor of `n` values:
    10%, or 5 standard errors of the sample std when that is more. SE(s)/σ ≈ √((κ−1)/(4n)) for
    a distribution of kurtosis κ (κ = 3 normal, 1.8 uniform), so a 16-value head may be off by
    ~88% and a 1M-value matrix only by 10%."""
    se = math.sqrt(max(kurtosis - 1.0, 0.0) / (4.0 * max(n, 1)))
    return max(STD_OFF_REL, STD_OFF_SIGMAS * se)


def std_off(e: TensorEntry) -> bool:
    """A re-initialized tensor whose std is off its expected value by more than
    `std_tolerance` (10%, and more than sampling error allows)."""
    if e.action != "reinit" or e.expected_std is None or e.after.std is None:
        return False
    exp, got = e.expected_std, e.after.std
    if exp == 0.0:
        return got > 0.0
    return abs(got - exp) / exp > std_tolerance(e.after.count, e.kurtosis)


_NUM = re.compile(r"(?<![^.])\d+(?![^.])")


_NORM = re.compile(r"norm|(?:^|[._])ln(?:_?\d+|_?f)?(?:[._]|$)", re.IGNORECASE)


def kind_of(name: str) -> str:
    """The tensor's kind: its name with dotted numeric parts replaced by `*`
    (`layers.3.mlp.weight` -> `layers.*.mlp.weight`; `fc1.weight` stays itself)."""
    return _NUM.sub("*", name)


def layer_index(name: str) -> int | None:
    """The first dotted number in the name: its depth in a stack of layers."""
    m = _NUM.search(name)
    return int(m.group(0)) if m else None


def layer_key(name: str) -> tuple[int, ...]:
    """Every dotted number of the name, outermost first: the column of a tensor within its
    kind (`layers.3` -> (3,); `layers.3.experts.7` -> (3, 7))."""
    return tuple(int(m.group(0)) for m in _NUM.finditer(name))


def depth_key(name: str) -> tuple[int, ...]:
    """The dotted numbers that say how deep the tensor sits: `layer_key` without the index
    of a mixture-of-experts expert (`layers.3.experts.7` -> (3,)): experts sit side by side."""
    return tuple(
        int(m.group(0))
        for m in _NUM.finditer(name)
        if not name[: m.start()].rstrip(".").endswith("experts")
    )


def layer_prefix(name: str) -> str | None:
    """The name up to and including its first dotted number (`model.layers.3`): the block."""
    m = _NUM.search(name)
    return name[: m.end()] if m else None


def is_norm(name: str) -> bool:
    """LayerNorm/RMSNorm/BatchNorm parameters by their usual names (`LayerNorm`,
    `input_layernorm`, `norm1`, GPT-2's `ln_1`/`ln_f`)."""
    return _NORM.search(name) is not None


def takes_part(e: TensorEntry) -> bool:
    """May this tensor be judged against its siblings? ≥2-D float weights with a finite,
    positive std and none of the self-explaining flags. 1-D tensors (biases, norm gains) are
    left out: their std measures spread around a learned value, not a scale."""
    return (
        e.is_float
        and len(e.shape) >= 2
        and e.after.std is not None
        and e.after.std > 0.0
        and not (set(tensor_flags(e)) & set(SELF_FLAGS))
    )


def geometric_mean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


@dataclass(frozen=True)
class DepthCheck:
    """The `unstable_depth` verdict for one kind."""

    kind: str
    layers: int
    gmean_var_gain: float
    normalized: bool  # every block that holds a member also holds a norm parameter
    unstable: bool


def depth_checks(entries: Sequence[TensorEntry]) -> tuple[DepthCheck, ...]:
    """For each kind of ≥ `UNSTABLE_MIN_LAYERS` comparable tensors at distinct depths: the
    geometric-mean var_gain and whether it signals explosion (> 4) or vanishing (< 1/4).

    Vanishing is not flagged in a normalized stack (a norm parameter in every block that holds
    a member): there a LayerNorm/RMSNorm rescales the signal at every block and the residual
    stream carries it past a small branch, so HF's default N(0, 0.02) in a 64-wide Llama
    (var_gain 0.026) is intended, not a bug. Explosion is flagged regardless: N(0, 1) weights
    saturate attention and swamp the residual stream even behind norms."""
    normed = {layer_prefix(e.name) for e in entries if is_norm(e.name)}
    normed.discard(None)
    by_kind: dict[str, list[TensorEntry]] = defaultdict(list)
    for e in entries:
        if takes_part(e) and e.var_gain and layer_index(e.name) is not None:
            by_kind[kind_of(e.name)].append(e)
    out = []
    for kind, members in by_kind.items():
        depths = {depth_key(e.name) for e in members}
        if len(depths) < UNSTABLE_MIN_LAYERS:
            continue
        g = geometric_mean(e.var_gain or 0.0 for e in members)
        if g is None:
            continue
        normalized = all(layer_prefix(e.name) in normed for e in members)
        unstable = g > UNSTABLE_GAIN or (g < 1.0 / UNSTABLE_GAIN and not normalized)
        out.append(DepthCheck(kind, len(depths), g, normalized, unstable))
    return tuple(out)


def outliers(entries: Sequence[TensorEntry]) -> set[str]:
    """Names whose std is more than 5× away from the median std of their siblings: the
    comparable tensors of the same kind *and shape* (a kind can mix shapes — nn.Sequential's
    `net.*.weight`, a first layer wider than the rest — whose stds differ by design), counted
    only where there are at least `OUTLIER_MIN_KIND` of them."""
    groups: dict[tuple[str, tuple[int, ...]], list[TensorEntry]] = defaultdict(list)
    for e in entries:
        if takes_part(e) and layer_index(e.name) is not None:
            groups[(kind_of(e.name), e.shape)].append(e)
    out: set[str] = set()
    for members in groups.values():
        if len(members) < OUTLIER_MIN_KIND:
            continue
        med = statistics.median(e.after.std or 0.0 for e in members)
        for e in members:
            std = e.after.std or 0.0
            if std > OUTLIER_FACTOR * med or std < med / OUTLIER_FACTOR:
                out.add(e.name)
    return out
