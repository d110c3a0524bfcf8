"""Rules: grammar (DESIGN §2), matching, and planning.

A plan is plain data: for every tensor, the rule that won and what will happen to it (or why
it is skipped). Applying a plan is a loop elsewhere (`engine.py`)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from reinit.errors import RuleError, SchemeError, StrictError
from reinit.globmatch import Glob, compile_glob, literal_glob
from reinit.ruleindex import RuleIndex
from reinit.schemes import DEFAULT, KEEP, BoundScheme, bind_scheme

ValueT = int | float | str


# --- grammar ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """`NAME` or `NAME(ARG, KEY=VALUE, ...)`, parsed but not yet interpreted."""

    name: str
    args: tuple[ValueT, ...] = ()
    kwargs: tuple[tuple[str, ValueT], ...] = ()

    def kwargs_dict(self) -> dict[str, ValueT]:
        return dict(self.kwargs)


class Matcher(Protocol):
    """What a pattern matches names with: a `Glob` (linear time, see `globmatch`) or a
    `UserRegex` (time-bounded)."""

    def fullmatch(self, name: str) -> tuple[str, ...] | None: ...


# A user regex may spend this long on one tensor name before the rule is refused: tensor
# names are short, so a sane regex needs microseconds; catastrophic backtracking (`(a+)+$`)
# is stopped instead of hanging. Documented in README "Guarantees".
REGEX_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class UserRegex:
    """A `re:` pattern, run by the `regex` module with a per-match timeout (Python's `re`
    cannot be interrupted, and no static check catches every exponential regex)."""

    text: str
    compiled: Any  # a `regex.Pattern`

    def fullmatch(self, name: str) -> tuple[str, ...] | None:
        try:
            m = self.compiled.fullmatch(name, timeout=REGEX_TIMEOUT_S)
        except TimeoutError:
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise RuleError(
                f"pattern {self.text!r}: the regular expression took over {REGEX_TIMEOUT_S} s "
                f"on tensor '{shown}' (catastrophic backtracking, e.g. nested quantifiers like "
                "(a+)+); rewrite it without nested repeats, or use a glob"
            ) from None
        return None if m is None else tuple(g if g is not None else "" for g in m.groups())


class MatchAll:
    """The name part of a bare `type:` pattern: every name, no captures."""

    def fullmatch(self, name: str) -> tuple[str, ...] | None:
        return ()


@dataclass(frozen=True)
class Pattern:
    text: str  # as written
    matcher: Matcher
    has_wildcards: bool
    # `type:Linear|Conv2d[@GLOB]`: the class names the tensor's owning module must have (one
    # of); empty for plain name patterns. Selecting by type needs a model (`--model`).
    module_types: tuple[str, ...] = ()

    @classmethod
    def literal(cls, name: str) -> Pattern:
        """A pattern matching exactly `name` (as `--add` reports its tensors under)."""
        return cls(name, literal_glob(name), False)

    @property
    def literal_prefix(self) -> str | None:
        """Every name this pattern matches starts with this string; None when unknown
        (regexes, `type:` patterns). Planning indexes rules by it."""
        if self.module_types or not isinstance(self.matcher, Glob):
            return None
        return self.matcher.literal_prefix

    def match(self, name: str, types: Sequence[str] | None = None) -> tuple[str, ...] | None:
        """The captures if the whole name matches, else None. `types` are the class names of
        the module owning the tensor (most specific first); a `type:` pattern never matches
        without them."""
        if self.module_types and (types is None or not set(types) & set(self.module_types)):
            return None
        return self.matcher.fullmatch(name)


_FIELD = re.compile(r"\{(name|\d+)\}")


def fill_template(template: str, name: str, captures: Sequence[str], where: str) -> str:
    """`{name}` -> the whole name, `{1}`, `{2}`, … -> the pattern's captures (each `*` of a
    glob, each group of a regex). Used by `from(..., key=…)` and `--rename`."""

    def sub(m: re.Match[str]) -> str:
        field = m.group(1)
        if field == "name":
            return name
        i = int(field)
        if not 1 <= i <= len(captures):
            raise RuleError(
                f"{where}: the template {template!r} uses {{{i}}} but the pattern has "
                f"{len(captures)} capture(s)"
            )
        return captures[i - 1]

    return _FIELD.sub(sub, template)


@dataclass(frozen=True)
class Rule:
    text: str
    pattern: Pattern
    action: Action
    scheme: BoundScheme | None  # None for `keep` and `from(...)`
    transplant: Any = None  # a `transplant.TransplantSpec` for `from(...)` rules

    @property
    def kind(self) -> str:
        if self.action.name == KEEP:
            return "keep"
        if self.transplant is not None:
            return "transplant"
        return "reinit"


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_EQ = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)(.*)\Z", re.S)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|nan)\Z")
_OPEN = {"(": ")", "[": "]", "{": "}"}


TYPE_PREFIX = "type:"
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_type_pattern(text: str) -> Pattern:
    """`type:Linear`, `type:Linear|Conv2d`, `type:Linear@encoder.*` (the part after `@` is any
    pattern, glob or `re:`, and gives the captures)."""
    body = text[len(TYPE_PREFIX) :]
    types_text, sep, rest = body.partition("@")
    types = tuple(t.strip() for t in types_text.split("|"))
    bad = [t for t in types if not _TYPE_NAME.match(t)]
    if not types_text.strip() or bad:
        raise RuleError(
            f"pattern {text!r}: write type:CLASS[|CLASS...][@PATTERN] with module class names, "
            "e.g. type:Linear or type:Linear@encoder.*"
        )
    if sep:
        if not rest:
            raise RuleError(f"pattern {text!r}: empty name pattern after '@'")
        try:
            inner = parse_pattern(rest)
        except RuleError as e:
            raise RuleError(f"in {text!r}: {e}") from None
        if inner.module_types:
            raise RuleError(f"pattern {text!r}: only one type: selector per pattern")
        return Pattern(text, inner.matcher, True, types)
    return Pattern(text, MatchAll(), True, types)


def parse_pattern(text: str) -> Pattern:
    if text.startswith(TYPE_PREFIX):
        return parse_type_pattern(text)
    if text.startswith("re:"):
        import regex  # the `re` engine cannot be stopped; `regex` takes a timeout

        try:
            compiled = regex.compile(text[3:])
        except (regex.error, ValueError, OverflowError, RecursionError) as e:
            raise RuleError(f"pattern {text!r}: invalid regular expression ({e})") from None
        return Pattern(text, UserRegex(text, compiled), True)
    if not text:
        raise RuleError("empty pattern; write PATTERN=ACTION, e.g. '*.weight=kaiming'")
    glob = compile_glob(text)
    return Pattern(text, glob, glob.has_wildcards)


def split_args(text: str, where: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    parts: list[str] = []
    depth: list[str] = []
    quote: str | None = None
    start = 0
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in _OPEN:
            depth.append(_OPEN[c])
        elif depth and c == depth[-1]:
            depth.pop()
        elif c in ")]}":
            raise RuleError(f"{where}: unbalanced {c!r}; quote a value that holds ')'")
        elif c == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if quote:
        raise RuleError(f"{where}: unterminated {quote} quote")
    if depth:
        raise RuleError(f"{where}: missing {depth[-1]!r}")
    parts.append(text[start:])
    return parts


def parse_value(text: str, where: str) -> ValueT:
    s = text.strip()
    if not s:
        raise RuleError(f"{where}: empty argument")
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    if s[0] in "'\"":
        raise RuleError(f"{where}: unterminated quote in {s!r}")
    if _NUMBER.match(s):
        try:
            return int(s)
        except ValueError:
            return float(s)
    return s


def parse_action(text: str, where: str = "rule") -> Action:
    s = text.strip()
    m = _WORD.match(s)
    if not m:
        raise RuleError(f"{where}: action {s!r} must start with a scheme name, e.g. kaiming_normal")
    name = m.group(0)
    rest = s[m.end() :].strip()
    if not rest:
        return Action(name)
    if rest.startswith("(") and not rest.endswith(")"):
        raise RuleError(f"{where}: missing ')' at the end of {s!r}")
    if not (rest.startswith("(") and rest.endswith(")")):
        raise RuleError(f"{where}: expected {name}(ARG, ...) but found {rest!r} after the name")
    inner = rest[1:-1]
    args: list[ValueT] = []
    kwargs: list[tuple[str, ValueT]] = []
    if inner.strip():
        for part in split_args(inner, where):
            km = _KEY_EQ.match(part)
            if km and not part.strip().startswith(("'", '"')):
                key = km.group(1)
                if any(k == key for k, _ in kwargs):
                    raise RuleError(f"{where}: argument {key!r} given twice")
                kwargs.append((key, parse_value(km.group(2), where)))
            else:
                if kwargs:
                    raise RuleError(f"{where}: positional argument after keyword argument")
                args.append(parse_value(part, where))
    return Action(name, tuple(args), tuple(kwargs))


def parse_rule(text: str) -> Rule:
    """`PATTERN=ACTION`, split at the first `=`. Scheme names and arguments are checked here,
    so a bad rule is a usage error before anything is read."""
    if "=" not in text:
        raise RuleError(f"rule {text!r} has no '='; write PATTERN=ACTION, e.g. '*.weight=kaiming'")
    left, right = text.split("=", 1)
    where = f"rule {text!r}"
    pattern = parse_pattern(left.strip())
    action = parse_action(right, where)
    if action.name == KEEP:
        if action.args or action.kwargs:
            raise RuleError(f"{where}: keep takes no arguments")
        return Rule(text, pattern, action, None)
    if action.name == "from":
        from reinit.transplant import parse_from

        return Rule(text, pattern, action, None, transplant=parse_from(action, where))
    try:
        scheme = bind_scheme(action.name, action.args, action.kwargs_dict())
    except SchemeError as e:
        raise RuleError(f"{where}: {e}") from None
    return Rule(text, pattern, action, scheme)


def parse_rules(texts: Sequence[str]) -> tuple[Rule, ...]:
    return tuple(parse_rule(t) for t in texts)


# --- planning ---------------------------------------------------------------------------


class TensorLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> torch.dtype: ...


ACTIONS = ("kept", "reinit", "transplant", "skipped")


@dataclass(frozen=True)
class PlanEntry:
    """What happens to one tensor. `rule` is None when no rule matched (kept byte-for-byte)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    action: str  # one of ACTIONS
    rule: Rule | None = None
    captures: tuple[str, ...] = ()
    reason: str | None = None
    source_key: str | None = None  # a transplant's resolved source tensor name
    added: bool = False  # made by --add: no source bytes
    renamed_from: str | None = None  # its name in the source, when --rename changed it

    @property
    def notes(self) -> tuple[str, ...]:
        """What surgery did to this tensor, for the report."""
        if self.added:
            return ("added",)
        if self.renamed_from is not None:
            return (f"renamed from {self.renamed_from}",)
        return ()

    @property
    def scheme(self) -> BoundScheme | None:
        return self.rule.scheme if self.rule is not None and self.action == "reinit" else None

    @property
    def changes(self) -> bool:
        return self.action in ("reinit", "transplant")


@dataclass(frozen=True)
class Plan:
    entries: tuple[PlanEntry, ...]
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # names removed by --drop (not in `entries`)

    @property
    def skipped(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.action == "skipped")


def is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex)


def why_cannot_take(rule: Rule, shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
    """The reason a reinit rule's scheme cannot take this tensor, or None."""
    if rule.scheme is None:
        return None
    if is_integer_dtype(dtype):
        return f"{dtype_label(dtype)} tensor: integer and bool tensors are never re-initialized"
    if dtype.is_complex:
        return f"{dtype_label(dtype)} tensor: complex tensors are not re-initialized"
    return rule.scheme.scheme.can_take(shape, rule.scheme.kwargs)


def dtype_label(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
) -> Plan:
    """Decide, for each tensor, which rule wins and what it does. Raises `RuleError` for a rule
    that matches nothing (unless allowed) or a wildcard-free rule naming a tensor its scheme
    cannot take, and `StrictError` under `strict` for any skip.

    `module_types` (from a model, see `reinit.model`) maps each tensor name to its owning
    module's class names; `type:` patterns and the `default` scheme need it."""
    check_model_needs(rules, module_types)
    entries: list[PlanEntry] = []
    used: set[int] = set()
    index = RuleIndex(rules)
    for t in tensors:
        shape = tuple(t.shape)
        types = module_types.get(t.name) if module_types is not None else None
        # the last matching rule wins; a rule also "matches" for the unmatched check when it
        # loses to a later rule, so candidates below the winner are tried only until used
        hit: tuple[Rule, tuple[str, ...]] | None = None
        for i in index.candidates(t.name):
            if hit is not None and i in used:
                continue
            caps = rules[i].pattern.match(t.name, types)
            if caps is not None:
                used.add(i)
                if hit is None:
                    hit = (rules[i], caps)
        if hit is None:
            entries.append(PlanEntry(t.name, shape, t.dtype, "kept"))
            continue
        rule, caps = hit
        if rule.kind == "keep":
            entries.append(PlanEntry(t.name, shape, t.dtype, "kept", rule, caps))
            continue
        if rule.kind == "transplant":
            entries.append(PlanEntry(t.name, shape, t.dtype, "transplant", rule, caps))
            continue
        reason = why_cannot_take(rule, shape, t.dtype)
        if reason is not None:
            if not rule.pattern.has_wildcards:
                raise RuleError(f"rule {rule.text!r}: tensor '{t.name}' {shape}: {reason}")
            entries.append(PlanEntry(t.name, shape, t.dtype, "skipped", rule, caps, reason))
            continue
        overflow = rule.scheme.overflow(t.dtype) if rule.scheme is not None else None
        if overflow is not None:
            raise RuleError(f"rule {rule.text!r}: tensor '{t.name}': {overflow}")
        entries.append(PlanEntry(t.name, shape, t.dtype, "reinit", rule, caps))

    warnings: list[str] = []
    names = [t.name for t in tensors]
    hinted = 0
    for i, r in enumerate(rules):
        if i in used:
            continue
        # a hint costs a fuzzy search over all names: give it to the first few rules only,
        # so thousands of unmatched rules stay fast
        hinted += 1
        if hinted > MAX_HINTS:
            hint = ""
        elif r.pattern.module_types and module_types is not None:
            hint = type_hint(r.pattern, module_types)
        else:
            hint = closest_hint(r.pattern.text, names)
        msg = f"rule {r.text!r} matches no tensor{hint}"
        if not allow_unmatched:
            raise RuleError(msg + " (--allow-unmatched makes this a warning)")
        warnings.append(msg)

    result = Plan(tuple(entries), tuple(rules), tuple(warnings))
    if strict and result.skipped:
        first = result.skipped[0]
        raise StrictError(
            f"--strict: {len(result.skipped)} tensor(s) would be skipped, e.g. "
            f"'{first.name}' by rule {first.rule.text if first.rule else ''!r}: {first.reason}"
        )
    return result


MAX_HINTS = 20  # unmatched rules that get a "closest names" hint

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


def closest_hint(pattern: str, names: Sequence[str], n: int = 3) -> str:
    """'; closest names: a, b, c' for an error message, from the pattern with wildcards removed."""
    probe = pattern.removeprefix("re:")
    probe = re.sub(r"[*?\[\]^$()|+\\]", "", probe)
    close = difflib.get_close_matches(probe, names, n=n, cutoff=0.3)
    if not close and names:
        close = sorted(names, key=lambda x: -difflib.SequenceMatcher(None, probe, x).ratio())[:n]
    return f"; closest names: {', '.join(close)}" if close else "; the checkpoint has no tensors"
