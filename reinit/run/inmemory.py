"""The same rules on tensors already in memory: state dicts, `nn.Module`s and in-memory
checkpoints (a recipe's intermediate steps)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from reinit.io.checkpoint import Checkpoint, tensor_from_bytes
from reinit.io.memory import StateDictCheckpoint
from reinit.options import (
    IN_MEMORY_FIELDS,
    ApplyOptions,
    OptionKwargs,
    OptionKwargsBesidesSeed,
    with_kwargs,
)
from reinit.planning.planner import Plan
from reinit.planning.session import RuleInput, as_rules, check_device, plan_for
from reinit.planning.ties import Ties
from reinit.report.assemble import make_report
from reinit.report.entries import Report, TensorEntry
from reinit.rules import Rule
from reinit.run.stream import Applier, Piece

if TYPE_CHECKING:
    from typing_extensions import Unpack


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
            reports, surgery, model) are ignored. Keywords override it.
        **kwargs: `seed`, `strict`, `allow_unmatched`, `device`, `config`, `unsafe_pickle`
            (for transplant sources) and `progress` (the Hub's download bars of hf://
            transplant sources), as in `reinit.ApplyOptions`. Any other keyword is a TypeError.

    Returns:
        `(tensors, report)`: every tensor on the CPU (kept tensors of a `StateDictCheckpoint`
        are its own objects, not copies) and the `Report`.

    Example:

    ```python
    import reinit

    with reinit.open_checkpoint("model.safetensors") as ckpt:
        tensors, report = reinit.run.inmemory.apply_to_checkpoint(ckpt, ["*.bias=zeros"])
    ```
    """
    o = with_kwargs("apply_to_checkpoint", options, kwargs, IN_MEMORY_FIELDS)
    seed, strict, allow_unmatched, device = o.seed, o.strict, o.allow_unmatched, o.device
    config, unsafe_pickle, progress = o.config, o.unsafe_pickle, o.progress
    from reinit.planning.transplant import SourcePool

    started = time.perf_counter()
    device = check_device(device)
    rule_objs = as_rules(rules)
    with SourcePool(ckpt, unsafe_pickle=unsafe_pickle, progress=progress) as pool:
        the_plan, ties = plan_for(ckpt, rule_objs, strict, allow_unmatched, pool, config=config)
        applier = Applier(ckpt, seed, device, pool, ties)
        own = ckpt.tensors if isinstance(ckpt, StateDictCheckpoint) else None
        out, entries = _collect(applier.stream(the_plan.entries), the_plan, ties, own)
    report = make_report(
        ckpt.source,
        None,
        seed,
        tuple(r.text for r in rule_objs),
        entries,
        0,
        started,
        the_plan,
    )
    return out, report


def _collect(
    pieces: Iterator[Piece], plan: Plan, ties: Ties, own: Mapping[str, torch.Tensor] | None
) -> tuple[dict[str, torch.Tensor], list[TensorEntry]]:
    """Every tensor of the engine's output stream, in memory (as the `.bin` output assembles
    them), and the report entries. Unchanged tensors of an in-memory source are its own
    objects, not copies; tied names stay one tensor object."""
    by_name = {p.name: p for p in plan.entries}
    shared: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    entries: list[TensorEntry] = []
    buf = bytearray()
    for piece in pieces:
        p = by_name[piece.name]
        reuse = own is not None and not p.changes
        if piece.entry is not None:
            if reuse:
                assert own is not None
                out[p.name] = own[p.name]
            else:
                value = tensor_from_bytes(buf, p.dtype, p.shape)
                root = ties.root(p.name)
                out[p.name] = shared.setdefault(root, value) if root else value
            entries.append(piece.entry)
            buf = bytearray()
        elif reuse:
            continue
        elif piece.span is not None:
            fd, offset, nbytes = piece.span
            buf += os.pread(fd, nbytes, offset)
        elif piece.data is not None:
            buf += piece.data
    return out, entries


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
            `progress` (for transplant sources), as in `reinit.ApplyOptions`.

    Returns:
        `(new_state_dict, report)`: changed tensors are new tensors on their original device
        with their original dtype; the others are the input's own objects.

    Example:

    >>> import torch, reinit
    >>> state = {"fc.weight": torch.zeros(64, 32), "fc.bias": torch.zeros(64)}
    >>> new, report = reinit.apply_to_state_dict(state, ["fc.weight=lecun_normal"], seed=0)
    >>> report.entry("fc.weight").action, round(report.entry("fc.weight").expected_std, 4)
    ('reinit', 0.1768)
    >>> new["fc.bias"] is state["fc.bias"], bool(state["fc.weight"].any())
    (True, False)
    """
    o = with_kwargs("apply_to_state_dict", options, kwargs, IN_MEMORY_FIELDS)
    if seed is not None:
        o = replace(o, seed=seed)
    config = o.config
    ckpt = StateDictCheckpoint(state_dict, source=source, config=config)
    new, report = apply_to_checkpoint(ckpt, rules, options=replace(o, config=None))
    for e in report.tensors:
        if e.action in ("reinit", "transplant"):
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
    seed: int | None = None,
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargsBesidesSeed],
) -> Report:
    """Apply rules to a module's parameters and buffers in place (under `torch.no_grad`), by
    their `state_dict()` names. Values equal those `reinit apply` gives on the module's saved
    state dict with the same seed. Tied parameters (one storage under several names) stay tied
    and consistent, as in `reinit.ties`: rules that would give their names different values are
    an error.

    Args:
        module: The `nn.Module` to change in place.
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s).
        seed: Seeds every re-initialized tensor's generator (with its name), as `--seed`
            (default: the seed of `options`, else 0).
        options: An `ApplyOptions`, as for `apply_to_state_dict`.
        **kwargs: `strict`, `allow_unmatched`, `device`, `config` (default: the module's own
            `config`, for transformers models), `unsafe_pickle`, `progress`.

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
    o = with_kwargs("apply_to_module", options, kwargs, IN_MEMORY_FIELDS)
    if seed is not None:
        o = replace(o, seed=seed)
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
    with torch.no_grad():
        for e in report.tensors:
            if e.action in ("reinit", "transplant"):
                state[e.name].copy_(new[e.name])
    return report
