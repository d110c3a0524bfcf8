"""The same rules on tensors already in memory: state dicts, `nn.Module`s and in-memory
checkpoints (a recipe's intermediate steps), and the probe's model.

Nothing here computes a value: `run_in_memory` plans as `apply` does (`plan_for`) and runs the
same `Applier` stream, only assembling its pieces into tensors instead of writing them, so a
scheme that reads the tensor's own values or another tensor (`mean_resize`, `copy(...)`) gives
exactly what `reinit apply` writes for the same tensors and seed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reinit.io.readers import Checkpoint, StateDictCheckpoint
from reinit.io.trust import TrustSpec
from reinit.planning.model import ModelView
from reinit.planning.planner import Plan
from reinit.planning.session import RuleInput, as_rules, check_device, plan_for
from reinit.planning.transplant import SourcePool
from reinit.report.assemble import make_report
from reinit.report.entries import Report
from reinit.rules import Rule
from reinit.run.pieces import assemble
from reinit.run.stream import Applier

__all__ = [
    "InMemoryRun",
    "apply_to_checkpoint",
    "apply_to_module",
    "apply_to_state_dict",
    "module_config",
    "run_in_memory",
    "write_back",
]


@dataclass(frozen=True)
class InMemoryRun:
    """What `run_in_memory` gives: every tensor (CPU), the report, and the plan it followed
    (the probe reads its warnings)."""

    tensors: dict[str, torch.Tensor]
    report: Report
    plan: Plan


def run_in_memory(
    ckpt: Checkpoint,
    rules: Sequence[Rule],
    *,
    seed: int = 0,
    strict: bool = False,
    allow_unmatched: bool = False,
    device: str = "cpu",
    config: Mapping[str, Any] | None = None,
    unsafe_pickle: TrustSpec = (),
    progress: bool = False,
    view: ModelView | None = None,
) -> InMemoryRun:
    """The one in-memory apply: plan `rules` on `ckpt` (with `view`'s module types, fans and
    `default` when given) and run the streaming `Applier` over it, assembling the tensors.
    Kept tensors of a `StateDictCheckpoint` are its own objects, not copies."""
    started = time.perf_counter()
    device = check_device(device)
    with SourcePool(ckpt, unsafe_pickle=unsafe_pickle, progress=progress) as pool:
        the_plan, ties = plan_for(ckpt, tuple(rules), strict, allow_unmatched, pool, view, config)
        applier = Applier(ckpt, seed, device, pool, ties, view)
        own = ckpt.tensors if isinstance(ckpt, StateDictCheckpoint) else None
        by_name = {p.name: p for p in the_plan.entries}
        out, entries = assemble(applier.stream(the_plan.entries), by_name, ties, own)
    report = make_report(
        ckpt.source, None, seed, tuple(r.text for r in rules), entries, 0, started, the_plan
    )
    return InMemoryRun(out, report, the_plan)


def write_back(
    state: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], report: Report
) -> None:
    """Copy the tensors `report` says changed from `new` into `state`'s own tensors, in place
    (under `torch.no_grad`, so parameters keep `requires_grad` and stay the module's objects)."""
    with torch.no_grad():
        for e in report.tensors:
            if e.changes:
                state[e.name].copy_(new[e.name])


def apply_to_checkpoint(
    ckpt: Checkpoint,
    rules: Sequence[RuleInput] | Sequence[Rule],
    *,
    seed: int = 0,
    strict: bool = False,
    allow_unmatched: bool = False,
    device: str = "cpu",
    config: Mapping[str, Any] | None = None,
    unsafe_pickle: TrustSpec = (),
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], Report]:
    """Apply rules to any checkpoint and return every tensor in memory (CPU; kept tensors of a
    `StateDictCheckpoint` are its own objects, not copies) with the report. Nothing is written.
    `progress=True` shows the Hub's download bars of hf:// transplant sources."""
    run = run_in_memory(
        ckpt,
        as_rules(rules),
        seed=seed,
        strict=strict,
        allow_unmatched=allow_unmatched,
        device=device,
        config=config,
        unsafe_pickle=unsafe_pickle,
        progress=progress,
    )
    return run.tensors, run.report


def apply_to_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    rules: Sequence[RuleInput],
    seed: int = 0,
    *,
    strict: bool = False,
    allow_unmatched: bool = False,
    device: str = "cpu",
    config: Mapping[str, Any] | None = None,
    source: str = "<state_dict>",
) -> tuple[dict[str, torch.Tensor], Report]:
    """Apply rules to a state dict in memory: returns a new dict (changed tensors are new
    tensors on their original device with their original dtype; the others are the input's own
    objects) and the report. The input is not modified.

    `config` is the model config some schemes read (scaled_normal's layers, small_init's dim).

    >>> import torch, reinit
    >>> state = {"fc.weight": torch.zeros(64, 32), "fc.bias": torch.zeros(64)}
    >>> new, report = reinit.apply_to_state_dict(state, ["fc.weight=lecun_normal"], seed=0)
    >>> report.entry("fc.weight").action, round(report.entry("fc.weight").expected_std, 4)
    ('reinit', 0.1768)
    >>> new["fc.bias"] is state["fc.bias"], bool(state["fc.weight"].any())
    (True, False)
    """
    ckpt = StateDictCheckpoint(state_dict, source=source, config=config)
    new, report = apply_to_checkpoint(
        ckpt, rules, seed=seed, strict=strict, allow_unmatched=allow_unmatched, device=device
    )
    for e in report.tensors:
        if e.changes:
            orig = state_dict[e.name]
            new[e.name] = new[e.name].to(orig.device)
    return new, report


def module_config(module: torch.nn.Module) -> dict[str, Any] | None:
    """A transformers model's config as a dict (its `config.to_dict()`), else None."""
    cfg = getattr(module, "config", None)
    if cfg is None:
        return None
    if isinstance(cfg, Mapping):
        return dict(cfg)
    to_dict = getattr(cfg, "to_dict", None)
    return to_dict() if callable(to_dict) else None


def apply_to_module(
    module: torch.nn.Module,
    rules: Sequence[RuleInput],
    seed: int = 0,
    *,
    strict: bool = False,
    allow_unmatched: bool = False,
    device: str = "cpu",
    config: Mapping[str, Any] | None = None,
) -> Report:
    """Apply rules to a module's parameters and buffers in place (under `torch.no_grad`), by
    their `state_dict()` names. Values equal those `reinit apply` gives on the module's saved
    state dict with the same seed. `config` defaults to the module's own `config` (transformers
    models). Tied parameters (one storage under several names) stay tied and consistent, as
    in `reinit.ties`: rules that would give their names different values are an error.

    >>> import torch, reinit
    >>> layer = torch.nn.Linear(4, 3)
    >>> report = reinit.apply_to_module(layer, ["bias=bias_prior(0.25)", "weight=zeros"])
    >>> [round(b, 4) for b in layer.bias.tolist()], bool(layer.weight.any())
    ([-1.0986, -1.0986, -1.0986], False)
    >>> layer.weight.requires_grad, report.summary.reinit
    (True, 2)
    """
    state = module.state_dict()
    if config is None:
        config = module_config(module)
    new, report = apply_to_state_dict(
        state,
        rules,
        seed,
        strict=strict,
        allow_unmatched=allow_unmatched,
        device=device,
        config=config,
        source=f"<{type(module).__name__}>",
    )
    write_back(state, new, report)
    return report
