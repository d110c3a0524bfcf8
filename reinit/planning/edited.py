"""The checkpoint as surgery left it (`EditedCheckpoint`): dropped names gone, renamed ones under
their new names, resized ones at their new shape, added ones generated on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from reinit.errors import CheckpointError
from reinit.io.checkpoint import (
    CHUNK_BYTES,
    Checkpoint,
    ConfigDict,
    FileSpan,
    TensorRef,
    iter_chunks,
)
from reinit.io.formats import tensor_to_bytes
from reinit.planning.resize import Resized, grows_rows_only, new_rows, resized_value
from reinit.planning.surgery import Edited
from reinit.schemes import generate

__all__ = ["EditedCheckpoint", "original_of"]


class EditedCheckpoint(Checkpoint):
    """The source as surgery left it. Everything but the names (and resized shapes) is the
    source's: shards, metadata, extra files. Added tensors live in the last shard and are
    generated on demand (seeded by the run's seed and their name, as any re-initialized
    tensor); resized ones are made whole on each read (`reinit.planning.resize`)."""

    def __init__(self, base: Checkpoint, edited: Edited, seed: int = 0, device: str = "cpu"):
        self.base = base
        self.edited = edited
        self.seed = seed
        self.device = device
        self.source = base.source
        self.kind = base.kind
        self._refs = {r.name: r for r in edited.refs}

    def __getattr__(self, attr: str) -> object:
        # reader-specific attributes (a directory's `layout`, a file's `path`)
        if attr == "base":
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def names(self) -> list[str]:
        return list(self._refs)

    def ref(self, name: str) -> TensorRef:
        try:
            return self._refs[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: has no tensor '{name}'") from None

    def refs(self) -> list[TensorRef]:
        return list(self.edited.refs)

    def original(self, name: str) -> torch.Tensor:
        """The source tensor behind `name` as it was before --resize (not for an added one)."""
        self.ref(name)
        return self.base.read(self.edited.origin[name])

    def _made(self, name: str) -> bool:
        """Whether `name`'s values are made here (added or resized), not the source's bytes."""
        return name in self.edited.added or name in self.edited.resized

    def _make(self, name: str) -> torch.Tensor:
        resize = self.edited.resized.get(name)
        if resize is not None:
            return resized_value(self.original(name), resize, self.seed, self.device)
        a = self.edited.added[name]
        return generate(a.scheme, a.name, a.shape, a.dtype, self.seed, self.device)

    def grown_rows(self, name: str) -> Resized | None:
        """`name`'s resize when only its rows grow and no rule overrides its values: its old
        bytes lie in the source as the new tensor's leading bytes (`source_of`), and only the
        new rows are made (`new_rows`), so it streams instead of being made whole."""
        r = self.edited.resized.get(name)
        return r if r is not None and grows_rows_only(r) else None

    def new_rows(self, name: str) -> torch.Tensor:
        """The rows a `grown_rows` resize appends (the old values are read only for
        mean_resize)."""
        r = self.edited.resized[name]
        return new_rows(r, lambda: self.original(name), self.seed, self.device)

    def source_of(self, name: str) -> tuple[Checkpoint, str]:
        """The checkpoint and name `name`'s source bytes are read from (not for an added one)."""
        self.ref(name)
        return self.base, self.edited.origin[name]

    def read(self, name: str) -> torch.Tensor:
        if self._made(name):
            return self._make(name)
        self.ref(name)
        return self.base.read(self.edited.origin[name])

    def read_bytes(self, name: str) -> bytes | bytearray | memoryview:
        if self._made(name):
            return tensor_to_bytes(self._make(name))
        self.ref(name)
        return self.base.read_bytes(self.edited.origin[name])

    def iter_chunks(self, name: str, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        if self._made(name):
            return iter_chunks(self.read_bytes(name), size)
        self.ref(name)
        return self.base.iter_chunks(self.edited.origin[name], size)

    def span(self, name: str) -> FileSpan | None:
        if self._made(name):
            return None
        return self.base.span(self.edited.origin[name])

    def shards(self) -> list[str]:
        return self.base.shards()

    def metadata(self, shard: str = "") -> dict[str, str]:
        return self.base.metadata(shard)

    def left_out(self) -> tuple[str, ...]:
        return self.base.left_out()

    def beside_state(self) -> tuple[str, ...]:
        return self.base.beside_state()

    def aliases(self) -> dict[str, str]:
        new_name = {old: new for new, old in self.edited.origin.items()}
        return {
            new_name[a]: new_name[b]
            for a, b in self.base.aliases().items()
            if a in new_name and b in new_name
        }

    def overlaps(self) -> dict[str, dict[str, bool]]:
        new_name = {old: new for new, old in self.edited.origin.items()}
        return {
            new_name[a]: {new_name[b]: sure for b, sure in others.items() if b in new_name}
            for a, others in self.base.overlaps().items()
            if a in new_name and any(b in new_name for b in others)
        }

    def extra_files(self) -> list[str]:
        return self.base.extra_files()

    def fetch_extra(self, relname: str) -> Path:
        return self.base.fetch_extra(relname)

    def config(self) -> ConfigDict | None:
        """The source's config.json: what planning reads from it (`rows=labels`' id2label,
        `auto` scheme arguments, the reference's `initializer_range`) is the model's before
        the surgery; the output's config.json follows the surgery separately."""
        return self.base.config()

    def close(self) -> None:
        self.base.close()


def original_of(ckpt: Checkpoint, name: str) -> torch.Tensor | None:
    """The values of `name` before `--resize` changed its shape, when it did (the report's
    `before`); None otherwise."""
    if isinstance(ckpt, EditedCheckpoint) and name in ckpt.edited.resized:
        return ckpt.original(name)
    return None
