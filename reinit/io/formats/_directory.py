"""A Hugging Face model folder as a `Checkpoint`: one weight file, or an index with shards,
local (`LocalFiles`) or on the Hub (`hub.HubRepo`). The files come from a `FileProvider`, which
is how a Hub repo downloads only the index and then only the shards that hold needed tensors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reinit.errors import CheckpointError, InputNotFoundError
from reinit.io.checkpoint import (
    CHUNK_BYTES,
    Checkpoint,
    ConfigDict,
    FileSpan,
    FileTensor,
    TensorRef,
    read_config_file,
)
from reinit.io.confine import check_relname, local_file, relname_problem
from reinit.io.formats._safetensors_reader import SafetensorsFile
from reinit.io.formats._shardindex import ShardIndex, check_shard, read_index
from reinit.io.trust import NO_TRUST, TrustSpec, pickle_trust

if TYPE_CHECKING:
    import torch

__all__ = [
    "WEIGHT_FILE",
    "holds_weights",
    "DirLayout",
    "DirectoryCheckpoint",
    "FileProvider",
    "LocalFiles",
    "detect_layout",
]

# Files that hold weights in some format. A directory output never copies these: they would
# carry the old weights beside the new ones.
WEIGHT_FILE = re.compile(
    r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|onnx|gguf)$|.*\.(safetensors|bin)\.index\.json$"
)


def holds_weights(path: str) -> bool:
    """A local folder with a safetensors, torch or index file of weights in it (`probe DIR`
    probes those weights by default)."""
    if not os.path.isdir(path):
        return False
    return any(
        re.match(r".*\.(safetensors|bin|pt|pth)$|.*\.index\.json$", f) for f in os.listdir(path)
    )


class FileProvider(Protocol):
    """Where a directory checkpoint's files come from (a local folder or a Hub repo)."""

    @property
    def display(self) -> str: ...
    def list_files(self) -> list[str]: ...
    def exists(self, relname: str) -> bool: ...
    def fetch(self, relname: str) -> Path: ...


class LocalFiles:
    """A local model folder. Every file it hands out lies inside the folder and is a regular
    file (`confine.local_file`): a name or link that leaves the folder, a FIFO or a device is
    refused, so a folder from someone else cannot pull other local files into an output."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    @property
    def display(self) -> str:
        return os.fspath(self.root)

    def list_files(self) -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith("."):
                    out.append(os.path.relpath(os.path.join(dirpath, f), self.root))
        return out

    def exists(self, relname: str) -> bool:
        # exists, not is_file: a FIFO or device under a shard's name is refused by `fetch`
        # as what it is, not reported as missing
        return relname_problem(relname) is None and (self.root / relname).exists()

    def fetch(self, relname: str) -> Path:
        return local_file(self.root, relname, self.display)


@dataclass(frozen=True)
class DirLayout:
    fmt: str  # "safetensors" | "torch"
    index: str | None  # the index file, or None for a single weight file
    single: str | None  # the single weight file when there is no index


# transformers' shard names: model-00001-of-00002.safetensors, pytorch_model-00003-of-00004.bin
_SHARD_NAME = re.compile(r"-(\d+)-of-(\d+)\.[A-Za-z]+$")


def detect_layout(files: list[str], where: str) -> DirLayout:
    """Which weights a Hugging Face directory holds, in the order `from_pretrained` looks:
    `model.safetensors` before its index (an index beside it, left from an earlier save, is
    not what loads), safetensors before torch files."""
    present = set(files)
    top = [f for f in files if "/" not in f and os.sep not in f]
    if "model.safetensors" in present:
        return DirLayout("safetensors", None, "model.safetensors")
    if "model.safetensors.index.json" in present:
        return DirLayout("safetensors", "model.safetensors.index.json", None)
    idx = [f for f in top if f.endswith(".safetensors.index.json")]
    if len(idx) == 1:
        return DirLayout("safetensors", idx[0], None)
    if "pytorch_model.bin" in present:
        return DirLayout("torch", None, "pytorch_model.bin")
    if "pytorch_model.bin.index.json" in present:
        return DirLayout("torch", "pytorch_model.bin.index.json", None)
    single = [f for f in top if f.endswith(".safetensors")]
    if len(single) == 1:
        shard = _SHARD_NAME.search(single[0])
        if shard is not None and int(shard.group(2)) > 1:
            raise CheckpointError(
                f"{where}: {single[0]} is shard {int(shard.group(1))} of {int(shard.group(2))}, "
                "but the folder has no index (model.safetensors.index.json), so the other "
                "shards' tensors would be missed; restore the index or the missing shards"
            )
        return DirLayout("safetensors", None, single[0])
    distcp = sorted(f for f in top if f.endswith(".distcp"))
    if distcp:
        raise CheckpointError(
            f"{where}: holds {distcp[0]} but no .metadata: a torch.distributed.checkpoint save "
            "that never finished (torch writes .metadata last), or its .metadata was removed; "
            "restore it, or use a checkpoint whose save finished"
        )
    raise InputNotFoundError(
        f"{where}: no model weights found; expected model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json"
    )


class DirectoryCheckpoint(Checkpoint):
    """A Hugging Face model directory: one weight file, or an index with shards. Shards are
    opened (and, on the Hub, downloaded) only when a tensor in them is first needed."""

    kind = "directory"

    def __init__(
        self, provider: FileProvider, source: str | None = None, unsafe: TrustSpec = NO_TRUST
    ):
        self.provider = provider
        self.source = source or provider.display
        self.trust = pickle_trust(unsafe)
        self._files = provider.list_files()
        self.layout = detect_layout(self._files, self.source)
        self._open: dict[str, Checkpoint] = {}
        self.index: ShardIndex | None = None
        if self.layout.index is not None:
            self.index = self._read_index(self.layout.index)
            self.index_metadata = dict(self.index.metadata)
            self.weight_map = dict(self.index.weight_map)
        else:
            assert self.layout.single is not None
            only = self._shard(self.layout.single)
            self.index_metadata = {}
            self.weight_map = dict.fromkeys(only.names(), self.layout.single)
        order = {s: i for i, s in enumerate(sorted(set(self.weight_map.values())))}
        self._names = sorted(self.weight_map, key=lambda n: order[self.weight_map[n]])

    def _read_index(self, index: str) -> ShardIndex:
        """The index, validated by the rule `reinit verify` uses (shardindex): shard names are
        plain relative names inside the folder, no tensor is listed twice."""
        where = f"{self.source}/{index}"
        idx = read_index(self.provider.fetch(index), where)
        wm = idx.weight_map
        # Checked now, except for a Hub repo served from the cache (offline): its listing is
        # only what was downloaded, and a shard no rule needs need not be there (`fetch`
        # explains a missing one if it is needed after all).
        if not getattr(self.provider, "offline", False):
            for shard in sorted(set(wm.values())):
                if not self.provider.exists(shard):
                    raise CheckpointError(
                        f"{where}: names shard '{shard}', which is missing from {self.source}"
                    )
        return idx

    def _shard(self, shard: str) -> Checkpoint:
        ck = self._open.get(shard)
        if ck is None:
            check_relname(shard, self.source, "names the shard")
            path = self.provider.fetch(shard)
            if shard.endswith(".safetensors"):
                ck = SafetensorsFile(path, shard=shard, source=f"{self.source}/{shard}")
            else:
                from reinit.io.formats._torch_reader import TorchFile  # torch only for torch shards

                # a shard may run code only when the user named this model or that shard
                unsafe = self.trust.allows(self.source) or self.trust.allows(path)
                ck = TorchFile(path, shard=shard, unsafe=unsafe)
            if self.index is not None:  # one rule with `verify`: nothing silently dropped
                try:
                    check_shard(self.index, shard, ck.names())
                except CheckpointError:
                    ck.close()
                    raise
            self._open[shard] = ck
        return ck

    def _owner(self, name: str) -> Checkpoint:
        try:
            shard = self.weight_map[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: has no tensor '{name}'") from None
        ck = self._shard(shard)
        if name not in ck:
            raise CheckpointError(
                f"{self.source}: the index puts '{name}' in {shard}, but that shard lacks it; "
                "the index or the shard is corrupt"
            )
        return ck

    def names(self) -> list[str]:
        return list(self._names)

    def left_out(self) -> tuple[str, ...]:
        """A safetensors file beside the shards that the index does not name (an adapter, a
        shard of an earlier save): not read and not copied, as transformers ignores it, but
        said rather than dropped silently (`reinit verify` counts it in)."""
        index = self.layout.index
        if index is None:
            return self._index_left_out()
        stray = self._stray(os.path.dirname(index), set(self.weight_map.values()))
        return _left_out(
            self.source,
            stray,
            lambda it, its: (
                f"{index} does not name {it}, so {its} tensors are not read and a "
                f"folder output does not copy {it}"
            ),
        )

    def _stray_beside(self, single: str) -> tuple[str, ...]:
        """Another safetensors file beside the one weight file read (`adapter_model.safetensors`
        beside `model.safetensors`): not read and not copied, as from_pretrained loads the one
        file, but said rather than dropped silently, as beside an index."""
        return _left_out(
            self.source,
            self._stray(os.path.dirname(single), {single}),
            lambda it, its: (
                f"{single} is the weight file read, as from_pretrained loads it, so "
                f"{its} tensors are not read and a folder output does not copy {it}"
            ),
        )

    def _stray(self, here: str, read: set[str]) -> list[str]:
        """The safetensors files in folder `here` other than those `read`, sorted."""
        return [
            f
            for f in sorted(self._files)
            if f.endswith(".safetensors") and f not in read and os.path.dirname(f) == here
        ]

    def _index_left_out(self) -> tuple[str, ...]:
        """An index beside the single weight file read (`model.safetensors` beside
        `model.safetensors.index.json`): from_pretrained loads the single file, and so does
        reinit; the index and its shards are said, not read, and a folder output does not
        copy them."""
        single = self.layout.single or ""
        index, ext = f"{single}.index.json", os.path.splitext(single)[1]
        shards = [f for f in self._files if "/" not in f and f.endswith(ext) and f != single]
        if index not in self._files or not shards:  # an index of the single file alone
            return self._stray_beside(single)
        return (
            f"{self.source}: left out {index} and the shards it names: "
            f"{self.layout.single} beside it is read, as from_pretrained loads it first; a folder output "
            "does not copy them (delete what is stale)",
        )

    def refs(self) -> list[TensorRef]:
        """All refs in shard order, and within a shard in its storage order."""
        out: list[TensorRef] = []
        for shard in sorted(set(self.weight_map.values())):
            ck = self._shard(shard)  # checked: holds exactly the index's names for it
            out.extend(ck.ref(n) for n in ck.names())
        return out

    def file_tensors(self) -> list[FileTensor] | None:
        """As `refs()`, for a folder of safetensors shards (None for torch shards)."""
        if self.layout.fmt != "safetensors":
            return None
        out: list[FileTensor] = []
        for shard in sorted(set(self.weight_map.values())):
            tensors = self._shard(shard).file_tensors()
            if tensors is None:  # an index naming a torch shard among safetensors ones
                return None
            out.extend(tensors)
        return out

    def ref(self, name: str) -> TensorRef:
        return self._owner(name).ref(name)

    def read(self, name: str) -> torch.Tensor:
        return self._owner(name).read(name)

    def read_bytes(self, name: str) -> bytes | bytearray | memoryview:
        return self._owner(name).read_bytes(name)

    def span(self, name: str) -> FileSpan | None:
        return self._owner(name).span(name)

    def iter_chunks(self, name: str, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        return self._owner(name).iter_chunks(name, size)

    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def metadata(self, shard: str = "") -> dict[str, str]:
        return self._shard(shard or self.shards()[0]).metadata()

    def aliases(self) -> dict[str, str]:
        if self.layout.fmt != "torch":  # safetensors shards cannot alias (the validator refuses)
            return {}
        out: dict[str, str] = {}
        for shard in self.shards():
            out.update(self._shard(shard).aliases())
        return out

    def overlaps(self) -> dict[str, dict[str, bool]]:
        if self.layout.fmt != "torch":
            return {}
        out: dict[str, dict[str, bool]] = {}
        for shard in self.shards():  # shards are separate files: views of one storage share one
            out.update(self._shard(shard).overlaps())
        return out

    def extra_files(self) -> list[str]:
        return [f for f in self._files if not WEIGHT_FILE.match(f)]

    def fetch_extra(self, relname: str) -> Path:
        return self.provider.fetch(relname)

    def config(self) -> ConfigDict | None:
        if "config.json" not in self._files:
            return None
        return read_config_file(self.provider.fetch("config.json"))

    def close(self) -> None:
        for ck in self._open.values():
            ck.close()
        self._open.clear()


def _left_out(source: str, stray: list[str], why: Callable[[str, str], str]) -> tuple[str, ...]:
    """The one warning line naming the files `stray` (up to four) that a read leaves out, and
    `why(it, its)`, worded for one file or several; none when nothing is left out."""
    if not stray:
        return ()
    listed = ", ".join(stray[:4]) + (f" and {len(stray) - 4} more" if len(stray) > 4 else "")
    it, its = ("it", "its") if len(stray) == 1 else ("them", "their")
    return (f"{source}: left out {listed}: {why(it, its)}",)
