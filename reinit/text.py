"""Showing text that came from a file (tensor names, metadata values, config strings, Hub file
names) to a human, without letting the file forge what the terminal or a report shows.

A checkpoint is untrusted input: a tensor named ``"a\\nerror: fake\\x1b[31m"`` printed raw makes
``reinit inspect`` show a fake ``error:`` line in red, and a right-to-left override (U+202E)
makes a name read backwards. Every human-readable renderer therefore passes such text through
`shown`, which replaces each character of these Unicode categories with a visible escape:

- ``Cc`` control characters: C0 (U+0000-U+001F, including tab, newline, carriage return,
  escape), DEL (U+007F) and C1 (U+0080-U+009F);
- ``Cf`` format characters: bidi overrides and isolates (U+202A-U+202E, U+2066-U+2069), the
  marks U+200E/U+200F/U+061C, zero-width space/joiners, the BOM U+FEFF, soft hyphen U+00AD, ...;
- ``Zl`` / ``Zp``: the line and paragraph separators U+2028 / U+2029;
- ``Cs``: lone surrogates (a JSON header may hold ``"\\ud800"``; printing one would crash).

The escapes are Python's: ``\\t \\n \\r``, ``\\xHH`` below U+0100, ``\\uHHHH``, ``\\UHHHHHHHH``.
A backslash itself is kept as it is, so ordinary names look the same; the escaped form is
therefore for reading, not for parsing back: the exact name is in the JSON outputs, which never
escape (beyond JSON's own string escapes, which decode to the exact name).
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "ESCAPED_CATEGORIES",
    "MAX_MESSAGE_CHARS",
    "bounded",
    "md_cell",
    "md_code",
    "one_line",
    "shown",
]

# The longest error or warning line printed: a message may quote a value from the user or a
# file (a 10 MB rule, a 66 MB id2label), cut in its middle so the start (what) and the end (what
# to do) stay.
MAX_MESSAGE_CHARS = 2000

ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: object) -> str:
    """`text` as it may be shown on a terminal or in a text report: every control, format,
    line/paragraph-separator and surrogate character replaced by its escape (see the module
    doc). Ordinary text, including non-ASCII letters and spaces, is returned unchanged."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():  # fast path (C speed): no Cc/Cf/Cs/Zl/Zp (nor Zs other than " ")
        return s
    return "".join(
        _escape(ch) if unicodedata.category(ch) in ESCAPED_CATEGORIES else ch for ch in s
    )


# What Markdown (CommonMark, GFM) would act on in text from a file: `|` splits a table cell, a
# backtick opens a code span, `<` starts raw HTML or an autolink, `&` an entity (`&#x202e;`
# renders the bidi override `shown` escaped), `[`/`]` a link or image, `*`/`_` emphasis (`_` not
# inside a word, where CommonMark never reads it as emphasis: `init_weights` stays). Each
# is shown as itself by a backslash before it; so is a backslash the file put before one of them
# (else `\\<` would read as an escaped `\\` and a raw `<`). Other backslashes, like the escapes
# `shown` writes (`\\n`, `\\x1b`), are literal in Markdown and stay as they are.
_MD_ACTIVE = frozenset("|`<&[]*_")
_MD_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def md_cell(text: object) -> str:
    """`shown(text)` as plain text in Markdown (a table cell, a list item): every character
    Markdown would act on escaped with a backslash (see `_MD_ACTIVE`), so a file's `|` cannot
    split the row, a backtick cannot open a code span, and `<img …>`, `&#x202e;`, `[a](b)` or
    `*x*` are shown as written, never rendered."""
    s = shown(text)
    if not any(ch in _MD_ACTIVE or ch == "\\" for ch in s):
        return s
    out = []
    for i, ch in enumerate(s):
        if ch == "_" and s[i - 1 : i].isalnum() and s[i + 1 : i + 2].isalnum():
            out.append(ch)  # inside a word `_` never opens or closes emphasis (`init_weights`)
        elif ch in _MD_ACTIVE:
            out.append("\\" + ch)
        elif ch == "\\" and s[i + 1 : i + 2] in _MD_PUNCT:
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


def md_code(text: object, *, table: bool = False) -> str:
    """`shown(text)` as a Markdown code span that shows it exactly, whatever it holds: the
    fence is one backtick longer than the longest run of backticks inside (CommonMark), padded
    with a space where the text starts or ends with a backtick or a space (one space either
    side is stripped by the reader). In a table (`table=True`) a `|` is escaped as `\\|`,
    which GFM resolves before the code span, so the cell shows `|`; outside a table the
    backslash would show, so nothing else is touched."""
    s = shown(text)
    run = longest = 0
    for ch in s:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    if s[:1] in ("`", " ") or s[-1:] in ("`", " "):
        s = f" {s} "
    if table:
        s = s.replace("|", "\\|")
    return f"{fence}{s}{fence}"


def one_line(message: BaseException | str, *, limit: int | None = 200, typed: bool = False) -> str:
    """A message (an exception's, or any text) as one line to quote inside another message:
    every run of whitespace, newlines included, becomes one space, and text over `limit`
    characters is cut to `limit` with "..." at the end (None: never cut).

    An exception with an empty message gives its type name; `typed=True` always leads with it
    ("ValueError: bad value"). Escaping is `shown`'s job, not this one's.

    Example:
        >>> one_line(ValueError("bad\\n  value"), typed=True)
        'ValueError: bad value'
    """
    text = " ".join(str(message).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(message).__name__ if isinstance(message, BaseException) else ""
    if typed and name and text:
        return f"{name}: {text}"
    return text or name


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` when at most `limit` characters, else its start and end around a note of how
    much was cut, `limit` characters or fewer in all (plus the note)."""
    if len(text) <= limit:
        return text
    head = (limit * 2) // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]} ...[{cut:,} characters cut]... {text[-tail:]}"
