"""What each `ApplyOptions` field says about itself besides its Python type: its command-line
flags, its recipe key and value kind, and why it is missing from a surface where it is. Kept
apart from `reinit.options` so the field list there stays readable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["FORMAT_META", "OptionMeta", "PathLike", "RecipeKind", "option_meta"]

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


#: `ApplyOptions.format` (`--format`, recipe key `format`, keyword `format=`); its meta lives
#: here so that options.py stays within the file-size limit.
FORMAT_META = OptionMeta(
    help="safetensors or dcp: the output's format; dcp writes a torch.distributed.checkpoint "
    "directory (give -o DIR/) that torch.distributed.checkpoint.load reads.",
    flags=("--format",),
    metavar="FORMAT",
    show_default=True,
    recipe="str",
)
