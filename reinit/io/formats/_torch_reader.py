"""Torch checkpoints (`.bin/.pt/.pth/.ckpt`): `load_torch_file` (torch.load with weights_only,
every failure a one-line `CheckpointError`), `unwrap_state_dict` (Lightning / DeepSpeed /
training-loop nestings) and `TorchFile`, the loaded state dict as a `Checkpoint`."""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile

import torch

from reinit.errors import CheckpointError, UnsafePickleError
from reinit.io.checkpoint import TORCH_SUFFIXES, ConfigDict, beside_config
from reinit.io.formats._nested_state import beside_state, find_state
from reinit.io.memory import TensorDictCheckpoint, check_tensor_names
from reinit.text import one_line

__all__ = [
    "TORCH_FLOOR",
    "TORCH_SUFFIXES",
    "TorchFile",
    "load_torch_file",
    "torch_version",
    "unwrap_state_dict",
]


def unwrap_state_dict(
    obj: object, where: str, key: str = "", flag: str = "--key"
) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, found inside training-checkpoint nestings by the one rule
    of `find_state` (nested_state) (`key`: a dotted path to start from). Non-tensor
    entries are ignored."""
    state = find_state(obj, where, key, flag)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    check_tensor_names(tensors, where)
    return tensors  # type: ignore[return-value]


def left_out_note(obj: object, where: str, key: str = "", flag: str = "--key") -> str | None:
    """A warning naming the entries of the state dict `unwrap_state_dict` takes that are not
    tensors (they are not written), or None when there are none."""
    state = find_state(obj, where, key, flag)
    other = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not other:
        return None
    listed = ", ".join(other[:8]) + (f" and {len(other) - 8} more" if len(other) > 8 else "")
    return f"{where}: left out {len(other)} entries that are not tensors: {listed}"


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
            # weights_only unless the command line named this file with --unsafe-pickle
            safe, cpu = not unsafe, "cpu"
            return torch.load(path, cpu, weights_only=safe, mmap=use_mmap)  # reviewed: see above
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" not in text:
            raise CheckpointError(
                f"{path}: not a readable torch file ({one_line(e)}); it may be truncated"
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
            f"{path}: not a readable torch file ({type(e).__name__}: {one_line(e)}); "
            "it may be truncated or corrupt"
        ) from None


def _has_compressed_records(path: str) -> bool:
    """Whether any record of the zip archive at `path` is compressed (not ZIP_STORED)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(info.compress_type != zipfile.ZIP_STORED for info in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{path}: not a readable torch file (its zip directory: {one_line(e)}); "
            "it may be truncated or corrupt"
        ) from None


def _weights_only_detail(text: str) -> str:
    """The line after torch's 'WeightsUnpickler error:' (e.g. 'Unsupported operand 149')."""
    _, _, rest = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in rest.splitlines() if ln.strip()]
    return lines[0] if lines else "unsupported content"


class TorchFile(TensorDictCheckpoint):
    """A `.bin/.pt/.pth/.ckpt` state dict. Tensors stay memory-mapped (zip format) until read."""

    kind = "torch"

    def __init__(
        self,
        path: str | os.PathLike[str],
        shard: str = "",
        unsafe: bool = False,
        key: str = "",
        flag: str = "--key",
    ):
        self.path = os.fspath(path)
        self.shard = shard
        loaded = load_torch_file(self.path, unsafe)
        super().__init__(unwrap_state_dict(loaded, self.path, key, flag), self.path)
        note = left_out_note(loaded, self.path, key, flag)
        self._left_out = (note,) if note else ()
        self._beside = beside_state(loaded, find_state(loaded, self.path, key, flag))

    def left_out(self) -> tuple[str, ...]:
        return self._left_out

    def beside_state(self) -> tuple[str, ...]:
        return self._beside

    def shard_of(self, name: str) -> str:
        return self.shard

    def shards(self) -> list[str]:
        return [self.shard]

    def config(self) -> ConfigDict | None:
        return beside_config(self.path)
