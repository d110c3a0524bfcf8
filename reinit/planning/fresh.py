"""`reinit new`: the checkpoint a model would have, as a source that holds no bytes yet
(`ModelCheckpoint`). Its names, shapes and order are those `save_pretrained` writes (the model
view's `checkpoint_tensors()`, from transformers' own save path: one tensor per expert where the
module stacks them); its values are drawn when the run asks for them, one tensor (one
module) at a time, by the `default` scheme or whatever rule wins."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reinit.errors import CheckpointError, UsageError
from reinit.io.checkpoint import Checkpoint, ConfigDict, TensorRef
from reinit.io.formats import tensor_to_bytes
from reinit.planning.model import Model, ModelError, default_value
from reinit.planning.planner import Plan
from reinit.text import shown

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_RULE",
    "ModelCheckpoint",
    "check_architecture",
    "config_dtype",
    "mark_fresh",
    "model_config_json",
]

DEFAULT_RULE = "*=default"  # the rule `reinit new` puts before the user's: the model's own init

# what `save_pretrained` writes in each safetensors file's metadata
_SAVE_METADATA = {"format": "pt"}


def config_dtype(module: nn.Module, spec: str = "the model") -> torch.dtype | None:
    """The floating dtype the model's config names (`dtype`, or the older `torch_dtype`), or
    None (no config, "auto", or a name that is no torch dtype). A torch dtype that is not
    floating (complex64, int8, bool: no init draws a model's weights in it, and writing it as
    float32 would say otherwise than the config) is a UsageError naming `--dtype`."""
    config = getattr(module, "config", None)
    if config is None:
        return None
    for attr in ("dtype", "torch_dtype"):  # transformers 5 names it dtype, 4.x torch_dtype
        if not hasattr(config, attr):
            continue
        value = getattr(config, attr)
        if isinstance(value, str):
            value = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(value, torch.dtype):
            return None
        if not value.is_floating_point:
            name = str(value).removeprefix("torch.")
            raise UsageError(
                f"reinit new {spec}: its config's {attr} is {name}, not a floating dtype a "
                "model's weights are drawn in; give --dtype float32 (or bfloat16, float16) to "
                "write it in that"
            )
        return value
    return None


def model_config_json(module: nn.Module, dtype: torch.dtype) -> str | None:
    """The config.json `save_pretrained` would write beside the weights (its `architectures`
    the model's class, its dtype the output's), or None for a model without a config."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        return None
    import copy

    config = copy.deepcopy(config)
    config.architectures = [type(module).__name__]
    config.dtype = str(dtype).removeprefix("torch.")
    text = config.to_json_string(use_diff=True)
    assert isinstance(text, str)
    return text


def mark_fresh(result: Plan) -> Plan:
    """Every entry of a new model's plan has no source bytes (no `before`, nothing read)."""
    from dataclasses import replace

    return replace(result, entries=tuple(replace(e, fresh=True) for e in result.entries))


class ModelCheckpoint(Checkpoint):
    """The checkpoint `model` would have (its view's `checkpoint_tensors()`), floating tensors
    in `dtype`, with no bytes: reading a tensor draws the architecture's own init for it
    (`default`, seeded by `seed` and its name; an expert's tensor: its slice of the experts
    module's init), which is what a rule that keeps it, or reads its values
    (`on_mismatch=slice`, `mean_resize`), sees. Its extra file is the model's config.json."""

    kind = "model"

    def __init__(self, spec: str, model: Model, dtype: torch.dtype, seed: int = 0):
        self.source = spec
        self.model = model
        self.seed = seed
        self.dtype = dtype
        self.view = model.view()  # checkpoint names, each with its module site (or part of one)
        tensors = self.view.checkpoint_tensors()
        if not tensors:
            raise ModelError(f"{spec}: the model has no parameters or buffers to write")
        self._refs = {
            t.name: TensorRef.of(t.name, dtype if t.dtype.is_floating_point else t.dtype, t.shape)
            for t in tensors
        }
        self._config_text = model_config_json(model.module, dtype)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def names(self) -> list[str]:
        return list(self._refs)

    def ref(self, name: str) -> TensorRef:
        try:
            return self._refs[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: the model has no tensor '{name}'") from None

    def read(self, name: str) -> torch.Tensor:
        return default_value(self.view, name, self.ref(name).dtype, self.seed)

    def read_bytes(self, name: str) -> bytes | bytearray | memoryview:
        return tensor_to_bytes(self.read(name))

    def metadata(self, shard: str = "") -> dict[str, str]:
        return dict(_SAVE_METADATA)

    def config(self) -> ConfigDict | None:
        if self._config_text is None:
            return None
        doc: dict[str, Any] = json.loads(self._config_text)
        return doc

    def extra_files(self) -> list[str]:
        return ["config.json"] if self._config_text is not None else []

    def fetch_extra(self, relname: str) -> Path:
        assert relname == "config.json" and self._config_text is not None
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="reinit-new-")
        path = Path(self._tmp.name) / relname
        path.write_text(self._config_text, encoding="utf-8")
        return path

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def check_architecture(spec: str, model: Model) -> None:
    """A config whose `architectures` names a class this transformers lacks would be built
    as its base `AutoModel`, with other names: refused (remote code is never run)."""
    config = getattr(model.module, "config", None)
    named = getattr(config, "architectures", None) if model.kind == "hf" else None
    if isinstance(named, str):
        raise ModelError(
            f"{spec}: the config's architectures is a string, {shown(named)!r}; write it as "
            f"a list of class names, as save_pretrained does ({json.dumps([named])})"
        )
    archs = list(named or [])
    if not archs or archs[0] == type(model.module).__name__:
        return
    if getattr(config, "auto_map", None):
        raise ModelError(
            f"{spec}: {archs[0]} is remote code (the config's auto_map), which reinit never "
            "runs; give a config of an architecture transformers has"
        )
    import transformers

    raise ModelError(
        f"{spec}: transformers {transformers.__version__} has no architecture {archs[0]!r}; "
        "upgrade transformers or give a config of an architecture it has"
    )
