"""Shared fixtures: an isolated Hugging Face home (HF_HOME under tmp_path, no token, any stray
request sent to a closed local port), offline and online modes, and a fake Hub."""

from __future__ import annotations

import huggingface_hub.constants as hf_constants
import pytest
from hubcache import FakeHub, closed_port


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty HF_HOME under tmp_path; no token; any stray request goes to a closed local port."""
    home = tmp_path / "hf_home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 2)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
    return home


@pytest.fixture
def offline(hf_home, monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it (its constant is read at import) and as the
    environment says it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hf_home


@pytest.fixture
def online(hf_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return hf_home


@pytest.fixture
def fake_hub(online, monkeypatch):
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.close()
