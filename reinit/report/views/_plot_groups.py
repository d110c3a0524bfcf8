"""What the plot draws, as data: the report's tensors sorted into panels (attention, MLP,
embeddings and heads, norms and biases, ...), each panel's kinds with one point per tensor.

Kept apart from the drawing so that "every tensor is shown" can be checked without pixels,
and so that the grouping (which reads names only) can change without touching matplotlib."""

from __future__ import annotations

__all__ = [
    "BATCHNORM_STATS",
    "PANEL_ORDER",
    "PlotKind",
    "PlotPanel",
    "PlotPoint",
    "group_of",
    "plot_panels",
]

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from reinit.report.entries import TensorEntry
from reinit.report.flags import is_norm, kind_of, layer_index
from reinit.report.views._layers import is_changed

PANEL_ORDER = (
    "attention",
    "MLP",
    "convolutions",
    "other per-layer weights",
    "embeddings and heads",
    "norms",
    "biases",
    "norms and biases",
)

#: BatchNorm's buffers (`bn1.running_var`): statistics of a norm, not biases.
BATCHNORM_STATS = ("running_mean", "running_var", "num_batches_tracked")

PER_KIND_MAX = 4  # at most this many kinds: one panel per kind instead of per group
NORMS_BIASES_SPLIT = 7  # more kinds than this in "norms and biases": two panels

_ATTN = re.compile(r"attn|attention|query|key|value|[qkvo]_proj|\bqkv|c_attn", re.IGNORECASE)
_MLP = re.compile(
    r"mlp|ffn|feed_?forward|intermediate|fc\d*|gate|up_proj|down_proj|\bw[123]\b|output\.dense|c_proj",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PlotPoint:
    """One tensor: where it sits (layer index, or None for a layer-less tensor drawn in its
    own column) and its std before/after, expected and reference."""

    name: str
    layer: int | None
    after: float | None  # None: no finite value (NaN-only, or not a float tensor)
    before: float | None
    expected: float | None
    reference: float | None
    flags: tuple[str, ...]
    changed: bool


@dataclass(frozen=True)
class PlotKind:
    """The tensors of one kind (`layers.*.mlp.up_proj.weight`), in layer order."""

    kind: str
    label: str  # the kind with the panel's shared prefix removed
    points: tuple[PlotPoint, ...]

    @property
    def layered(self) -> bool:
        return any(p.layer is not None for p in self.points)


@dataclass(frozen=True)
class PlotPanel:
    title: str
    prefix: str  # dropped from every label of the panel, named once in the title
    kinds: tuple[PlotKind, ...]

    @property
    def points(self) -> tuple[PlotPoint, ...]:
        return tuple(p for k in self.kinds for p in k.points)


def group_of(e: TensorEntry) -> str:
    """The panel a tensor belongs to, by its name and rank."""
    name = e.name
    if is_norm(name) or name.endswith(BATCHNORM_STATS):
        return "norms"
    if len(e.shape) <= 1:
        return "biases"
    if len(e.shape) >= 3:  # a CNN's `conv1`, `conv2`, … have no layer index, and are no head
        return "convolutions"
    if layer_index(name) is None:
        return "embeddings and heads"
    if _ATTN.search(name):
        return "attention"
    if _MLP.search(name):
        return "MLP"
    return "other per-layer weights"


def _point(e: TensorEntry, has_before: bool) -> PlotPoint:
    after = e.after.std if e.is_float else None
    if e.before is not None:
        before = e.before.std
    elif has_before and not is_changed(e):
        before = after  # an unchanged tensor's before is its after
    else:
        before = None
    reference = getattr(e, "reference_std", None)
    return PlotPoint(
        name=e.name,
        layer=layer_index(e.name),
        after=after,
        before=before,
        expected=e.expected_std,
        reference=reference if isinstance(reference, float) else None,
        flags=e.flags,
        changed=is_changed(e),
    )


def shared_prefix(kinds: Sequence[str]) -> str:
    """The dotted prefix every per-layer kind shares (`model.layers.*.`), never a whole kind;
    layer-less names (their own columns) keep their full names and take no part."""
    kinds = [k for k in kinds if "*" in k]
    if len(kinds) < 2:
        parts = kinds[0].split(".") if kinds else []
        # one kind: drop its block path but keep its last two parts
        return ".".join(parts[:-2]) + "." if len(parts) > 2 else ""
    split = [k.split(".") for k in kinds]
    common: list[str] = []
    for column in zip(*split, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    common = common[: min(len(s) for s in split) - 1]
    return ".".join(common) + "." if common and common != ["*"] else ""


def plot_panels(tensors: Sequence[TensorEntry]) -> list[PlotPanel]:
    """Every tensor of the report, in panels: per group of kinds, or one per kind when the
    report has at most `PER_KIND_MAX` kinds."""
    has_before = any(e.before is not None for e in tensors)
    by_kind: dict[tuple[str, str], list[TensorEntry]] = defaultdict(list)
    for e in tensors:  # a kind never spans two groups (`*.weight` of a conv net: conv and BN)
        by_kind[(group_of(e), kind_of(e.name))].append(e)
    groups: dict[str, list[str]] = defaultdict(list)
    if len(by_kind) <= PER_KIND_MAX:
        for _, k in by_kind:
            groups[k].append(k)
        order = [k for _, k in by_kind]
        by_kind = {(k, k): v for (_, k), v in by_kind.items()}
    else:
        for g, k in by_kind:
            groups[g].append(k)
        if len(groups.get("norms", [])) + len(groups.get("biases", [])) <= NORMS_BIASES_SPLIT:
            merged = groups.pop("norms", []) + groups.pop("biases", [])
            for k in merged:
                for g in ("norms", "biases"):
                    if (g, k) in by_kind:
                        by_kind[("norms and biases", k)] = by_kind.pop((g, k))
            if merged:
                groups["norms and biases"] = merged
        order = [g for g in PANEL_ORDER if g in groups]
    panels = []
    for title in order:
        kinds = groups[title]
        prefix = shared_prefix(kinds)
        panels.append(
            PlotPanel(
                title=title,
                prefix=prefix,
                kinds=tuple(
                    PlotKind(
                        kind=k,
                        label=k[len(prefix) :] if "*" in k and k.startswith(prefix) else k,
                        points=tuple(
                            _point(e, has_before)
                            for e in sorted(
                                by_kind[(title, k)], key=lambda e: layer_index(e.name) or -1
                            )
                        ),
                    )
                    for k in kinds
                ),
            )
        )
    return panels
