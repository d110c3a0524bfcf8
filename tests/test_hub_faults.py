"""Hub faults at the `apply` level (issue #7 item 7): not cached while offline, repository /
revision / file not found, unauthorized, Hub unreachable -> exit 1, one line, nothing written.
Through the real huggingface_hub: a seeded offline cache, a closed local port as HF_ENDPOINT, and
the fake Hub of hubcache.py (fixtures in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run
from hubcache import C2, seed_repo, st_bytes
from safetensors.torch import load_file, save_file

S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder: the default output of an hf:// source lands here."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def apply(*args: str):
    return run("apply", *args, "-q")


def assert_failed_cleanly(res, work: Path, *fragments: str) -> str:
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert list(work.iterdir()) == [], "something was written"
    return lines[0]


def sharded(home: Path, tmp_path: Path, cached_shards=(S1, S2)) -> None:
    shards = {S1: {"a.weight": torch.randn(4, 4)}, S2: {"b.weight": torch.randn(2, 4)}}
    index = {"weight_map": {n: s for s, sd in shards.items() for n in sd}}
    files = {s: st_bytes(tmp_path, sd) for s, sd in shards.items() if s in cached_shards}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files["config.json"] = b"{}"
    seed_repo(home, "acme/sharded", files)


def test_cached_repo_works_offline(offline, tmp_path, work):
    """The baseline the faults below depart from."""
    sharded(offline, tmp_path)
    res = apply("hf://acme/sharded", "-r", "a.weight=zeros")
    assert res.exit_code == 0, res.output
    out = work / "sharded-reinit"
    assert torch.count_nonzero(load_file(out / S1)["a.weight"]) == 0


def test_repo_not_cached_offline(offline, work):
    res = apply("hf://acme/never-seen", "-r", "*=zeros")
    assert_failed_cleanly(
        res, work, "hf://acme/never-seen", "not in the local cache", "HF_HUB_OFFLINE"
    )


def test_revision_not_cached_offline(offline, tmp_path, work):
    sharded(offline, tmp_path)
    res = apply("hf://acme/sharded@v2", "-r", "*=zeros")
    assert_failed_cleanly(res, work, "hf://acme/sharded@v2", "v2")


def test_shard_not_cached_offline(offline, tmp_path, work):
    sharded(offline, tmp_path, cached_shards=(S1,))
    res = apply("hf://acme/sharded", "-r", "*=zeros")
    assert_failed_cleanly(res, work, "hf://acme/sharded", S2)


def test_transplant_source_not_cached_offline(offline, tmp_path, work):
    target = tmp_path / "target.safetensors"
    save_file({"w": torch.ones(2, 2)}, target)
    before = target.read_bytes()
    res = apply(
        str(target), "-r", "w=from(hf://acme/never-seen)", "-o", str(work / "o.safetensors")
    )
    assert_failed_cleanly(res, work, "hf://acme/never-seen", "not in the local cache")
    assert target.read_bytes() == before


def test_hub_unreachable(online, work):
    """HF_ENDPOINT is a closed local port (the `online` fixture)."""
    res = apply("hf://acme/tiny", "-r", "*=zeros")
    assert_failed_cleanly(res, work, "hf://acme/tiny", "cannot reach the Hub", "HF_ENDPOINT")


def test_hub_errors_from_a_server(fake_hub, work, monkeypatch):
    index = json.dumps({"weight_map": {"a.weight": S1}}).encode()
    fake_hub.add("acme/present", {"model.safetensors.index.json": index, "config.json": b"{}"})
    fake_hub.add("acme/private", {"model.safetensors": b"x"}, token="hf_good")
    fake_hub.add("acme/gated", {"model.safetensors": b"x"}, gated=True)
    msg = assert_failed_cleanly(apply("hf://acme/absent", "-r", "*=zeros"), work)
    assert "repository acme/absent not found" in msg
    msg = assert_failed_cleanly(apply("hf://acme/present@nope", "-r", "*=zeros"), work)
    assert "revision 'nope' not found" in msg
    msg = assert_failed_cleanly(apply("hf://acme/present", "-r", "*=zeros"), work)
    assert f"names shard '{S1}', which is missing from hf://acme/present" in msg  # file not found
    msg = assert_failed_cleanly(apply("hf://acme/gated", "-r", "*=zeros"), work)
    assert "gated repository" in msg
    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    msg = assert_failed_cleanly(apply("hf://acme/private", "-r", "*=zeros"), work)
    assert "401" in msg and "HF_TOKEN" in msg


def _gone(snapshot_file: Path) -> None:
    """What a cache cleaned by hand leaves: the snapshot's link, its blob deleted."""
    snapshot_file.resolve().unlink()
    assert snapshot_file.is_symlink() and not snapshot_file.exists()


@pytest.mark.parametrize("as_source", [True, False])
def test_a_cached_file_whose_blob_is_gone_says_so(offline, tmp_path, work, as_source):
    """A single-file repo whose model.safetensors link leads to a deleted blob: it said 'no model
    weights found' (exit 2), as if the repo held none; now exit 1 naming the file and the fix."""
    snapshot = seed_repo(
        offline,
        "acme/tiny",
        {"model.safetensors": st_bytes(tmp_path, {"w": torch.ones(2)}), "config.json": b"{}"},
    )
    _gone(snapshot / "model.safetensors")
    if as_source:
        save_file({"w": torch.zeros(2)}, tmp_path / "t.safetensors")
        out = work / "o.safetensors"
        res = apply(str(tmp_path / "t.safetensors"), "-o", str(out), "-r", "w=from(hf://acme/tiny)")
    else:
        res = apply("hf://acme/tiny", "-r", "*=zeros")
    line = assert_failed_cleanly(res, work, "hf://acme/tiny", "model.safetensors")
    assert "no longer there" in line and "hf download acme/tiny model.safetensors" in line


def test_a_shard_whose_blob_is_gone_says_so(offline, tmp_path, work):
    sharded(offline, tmp_path)
    _gone(offline / "hub" / "models--acme--sharded" / "snapshots" / C2 / S2)
    res = apply("hf://acme/sharded", "-r", "*=zeros")
    line = assert_failed_cleanly(res, work, "hf://acme/sharded", S2)
    assert "no longer there" in line
