"""Name templates: `{name}` for a target's whole name, `{1}`, `{2}`, … for the rule pattern's
captures. One definition for `copy(source)` (schemes), `from(..., key=…)` and `--rename`
(rules), which differ only in the error they raise."""

from __future__ import annotations

import re
from collections.abc import Sequence

from reinit.errors import ReinitError

__all__ = ["arithmetic", "fill_template"]

# Numbers of at most 18 digits (any index fits): a longer one is no field (Python's int() stops
# at 4,300 digits, and a product of long factors would print past that).
_FIELD = re.compile(r"\{(name|\d{1,18})((?:[-+*]\d{1,18})*)\}")
_BRACED = re.compile(r"\{[^{}]*\}")
_TERM = re.compile(r"([-+*])(\d+)")
_DIGITS = re.compile(r"[0-9]+\Z")


def arithmetic(value: int, ops: str) -> int:
    """`value` followed by `ops` (`+8`, `-16`, `*2`, `*2+1`): integers, `*` before `+`/`-`."""
    total, sign, term = 0, 1, value
    for op, k in _TERM.findall(ops):
        if op == "*":
            term *= int(k)
        else:
            total += sign * term
            sign, term = (1 if op == "+" else -1), int(k)
    return total + sign * term


def fill_template(
    template: str,
    name: str,
    captures: Sequence[str],
    prefix: str,
    error: type[ReinitError],
) -> str:
    """`template` with its fields filled.

    Args:
        template: text with `{name}` and `{1}`, `{2}`, … fields; a capture field may carry
            integer arithmetic with literal integers, `{1+8}`, `{1-16}`, `{1*2}`, `{1*2+1}`
            (`*` first, then `+`/`-`, left to right): the capture must be a non-negative
            integer and so must the result.
        name: what `{name}` stands for.
        captures: what `{1}`, `{2}`, … stand for (each `*` of a glob, each group of a regex).
        prefix: leads the error message, before the quoted template (names where it came from).
        error: the error class raised for a field beyond the captures or bad arithmetic.

    Returns:
        The filled text.

    Example:
        >>> fill_template("{1}.weight", "a.b", ("enc",), "", ReinitError)
        'enc.weight'
        >>> fill_template("layers.{1+8}.w", "layers.3.w", ("3",), "", ReinitError)
        'layers.11.w'
    """

    def sub(m: re.Match[str]) -> str:
        field, ops = m.group(1), m.group(2)
        if field == "name":
            if ops:
                raise error(f"{prefix}{template!r}: arithmetic applies to captures, not {{name}}")
            return name
        i = int(field)
        if not 1 <= i <= len(captures):
            raise error(
                f"{prefix}{template!r} uses {{{i}}} but the pattern has {len(captures)} capture(s)"
            )
        if not ops:
            return captures[i - 1]
        if len(captures[i - 1]) > 18 and _DIGITS.match(captures[i - 1]):
            raise error(
                f"{prefix}{template!r}: {{{i}}} is a number of {len(captures[i - 1])} digits "
                f"(in {name[:60]!r}…); arithmetic takes at most 18"
            )
        if not _DIGITS.match(captures[i - 1]):
            raise error(
                f"{prefix}{template!r}: {{{i}{ops}}} needs an integer capture, but {{{i}}} "
                f"is {captures[i - 1]!r} (in {name!r}); narrow the pattern, e.g. "
                "re:layers\\.(\\d+)\\..*"
            )
        value = arithmetic(int(captures[i - 1]), ops)
        if value >= 2**63:
            raise error(
                f"{prefix}{template!r}: {{{i}{ops}}} gives a number of {value.bit_length()} bits "
                f"for {name!r}; results must be below 2^63"
            )
        if value < 0:
            raise error(
                f"{prefix}{template!r}: {{{i}{ops}}} gives {value} for {name!r} "
                f"({{{i}}} = {captures[i - 1]}); results must be >= 0"
            )
        return str(value)

    _check_fields(template, prefix, error)
    return _FIELD.sub(sub, template)


def _check_fields(template: str, prefix: str, error: type[ReinitError]) -> None:
    """Every `{...}` of `template` is a field: one we do not know (`{1/2}`, `{nmae}`) is an
    error, not text kept in the name."""
    for m in _BRACED.finditer(template):
        if not _FIELD.fullmatch(m.group(0)):
            raise error(
                f"{prefix}{template!r}: unknown field {m.group(0)}; fields are {{name}}, {{1}}, "
                "{2}, ... and integer arithmetic on a capture: {1+8}, {1-16}, {1*2}"
            )
