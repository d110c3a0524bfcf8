"""What each `ApplyOptions` field says about itself besides its Python type: its command-line
flags, its recipe key and value kind, and why it is missing from a surface where it is. Kept
apart from `reinit.options` so the field list there stays readable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from reinit.errors import UsageError

__all__ = ["OptionMeta", "PathLike", "RecipeKind", "check_option_types", "option_meta"]

# How a recipe value is checked and converted (recipe/validate.py): an integer, a float, a boolean, a
# string, a string or null, a string or list of strings (paths), or a list of
# --add/--drop/--rename values (specs).
RecipeKind = Literal["int", "float", "bool", "str", "str?", "paths", "specs"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class OptionMeta:
    """Where an option appears besides the Python API.

    `flags`: the click declarations of `reinit apply` (none: not a flag); `recipe`: the value
    kind of its recipe key (None: not a recipe key), named `key` in the file when that differs
    from the field; `per_step`: a recipe step may set it too; `why_not`: why a field is missing
    from the CLI or the recipe (the documented exceptions the drift test accepts)."""

    help: str
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    multiple: bool = False
    is_flag: bool = False
    show_default: bool = False
    recipe: RecipeKind | None = None
    key: str | None = None
    per_step: bool = False
    why_not: str = ""


def option_meta(m: OptionMeta) -> dict[str, OptionMeta]:
    """`m` as a dataclass field's metadata (under the key `reinit`, where `options.meta`
    finds it)."""
    return {"reinit": m}


def check_option_types(options: object, sequences: tuple[str, ...]) -> None:
    """The API's option values of the wrong type are a `UsageError` naming the keyword (not a
    TypeError deep inside, or a float seed silently accepted): `seed` an int, `config` a
    mapping or None, the spec lists (`sequences`: add, drop, ...) a list or one string."""
    seed, config = getattr(options, "seed", 0), getattr(options, "config", None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed= must be an integer, got {seed!r:.40}")
    if config is not None and not isinstance(config, Mapping):
        raise UsageError(
            f"config= must be a mapping (as config.json holds), got {type(config).__name__}"
        )
    for name in sequences:
        value = getattr(options, name)
        if not isinstance(value, (str, os.PathLike, list, tuple)):
            raise UsageError(f"{name}= must be a list, got {type(value).__name__}")
