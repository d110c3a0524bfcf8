"""A transformers model's checkpoint tensors, as `save_pretrained` writes them, and where
each one comes from in the module (transformers >= 5: the model's conversion mapping).

transformers 5 may keep a tensor in the module in another form than in the checkpoint: Mixtral's
experts are one stacked parameter `mlp.experts.gate_up_proj` `[E, 2I, H]` in the module and
`2E` tensors `block_sparse_moe.experts.{e}.w1/w3.weight` `[I, H]` in the checkpoint. Rather
than know each architecture, this asks transformers: its own save path (ties removed by
`remove_tied_weights_from_state_dict`, names and shapes by `revert_weight_conversion`) is run on
*coordinate tensors*: for each dimension d of each module tensor, an int64 tensor holding
(the tensor's number << 40) + its index along d, expanded (stride 0 elsewhere, so it costs the
length of d). What comes out under a checkpoint name says, element by element, which module
tensor and which index along each of its dimensions the checkpoint tensor holds: an exact
description of the slice (or any view, concatenation or permutation) that `save_pretrained`
applies. Nothing is re-implemented per architecture; with transformers 4.x (no mapping) or a
plain torch model the names are the module's, one to one."""

from __future__ import annotations

__all__ = ["CheckpointSlice", "checkpoint_slices"]

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

_SHIFT = 40
_MASK = (1 << _SHIFT) - 1

Revert = Callable[..., dict[str, torch.Tensor]]  # transformers' revert_weight_conversion


@dataclass(frozen=True)
class CheckpointSlice:
    """One checkpoint tensor: the module tensor it comes from and, when it is not that whole
    tensor, the index that takes it out (`param[index]`, advanced indexing with int64 tensors
    broadcastable to `shape`)."""

    name: str  # the checkpoint's name
    source: str  # the module's state-dict name ("" when made of several)
    shape: tuple[int, ...]
    dtype: torch.dtype
    index: tuple[torch.Tensor, ...] | None = None
    source_shape: tuple[int, ...] = ()  # the module tensor's (set when `index` is)

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This checkpoint tensor's values out of the module tensor's."""
        return full if self.index is None else full[self.index]


def checkpoint_slices(module: nn.Module, hf: bool) -> list[CheckpointSlice]:
    """The checkpoint tensors `save_pretrained` (for a plain torch model: `save_file` of its
    state dict, shared tensors once) would write for `module`, in that order."""
    state = _saved_state(module) if hf else _unshared_state(module)
    plain = [CheckpointSlice(n, n, tuple(t.shape), t.dtype) for n, t in state.items()]
    revert = _reverter() if hf else None
    if revert is None:
        return plain
    try:
        runs = [_run(revert, module, state, d) for d in range(_max_ndim(state))]
    except Exception:  # a mapping that needs real values: keep the module's names
        return plain
    names = list(runs[0]) if runs else []
    order = list(state)
    return [_slice(n, [r[n] for r in runs], order, state) for n in names]


def _unshared_state(module: nn.Module) -> dict[str, torch.Tensor]:
    state = dict(module.state_dict(keep_vars=True))
    seen: set[int] = set()
    for name, t in list(state.items()):
        if id(t) in seen:
            del state[name]
        seen.add(id(t))
    return {n: t.detach() for n, t in state.items()}


def _reverter() -> Revert | None:
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4.x: checkpoints hold the module's names
        return None
    return revert_weight_conversion


def _saved_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict `save_pretrained` starts from: tied copies removed as transformers does."""
    state = dict(module.state_dict())
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(state, module)  # type: ignore[arg-type]
    except Exception:  # an older or stricter transformers: drop later duplicates by identity
        state = _unshared_state(module)
    ignore = getattr(module, "_keys_to_ignore_on_save", None) or []
    for key in ignore:
        state.pop(key, None)
    return state


def _max_ndim(state: Mapping[str, torch.Tensor]) -> int:
    return max((t.dim() for t in state.values()), default=0) or 1


def _coords(i: int, t: torch.Tensor, d: int) -> torch.Tensor:
    """(i << 40) + index along d, expanded to t's shape (0 along d when t has no dim d)."""
    shape = tuple(t.shape)
    if d >= len(shape):
        return torch.full((), i << _SHIFT, dtype=torch.int64).expand(shape)
    view = [1] * len(shape)
    view[d] = shape[d]
    ar = torch.arange(shape[d], dtype=torch.int64) + (i << _SHIFT)
    return ar.view(view).expand(shape)


def _run(
    revert: Revert, module: nn.Module, state: dict[str, torch.Tensor], d: int
) -> dict[str, torch.Tensor]:
    coords = {n: _coords(i, t, d) for i, (n, t) in enumerate(state.items())}
    return revert(module, coords)


def _reduced(t: torch.Tensor) -> torch.Tensor:
    """The tensor with its stride-0 dimensions cut to length 1 (broadcastable to the shape)."""
    idx = tuple(slice(0, 1) if s == 0 else slice(None) for s in t.stride())
    return t[idx] if t.dim() else t


def _slice(
    name: str, per_dim: list[torch.Tensor], order: list[str], state: Mapping[str, torch.Tensor]
) -> CheckpointSlice:
    reduced = [_reduced(t) for t in per_dim]
    sources = {int(x) for r in reduced for x in (r.min() >> _SHIFT, r.max() >> _SHIFT)}
    shape = tuple(per_dim[0].shape)
    if len(sources) != 1:  # made of several module tensors: listed, with no one source
        return CheckpointSlice(name, "", shape, state[order[min(sources)]].dtype)
    source = order[sources.pop()]
    full = state[source]
    index = tuple(r & _MASK for r in reduced[: full.dim()])
    if shape == tuple(full.shape) and _is_identity(index):
        return CheckpointSlice(name, source, shape, full.dtype)
    return CheckpointSlice(name, source, shape, full.dtype, index, tuple(full.shape))


def _is_identity(index: tuple[torch.Tensor, ...]) -> bool:
    n = len(index)
    for d, ix in enumerate(index):
        expect = [1] * n
        expect[d] = ix.numel()
        if list(ix.shape) != expect or not torch.equal(ix.flatten(), torch.arange(ix.numel())):
            return False
    return True
