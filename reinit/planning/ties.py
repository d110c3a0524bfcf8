"""Tied tensors (names that share one storage): every name of a group must get the same value,
so a plan that treats them differently is made consistent or refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from reinit.errors import RuleError, UsageError
from reinit.planning.planner import Plan, PlanEntry
from reinit.planning.transplant import source_keys
from reinit.text import shown

__all__ = [
    "Ties",
    "refuse_overlaps",
    "resolve_ties",
    "tie_groups",
]


@dataclass(frozen=True)
class Ties:
    """`groups`: each tied name -> every name of its group, in plan order (first = root).
    `defining`: group root -> the plan entry whose rule makes the group's new values (only for
    groups that change)."""

    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    defining: Mapping[str, PlanEntry] = field(default_factory=dict)

    def note(self, name: str) -> tuple[str, ...]:
        """The report note for `name`: `tied with A, B`, or nothing."""
        group = self.groups.get(name)
        if not group:
            return ()
        return ("tied with " + ", ".join(n for n in group if n != name),)

    def root(self, name: str) -> str | None:
        group = self.groups.get(name)
        return group[0] if group else None


def tie_groups(order: Sequence[str], aliases: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Group names by the name they alias (`aliases`: name -> first name sharing its storage),
    each group in `order`; names that share nothing are left out."""
    members: dict[str, list[str]] = {}
    for name, first in aliases.items():
        members.setdefault(first, [first]).append(name)
    pos = {n: i for i, n in enumerate(order)}
    out: dict[str, tuple[str, ...]] = {}
    for names in members.values():
        present = sorted((n for n in set(names) if n in pos), key=pos.__getitem__)
        if len(present) < 2:
            continue
        for n in present:
            out[n] = tuple(present)
    return out


#: What ties a group the model's config ties while the file holds two equal copies.
BY_CONFIG = "the model's config ties them; the file holds two equal copies"


def _conflict(
    group: tuple[str, ...], a: PlanEntry, b: PlanEntry, why: str, by_config: bool = False
) -> RuleError:
    ra = a.rule_text or "(no rule)"
    rb = b.rule_text or "(no rule)"
    return RuleError(
        f"tensors '{a.name}' and '{b.name}' are tied"
        f" ({BY_CONFIG if by_config else 'they share storage'}"
        f"{', with ' + ', '.join(n for n in group if n not in (a.name, b.name)) if len(group) > 2 else ''})"
        f" but {why}: {ra!r} vs {rb!r}; give the tied names one rule"
    )


def resolve_ties(
    plan: Plan, aliases: Mapping[str, str], by_config: Mapping[str, str] | None = None
) -> tuple[Plan, Ties]:
    """The plan with every member of a changed tied group changed the same way, and the ties.
    `by_config`: more tied names (as `aliases`) that the model's config ties but the file
    holds as separate equal tensors (`planning.config_ties`).

    Raises `RuleError` when members of a group get different rules (including `keep` against a
    change) or one transplant rule maps them to different source tensors."""
    declared = set(by_config or {}) | set((by_config or {}).values())
    aliases = {**aliases, **(by_config or {})}
    if not aliases:
        return plan, Ties()
    by_name = {e.name: e for e in plan.entries}
    groups = tie_groups([e.name for e in plan.entries], aliases)
    defining: dict[str, PlanEntry] = {}
    replaced: dict[str, PlanEntry] = {}
    seen: set[str] = set()
    for group in groups.values():
        if group[0] in seen:
            continue
        seen.add(group[0])
        members = [by_name[n] for n in group]
        changing = [e for e in members if e.changes]
        if not changing:
            continue
        # a rule wins over the --resize's own fill of a tied member, as over its own
        ruled = [e for e in changing if not e.resize_fills] or changing
        first = ruled[0]
        tied_by_config = group[0] in declared
        how = "the model's config ties them" if tied_by_config else "shares its storage"
        for e in members:
            overridden = e.resize_fills and not first.resize_fills
            if e.rule is not None and e.rule != first.rule and not overridden:
                raise _conflict(group, first, e, "different rules hit them", tied_by_config)
        if first.action == "transplant":
            _check_same_source(group, ruled)
        defining[group[0]] = first
        for e in members:
            if e.changes and (first.resize_fills or not e.resize_fills):
                continue
            replaced[e.name] = replace(
                e,
                action=first.action,
                rule=first.rule,
                captures=first.captures,
                resize_fills=first.resize_fills,
                reason=f"tied with '{first.name}' ({how}), so it takes the same values",
            )
    entries = tuple(replaced.get(e.name, e) for e in plan.entries)
    return replace(plan, entries=entries), Ties(groups, defining)


def _check_same_source(group: tuple[str, ...], changing: Sequence[PlanEntry]) -> None:
    first = changing[0]
    assert first.rule is not None and first.rule.transplant is not None
    spec = first.rule.transplant
    want = ";".join(source_keys(spec, first.name, first.captures, first.rule.text))
    for e in changing[1:]:
        assert e.rule is not None and e.rule.transplant is not None
        other = e.rule.transplant
        got = ";".join(source_keys(other, e.name, e.captures, e.rule.text))
        if got != want:
            raise _conflict(
                group, first, e, f"the rule copies different source tensors ('{want}', '{got}')"
            )
        if other.transform_text() != spec.transform_text():
            raise _conflict(group, first, e, "the rules transform the source differently")


def refuse_overlaps(plan: Plan, overlaps: Mapping[str, Mapping[str, bool]], where: str) -> None:
    """Refuse a plan that changes a tensor whose memory overlaps another entry's without being
    the same view (`Checkpoint.overlaps`: a slice, transpose or reshape of one storage). No
    one value keeps both in step: written back in place the other would change while the
    report says it was kept; written apart they would disagree. Raises `UsageError`."""
    hit = [e for e in plan.entries if e.changes and overlaps.get(e.name)]
    for e in sorted(hit, key=lambda e: e.reason is not None)[:1]:  # a rule's own before a tie's
        other, sure = next(iter(overlaps[e.name].items()))
        how = "overlaps" if sure else "may overlap (too large to check element by element)"
        by = f"rule {e.rule_text!r}" if e.rule_text else "the surgery"
        raise UsageError(
            f"{where}: {by} would change tensor '{shown(e.name)}', whose memory {how} that of "
            f"'{shown(other)}' (another view of one storage: a slice, transpose or reshape), so "
            "the two cannot stay in step; give one its own memory (a .clone() of it in the "
            "state dict or module, or re-save the file so), drop one, or leave both unchanged"
        )
