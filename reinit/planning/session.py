"""A planning session: open the source, apply the surgery (--drop/--rename/--resize/--add),
align the model view, then turn the rules into a Plan with tied tensors made consistent. `plan` is the
`--dry-run`; `apply` uses the same steps."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from reinit.errors import RuleError, SchemeError, UsageError
from reinit.io.checkpoint import Checkpoint
from reinit.io.sources import open_checkpoint
from reinit.io.trust import TrustSpec
from reinit.options import PLAN_FIELDS, ApplyOptions, OptionKwargs, with_kwargs
from reinit.planning.config_ties import config_ties, resize_ties
from reinit.planning.edited import EditedCheckpoint
from reinit.planning.fresh import ModelCheckpoint, mark_fresh
from reinit.planning.model import Model, ModelInput, ModelView, check_default
from reinit.planning.model_load import load_model
from reinit.planning.planner import Plan, check_strict
from reinit.planning.planner import plan as make_plan
from reinit.planning.surgery import (
    Edited,
    Surgery,
    edit_refs,
    mark_plan,
    parse_surgery,
    resolve_fills,
)
from reinit.planning.ties import Ties, refuse_overlaps, resolve_ties
from reinit.planning.transplant import SourcePool, check_transplants
from reinit.rules import Rule, closest_hint, parse_rules
from reinit.schemes import (
    missing_from_config,
    resolve_from_config,
)
from reinit.text import shown

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "ModelInput",
    "RuleInput",
    "as_rules",
    "check_device",
    "check_reads",
    "edit_checkpoint",
    "loaded_model",
    "model_view",
    "open_source",
    "plan",
    "plan_for",
    "resolve_rules",
]

RuleInput = str | Rule
"""A rule as text (`'*.weight=kaiming'`) or already parsed."""


def resolve_rules(rules: Sequence[Rule], config: Mapping[str, Any] | None) -> tuple[Rule, ...]:
    """Fill scheme arguments that come from the model config (scaled_normal's layers,
    small_init's dim) when the rule left them unset; a required one still missing is an error."""
    out: list[Rule] = []
    for r in rules:
        if r.scheme is not None and r.scheme.scheme.from_config:
            resolved = resolve_from_config(r.scheme, config)
            problem = missing_from_config(resolved)
            if problem:
                raise RuleError(f"rule {r.text!r}: {problem}")
            r = replace(r, scheme=resolved)
        out.append(r)
    return tuple(out)


def check_reads(result: Plan, ckpt: Checkpoint) -> None:
    """Schemes that read another tensor (`copy`): it must exist and have the target's shape.
    Checked before anything is written."""
    for e in result.entries:
        bound = e.scheme
        if bound is None or bound.scheme.reads is None:
            continue
        text = e.rule_text
        rule = text if text.startswith("--") else f"rule {text!r}"  # `--add ...`: as given
        try:
            other = bound.scheme.reads(e.name, e.captures, bound.kwargs)
        except SchemeError as err:
            raise RuleError(f"{rule}: {err}") from None
        if other not in ckpt:
            raise RuleError(
                f"{rule}: {bound.describe()} for '{e.name}': the checkpoint has no "
                f"tensor '{other}'{closest_hint(other, ckpt.names())}"
            )
        shape = ckpt.ref(other).shape
        if shape != e.shape:
            raise RuleError(
                f"{rule}: cannot copy '{other}' {list(shape)} into '{e.name}' "
                f"{list(e.shape)}: shapes differ"
            )


def as_rules(rules: Sequence[RuleInput]) -> tuple[Rule, ...]:
    """Rules as given (text or parsed; a lone string is one rule) as parsed `Rule`s."""
    if isinstance(rules, str):
        rules = [rules]
    if not isinstance(rules, (list, tuple)):
        raise UsageError(
            f"rules must be a list of 'PATTERN=ACTION' strings or Rules, got {type(rules).__name__}"
        )
    for r in rules:
        if not isinstance(r, (str, Rule)):
            raise UsageError(
                f"rules: each rule is a 'PATTERN=ACTION' string or a Rule, got {shown(repr(r))[:80]}"
            )
    return tuple(r if isinstance(r, Rule) else parse_rules([r])[0] for r in rules)


def check_device(device: str) -> str:
    """`--device`, checked before any work: an unusable CUDA is a usage error, not a
    traceback halfway through."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"--device {device}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
            f"{'no CUDA build' if torch.version.cuda is None else 'no GPU visible'}); use --device cpu"
        )
    return device


def plan(
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, torch.Tensor],
    rules: Sequence[RuleInput],
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> Plan:
    """What `apply` would do, without writing anything (the `--dry-run`).

    Args:
        source: A checkpoint path, folder or `hf://OWNER/NAME`, an open `Checkpoint`, or an
            in-memory state dict.
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s); the last matching rule wins.
        options: An `ApplyOptions` (the same object `apply` takes; the fields planning has no
            use for, such as `seed` or `overwrite`, are ignored); keywords override it.
        **kwargs: The planning fields of `reinit.ApplyOptions`: `strict`, `allow_unmatched`,
            `unsafe_pickle`, `add`/`drop`/`rename`/`resize`, `model` (enables `type:` patterns and the
            `default` scheme), `config` (the model config some schemes read; default: the
            checkpoint's config.json) and `progress` (the Hub's download bars). Any other
            keyword is a TypeError.

    Returns:
        The `Plan`: one `PlanEntry` per output tensor (action, scheme, expected std, rule),
        with the names `drop` removed and the warnings.

    Example:

    ```python
    import reinit

    plan = reinit.plan("model.safetensors", ["*.weight=orthogonal"], drop=["head.*"])
    print({e.name: e.action for e in plan.entries}, plan.dropped)
    ```
    """
    o = with_kwargs("plan", options, kwargs, PLAN_FIELDS)
    strict, allow_unmatched, unsafe_pickle = o.strict, o.allow_unmatched, o.unsafe_pickle
    add, drop, rename, model, config, progress = (
        o.add,
        o.drop,
        o.rename,
        o.model,
        o.config,
        o.progress,
    )
    from reinit.planning.transplant import SourcePool

    surgery = parse_surgery(add, drop, rename, o.resize)
    rule_objs = as_rules(rules)
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_source(source, unsafe_pickle, progress, o.key))
        loaded = loaded_model(model)
        ckpt, edited = edit_checkpoint(ckpt, surgery, allow_unmatched, config=config, model=loaded)
        pool = stack.enter_context(SourcePool(ckpt, unsafe_pickle, progress))
        view = model_view(loaded if loaded is not None else model, ckpt)
        return plan_for(ckpt, rule_objs, strict, allow_unmatched, pool, view, config, edited)[0]


def edit_checkpoint(
    ckpt: Checkpoint,
    surgery: Surgery,
    allow_unmatched: bool,
    seed: int = 0,
    device: str = "cpu",
    config: Mapping[str, Any] | None = None,
    model: Model | None = None,
) -> tuple[Checkpoint, Edited | None]:
    """The checkpoint as `--drop/--rename/--resize/--add` leave it (itself when there are none), and
    the edit (which `plan_for` marks on the plan: added, renamed, dropped). Tied names resize
    together: those that share storage, and those the model (`model`, `--model`; else the one
    `config`, else the checkpoint's config.json, builds) ties while the file holds two equal
    copies."""
    if not surgery:
        return ckpt, None
    surgery = resolve_fills(surgery, ckpt.config)
    aliases = ckpt.aliases() if surgery.resizes else {}
    resized = None if surgery.renames else {r.name for r in surgery.resizes}  # source names
    view = model_view(model, ckpt) if model is not None and surgery.resizes else None
    by_config = resize_ties(ckpt, config, resized, view) if surgery.resizes else {}
    edited = edit_refs(
        ckpt.refs(),
        surgery,
        allow_unmatched=allow_unmatched,
        aliases=aliases,
        config_tied=by_config,
    )
    return EditedCheckpoint(ckpt, edited, seed, device), edited


def plan_for(
    ckpt: Checkpoint,
    rules: tuple[Rule, ...],
    strict: bool,
    allow_unmatched: bool,
    pool: SourcePool,
    view: ModelView | None = None,
    config: Mapping[str, Any] | None = None,
    edited: Edited | None = None,
) -> tuple[Plan, Ties]:
    """The plan, with tied groups made consistent (see `reinit.planning.ties`), and the ties."""
    if any(r.scheme is not None and r.scheme.scheme.from_config for r in rules):
        # read config.json only when a rule needs it (on the Hub it is one more download)
        rules = resolve_rules(rules, config if config is not None else ckpt.config())
    result = make_plan(
        ckpt.refs(),
        rules,
        strict=strict,
        allow_unmatched=allow_unmatched,
        module_types=view.module_types if view is not None else None,
        held_elsewhere=view.held_elsewhere() if view is not None else None,
    )
    if ckpt.left_out():  # a training checkpoint's non-tensor entries: said, not dropped silently
        result = replace(result, warnings=(*ckpt.left_out(), *result.warnings))
    if view is not None:
        result = check_default(result, view, strict)
    if edited is not None:
        result = mark_plan(result, edited)
    check_reads(result, ckpt)  # after the surgery's own fills (`--add x=[32]:copy(y)`)
    if isinstance(ckpt, ModelCheckpoint):  # `reinit new`: nothing to read before
        result = mark_fresh(result)
    if any(r.kind == "transplant" for r in rules):
        result = check_transplants(result, pool)
        check_strict(result, strict)
    tied_by_config = config_ties(result, ckpt, view, config)
    if edited is not None:  # a group resized together: no longer of the config's vocabulary
        tied_by_config = {**edited.tied, **tied_by_config}
    result, ties = resolve_ties(result, ckpt.aliases(), tied_by_config)
    refuse_overlaps(result, ckpt.overlaps(), ckpt.source)  # after ties: a tie may change one
    return result, ties


def loaded_model(model: ModelInput | None) -> Model | None:
    """`--model` loaded once (so the surgery's ties and the plan see the same model); None
    without one, or for a view already aligned to other names."""
    if model is None or isinstance(model, ModelView):
        return None
    return model if isinstance(model, Model) else load_model(model)


def model_view(model: ModelInput | None, ckpt: Checkpoint) -> ModelView | None:
    """The model (a spec, a loaded `Model`, or a view already) seen through the checkpoint's
    tensor names; None without a model."""
    if model is None:
        return None
    if isinstance(model, ModelView):
        return model
    loaded = model if isinstance(model, Model) else load_model(model)
    return loaded.align(ckpt.names(), {r.name: r.shape for r in ckpt.refs()})


@contextmanager
def open_source(
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, torch.Tensor],
    unsafe_pickle: TrustSpec = (),
    progress: bool = True,
    key: str = "",
) -> Iterator[Checkpoint]:
    """The source as a `Checkpoint`, closed after (an open `Checkpoint` or a state dict passed
    in is used as it is and left open: the caller owns it). `key`: `--key`, the state's dotted
    path inside a torch file."""
    if isinstance(source, Checkpoint):
        yield source
        return
    if isinstance(source, Mapping):
        from reinit.io.memory import StateDictCheckpoint

        yield StateDictCheckpoint(source)
        return
    ckpt = open_checkpoint(source, unsafe_pickle=unsafe_pickle, progress=progress, key=key)
    try:
        yield ckpt
    finally:
        ckpt.close()
