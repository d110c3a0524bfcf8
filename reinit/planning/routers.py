"""What routes a mixture-of-experts layer's tokens to its experts, found by name (torch-free:
`run.config_update` reads it while a report is made without torch).

A router tensor is named after its layer's block (the part before `experts.N.`) and has one
entry per expert along one axis: the router's weight (`gate.weight` [E, H], a row per expert;
Hunyuan's `gate.wg.weight`, GPT-OSS' `router.weight`) and the per-expert bias a sigmoid router
keeps beside it (DeepSeek-V3's `gate.e_score_correction_bias` [E], ERNIE 4.5's
`moe_statics.e_score_correction_bias` [1, E]: its last axis). Row i routes to expert i, so
dropping expert k must drop entry k, which a `--resize` (it keeps the first entries) does only
for the last experts."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["dropped_experts", "expert_axis", "router_block"]

_ROUTER = re.compile(
    r"(?:gate|router|moe_statics)\.(?:.*\.)?(?:weight|bias|e_score_correction_bias)"
)
_START = re.compile(r"(?:^|\.)(?=(?:gate|router|moe_statics)\.)")
_EXPERT_OF = re.compile(r"experts\.(\d+)\.")


def _is_router(rest: str, ndim: int) -> bool:
    """Whether `rest`, a name after its MoE block (`gate.weight`), is a router tensor."""
    return 1 <= ndim <= 2 and _ROUTER.fullmatch(rest) is not None


def expert_axis(rest: str, ndim: int) -> int:
    """The axis of a router tensor with one entry per expert: a weight's rows, a bias's last."""
    return 0 if rest.endswith("weight") else ndim - 1


def router_block(name: str, ndim: int) -> str | None:
    """The MoE block a router tensor belongs to (`model.layers.0.mlp.` for
    `model.layers.0.mlp.gate.weight`), or None if `name` is no router tensor."""
    m = _START.search(name)
    if m is None or not _is_router(name[m.end() :], ndim):
        return None
    return name[: m.end()]


def dropped_experts(dropped: Iterable[str], block: str) -> set[int]:
    """The expert indices among `dropped` names in `block` (`block + "experts.N."`)."""
    out: set[int] = set()
    for d in dropped:
        m = _EXPERT_OF.match(d, len(block)) if d.startswith(block) else None
        if m is not None:
            out.add(int(m.group(1)))
    return out
