"""`ApplyOptions`: every option of an apply, defined once. The click options of `reinit apply`,
a recipe's keys (top-level and per step) and the keywords of `reinit.apply`, `reinit.plan` and
the in-memory functions all derive from its fields and their `OptionMeta`, so they cannot drift
(tests/test_options.py checks it, minus the exceptions each field documents in `why_not`).

One topic, in order: what a field says about itself besides its type (`OptionMeta`), the
fields (`ApplyOptions`), which keywords each public function takes, and those keywords typed
(`OptionKwargs`, exactly the fields)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal, TypedDict

from reinit.errors import UsageError
from reinit.io.trust import TrustSpec

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from reinit.planning.model import ModelInput

__all__ = [
    "APPLY_FIELDS",
    "IN_MEMORY_FIELDS",
    "PLAN_FIELDS",
    "SURGERY_FIELDS",
    "ApplyOptions",
    "OptionKwargs",
    "OptionKwargsBesidesSeed",
    "OptionMeta",
    "PathLike",
    "RecipeKind",
    "meta",
    "option_meta",
    "option_names",
    "with_kwargs",
]

# How a recipe value is checked and converted (recipe/validate.py): an integer, a float, a boolean, a
# string, a string or null, a string or list of strings (paths), or a list of
# --add/--drop/--rename values (specs).
RecipeKind = Literal["int", "float", "bool", "str", "str?", "names?", "paths", "specs"]

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
    TypeError deep inside, or a float seed or `strict="no"` silently accepted): `seed` an
    int, `config` a mapping or None, the spec lists (`sequences`: add, drop, ...) a list or
    one string, the scalars as `SCALAR_TYPES` says."""
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
    for name, kinds, what in SCALAR_TYPES:
        value = getattr(options, name)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise UsageError(f"{name}= must be {what}, got {value!r:.40}")


# The scalar options a caller could pass as the wrong type, with the types each may be (None
# where it means "not given"; `True` is not a number here, nor `1` a bool) and what it must be.
SCALAR_TYPES: tuple[tuple[str, tuple[type, ...], str], ...] = (
    *(
        (name, (bool,), "True or False")
        for name in (
            "default_report",
            "strict",
            "allow_unmatched",
            "overwrite",
            "in_place",
            "progress",
            "checksums",
        )
    ),
    ("device", (str,), "a device name (a string or a torch.device)"),
    ("dtype", (str, type(None)), "float32, bfloat16 or float16 (a string or a torch.dtype)"),
    ("key", (str,), "a string"),
    ("format", (str,), "safetensors or dcp"),
    ("plot", (str, os.PathLike, type(None)), "a path"),
    ("max_shard_size", (str, int, type(None)), "a size (e.g. '5GB') or a number of bytes"),
    ("reference_tolerance", (int, float), "a number"),
)


def torch_names(options: object) -> None:
    """A `torch.device` or `torch.dtype` given as `device=`/`dtype=` becomes its name
    (`cuda:0`, `float16`), the text the flags take; torch is not imported for this."""
    for name in ("device", "dtype"):
        value = getattr(options, name)
        if type(value).__module__ == "torch" and type(value).__name__ in {"device", "dtype"}:
            object.__setattr__(options, name, str(value).removeprefix("torch."))


def meta(f_name: str) -> OptionMeta:
    """The metadata of the ApplyOptions field `f_name`."""
    for f in fields(ApplyOptions):
        if f.name == f_name:
            m = f.metadata["reinit"]
            assert isinstance(m, OptionMeta)
            return m
    raise KeyError(f_name)


SPEC_SEQUENCES = ("reports", "add", "drop", "rename", "resize", "config_set")


@dataclass(frozen=True)
class ApplyOptions:
    """The options of an apply (`reinit apply`'s flags, a recipe's keys, `reinit.apply`'s
    keywords). Sequences are kept as tuples; a single string counts as a list of one."""

    seed: int = field(
        default=0,
        metadata=option_meta(
            OptionMeta(
                help="Seeds every re-initialized tensor's own generator (with its name): same "
                "seed, same bytes.",
                flags=("--seed",),
                show_default=True,
                recipe="int",
                per_step=True,
            )
        ),
    )
    reports: Sequence[PathLike] = field(
        default=(),
        metadata=option_meta(
            OptionMeta(
                help="Extra report (.json, .csv, .md); repeatable.",
                flags=("--report",),
                metavar="PATH",
                multiple=True,
                recipe="paths",
                key="report",
            )
        ),
    )
    default_report: bool = field(
        default=True,
        metadata=option_meta(
            OptionMeta(
                help="Also write the report beside the output (X.reinit.report.json).",
                why_not="the CLI and recipes always write the default report",
            )
        ),
    )
    strict: bool = field(
        default=False,
        metadata=option_meta(
            OptionMeta(
                help="Any skipped tensor is an error.",
                flags=("--strict",),
                is_flag=True,
                recipe="bool",
                per_step=True,
            )
        ),
    )
    allow_unmatched: bool = field(
        default=False,
        metadata=option_meta(
            OptionMeta(
                help="A rule that matches nothing is a warning, not an error.",
                flags=("--allow-unmatched",),
                is_flag=True,
                recipe="bool",
                per_step=True,
            )
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=option_meta(
            OptionMeta(
                help="Replace an existing output.",
                flags=("--overwrite",),
                is_flag=True,
                recipe="bool",
            )
        ),
    )
    in_place: bool = field(
        default=False,
        metadata=option_meta(
            OptionMeta(
                help="Replace the source's weight files (and index) atomically; nothing else in "
                "its folder changes.",
                flags=("--in-place",),
                is_flag=True,
                recipe="bool",
            )
        ),
    )
    device: str = field(
        default="cpu",
        metadata=option_meta(
            OptionMeta(
                help="cpu or cuda: where values are drawn.",
                flags=("--device",),
                show_default=True,
                recipe="str",
            )
        ),
    )
    progress: bool = field(
        default=False,
        metadata=option_meta(
            OptionMeta(
                help="Show progress bars (and the Hub's download bars).",
                why_not="the CLI shows progress on a terminal unless --quiet (run's --quiet too)",
            )
        ),
    )
    unsafe_pickle: TrustSpec = field(
        default=(),
        metadata=option_meta(
            OptionMeta(
                help="Let this torch file (or model folder) run code while loading; repeatable. "
                "Only for files you trust: other sources stay weights-only.",
                flags=("--unsafe-pickle",),
                metavar="PATH",
                multiple=True,
                recipe="paths",
            )
        ),
    )
    key: str = field(
        default="",
        metadata=option_meta(
            OptionMeta(
                help="The dotted path of the state dict inside a torch training checkpoint or "
                "DCP directory (e.g. model_state_dict); default: a well-known nest found by itself.",
                flags=("--key",),
                metavar="PATH",
                recipe="str",
            )
        ),
    )
    add: Sequence[str] = field(
        default=(),
        metadata=option_meta(
            OptionMeta(
                help="Add a new tensor filled by SCHEME (float32 unless ':dtype=bfloat16' etc. "
                "follows); repeatable. Runs before the rules.",
                flags=("--add",),
                metavar="NAME=[d0,...]:SCHEME",
                multiple=True,
                recipe="specs",
                per_step=True,
            )
        ),
    )
    drop: Sequence[str] = field(
        default=(),
        metadata=option_meta(
            OptionMeta(
                help="Remove the tensors PATTERN matches; repeatable. Runs before the rules.",
                flags=("--drop",),
                metavar="PATTERN",
                multiple=True,
                recipe="specs",
                per_step=True,
            )
        ),
    )
    rename: Sequence[str] = field(
        default=(),
        metadata=option_meta(
            OptionMeta(
                help="Rename the tensors PATTERN matches ({name}, {1}, {2}, ... in TEMPLATE); "
                "repeatable, applied in order. Runs before the rules.",
                flags=("--rename",),
                metavar="PATTERN=TEMPLATE",
                multiple=True,
                recipe="specs",
                per_step=True,
            )
        ),
    )
    resize: Sequence[str] = field(
        default=(),
        metadata=option_meta(
            OptionMeta(
                help="Grow or shrink a tensor to SHAPE ('*' keeps a dim); new entries by SCHEME "
                "(mean_resize for new rows, else zeros); repeatable. Before the rules.",
                flags=("--resize",),
                metavar="NAME=[d0,...][:SCHEME]",
                multiple=True,
                recipe="specs",
                per_step=True,
            )
        ),
    )
    model: ModelInput | None = field(
        default=None,
        metadata=option_meta(
            OptionMeta(
                help="The model the checkpoint belongs to (HF directory, hf://OWNER/NAME, "
                "module:callable): enables type:CLASS patterns, module fans and the scheme default.",
                flags=("--model",),
                metavar="MODEL",
                recipe="str?",
            )
        ),
    )
    config: Mapping[str, object] | None = field(
        default=None,
        metadata=option_meta(
            OptionMeta(
                help="The model config some schemes read (default: the checkpoint's config.json).",
                why_not="a Python dict: the CLI and recipes read the checkpoint's config.json",
            )
        ),
    )
    config_set: Sequence[str] = field(
        default=(),
        metadata=option_meta(
            OptionMeta(
                help="Set a field of the output's config.json (VALUE is JSON); repeatable. "
                "Fields the surgery implies (vocab_size, max_position_embeddings, "
                "num_labels/id2label, num_hidden_layers/layer_types, and dtype with --dtype) "
                "follow it anyway, with a note. A file output writes "
                "config.json beside it. (Not `config`: that is the config schemes read.)",
                flags=("--config",),
                metavar="KEY=VALUE",
                multiple=True,
                recipe="specs",
                key="config",
            )
        ),
    )
    labels: str | Sequence[str] | None = field(
        default=None,
        metadata=option_meta(
            OptionMeta(
                help="Names of the classifier head's rows, comma-separated (id2label/label2id "
                "in the output's config.json).",
                flags=("--labels",),
                metavar="A,B,C",
                recipe="names?",
            )
        ),
    )
    plot: PathLike | None = field(
        default=None,
        metadata=option_meta(
            OptionMeta(
                help="Plot std per layer.",
                flags=("--plot",),
                metavar="PNG",
                recipe="str?",
            )
        ),
    )
    dtype: str | None = field(
        default=None,
        metadata=option_meta(
            OptionMeta(
                help="float32, bfloat16 or float16: cast every floating tensor on write "
                "(integer tensors untouched; lossy casts noted in the report).",
                flags=("--dtype",),
                metavar="DTYPE",
                recipe="str?",
            )
        ),
    )
    max_shard_size: str | int | None = field(
        default=None,
        metadata=option_meta(
            OptionMeta(
                help="Write the Hugging Face sharded layout (model-00001-of-0000N.safetensors "
                "+ index), shards split as save_pretrained splits them (e.g. 5GB, 500MB, "
                "10MiB, or bytes).",
                flags=("--max-shard-size",),
                metavar="SIZE",
                recipe="str?",
            )
        ),
    )
    format: str = field(
        default="safetensors",
        metadata=option_meta(
            OptionMeta(
                help="safetensors or dcp: the output's format; dcp writes a "
                "torch.distributed.checkpoint directory (give -o DIR/) that "
                "torch.distributed.checkpoint.load reads.",
                flags=("--format",),
                metavar="FORMAT",
                show_default=True,
                recipe="str",
            )
        ),
    )
    checksums: bool = field(
        default=False,
        metadata=option_meta(
            OptionMeta(
                help="Add each output tensor's sha256 (of its bytes as written) to the report; "
                "`reinit verify OUTPUT --report R.json` rechecks them.",
                flags=("--checksums",),
                is_flag=True,
                recipe="bool",
            )
        ),
    )
    reference_tolerance: float = field(
        default=2.0,
        metadata=option_meta(
            OptionMeta(
                help="Flag off_reference: a changed tensor's std beyond this factor either way "
                "of the model's own scale (its --model init, config initializer_range, or its "
                "untouched siblings).",
                flags=("--reference-tolerance",),
                metavar="FACTOR",
                show_default=True,
                recipe="float",
            )
        ),
    )

    def __post_init__(self) -> None:
        torch_names(self)
        check_option_types(self, SPEC_SEQUENCES)
        for name in SPEC_SEQUENCES:  # one string is one item, not its characters
            value = getattr(self, name)
            as_tuple = (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)
            object.__setattr__(self, name, as_tuple)

    def updated(self, **changes: Unpack[OptionKwargs]) -> ApplyOptions:
        """A copy with these fields changed."""
        return replace(self, **changes)


def option_names() -> tuple[str, ...]:
    """Every ApplyOptions field, in order."""
    return tuple(f.name for f in fields(ApplyOptions))


# Which keywords each public function takes (an `options=` object may carry any field; the
# ones a function has no use for are ignored, so one object serves plan and apply alike).
APPLY_FIELDS = frozenset(option_names())
SURGERY_FIELDS = frozenset({"add", "drop", "rename", "resize"})  # apply_to_module: none
_COMMON = {"strict", "allow_unmatched", "unsafe_pickle", "model", "config", "progress"}
PLAN_FIELDS = SURGERY_FIELDS | _COMMON | {"key"}
IN_MEMORY_FIELDS = frozenset(_COMMON | {"seed", "device", "reference_tolerance"})


class OptionKwargsBesidesSeed(TypedDict, total=False):
    """`OptionKwargs` less `seed`: the keywords of the in-memory functions, whose `seed` is a
    positional parameter of its own."""

    reports: Sequence[PathLike]
    default_report: bool
    strict: bool
    allow_unmatched: bool
    overwrite: bool
    in_place: bool
    device: str
    progress: bool
    unsafe_pickle: TrustSpec
    key: str
    add: Sequence[str]
    drop: Sequence[str]
    rename: Sequence[str]
    resize: Sequence[str]
    model: ModelInput | None
    config: Mapping[str, object] | None
    config_set: Sequence[str]
    labels: str | Sequence[str] | None
    plot: PathLike | None
    dtype: str | None
    max_shard_size: str | int | None
    format: str
    checksums: bool
    reference_tolerance: float


class OptionKwargs(OptionKwargsBesidesSeed, total=False):
    """The keyword arguments the public functions take, typed (`**kwargs: Unpack[...]`):
    exactly ApplyOptions' fields (tests/test_options.py checks it)."""

    seed: int


def with_kwargs(
    fn: str, options: ApplyOptions | None, kwargs: OptionKwargsBesidesSeed, allowed: frozenset[str]
) -> ApplyOptions:
    """`options` (default: all defaults) with the keyword arguments `kwargs` applied. A keyword
    `fn` does not take is a TypeError naming the ones it does, as a real signature would."""
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"{fn}() got an unexpected keyword argument {unknown[0]!r}; it takes "
            f"{', '.join(n for n in option_names() if n in allowed)} (or options=ApplyOptions(...))"
        )
    if options is not None and not isinstance(options, ApplyOptions):
        raise TypeError(f"{fn}(): options= must be a reinit.ApplyOptions, got {options!r}")
    return replace(options or ApplyOptions(), **kwargs)
