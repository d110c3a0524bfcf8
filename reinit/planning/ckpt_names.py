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

__all__ = ["CheckpointSlice", "checkpoint_slices", "load_renaming"]

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from reinit.errors import UsageError
from reinit.limits import available_memory
from reinit.text import shown

_SHIFT = 40
_MASK = (1 << _SHIFT) - 1
_INDEX_BYTES = 8  # one int64 coordinate per index

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
    # the first checkpoint tensor whose storage `save_pretrained` writes this one from ("":
    # a storage of its own); huggingface_hub's split keeps a storage's tensors in one shard
    storage: str = ""

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
    _check_trace_fits(state)
    try:
        per_dim = _runs(revert, module, state)
    except Exception:  # a mapping that needs real values: keep the module's names
        return plain
    slices = _slices(per_dim, list(state), state)
    shared = _shared_storage(revert, module, state)
    return [replace(c, storage=shared.get(c.name, "")) for c in slices]


def _check_trace_fits(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse (exit 2, before anything is allocated) a model whose coordinate trace does not
    fit in memory: every tensor's coordinates (an int64 per index of each dimension) are alive
    at once, and the longest dimension's are copied ~3 times more while its slice is read. A
    config with `n_positions: 10**9` took 23 GB here before the kernel killed the process."""
    if not state:
        return
    alive = _INDEX_BYTES * sum(sum(t.shape) for t in state.values())
    name, longest = max(
        ((n, t) for n, t in state.items()), key=lambda nt: max(nt[1].shape, default=0)
    )
    need = alive + 3 * _INDEX_BYTES * max(longest.shape, default=0)
    free = available_memory()
    if need > free:
        raise UsageError(
            f"the model's tensor {shown(name)!r} {list(longest.shape)}: finding the names "
            f"save_pretrained gives its tensors needs {need:,} bytes, more than the {free:,} "
            "bytes of memory available; check the config (vocab_size, max_position_embeddings, "
            "hidden_size)"
        )


def _shared_storage(
    revert: Revert, module: nn.Module, state: Mapping[str, torch.Tensor]
) -> dict[str, str]:
    """Checkpoint name -> the first checkpoint name whose storage it shares, as the save path
    leaves them (Mixtral's per-expert tensors: views of one stacked tensor), for the names
    that share one. Run on meta tensors: the views and copies transformers makes, no bytes."""
    meta = {n: t.detach().to("meta") for n, t in state.items()}
    try:
        saved = revert(module, meta)
    except Exception:  # a mapping that needs real values: each tensor on its own
        return {}
    first: dict[int, str] = {}
    shared: dict[str, str] = {}
    for name, t in saved.items():
        key = t.untyped_storage()._cdata  # the storage's identity (a meta tensor has no data)
        lead = first.setdefault(key, name)
        if lead != name:
            shared[name] = shared[lead] = lead
    return shared


def _unshared_state(module: nn.Module) -> dict[str, torch.Tensor]:
    state = _tensors(module.state_dict(keep_vars=True))
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


def load_renaming(module: nn.Module) -> Callable[[str], str]:
    """How transformers renames a checkpoint key when `from_pretrained` loads it into `module`
    (its conversion mapping's `WeightRenaming`s, the legacy ones included: BERT's
    `LayerNorm.gamma` -> `LayerNorm.weight`): a checkpoint saved before the rename names the
    module's tensor so. The identity without one (transformers 4.x, a torch model)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings

        transforms = get_model_conversion_mapping(module)  # type: ignore[arg-type]
    except Exception:  # transformers 4.x, or a module it does not map
        return lambda name: name
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    return lambda name: str(apply_renamings(name, renamings))


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
    return _tensors(state)


def _tensors(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """A state dict's tensors: not a module's `_extra_state` (any object), which no
    checkpoint file of tensors holds."""
    return {n: t for n, t in state.items() if isinstance(t, torch.Tensor)}


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


def _runs(
    revert: Revert, module: nn.Module, state: dict[str, torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """The save path run on the coordinates of each dimension, each output cut to the few
    elements that describe it (`_compact`). Run first with `contiguous()` a no-op, so a
    conversion that copies (transformers' `Chunk`) keeps the coordinates' stride-0 layout
    instead of writing an int64 per element of every stacked expert tensor; a mapping that
    needs a real copy runs again as it is."""
    ndim = _max_ndim(state)
    try:
        with _NoCopy():
            return [_run(revert, module, state, d) for d in range(ndim)]
    except Exception:
        return [_run(revert, module, state, d) for d in range(ndim)]


def _run(
    revert: Revert, module: nn.Module, state: dict[str, torch.Tensor], d: int
) -> dict[str, torch.Tensor]:
    coords = {n: _coords(i, t, d) for i, (n, t) in enumerate(state.items())}
    return {n: _compact(t) for n, t in revert(module, coords).items()}


class _NoCopy(TorchFunctionMode):
    """`Tensor.contiguous()` returns the tensor itself: the coordinates are only read."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.Tensor.contiguous:
            return args[0]
        return func(*args, **(kwargs or {}))


def _slices(
    per_dim: list[dict[str, torch.Tensor]], order: list[str], state: Mapping[str, torch.Tensor]
) -> list[CheckpointSlice]:
    names = list(per_dim[0]) if per_dim else []
    return [_slice(n, [r[n] for r in per_dim], order, state) for n in names]


def _reduced(t: torch.Tensor) -> torch.Tensor:
    """The tensor with its stride-0 dimensions cut to length 1 (broadcastable to the shape)."""
    idx = tuple(slice(0, 1) if s == 0 else slice(None) for s in t.stride())
    return t[idx] if t.dim() else t


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` as a stride-0 expansion of its smallest broadcastable part: every dimension along
    which it does not vary cut to length 1 (so a materialized coordinate tensor, as a copying
    conversion leaves it, is not kept at full size)."""
    small = _reduced(t)
    for d in range(small.dim()):
        if small.shape[d] > 1:
            first = small.narrow(d, 0, 1)
            if torch.equal(small, first.expand_as(small)):
                small = first
    return small.expand(t.shape)


def _slice(
    name: str, per_dim: list[torch.Tensor], order: list[str], state: Mapping[str, torch.Tensor]
) -> CheckpointSlice:
    reduced = [_reduced(t) for t in per_dim]
    if any(r.numel() == 0 for r in reduced):  # no coordinates to say where it came from
        return _empty_slice(name, tuple(per_dim[0].shape), state)
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


def _empty_slice(
    name: str, shape: tuple[int, ...], state: Mapping[str, torch.Tensor]
) -> CheckpointSlice:
    """A tensor with no elements (a config with a zero width): the module tensor of its name
    and shape, whole; else one with no source, in the dtype of the module's first empty
    tensor."""
    own = state.get(name)
    if own is not None and tuple(own.shape) == shape:
        return CheckpointSlice(name, name, shape, own.dtype)
    empty = next((t for t in state.values() if t.numel() == 0), None)
    return CheckpointSlice(name, "", shape, empty.dtype if empty is not None else torch.float32)


def _is_identity(index: tuple[torch.Tensor, ...]) -> bool:
    n = len(index)
    for d, ix in enumerate(index):
        expect = [1] * n
        expect[d] = ix.numel()
        if list(ix.shape) != expect or not torch.equal(ix.flatten(), torch.arange(ix.numel())):
            return False
    return True
