"""Whether a model fits in memory before its real weights are allocated.

`verify --forward` and `probe` build a model with real weights from a config that came with a
checkpoint: `vocab_size: 1000000` once meant a 4 GB allocation with no check. The model is
built on the meta device first (no memory), its parameters and buffers are counted, and a
model that needs more than the memory available is refused, as `--add`/`--resize` refuse a
tensor."""

from __future__ import annotations

import itertools
import os

import torch

from reinit.errors import UsageError
from reinit.limits import available_memory
from reinit.planning.model import ModelView
from reinit.planning.model_load import build_module, model_factory

__all__ = ["check_draws_fit", "check_model_fits", "model_bytes"]


def model_bytes(spec: str | os.PathLike[str]) -> int:
    """The bytes of the parameters and buffers of the model `spec` names (built on meta)."""
    text = os.fspath(spec)
    factory = model_factory(text)
    with torch.device("meta"):
        module = build_module(text, factory)
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def check_model_fits(spec: str | os.PathLike[str], where: str) -> None:
    """Refuse (exit 2, nothing allocated) a model whose weights need more memory than this
    process may still allocate (`limits.available_memory`)."""
    need = model_bytes(spec)
    free = available_memory()
    if need > free:
        raise UsageError(
            f"{where}: the model {os.fspath(spec)} needs {need:,} bytes of weights, more than "
            f"the {free:,} bytes of memory available; check its config (vocab_size, "
            "hidden_size, num_hidden_layers)"
        )


def _module_bytes(module: torch.nn.Module) -> int:
    """What `default` allocates to draw a tensor of `module`: the module whole, in float32."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * max(4, t.element_size()) for t in tensors)


def check_draws_fit(spec: str, view: ModelView) -> None:
    """Refuse (exit 2, before anything is made) a model from its config (`new`) whose largest
    draw does not fit: `default` builds each tensor's owning module in float32."""
    need, name = 0, ""
    seen: set[str] = set()
    for t in view.checkpoint_tensors():
        site = view.site(t.name)
        if site is None or site.module_name in seen:
            continue
        seen.add(site.module_name)
        size = _module_bytes(view.model.module.get_submodule(site.module_name))
        if size > need:
            need, name = size, t.name
    free = available_memory()
    if need > free:
        raise UsageError(
            f"new {spec}: drawing '{name}' needs {need:,} bytes (its module in float32), more "
            f"than the {free:,} bytes of memory available; check the config (vocab_size, "
            "hidden_size, intermediate_size)"
        )
