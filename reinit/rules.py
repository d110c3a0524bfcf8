"""Rules: grammar (docs/guide/rules-and-schemes.md), matching, and planning.

A plan is plain data: for every tensor, the rule that won and what will happen to it (or why
it is skipped). Applying a plan is a loop elsewhere (`reinit.run.stream`)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from reinit.errors import RuleError, SchemeError
from reinit.io.hub import is_hf_url, parse_hf_url
from reinit.matching import (
    Glob,
    MatchAll,
    Matcher,
    compile_globs,
    compile_user_regex,
    literal_glob,
)
from reinit.schemes import KEEP, BoundScheme, bind_scheme, get_scheme
from reinit.schemes import templates as schemes_templates
from reinit.schemes.parts import PART_ARGS, Part, parse_part
from reinit.transforms.spec import TRANSFORM_ARGS, TransformSpec, parse_stack, parse_transform

__all__ = [
    "MAX_HINTS",
    "MISMATCH_POLICIES",
    "TYPE_PREFIX",
    "Action",
    "Pattern",
    "Rule",
    "TransplantSpec",
    "ValueT",
    "closest_hint",
    "parse_action",
    "parse_from",
    "parse_pattern",
    "parse_rule",
    "parse_rules",
    "parse_type_pattern",
    "parse_value",
    "split_args",
]


ValueT = int | float | str


@dataclass(frozen=True)
class Action:
    """`NAME` or `NAME(ARG, KEY=VALUE, ...)`, parsed but not yet interpreted."""

    name: str
    args: tuple[ValueT, ...] = ()
    kwargs: tuple[tuple[str, ValueT], ...] = ()

    def kwargs_dict(self) -> dict[str, ValueT]:
        return dict(self.kwargs)


@dataclass(frozen=True)
class Pattern:
    """A parsed name pattern (glob, `re:` or `type:`): what a rule selects."""

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


def fill_template(template: str, name: str, captures: Sequence[str], where: str) -> str:
    """`{name}` -> the whole name, `{1}`, `{2}`, … -> the pattern's captures (each `*` of a
    glob, each group of a regex). Used by `from(..., key=…)` and `--rename`."""
    return schemes_templates.fill_template(
        template, name, captures, f"{where}: the template ", RuleError
    )


@dataclass(frozen=True)
class Rule:
    """One parsed rule `PATTERN=ACTION`: a scheme to draw (`scheme`), a `from(...)` source to
    copy from (`transplant`), or `keep`. The planner reads `kind`."""

    text: str
    pattern: Pattern
    action: Action
    scheme: BoundScheme | None  # None for `keep` and `from(...)`
    transplant: TransplantSpec | None = None  # for `from(...)` rules
    part: Part | None = None  # rows=/cols=: the scheme on those indices only

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
    """`re:REGEX`, `type:…`, or a glob (`*` matches any run, dots included; docs/guide/rules-and-schemes.md)."""
    if text.startswith(TYPE_PREFIX):
        return parse_type_pattern(text)
    if text.startswith("re:"):
        return Pattern(text, compile_user_regex(text), True)
    if not text:
        raise RuleError("empty pattern; write PATTERN=ACTION, e.g. '*.weight=kaiming'")
    glob = compile_globs(text)
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
    """A literal argument: int, float (incl. inf/nan, refused later where out of range) or
    string (quotes optional)."""
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
    """`NAME` or `NAME(ARGS)` into an `Action`, not yet bound to a scheme (so `from(...)`,
    `keep` and a `--model` spec's call share one argument grammar)."""
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
    if not isinstance(text, str):
        raise RuleError(f"a rule is a 'PATTERN=ACTION' string, got {type(text).__name__}")
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
        return Rule(text, pattern, action, None, transplant=parse_from(action, where))
    kw = action.kwargs_dict()
    try:
        part = parse_part(kw, where)
        own = {k: v for k, v in kw.items() if k not in PART_ARGS}
        scheme = bind_scheme(action.name, action.args, own)
    except SchemeError as e:
        raise RuleError(f"{where}: {e}") from None
    return Rule(text, pattern, action, scheme, part=part)


def parse_rules(texts: Sequence[str]) -> tuple[Rule, ...]:
    """Every rule parsed; the first bad one raises `RuleError` naming it."""
    return tuple(parse_rule(t) for t in texts)


MAX_HINTS = 20  # unmatched rules that get a "closest names" hint


def closest_hint(pattern: str, names: Sequence[str], n: int = 3) -> str:
    """'; closest names: a, b, c' for an error message, from the pattern with wildcards removed."""
    probe = pattern.removeprefix("re:")
    probe = re.sub(r"[*?\[\]^$()|+\\]", "", probe)
    close = difflib.get_close_matches(probe, names, n=n, cutoff=0.3)
    if not close and names:
        close = sorted(names, key=lambda x: -difflib.SequenceMatcher(None, probe, x).ratio())[:n]
    return f"; closest names: {', '.join(close)}" if close else "; the checkpoint has no tensors"


MISMATCH_POLICIES = ("error", "skip", "slice")


@dataclass(frozen=True)
class TransplantSpec:
    """`from(SOURCE, key=TEMPLATE|auto, on_mismatch=error|skip|slice, state=PATH, ...)`, as
    written. `state`: the dotted path of the state dict inside a torch training checkpoint
    (as `--key` for the main source); "" finds a well-known nest itself. `cat`: several
    source key templates joined along `transform.dim` (instead of `key`); `transform`: what
    happens between reading and writing (docs/guide/transplant.md)."""

    source: str
    key: str | None = None  # template; None = the target's own name
    on_mismatch: str = "error"
    state: str = ""
    cat: tuple[str, ...] = ()  # key templates, concatenated in this order
    transform: TransformSpec = TransformSpec()
    stack: tuple[str, ...] = ()  # key templates with {e}: each expert's (joined), stacked

    @property
    def has_transform(self) -> bool:
        """Whether the values are more than a (cast) copy of one source tensor."""
        return bool(self.cat) or bool(self.stack) or self.transform.active

    def transform_text(self) -> str | None:
        """The transform as written (`cat=…, dim=…, chunk=…, rotary=…`), None for a copy."""
        if not self.has_transform:
            return None
        parts = [f"cat={';'.join(self.cat)}"] if self.cat else []
        if self.stack:
            parts.append(f"stack={';'.join(self.stack)}")
        if self.cat or self.transform.chunk is not None or len(self.stack) > 1:
            parts.append(f"dim={self.transform.dim}")
        return ", ".join(parts + self.transform.parts())

    def describe(self) -> str:
        parts = [self.source]
        if self.key is not None:
            parts.append(f"key={self.key}")
        text = self.transform_text()
        if text:
            parts.append(text)
        if self.on_mismatch != "error":
            parts.append(f"on_mismatch={self.on_mismatch}")
        if self.state:
            parts.append(f"state={self.state}")
        return f"from({', '.join(parts)})"


_FROM_ARGS = ("source", "key", "on_mismatch", "state", "cat", "stack", *TRANSFORM_ARGS)


def parse_from(action: Action, where: str) -> TransplantSpec:
    """A `from(...)` action checked into a `TransplantSpec` (a malformed hf:// URL or transform
    argument fails here, before anything is read)."""
    kw = action.kwargs_dict()
    unknown = set(kw) - set(_FROM_ARGS)
    if unknown:
        raise RuleError(
            f"{where}: from() has no argument {sorted(unknown)[0]!r}; "
            "use from(SOURCE, key=TEMPLATE|auto, on_mismatch=error|skip|slice, state=PATH) "
            f"with transforms {', '.join(a + '=' for a in _FROM_ARGS[4:])}"
        )
    if len(action.args) > 1:
        raise RuleError(f"{where}: from() takes one positional argument, the source")
    source = action.args[0] if action.args else kw.get("source")
    if not isinstance(source, str) or not source:
        raise RuleError(f"{where}: from() needs a source, e.g. from(other.safetensors)")
    if is_hf_url(source):
        parse_hf_url(source)  # a malformed URL is a usage error now, before anything is read
    key = kw.get("key")
    if key is not None and not isinstance(key, str):
        key = str(key)
    cat: tuple[str, ...] = ()
    if "cat" in kw:
        if key is not None:
            raise RuleError(f"{where}: key= and cat= are exclusive (cat= names every source key)")
        cat = tuple(k.strip() for k in str(kw["cat"]).split(";"))
        if len(cat) < 2 or not all(cat):
            raise RuleError(
                f"{where}: cat= needs two or more key templates separated by ';', "
                "e.g. cat={1}.q.weight;{1}.k.weight;{1}.v.weight"
            )
    stack = parse_stack(kw, key, cat, where)
    policy = kw.get("on_mismatch", "error")
    if policy not in MISMATCH_POLICIES:
        raise RuleError(f"{where}: on_mismatch must be one of {', '.join(MISMATCH_POLICIES)}")
    state = kw.get("state", "")
    transform = parse_transform(kw, where, has_cat=bool(cat), has_stack=bool(stack))
    for scheme_arg in ("init", "new"):
        text = getattr(transform, scheme_arg)
        if text is not None and text != KEEP:
            try:
                get_scheme(parse_action(text, where).name)
            except SchemeError as e:
                raise RuleError(f"{where}: {scheme_arg}={text}: {e}") from None
    return TransplantSpec(source, key, str(policy), str(state), cat, transform, stack)
