"""Checkpoint readers: one safetensors file, a torch file, a Hugging Face model directory (local
or on the Hub). All lazy: names, dtypes and shapes come from headers and indexes; tensor bytes
are read one tensor at a time, on demand, so memory stays at about one tensor.

The directory reader gets its files from a provider (`LocalFiles` or `hub.HubRepo`), which is
how a Hub repo downloads only the index and then only the shards that hold needed tensors."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from reinit.errors import CheckpointError, InputNotFoundError, UnsafePickleError
from reinit.io.confine import check_relname, local_file, relname_problem, require_regular
from reinit.io.safetensors_format import MAX_TENSORS, TensorInfo, dtype_size, read_header
from reinit.io.shardindex import ShardIndex, check_shard, read_index
from reinit.io.trust import NO_TRUST, pickle_trust

CHUNK_BYTES = 16 << 20  # streaming unit: big enough for full-speed I/O, small against RSS
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Files that hold weights in some format. A directory output never copies these: they would
# carry the old weights beside the new ones.
WEIGHT_FILE = re.compile(
    r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|onnx|gguf)$|.*\.(safetensors|bin)\.index\.json$"
)


@dataclass(frozen=True)
class TensorRef:
    """A tensor's identity without its data: enough to plan and to lay out the output."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    shard: str = ""  # the file within a directory checkpoint that holds it ("" for one file)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_size(self.dtype)


@dataclass(frozen=True)
class FileSpan:
    """Where a tensor's exact bytes lie in a file, for kernel-side copies."""

    path: str
    fd: int
    start: int
    nbytes: int


class Checkpoint:
    """The interface every reader offers. Subclasses implement the abstract parts."""

    source: str = ""  # as the user named it, for messages and the report
    kind: str = ""  # "safetensors" | "torch" | "directory"

    def names(self) -> list[str]:
        """Tensor names in storage order; cheap (no shard is opened for a sharded index)."""
        raise NotImplementedError

    def ref(self, name: str) -> TensorRef:
        raise NotImplementedError

    def refs(self) -> list[TensorRef]:
        return [self.ref(n) for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._name_set()

    def _name_set(self) -> set[str]:
        cached = getattr(self, "_names_cache", None)
        if cached is None:
            cached = set(self.names())
            self._names_cache = cached
        return cached

    def read(self, name: str) -> torch.Tensor:
        """The tensor as an independent CPU tensor (safe to modify)."""
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | bytearray | memoryview:
        """The tensor's bytes, C-contiguous little-endian: what a safetensors file stores."""
        raise NotImplementedError

    def span(self, name: str) -> FileSpan | None:
        """Where the bytes lie in a file, when they lie there exactly; else None."""
        return None

    def iter_chunks(self, name: str, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        """The tensor's bytes in pieces of at most `size` bytes (a multiple of every element
        size), so a tensor of any size passes through bounded memory."""
        yield from iter_chunks(self.read_bytes(name), size)

    def shards(self) -> list[str]:
        return [""]

    def metadata(self, shard: str = "") -> dict[str, str]:
        return {}

    def aliases(self) -> dict[str, str]:
        """Tied tensors: name -> the first name sharing its storage (only for torch files)."""
        return {}

    def extra_files(self) -> list[str]:
        """Non-weight files a directory output copies (relative names)."""
        return []

    def fetch_extra(self, relname: str) -> Path:
        raise NotImplementedError

    def config(self) -> dict[str, Any] | None:
        """The model's config.json (Hugging Face layout) when the checkpoint has one: some
        schemes read arguments from it (scaled_normal's layers, small_init's dim)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A config.json as a dict, or None when absent or not a JSON object (a config we cannot
    read is not an error: only schemes that need it say so, naming what to pass instead)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _beside_config(path: str) -> dict[str, Any] | None:
    """config.json in the same folder as a single weight file (the HF layout)."""
    candidate = Path(path).parent / "config.json"
    return read_config_file(candidate) if candidate.is_file() else None


def _pread_into(fd: int, buf: bytearray | memoryview, offset: int, where: str) -> None:
    view = memoryview(buf)
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as e:
            raise CheckpointError(f"{where}: cannot read ({e.strerror})") from None
        if n == 0:
            raise CheckpointError(f"{where}: unexpected end of file; the file is truncated")
        done += n


def tensor_from_bytes(buf: bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not buf:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


class SafetensorsFile(Checkpoint):
    """One safetensors file, read with positioned reads (no whole-file mapping)."""

    kind = "safetensors"

    def __init__(self, path: str | os.PathLike[str], shard: str = "", source: str | None = None):
        self.path = os.fspath(path)
        self.source = source if source is not None else self.path
        self.shard = shard
        self.header = read_header(self.path)
        self._infos: dict[str, TensorInfo] = {t.name: t for t in self.header.tensors}
        self.fd = os.open(self.path, os.O_RDONLY)

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: has no tensor '{name}'") from None

    def ref(self, name: str) -> TensorRef:
        t = self.info(name)
        return TensorRef(t.name, t.dtype, t.shape, self.shard)

    def read_bytes(self, name: str) -> bytearray:
        t = self.info(name)
        buf = bytearray(t.nbytes)
        _pread_into(self.fd, buf, t.start, self.path)
        return buf

    def read(self, name: str) -> torch.Tensor:
        t = self.info(name)
        return tensor_from_bytes(self.read_bytes(name), t.dtype, t.shape)

    def span(self, name: str) -> FileSpan:
        t = self.info(name)
        return FileSpan(self.path, self.fd, t.start, t.nbytes)

    def iter_chunks(self, name: str, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        t = self.info(name)
        for off in range(t.start, t.end, size):
            buf = bytearray(min(size, t.end - off))
            _pread_into(self.fd, buf, off, self.path)
            yield memoryview(buf)

    def shards(self) -> list[str]:
        return [self.shard]

    def metadata(self, shard: str = "") -> dict[str, str]:
        return dict(self.header.metadata)

    def config(self) -> dict[str, Any] | None:
        return _beside_config(self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- torch files ------------------------------------------------------------------------

_STATE_DICT_KEYS = ("state_dict", "model", "module")


def unwrap_state_dict(obj: object, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, unwrapping `state_dict` / `model` / `module` nestings
    (Lightning, DeepSpeed, training-loop checkpoints). Non-tensor entries are ignored."""
    while isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        nested = next(
            (obj[k] for k in _STATE_DICT_KEYS if k in obj and isinstance(obj[k], Mapping)), None
        )
        if nested is not None and not tensors:
            obj = nested
            continue
        if tensors:
            check_tensor_names(tensors, where)
            return tensors
        raise CheckpointError(
            f"{where}: holds no tensors (keys: {', '.join(map(str, list(obj)[:8]))}); "
            "expected a state dict"
        )
    raise CheckpointError(f"{where}: holds a {type(obj).__name__}, not a state dict")


def check_tensor_names(tensors: Mapping[object, object], where: str) -> None:
    """The same name rules as the safetensors validator: string keys that UTF-8 can encode
    (a pickle may hold lone surrogates, which could be neither printed nor written to a
    safetensors header), and at most `MAX_TENSORS` of them."""
    if len(tensors) > MAX_TENSORS:
        raise CheckpointError(
            f"{where}: holds {len(tensors)} tensors, over reinit's limit of {MAX_TENSORS} per "
            "file; split the checkpoint into shards (a model folder with an index)"
        )
    for k in tensors:
        if not isinstance(k, str):
            raise CheckpointError(f"{where}: tensor keys must be strings, found {k!r}")
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            shown = k.encode("utf-8", "backslashreplace").decode("utf-8")
            raise CheckpointError(
                f"{where}: tensor name '{shown}' holds a lone surrogate, which no file can "
                "store; rename it with the code that made the file"
            ) from None


# torch.load(weights_only=True) had a remote-code-execution flaw before 2.6 (CVE-2025-32434);
# below this floor we refuse torch files rather than trust the weights-only loader.
TORCH_FLOOR = (2, 6)
_ZIP_MAGIC = b"PK\x03\x04"


def torch_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def load_torch_file(path: str, unsafe: bool = False, mmap: bool | None = None) -> object:
    """`torch.load` with weights_only (never executing code from the file), memory-mapped when
    the file is in the zip format. `unsafe=True` (`--unsafe-pickle`) lifts weights_only.

    Every failure is a `CheckpointError` (an `UnsafePickleError` when the file needs globals
    the weights-only unpickler refuses): torch.load's own failures range from KeyError to
    struct.error on garbage input, none of which may reach the user as a traceback."""
    if not unsafe and torch_version() < TORCH_FLOOR:
        raise UnsafePickleError(
            f"{path}: torch {torch.__version__} has a code-execution flaw in its weights-only "
            "loader (CVE-2025-32434); upgrade to torch>=2.6 to read torch files"
        )
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not magic:
        raise CheckpointError(f"{path}: file is empty; it is truncated or not a torch file")
    if magic == _ZIP_MAGIC and not is_zip:
        raise CheckpointError(
            f"{path}: the zip archive is cut short (no central directory at its end); "
            "the file is truncated, download or save it again"
        )
    use_mmap = is_zip if mmap is None else (mmap and is_zip)
    if use_mmap and _has_compressed_records(path):
        # torch.save stores records uncompressed, and torch's mmap path maps each record's raw
        # bytes as the tensor: a re-zipped (DEFLATE) file would read as garbage. torch's
        # non-mapped reader decompresses, at the cost of holding the file's tensors in memory
        # (as for the legacy non-zip format).
        use_mmap = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not unsafe, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" not in text:
            raise CheckpointError(
                f"{path}: not a readable torch file ({_first_line(e)}); it may be truncated"
            ) from None
        found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
        if found:
            what = (
                f"refusing to unpickle {', '.join(found)}: loading it would run code from the file"
            )
        else:
            detail = _weights_only_detail(text)
            what = (
                f"the weights-only unpickler refuses it ({detail}); it may be a plain pickle "
                "rather than a torch.save file"
            )
        raise UnsafePickleError(
            f"{path}: {what}. Convert it to safetensors with the code that made it, or pass "
            f"--unsafe-pickle {path} if you trust its author"
        ) from None
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable torch file ({type(e).__name__}: {_first_line(e)}); "
            "it may be truncated or corrupt"
        ) from None


def _has_compressed_records(path: str) -> bool:
    """Whether any record of the zip archive at `path` is compressed (not ZIP_STORED)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(info.compress_type != zipfile.ZIP_STORED for info in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{path}: not a readable torch file (its zip directory: {_first_line(e)}); "
            "it may be truncated or corrupt"
        ) from None


def _weights_only_detail(text: str) -> str:
    """The line after torch's 'WeightsUnpickler error:' (e.g. 'Unsupported operand 149')."""
    _, _, rest = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in rest.splitlines() if ln.strip()]
    return lines[0] if lines else "unsupported content"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class TorchFile(Checkpoint):
    """A `.bin/.pt/.pth/.ckpt` state dict. Tensors stay memory-mapped (zip format) until read."""

    kind = "torch"

    def __init__(self, path: str | os.PathLike[str], shard: str = "", unsafe: bool = False):
        self.path = os.fspath(path)
        self.source = self.path
        self.shard = shard
        self.tensors = unwrap_state_dict(load_torch_file(self.path, unsafe), self.path)
        self._aliases = _find_aliases(self.tensors)

    def names(self) -> list[str]:
        return list(self.tensors)

    def _get(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: has no tensor '{name}'") from None

    def ref(self, name: str) -> TensorRef:
        t = self._get(name)
        return TensorRef(name, t.dtype, tuple(t.shape), self.shard)

    def read(self, name: str) -> torch.Tensor:
        return self._get(name).detach().clone(memory_format=torch.contiguous_format)

    def read_bytes(self, name: str) -> memoryview:
        t = self._get(name).detach().contiguous().reshape(-1)
        if t.numel() == 0:
            return memoryview(b"")
        return memoryview(t.view(torch.uint8).numpy()).cast("B")

    def shards(self) -> list[str]:
        return [self.shard]

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def config(self) -> dict[str, Any] | None:
        return _beside_config(self.path)


class StateDictCheckpoint(Checkpoint):
    """An in-memory state dict as a checkpoint: what `apply_to_state_dict`, `apply_to_module`
    and multi-step recipes read from. Tensors may live on any device; reads are CPU copies.

    `like` lends its layout (shards, metadata, extra files, config, source name) so that a
    recipe's final step writes exactly what applying to a file of these tensors would."""

    kind = "memory"

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        *,
        source: str = "<state_dict>",
        like: Checkpoint | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        check_tensor_names(tensors, source)
        self.tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        self.like = like
        self.source = like.source if like is not None else source
        if like is not None:
            self.kind = like.kind
            self.layout = getattr(like, "layout", None)
            self._shard_of = {r.name: r.shard for r in like.refs()}
        else:
            self._shard_of = {}
        self._config = dict(config) if config is not None else None
        self._aliases = _find_aliases(self.tensors)

    def names(self) -> list[str]:
        return list(self.tensors)

    def _get(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: has no tensor '{name}'") from None

    def ref(self, name: str) -> TensorRef:
        t = self._get(name)
        shard = self._shard_of.get(name, self.shards()[0])
        return TensorRef(name, t.dtype, tuple(t.shape), shard)

    def read(self, name: str) -> torch.Tensor:
        t = self._get(name).detach()
        return t.to("cpu", copy=True, memory_format=torch.contiguous_format)

    def read_bytes(self, name: str) -> memoryview:
        t = self._get(name).detach().cpu().contiguous().reshape(-1)
        if t.numel() == 0:
            return memoryview(b"")
        return memoryview(t.view(torch.uint8).numpy()).cast("B")

    def shards(self) -> list[str]:
        return self.like.shards() if self.like is not None else [""]

    def metadata(self, shard: str = "") -> dict[str, str]:
        return self.like.metadata(shard) if self.like is not None else {}

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def extra_files(self) -> list[str]:
        return self.like.extra_files() if self.like is not None else []

    def fetch_extra(self, relname: str) -> Path:
        if self.like is None:
            raise CheckpointError(f"{self.source}: has no file {relname}")
        return self.like.fetch_extra(relname)

    def config(self) -> dict[str, Any] | None:
        if self._config is not None:
            return dict(self._config)
        return self.like.config() if self.like is not None else None


def _find_aliases(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Names whose tensor is the same view of the same storage as an earlier name (tied
    weights such as embeddings shared with the LM head)."""
    seen: dict[tuple[Any, ...], str] = {}
    out: dict[str, str] = {}
    for name, t in tensors.items():
        if t.numel() == 0:
            continue
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
        if key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    return out


# --- directories ------------------------------------------------------------------------


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


def detect_layout(files: list[str], where: str) -> DirLayout:
    """Which weights a Hugging Face directory holds; safetensors preferred over torch files."""
    present = set(files)
    top = [f for f in files if "/" not in f and os.sep not in f]
    if "model.safetensors.index.json" in present:
        return DirLayout("safetensors", "model.safetensors.index.json", None)
    idx = [f for f in top if f.endswith(".safetensors.index.json")]
    if len(idx) == 1:
        return DirLayout("safetensors", idx[0], None)
    if "model.safetensors" in present:
        return DirLayout("safetensors", None, "model.safetensors")
    if "pytorch_model.bin.index.json" in present:
        return DirLayout("torch", "pytorch_model.bin.index.json", None)
    if "pytorch_model.bin" in present:
        return DirLayout("torch", None, "pytorch_model.bin")
    single = [f for f in top if f.endswith(".safetensors")]
    if len(single) == 1:
        return DirLayout("safetensors", None, single[0])
    raise InputNotFoundError(
        f"{where}: no model weights found; expected model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json"
    )


class DirectoryCheckpoint(Checkpoint):
    """A Hugging Face model directory: one weight file, or an index with shards. Shards are
    opened (and, on the Hub, downloaded) only when a tensor in them is first needed."""

    kind = "directory"

    def __init__(
        self, provider: FileProvider, source: str | None = None, unsafe: object = NO_TRUST
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

    def refs(self) -> list[TensorRef]:
        """All refs in shard order, and within a shard in its storage order."""
        out: list[TensorRef] = []
        for shard in sorted(set(self.weight_map.values())):
            ck = self._shard(shard)  # checked: holds exactly the index's names for it
            out.extend(ck.ref(n) for n in ck.names())
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

    def extra_files(self) -> list[str]:
        return [f for f in self._files if not WEIGHT_FILE.match(f)]

    def fetch_extra(self, relname: str) -> Path:
        return self.provider.fetch(relname)

    def config(self) -> dict[str, Any] | None:
        if "config.json" not in self._files:
            return None
        return read_config_file(self.provider.fetch("config.json"))

    def close(self) -> None:
        for ck in self._open.values():
            ck.close()
        self._open.clear()


def open_checkpoint(
    source: str | os.PathLike[str], *, unsafe_pickle: object = NO_TRUST, progress: bool = True
) -> Checkpoint:
    """Open any source form of DESIGN §1: a safetensors file, a torch file, a Hugging Face
    directory, or `hf://OWNER/NAME[@REVISION][/SUBFOLDER]`. `progress=False` silences the
    Hub's download bars for this source (the CLI's `--quiet`, or stderr not a terminal).

    `unsafe_pickle` names the torch files (or model folders) that may run code while
    loading (see `reinit.io.trust`); this source is loaded unsafely only if it is among them."""
    text = os.fspath(source)
    trust = pickle_trust(unsafe_pickle)
    if text.startswith("hf://"):
        from reinit.io.hub import HubRepo, parse_hf_url

        ref = parse_hf_url(text)
        return DirectoryCheckpoint(HubRepo(ref, progress=progress), source=ref.url, unsafe=trust)
    path = Path(text)
    if path.is_dir():
        return DirectoryCheckpoint(LocalFiles(path), source=text, unsafe=trust)
    if not path.exists():
        raise InputNotFoundError(f"{text}: no such file or directory")
    require_regular(path)  # a FIFO would block the reader forever
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return SafetensorsFile(path)
    if suffix in TORCH_SUFFIXES:
        return TorchFile(path, unsafe=trust.allows(path))
    raise InputNotFoundError(
        f"{text}: unknown checkpoint type {suffix or '(no suffix)'}; use a .safetensors, "
        ".bin/.pt/.pth/.ckpt file, a Hugging Face model directory or hf://OWNER/NAME"
    )


def iter_chunks(buf: bytes | bytearray | memoryview, size: int) -> Iterator[memoryview]:
    view = memoryview(buf).cast("B")
    for i in range(0, len(view), size):
        yield view[i : i + size]
