"""`reinit verify PATH`: check a safetensors file, or a directory of them, against the format
rules with the very validator the reader uses (`read_header`), so "verify passes" means
"reinit (and safetensors) will read it".

For a directory every `*.safetensors` file is checked, and when an index is present it must be
valid JSON with a `weight_map` whose every shard exists and holds the tensors the index puts in
it; a tensor name in two shards is refused too."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from reinit.errors import CheckpointError, InputNotFoundError
from reinit.io.safetensors_format import Header, read_header


@dataclass(frozen=True)
class FileCheck:
    path: str
    tensors: int
    nbytes: int  # tensor data bytes


@dataclass(frozen=True)
class VerifyResult:
    path: str
    files: tuple[FileCheck, ...]

    @property
    def tensors(self) -> int:
        return sum(f.tensors for f in self.files)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.files)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "valid": True,
            "tensors": self.tensors,
            "bytes": self.nbytes,
            "files": [
                {"path": f.path, "tensors": f.tensors, "bytes": f.nbytes} for f in self.files
            ],
        }


def verify_file(path: str | os.PathLike[str]) -> FileCheck:
    """Validate one safetensors file; raises `CheckpointError` naming the defect."""
    return _check(path, read_header(path))


def _check(path: str | os.PathLike[str], header: Header) -> FileCheck:
    return FileCheck(os.fspath(path), len(header.tensors), sum(t.nbytes for t in header.tensors))


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Validate a safetensors file or a directory of safetensors shards (with its index)."""
    p = Path(path)
    where = os.fspath(path)
    if not p.exists():
        raise InputNotFoundError(f"{where}: no such file or directory")
    if p.is_file():
        if not p.name.endswith(".safetensors"):
            raise CheckpointError(
                f"{where}: verify checks safetensors files; this is not one (.safetensors)"
            )
        return VerifyResult(where, (verify_file(p),))
    files = sorted(f for f in p.rglob("*.safetensors") if not _hidden(f, p))
    if not files:
        raise CheckpointError(f"{where}: holds no .safetensors file to verify")
    headers = {f.relative_to(p).as_posix(): read_header(f) for f in files}
    _check_indexes(p, {rel: {t.name for t in h.tensors} for rel, h in headers.items()})
    return VerifyResult(where, tuple(_check(p / rel, h) for rel, h in headers.items()))


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def _check_indexes(root: Path, names_in: dict[str, set[str]]) -> None:
    owner: dict[str, str] = {}
    for rel in sorted(names_in):
        for name in sorted(names_in[rel]):
            if name in owner:
                raise CheckpointError(
                    f"{root}: tensor '{name}' is in both {owner[name]} and {rel}; "
                    "a name must live in one shard"
                )
            owner[name] = rel
    for index in sorted(root.glob("*.safetensors.index.json")):
        where = os.fspath(index)
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{where}: unreadable index ({e})") from None
        wm = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wm, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in wm.items()
        ):
            raise CheckpointError(f"{where}: index has no valid weight_map of name -> shard file")
        for name, shard in sorted(wm.items()):
            if shard not in names_in:
                raise CheckpointError(f"{where}: names shard '{shard}', which is missing")
            if name not in names_in[shard]:
                raise CheckpointError(f"{where}: puts '{name}' in {shard}, but that shard lacks it")
        indexed = set(wm.values())
        for shard in sorted(indexed):
            extra = names_in[shard].difference(wm)
            if extra:
                raise CheckpointError(
                    f"{where}: shard {shard} holds '{sorted(extra)[0]}', which the index "
                    "does not list"
                )
