"""Where a run may write: the one rule for the checkpoint output, `--report`, `--plot` and
`reinit report -o`.

Why one place: each path the tool writes was once checked by its own copy of a suffix test,
and none asked whether the path was an input — `--plot m.safetensors` replaced the source with
a PNG and `--report dir/model.safetensors.index.json` replaced the source's index. Now:
- a known extension (.json/.csv/.md for a report, .png for a plot);
- never an input: not a source file, nor any path inside a source folder (only `--in-place`
  may change a source, and only its weight files, index and our own report);
- never an existing file without `--overwrite` (and the publish step renames without
  replacing, so a file that appears meanwhile is not replaced either);
- an output folder that holds the source, or entries the output would not hold, is refused
  unless it is reinit's own earlier output (its `reinit-report.json`, or a safetensors file with
  our `reinit` metadata key, and nothing such an output would not hold: no folder, link, other
  weight format or stray file) or the user said `--in-place`."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reinit.errors import OutputError, UsageError
from reinit.io.hub import is_hf_url

__all__ = [
    "Inputs",
    "REPORT_NAME",
    "SUFFIXES",
    "check_distinct",
    "check_output",
    "check_replace_folder",
    "check_suffix",
    "check_target",
    "foreign_entry",
    "is_own_output",
]

SUFFIXES = {"report": (".json", ".csv", ".md"), "plot": (".png",)}
REPORT_NAME = "reinit-report.json"


def check_suffix(path: str | os.PathLike[str], option: str, kind: str) -> None:
    """A typo in a format costs nothing: checked before any work."""
    allowed = SUFFIXES[kind]
    if not os.fspath(path).lower().endswith(allowed):
        what = "report format" if kind == "report" else "plot format"
        raise UsageError(f"{option} {path}: unknown {what}; use {_or(allowed)}")


def _or(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


@dataclass(frozen=True)
class Inputs:
    """The files and folders a run reads (resolved): nothing the run writes may be one of
    them or lie inside one of the folders."""

    files: frozenset[Path] = frozenset()
    folders: frozenset[Path] = frozenset()

    @staticmethod
    def of(paths: Iterable[str | os.PathLike[str] | None]) -> Inputs:
        """Local paths among `paths` (hf:// sources and in-memory ones are skipped)."""
        files: set[Path] = set()
        folders: set[Path] = set()
        for p in paths:
            if p is None or is_hf_url(os.fspath(p)):
                continue
            path = Path(p)
            if not path.exists():
                continue
            (folders if path.is_dir() else files).add(path.resolve())
        return Inputs(frozenset(files), frozenset(folders))

    def owner(self, path: Path) -> Path | None:
        """The input `path` is, or the input folder it lies in; None when it is neither."""
        r = _resolved(path)
        if r in self.files or r in self.folders:
            return r
        for d in self.folders:
            if r.is_relative_to(d):
                return d
        return None

    def inside(self, folder: Path) -> Path | None:
        """An input that lies inside `folder` (or is it)."""
        r = _resolved(folder)
        for p in (*self.files, *self.folders):
            if p == r or p.is_relative_to(r):
                return p
        return None


def _resolved(path: Path) -> Path:
    """`path` with symlinks resolved (a link to the source is the source)."""
    return Path(path).resolve()


def check_target(
    path: str | os.PathLike[str],
    option: str,
    kind: str,
    *,
    inputs: Inputs,
    overwrite: bool,
) -> Path:
    """Refuse, before any work, a report or plot path that would replace an input or an
    existing file the user did not allow (`--overwrite`); return it as a Path."""
    check_suffix(path, option, kind)
    p = Path(path)
    owner = inputs.owner(p)
    if owner is not None:
        where = "is an input" if owner == _resolved(p) else f"is inside the input folder {owner}"
        raise OutputError(f"{option} {path}: {where}; choose a path outside the inputs")
    if p.is_dir():
        raise OutputError(f"{option} {path}: is a directory; give a file name")
    if os.path.lexists(p) and not overwrite:
        raise OutputError(f"{option} {path}: exists; pass --overwrite to replace it")
    if not p.parent.is_dir():  # found only when publishing, after the work, once
        raise OutputError(
            f"{option} {path}: the folder {p.parent} does not exist; create it first "
            f"(mkdir -p {p.parent})"
        )
    return p


def check_output(path: Path, fmt: str, *, inputs: Inputs, overwrite: bool, in_place: bool) -> None:
    """The checkpoint output: OUTPUT equal to, containing or inside an input needs
    `--in-place`; an existing one needs `--overwrite` (or `--in-place`)."""
    if not in_place:
        owner = inputs.owner(path)
        if owner is not None and owner == _resolved(path):
            raise OutputError(
                f"-o {path}: is the source; pass --in-place to replace it (atomically) "
                "or pick another -o"
            )
        if owner is not None:
            raise OutputError(
                f"-o {path}: is inside the source folder {owner}; choose a path outside it, "
                "or pass --in-place to change the folder's weight files"
            )
        held = inputs.inside(path) if path.is_dir() else None
        if held is not None:
            raise OutputError(
                f"-o {path}: holds the source {held}; replacing it would delete the source; "
                "choose another -o, or pass --in-place to change only the weight files"
            )
    if os.path.lexists(path) and not (overwrite or in_place):
        raise OutputError(f"-o {path}: exists; pass --overwrite to replace it")


def check_replace_folder(path: Path, would_hold: Iterable[str], *, merges: bool = True) -> None:
    """`--overwrite` of an existing folder replaces it as a whole: refuse when the folder has
    entries the new output would not hold (a project folder, `.git/`, notes), unless it is
    reinit's own earlier output: marked as ours, and every entry one such an output holds.
    `merges`: whether `--in-place` could write into the folder instead (a `--format dcp`
    output cannot: it replaces its folder whole), and so is worth suggesting."""
    if not path.is_dir() or path.is_symlink():
        return
    keep = {Path(n).parts[0] for n in would_hold}
    extra = sorted(e.name for e in path.iterdir() if e.name not in keep)
    if not extra:
        return
    if _marked_ours(path):
        foreign = foreign_entry(path)
        if foreign is None:
            return
        raise OutputError(
            f"-o {path}: holds {foreign}, which no reinit output holds; --overwrite would delete "
            f"it with the folder; {_remedy(merges)}"
        )
    shown = ", ".join(extra[:5]) + (", …" if len(extra) > 5 else "")
    raise OutputError(
        f"-o {path}: is not an earlier reinit output and holds {len(extra)} entr"
        f"{'y' if len(extra) == 1 else 'ies'} the output would not ({shown}); --overwrite would "
        f"delete them; {_remedy(merges)}"
    )


def _remedy(merges: bool) -> str:
    if merges:
        return "choose a new folder, or pass --in-place to change only the weight files"
    return "choose a new folder"


# What a reinit folder output holds besides its weight files: the shard index, its report, and
# the Hugging Face files it copies from a source folder (config, generation, tokenizer, processor).
_OWN_FILES = re.compile(
    r"(model\.safetensors\.index|config|generation_config|preprocessor_config|processor_config"
    r"|image_processor_config|feature_extractor_config|tokenizer_config|special_tokens_map"
    r"|added_tokens|chat_template|vocab)\.json"
    r"|tokenizer\.(json|model)|vocab\.txt|merges\.txt|(spiece|sentencepiece\.bpe)\.model"
    r"|chat_template\.jinja|" + re.escape(REPORT_NAME)
)


def is_own_output(folder: Path) -> bool:
    """A folder reinit wrote: its `reinit-report.json` is one of our reports, or one of its
    safetensors files carries our `reinit` metadata key; and every entry in it is one such an
    output holds (`foreign_entry`)."""
    return _marked_ours(folder) and foreign_entry(folder) is None


def foreign_entry(folder: Path) -> str | None:
    """The first entry (by name) of `folder` that no reinit folder output holds: a folder
    (`.git/`, `onnx/`), a link, a weight file reinit does not write (`*.bin`, `*.gguf`), a
    safetensors file without our metadata, any other file (`notes.txt`); None when there is none."""
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_symlink() or not entry.is_file():
            return entry.name + ("/" if entry.is_dir() else "")
        if entry.name.endswith(".safetensors"):
            if not _has_our_metadata(entry):
                return entry.name
        elif not _OWN_FILES.fullmatch(entry.name):
            return entry.name
    return None


def _marked_ours(folder: Path) -> bool:
    report = folder / REPORT_NAME
    try:
        if report.is_file() and not report.is_symlink():
            doc = json.loads(report.read_text("utf-8"))
            if isinstance(doc, dict) and "reinit_version" in doc:
                return True
    except (OSError, ValueError, RecursionError):
        pass
    return any(_has_our_metadata(f) for f in sorted(folder.glob("*.safetensors")))


def _has_our_metadata(path: Path) -> bool:
    from reinit.io.formats import read_header

    if path.is_symlink() or not path.is_file():  # a FIFO named x.safetensors would block
        return False
    try:
        return "reinit" in (read_header(path).metadata or {})
    except Exception:  # noqa: BLE001 - an unreadable file is just not ours
        return False


def check_distinct(paths: Iterable[Path]) -> None:
    """Two outputs of one run on the same path would overwrite each other: refuse."""
    seen: dict[Path, Path] = {}
    for p in paths:
        r = _resolved(p)
        if r in seen:
            raise OutputError(
                f"{p}: named twice among the outputs (also as {seen[r]}); give each its own path"
            )
        seen[r] = p
