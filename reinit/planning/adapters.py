"""What the adapters of `from(...)` need besides tensors (issue 15, docs/guide/transplant.md): `init=` /
`new=` bound to a scheme, and `rows=`' names read from the two tokenizer files (or the two
config.json files' `id2label`). Resolved when the plan is checked, so a missing tokenizer
file, a file that does not describe the tensor or a scheme that cannot fill rows is exit 2
before anything is written; the names are read once per run (`RowNamesCache`)."""

from __future__ import annotations

from collections.abc import Sequence

from reinit.errors import RuleError, SchemeError, TransplantError
from reinit.io.checkpoint import Checkpoint
from reinit.rules import parse_action
from reinit.schemes import bind_scheme
from reinit.transforms.rows import KEEP, MEAN_RESIZE, NewFill, RowNames, map_rows
from reinit.transforms.spec import TransformSpec
from reinit.transforms.vocab import row_names

__all__ = ["RowNamesCache", "adapter_inputs", "bind_fill", "check_adapter"]

# (rows, source, target, vocab=, src_vocab=, --labels) -> the names read
RowNamesCache = dict[tuple[str | tuple[str, ...] | None, ...], RowNames]


def bind_fill(
    text: str | None, default: str, words: Sequence[str], arg: str, where: str
) -> NewFill:
    """`init=` / `new=`: one of `words` (`keep`, `mean_resize`) or a scheme with its
    arguments (`normal(std=0.02)`), bound; `default` when not given."""
    if text is None:
        return default
    if text in words:
        return text
    action = parse_action(text, where)
    if action.name == MEAN_RESIZE:
        raise RuleError(
            f"{where}: {arg}={text}: mean_resize fills new rows of rows=; here use "
            f"{' or '.join(words)} or a scheme such as normal(std=0.02)"
        )
    try:
        bound = bind_scheme(action.name, action.args, action.kwargs_dict())
    except SchemeError as e:
        raise RuleError(f"{where}: {arg}={text}: {e}") from None
    if bound.scheme.needs_context:
        raise RuleError(
            f"{where}: {arg}={text}: this scheme reads other values and cannot fill new "
            f"rows; use {' or '.join(words)} or a scheme such as normal(std=0.02)"
        )
    return bound


def adapter_inputs(
    spec: TransformSpec,
    source: Checkpoint,
    target: Checkpoint | None,
    cache: RowNamesCache,
    where: str,
    target_labels: Sequence[str] | None = None,
) -> tuple[NewFill | None, RowNames | None]:
    """(the bound fill of new positions/rows, the row names) a transform needs; (None, None)
    for the transforms that need neither. `target_labels`: `--labels`, the output's class
    names (for `rows=labels`)."""
    if spec.resample == "copy":
        return bind_fill(spec.init, KEEP, (KEEP,), "init", where), None
    if spec.rows is None:
        return None, None
    default = MEAN_RESIZE if spec.rows == "tokens" else KEEP
    fill = bind_fill(spec.new, default, (MEAN_RESIZE, KEEP), "new", where)
    if target is None:
        raise TransplantError(f"{where}: rows= needs the target checkpoint's files")
    labels = tuple(target_labels) if target_labels is not None else None
    key = (spec.rows, source.source, target.source, spec.vocab, spec.src_vocab, labels)
    names = cache.get(key)
    if names is None:
        names = row_names(
            spec.rows,
            source,
            target,
            vocab=spec.vocab,
            src_vocab=spec.src_vocab,
            where=where,
            target_labels=labels,
        )
        cache[key] = names
    return fill, names


def check_adapter(
    spec: TransformSpec,
    source: Checkpoint,
    target: Checkpoint | None,
    cache: RowNamesCache,
    source_shape: tuple[int, ...] | None,
    target_shape: tuple[int, ...],
    where: str,
    target_labels: Sequence[str] | None = None,
) -> None:
    """At plan time: the fill binds and, for `rows=`, both name files describe the tensors
    (no id past a tensor's rows; `source_shape` None: known only once the source is cut)."""
    _, names = adapter_inputs(spec, source, target, cache, where, target_labels)
    if names is not None and source_shape and target_shape:
        what = "vocab" if spec.rows == "tokens" else "id2label"
        rows = source_shape[0], target_shape[0]
        map_rows(names.source, names.target, *rows, where=where, what=what)
