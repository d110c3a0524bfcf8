"""Which reader a source names (docs/reference.md): `open_checkpoint` turns what the user typed (a
safetensors file, a torch file, a Hugging Face folder or `hf://OWNER/NAME[@REVISION][/SUB]`)
into an open `Checkpoint`. Opening a safetensors file or folder imports no torch."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from reinit.errors import InputNotFoundError, UsageError
from reinit.io.checkpoint import TORCH_SUFFIXES, Checkpoint
from reinit.io.confine import require_regular
from reinit.io.formats import (
    SAFETENSORS_SUFFIXES,
    DirectoryCheckpoint,
    LocalFiles,
    SafetensorsFile,
    is_dcp_dir,
    zero_tag_dir,
)
from reinit.io.hub import HubRepo, is_hf_url, parse_hf_url
from reinit.io.trust import NO_TRUST, TrustSpec, pickle_trust

__all__ = ["open_checkpoint", "source_text"]


def source_text(source: object) -> str:
    """A source given to the API as the text of its path or URL; anything but a str or a
    path-like of str is a `UsageError` (not torch's or pathlib's TypeError); so is an empty
    one (`"$MODEL"` unset), which pathlib reads as the current directory."""
    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if text == "":
        raise UsageError(
            "the source path is empty (an unset variable?); give a checkpoint file, a model "
            "folder or hf://OWNER/NAME (an empty path is never read as the current directory)"
        )
    if isinstance(text, str):
        return text
    raise UsageError(
        f"source must be a path (str or os.PathLike) or hf://OWNER/NAME, got {type(source).__name__}"
    )


def open_checkpoint(
    source: str | os.PathLike[str],
    *,
    unsafe_pickle: TrustSpec = NO_TRUST,
    progress: bool = True,
    key: str = "",
    key_flag: str = "--key",
) -> Checkpoint:
    """Open any source form (docs/reference.md, "Sources and outputs").

    Args:
        source: a safetensors file, a torch file (.bin/.pt/.pth/.ckpt), a Hugging Face model
            directory, or `hf://OWNER/NAME[@REVISION][/SUBFOLDER]`.
        unsafe_pickle: the torch files (or model folders) that may run code while loading
            (trust names a file: docs/guarantees.md); this source is loaded unsafely only if it is among them.
        progress: False silences the Hub's download bars for this source (the CLI's
            `--quiet`, or stderr not a terminal).
        key: the dotted path of the state dict inside a torch file (`--key`); "" finds a
            well-known nest itself (`model_state_dict`, `state_dict`, `model`, `module`, `ema`,
            ...: docs/guide/outputs.md). Other forms refuse a key.
        key_flag: how the key is spelled in messages (`--key`, or `state=` in `from()`).

    Returns:
        The open checkpoint (close it, or use it as a context manager).

    Example:
        >>> with open_checkpoint("model.safetensors") as ck:  # doctest: +SKIP
        ...     print(ck.names()[:3])
    """
    text = source_text(source)
    trust = pickle_trust(unsafe_pickle)
    nested = _nesting_form(Path(text)) if not is_hf_url(text) else None
    if nested is not None:
        return nested(text, key, key_flag)
    if key and Path(text).suffix.lower() not in TORCH_SUFFIXES:
        raise UsageError(
            f"{text}: {key_flag} {key} picks a state inside a torch file "
            f"({'/'.join(TORCH_SUFFIXES)}) or a DCP directory; this source is not one, drop {key_flag}"
        )
    if is_hf_url(text):
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
        from reinit.io.formats import TorchFile  # torch only for a torch file

        return TorchFile(path, unsafe=trust.allows(path), key=key, flag=key_flag)
    raise InputNotFoundError(
        f"{text}: unknown checkpoint type {suffix or '(no suffix)'}; use a .safetensors, "
        ".bin/.pt/.pth/.ckpt file, a Hugging Face model directory or hf://OWNER/NAME"
    )


def _nesting_form(path: Path) -> Callable[[str, str, str], Checkpoint] | None:
    """The opener of a training-checkpoint directory: a DCP directory (`.metadata`; may take
    `--key`), a DeepSpeed ZeRO folder (`latest` + tag folder, or the tag folder), or None."""
    if is_dcp_dir(path):

        def open_dcp(text: str, key: str, flag: str) -> Checkpoint:
            from reinit.io.formats import DcpCheckpoint  # torch only for a DCP directory

            return DcpCheckpoint(path, source=text, key=key, flag=flag)

        return open_dcp
    if zero_tag_dir(path) is not None:

        def open_zero(text: str, key: str, flag: str) -> Checkpoint:
            if key:
                raise UsageError(f"{text}: a DeepSpeed ZeRO folder holds one model; drop {flag}")
            from reinit.io.formats import ZeroCheckpoint  # torch only for a ZeRO folder

            return ZeroCheckpoint(path, source=text)

        return open_zero
    return None
