"""Which torch files may run code while loading (`--unsafe-pickle PATH`), and which recipe
`module:callable` models may be imported and called (`--trust-model-callable MODULE:CALLABLE`).

Trust names files: a run that reads several checkpoints (a source, `from(...)` sources, an
`--against` baseline) lifts the weights-only loader only for the files the user named, never
for the others. A named folder (or `hf://OWNER/NAME`) trusts the torch shards of that model;
a named file trusts that file, whatever path reaches it (compared after resolving links)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from reinit.errors import UsageError
from reinit.io.hub import is_hf_url

__all__ = [
    "CALLABLE_SPEC",
    "NO_TRUST",
    "PathLike",
    "PickleTrust",
    "TrustSpec",
    "callable_name",
    "callable_trust",
    "pickle_trust",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PickleTrust:
    """The sources the user trusts to run code: resolved local paths, and Hub URLs as given."""

    paths: frozenset[str] = frozenset()
    urls: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.paths or self.urls)

    def allows(self, source: PathLike) -> bool:
        """Whether `source` (a torch file, a model folder or an hf:// URL) was named."""
        text = os.fspath(source)
        if is_hf_url(text):
            return text.rstrip("/") in self.urls
        return _resolved(text) in self.paths

    def names(self) -> list[str]:
        return sorted(self.paths | self.urls)


NO_TRUST = PickleTrust()


def _resolved(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def pickle_trust(value: TrustSpec, where: str = "unsafe_pickle") -> PickleTrust:
    """A `PickleTrust` from what the API accepts: nothing (False/None/empty), one path, or an
    iterable of paths (a set, a list, the CLI's repeated `--unsafe-pickle PATH`).

    `True` is refused: it used to trust every file the run opened, which is how trust spread
    from the source to `from(...)` sources the user never vetted."""
    if isinstance(value, PickleTrust):
        return value
    if value is None or value is False:
        return NO_TRUST
    if value is True:
        raise UsageError(
            f"{where}: name the torch files you trust (e.g. --unsafe-pickle model.ckpt, or "
            "unsafe_pickle={'model.ckpt'}), not true: trust never extends to other files"
        )
    items: Iterable[object] = [value] if isinstance(value, (str, os.PathLike)) else value
    try:
        entries = list(items)
    except TypeError:
        raise UsageError(
            f"{where}: expected paths of torch files you trust, got {value!r}"
        ) from None
    paths: set[str] = set()
    urls: set[str] = set()
    for item in entries:
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item).strip():
            raise UsageError(f"{where}: expected paths of torch files you trust, got {item!r}")
        text = os.fspath(item)
        if text.startswith("-"):
            raise UsageError(
                f"{where}: {text!r} is not a path; write --unsafe-pickle PATH, naming the "
                "torch file you trust"
            )
        if is_hf_url(text):
            urls.add(text.rstrip("/"))
        else:
            paths.add(_resolved(text))
    return PickleTrust(frozenset(paths), frozenset(urls))


# What every `unsafe_pickle=` parameter accepts: see `pickle_trust`.
TrustSpec = PickleTrust | str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | bool | None


# `module:callable` or `module:callable(ARGS)`: what `--model` imports and calls
CALLABLE_SPEC = re.compile(r"([A-Za-z_][\w.]*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(\(.*\))?\Z", re.S)


def callable_name(text: str) -> str | None:
    """`MODULE:CALLABLE` of a `module:callable(ARGS)` spec (what `--trust-model-callable`
    names), or None when `text` is not one."""
    m = CALLABLE_SPEC.match(text.strip())
    return f"{m.group(1)}:{m.group(2)}" if m and not is_hf_url(text) else None


def callable_trust(names: Iterable[str], where: str = "--trust-model-callable") -> frozenset[str]:
    """The `MODULE:CALLABLE` names the user allows to be imported and called (arguments, if
    given, are dropped: a recipe may pass its own literal arguments to a trusted callable)."""
    out: set[str] = set()
    for text in names:
        name = callable_name(text) if isinstance(text, str) else None
        if name is None:
            raise UsageError(f"{where} {text}: write MODULE:CALLABLE, e.g. mypkg.nets:MLP")
        out.add(name)
    return frozenset(out)
