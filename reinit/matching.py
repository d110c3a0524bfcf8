"""Matching tensor names: globs matched segment by segment (no backtracking, the greedy
captures of the old regex translation), user regexes under a per-match time limit, and
`type:` selectors."""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol

from reinit.errors import RuleError
from reinit.limits import MAX_REGEX_CHARS, MAX_REGEX_REPEAT, REGEX_BUDGET_S

__all__ = [
    "REGEX_TIMEOUT_S",
    "Glob",
    "MatchAll",
    "Matcher",
    "Piece",
    "RegexMatch",
    "Segment",
    "TimedRegex",
    "UserRegex",
    "GlobAlternatives",
    "compile_glob",
    "compile_globs",
    "compile_user_regex",
    "literal_glob",
    "regex_size_problem",
]


# One fixed-width piece of a segment: a literal string (matched with startswith), or a
# single-character test: None for `?` (any character), else a compiled one-character class.
Piece = str | re.Pattern[str] | None


@dataclass(frozen=True)
class Segment:
    """A star-free run of a glob: literal strings and one-character wildcards."""

    pieces: tuple[Piece, ...]
    width: int
    literal: str | None  # the whole segment when it has no wildcard (fast paths)

    def matches_at(self, name: str, pos: int) -> bool:
        """Whether the segment matches `name[pos : pos + width]` (caller checks bounds)."""
        for p in self.pieces:
            if isinstance(p, str):
                if not name.startswith(p, pos):
                    return False
                pos += len(p)
            else:
                if p is not None and p.match(name, pos) is None:
                    return False
                pos += 1
        return True

    def rightmost(self, name: str, lo: int, hi: int) -> int:
        """The largest start `s` with lo <= s and s + width <= hi where the segment matches,
        or -1."""
        if self.literal is not None:
            return name.rfind(self.literal, lo, hi)
        for s in range(hi - self.width, lo - 1, -1):
            if self.matches_at(name, s):
                return s
        return -1


def _set_class(body: str, glob: str) -> re.Pattern[str]:
    """`[...]` as today's translation made it: `!` negates, backslashes are literal."""
    if body.startswith("!"):
        body = "^" + body[1:]
    source = "[" + body.replace("\\", "\\\\") + "]"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "possible nested set" for `[[`
            return re.compile(source, re.S)
    except re.error as e:
        raise RuleError(
            f"pattern {glob!r}: bad character set [{body}] ({e}); write ranges low-high, e.g. [0-9]"
        ) from None


def _segment(pieces: list[Piece]) -> Segment:
    width = sum(len(p) if isinstance(p, str) else 1 for p in pieces)
    literal = "".join(p for p in pieces if isinstance(p, str))
    all_literal = all(isinstance(p, str) for p in pieces)
    return Segment(tuple(pieces), width, literal if all_literal else None)


@dataclass(frozen=True)
class Glob:
    """A compiled glob: `*` matches any run of characters (dots included) and captures it,
    `?` one character, `[...]` one character of a set (`[!...]` negated)."""

    text: str
    segments: tuple[Segment, ...]  # len(segments) == number of stars + 1
    has_wildcards: bool

    @property
    def stars(self) -> int:
        return len(self.segments) - 1

    @property
    def literal_prefix(self) -> str:
        """The literal characters every matching name starts with (for indexing)."""
        out = []
        for p in self.segments[0].pieces:
            if not isinstance(p, str):
                break
            out.append(p)
        return "".join(out)

    @property
    def literal_suffix(self) -> str:
        """The literal characters every matching name ends with (for indexing); the whole
        text for a glob without stars is a prefix, not counted here."""
        if len(self.segments) == 1:
            return ""
        out: list[str] = []
        for p in reversed(self.segments[-1].pieces):
            if not isinstance(p, str):
                break
            out.append(p)
        return "".join(reversed(out))

    def fullmatch(self, name: str) -> tuple[str, ...] | None:
        """The captures (one per `*`) if the whole name matches, else None."""
        segs = self.segments
        n = len(name)
        first = segs[0]
        if len(segs) == 1:
            return () if n == first.width and first.matches_at(name, 0) else None
        last = segs[-1]
        end = n - last.width
        if end < first.width or not first.matches_at(name, 0) or not last.matches_at(name, end):
            return None
        # rightmost feasible start of each middle segment, placed right to left
        starts = [0] * len(segs)
        starts[-1] = end
        hi = end
        for i in range(len(segs) - 2, 0, -1):
            s = segs[i].rightmost(name, first.width, hi)
            if s < 0:
                return None
            starts[i] = s
            hi = s
        caps = []
        prev_end = first.width
        for i in range(1, len(segs)):
            caps.append(name[prev_end : starts[i]])
            prev_end = starts[i] + segs[i].width
        return tuple(caps)


def compile_glob(glob: str) -> Glob:
    """Parse a glob. A `[` without a closing `]` is a literal `[`; a bad set (e.g. `[z-a]`)
    is a `RuleError` naming the pattern."""
    segments: list[Segment] = []
    pieces: list[Piece] = []
    lit: list[str] = []
    wild = False

    def flush_lit() -> None:
        if lit:
            pieces.append("".join(lit))
            lit.clear()

    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            flush_lit()
            segments.append(_segment(pieces))
            pieces = []
            wild = True
        elif c == "?":
            flush_lit()
            pieces.append(None)
            wild = True
        elif c == "[":
            j = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j == -1:
                lit.append(c)
            else:
                flush_lit()
                pieces.append(_set_class(glob[i + 1 : j], glob))
                wild = True
                i = j
        else:
            lit.append(c)
        i += 1
    flush_lit()
    segments.append(_segment(pieces))
    return Glob(glob, tuple(segments), wild)


MAX_ALTERNATIVES = 1024  # `{a,b}` groups multiply: a pattern may expand to this many globs
_BRACES = re.compile(r"\{([^{}]*,[^{}]*)\}")


@dataclass(frozen=True)
class GlobAlternatives:
    """A glob with `{a,b,...}` groups, as the shell expands them (`*.experts.{3,5}.*`): the
    globs it expands to, in order; the first that matches gives the captures (its `*`s; a
    brace group captures nothing)."""

    text: str
    globs: tuple[Glob, ...]
    has_wildcards: bool = True

    def fullmatch(self, name: str) -> tuple[str, ...] | None:
        for g in self.globs:
            caps = g.fullmatch(name)
            if caps is not None:
                return caps
        return None


def _expand(glob: str) -> list[str]:
    m = _BRACES.search(glob)
    if m is None:
        return [glob]
    head, tail = glob[: m.start()], glob[m.end() :]
    out: list[str] = []
    for alt in m.group(1).split(","):
        out += _expand(head + alt + tail)
        if len(out) > MAX_ALTERNATIVES:
            raise RuleError(
                f"pattern {glob!r}: its {{a,b}} groups expand to over {MAX_ALTERNATIVES} globs; "
                "use a character set [35] or a re: pattern"
            )
    return out


def compile_globs(glob: str) -> Glob | GlobAlternatives:
    """A glob, or with `{a,b}` groups (a `{...}` holding a comma) the globs they expand to.
    Braces without a comma are literal characters."""
    texts = _expand(glob)
    if len(texts) == 1:
        return compile_glob(texts[0])
    return GlobAlternatives(glob, tuple(compile_glob(t) for t in texts))


def literal_glob(name: str) -> Glob:
    """A pattern that matches exactly `name` (no character of it is a wildcard)."""
    return Glob(name, (Segment((name,) if name else (), len(name), name),), False)


class Matcher(Protocol):
    """What a pattern matches names with: a `Glob` (linear time, see `globmatch`) or a
    `UserRegex` (time-bounded)."""

    def fullmatch(self, name: str) -> tuple[str, ...] | None: ...


# A user regex may spend this long on one tensor name before the rule is refused: tensor
# names are short, so a sane regex needs microseconds; catastrophic backtracking (`(a+)+$`)
# is stopped instead of hanging. Documented in docs/guarantees.md.
REGEX_TIMEOUT_S = 0.5


class RegexMatch(Protocol):
    def groups(self) -> tuple[str | None, ...]: ...


class TimedRegex(Protocol):
    """What `UserRegex` uses of a compiled `regex.Pattern`: a full match with a timeout (the
    `regex` module ships no type stubs, so its type is spelled out here)."""

    def fullmatch(self, string: str, *, timeout: float) -> RegexMatch | None: ...


@dataclass(frozen=True)
class UserRegex:
    """A `re:` pattern, run by the `regex` module with a per-match timeout (Python's `re`
    cannot be interrupted, and no static check catches every exponential regex), and a total
    budget over all the names it is tried on (`REGEX_BUDGET_S`): 300 names at just under the
    per-name limit each would otherwise take minutes."""

    text: str
    compiled: TimedRegex  # a `regex.Pattern`
    spent: list[float] = field(default_factory=lambda: [0.0], compare=False, repr=False)

    def fullmatch(self, name: str) -> tuple[str, ...] | None:
        left = REGEX_BUDGET_S - self.spent[0]
        start = time.monotonic()
        try:
            m = self.compiled.fullmatch(name, timeout=max(min(REGEX_TIMEOUT_S, left), 0.001))
        except TimeoutError:
            raise RuleError(self._too_slow(name, left < REGEX_TIMEOUT_S)) from None
        finally:
            self.spent[0] += time.monotonic() - start
        return None if m is None else tuple(g if g is not None else "" for g in m.groups())

    def _too_slow(self, name: str, total: bool) -> str:
        shown = name if len(name) <= 80 else name[:77] + "..."
        pattern = self.text if len(self.text) <= 100 else self.text[:97] + "..."
        took = (
            f"took over {REGEX_BUDGET_S:g} s in total over this checkpoint's names"
            if total
            else f"took over {REGEX_TIMEOUT_S} s on tensor '{shown}'"
        )
        return (
            f"pattern {pattern!r}: the regular expression {took} (catastrophic backtracking, "
            "e.g. nested quantifiers like (a+)+); rewrite it without nested repeats, or use a glob"
        )


def compile_user_regex(text: str) -> UserRegex:
    """A `re:REGEX` pattern's matcher: its size checked (`regex_size_problem`) before the
    `regex` module (whose matches take a timeout; `re`'s cannot be stopped) compiles it."""
    import regex

    shown_text = text if len(text) <= 100 else text[:97] + "..."
    problem = regex_size_problem(text[3:])
    if problem is not None:
        raise RuleError(f"pattern {shown_text!r}: the regular expression {problem}")
    try:
        compiled = regex.compile(text[3:])
    except (regex.error, ValueError, OverflowError, RecursionError, MemoryError) as e:
        raise RuleError(f"pattern {shown_text!r}: invalid regular expression ({e})") from None
    return UserRegex(text, compiled)


_COUNTED = re.compile(r"\{(\d*)(?:,(\d*))?\}")
_BRACED_ESCAPES = frozenset("pPNxuUg")


def regex_size_problem(body: str) -> str | None:
    """Why a regex is too big to compile, or None: longer than `MAX_REGEX_CHARS`, or counted
    repeats (`{n}`, `{n,m}`) whose product along any nesting passes `MAX_REGEX_REPEAT`
    (`a{99999999}` or `((a{1000}){1000}){1000}`: the regex compiler expands them, taking
    gigabytes before it is done). Tensor names are short: no real pattern comes near."""
    if len(body) > MAX_REGEX_CHARS:
        return f"is {len(body):,} characters long; at most {MAX_REGEX_CHARS:,} are allowed"
    stack = [1]  # the largest repeat product inside each open group
    last = 1  # the repeat product of the atom just read
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            i += 2
            if i - 1 < n and body[i - 1] in _BRACED_ESCAPES and i < n and body[i] == "{":
                close = body.find("}", i)
                i = n if close < 0 else close + 1
            last = 1
            continue
        if c == "[":
            i, last = _class_end(body, i), 1
        elif c == "(":
            stack.append(1)
            i += 1
            continue
        elif c == ")" and len(stack) > 1:
            i, last = i + 1, stack.pop()
        elif c == "{" and (m := _COUNTED.match(body, i)) and (m.group(1) or m.group(2)):
            digits = [g for g in m.groups() if g]
            if any(len(d) > 9 for d in digits):
                return f"repeats {m.group(0)} times; at most {MAX_REGEX_REPEAT:,} in all"
            i, last = m.end(), last * (max(int(d) for d in digits) or 1)
        else:
            i, last = i + 1, 1
        stack[-1] = max(stack[-1], last)
        if stack[-1] > MAX_REGEX_REPEAT:
            return (
                f"has counted repeats ({{n}}, {{n,m}}) that multiply to over "
                f"{MAX_REGEX_REPEAT:,}; tensor names are short: use + or * instead"
            )
    return None


def _class_end(body: str, i: int) -> int:
    """The index just past the character class `[...]` that starts at `i`."""
    j = i + 1
    if j < len(body) and body[j] == "^":
        j += 1
    if j < len(body) and body[j] == "]":
        j += 1
    while j < len(body) and body[j] != "]":
        j += 2 if body[j] == "\\" else 1
    return j + 1


class MatchAll:
    """The name part of a bare `type:` pattern: every name, no captures."""

    def fullmatch(self, name: str) -> tuple[str, ...] | None:
        return ()
