"""Rules indexed by their literal prefix/suffix so that planning tries a tensor only against the
rules that could match it: near-linear in rules x tensors, with last-rule-wins kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from reinit.matching import Glob
from reinit.rules import Pattern

__all__ = ["HasPattern", "RuleIndex"]


class HasPattern(Protocol):
    """A rule, as far as the index needs one (its name pattern)."""

    @property
    def pattern(self) -> Pattern: ...


class RuleIndex:
    """Candidate rules for a name, as indices into the rule list, highest (winning) first."""

    def __init__(self, rules: Sequence[HasPattern]) -> None:
        self.always: list[int] = []
        self.by_prefix: dict[str, list[int]] = {}
        self.by_suffix: dict[str, list[int]] = {}
        for i, r in enumerate(rules):
            matcher = r.pattern.matcher
            if r.pattern.module_types or not isinstance(matcher, Glob):
                self.always.append(i)
            elif matcher.literal_prefix:
                self.by_prefix.setdefault(matcher.literal_prefix, []).append(i)
            elif matcher.literal_suffix:
                self.by_suffix.setdefault(matcher.literal_suffix, []).append(i)
            else:
                self.always.append(i)
        self.prefix_lengths = sorted({len(k) for k in self.by_prefix})
        self.suffix_lengths = sorted({len(k) for k in self.by_suffix})

    def candidates(self, name: str) -> list[int]:
        """The rules that may match `name` (a superset of those that do), highest first."""
        out = list(self.always)
        n = len(name)
        for k in self.prefix_lengths:
            if k > n:
                break
            out.extend(self.by_prefix.get(name[:k], ()))
        for k in self.suffix_lengths:
            if k > n:
                break
            out.extend(self.by_suffix.get(name[n - k :], ()))
        out.sort(reverse=True)
        return out
