"""Surgery before the rules: --drop, --rename, --resize and --add change the list of tensors
(in that order); the rules then see the new names and shapes. The checkpoint as surgery leaves
it is `reinit.planning.edited.EditedCheckpoint`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

from reinit.errors import RuleError
from reinit.io.checkpoint import TensorRef
from reinit.planning.actions import action_changes
from reinit.planning.planner import Plan, PlanEntry
from reinit.planning.resize import (
    Resized,
    ResizeSpec,
    bind_fill,
    check_whole_in_memory,
    parse_resize,
    resize_ref,
)
from reinit.planning.routers import dropped_experts, expert_axis, router_block
from reinit.rules import Pattern, Rule, closest_hint, fill_template, parse_action, parse_pattern
from reinit.schemes import BoundScheme, missing_from_config, resolve_from_config
from reinit.text import shown

__all__ = [
    "AddSpec",
    "DropSpec",
    "Edited",
    "RenameSpec",
    "Surgery",
    "edit_refs",
    "mark_plan",
    "parse_add",
    "parse_drop",
    "parse_rename",
    "parse_surgery",
    "resolve_fills",
]


ADD_DTYPES = ("float32", "float64", "float16", "bfloat16")  # torch's names: getattr(torch, _)


_ADD = re.compile(r"\s*(?P<name>[^=]+?)\s*=\s*\[(?P<shape>[^\]]*)\]\s*:(?P<rest>.+)\Z", re.S)


_DTYPE_SUFFIX = re.compile(r":\s*dtype\s*=\s*(?P<dtype>\w+)\s*\Z")


T = TypeVar("T")


@dataclass(frozen=True)
class AddSpec:
    """A new tensor: its name, shape, dtype and the scheme that fills it."""

    text: str
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    scheme: BoundScheme

    def rule(self) -> Rule:
        """The rule an added tensor is reported under when no `--rule` overrides it."""
        pattern = Pattern.literal(self.name)
        return Rule(
            f"--add {self.text}", pattern, parse_action(self.scheme.describe()), self.scheme
        )


@dataclass(frozen=True)
class DropSpec:
    """`--drop PATTERN`."""

    text: str
    pattern: Pattern


@dataclass(frozen=True)
class RenameSpec:
    """`--rename PATTERN=TEMPLATE` (the template as in `reinit.schemes.template`)."""

    text: str
    pattern: Pattern
    template: str


@dataclass(frozen=True)
class Surgery:
    """All of a run's --add/--drop/--rename/--resize, parsed; falsy when there are none."""

    adds: tuple[AddSpec, ...] = ()
    drops: tuple[DropSpec, ...] = ()
    renames: tuple[RenameSpec, ...] = ()
    resizes: tuple[ResizeSpec, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.adds or self.drops or self.renames or self.resizes)


def parse_add(text: str) -> AddSpec:
    """`NAME=[d0,d1,...]:SCHEME[:dtype=DTYPE]`, e.g. `classifier.weight=[3,768]:normal(std=0.02)`."""
    where = f"--add {text!r}"
    m = _ADD.match(text)
    if not m:
        raise RuleError(
            f"{where}: write NAME=[d0,d1,...]:SCHEME[:dtype=DTYPE], "
            "e.g. 'classifier.weight=[3,768]:normal(std=0.02)'"
        )
    name = m.group("name")
    shape_text = m.group("shape").strip()
    try:
        shape = tuple(int(d) for d in shape_text.split(",")) if shape_text else ()
    except ValueError:
        raise RuleError(f"{where}: the shape [{shape_text}] must be integers") from None
    if any(d < 0 for d in shape):
        raise RuleError(f"{where}: the shape {list(shape)} has a negative size")
    rest = m.group("rest")
    dtype = torch.float32
    dm = _DTYPE_SUFFIX.search(rest)
    if dm:
        label = dm.group("dtype")
        if label not in ADD_DTYPES:
            raise RuleError(f"{where}: dtype {label!r}: use one of {', '.join(ADD_DTYPES)}")
        dtype = getattr(torch, label)
        rest = rest[: dm.start()]
    _check_add_size(where, shape, dtype)
    action = parse_action(rest, where)
    bound = bind_fill(
        action,
        where,
        "a new tensor needs a scheme to fill it (e.g. zeros, normal(std=0.02)); to copy values "
        "into it, add it and then use --rule NAME=from(...)",
    )
    reason = bound.scheme.can_take(shape, bound.kwargs)
    if reason is not None:
        raise RuleError(
            f"{where}: {bound.describe()} cannot fill a tensor of shape {shape}: {reason}"
        )
    overflow = bound.overflow(dtype, shape)
    if overflow is not None:
        raise RuleError(f"{where}: {overflow}")
    return AddSpec(text, name, shape, dtype, bound)


def _check_add_size(where: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """An added tensor is generated whole in memory before it is written."""
    check_whole_in_memory(where, shape, dtype, "an added tensor")


def parse_drop(text: str) -> DropSpec:
    """`--drop PATTERN`: a rule's glob or `re:` pattern."""
    return DropSpec(text, _name_pattern(text.strip(), "--drop"))


def _name_pattern(text: str, flag: str) -> Pattern:
    """A surgery pattern: surgery runs on the names before any model maps its modules, so a
    `type:` pattern would select nothing (and the closest names would be its own tensors)."""
    pattern = parse_pattern(text)
    if pattern.module_types:
        raise RuleError(
            f"{flag} {text}: surgery selects tensors by name, before --model maps modules, so "
            "type: patterns cannot select here; give a glob or re: pattern"
        )
    return pattern


def parse_rename(text: str) -> RenameSpec:
    """`PATTERN=TEMPLATE` (split at the first `=`); the template takes `{name}`, `{1}`, …"""
    if "=" not in text:
        raise RuleError(
            f"--rename {text!r}: write PATTERN=TEMPLATE, e.g. 'model.*={{1}}' or "
            "'re:(.*)\\.gamma={1}.weight'"
        )
    left, right = text.split("=", 1)
    template = right.strip()
    if not template:
        raise RuleError(f"--rename {text!r}: the template after '=' is empty")
    return RenameSpec(text, _name_pattern(left.strip(), "--rename"), template)


def parse_surgery(
    add: Sequence[str | AddSpec] = (),
    drop: Sequence[str | DropSpec] = (),
    rename: Sequence[str | RenameSpec] = (),
    resize: Sequence[str | ResizeSpec] = (),
) -> Surgery:
    """The options as given (text or specs already parsed) into one `Surgery`."""
    return Surgery(
        _parsed(add, parse_add),
        _parsed(drop, parse_drop),
        _parsed(rename, parse_rename),
        _parsed(resize, parse_resize),
    )


def resolve_fills(surgery: Surgery, config: Callable[[], Mapping[str, Any] | None]) -> Surgery:
    """`--add`/`--resize` fills whose arguments come from the model config (`scaled_normal`'s
    layers, `small_init`'s dim) filled from the source's `config.json` (`config`, read only
    when one needs it), as a rule's are; one still missing is a usage error, not an error
    while writing."""
    if not any(_from_config(b) for b in _fills(surgery)):
        return surgery
    cfg = config()
    adds = tuple(replace(a, scheme=_resolved(a.text, "--add", a.scheme, cfg)) for a in surgery.adds)
    resizes = tuple(
        replace(r, scheme=_resolved(r.text, "--resize", r.scheme, cfg)) if r.scheme else r
        for r in surgery.resizes
    )
    return replace(surgery, adds=adds, resizes=resizes)


def _fills(surgery: Surgery) -> list[BoundScheme]:
    return [a.scheme for a in surgery.adds] + [r.scheme for r in surgery.resizes if r.scheme]


def _from_config(bound: BoundScheme) -> bool:
    return bool(bound.scheme.from_config)


def _resolved(
    text: str, flag: str, bound: BoundScheme, config: Mapping[str, Any] | None
) -> BoundScheme:
    if not _from_config(bound):
        return bound
    resolved = resolve_from_config(bound, config)
    problem = missing_from_config(resolved)
    if problem:
        raise RuleError(f"{flag} {text!r}: {problem}")
    return resolved


def _parsed(items: Sequence[str | T], parse: Callable[[str], T]) -> tuple[T, ...]:
    """Each item parsed from its text, or taken as given (a bare string is one item)."""
    if isinstance(items, str):
        items = [items]
    return tuple(parse(x) if isinstance(x, str) else x for x in items)


@dataclass(frozen=True)
class Edited:
    """The tensor list after surgery: each output name and where its bytes come from."""

    refs: tuple[TensorRef, ...]
    origin: dict[str, str]  # output name -> source name (for every kept or renamed tensor)
    added: dict[str, AddSpec]
    dropped: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    resized: Mapping[str, Resized] = field(default_factory=dict)  # output name -> its resize
    # the names the model's config ties while the file holds two equal copies (as
    # `Checkpoint.aliases`, output names): resized together, so still one tie group
    tied: Mapping[str, str] = field(default_factory=dict)
    # a router cut to its first entries though a dropped expert's entry is among them: output
    # name -> the warning, said unless a rule gives that router new values (`mark_plan`)
    router_cuts: Mapping[str, str] = field(default_factory=dict)


def _unmatched(
    flag: str, text: str, names: Sequence[str], allow: bool, warnings: list[str]
) -> None:
    msg = f"{flag} {text!r} matches no tensor{closest_hint(text, list(names))}"
    if not allow:
        raise RuleError(msg + " (--allow-unmatched makes this a warning)")
    warnings.append(msg)


def edit_refs(
    refs: Sequence[TensorRef],
    surgery: Surgery,
    *,
    allow_unmatched: bool = False,
    aliases: Mapping[str, str] | None = None,
    config_tied: Mapping[str, str] | None = None,
) -> Edited:
    """Drop, then rename, then resize, then add. Usage errors: a pattern that matches nothing
    (unless allowed), two tensors renamed to one name, a resize of a missing name or of the
    wrong rank, an added name that already exists. `aliases` (the source's tied names) make a
    resize of one tied name resize its group; so do `config_tied` (the names the model's
    config ties, held as two equal copies: `planning.config_ties.resize_ties`)."""
    warnings: list[str] = []
    kept, dropped = _drop(refs, surgery.drops, allow_unmatched, warnings)
    current = _rename([r.name for r in kept], surgery.renames, allow_unmatched, warnings)
    _check_distinct(kept, current)
    out_refs = [replace(r, name=new) for r, new in zip(kept, current, strict=True)]
    origin = {new: r.name for r, new in zip(kept, current, strict=True)}
    tied = {**(aliases or {}), **(config_tied or {})}
    resized = _resize_refs(out_refs, origin, surgery.resizes, tied, allow_unmatched, warnings)
    out_refs = [
        replace(r, shape=resized[r.name].shape) if r.name in resized else r for r in out_refs
    ]
    shards = sorted({r.shard for r in refs}) or [""]
    added = _add(out_refs, origin, surgery.adds, shards[-1])
    if refs and not out_refs and not added:
        _refuse_empty(surgery, dropped)
    kept_ties = _renamed_ties(config_tied or {}, origin)
    cuts = _routers_cut_past_dropped(dropped, origin, resized)
    return Edited(
        tuple(out_refs), origin, added, tuple(dropped), tuple(warnings), resized, kept_ties, cuts
    )


def _renamed_ties(tied: Mapping[str, str], origin: Mapping[str, str]) -> dict[str, str]:
    """The tied names (source names) that surgery kept, under their output names."""
    new_name = {old: new for new, old in origin.items()}
    return {new_name[a]: new_name[b] for a, b in tied.items() if a in new_name and b in new_name}


def _refuse_empty(surgery: Surgery, dropped: Sequence[str]) -> None:
    """An output with no tensor is refused (exit 2): a checkpoint of nothing loads as nothing,
    and a `--drop` that takes every tensor is far likelier a pattern wider than meant."""
    drops = " ".join(f"--drop {shown(d.text)!r}" for d in surgery.drops)
    names = ", ".join(shown(n) for n in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
    raise RuleError(
        f"{drops} drops every tensor ({len(dropped)}: {names}), which would write "
        "a checkpoint with none; nothing written. Drop fewer (a narrower pattern), or, to keep "
        "only new tensors, --add them"
    )


def _drop(
    refs: Sequence[TensorRef],
    drops: Sequence[DropSpec],
    allow_unmatched: bool,
    warnings: list[str],
) -> tuple[list[TensorRef], list[str]]:
    """The refs no --drop pattern matches, and the names dropped."""
    names = [r.name for r in refs]
    dropped: list[str] = []
    drop_hit = [False] * len(drops)
    kept: list[TensorRef] = []
    for r in refs:
        hit = False
        for i, d in enumerate(drops):
            if d.pattern.match(r.name) is not None:
                drop_hit[i] = hit = True
        if hit:
            dropped.append(r.name)
        else:
            kept.append(r)
    for d, hit in zip(drops, drop_hit, strict=True):
        if not hit:
            _unmatched("--drop", d.text, names, allow_unmatched, warnings)
    return kept, dropped


def _rename(
    current: list[str],
    renames: Sequence[RenameSpec],
    allow_unmatched: bool,
    warnings: list[str],
) -> list[str]:
    """The names after each --rename in order (same length and order as `current`)."""
    for rn in renames:
        hit = False
        out: list[str] = []
        for n in current:
            caps = rn.pattern.match(n)
            if caps is None:
                out.append(n)
                continue
            hit = True
            new = fill_template(rn.template, n, caps, f"--rename {rn.text!r}")
            if not new:
                raise RuleError(f"--rename {rn.text!r}: renames '{n}' to an empty name")
            out.append(new)
        if not hit:
            _unmatched("--rename", rn.text, current, allow_unmatched, warnings)
        current = out
    return current


def _check_distinct(kept: Sequence[TensorRef], current: Sequence[str]) -> None:
    """No two tensors renamed to one name."""
    seen: dict[str, str] = {}
    for r, new in zip(kept, current, strict=True):
        if new in seen:
            raise RuleError(
                f"--rename: '{seen[new]}' and '{r.name}' would both be named '{new}'; "
                "make the templates tell them apart or --drop one"
            )
        seen[new] = r.name


def _add(
    out_refs: list[TensorRef], origin: Mapping[str, str], adds: Sequence[AddSpec], shard: str
) -> dict[str, AddSpec]:
    """Append each --add tensor (in the last shard) to `out_refs`; a name that exists is an
    error."""
    added: dict[str, AddSpec] = {}
    for a in adds:
        if a.name in origin or a.name in added:
            raise RuleError(
                f"--add {a.text!r}: a tensor '{a.name}' already exists; "
                f"--drop it first or pick another name"
            )
        added[a.name] = a
        out_refs.append(TensorRef.of(a.name, a.dtype, a.shape, shard))
    return added


def _resize_refs(
    refs: Sequence[TensorRef],
    origin: Mapping[str, str],
    resizes: Sequence[ResizeSpec],
    aliases: Mapping[str, str],
    allow_unmatched: bool,
    warnings: list[str],
) -> dict[str, Resized]:
    """Each `--resize` resolved against the tensor it names (after renames), and against
    every name tied to it (one storage: they resize together, drawn under the name given)."""
    by_name = {r.name: r for r in refs}
    new_name = {old: new for new, old in origin.items()}
    groups: dict[str, list[str]] = {}
    for name, first in aliases.items():
        groups.setdefault(first, [first]).append(name)
    out: dict[str, Resized] = {}
    for spec in resizes:
        ref = by_name.get(spec.name)
        if ref is None:
            _not_a_pattern(spec, list(by_name))
            _unmatched("--resize", spec.text, list(by_name), allow_unmatched, warnings)
            continue
        root = aliases.get(origin[spec.name], origin[spec.name])
        tied = [new_name[n] for n in groups.get(root, [root]) if n in new_name]
        for name in dict.fromkeys([spec.name, *tied]):
            done = resize_ref(spec, by_name[name], spec.name)
            if name in out and out[name].shape != done.shape:
                other = out[name].spec.name if out[name].spec.name != name else spec.name
                why = f" ('{name}' is tied with '{other}')" if other != name else ""
                raise RuleError(
                    f"--resize {spec.text!r}: '{name}' is already resized to "
                    f"{list(out[name].shape)} by --resize {out[name].spec.text!r}{why}"
                )
            out.setdefault(name, done)
    warnings.extend(_untied_heads(refs, out))
    warnings.extend(_heads_resized_apart(out))
    return out


def _routers_cut_past_dropped(
    dropped: Sequence[str], origin: Mapping[str, str], resized: Mapping[str, Resized]
) -> dict[str, str]:
    """A warning for a router `--resize` cut to its first N rows in a run whose `--drop` took an
    expert of that layer below N: row i routes to expert i, so the dropped expert's row stays
    and a later expert's is lost (renumbered, that expert is routed by the wrong row)."""
    out: dict[str, str] = {}
    for name, rs in resized.items():
        src = origin.get(name, name)
        block = router_block(src, len(rs.old))
        if block is None:
            continue
        axis = expert_axis(src, len(rs.old))
        rows = rs.shape[axis]
        gone = dropped_experts(dropped, block)
        early = sorted(i for i in gone if i < rows)
        lost = [i for i in range(rows, rs.old[axis]) if i not in gone]
        if rows < rs.old[axis] and early and lost:
            out[name] = (
                f"--resize {rs.spec.text!r} keeps the first {rows} entries of '{name}' along "
                f"its experts axis, but --drop took expert {early[0]} of that layer: its router "
                f"entry stays and expert {lost[0]}'s is lost (entry i routes to expert i); "
                f"re-initialize the router with a rule, or drop the last experts instead"
            )
    return out


def _not_a_pattern(spec: ResizeSpec, names: Sequence[str]) -> None:
    """A `--resize` whose name is a pattern that matches tensors is told that it takes one
    tensor's exact name (not "matches no tensor" with the very names it matches)."""
    try:
        pattern = parse_pattern(spec.name)
    except RuleError:
        return
    hits = [n for n in names if pattern.has_wildcards and pattern.match(n) is not None]
    if hits:
        more = f", … ({len(hits)} in all)" if len(hits) > 3 else ""
        raise RuleError(
            f"--resize {spec.text!r}: --resize takes one tensor's exact name, not a pattern "
            f"(this one matches {', '.join(map(shown, hits[:3]))}{more}); give one --resize "
            "per tensor"
        )


#: The LM head's tensors with one entry per token: its weight (untied: Llama's `lm_head`) and
#: its own bias (BERT's `cls.predictions.bias`, RoBERTa's `lm_head.bias`, BART's
#: `final_logits_bias` `[1, V]`), which a tied decoder does not share with the embedding.
_LM_HEAD = re.compile(
    r"(?:^|\.)(?:(?:lm_head|embed_out|generator_lm_head|vocab_projector)(?:\.decoder)?"
    r"\.(?:weight|bias)|predictions(?:\.decoder)?\.bias|final_logits_bias)$"
)


def _head_shape(name: str, embedding: tuple[int, ...], rows: int) -> tuple[int, ...]:
    """The shape the LM-head tensor `name` has for `rows` tokens, beside an `embedding`."""
    if name.endswith("final_logits_bias"):
        return (1, rows)
    return (rows,) if name.endswith(".bias") else (rows, *embedding[1:])


def _untied_heads(refs: Sequence[TensorRef], resized: Mapping[str, Resized]) -> list[str]:
    """A warning for an LM head's tensor left at the old vocabulary while the embedding it
    mirrors grew or shrank (a Llama's `lm_head`, a BERT MLM's decoder bias): the model would
    not load."""
    out: list[str] = []
    for r in refs:
        if r.name in resized or not _LM_HEAD.search(r.name):
            continue
        for rs in resized.values():
            old, new = tuple(rs.old), tuple(rs.shape)
            if (
                len(old) != 2
                or new[1:] != old[1:]
                or tuple(r.shape) != _head_shape(r.name, old, old[0])
            ):
                continue
            want = _head_shape(r.name, old, new[0])
            dims = (
                f"{new[0]},*" if len(want) == 2 and want[0] == new[0] else ",".join(map(str, want))
            )
            out.append(
                f"--resize {rs.spec.text!r}: '{r.name}' still has {old[0]} rows; "
                f"resize it too (--resize '{r.name}=[{dims}]') if it is the "
                f"head of '{rs.spec.name}'"
            )
            break
    return out


def _rows_of(name: str, shape: Sequence[int]) -> int:
    """The tokens an LM-head tensor's shape stands for (`final_logits_bias` is [1, V])."""
    return shape[-1] if name.endswith("final_logits_bias") else shape[0]


def _heads_resized_apart(resized: Mapping[str, Resized]) -> list[str]:
    """A warning for an LM head's tensor resized to another vocabulary than the embedding it
    mirrored (`--resize 'embed_tokens.weight=[140,*]' --resize 'lm_head.weight=[141,*]'`, a
    typo): the model would not load."""
    out: list[str] = []
    for name, head in resized.items():
        if not _LM_HEAD.search(name):
            continue
        old, new = _rows_of(name, head.old), _rows_of(name, head.shape)
        for other, rs in resized.items():
            if other == name or _LM_HEAD.search(other) or len(rs.old) != 2:
                continue
            if rs.old[0] == old and rs.shape[0] != new and rs.shape[1:] == rs.old[1:]:
                out.append(
                    f"--resize {head.spec.text!r}: '{name}' gets {new} rows but '{other}' "
                    f"{rs.shape[0]}; give them one vocabulary if '{name}' is its head"
                )
                break
    return out


def mark_plan(plan: Plan, edited: Edited) -> Plan:
    """Record surgery in the plan: added, renamed and resized entries say so; an added tensor
    no rule matched is reported as re-initialized by its --add scheme, a grown one by its
    --resize fill (a rule that matches it wins, on the new shape)."""
    entries: list[PlanEntry] = []
    for e in plan.entries:
        if e.name in edited.added:
            e = replace(e, added=True)
            if e.rule is None:
                e = replace(e, action="reinit", rule=edited.added[e.name].rule())
        elif edited.origin.get(e.name, e.name) != e.name:
            e = replace(e, renamed_from=edited.origin[e.name])
        rs = edited.resized.get(e.name)
        if rs is not None:
            e = replace(e, resized=rs.note())
            if e.rule is None and rs.grows:  # its new entries are the resize's own values
                e = replace(e, action="reinit", rule=rs.rule(), resize_fills=True)
        entries.append(e)
    cuts = tuple(
        edited.router_cuts[e.name]
        for e in entries
        if e.name in edited.router_cuts and not action_changes(e.action)
    )
    return replace(
        plan,
        entries=tuple(entries),
        warnings=plan.warnings + edited.warnings + cuts,
        dropped=edited.dropped,
    )
