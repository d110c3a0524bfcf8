"""The names a `--format dcp` output is written under: the model's own `state_dict()` keys.

What reads a DCP directory is a training job's `torch.distributed.checkpoint.load(
model.state_dict(), ...)`: it asks for the module's names. Where transformers 5 keeps a
tensor in the module in another form than in the checkpoint (Mixtral's per-expert
`block_sparse_moe.experts.{e}.w1.weight` `[I, H]` are boxes of the module's stacked
`mlp.experts.gate_up_proj` `[E, 2I, H]`), each checkpoint tensor is written as its box of the
module tensor, at its offsets (`DcpBox`), with `ckpt_names`' description of the slice; a
renamed one (`block_sparse_moe.gate.weight` -> `mlp.gate.weight`) under the module's name.
Nothing is stacked in memory: a box is one checkpoint tensor.

A module tensor tied to another (`lm_head.weight` to `model.embed_tokens.weight`), which
`save_pretrained` stores once, is listed under its own name too, its chunks the same records
(`aliases`): `state_dict()` asks for both names, as torch's own DCP save writes both.

All or nothing: when some tensor cannot be placed so (a slice that is no box, a shape the
model does not have, a module tensor whose boxes do not all come, a name written twice), the
whole output keeps the checkpoint's names, with a note saying why."""

from __future__ import annotations

__all__ = ["DcpNames", "covers_once", "dcp_names", "held_under_model_names", "module_box"]

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from reinit.errors import ReinitError
from reinit.io.checkpoint import Checkpoint
from reinit.io.formats import DcpBox
from reinit.planning.model import ModelView, tied_copies

if TYPE_CHECKING:  # its TorchFunctionMode loads torch: imported where a model is used
    from reinit.planning.ckpt_names import CheckpointSlice

# an output tensor: name, dtype (by name, as `Layout.out_dtype`: a plan of copies has no
# torch), shape
Entry = tuple[str, str, tuple[int, ...]]


@dataclass(frozen=True)
class DcpNames:
    """The output tensors written as (a box of) a module tensor, by checkpoint name; the
    module's tied names listed with the records of the name they are tied to (`aliases`:
    tied name -> the DCP name written); `note` says which names were used, or why the
    checkpoint's were kept (None: nothing to say)."""

    chunks: Mapping[str, DcpBox]
    aliases: Mapping[str, str] = field(default_factory=dict)
    note: str | None = None


class _Kept(Exception):
    """Why the checkpoint's names are kept."""


def dcp_names(view: ModelView, entries: Sequence[Entry]) -> DcpNames:
    """Where each output tensor goes in a DCP read by the model's `state_dict()` (see the
    module docstring)."""
    try:
        chunks = {c_name: c for c_name, c in _placed(view, entries)}
        _check_whole(chunks, {n: d for n, d, _ in entries})
    except _Kept as why:
        return DcpNames({}, note=f"--format dcp: written under the checkpoint's names ({why})")
    written = {chunks[n].name if n in chunks else n for n, _, _ in entries}
    return DcpNames(chunks, _aliases(view, written), _said(chunks))


def _said(chunks: Mapping[str, DcpBox]) -> str | None:
    """The note that the DCP's names are not the report's (None: they are)."""
    if not chunks:
        return None
    name, first = next(iter(chunks.items()))
    targets = len({c.name for c in chunks.values()})
    return (
        f"--format dcp: written under the model's state_dict() names: {len(chunks)} checkpoint "
        f"tensors into {targets} of the model's (e.g. '{name}' -> '{first.name}' at "
        f"{list(first.offsets)})"
    )


def _aliases(view: ModelView, written: set[str]) -> dict[str, str]:
    """Each tied module name not written, with the one it is tied to that is (under the
    module's own name: a checkpoint that lacks the base-model prefix gets no prefixed name)."""
    out = {}
    for copy, first in tied_copies(view.model.module).items():
        for missing, kept in ((copy, first), (first, copy)):
            if missing not in written and kept in written:
                out[missing] = kept
    return out


def _placed(view: ModelView, entries: Sequence[Entry]) -> list[tuple[str, DcpBox]]:
    """Each output tensor the model holds under another name, with its place there."""
    out = []
    for name, _, shape in entries:
        model_name = view.names.get(name)
        site = view.model.sites.get(model_name) if model_name is not None else None
        if site is None or _own_name(view, name, site.name):  # the module's own (or none)
            continue
        if tuple(shape) != site.shape:
            raise _Kept(f"'{name}' is {list(shape)}, the model's checkpoint has {list(site.shape)}")
        if site.part is None:  # renamed, whole
            out.append((name, DcpBox(site.name, (0,) * len(shape), shape, shape)))
            continue
        box = module_box(site.part)
        if box is None:
            raise _Kept(f"'{name}' is no box of the model's '{site.name}'")
        out.append((name, box))
    return out


def _own_name(view: ModelView, name: str, module_name: str) -> bool:
    """Whether checkpoint name `name` is the module's `module_name`, but for the base-model
    prefix (kept as the checkpoint has it); a legacy name (`LayerNorm.gamma`) is not."""
    pre = view.model.prefix + "." if view.model.prefix else ""
    return module_name in (name, pre + name) or (bool(pre) and pre + module_name == name)


def _check_whole(chunks: Mapping[str, DcpBox], dtypes: Mapping[str, str]) -> None:
    """Every module tensor written is covered by its boxes, once, in one dtype, and its name
    is not also an output tensor's own."""
    by_target: dict[str, list[tuple[str, DcpBox]]] = {}
    for name, c in chunks.items():
        by_target.setdefault(c.name, []).append((name, c))
    for target, parts in by_target.items():
        if target in dtypes and target not in chunks:
            raise _Kept(f"'{target}' is both an output tensor and the model's name for others")
        if len({dtypes[n] for n, _ in parts}) > 1:
            raise _Kept(f"the parts of '{target}' differ in dtype")
        boxes = [c for _, c in parts]
        if not covers_once(boxes, boxes[0].whole):
            raise _Kept(f"the output holds {len(parts)} parts of '{target}', not all of it once")


_MAX_CELLS = 1 << 22  # a coverage grid past this is not built (the element count still is)


def covers_once(boxes: Sequence[DcpBox], whole: tuple[int, ...]) -> bool:
    """Whether the boxes cover `whole` exactly once: their elements add up to it and, on the
    grid their edges cut (one cell per expert and half for a stacked `[E, 2I, H]`), each cell
    is covered once."""
    if sum(math.prod(b.sizes) for b in boxes) != math.prod(whole):
        return False
    cuts = [
        sorted({0, n, *(x for b in boxes for x in (b.offsets[d], b.offsets[d] + b.sizes[d]))})
        for d, n in enumerate(whole)
    ]
    if math.prod(len(c) - 1 for c in cuts) > _MAX_CELLS:
        return len({b.offsets for b in boxes}) == len(boxes)
    at = [{x: i for i, x in enumerate(c)} for c in cuts]
    grid = torch.zeros([len(c) - 1 for c in cuts], dtype=torch.int32)
    for b in boxes:
        cell = zip(at, b.offsets, b.sizes, strict=True)
        grid[tuple(slice(a[o], a[o + s]) for a, o, s in cell)] += 1
    return bool((grid == 1).all())


def module_box(part: CheckpointSlice) -> DcpBox | None:
    """The checkpoint tensor `part` as a box of its module tensor, or None when it is not one
    (some index is not a run of consecutive indices along one of its dimensions)."""
    if part.index is None:
        return None
    shape = part.shape
    offsets: list[int] = []
    sizes: list[int] = []
    claimed: list[int] = []  # the checkpoint dimension each varying module dimension runs along
    for ix in part.index:
        run = _run_of(ix, shape)
        if run is None:
            return None
        start, length, dim = run
        offsets.append(start)
        sizes.append(length)
        if dim is not None:
            claimed.append(dim)
    if len(set(claimed)) != len(claimed) or math.prod(sizes) != math.prod(shape):
        return None
    rest = [d for d in range(len(shape)) if d not in claimed]  # all of length 1
    perm = (*claimed, *rest)
    in_order = claimed == sorted(claimed)
    whole = part.source_shape
    return DcpBox(part.source, tuple(offsets), tuple(sizes), whole, None if in_order else perm)


def _run_of(ix: torch.Tensor, shape: tuple[int, ...]) -> tuple[int, int, int | None] | None:
    """One module dimension's index (broadcastable to the checkpoint tensor's `shape`) as
    (first index, length, the checkpoint dimension it runs along or None for one index), or
    None when it is not consecutive indices along at most one dimension."""
    full = ix.reshape((1,) * (len(shape) - ix.dim()) + tuple(ix.shape))
    varying = [d for d, n in enumerate(full.shape) if n > 1]
    values = full.flatten()
    if not varying:
        return int(values[0]), 1, None
    if len(varying) > 1 or full.shape[varying[0]] != shape[varying[0]]:
        return None
    start = int(values[0])
    if not torch.equal(values, torch.arange(start, start + values.numel())):
        return None
    return start, values.numel(), varying[0]


def held_under_model_names(
    ckpt: Checkpoint, lacking: Sequence[str], other: Checkpoint, where: str
) -> dict[str, str]:
    """Of `ckpt`'s tensors `lacking` in `other`, those `other` holds as (a part of) the model's
    tensor of another name (a `--format dcp` output under the model's `state_dict()` names:
    an expert's `[I, H]` as a box of `mlp.experts.gate_up_proj`), by the model `ckpt`'s
    config.json describes (`where`: its path, for errors): name -> the model's name. {}
    without such a config (or one that is not built)."""
    config = ckpt.config() if lacking else None
    if config is None or "model_type" not in config:
        return {}
    from reinit.planning.model_load import model_of_config

    try:
        model = model_of_config(where, config, internal=True)
        view = model.align(ckpt.names())
    except ReinitError:
        return {}
    held = {}
    for n in lacking:
        site = model.sites.get(view.names.get(n, ""))
        if site is not None and site.name != n and site.name in other:
            held[n] = site.name
    return held
