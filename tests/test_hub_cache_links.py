"""A snapshot file of an offline (hostile or shared) Hugging Face cache must resolve into that
repo's `blobs/` (or its snapshot): one rule for `hf://` and the same folder given as a local path
(issue #23 H3). A link that leaves the cache is refused, exit 1, naming the file; nothing is
read from outside and no output is written. Also L6: `--in-place` on a snapshot folder given as a
local path is refused, as `hf://` + `--in-place` is."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from helpers import refused
from hubcache import C2, seed_repo, st_bytes
from safetensors.torch import save_file

A = {"a.weight": torch.arange(12.0).reshape(3, 4)}


def _repo(home, tmp_path):
    return seed_repo(
        home,
        "acme/linked",
        {
            "model.safetensors": st_bytes(tmp_path, A),
            "config.json": b'{"hidden_size": 4}',
            "tokenizer.json": b"{}",
        },
    )


def _relink(snapshot, name, target):
    (snapshot / name).unlink()
    (snapshot / name).symlink_to(target)


@pytest.fixture
def work(tmp_path, monkeypatch):
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.mark.parametrize("how", ["hf", "local"])
def test_a_snapshot_link_to_a_secret_is_not_copied(offline, tmp_path, work, how):
    snapshot = _repo(offline, tmp_path)
    secret = tmp_path / "SECRET"
    secret.write_text("password")
    _relink(snapshot, "tokenizer.json", secret)
    src = "hf://acme/linked" if how == "hf" else str(snapshot)
    args = ["apply", src, "-o", str(work / "out"), "-r", "a.weight=zeros", "-q"]
    line = refused(tmp_path, args, 1, "tokenizer.json", str(secret))
    assert not (work / "out").exists()
    assert "password" not in line


@pytest.mark.parametrize("how", ["hf", "local"])
def test_a_snapshot_weight_link_outside_the_cache_is_not_read(offline, tmp_path, work, how):
    snapshot = _repo(offline, tmp_path)
    outside = tmp_path / "outside" / "file.safetensors"
    outside.parent.mkdir()
    save_file({"a.weight": torch.full((3, 4), 7.0)}, outside)
    _relink(snapshot, "model.safetensors", outside)
    src = "hf://acme/linked" if how == "hf" else str(snapshot)
    refused(tmp_path, ["inspect", src], 1, "model.safetensors", str(outside))
    args = ["apply", src, "-o", str(work / "out"), "-r", "a.weight=zeros", "-q"]
    refused(tmp_path, args, 1, "model.safetensors", str(outside))


def test_a_link_into_another_repos_blobs_is_refused(offline, tmp_path, work):
    snapshot = _repo(offline, tmp_path)
    other = seed_repo(offline, "acme/other", {"model.safetensors": st_bytes(tmp_path, A)})
    blob = os.path.realpath(other / "model.safetensors")
    _relink(snapshot, "model.safetensors", blob)
    refused(tmp_path, ["inspect", "hf://acme/linked"], 1, "model.safetensors", blob)


def test_the_seeded_cache_itself_still_works(offline, tmp_path, work):
    _repo(offline, tmp_path)
    from helpers import run

    res = run("apply", "hf://acme/linked", "-o", str(work / "out"), "-r", "a.weight=zeros", "-q")
    assert res.exit_code == 0, res.output
    assert (work / "out" / "tokenizer.json").read_text() == "{}"


def test_in_place_on_a_snapshot_folder_given_as_a_path_is_refused(offline, tmp_path, work):
    snapshot = _repo(offline, tmp_path)
    assert snapshot.name == C2
    args = ["apply", str(snapshot), "-r", "a.weight=zeros", "--in-place", "-q"]
    refused(tmp_path, args, 2, "--in-place", "Hugging Face cache")


@pytest.mark.parametrize("linked", ["snapshot", "snapshots"])
def test_a_snapshot_folder_that_links_out_of_the_cache_is_not_read(offline, tmp_path, work, linked):
    """Each file of the snapshot was checked, but not the snapshot folder itself: with
    `snapshots/<commit>` (or `snapshots/`) a link to any local folder, `hf://acme/linked` read
    that folder's weights and copied its config.json into the output."""
    snapshot = _repo(offline, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    save_file({"a.weight": torch.full((3, 4), 7.0)}, outside / "model.safetensors")
    (outside / "config.json").write_text('{"secret": "TOPSECRET"}')
    moved = snapshot if linked == "snapshot" else snapshot.parent
    if linked == "snapshots":  # the whole snapshots/ folder elsewhere, the commit inside it
        (outside / snapshot.name).mkdir()
        for name in ("model.safetensors", "config.json"):
            shutil.copy(outside / name, outside / snapshot.name / name)
    shutil.rmtree(moved)
    moved.symlink_to(outside)
    refused(tmp_path, ["inspect", "hf://acme/linked"], 1, "outside the repo's cache folder")
    args = ["apply", "hf://acme/linked", "-o", str(work / "out"), "-r", "a.weight=zeros", "-q"]
    line = refused(tmp_path, args, 1, "outside the repo's cache folder")
    assert not (work / "out").exists() and "TOPSECRET" not in line


@pytest.mark.parametrize("how", ["hf", "local"])
def test_a_blobs_folder_that_links_out_of_the_cache_is_not_read(offline, tmp_path, work, how):
    """A snapshot file may link into its repo's `blobs/`, but `blobs/` itself was not checked:
    with `blobs -> ~` a `tokenizer.json -> ../../blobs/.ssh/id_rsa` was copied into the
    output verbatim."""
    snapshot = _repo(offline, tmp_path)
    repo = snapshot.parent.parent
    home = tmp_path / "home"
    shutil.copytree(repo / "blobs", home)
    (home / "id_rsa").write_text("PRIVATE KEY")
    shutil.rmtree(repo / "blobs")
    (repo / "blobs").symlink_to(home)
    _relink(snapshot, "tokenizer.json", "../../blobs/id_rsa")
    src = "hf://acme/linked" if how == "hf" else str(snapshot)
    args = ["apply", src, "-o", str(work / "out"), "-r", "a.weight=zeros", "-q"]
    line = refused(tmp_path, args, 1, "outside the model folder")
    assert not (work / "out").exists() and "PRIVATE KEY" not in line
