"""What a recipe may not do by itself: run code, replace files, or write where other programs
load files by themselves. A recipe is shared like a config file, so its `model:
module:callable` (which imports and calls Python), its `unsafe_pickle:` (which lets a torch file
run code while loading), its `overwrite: true` (which replaces whatever file lies at its
`output:`, `report:` or `plot:` paths), its `in_place: true` (which rewrites its source) and an
`output:`, `report:` or `plot:` path outside the current directory and the recipe's own folder,
or in a hidden or Python package folder below them (`~/.bashrc.d/`, `.config/autostart/`,
`site-packages/`: a folder output copies the source's other files, whatever they are) are
requests the person at the command line must grant: `--trust-model-callable MODULE:CALLABLE`,
`--unsafe-pickle PATH`, `--overwrite`, `--in-place`, `--allow-write DIR` (`load_recipe`'s
`trust_model_callable=`, `unsafe_pickle=`, `overwrite=`, `in_place=`, `allow_write=`). `--set`
values count as the recipe's."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from reinit.errors import UsageError
from reinit.io.hub import is_hf_url
from reinit.io.trust import (
    PickleTrust,
    TrustSpec,
    callable_name,
    callable_trust,
    pickle_trust,
)
from reinit.options import ApplyOptions
from reinit.recipe.files import Path_, Where, location

if TYPE_CHECKING:
    from reinit.planning.session import ModelInput

__all__ = ["Grants", "granted", "granted_new", "granted_writes"]


@dataclass(frozen=True)
class Grants:
    """What the person at the command line allows a recipe (`reinit run`'s flags, or
    `load_recipe`'s keywords): the torch files that may run code, the callables its `model:`
    may import, whether existing outputs may be replaced or the source rewritten, and the
    folders it may write in besides the current directory and its own folder."""

    unsafe_pickle: TrustSpec = ()
    trust_model_callable: Iterable[str] = ()
    overwrite: bool = False
    in_place: bool = False
    allow_write: Iterable[str | os.PathLike[str]] = ()


# A recipe key that replaces files, the flag that grants it, and what it would do.
_WRITE_GRANTS = (
    ("overwrite", "--overwrite", "replace an existing file or folder at its output or reports"),
    ("in_place", "--in-place", "rewrite its source's weight files"),
)


def granted(options: ApplyOptions, where: Where, label: str, grants: Grants) -> ApplyOptions:
    """The recipe's top-level `options` with only the trust the user granted: a recipe's
    `unsafe_pickle` entry, callable `model`, `overwrite` or `in_place` the user did not grant
    is a `UsageError` naming the key and the flag that would allow it. The result's
    `unsafe_pickle`, `overwrite` and `in_place` are the user's, and its `model` is a
    `pathlib.Path` (never imported) unless it is hf:// or a granted callable."""
    user = pickle_trust(grants.unsafe_pickle, "--unsafe-pickle")
    _check_pickles(options.unsafe_pickle, user, location(where, ("unsafe_pickle",), label))
    callables = callable_trust(grants.trust_model_callable)
    model = _model(options.model, callables, location(where, ("model",), label))
    _check_config(options.config_set, location(where, ("config",), label))
    for key, flag, what in _WRITE_GRANTS:
        if getattr(options, key) and not getattr(grants, key):
            raise UsageError(
                f"{location(where, (key,), label)}: {key}: a recipe cannot {what} by itself; "
                f"if you mean it, add {flag} to the command line"
            )
    return replace(
        options,
        unsafe_pickle=user,
        model=model,
        overwrite=grants.overwrite,
        in_place=grants.in_place,
    )


def granted_new(source: str, where: Where, label: str, trust_model_callable: Iterable[str]) -> None:
    """A recipe's `new:` names a model as its `model:` does: a `module:callable` there is
    refused (`UsageError`) unless the user named it with `--trust-model-callable`."""
    if not is_hf_url(source):
        _model(source, callable_trust(trust_model_callable), location(where, ("new",), label))


# Folders below the current directory or a recipe's own where a recipe may not write by
# itself: programs load what lies there without being asked (a shell's ~/.bashrc.d/, a
# desktop's .config/autostart/, Python's site-packages/ with its .pth files).
_PACKAGE_FOLDERS = frozenset({"site-packages", "dist-packages"})


def granted_writes(
    writes: Iterable[tuple[Path_, str | os.PathLike[str]]],
    where: Where,
    label: str,
    recipe_dir: Path,
    grants: Grants,
) -> None:
    """Each path a recipe names to write (`output:`, `report:`, `plot:`: its key and value)
    must lie below the current directory or the recipe's own folder, in no hidden folder
    and no Python package folder (nor be a hidden file), links resolved, or below a folder
    the user allowed (`--allow-write DIR`, where anything goes); else a `UsageError` naming
    the key, the path and the flag that would allow it."""
    own = [Path(os.path.realpath(p)) for p in (Path.cwd(), recipe_dir)]
    allowed = [Path(os.path.realpath(p)) for p in grants.allow_write]
    for keys, path in writes:
        target = Path(os.path.realpath(path))  # links resolved, `..` gone
        if any(target.is_relative_to(root) for root in allowed):
            continue
        if any(_plain_below(target, root) for root in own):
            continue
        key = next(k for k in reversed(keys) if isinstance(k, str))
        raise UsageError(
            f"{location(where, keys, label)}: {key} {os.fspath(path)}: a recipe writes only "
            "below the current directory or its own folder, and never into a hidden or Python "
            "package folder, where other programs load files by themselves; if you mean it, "
            f"add --allow-write {target.parent} to the command line"
        )


def _plain_below(target: Path, root: Path) -> bool:
    """Whether `target` lies below `root` through no hidden name and no package folder."""
    if not target.is_relative_to(root):
        return False
    parts = target.relative_to(root).parts
    return not any(p.startswith(".") or p in _PACKAGE_FOLDERS for p in parts)


def _check_pickles(requested: TrustSpec, user: PickleTrust, at: str) -> None:
    if isinstance(requested, PickleTrust) or not requested:
        return
    items = [requested] if isinstance(requested, (str, os.PathLike)) else requested
    assert isinstance(items, Iterable)
    for path in items:
        if isinstance(path, (str, os.PathLike)) and not user.allows(path):
            text = os.fspath(path)
            raise UsageError(
                f"{at}: unsafe_pickle {text}: a recipe cannot let a file run code by itself; "
                f"if you trust it, add --unsafe-pickle {text} to the command line"
            )


def _check_config(items: Iterable[str], at: str) -> None:
    """A recipe's `config:` may not set `auto_map`: the output's config.json would then send
    whoever loads it with `trust_remote_code=True` to code the recipe's author chose (a
    Hub repo's `modeling_*.py`), and reinit itself refuses such a config as a model."""
    for item in items:
        if item.partition("=")[0].strip() == "auto_map":
            raise UsageError(
                f"{at}: config auto_map: a recipe cannot make its output's config.json point at "
                "Python code; if you want that, edit the output's config.json yourself"
            )


def _model(model: ModelInput | None, callables: frozenset[str], at: str) -> ModelInput | None:
    if not isinstance(model, str) or is_hf_url(model):
        return model
    name = callable_name(model)
    if name is None or Path(model).exists():
        return Path(model)  # a model folder or config file, never imported
    if name in callables:
        return model
    raise UsageError(
        f"{at}: model {name} would import and call Python code; a recipe cannot run code by "
        f"itself: if you trust it, add --trust-model-callable {name} to the command line"
    )
