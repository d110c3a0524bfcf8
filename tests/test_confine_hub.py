"""Issue 17 "writes outside the output", Hub side, against the local fake Hub: a repo's index
or file listing cannot name a path outside the repo (and so cannot make a directory output
write anywhere but its own folder), and a revision cannot climb out of the cache's `refs/`.
Every refused run leaves the whole tmp tree as it was, except the Hub cache itself.

Internal: also tests reinit.io.confine, reinit.io.hub directly (not the `reinit` API).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import refused, run
from hubcache import st_bytes
from safetensors.torch import load_file
from treesnap import assert_unchanged, tree_state

from reinit.errors import UsageError
from reinit.io.confine import check_revision, revision_problem
from reinit.io.hub import parse_hf_url

S1 = "model-00001-of-00001.safetensors"
A = {"a.weight": torch.arange(6.0).reshape(2, 3)}
VICTIM = {"p.weight": torch.full((3,), 7.0)}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The cwd, where `apply hf://…` puts its default output NAME-reinit/."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.mark.parametrize("command", ["apply", "inspect"])
def test_hub_index_naming_an_absolute_shard_writes_nothing_there(fake_hub, tmp_path, work, command):
    pwned = tmp_path / "x" / "pwned.safetensors"
    index = {"weight_map": {"a.weight": S1, "p.weight": str(pwned)}}
    fake_hub.add(
        "owner/evil",
        {
            "model.safetensors.index.json": json.dumps(index).encode(),
            S1: st_bytes(tmp_path, A),
            str(pwned).lstrip("/"): st_bytes(tmp_path, VICTIM),  # what main downloaded
        },
    )
    args = [command, "hf://owner/evil"] + (
        ["-r", "a.weight=zeros", "-q"] if command == "apply" else []
    )
    line = refused(
        tmp_path, args, 1, "p.weight", str(pwned), "absolute path", skip=(fake_hub_home(tmp_path),)
    )
    assert "model.safetensors.index.json" in line
    assert not (tmp_path / "x").exists() and not (work / "evil-reinit").exists()


def test_hub_index_naming_a_parent_shard_is_refused(fake_hub, tmp_path, work):
    index = {"weight_map": {"a.weight": S1, "p.weight": "../escape.safetensors"}}
    fake_hub.add(
        "owner/evil",
        {"model.safetensors.index.json": json.dumps(index).encode(), S1: st_bytes(tmp_path, A)},
    )
    args = ["apply", "hf://owner/evil", "-r", "a.weight=zeros", "-q"]
    refused(
        tmp_path, args, 1, "p.weight", "'../escape.safetensors'", skip=(fake_hub_home(tmp_path),)
    )


def fake_hub_home(tmp_path):
    return tmp_path / "hf_home"


def test_hub_sibling_with_an_absolute_name_is_not_copied_anywhere(fake_hub, tmp_path, work):
    evil = tmp_path / "evil" / "anything"
    fake_hub.add(
        "owner/evil",
        {
            "model.safetensors": st_bytes(tmp_path, A),
            str(evil): b"attacker content",  # the listing names it
            str(evil).lstrip("/"): b"attacker content",  # the download main asked for
        },
    )
    args = ["apply", "hf://owner/evil", "-r", "a.weight=zeros", "-q"]
    refused(tmp_path, args, 1, str(evil), "absolute path", skip=(fake_hub_home(tmp_path),))
    assert not evil.parent.exists() and not (work / "evil-reinit").exists()


def test_hub_sibling_with_a_backslash_name_is_refused_named(fake_hub, tmp_path, work):
    fake_hub.add(
        "owner/evil",
        {"model.safetensors": st_bytes(tmp_path, A), "a\\..\\..\\x": b"attacker content"},
    )
    args = ["apply", "hf://owner/evil", "-r", "a.weight=zeros", "-q"]
    refused(tmp_path, args, 1, "lists the file", "backslash", skip=(fake_hub_home(tmp_path),))


def test_hub_sibling_with_dot_dot_parts_is_skipped_like_hidden_files(fake_hub, tmp_path, work):
    """A listed `../x` starts with '.', so it is left out as `.gitattributes` is: not fetched,
    not copied, nothing written outside the output."""
    fake_hub.add(
        "owner/evil", {"model.safetensors": st_bytes(tmp_path, A), "../x": b"attacker content"}
    )
    before = tree_state(tmp_path, skip=(fake_hub_home(tmp_path), work))
    res = run("apply", "hf://owner/evil", "-r", "a.weight=zeros", "-q")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (work / "evil-reinit").iterdir()) == [
        "model.safetensors",
        "reinit-report.json",
    ]
    assert_unchanged(before, tree_state(tmp_path, skip=(fake_hub_home(tmp_path), work)))
    assert not any("/x" in path for _, path in fake_hub.requests if "/resolve/" in path)


def test_hub_repo_with_safe_names_still_copies_its_files(fake_hub, tmp_path, work):
    fake_hub.add(
        "owner/good",
        {
            "model.safetensors": st_bytes(tmp_path, A),
            "config.json": b"{}",
            "tok/tokenizer.json": b'{"t": 1}',
        },
    )
    res = run("apply", "hf://owner/good", "-r", "a.weight=zeros", "-q")
    assert res.exit_code == 0, res.output
    out = work / "good-reinit"
    assert (out / "tok" / "tokenizer.json").read_bytes() == b'{"t": 1}'
    assert torch.equal(load_file(out / "model.safetensors")["a.weight"], torch.zeros(2, 3))


# --- revisions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "hf://o/n@..%2F..%2Fx",
        "hf://o/n@..",
        "hf://o/n@a%2F..%2F..%2Fb",
        "hf://o/n@%2Fetc%2Fx",
        "hf://o/n@a%00b",
        "hf://o/n@a%252Fb",
        "hf://o/n@a%5Cb",
        "hf://o/n@.hidden",
        "hf://o/n@main.lock",
    ],
)
def test_unsafe_revisions_are_refused_before_any_request(fake_hub, tmp_path, work, url):
    with pytest.raises(UsageError, match="is not a branch, tag or commit"):
        parse_hf_url(url)
    args = ["apply", url, "-r", "a.weight=zeros", "-q"]
    refused(tmp_path, args, 2, "is not a branch, tag or commit", skip=(fake_hub_home(tmp_path),))
    assert fake_hub.requests == []
    assert sorted(p.name for p in fake_hub_home(tmp_path).rglob("*")) == ["hub"]


@pytest.mark.parametrize(
    "rev", ["main", "v1.0", "refs/pr/1", "refs/convert/parquet", "feature/x-y_z", "a1b2" * 10]
)
def test_safe_revisions_pass(rev):
    assert revision_problem(rev) is None
    check_revision(rev, "hf://o/n")
