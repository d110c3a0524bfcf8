"""`new`: the checkpoint a model would have, from its config alone
(docs/guide/new-from-config.md). The model is built on the meta device; its checkpoint
(`ModelCheckpoint`: `save_pretrained`'s names, no bytes) goes through `apply` with the rule
`*=default` before the user's, so each tensor is drawn by the architecture's own init unless a
later rule says otherwise, one tensor at a time."""

from __future__ import annotations

__all__ = [
    "NEW_FIELDS",
    "SAVE_PRETRAINED_SHARD",
    "check_new_output",
    "new",
    "plan_new",
    "prepare_new",
]

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from reinit.errors import UsageError
from reinit.options import APPLY_FIELDS, ApplyOptions, OptionKwargs, with_kwargs
from reinit.planning.fresh import DEFAULT_RULE, ModelCheckpoint, check_architecture, config_dtype
from reinit.planning.model import Model, ModelError
from reinit.planning.model_load import load_model
from reinit.planning.model_size import check_draws_fit
from reinit.planning.planner import Plan
from reinit.planning.session import RuleInput, as_rules, plan
from reinit.report.entries import Report
from reinit.rules import Rule
from reinit.run.apply import apply
from reinit.run.outcontrol import parse_dtype
from reinit.run.output import output_format

if TYPE_CHECKING:
    from typing_extensions import Unpack

# What `new` takes of ApplyOptions: not the source-editing ones (the model is the source) nor
# `model`/`config`/`in_place`/`key` (CONFIG names the model and its config), nor
# `config_set`/`labels` (a config.json edited after the model was built from it would not
# describe the weights: edit the config first).
NEW_FIELDS = APPLY_FIELDS - {
    "in_place",
    "key",
    "add",
    "drop",
    "rename",
    "resize",
    "model",
    "config",
    "config_set",
    "labels",
}

SAVE_PRETRAINED_SHARD = "50GB"  # transformers 5's save_pretrained default max_shard_size


def new(
    source: str | os.PathLike[str] | nn.Module,
    output: str | os.PathLike[str],
    rules: Sequence[RuleInput] = (),
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> Report:
    """Write the checkpoint the model `source` names would have: every tensor under
    `save_pretrained`'s names (tied ones stored once, as transformers stores them), drawn by
    the architecture's own init (`default`, seeded per tensor by `seed` and its name) unless a
    rule says otherwise, with its config.json and report, published atomically.

    Args:
        source: The model, as `--model` takes it: a config.json, a model folder, `hf://OWNER/NAME[@REV]`
            (only its config is fetched), `module:callable`, or an `nn.Module`.
        output: A folder (sharded as `save_pretrained` shards, 50GB by default; config.json
            beside the weights) or a `.safetensors` / `.bin` file (the weights alone).
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s) after the implicit `*=default`:
            any scheme, `keep` (the model's own init), or `from(...)` with its transforms.
        options: An `ApplyOptions`; keywords given too override it.
        **kwargs: The fields of `reinit.ApplyOptions` but `in_place`, `key`, `add`, `drop`,
            `rename`, `resize`, `model`, `config`, `config_set` and `labels`: `seed`, `dtype` (default: the config's
            `dtype`/`torch_dtype`, else float32), `max_shard_size`, `reports`, `overwrite`, ...

    Returns:
        The `Report` (also written beside the output unless `default_report=False`).

    Raises:
        ReinitError: a subclass naming the model, file, tensor or rule at fault; nothing is
            written.

    Example:

    ```python
    import reinit

    report = reinit.new("llama-config/", "llama-new/", ["*.bias=zeros"], seed=1)
    print(report.summary.reinit)
    ```
    """
    o = with_kwargs("new", options, kwargs, NEW_FIELDS)
    check_new_output("new", output)
    ckpt, rule_objs, run = prepare_new(source, rules, o, output)
    with ckpt:
        return apply(ckpt, rule_objs, output, options=run)


def plan_new(
    source: str | os.PathLike[str] | nn.Module,
    rules: Sequence[RuleInput] = (),
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> Plan:
    """What `new` would do (`--dry-run`): the plan of the model's checkpoint under
    `*=default` and the rules, writing nothing."""
    o = with_kwargs("plan_new", options, kwargs, NEW_FIELDS)
    ckpt, rule_objs, run = prepare_new(source, rules, o, None)
    with ckpt:
        return plan(ckpt, rule_objs, options=run)


def _check_options(spec: str, o: ApplyOptions) -> None:
    """An options object may carry any field; those `new` cannot honour are refused, not
    ignored (e.g. a `new:` recipe with `config_set`)."""
    given = [
        f for f in ("add", "drop", "rename", "resize", "config_set", "labels") if getattr(o, f)
    ]
    if o.in_place or o.key or o.model is not None or o.config is not None:
        given.append("in_place/key/model/config")
    if given:
        raise UsageError(
            f"new {spec}: {given[0]} does not apply to a model made from its config; edit "
            "the config (or run apply on the output)"
        )


def check_new_output(function: str, output: object) -> None:
    """`new` needs its output named, as `reinit new -o` does: with none, apply's default (the
    source's name + `.reinit.safetensors`) put `config.reinit.safetensors` in the model's
    folder, or `<Class>.reinit.safetensors` in the current one for a module."""
    if output is None:
        raise UsageError(
            f"{function}: output is required: a .safetensors file or a folder (as reinit new -o)"
        )
    if not isinstance(output, (str, os.PathLike)):  # was os.fspath's bare TypeError
        raise UsageError(
            f"{function}: output must be a path (str or os.PathLike), got {type(output).__name__}"
        )


def model_text(config: object) -> str:
    """The text of a model given as a path (a config.json, a model folder, `hf://`,
    `module:callable`); anything else but an `nn.Module` is a `UsageError`."""
    text = os.fspath(config) if isinstance(config, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise UsageError(
            "reinit new: the model must be a config.json, a model folder, hf://OWNER/NAME, "
            f"module:callable or an nn.Module, got {type(config).__name__}"
        )
    return text


def prepare_new(
    config: str | os.PathLike[str] | nn.Module,
    rules: Sequence[RuleInput],
    o: ApplyOptions,
    output: str | os.PathLike[str] | None,
) -> tuple[ModelCheckpoint, tuple[Rule, ...], ApplyOptions]:
    """The model's checkpoint (on the meta device; dtype: --dtype, else the config's, else
    float32; the caller closes it), the rules after `*=default`, and apply's options for it
    (the model view; the shard size save_pretrained uses for a folder output). A recipe's
    `new:` runs its first step with these."""
    spec = type(config).__name__ if isinstance(config, nn.Module) else model_text(config)
    _check_options(spec, o)
    model = _load(config)
    check_architecture(spec, model)
    dtype = parse_dtype(o.dtype) or config_dtype(model.module, spec) or torch.float32
    shard = o.max_shard_size
    folder = output is not None and output_format(os.fspath(output)) == "directory"
    if shard is None and folder and o.format != "dcp":  # DCP has its own layout
        shard = SAVE_PRETRAINED_SHARD
    rule_objs = (*as_rules([DEFAULT_RULE]), *as_rules(rules))
    ckpt = ModelCheckpoint(spec, model, dtype, o.seed)
    if output is not None:  # a plan (--dry-run) draws nothing
        check_draws_fit(spec, ckpt.view)
    return ckpt, rule_objs, replace(o, model=ckpt.view, dtype=None, max_shard_size=shard)


def _load(config: str | os.PathLike[str] | nn.Module) -> Model:
    """`load_model`, its errors naming what the user typed (`reinit new CONFIG`), not a
    `--model` flag that `new` does not have."""
    try:
        return load_model(config)
    except ModelError as e:
        text = str(e)
        if not text.startswith("--model "):
            raise
        raise ModelError("reinit new " + text[len("--model ") :]) from None
