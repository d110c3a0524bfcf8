"""Transplant: `from(SOURCE, key=TEMPLATE, on_mismatch=error|skip|slice)` (DESIGN §4).

Each source is opened once per run (`SourcePool`), lazily: for a sharded source, and on the Hub,
only the shards that hold tensors the rules need are opened or downloaded."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import torch

from reinit.errors import RuleError, TransplantError
from reinit.io.readers import Checkpoint, open_checkpoint
from reinit.rules import Action, Plan, PlanEntry, closest_hint

MISMATCH_POLICIES = ("error", "skip", "slice")
_FIELD = re.compile(r"\{(name|\d+)\}")


@dataclass(frozen=True)
class TransplantSpec:
    source: str
    key: str | None = None  # template; None = the target's own name
    on_mismatch: str = "error"

    def describe(self) -> str:
        parts = [self.source]
        if self.key is not None:
            parts.append(f"key={self.key}")
        if self.on_mismatch != "error":
            parts.append(f"on_mismatch={self.on_mismatch}")
        return f"from({', '.join(parts)})"


def parse_from(action: Action, where: str) -> TransplantSpec:
    kw = action.kwargs_dict()
    unknown = set(kw) - {"source", "key", "on_mismatch"}
    if unknown:
        raise RuleError(
            f"{where}: from() has no argument {sorted(unknown)[0]!r}; "
            "use from(SOURCE, key=TEMPLATE, on_mismatch=error|skip|slice)"
        )
    if len(action.args) > 1:
        raise RuleError(f"{where}: from() takes one positional argument, the source")
    source = action.args[0] if action.args else kw.get("source")
    if not isinstance(source, str) or not source:
        raise RuleError(f"{where}: from() needs a source, e.g. from(other.safetensors)")
    key = kw.get("key")
    if key is not None and not isinstance(key, str):
        key = str(key)
    policy = kw.get("on_mismatch", "error")
    if policy not in MISMATCH_POLICIES:
        raise RuleError(f"{where}: on_mismatch must be one of {', '.join(MISMATCH_POLICIES)}")
    return TransplantSpec(source, key, str(policy))


def source_key(spec: TransplantSpec, name: str, captures: Sequence[str], rule_text: str) -> str:
    """The source tensor's name: the template with `{name}` and captures `{1}`, `{2}`, …"""
    if spec.key is None:
        return name

    def sub(m: re.Match[str]) -> str:
        field = m.group(1)
        if field == "name":
            return name
        i = int(field)
        if not 1 <= i <= len(captures):
            raise RuleError(
                f"rule {rule_text!r}: key template uses {{{i}}} but the pattern has "
                f"{len(captures)} capture(s)"
            )
        return captures[i - 1]

    return _FIELD.sub(sub, spec.key)


class SourcePool:
    """Opens each transplant source once; the target itself may be named as a source."""

    def __init__(self, target: Checkpoint | None = None, unsafe_pickle: bool = False):
        self.target = target
        self.unsafe_pickle = unsafe_pickle
        self._open: dict[str, Checkpoint] = {}

    def get(self, source: str) -> Checkpoint:
        ck = self._open.get(source)
        if ck is None:
            ck = open_checkpoint(source, unsafe_pickle=self.unsafe_pickle)
            self._open[source] = ck
        return ck

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


def _spec(entry: PlanEntry) -> TransplantSpec:
    assert entry.rule is not None and entry.rule.transplant is not None
    return entry.rule.transplant


def check_transplants(plan: Plan, pool: SourcePool) -> Plan:
    """Resolve every transplant's source tensor before anything is written: a missing source
    tensor is an error listing the closest source names; shape mismatches are collected and
    reported together under `error`, turned into skips under `skip`, allowed under `slice`."""
    mismatches: list[str] = []
    entries: list[PlanEntry] = []
    for e in plan.entries:
        if e.action != "transplant":
            entries.append(e)
            continue
        spec = _spec(e)
        rule_text = e.rule.text if e.rule else ""
        key = source_key(spec, e.name, e.captures, rule_text)
        src = pool.get(spec.source)
        if key not in src:
            raise TransplantError(
                f"rule {rule_text!r}: source {spec.source} has no tensor '{key}' "
                f"(for target '{e.name}'){closest_hint(key, src.names())}"
            )
        ref = src.ref(key)
        if ref.shape == e.shape:
            entries.append(e)
            continue
        pair = f"'{e.name}' {list(e.shape)} <- '{key}' {list(ref.shape)}"
        if spec.on_mismatch == "error":
            mismatches.append(pair)
            entries.append(e)
        elif spec.on_mismatch == "skip":
            entries.append(
                replace(e, action="skipped", reason=f"shape mismatch with source {pair}")
            )
        else:
            if len(ref.shape) != len(e.shape):
                raise TransplantError(
                    f"rule {rule_text!r}: cannot slice {pair}: the number of dims differs"
                )
            entries.append(e)
    if mismatches:
        more = f" (and {len(mismatches) - 5} more)" if len(mismatches) > 5 else ""
        raise TransplantError(
            f"shape mismatch in {len(mismatches)} transplant(s): {'; '.join(mismatches[:5])}{more}; "
            "add on_mismatch=skip to keep the target's values or on_mismatch=slice to copy "
            "the overlapping block"
        )
    return replace(plan, entries=tuple(entries))


def exact_source(pool: SourcePool, entry: PlanEntry) -> tuple[Checkpoint, str, str] | None:
    """The source checkpoint, key and label when the transplant is an exact byte copy (same
    dtype, same shape), so the engine can stream it instead of loading the tensor."""
    spec = _spec(entry)
    key = source_key(spec, entry.name, entry.captures, entry.rule.text if entry.rule else "")
    src = pool.get(spec.source)
    ref = src.ref(key)
    if ref.dtype != entry.dtype or ref.shape != entry.shape:
        return None
    return src, key, f"{spec.source}:{key}"


def lossy_cast_note(src: torch.Tensor, cast: torch.Tensor) -> str | None:
    """A note when casting changed any value (e.g. float32 -> bfloat16 rounding)."""
    if src.dtype == cast.dtype:
        return None
    back = cast.to(src.dtype)
    same = (
        torch.equal(back, src)
        if not src.is_floating_point()
        else bool(((back == src) | (back.isnan() & src.isnan())).all())
    )
    if same:
        return None
    return (
        f"lossy cast {str(src.dtype).removeprefix('torch.')} -> "
        f"{str(cast.dtype).removeprefix('torch.')}"
    )


def transplant_value(
    pool: SourcePool, entry: PlanEntry, target: torch.Tensor
) -> tuple[torch.Tensor, str, tuple[str, ...]]:
    """The tensor to write for a transplant entry, the source it came from (`SOURCE:KEY`),
    and notes for the report (lossy cast, sliced block)."""
    spec = _spec(entry)
    key = source_key(spec, entry.name, entry.captures, entry.rule.text if entry.rule else "")
    src = pool.get(spec.source).read(key)
    notes: list[str] = []
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
    return cast.contiguous(), f"{spec.source}:{key}", tuple(notes)
