"""Ties a checkpoint keeps as two tensors: a safetensors GPT-2 written with both
`transformer.wte.weight` and an equal `lm_head.weight` (`save_file` of a state dict, older tools),
whose config ties word embeddings. Safetensors cannot alias, so the file holds two equal copies;
the model's tie (transformers' own, read off the model its config builds) makes them one group,
which `planning.ties` keeps consistent: a rule on one gives both the same values.

A `--resize` of one member resizes the group (`resize_ties`, asked before the surgery), as
for names that share storage, so the two copies stay equal.

Only asked when a changed tensor could be one (a 2-D tensor of the vocabulary's length with a
same-shaped partner in the checkpoint), so other runs never build the model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from reinit.errors import ReinitError
from reinit.io.checkpoint import Checkpoint
from reinit.planning.model import ModelView, tied_copies
from reinit.planning.planner import Plan

__all__ = ["config_ties", "resize_ties"]


def config_ties(
    plan: Plan, ckpt: Checkpoint, view: ModelView | None, config: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Tied names the checkpoint holds as separate, equal tensors: name -> the first name of
    its group (as `Checkpoint.aliases`). The model is `view`'s, else the one the config
    (`config`, else the checkpoint's config.json, read only when a changed tensor could be
    tied) builds; {} when there is none or it ties nothing the checkpoint holds twice."""
    changed = [tuple(e.shape) for e in plan.entries if e.changes]
    return _ties(ckpt, view, config, changed, [tuple(e.shape) for e in plan.entries])


def resize_ties(
    ckpt: Checkpoint,
    config: Mapping[str, Any] | None = None,
    resized: Collection[str] | None = None,
    view: ModelView | None = None,
) -> dict[str, str]:
    """`config_ties` of the source before a `--resize`: the names a resize of one member
    resizes together. `resized`: the source names resized (None: any may be, e.g. under a
    rename); only a resize of a possible member builds the model and compares the copies (a
    classifier's resize never reads a 2 × vocabulary × hidden pair of embeddings)."""
    shapes = [tuple(r.shape) for r in ckpt.refs()]
    changed = [tuple(r.shape) for r in ckpt.refs() if resized is None or r.name in resized]
    return _ties(ckpt, view, config, changed, shapes)


def _ties(
    ckpt: Checkpoint,
    view: ModelView | None,
    config: Mapping[str, Any] | None,
    changed: Sequence[tuple[int, ...]],
    shapes: Sequence[tuple[int, ...]],
) -> dict[str, str]:
    """`config_ties` for tensors of shapes `changed` among all the checkpoint's `shapes`."""
    if ckpt.aliases() or not _could_be_tied(changed, shapes, None):
        return {}
    if view is None:
        config = config if config is not None else ckpt.config()
        if config is None or not _could_be_tied(changed, shapes, config):
            return {}
        view = _own_view(ckpt, config)
    if view is None:
        return {}
    by_model = {m: ck for ck, m in view.names.items()}
    out: dict[str, str] = {}
    for copy, kept in tied_copies(view.model.module).items():
        a, b = by_model.get(kept), by_model.get(copy)
        if a is None or b is None or a == b or a not in ckpt or b not in ckpt:
            continue  # a name OUT no longer holds (`report --against` after a rename)
        if _same_values(ckpt, a, b):
            out[b] = a
    return out


def _vocab_size(config: Mapping[str, Any]) -> object:
    text = config.get("text_config")
    own = config.get("vocab_size")
    return own if own is not None or not isinstance(text, Mapping) else text.get("vocab_size")


def _could_be_tied(
    changed: Sequence[tuple[int, ...]],
    shapes: Sequence[tuple[int, ...]],
    config: Mapping[str, Any] | None,
) -> bool:
    """Whether a changed tensor (of a shape in `changed`) has a same-shaped partner that an
    embedding tie could make: with a config (no `--model`), one that ties word embeddings and
    a tensor of its vocabulary's length. Cheap: decides whether the model is built at all."""
    vocab: object = None
    if config is not None:
        if "model_type" not in config or config.get("tie_word_embeddings") is False:
            return False
        vocab = _vocab_size(config)
    count = Counter(shapes)
    return any(
        len(shape) == 2 and count[shape] > 1 and (config is None or shape[0] == vocab)
        for shape in changed
    )


def _own_view(ckpt: Checkpoint, config: Mapping[str, Any] | None) -> ModelView | None:
    """The model `config` describes on the meta device, seen through the checkpoint's names;
    None when it cannot be built here (then nothing is known about its ties)."""
    if config is None:
        return None
    from reinit.planning.model_load import model_of_config

    try:
        model = model_of_config("config.json", config, internal=True)
    except ReinitError:
        return None
    return model.align(ckpt.names(), {r.name: r.shape for r in ckpt.refs()})


def _same_values(ckpt: Checkpoint, a: str, b: str) -> bool:
    """Whether two tensors hold the same bytes (same dtype and shape), read piece by piece."""
    ra, rb = ckpt.ref(a), ckpt.ref(b)
    if ra.shape != rb.shape or ra.dtype_name != rb.dtype_name:
        return False
    return _equal_chunks(ckpt.iter_chunks(a), ckpt.iter_chunks(b))


def _equal_chunks(xs: Iterable[memoryview], ys: Iterable[memoryview]) -> bool:
    """Whether two byte streams are equal, whatever their pieces' lengths."""
    left = (memoryview(x).cast("B") for x in xs if len(x))
    right = (memoryview(y).cast("B") for y in ys if len(y))
    a = b = memoryview(b"")
    while True:
        a = a or next(left, memoryview(b""))
        b = b or next(right, memoryview(b""))
        if not a or not b:
            return not a and not b
        n = min(len(a), len(b))
        if a[:n] != b[:n]:
            return False
        a, b = a[n:], b[n:]
