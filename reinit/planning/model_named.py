"""A checkpoint seen under another checkpoint's names, where that one holds the model's own
`state_dict()` names: a `save_pretrained` Mixtral (one tensor per expert,
`block_sparse_moe.experts.{e}.w1.weight`) seen as the `--format dcp` output of it holds them
(`mlp.experts.gate_up_proj` `[E, 2I, H]`), so `report OUT --against SRC` and `diff A B`
compare values rather than list the experts as removed on one side and added on the other.

The placement is the one the DCP writer used (`dcp_names`, from `ckpt_names`' slices:
transformers' own conversion mapping), read backwards: each stacked tensor is assembled from
its per-expert tensors, box by box; a renamed one (`block_sparse_moe.gate.weight` ->
`mlp.gate.weight`) is read under its new name; a tied name the other side lists is read as
the name it is tied to. One assembled tensor at a time is in memory."""

from __future__ import annotations

__all__ = ["ModelNamedCheckpoint", "dcp_shapes", "under_names_of"]

from collections.abc import Mapping, Sequence

import torch

from reinit.errors import CheckpointError, ReinitError
from reinit.io.checkpoint import Checkpoint, ConfigDict, TensorRef
from reinit.io.formats import DcpBox, tensor_to_bytes
from reinit.planning.dcp_names import DcpNames, dcp_names


class ModelNamedCheckpoint(Checkpoint):
    """`base` under the model's names: each name of `placed` (base's name -> its box of the
    model's tensor) read as part of that tensor; `aliases` (a model name -> the name read for
    it) add the tied names; every other tensor is base's own."""

    def __init__(self, base: Checkpoint, names: DcpNames):
        self.base = base
        self.source = base.source
        self.kind = base.kind
        self.placed = dict(names.chunks)
        self._boxes: dict[str, list[tuple[str, DcpBox]]] = {}
        for name, box in self.placed.items():
            self._boxes.setdefault(box.name, []).append((name, box))
        self._order = self._names(dict(names.aliases))
        self._alias = {a: k for a, k in names.aliases.items() if a in self._order}

    def _names(self, aliases: Mapping[str, str]) -> list[str]:
        out: list[str] = []
        for name in self.base.names():
            target = self.placed[name].name if name in self.placed else name
            if target not in out:
                out.append(target)
        return out + [a for a, kept in aliases.items() if kept in out and a not in out]

    def names(self) -> list[str]:
        return list(self._order)

    def ref(self, name: str) -> TensorRef:
        name = self._alias.get(name, name)
        parts = self._boxes.get(name)
        if parts is None:
            if name not in self.base or name in self.placed:
                raise CheckpointError(f"{self.source}: has no tensor '{name}'")
            return self.base.ref(name)
        first = self.base.ref(parts[0][0])
        return TensorRef(name, first.dtype_name, parts[0][1].whole)

    def read(self, name: str) -> torch.Tensor:
        ref = self.ref(name)
        parts = self._boxes.get(ref.name)
        if parts is None:
            return self.base.read(ref.name)
        whole = torch.empty(ref.shape, dtype=ref.dtype)
        for part, box in parts:
            at = tuple(slice(o, o + s) for o, s in zip(box.offsets, box.sizes, strict=True))
            whole[at] = box.arrange(self.base.read(part))
        return whole

    def read_bytes(self, name: str) -> bytes | bytearray | memoryview:
        ref = self.ref(name)
        if ref.name not in self._boxes:
            return self.base.read_bytes(ref.name)
        return tensor_to_bytes(self.read(name))

    def config(self) -> ConfigDict | None:
        return self.base.config()

    def close(self) -> None:
        self.base.close()


def under_names_of(ckpt: Checkpoint, other: Checkpoint, where: str) -> Checkpoint:
    """`ckpt` seen under `other`'s names (a `ModelNamedCheckpoint`) when `other` holds, under
    the model's `state_dict()` names, the tensors `ckpt` holds under `save_pretrained`'s (by
    the model `ckpt`'s config.json describes; `where`: its path, for errors); else `ckpt`.
    Asked only when each side holds names the other lacks (the model is built then)."""
    theirs = [n for n in other.names() if n not in ckpt]
    if not theirs or all(n in other for n in ckpt.names()):
        return ckpt
    names = _placement(ckpt, where)
    if names is None or not names.chunks:
        return ckpt
    boxes = {b.name: b for b in names.chunks.values()}
    for target, box in boxes.items():
        if target not in other or tuple(other.ref(target).shape) != tuple(box.whole):
            return ckpt  # `other` does not hold this tensor as the model does
    if any(n in other for n in names.chunks):
        return ckpt  # both forms at once: names already match where they can
    return ModelNamedCheckpoint(ckpt, names)


def _placement(ckpt: Checkpoint, where: str) -> DcpNames | None:
    """Where a DCP written from `ckpt` would put each tensor (`dcp_names`), by the model of
    its config.json; None without one that reinit builds."""
    return _placed(ckpt.refs(), ckpt.config(), where)


def _placed(refs: Sequence[TensorRef], config: ConfigDict | None, where: str) -> DcpNames | None:
    """`dcp_names` of `refs` by the model `config` describes; None without one reinit builds."""
    if config is None or "model_type" not in config:
        return None
    from reinit.planning.model_load import model_of_config

    try:
        model = model_of_config(where, config, internal=True)
        view = model.align([r.name for r in refs], {r.name: r.shape for r in refs})
    except ReinitError:
        return None
    return dcp_names(view, [(r.name, r.dtype_name, tuple(r.shape)) for r in refs])


def dcp_shapes(
    refs: Sequence[TensorRef], config: ConfigDict | None, where: str
) -> dict[str, tuple[int, ...]] | None:
    """The names and shapes of a `--format dcp` output of `refs` written under the model's
    `state_dict()` names (by the model `config` describes: the output's); None when such an
    output keeps the checkpoint's names (or there is no model to ask)."""
    names = _placed(refs, config, where)
    if names is None or not names.chunks:
        return None
    shapes = {r.name: tuple(r.shape) for r in refs if r.name not in names.chunks}
    shapes.update({b.name: tuple(b.whole) for b in names.chunks.values()})
    shapes.update({alias: shapes[to] for alias, to in names.aliases.items() if to in shapes})
    return shapes
