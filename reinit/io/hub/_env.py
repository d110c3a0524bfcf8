"""The Hub's environment and small helpers for `hub.HubRepo`: offline mode, cache folder and
timeout as the environment says *now* (not as huggingface_hub read it at import), which
exceptions mean "is_unreachable", and how a failure or a file list reads in one line."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from reinit.io.hub._retry import library_call
from reinit.text import one_line, shown

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub.utils import tqdm as hf_tqdm

__all__ = [
    "env_true",
    "transport_errors",
    "clean_name",
    "default_cache_dir",
    "hidden",
    "in_library_call",
    "file_listing",
    "offline_mode",
    "hub_offline",
    "quiet_bar",
    "reason_of",
    "status_of",
    "hub_timeout",
    "top_level",
    "is_unreachable",
]

_TRUE = {"1", "ON", "YES", "TRUE"}
_SHOW_FILES = 8  # how many existing files an error message lists

T = TypeVar("T")


def env_true(name: str) -> bool:
    return (os.environ.get(name) or "").strip().upper() in _TRUE


def offline_mode() -> bool:
    """Offline if the environment says so now, or if huggingface_hub read it so at import."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode()) or env_true("HF_HUB_OFFLINE")


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub offline for the block (every request it would make refused): transformers
    building a config a checkpoint carries (a DETR's `backbone` names a Hub repo, which its
    config's own constructor looks up) reaches no network because of a file."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def default_cache_dir() -> pathlib.Path:
    """The hub cache as huggingface_hub computes it, but from the environment as it is now."""
    env = os.environ
    raw = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not raw and env.get("HF_HOME"):
        raw = os.path.join(env["HF_HOME"], "hub")
    if not raw:
        from huggingface_hub import constants

        raw = constants.HF_HUB_CACHE
    return pathlib.Path(os.path.expandvars(os.path.expanduser(raw)))


def hub_timeout() -> float:
    raw = os.environ.get("HF_HUB_ETAG_TIMEOUT")
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT)


def transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception classes of whichever HTTP client huggingface_hub uses."""
    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, attr in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            mod = __import__(module)
            classes.append(getattr(mod, attr))
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def is_unreachable(exc: BaseException) -> bool:
    """The Hub could not be reached or could not answer (as opposed to answering 'no')."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return True
    status = status_of(exc)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, transport_errors())


def reason_of(exc: BaseException) -> str:
    """`TypeName: message` in one line of at most ~160 characters, escaped (a server's message
    may hold escapes, and it also reaches log lines)."""
    text = one_line(shown(one_line(str(exc), limit=None)), limit=160)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def hidden(relname: str) -> bool:
    return any(part.startswith(".") for part in relname.split("/"))


def clean_name(filename: str) -> str:
    return str(filename).replace("\\", "/").strip("/")


def top_level(files: list[str]) -> list[str]:
    return sorted({f.split("/", 1)[0] + ("/" if "/" in f else "") for f in files})


def file_listing(files: list[str] | None, label: str) -> str:
    if not files:
        return ""
    shown = ", ".join(files[:_SHOW_FILES])
    more = f", … ({len(files) - _SHOW_FILES} more)" if len(files) > _SHOW_FILES else ""
    return f" ({label}: {shown}{more})"


_QUIET_BAR: type[hf_tqdm] | None = None


def quiet_bar() -> type[hf_tqdm]:
    """A huggingface_hub tqdm class that never shows (per call, unlike disable_progress_bars())."""
    global _QUIET_BAR
    if _QUIET_BAR is None:
        from huggingface_hub.utils import tqdm as hf_tqdm

        class _QuietBar(hf_tqdm):
            def __init__(self, *args: object, **kwargs: object) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        _QUIET_BAR = _QuietBar
    return _QUIET_BAR


def in_library_call(fn: Callable[[], T]) -> T:
    """`fn()` under `library_call()` in the calling thread (the stall guard's worker thread):
    the retry state is kept per thread."""
    with library_call():
        return fn()
