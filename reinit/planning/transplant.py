"""Transplant: `from(SOURCE, key=TEMPLATE|auto, on_mismatch=error|skip|slice)` (docs/guide/transplant.md).

Each source is opened once per run (`SourcePool`), lazily: only the shards that hold needed
tensors are opened or downloaded. Every source key is resolved and checked before anything is
written."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import NamedTuple

import torch

from reinit.errors import TransplantError
from reinit.io.checkpoint import Checkpoint
from reinit.io.hub import is_hf_url, parse_hf_url
from reinit.io.sources import open_checkpoint
from reinit.io.trust import TrustSpec
from reinit.planning.adapters import RowNamesCache, adapter_inputs, check_adapter
from reinit.planning.casts import lossy_cast_note, refuse_out_of_range
from reinit.planning.planner import Plan, PlanEntry
from reinit.planning.source_std import pooled_std
from reinit.rules import TransplantSpec, closest_hint, fill_template
from reinit.transforms.apply import TransformContext, other_dim_hint, result_shape, transform
from reinit.transforms.spec import TransformSpec

__all__ = [
    "AUTO",
    "AUTO_MIN_PARTS",
    "EQUAL_TO_SOURCE",
    "MISMATCHES_SHOWN",
    "SourcePool",
    "Transplanted",
    "auto_keys",
    "check_transplants",
    "entry_transform",
    "exact_source",
    "resolve_keys",
    "source_key",
    "source_keys",
    "transform_label",
    "transplant_value",
]


MISMATCHES_SHOWN = 5  # pairs named in a shape-mismatch error; the count says how many in all


AUTO = "auto"

EQUAL_TO_SOURCE = "equal to source"  # a plain copy's note: its values are the source's


AUTO_MIN_PARTS = 2  # a shared suffix of one part (`weight`, `bias`) says nothing


def source_key(spec: TransplantSpec, name: str, captures: Sequence[str], rule_text: str) -> str:
    """The source tensor's name: the template with `{name}` and captures `{1}`, `{2}`, …
    (`key=auto` is resolved against the source's names by `auto_keys`, not here)."""
    if spec.key is None:
        return name
    return fill_template(spec.key, name, captures, f"rule {rule_text!r}")


def source_keys(
    spec: TransplantSpec, name: str, captures: Sequence[str], rule_text: str
) -> tuple[str, ...]:
    """Every source tensor the rule reads, in order: one, the `cat=` templates filled, or for
    `stack=` each expert's templates (`{e}` = 0..experts-1), expert after expert."""
    if spec.cat:
        return tuple(fill_template(t, name, captures, f"rule {rule_text!r}") for t in spec.cat)
    if spec.stack:
        where = f"rule {rule_text!r}"
        experts = range(spec.transform.experts)
        filled = (t.replace("{e}", str(e)) for e in experts for t in spec.stack)
        return tuple(fill_template(t, name, captures, where) for t in filled)
    return (source_key(spec, name, captures, rule_text),)


def _suffixes(name: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `b.c`, `c`]: its dotted suffixes, longest first."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def auto_keys(targets: Sequence[str], source_names: Sequence[str], where: str) -> dict[str, str]:
    """`key=auto`: each target takes the source tensor sharing the longest dotted suffix with
    it (at least two parts, or the whole name), as detectron2 aligns checkpoints. A target
    with two equally good sources, or a source that would feed two targets, is an error."""
    by_suffix: dict[str, list[str]] = {}
    for s in source_names:
        for suf in _suffixes(s):
            by_suffix.setdefault(suf, []).append(s)
    chosen: dict[str, str] = {}
    for t in targets:
        hits: list[str] = []
        for suf in _suffixes(t):
            if suf.count(".") + 1 < AUTO_MIN_PARTS and suf != t:
                break
            hits = by_suffix.get(suf, [])
            if hits:
                break
        if not hits:
            raise TransplantError(
                f"{where}: key=auto found no source tensor sharing a dotted suffix of "
                f"{AUTO_MIN_PARTS}+ parts with '{t}'{closest_hint(t, list(source_names))}; "
                "give key=TEMPLATE instead"
            )
        if len(hits) > 1:
            shown = ", ".join(f"'{h}'" for h in hits[:5])
            raise TransplantError(
                f"{where}: key=auto is ambiguous for '{t}': {len(hits)} source tensors match "
                f"equally well ({shown}); give key=TEMPLATE or a narrower pattern"
            )
        chosen[t] = hits[0]
    fed: dict[str, list[str]] = {}
    for t, s in chosen.items():
        fed.setdefault(s, []).append(t)
    for s, ts in fed.items():
        if len(ts) > 1:
            shown = ", ".join(f"'{t}'" for t in ts[:5])
            raise TransplantError(
                f"{where}: key=auto would feed source tensor '{s}' to {len(ts)} targets "
                f"({shown}); give key=TEMPLATE or a narrower pattern"
            )
    return chosen


class SourcePool:
    """Opens each transplant source once; the target itself may be named as a source."""

    def __init__(
        self,
        target: Checkpoint | None = None,
        unsafe_pickle: TrustSpec = (),
        progress: bool = True,
        target_labels: Sequence[str] | None = None,
    ):
        self.target = target
        self.target_labels = target_labels  # --labels: the output's class names (rows=labels)
        self.unsafe_pickle = unsafe_pickle
        self.progress = progress
        self._open: dict[str, Checkpoint] = {}
        self.row_names: RowNamesCache = {}  # rows=: names read once per run

    def get(self, source: str, state: str = "") -> Checkpoint:
        """The source opened (once per source and `state=` path inside a torch file)."""
        ident = _identity(source, state)
        ck = self._open.get(ident)
        if ck is None:
            ck = open_checkpoint(
                source,
                unsafe_pickle=self.unsafe_pickle,
                progress=self.progress,
                key=state,
                key_flag="from(..., state=)",
            )
            self._open[ident] = ck
        return ck

    def opened(self) -> list[str]:
        """The sources opened so far (by identity), for tests and messages."""
        return list(self._open)

    def close(self) -> None:
        for ck in self._open.values():
            ck.close()
        self._open.clear()

    def __enter__(self) -> SourcePool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _identity(source: str, state: str = "") -> str:
    """One key per source however it is spelled: `./a.safetensors` and `a.safetensors` are
    the same file; `hf://acme/m` and `hf://models/acme/m` the same repo. Two `state=` paths
    inside one torch file are two sources."""
    ident = parse_hf_url(source).url if is_hf_url(source) else os.path.realpath(source)
    return f"{ident}#{state}" if state else ident


def _spec(entry: PlanEntry) -> TransplantSpec:
    assert entry.rule is not None and entry.rule.transplant is not None
    return entry.rule.transplant


def entry_transform(spec: TransplantSpec, entry: PlanEntry) -> TransformSpec:
    """The rule's transform with what depends on the target's name filled in (`expert={2}`:
    the expert index from the name's second capture)."""
    t = spec.transform
    if t.expert_template is None:
        return t
    where = f"rule {entry.rule_text!r}"
    text = fill_template(t.expert_template, entry.name, entry.captures, where)
    if not text.isdigit():
        raise TransplantError(f"{where}: '{entry.name}': expert={text!r} is not an index")
    return replace(t, expert=int(text), expert_template=None)


def resolve_keys(plan: Plan, pool: SourcePool) -> dict[str, tuple[str, ...]]:
    """Each transplant target's source tensor names (several for `cat=`): from its key
    templates, or by `key=auto` over all the targets of the same source (so one source
    tensor feeds at most one)."""
    keys: dict[str, tuple[str, ...]] = {}
    auto: dict[str, list[PlanEntry]] = {}
    for e in plan.entries:
        if e.action != "transplant":
            continue
        spec = _spec(e)
        if spec.key == AUTO:
            auto.setdefault(_identity(spec.source, spec.state), []).append(e)
        else:
            keys[e.name] = source_keys(spec, e.name, e.captures, e.rule_text)
    for entries in auto.values():
        rule_texts = sorted({e.rule.text for e in entries if e.rule is not None})
        where = "rule " + ", ".join(repr(t) for t in rule_texts)
        names = pool.get(_spec(entries[0]).source, _spec(entries[0]).state).names()
        chosen = auto_keys([e.name for e in entries], names, where)
        keys.update({t: (s,) for t, s in chosen.items()})
    return keys


def _missing_keys(
    plan: Plan, keys: Mapping[str, tuple[str, ...]], pool: SourcePool
) -> list[tuple[PlanEntry, str]]:
    """Each source key a transplant needs and its source lacks, once (many targets may read
    one key: every expert of a layer from its dense MLP), with the first entry that needs it."""
    missing: dict[tuple[str, str, str], tuple[PlanEntry, str]] = {}
    for e in plan.entries:
        if e.action != "transplant":
            continue
        spec = _spec(e)
        for k in keys[e.name]:
            if k not in pool.get(spec.source, spec.state):
                missing.setdefault((spec.source, spec.state, k), (e, k))
    return list(missing.values())


_LM_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.weight$")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|embed_in)\.weight$")


def _tied_head_hint(key: str, target: str, source: str, ck: Checkpoint) -> str:
    """For a missing LM head in a source that holds one embedding: a model whose head is tied
    to its embedding (Qwen2-0.5B, GPT-2) saves only the embedding, so say which tensor the
    head is and the rule that takes it."""
    if not _LM_HEAD.search(key):
        return ""
    embeddings = [n for n in ck.names() if _EMBEDDING.search(n)]
    if len(embeddings) != 1:
        return ""
    return (
        f"; a source whose LM head is tied to its embedding saves only the embedding: take it "
        f"with --rule '{target}=from({source}, key={embeddings[0]})'"
    )


def check_transplants(plan: Plan, pool: SourcePool) -> Plan:
    """Resolve every transplant's source tensor before anything is written: a missing source
    tensor is an error listing the closest source names; shape mismatches are collected and
    reported together under `error`, turned into skips under `skip`, allowed under `slice`.
    Only the index (or header) of each source is read, and of a sharded source only the shards
    holding the tensors asked for."""
    keys = resolve_keys(plan, pool)
    missing = _missing_keys(plan, keys, pool)
    if missing:
        e, key = missing[0]
        spec = _spec(e)
        more = ""
        if len(missing) > 1:
            others = ", ".join(f"'{k}'" for _, k in missing[1:4])
            more = f"; {len(missing) - 1} more missing: {others}{', …' if len(missing) > 4 else ''}"
        raise TransplantError(
            f"rule {e.rule_text!r}: source {spec.source} has no tensor "
            f"'{key}' (for target '{e.name}'){closest_hint(key, pool.get(spec.source, spec.state).names())}"
            f"{more}{_tied_head_hint(key, e.name, spec.source, pool.get(spec.source, spec.state))}"
            "; fix key= (templates take {name}, {1}, {2}, …) or try key=auto"
        )
    mismatches: list[str] = []
    entries: list[PlanEntry] = []
    for e in plan.entries:
        if e.action != "transplant":
            entries.append(e)
            continue
        spec = _spec(e)
        rule_text = e.rule_text
        names = keys[e.name]
        src = pool.get(spec.source, spec.state)
        e = replace(e, source_key=";".join(names), source_keys=names)
        shapes = [tuple(src.ref(k).shape) for k in names]
        shape = _checked_shape(e, spec, shapes)
        if spec.transform.adapter is not None:
            rows_in = (
                None
                if spec.cat or spec.stack or spec.transform.chunk
                else tuple(src.ref(names[0]).shape)
            )
            where = f"rule {e.rule_text!r}: '{e.name}'"
            check_adapter(
                spec.transform,
                src,
                pool.target,
                pool.row_names,
                rows_in,
                e.shape,
                where,
                pool.target_labels,
            )
        if shape == e.shape:
            entries.append(e)
            continue
        label = "transformed " if spec.has_transform else ""
        pair = f"'{e.name}' {list(e.shape)} <- {label}'{e.source_key}' {list(shape)}"
        if spec.has_transform and spec.on_mismatch == "error":
            pair += other_dim_hint(entry_transform(spec, e), shapes, e.shape)
        if spec.on_mismatch == "error":
            mismatches.append(pair)
            entries.append(e)
        elif spec.on_mismatch == "skip":
            entries.append(
                replace(e, action="skipped", reason=f"shape mismatch with source: {pair}")
            )
        else:
            if len(shape) != len(e.shape):
                raise TransplantError(
                    f"rule {rule_text!r}: cannot slice {pair}: the number of dims differs"
                )
            entries.append(e)
    if mismatches:
        shown = "; ".join(mismatches[:MISMATCHES_SHOWN])
        if len(mismatches) > MISMATCHES_SHOWN:
            shown += f"; … and {len(mismatches) - MISMATCHES_SHOWN} more"
        raise TransplantError(
            f"shape mismatch in {len(mismatches)} transplant(s): {shown}; "
            "add on_mismatch=skip to keep the target's values or on_mismatch=slice to copy "
            "the overlapping block"
        )
    return replace(plan, entries=tuple(entries))


def _checked_shape(
    e: PlanEntry, spec: TransplantSpec, shapes: list[tuple[int, ...]]
) -> tuple[int, ...]:
    """The shape the transplant's transform gives (the source's own shape without one); a
    transform that cannot take the source shapes is an error saying why."""
    if not spec.has_transform:
        return shapes[0]
    t = entry_transform(spec, e)
    try:
        return result_shape(t, shapes, e.shape)
    except TransplantError as err:
        sources = ", ".join(f"'{k}' {list(s)}" for k, s in zip(e.source_keys, shapes, strict=True))
        raise TransplantError(
            f"rule {e.rule_text!r}: cannot make '{e.name}' {list(e.shape)} from {sources}: {err}"
            f"{other_dim_hint(t, shapes, e.shape)}"
        ) from None


def transform_label(entry: PlanEntry) -> str | None:
    """The transform a transplant entry runs, as written (the report's `transform`)."""
    if entry.action != "transplant" or entry.rule is None or entry.rule.transplant is None:
        return None
    return entry.rule.transplant.transform_text()


def exact_source(pool: SourcePool, entry: PlanEntry) -> tuple[Checkpoint, str, str] | None:
    """The source checkpoint, key and label when the transplant is an exact byte copy (no
    transform, same dtype, same shape), so the engine can stream it instead of loading it."""
    spec = _spec(entry)
    if spec.has_transform:
        return None
    key = entry.source_key
    if key is None:  # a plan that did not go through check_transplants
        key = source_key(spec, entry.name, entry.captures, entry.rule_text)
    src = pool.get(spec.source, spec.state)
    ref = src.ref(key)
    if ref.dtype_name != entry.dtype_name or ref.shape != entry.shape:
        return None
    return src, key, f"{spec.source}:{key}"


class Transplanted(NamedTuple):
    """A transplant's value, the source it came from, its notes and the std of the source
    tensor(s) it was made from (the report's reference for it; None for a non-float source)."""

    value: torch.Tensor
    source: str
    notes: tuple[str, ...]
    source_std: float | None


def transplant_value(
    pool: SourcePool, entry: PlanEntry, target: torch.Tensor, seed: int = 0
) -> Transplanted:
    """The tensor to write for a transplant entry, the source it came from (`SOURCE:KEY`,
    `SOURCE:K1;K2` for `cat=`), notes for the report (transform, lossy cast, sliced block,
    `equal to source` for a plain copy) and the source tensors' std. Reads only the source
    tensors the entry names."""
    spec = _spec(entry)
    keys = entry.source_keys
    if not keys:  # a plan that did not go through check_transplants
        keys = source_keys(spec, entry.name, entry.captures, entry.rule_text)
    key = ";".join(keys)
    ck = pool.get(spec.source, spec.state)
    notes: list[str] = []
    if spec.has_transform:
        fill, names = adapter_inputs(
            spec.transform,
            ck,
            pool.target,
            pool.row_names,
            f"rule {entry.rule_text!r}",
            pool.target_labels,
        )
        ctx = TransformContext(
            entry.name, entry.shape, entry.dtype, seed, target, keys, entry.rule_text, fill, names
        )
        inputs = [ck.read(k) for k in keys]
        source_std = pooled_std(inputs)
        try:
            src, done = transform(entry_transform(spec, entry), inputs, ctx)
        except TransplantError as err:
            raise TransplantError(f"rule {entry.rule_text!r}: '{entry.name}': {err}") from None
        del inputs
        notes += done
    else:
        src = ck.read(keys[0])
        source_std = pooled_std([src])
    refuse_out_of_range(src, entry.dtype, f"rule {entry.rule_text!r}: '{entry.name}'")
    cast = src.to(entry.dtype)
    note = lossy_cast_note(src, cast)
    if note:
        notes.append(note)
    if tuple(cast.shape) != entry.shape:
        out = target.clone()
        block = tuple(slice(0, min(a, b)) for a, b in zip(cast.shape, entry.shape, strict=True))
        out[block] = cast[block]
        notes.append(
            f"sliced: copied block {[min(a, b) for a, b in zip(cast.shape, entry.shape, strict=True)]} "
            f"of source {list(cast.shape)}; the rest keeps the target's values"
        )
        cast = out
    if not spec.has_transform and not notes:
        notes.append(EQUAL_TO_SOURCE)
    return Transplanted(cast.contiguous(), f"{spec.source}:{key}", tuple(notes), source_std)
