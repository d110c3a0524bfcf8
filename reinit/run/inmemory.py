"""The same rules on tensors already in memory: state dicts, `nn.Module`s and in-memory
checkpoints (a recipe's intermediate steps), and the probe's model.

Nothing here computes a value: these run `apply`'s first stage (`run.prepare`: `prepare`, or
`plan_on` for a checkpoint already edited) and the same `Applier` stream (`run_prepared`), only
assembling its pieces into tensors instead of writing them, so a
scheme that reads the tensor's own values or another tensor (`mean_resize`, `copy(...)`) gives
exactly what `reinit apply` writes for the same tensors and seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from reinit.errors import UsageError
from reinit.io.checkpoint import Checkpoint
from reinit.io.memory import StateDictCheckpoint, check_state_dict, overlaps_itself
from reinit.io.trust import TrustSpec
from reinit.options import (
    IN_MEMORY_FIELDS,
    SURGERY_FIELDS,
    ApplyOptions,
    OptionKwargs,
    OptionKwargsBesidesSeed,
    with_kwargs,
)
from reinit.planning.edited import EditedCheckpoint
from reinit.planning.model import ModelView
from reinit.planning.planner import Plan
from reinit.planning.session import RuleInput
from reinit.planning.surgery import Edited
from reinit.report.entries import Report
from reinit.report.reference import REFERENCE_TOLERANCE
from reinit.rules import Rule
from reinit.run.pieces import assemble
from reinit.run.prepare import Job, Prepared, plan_on, prepare
from reinit.text import shown

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "InMemoryRun",
    "apply_to_checkpoint",
    "apply_to_module",
    "apply_to_state_dict",
    "module_config",
    "run_in_memory",
    "run_prepared",
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
    reference_tolerance: float = REFERENCE_TOLERANCE,
    edited: Edited | None = None,
) -> InMemoryRun:
    """The one in-memory apply: plan `rules` on `ckpt` (with `view`'s module types, fans and
    `default` when given) and run the streaming `Applier` over it, assembling the tensors.
    Kept tensors of a `StateDictCheckpoint` are its own objects, not copies. The report's
    reference scale comes from `config` (else the checkpoint's) and `view`, as in `apply`.
    `edited`: the surgery `ckpt` (an `EditedCheckpoint`) went through, marked on the plan."""
    o = ApplyOptions(
        seed=seed,
        strict=strict,
        allow_unmatched=allow_unmatched,
        device=device,
        config=config,
        unsafe_pickle=unsafe_pickle,
        progress=progress,
        reference_tolerance=reference_tolerance,
    )
    job = Job.of(ckpt, rules, o, require_rules=False)
    with ExitStack() as stack:
        return run_prepared(plan_on(stack, job, ckpt, o, view, edited))


def run_prepared(prepared: Prepared) -> InMemoryRun:
    """The in-memory writer: the prepared run's stream assembled into tensors (no files)."""
    own = _own_tensors(prepared.ckpt)
    stream = prepared.applier().stream(prepared.plan.entries)
    out, entries = assemble(stream, prepared.by_name, prepared.ties, own)
    return InMemoryRun(out, prepared.report(entries), prepared.plan)


def _own_tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor] | None:
    """The tensor objects an in-memory source holds, by output name (after surgery: renamed
    ones under their new names; added and resized ones are new, so not here)."""
    if isinstance(ckpt, StateDictCheckpoint):
        return ckpt.tensors
    if isinstance(ckpt, EditedCheckpoint) and isinstance(ckpt.base, StateDictCheckpoint):
        base, edit = ckpt.base.tensors, ckpt.edited
        return {new: base[old] for new, old in edit.origin.items() if new not in edit.resized}
    return None


def write_back(
    state: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], report: Report
) -> None:
    """Copy the tensors `report` says changed from `new` into `state`'s own tensors, in place
    (under `torch.no_grad`, so parameters keep `requires_grad` and stay the module's objects).
    A changed tensor whose elements share memory (`expand`) is refused before any is written:
    `UsageError`."""
    for e in report.tensors:
        if e.changes and overlaps_itself(state[e.name]):
            raise UsageError(
                f"{report.source}: tensor '{shown(e.name)}' would change, but some of its "
                "elements share memory (an expand() or as_strided view), so no value can be "
                "written into it in place; give it its own memory (a .clone() of it in the "
                "module) or leave it unchanged"
            )
    with torch.no_grad():
        for e in report.tensors:
            if e.changes:
                state[e.name].copy_(new[e.name])


def apply_to_checkpoint(
    ckpt: Checkpoint,
    rules: Sequence[RuleInput] | Sequence[Rule],
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> tuple[dict[str, torch.Tensor], Report]:
    """Apply rules to any checkpoint and return every tensor in memory, with the report.
    Nothing is written.

    Args:
        ckpt: An open `Checkpoint` (a file's, or a `StateDictCheckpoint`).
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s).
        options: An `ApplyOptions`; the fields an in-memory apply has no use for (output,
            reports) are ignored. Keywords override it.
        **kwargs: `seed`, `strict`, `allow_unmatched`, `device`, `config`, `unsafe_pickle`
            (for transplant sources), `progress` (the Hub's download bars of hf://
            transplant sources), `model` (for `type:` patterns, module fans and `default`; a spec
            or an `nn.Module`), `reference_tolerance` and the surgery `add`, `drop`, `rename`,
            `resize` (a recipe's steps run through here), as in `reinit.ApplyOptions`. Any
            other keyword is a TypeError.

    Returns:
        `(tensors, report)`: every tensor on the CPU (kept tensors of a `StateDictCheckpoint`
        are its own objects, not copies) and the `Report`.
    """
    o = with_kwargs("apply_to_checkpoint", options, kwargs, IN_MEMORY_FIELDS | SURGERY_FIELDS)
    job = Job.of(ckpt, rules, o, require_rules=False)
    with ExitStack() as stack:
        run = run_prepared(prepare(stack, job, o))
    return run.tensors, run.report


def apply_to_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    rules: Sequence[RuleInput],
    seed: int | None = None,
    *,
    source: str = "<state_dict>",
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargsBesidesSeed],
) -> tuple[dict[str, torch.Tensor], Report]:
    """Apply rules to a state dict in memory. The input is not modified.

    Args:
        state_dict: Tensor names to tensors (any device).
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s).
        seed: Seeds every re-initialized tensor's generator (with its name), as `--seed`
            (default: the seed of `options`, else 0).
        source: How the report and errors name the input.
        options: An `ApplyOptions`; its `seed` is used unless `seed` is given here, and the
            fields an in-memory apply has no use for are ignored. Keywords override it.
        **kwargs: `strict`, `allow_unmatched`, `device`, `config` (the model config some
            schemes read: scaled_normal's layers, small_init's dim), `unsafe_pickle` and
            `progress` (for transplant sources), the surgery `add`, `drop`, `rename`, `resize`
            (the result then has the new names and shapes), as in `reinit.ApplyOptions`.

    Returns:
        `(new_state_dict, report)`: changed tensors are new tensors on their original device
        with their original dtype; the others, and entries that are not tensors (a
        module's `_extra_state`), are the input's own objects.

    Example:

    >>> import torch, reinit
    >>> state = {"fc.weight": torch.zeros(64, 32), "fc.bias": torch.zeros(64)}
    >>> new, report = reinit.apply_to_state_dict(state, ["fc.weight=lecun_normal"], seed=0)
    >>> report.entry("fc.weight").action, round(report.entry("fc.weight").expected_std, 4)
    ('reinit', 0.1768)
    >>> new["fc.bias"] is state["fc.bias"], bool(state["fc.weight"].any())
    (True, False)
    """
    o = with_kwargs("apply_to_state_dict", options, kwargs, IN_MEMORY_FIELDS | SURGERY_FIELDS)
    if seed is not None:
        o = replace(o, seed=seed)
    config = o.config
    check_state_dict(state_dict, source, values=True)
    ckpt = StateDictCheckpoint(state_dict, source=source, config=config)
    new, report = apply_to_checkpoint(ckpt, rules, options=replace(o, config=None))
    for e in report.tensors:
        if e.changes and e.name in state_dict:
            new[e.name] = new[e.name].to(state_dict[e.name].device)
    # what is not a tensor (a module's `_extra_state`) comes back as it is, so the result
    # loads with `load_state_dict` where the input did
    new.update({k: v for k, v in state_dict.items() if not isinstance(v, torch.Tensor)})
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
    seed: int | None = None,
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargsBesidesSeed],
) -> Report:
    """Apply rules to a module's parameters and buffers in place (under `torch.no_grad`), by
    their `state_dict()` names. Values equal those `reinit apply` gives on the module's saved
    state dict with the same seed. Tied parameters (one storage under several names) stay tied
    and consistent: rules that would give their names different values are an error.

    Args:
        module: The `nn.Module` to change in place.
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s).
        seed: Seeds every re-initialized tensor's generator (with its name), as `--seed`
            (default: the seed of `options`, else 0).
        options: An `ApplyOptions`, as for `apply_to_state_dict`.
        **kwargs: `strict`, `allow_unmatched`, `device`, `config` (default: the module's own
            `config`, for transformers models), `unsafe_pickle`, `progress`, `model`
            (default: the module itself, so `default` and `type:CLASS` rules need nothing more).

    Returns:
        The `Report`.

    Example:

    >>> import torch, reinit
    >>> layer = torch.nn.Linear(4, 3)
    >>> report = reinit.apply_to_module(layer, ["bias=bias_prior(0.25)", "weight=zeros"])
    >>> [round(b, 4) for b in layer.bias.tolist()], bool(layer.weight.any())
    ([-1.0986, -1.0986, -1.0986], False)
    >>> layer.weight.requires_grad, report.summary.reinit
    (True, 2)
    """
    if not isinstance(module, torch.nn.Module):
        raise UsageError(
            f"apply_to_module: module must be a torch.nn.Module, got {type(module).__name__}"
            " (a state dict goes to apply_to_state_dict)"
        )
    o = with_kwargs("apply_to_module", options, kwargs, IN_MEMORY_FIELDS)
    surgery = [k for k in sorted(SURGERY_FIELDS) if getattr(o, k)]
    if surgery:
        raise UsageError(
            f"apply_to_module: {surgery[0]} would change the module's tensor list, which an "
            "in-place apply cannot; use apply_to_state_dict and load its result into the model"
        )
    if seed is not None:
        o = replace(o, seed=seed)
    if o.model is None:  # the module is its own model: `default`, `type:` and fans from it
        o = replace(o, model=module)
    config = o.config
    state = module.state_dict()
    if config is None:
        config = module_config(module)
    new, report = apply_to_state_dict(
        state,
        rules,
        o.seed,
        source=f"<{type(module).__name__}>",
        options=replace(o, config=config),
    )
    write_back(state, new, report)
    return report
