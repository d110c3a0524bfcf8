"""What torch and transformers say while reinit works, routed instead of printed raw: the CLI
opens `routed(emit)` around a command, and every Python warning (torch's UserWarnings) and every
record transformers logs at WARNING or above becomes one call `emit(text)` (the CLI prints it as
one bounded `warning:` line on stderr, each text once). Nothing reaches stdout, so `--json` stays
parseable, and no multi-line library text lands between reinit's one-line messages.

transformers adds its own stderr handler when first imported, and importing it costs seconds, so
it is not imported here: whoever imports it calls `route_transformers()` after (idempotent), and
`routed` hooks it at once when it is already loaded. Outside `routed` (the Python API) nothing is
changed: the caller's warnings and logging settings stand.

`transformers_quiet` is for a model reinit builds for itself, not for the command (a
checkpoint's own config.json, built to find its ties or its DCP names): what transformers says
of that config (an `eos_token_id` outside the vocabulary, ...) is about the file, not the
command, so it is not said at all, in the CLI or through the Python API."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator

__all__ = ["route_transformers", "routed", "transformers_quiet"]

Emit = Callable[[str], None]

_emit: Emit | None = None
_saved: tuple[list[logging.Handler], bool] | None = None
_LOGGER = "transformers"


class _Forward(logging.Handler):
    """transformers' records, to the open `routed` window's `emit`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record must not end the command
            return
        if _emit is not None and record.levelno >= logging.WARNING:
            _emit(f"transformers: {text}")


_FORWARD = _Forward()


def route_transformers() -> None:
    """Inside `routed`: transformers' logger sends its records to `emit` instead of its own
    stderr handler (call after importing transformers). Outside `routed`: nothing."""
    global _saved
    if _emit is None or _saved is not None or _LOGGER not in sys.modules:
        return
    lib = logging.getLogger(_LOGGER)
    _saved = (lib.handlers[:], lib.propagate)
    lib.handlers = [_FORWARD]
    lib.propagate = False


def _unroute_transformers() -> None:
    global _saved
    if _saved is not None:
        lib = logging.getLogger(_LOGGER)
        lib.handlers, lib.propagate = _saved
        _saved = None


@contextlib.contextmanager
def routed(emit: Emit) -> Iterator[None]:
    """Within: Python warnings and transformers' log records go to `emit` (see the module doc);
    the previous warning display and transformers' handlers are restored after."""
    global _emit

    def show(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning
        emit(f"{category.__name__}: {message}")

    previous = _emit
    with warnings.catch_warnings():
        warnings.showwarning = show
        _emit = emit
        try:
            route_transformers()
            yield
        finally:
            _unroute_transformers()
            _emit = previous


@contextlib.contextmanager
def transformers_quiet() -> Iterator[None]:
    """Within: transformers (already imported: it sets its level when first imported) logs
    errors only, and Python warnings are not shown; both restored after. For a model reinit
    builds for itself (see the module doc), never around what the user asked for."""
    lib = logging.getLogger(_LOGGER)
    level = lib.level
    lib.setLevel(logging.ERROR)
    once = _quiet_once()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, method in once.items():
            setattr(logging.Logger, name, method)
        lib.setLevel(level)


def _quiet_once() -> dict[str, Callable[..., None]]:
    """transformers' `warning_once`/`info_once` (set on `logging.Logger`, each behind an
    `lru_cache`) would remember a message they did not show while the level is ERROR, and a
    later build the user asked for would then not show it. Within the quiet block they pass a
    message on only where the logger would show it (so nothing is remembered unshown); returns
    the methods to put back."""
    saved: dict[str, Callable[..., None]] = {}
    for name, level in (("warning_once", logging.WARNING), ("info_once", logging.INFO)):
        method = getattr(logging.Logger, name, None)
        if method is None:
            continue
        saved[name] = method

        def shown_only(
            self: logging.Logger,
            *args: object,
            _m: Callable[..., None] = method,
            _lvl: int = level,
            **kwargs: object,
        ) -> None:
            if self.isEnabledFor(_lvl):
                _m(self, *args, **kwargs)

        setattr(logging.Logger, name, shown_only)
    return saved
