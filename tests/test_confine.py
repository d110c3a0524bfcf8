"""Issue 17 "writes outside the output" and issue 16 "reading outside the model folder", for
local model folders: what a folder and its index may name (one rule for apply, inspect, report
and verify), what a directory output may copy, shard-name collisions, index/shard agreement,
FIFO sources. Every refused run is checked from the adversary's side: the whole tmp tree is the
same before and after (treesnap).

Internal: also tests reinit.io.confine, reinit.io.formats._shardindex, reinit.io.sources,
reinit.io.verify, reinit.run.output directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import refused, run, run_child
from safetensors.torch import load_file, save_file
from treesnap import assert_unchanged, tree_state

from reinit.errors import CheckpointError, UnsafePathError
from reinit.io.confine import check_relname, relname_problem
from reinit.io.formats._shardindex import parse_index
from reinit.io.verify import verify

ROOT = Path(__file__).resolve().parents[1]
S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
A = {"a.weight": torch.arange(6.0).reshape(2, 3)}
B = {"b.weight": torch.ones(4)}
VICTIM = {"p.weight": torch.full((3,), 7.0)}


def write_index(folder: Path, wm: dict[str, str], name: str = "model.safetensors.index.json"):
    (folder / name).write_text(json.dumps({"metadata": {}, "weight_map": wm}))


def sharded(tmp_path: Path, wm_extra: dict[str, str] | None = None) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    save_file(A, d / S1)
    save_file(B, d / S2)
    (d / "config.json").write_text("{}")
    write_index(d, {"a.weight": S1, "b.weight": S2, **(wm_extra or {})})
    return d


# --- names ------------------------------------------------------------------------------------

BAD_NAMES = [
    "../parent_victim.safetensors",
    "/abs/x.safetensors",
    "sub/../../x.safetensors",
    "a\\..\\b.safetensors",
    "a\x00b.safetensors",
    "a//b.safetensors",
    "./x.safetensors",
    "sub/",
    "",
    "C:/x.safetensors",
    "a\nb.safetensors",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_refused_by_the_one_rule(name):
    assert relname_problem(name) is not None
    with pytest.raises(UnsafePathError, match="not a file inside the model folder"):
        check_relname(name, "idx", "names")
    doc = json.dumps({"weight_map": {"w": name}})
    with pytest.raises(UnsafePathError, match=r"idx: the index puts tensor 'w' in shard"):
        parse_index(doc, "idx")


@pytest.mark.parametrize("name", ["model.safetensors", "sub/x.bin", ".hidden/x.safetensors"])
def test_plain_relative_names_pass(name):
    assert relname_problem(name) is None


# --- the index names a shard outside the folder (apply, inspect, report, verify) --------------


@pytest.mark.parametrize("command", ["apply", "inspect", "report", "verify"])
def test_index_with_parent_shard_is_refused_by_every_command(tmp_path, command):
    save_file(VICTIM, tmp_path / "parent_victim.safetensors")
    d = sharded(tmp_path, {"p.weight": "../parent_victim.safetensors"})
    args = [command, str(d)]
    if command == "apply":
        args += ["-r", "a.weight=zeros", "-q"]
    if command == "report":
        args += ["-q"]
    line = refused(tmp_path, args, 1, "model.safetensors.index.json", "p.weight")
    assert "../parent_victim.safetensors" in line and "not a file inside the model folder" in line


def test_hostile_folder_as_a_from_source_is_refused(tmp_path):
    save_file(VICTIM, tmp_path / "parent_victim.safetensors")
    d = sharded(tmp_path, {"p.weight": "../parent_victim.safetensors"})
    save_file({"p.weight": torch.zeros(3)}, tmp_path / "t.safetensors")
    args = ["apply", str(tmp_path / "t.safetensors"), "-r", f"p.weight=from({d})", "-q"]
    refused(tmp_path, args, 1, "p.weight", "../parent_victim.safetensors")


def test_index_with_absolute_shard_is_refused_and_that_file_is_untouched(tmp_path):
    victim = tmp_path / "elsewhere" / "abs_victim.safetensors"
    victim.parent.mkdir()
    save_file(VICTIM, victim)
    d = sharded(tmp_path, {"p.weight": str(victim)})
    for args in (["apply", str(d), "-r", "p.weight=zeros", "-q"], ["inspect", str(d)]):
        line = refused(tmp_path, args, 1, str(victim), "p.weight", "absolute path")
        assert line.startswith(f"error: {d}/model.safetensors.index.json")


def test_index_with_nested_torch_shard_outside_is_refused(tmp_path):
    outside = tmp_path / "x"
    outside.mkdir()
    torch.save(VICTIM, outside / "pytorch_model-00001-of-00001.bin")
    d = tmp_path / "model"
    d.mkdir()
    write_index(
        d, {"p.weight": "../x/pytorch_model-00001-of-00001.bin"}, "pytorch_model.bin.index.json"
    )
    refused(tmp_path, ["apply", str(d), "-r", "p.weight=zeros", "-q"], 1, "p.weight")


# --- symlinks: inside the folder allowed, leaving it refused ---------------------------------


def test_shard_link_that_leaves_the_folder_is_refused(tmp_path):
    save_file(B, tmp_path / "outside.safetensors")
    d = sharded(tmp_path)
    (d / S2).unlink()
    (d / S2).symlink_to("../outside.safetensors")
    for command in ("apply", "inspect", "verify"):
        args = [command, str(d)] + (["-r", "a.weight=zeros", "-q"] if command == "apply" else [])
        refused(tmp_path, args, 1, S2, "outside the model folder")


def test_shard_link_inside_the_folder_is_read(tmp_path):
    d = sharded(tmp_path)
    (d / "blobs").mkdir()
    (d / S2).rename(d / "blobs" / "b")
    (d / S2).symlink_to("blobs/b")
    res = run("apply", str(d), "-r", "a.weight=zeros", "-q")
    assert res.exit_code == 0, res.output
    out = tmp_path / "model-reinit"
    assert torch.equal(load_file(out / S2)["b.weight"], B["b.weight"])
    assert verify(out).tensors == 2


def test_hf_cache_snapshot_folder_given_as_a_local_path_works(tmp_path):
    """Snapshot files link to ../../blobs/<hash>: outside the snapshot, inside its cache repo."""
    from hubcache import seed_repo, st_bytes

    snap = seed_repo(
        tmp_path / "hf",
        "acme/x",
        {"model.safetensors": st_bytes(tmp_path, A), "config.json": b"{}"},
    )
    res = run("apply", str(snap), "-r", "a.weight=zeros", "-o", str(tmp_path / "out"), "-q")
    assert res.exit_code == 0, res.output
    assert torch.equal(
        load_file(tmp_path / "out" / "model.safetensors")["a.weight"], A["a.weight"] * 0
    )
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
    assert verify(snap).tensors == 1  # verify follows the same rule


# --- extra (non-weight) files copied into a directory output ----------------------------------


@pytest.mark.parametrize("target", ["../secret.txt", "/dev/zero"])
def test_extra_file_link_that_leaves_the_folder_is_refused_named(tmp_path, target):
    (tmp_path / "secret.txt").write_text("s3cret")
    d = sharded(tmp_path)
    (d / "tokenizer.json").symlink_to(target)
    line = refused(tmp_path, ["apply", str(d), "-r", "a.weight=zeros", "-q"], 1, "tokenizer.json")
    assert "outside the model folder" in line
    assert not (tmp_path / "model-reinit").exists()


def test_extra_file_link_inside_the_folder_is_copied_by_content(tmp_path):
    d = sharded(tmp_path)
    (d / "tok").mkdir()
    (d / "tok" / "real.json").write_text('{"v": 1}')
    (d / "tokenizer.json").symlink_to("tok/real.json")
    assert run("apply", str(d), "-r", "a.weight=zeros", "-q").exit_code == 0
    copied = tmp_path / "model-reinit" / "tokenizer.json"
    assert not copied.is_symlink() and copied.read_text() == '{"v": 1}'


def test_fifo_extra_file_is_refused_without_blocking(tmp_path):
    d = sharded(tmp_path)
    os.mkfifo(d / "tokenizer.json")
    before = tree_state(tmp_path)
    proc = run_child("apply", d, "-r", "a.weight=zeros", "-q", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "tokenizer.json is a FIFO" in proc.stderr and "internal error" not in proc.stderr
    assert_unchanged(before, tree_state(tmp_path))


@pytest.mark.parametrize("as_from", [False, True], ids=["source", "from"])
def test_fifo_source_is_refused_without_blocking(tmp_path, as_from):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    save_file(A, tmp_path / "t.safetensors")
    before = tree_state(tmp_path)
    if as_from:
        args = ["apply", str(tmp_path / "t.safetensors"), "-r", f"a.weight=from({fifo})", "-q"]
    else:
        args = ["inspect", str(fifo)]
    proc = run_child(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{fifo}: is a FIFO (named pipe), not a checkpoint file" in proc.stderr
    assert_unchanged(before, tree_state(tmp_path))


def test_fifo_shard_is_refused_without_blocking(tmp_path):
    d = sharded(tmp_path)
    (d / S2).unlink()
    os.mkfifo(d / S2)
    before = tree_state(tmp_path)
    for command in (["inspect", str(d)], ["verify", str(d)]):
        proc = run_child(*command, cwd=tmp_path)
        assert proc.returncode == 1 and f"{S2} is a FIFO" in proc.stderr, proc.stderr
    assert_unchanged(before, tree_state(tmp_path))


# --- shard-name collisions --------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second, out_name",
    [
        ("x.bin", "x.pt", "x.safetensors"),
        (
            "pytorch_model-00001-of-00002.bin",
            "model-00001-of-00002.safetensors",
            "model-00001-of-00002.safetensors",
        ),
    ],
)
def test_two_shards_mapping_to_one_output_name_are_refused(tmp_path, first, second, out_name):
    d = tmp_path / "model"
    d.mkdir()
    for name, tensors in ((first, A), (second, B)):
        if name.endswith(".safetensors"):
            save_file(tensors, d / name)
        else:
            torch.save(tensors, d / name)
    write_index(d, {"a.weight": first, "b.weight": second}, "pytorch_model.bin.index.json")
    line = refused(tmp_path, ["apply", str(d), "-r", "a.weight=zeros", "-q"], 2, first, second)
    assert f"would both be written as {out_name}" in line


def test_torch_shards_output_passes_verify(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    torch.save(A, d / "pytorch_model-00001-of-00002.bin")
    torch.save(B, d / "pytorch_model-00002-of-00002.bin")
    write_index(
        d,
        {
            "a.weight": "pytorch_model-00001-of-00002.bin",
            "b.weight": "pytorch_model-00002-of-00002.bin",
        },
        "pytorch_model.bin.index.json",
    )
    assert run("apply", str(d), "-r", "a.weight=zeros", "-q").exit_code == 0
    assert verify(tmp_path / "model-reinit").tensors == 2


# --- index and shards agree: one rule everywhere ----------------------------------------------


def tensor_in_two_shards(tmp_path: Path) -> Path:
    d = sharded(tmp_path)
    save_file({**B, "a.weight": torch.zeros(2, 3)}, d / S2)  # index says a.weight is in S1
    return d


def shard_with_unlisted_tensor(tmp_path: Path) -> Path:
    d = sharded(tmp_path)
    save_file({**B, "c.weight": torch.zeros(1)}, d / S2)
    return d


def name_listed_twice(tmp_path: Path) -> Path:
    d = sharded(tmp_path)
    (d / "model.safetensors.index.json").write_text(
        f'{{"weight_map": {{"a.weight": "{S1}", "b.weight": "{S2}", "a.weight": "{S2}"}}}}'
    )
    return d


@pytest.mark.parametrize(
    "make, fragment",
    [
        (
            tensor_in_two_shards,
            "tensor 'a.weight' is in ",  # verify: 'in both S1 and S2'; reader: 'in shard S2'
        ),
        (shard_with_unlisted_tensor, f"shard {S2} holds 'c.weight', which the index does not list"),
        (name_listed_twice, "the index lists 'a.weight' twice"),
    ],
    ids=["two-shards", "unlisted", "listed-twice"],
)
@pytest.mark.parametrize("command", ["apply", "inspect", "report", "verify"])
def test_index_and_shards_disagree_every_command_refuses(tmp_path, make, fragment, command):
    d = make(tmp_path)
    args = [command, str(d)]
    if command == "apply":
        args += ["-r", "b.weight=zeros", "-q"]
    if command == "report":
        args += ["-q"]
    refused(tmp_path, args, 1, fragment)


def test_library_reader_raises_the_same_error(tmp_path):
    from reinit.io.sources import open_checkpoint

    with open_checkpoint(tensor_in_two_shards(tmp_path)) as ck, pytest.raises(CheckpointError):
        ck.refs()


# --- output names (defence in depth for library callers with their own Checkpoint) ------------


@pytest.mark.parametrize("shard", ["../x.bin", "/abs/x.safetensors", "a/../../x.pt", "a\\b.bin"])
def test_shard_output_name_refuses_names_that_leave_the_output(shard):
    from reinit.run.output import shard_output_name

    with pytest.raises(UnsafePathError):
        shard_output_name(shard)


def test_shard_output_names_stay_relative():
    from reinit.run.output import shard_output_name

    assert shard_output_name("sub/pytorch_model-00001-of-00002.bin") == (
        "sub/model-00001-of-00002.safetensors"
    )
    assert shard_output_name("pytorch_model.bin") == "model.safetensors"
    assert shard_output_name("x.pt") == "x.safetensors"


def test_output_file_where_another_needs_a_folder_is_refused():
    from reinit.errors import OutputError
    from reinit.io.confine import check_output_names

    with pytest.raises(OutputError, match="where sub/x.bin needs a folder"):
        check_output_names([("sub", "sub"), ("sub/x.safetensors", "sub/x.bin")], "m")
