"""A Hub failure is one line, fast (issue #18): huggingface_hub's retry chatter never reaches
stderr and its retries are bounded by reinit/io/hub/_retry.py (8 s per streak by default).

The CLI runs in a subprocess (`python -m reinit`, so stderr is the real one, with the library's
own stderr handler) against the fake Hub of hubcache.py in this process.

Internal: also tests reinit.io, reinit.io.hub, reinit.io.hub._retry directly (not the `reinit`
API).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hubcache import FakeHub, st_bytes

from reinit.io.hub import _retry as hub_retry

ROOT = Path(__file__).resolve().parents[1]
S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
BOUND_S = 25.0  # generous: the retry budget is 8 s, the rest start-up on a loaded machine
# (before the budget, a 500 on a shard took 36 s here: 23 s of backoff sleeps plus start-up)


@pytest.fixture
def hub(tmp_path):
    g = torch.Generator().manual_seed(0)
    shards = {
        S1: {"a.weight": torch.randn(4, 4, generator=g)},
        S2: {"b.weight": torch.ones(64, 64)},
    }
    files = {s: st_bytes(tmp_path, sd) for s, sd in shards.items()}
    index = {"weight_map": {n: s for s, sd in shards.items() for n in sd}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files["config.json"] = b"{}"
    fake = FakeHub()
    fake.add("acme/sharded", files)
    yield fake
    fake.close()


def run_apply(hub: FakeHub, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float, Path]:
    home, work = tmp_path / "hf_home", tmp_path / "work"
    (home / "hub").mkdir(parents=True, exist_ok=True)
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "REINIT_"))}
    env.update(
        HF_HOME=str(home),
        HF_ENDPOINT=hub.url,
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "reinit", "apply", "hf://acme/sharded", "-r", "*=zeros"]
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    return res, time.monotonic() - start, work


def assert_one_line(res, seconds: float, work: Path, *fragments: str) -> str:
    assert res.returncode == 1, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    assert seconds < BOUND_S, f"took {seconds:.1f} s"
    assert list(work.iterdir()) == [], "something was written"
    return lines[0]


def test_500_on_a_shard_is_one_line_within_the_bound(hub, tmp_path):
    hub.fault(S2, "500")
    res, seconds, work = run_apply(hub, tmp_path)
    line = assert_one_line(res, seconds, work, "hf://acme/sharded", S2, "HTTP 500", "retries")
    # the library's retries were kept (1 plain HEAD + its retries), only bounded
    heads = [p for m, p in hub.requests if m == "HEAD" and p.endswith(S2)]
    assert len(heads) >= 3, heads
    assert "Retrying" not in res.stderr, line


def test_truncated_download_is_one_line_within_the_bound(hub, tmp_path):
    hub.fault(S2, "truncate")
    res, seconds, work = run_apply(hub, tmp_path)
    assert_one_line(res, seconds, work, "hf://acme/sharded", S2, "cut short")
    gets = [p for m, p in hub.requests if m == "GET" and p.endswith(S2)]
    assert len(gets) >= 2, gets  # the library resumed at least once


def test_cache_refs_not_writable_says_nothing(hub, tmp_path):
    """A cache where the revision cannot be recorded (refs/ is a file; a read-only HF_HOME does the
    same for a non-root user): huggingface_hub logs `Ignored error while caching commit hash`;
    the run still succeeds, and that line is not shown."""
    repo = tmp_path / "hf_home" / "hub" / "models--acme--sharded"
    repo.mkdir(parents=True)
    (repo / "refs").write_text("not a folder")  # writing refs/main fails, even as root
    res, seconds, work = run_apply(hub, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Ignored error" not in res.stderr and "File exists" not in res.stderr, res.stderr
    assert res.stderr.startswith("2 tensors"), res.stderr


def test_endless_resume_is_cut_by_the_budget(fake_hub, tmp_path, monkeypatch):
    """Cut past the first 10 MB chunk, huggingface_hub resumes without end (its counter resets
    whenever a chunk arrived); the budget (2 s here, to keep the test short) stops it."""
    from reinit.errors import HubError
    from reinit.io.hub import HubRepo, parse_hf_url

    data = st_bytes(tmp_path, {"w": torch.zeros(3200, 2000)})  # 25.6 MB, cut at 12.8 MB
    fake_hub.add("acme/big", {"model.safetensors": data})
    fake_hub.fault("model.safetensors", "truncate")
    monkeypatch.setenv(hub_retry.RETRY_ENV, "2")
    start = time.monotonic()
    with pytest.raises(HubError, match="cut short.*gave up after"):
        HubRepo(parse_hf_url("hf://acme/big"), progress=False).fetch("model.safetensors")
    assert time.monotonic() - start < 20


# --- the budget itself, with a fake clock ---------------------------------------------------


def streak_with_clock(monkeypatch, budget: float):
    now = [0.0]
    monkeypatch.setattr(hub_retry.time, "monotonic", lambda: now[0])
    return hub_retry._Streak(budget), now


def test_budget_stops_the_500_backoff_before_8s(monkeypatch):
    streak, now = streak_with_clock(monkeypatch, 8.0)
    waits = []
    with pytest.raises(hub_retry.RetryBudgetSpent) as info:
        for wait in (1, 2, 4, 8, 8):  # huggingface_hub's backoff for a 5xx
            streak.observe("HTTP Error 500 thrown while requesting HEAD http://x/f")
            streak.observe(f"Retrying in {wait}s [Retry 1/5].")
            waits.append(wait)
            now[0] += wait
    assert waits == [1, 2, 4] and info.value.status == 500 and info.value.retries == 3


def test_a_progressing_download_starts_a_new_streak(monkeypatch):
    streak, now = streak_with_clock(monkeypatch, 8.0)
    for _ in range(20):  # a drop every 60 s of streaming: never more than one retry per streak
        streak.observe("Error while downloading from u: e\nTrying to resume download...")
        now[0] += 61
    streak, now = streak_with_clock(monkeypatch, 8.0)
    with pytest.raises(hub_retry.RetryBudgetSpent):
        for _ in range(20):  # a drop every second: the streak goes on and is cut at 8 s
            streak.observe("Error while downloading from u: e\nTrying to resume download...")
            now[0] += 1


def test_library_logger_restored_and_quiet(capsys):
    import huggingface_hub.utils.logging  # noqa: F401

    lib = logging.getLogger("huggingface_hub")
    before = (lib.handlers[:], lib.propagate, lib.level)
    with hub_retry.library_call():
        logging.getLogger("huggingface_hub.file_download").warning("Retrying in 1s [Retry 1/5].")
    assert (lib.handlers, lib.propagate, lib.level) == before
    assert "Retrying" not in capsys.readouterr().err
