"""The `{name}` / `{1}` template language: one definition for every place a rule names another
tensor by a template: `copy(source=…)` (a scheme, so it lives at this layer), a transplant's
`from(…, key=…)` and `--rename PATTERN=TEMPLATE` (rules and surgery, above)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from reinit.errors import ReinitError, SchemeError

__all__ = ["fill_template"]

_FIELD = re.compile(r"\{(name|\d+)\}")


def fill_template(
    template: str,
    name: str,
    captures: Sequence[str],
    where: str = "",
    error: type[ReinitError] = SchemeError,
) -> str:
    """`{name}` -> the whole name, `{1}`, `{2}`, … -> the pattern's captures (each `*` of a
    glob, each group of a regex). A field past the captures raises `error`, its message
    prefixed by `where` (e.g. `rule '…'`) so the user sees which rule or option to fix."""

    def sub(m: re.Match[str]) -> str:
        field = m.group(1)
        if field == "name":
            return name
        i = int(field)
        if not 1 <= i <= len(captures):
            prefix = f"{where}: " if where else ""
            raise error(
                f"{prefix}the template {template!r} uses {{{i}}} but the pattern has "
                f"{len(captures)} capture(s)"
            )
        return captures[i - 1]

    return _FIELD.sub(sub, template)
