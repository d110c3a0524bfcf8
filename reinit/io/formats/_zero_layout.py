"""Where a DeepSpeed ZeRO checkpoint keeps its files (no torch needed: `sources` asks this of
every folder it opens). The folder a user names holds `latest`, a text file naming the tag
folder (`global_step100`) that holds the `*_model_states.pt` and `*_optim_states.pt` files;
the tag folder itself is accepted too."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["natural_key", "zero_tag_dir"]


def natural_key(p: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def zero_tag_dir(path: Path) -> Path | None:
    """The folder holding the ZeRO files: `path` itself, or the tag its `latest` names."""
    if not path.is_dir():
        return None
    latest = path / "latest"
    if latest.is_file():
        try:
            tag = latest.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if tag and "/" not in tag and tag not in (".", ".."):
            path = path / tag
    has = any(path.glob("*_optim_states.pt")) and any(path.glob("*_model_states.pt"))
    return path if has else None
