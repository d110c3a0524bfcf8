"""Matching tensor names: globs matched segment by segment (no backtracking, the greedy
captures of the old regex translation), user regexes under a per-match time limit, and
`type:` selectors."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Protocol

from reinit.errors import RuleError

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
    "literal_glob",
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
    cannot be interrupted, and no static check catches every exponential regex)."""

    text: str
    compiled: TimedRegex  # a `regex.Pattern`

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
