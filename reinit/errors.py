"""Typed errors. Each carries the exit code the CLI returns for it (docs/reference.md):
2 for usage errors (the user can fix the command line), 1 for failures while working."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "HubError",
    "InputNotFoundError",
    "NestedStateError",
    "NoSuchEntryError",
    "OutputError",
    "RankError",
    "ReinitError",
    "RuleError",
    "SchemeError",
    "StrictError",
    "TransplantError",
    "UnsafePathError",
    "UnsafePickleError",
    "UsageError",
    "ValueRangeError",
    "WriteError",
]


class ReinitError(Exception):
    """Base of every error reinit raises on purpose. The message is one line that names the
    file or tensor and says what to do; the CLI prints it as is."""

    exit_code: int = 1


class UsageError(ReinitError):
    """The command line or recipe asks for something impossible; nothing was read or written."""

    exit_code = 2


class RuleError(UsageError):
    """A rule does not parse, names an unknown scheme or argument, or matches nothing."""


class SchemeError(UsageError):
    """A scheme cannot be applied as asked (bad argument value, tensor it cannot take)."""


class StrictError(UsageError):
    """`--strict` found a skip; raised before anything is written."""


class OutputError(UsageError):
    """The output would overwrite something the user did not allow us to overwrite."""


class InputNotFoundError(UsageError):
    """The source path does not exist or is not a checkpoint we know how to read."""


class CheckpointError(ReinitError):
    """A checkpoint is corrupt, truncated or unreadable (exit 1)."""


class UnsafePathError(CheckpointError):
    """A model folder, index or Hub repo names a file outside itself (`../x`, `/abs`, a link
    that leaves the folder) or a file that is not a regular file (FIFO, device): never read,
    never written (exit 1)."""


class UnsafePickleError(CheckpointError):
    """A torch file needs globals the weights-only unpickler refuses."""


class HubError(ReinitError):
    """The Hugging Face Hub could not give us a file (offline, not found, unauthorized)."""


class TransplantError(ReinitError):
    """A `from(...)` source lacks a tensor or has one of the wrong shape."""

    exit_code = 2


class ValueRangeError(ReinitError):
    """Values drawn or cast for a tensor do not fit its dtype (they became inf or wrapped
    around): found while working, before anything is published (exit 1)."""


class WriteError(ReinitError):
    """Writing the output failed (disk full, file size limit, permissions)."""


class NestedStateError(UsageError):
    """A torch checkpoint nests its tensors where `--key` / `state=` must say which (several
    candidates, or a key that is not there); exit 2, nothing read further."""


class NoSuchEntryError(UsageError, KeyError):
    """`Report.entry(name)` for a name the report does not list: a `UsageError` that is also
    the `KeyError` a lookup by name raises, so either `except` catches it."""

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


class RankError(ReinitError):
    """A run split across processes (torchrun) failed on one rank: every rank raises it, the
    line naming the rank that says it and why (the failing rank and its own error, a rank lost,
    an interrupt); the exit code is the failing rank's. Nothing was published."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
