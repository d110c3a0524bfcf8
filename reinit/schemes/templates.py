"""Name templates: `{name}` for a target's whole name, `{1}`, `{2}`, … for the rule pattern's
captures. One definition for `copy(source)` (schemes), `from(..., key=…)` and `--rename`
(rules), which differ only in the error they raise."""

from __future__ import annotations

import re
from collections.abc import Sequence

from reinit.errors import ReinitError

__all__ = ["fill_template"]

_FIELD = re.compile(r"\{(name|\d+)\}")


def fill_template(
    template: str,
    name: str,
    captures: Sequence[str],
    prefix: str,
    error: type[ReinitError],
) -> str:
    """`template` with its fields filled.

    Args:
        template: text with `{name}` and `{1}`, `{2}`, … fields.
        name: what `{name}` stands for.
        captures: what `{1}`, `{2}`, … stand for (each `*` of a glob, each group of a regex).
        prefix: leads the error message, before the quoted template (names where it came from).
        error: the error class raised for a field beyond the captures.

    Returns:
        The filled text.

    Example:
        >>> fill_template("{1}.weight", "a.b", ("enc",), "", ReinitError)
        'enc.weight'
    """

    def sub(m: re.Match[str]) -> str:
        field = m.group(1)
        if field == "name":
            return name
        i = int(field)
        if not 1 <= i <= len(captures):
            raise error(
                f"{prefix}{template!r} uses {{{i}}} but the pattern has {len(captures)} capture(s)"
            )
        return captures[i - 1]

    return _FIELD.sub(sub, template)
