"""`reinit verify PATH`: check a safetensors file, or a directory of them, against the format
rules with the very validator the reader uses (`read_header`), so "verify passes" means
"reinit (and safetensors) will read it".

For a directory every `*.safetensors` file is checked, and when an index is present it must be
valid JSON with a `weight_map` whose every shard exists and holds the tensors the index puts in
it; a tensor name in two shards is refused too. The index rule is `shardindex`'s, the one the
reader applies, and every file is read through `confine.local_file` (inside the folder, regular),
so verify, apply, inspect and report accept and refuse the same folders."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reinit.errors import CheckpointError, InputNotFoundError, UsageError
from reinit.io.checkpoint import TORCH_SUFFIXES
from reinit.io.confine import local_file, require_regular
from reinit.io.formats import Header, check_shard, is_dcp_dir, read_header, read_index, zero_tag_dir

if TYPE_CHECKING:
    from reinit.io.formats import DcpCheckpoint

__all__ = ["FileCheck", "VerifyResult", "verify", "verify_file"]


@dataclass(frozen=True)
class FileCheck:
    path: str
    tensors: int
    nbytes: int  # tensor data bytes


@dataclass(frozen=True)
class VerifyResult:
    path: str
    files: tuple[FileCheck, ...]
    form: str = "safetensors"  # or "DCP directory", "ZeRO folder", "torch file"
    count: int | None = None  # the tensors, where one may lie in several files (DCP)

    @property
    def tensors(self) -> int:
        return self.count if self.count is not None else sum(f.tensors for f in self.files)

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
    """Validate a safetensors file or a directory of safetensors shards (with its index); a
    DCP directory or DeepSpeed ZeRO folder is read whole, a tensor at a time."""
    p = Path(path)
    where = os.fspath(path)
    if where == "":  # "." to pathlib: the current folder
        raise UsageError("verify: the path is empty (an unset variable?); give a file or folder")
    if not p.exists():
        raise InputNotFoundError(f"{where}: no such file or directory")
    require_regular(p)
    if is_dcp_dir(p) or zero_tag_dir(p) is not None:
        return _verify_by_reading(where, "DCP directory" if is_dcp_dir(p) else "ZeRO folder")
    if p.is_file():
        if p.name.lower().endswith(TORCH_SUFFIXES):  # `-o out.pt`: weights-only, as apply reads
            return _verify_by_reading(where, "torch file")
        if not p.name.endswith(".safetensors"):
            raise CheckpointError(
                f"{where}: verify checks safetensors and torch files; this is neither "
                f"(.safetensors, {', '.join(TORCH_SUFFIXES)})"
            )
        return VerifyResult(where, (verify_file(p),))
    files = sorted(f for f in p.rglob("*.safetensors") if not _hidden(f, p))
    if not files:
        raise CheckpointError(f"{where}: holds no .safetensors file to verify")
    rels = [f.relative_to(p).as_posix() for f in files]
    headers = {rel: read_header(local_file(p, rel, where, "holds")) for rel in rels}
    _check_indexes(p, {rel: {t.name for t in h.tensors} for rel, h in headers.items()})
    return VerifyResult(where, tuple(_check(p / rel, h) for rel, h in headers.items()))


def _verify_by_reading(where: str, form: str) -> VerifyResult:
    """A DCP directory, ZeRO folder or torch file: every tensor is read (through the restricted
    loaders, each piece checked against the metadata), as apply would read it."""
    from reinit.io.formats import DcpCheckpoint, ZeroCheckpoint
    from reinit.io.sources import open_checkpoint

    with open_checkpoint(where) as ckpt:
        refs = ckpt.refs()
        for r in refs:
            ckpt.read(r.name)
        if isinstance(ckpt, DcpCheckpoint):
            files = _dcp_files(ckpt)
        elif isinstance(ckpt, ZeroCheckpoint):  # every rank's files, each read and checked
            files = tuple(FileCheck(*f) for f in ckpt.stored_files())
        else:
            files = (FileCheck(where, len(refs), sum(r.nbytes for r in refs)),)
    return VerifyResult(where, files, form, count=len(refs))


def _dcp_files(ckpt: DcpCheckpoint) -> tuple[FileCheck, ...]:
    """Each `.distcp` file the state's chunks lie in: the tensors with a chunk there (a tensor
    split over ranks counts in each of its files) and the tensor bytes of those chunks."""
    tensors: dict[str, set[str]] = {}
    nbytes: dict[str, int] = {}
    for t in ckpt.tensors.values():
        for c in t.chunks:
            tensors.setdefault(c.file, set()).add(t.fqn)
            nbytes[c.file] = nbytes.get(c.file, 0) + math.prod(c.sizes) * t.dtype.itemsize
    return tuple(
        FileCheck(os.fspath(ckpt.folder / f), len(tensors[f]), nbytes[f]) for f in sorted(tensors)
    )


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
        idx = read_index(local_file(root, index.name, os.fspath(root), "holds"), where)
        for shard in idx.shards():
            if shard not in names_in:
                raise CheckpointError(f"{where}: names shard '{shard}', which is missing")
        for shard in idx.shards():
            check_shard(idx, shard, names_in[shard])
