"""The Hugging Face Hub: `hf://` references, the repository reader (huggingface_hub's cache rules), its
environment, retries and one-line errors. Modules here are private; the rest of reinit imports these names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reinit.lazy import lazy_exports

if TYPE_CHECKING:
    from reinit.io.hub._env import hub_offline
    from reinit.io.hub._repo import HubRepo
    from reinit.io.hub._url import is_hf_url, parse_hf_url

_WHERE = {
    "HubRepo": "_repo",
    "hub_offline": "_env",
    "is_hf_url": "_url",
    "parse_hf_url": "_url",
}

__all__ = [
    "HubRepo",
    "hub_offline",
    "is_hf_url",
    "parse_hf_url",
]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
