"""The Hugging Face Hub: `hf://` references, the repository reader (huggingface_hub's cache rules), its
environment, retries and one-line errors. Modules here are private; the rest of reinit imports these names."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reinit.io.hub._repo import HubRepo
    from reinit.io.hub._url import is_hf_url, parse_hf_url

_WHERE = {
    "HubRepo": "_repo",
    "is_hf_url": "_url",
    "parse_hf_url": "_url",
}

__all__ = [
    "HubRepo",
    "is_hf_url",
    "parse_hf_url",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
