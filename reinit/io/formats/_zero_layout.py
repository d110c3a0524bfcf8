"""Where a DeepSpeed ZeRO checkpoint keeps its files (no torch needed: `sources` asks this of
every folder it opens). The folder a user names holds `latest`, a text file naming the tag
folder (`global_step100`) that holds the `*_model_states.pt` and `*_optim_states.pt` files;
the tag folder itself is accepted too.

DeepSpeed-MoE puts two more kinds of file beside them: each expert's module weights
(`layer_{L}_expert_{E}_mp_rank_{MP}_model_states.pt`, `expert_{E}_...` before layer ids) and,
per expert-parallel rank, `expp_rank_{R}_mp_rank_{MP}_optim_states.pt` (the optimizer state
without ZeRO; `{'optimizer': None}` under ZeRO in older versions). `zero_files` tells them
apart from the ranks' own files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from reinit.errors import CheckpointError

__all__ = ["ZeroFiles", "natural_key", "zero_files", "zero_tag_dir"]

_EXPERT_MODEL = re.compile(r"(layer_\d+_)?expert_\d+_mp_rank_\d+_model_states\.pt")
_EXPERT_OPTIM = re.compile(r"expp_rank_\d+_mp_rank_\d+_optim_states\.pt")


def natural_key(p: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


@dataclass(frozen=True)
class ZeroFiles:
    """A tag folder's files, each list in rank (natural) order."""

    models: list[Path]  # the ranks' `*_model_states.pt`
    optims: list[Path]  # the ranks' ZeRO `*_optim_states.pt`
    experts: list[Path]  # DeepSpeed-MoE: one expert's weights each
    expert_optims: list[Path]  # DeepSpeed-MoE: `expp_rank_*_optim_states.pt`


def zero_files(tag: Path) -> ZeroFiles:
    def ordered(pattern: str, expert: re.Pattern[str], want: bool) -> list[Path]:
        found = [p for p in tag.glob(pattern) if bool(expert.fullmatch(p.name)) is want]
        return sorted(found, key=natural_key)

    return ZeroFiles(
        ordered("*_model_states.pt", _EXPERT_MODEL, False),
        ordered("*_optim_states.pt", _EXPERT_OPTIM, False),
        ordered("*_model_states.pt", _EXPERT_MODEL, True),
        ordered("*_optim_states.pt", _EXPERT_OPTIM, True),
    )


def _holds_zero(path: Path) -> bool:
    return any(path.glob("*_optim_states.pt")) and any(path.glob("*_model_states.pt"))


def zero_tag_dir(path: Path) -> Path | None:
    """The folder holding the ZeRO files: `path` itself, or the tag its `latest` names. A
    `latest` naming a tag that holds none, beside tag folders that do, is a `CheckpointError`
    naming them (a deleted or unfinished save), not "no ZeRO folder"."""
    if not path.is_dir():
        return None
    latest = path / "latest"
    if latest.is_file():
        try:
            tag = latest.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if tag and "/" not in tag and tag not in (".", ".."):
            _check_tag(path, tag)
            path = path / tag
    return path if _holds_zero(path) else None


def _check_tag(folder: Path, tag: str) -> None:
    if _holds_zero(folder / tag):
        return
    others = sorted((d for d in folder.iterdir() if d.is_dir() and _holds_zero(d)), key=natural_key)
    if others:
        raise CheckpointError(
            f"{folder}: latest names '{tag}', which holds no ZeRO checkpoint (deleted, or a save "
            f"that never finished); the tag folders here are {', '.join(d.name for d in others[:5])}: "
            f"give one (e.g. {others[-1]}) or fix latest"
        )
