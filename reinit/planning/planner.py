"""Rules x tensor names -> a Plan: for each tensor the last matching rule, the action it takes,
or why it is skipped (a scheme that cannot take the shape or dtype)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from reinit.errors import RuleError, StrictError
from reinit.io.formats import is_float_name, torch_dtype
from reinit.planning.actions import ACTIONS, CHANGING_ACTIONS, action_changes
from reinit.planning.ruleindex import RuleIndex
from reinit.rules import MAX_HINTS, Pattern, Rule, closest_hint
from reinit.schemes import DEFAULT, BoundScheme
from reinit.schemes.parts import why_part_cannot_take

__all__ = [
    "ACTIONS",
    "CHANGING_ACTIONS",
    "NEEDS_MODEL",
    "NOTE_RENAMED",
    "Plan",
    "PlanEntry",
    "TensorLike",
    "action_changes",
    "check_model_needs",
    "last_match",
    "plan",
    "type_hint",
    "why_cannot_take",
]


# The note of a tensor `--rename` renamed, before its old name: `renamed from OLD`.
NOTE_RENAMED = "renamed from "


class TensorLike(Protocol):
    """What planning needs of a tensor: a `TensorRef`, or a test's stand-in."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype_name(self) -> str: ...
    @property
    def dtype(self) -> torch.dtype: ...


@dataclass(frozen=True)
class PlanEntry:
    """What happens to one tensor. `rule` is None when no rule matched (kept byte-for-byte).
    Its dtype is held by name, as `TensorRef`'s (a plan of copies needs no torch); `dtype` is
    the torch dtype, for the paths that compute."""

    name: str
    shape: tuple[int, ...]
    dtype_name: str
    action: str  # one of ACTIONS
    rule: Rule | None = None
    captures: tuple[str, ...] = ()
    reason: str | None = None
    source_key: str | None = None  # a transplant's resolved source tensor name
    source_keys: tuple[str, ...] = ()  # every source tensor it reads (several for cat=)
    added: bool = False  # made by --add: no source bytes
    renamed_from: str | None = None  # its name in the source, when --rename changed it
    resized: str | None = None  # what --resize did ("resized [a, b] -> [c, b] (...)")
    resize_fills: bool = False  # its values are the --resize's own (no rule overrides them)
    fresh: bool = False  # a tensor of `reinit new`'s model: no source bytes, nothing to keep

    @property
    def notes(self) -> tuple[str, ...]:
        """What surgery did to this tensor, for the report."""
        if self.added:
            return ("added",)
        renamed = () if self.renamed_from is None else (f"{NOTE_RENAMED}{self.renamed_from}",)
        return renamed + (() if self.resized is None else (self.resized,))

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (loads torch: a plain copy never asks)."""
        return torch_dtype(self.dtype_name, self.name)

    @property
    def scheme(self) -> BoundScheme | None:
        return self.rule.scheme if self.rule is not None and self.action == "reinit" else None

    @property
    def changes(self) -> bool:
        return action_changes(self.action)

    @property
    def rule_text(self) -> str:
        """The winning rule as written, '' when none matched (for messages)."""
        return self.rule.text if self.rule is not None else ""


@dataclass(frozen=True)
class Plan:
    """Every tensor's `PlanEntry`, in checkpoint order, with the rules, the unmatched-rule
    warnings and the names `--drop` removed: what `--dry-run` shows and `apply` runs."""

    entries: tuple[PlanEntry, ...]
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # names removed by --drop (not in `entries`)

    @property
    def skipped(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.action == "skipped")


def why_cannot_take(rule: Rule, shape: tuple[int, ...], dtype: str) -> str | None:
    """The reason a reinit rule's scheme cannot take this tensor (`dtype`: its dtype's name,
    "bfloat16"; no torch is loaded for safetensors' dtypes), or None."""
    if rule.scheme is None:
        return None
    if dtype.startswith("complex"):
        return f"{dtype} tensor: complex tensors are not re-initialized"
    if not is_float_name(dtype):
        return f"{dtype} tensor: integer and bool tensors are never re-initialized"
    if dtype == "float8_e8m0fnu":  # an MX scale: 2**k only, so no draw (nor zero) survives the cast
        return (
            f"{dtype} tensor: it holds only powers of two (block scales), so no "
            "scheme's values fit it; it is not re-initialized"
        )
    reason = rule.scheme.scheme.can_take(shape, rule.scheme.kwargs)
    if reason is None and rule.part is not None:
        reason = why_part_cannot_take(rule.part, shape)
    return reason


def last_match(
    rules: Sequence[Rule], name: str, types: Sequence[str] | None = None
) -> tuple[Rule, tuple[str, ...]] | None:
    """The last rule that matches `name` wins (general first, specific after)."""
    for rule in reversed(rules):
        caps = rule.pattern.match(name, types)
        if caps is not None:
            return rule, caps
    return None


def plan(
    tensors: Sequence[TensorLike],
    rules: Sequence[Rule],
    *,
    strict: bool = False,
    allow_unmatched: bool = False,
    module_types: Mapping[str, Sequence[str]] | None = None,
    held_elsewhere: Mapping[str, str] | None = None,
) -> Plan:
    """Decide, for each tensor, which rule wins and what it does. Raises `RuleError` for a rule
    that matches nothing (unless allowed) or a wildcard-free rule naming a tensor its scheme
    cannot take, and `StrictError` under `strict` for any skip.

    `module_types` (from a model, see `reinit.planning.model`) maps each tensor name to its owning
    module's class names; `type:` patterns and the `default` scheme need it. `held_elsewhere`
    (a model's tensors the checkpoint holds under other names, with where) explains a rule
    that matches nothing because it names one of those."""
    check_model_needs(rules, module_types)
    used: set[int] = set()
    index = RuleIndex(rules)
    entries = []
    for t in tensors:
        types = module_types.get(t.name) if module_types is not None else None
        entries.append(_entry(t, _winner(rules, index, used, t.name, types)))
    names = [t.name for t in tensors]
    hints = _Hints(names, module_types, held_elsewhere or {})
    warnings = _unmatched_rules(rules, used, hints, allow_unmatched)
    result = Plan(tuple(entries), tuple(rules), tuple(warnings))
    check_strict(result, strict)
    return result


def _winner(
    rules: Sequence[Rule],
    index: RuleIndex,
    used: set[int],
    name: str,
    types: Sequence[str] | None,
) -> tuple[Rule, tuple[str, ...]] | None:
    """The last matching rule and its captures. A rule also "matches" for the unmatched check
    when it loses to a later rule (marked in `used`), so candidates below the winner are
    tried only until used."""
    hit: tuple[Rule, tuple[str, ...]] | None = None
    for i in index.candidates(name):
        if hit is not None and i in used:
            continue
        caps = rules[i].pattern.match(name, types)
        if caps is not None:
            used.add(i)
            if hit is None:
                hit = (rules[i], caps)
    return hit


def _entry(t: TensorLike, hit: tuple[Rule, tuple[str, ...]] | None) -> PlanEntry:
    """What the winning rule does to `t`: keep, transplant, skip (a wildcard rule whose
    scheme cannot take it), or reinit; a rule naming `t` alone that cannot is an error."""
    shape = tuple(t.shape)
    if hit is None:
        return PlanEntry(t.name, shape, t.dtype_name, "kept")
    rule, caps = hit
    if rule.kind == "keep":
        return PlanEntry(t.name, shape, t.dtype_name, "kept", rule, caps)
    if rule.kind == "transplant":
        return PlanEntry(t.name, shape, t.dtype_name, "transplant", rule, caps)
    reason = why_cannot_take(rule, shape, t.dtype_name)
    if reason is not None:
        if not rule.pattern.has_wildcards:
            raise RuleError(f"rule {rule.text!r}: tensor '{t.name}' {shape}: {reason}")
        return PlanEntry(t.name, shape, t.dtype_name, "skipped", rule, caps, reason)
    overflow = rule.scheme.overflow(t.dtype_name, shape) if rule.scheme is not None else None
    if overflow is not None:
        raise RuleError(f"rule {rule.text!r}: tensor '{t.name}': {overflow}")
    return PlanEntry(t.name, shape, t.dtype_name, "reinit", rule, caps)


@dataclass(frozen=True)
class _Hints:
    """What an unmatched rule's message can point to: the checkpoint's names, the module types,
    and the model's tensors held under other names."""

    names: Sequence[str]
    module_types: Mapping[str, Sequence[str]] | None
    held_elsewhere: Mapping[str, str]

    def for_rule(self, r: Rule) -> str:
        for name, where in self.held_elsewhere.items():
            if r.pattern.match(name) is not None:
                return f"; {where}"
        if r.pattern.module_types and self.module_types is not None:
            return type_hint(r.pattern, self.module_types)
        return closest_hint(r.pattern.text, self.names)


def _unmatched_rules(
    rules: Sequence[Rule], used: set[int], hints: _Hints, allow_unmatched: bool
) -> list[str]:
    """A rule that matched nothing: an error, or (allowed) a warning, with a hint."""
    warnings: list[str] = []
    hinted = 0
    for i, r in enumerate(rules):
        if i in used:
            continue
        # a hint costs a fuzzy search over all names: give it to the first few rules only,
        # so thousands of unmatched rules stay fast
        hinted += 1
        hint = hints.for_rule(r) if hinted <= MAX_HINTS else ""
        msg = f"rule {r.text!r} matches no tensor{hint}"
        if not allow_unmatched:
            raise RuleError(msg + " (--allow-unmatched makes this a warning)")
        warnings.append(msg)
    return warnings


def check_strict(result: Plan, strict: bool) -> None:
    """`--strict`: any skipped tensor is an error, told the one way (how many, the first, by
    which rule, why) wherever a skip is found (planner, model defaults, transplants)."""
    if strict and result.skipped:
        first = result.skipped[0]
        raise StrictError(
            f"--strict: {len(result.skipped)} tensor(s) would be skipped, e.g. "
            f"'{first.name}' by rule {first.rule_text!r}: {first.reason}"
        )


NEEDS_MODEL = (
    "needs a model: pass --model with a Hugging Face model directory, hf://OWNER/NAME "
    "or module:callable (e.g. torchvision.models:resnet18)"
)


def check_model_needs(
    rules: Sequence[Rule], module_types: Mapping[str, Sequence[str]] | None
) -> None:
    """`type:` patterns and the `default` scheme are meaningless without a model."""
    if module_types is not None:
        return
    for r in rules:
        if r.pattern.module_types:
            raise RuleError(f"rule {r.text!r}: selecting by module type {NEEDS_MODEL}")
        if r.scheme is not None and r.scheme.name == DEFAULT:
            raise RuleError(
                f"rule {r.text!r}: the scheme default (the architecture's own init) {NEEDS_MODEL}"
            )


def type_hint(pattern: Pattern, module_types: Mapping[str, Sequence[str]]) -> str:
    """'; module types with tensors: ...' for a `type:` rule that matched nothing."""
    present = sorted({ts[0] for ts in module_types.values() if ts})
    close = [
        c
        for t in pattern.module_types
        for c in difflib.get_close_matches(t, present, n=2, cutoff=0.5)
    ]
    did = f" (did you mean {' or '.join(dict.fromkeys(close))}?)" if close else ""
    shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
    return f"{did}; module types holding tensors: {shown or 'none'}"
