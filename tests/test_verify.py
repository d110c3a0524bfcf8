"""`reinit verify PATH` (issue #7 item 8): the reader's validator as a command; exit 0 with the
tensor count and bytes when valid, 1 with one line naming the defect otherwise.

Internal: also tests reinit.io.verify directly (not the `reinit` API).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import run
from safetensors.torch import save_file

from reinit.cli import main
from reinit.errors import CheckpointError
from reinit.io.verify import verify

SD = {"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.int64)}  # 48 + 40 bytes


def sharded(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    save_file({"a": SD["a"]}, d / "model-00001-of-00002.safetensors")
    save_file({"b": SD["b"]}, d / "model-00002-of-00002.safetensors")
    wm = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    return d


def test_valid_file(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file(SD, p)
    res = run("verify", str(p))
    assert res.exit_code == 0, res.output
    assert (
        res.stdout.strip()
        == f"{p}: valid safetensors: 1 file(s), 2 tensors, 88 bytes of tensor data"
    )
    doc = json.loads(run("verify", str(p), "--json").stdout)
    assert doc["valid"] and doc["tensors"] == 2 and doc["bytes"] == 88


def test_valid_directory(tmp_path):
    d = sharded(tmp_path)
    r = verify(d)
    assert (r.tensors, r.nbytes, len(r.files)) == (2, 88, 2)
    res = run("verify", str(d))
    assert res.exit_code == 0 and "2 file(s), 2 tensors, 88 bytes" in res.stdout


def test_truncated_file(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file(SD, p)
    p.write_bytes(p.read_bytes()[:-3])
    res = run("verify", str(p))
    assert res.exit_code == 1
    last = "a"  # safetensors stores the 8-byte-aligned int64 tensor first
    assert res.stderr.strip() == (
        f"error: {p}: tensor '{last}' runs 3 bytes past the end of the file; the file is truncated"
    )


def test_not_safetensors(tmp_path):
    p = tmp_path / "m.bin"  # a torch file is read tensor by tensor (weights-only)
    torch.save(SD, p)
    res = run("verify", str(p))
    assert res.exit_code == 0 and f"valid torch file: 1 file(s), {len(SD)} tensors" in res.stdout
    other = tmp_path / "m.npz"
    other.write_bytes(b"PK\x03\x04")
    res = run("verify", str(other))
    assert res.exit_code == 1 and "this is neither (.safetensors, .bin" in res.stderr
    assert run("verify", str(tmp_path / "missing.safetensors")).exit_code == 2


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing shard", "names shard 'model-00002-of-00002.safetensors', which is missing"),
        ("absent tensor", "puts 'b' in model-00002-of-00002.safetensors, but that shard lacks it"),
        ("unlisted tensor", "holds 'c', which the index does not list"),
        ("duplicate name", "tensor 'a' is in both"),
        ("bad index", "unreadable index"),
        ("corrupt shard", "header is not valid JSON"),
    ],
)
def test_broken_directory(tmp_path, breakage, message):
    d = sharded(tmp_path)
    s2 = d / "model-00002-of-00002.safetensors"
    if breakage == "missing shard":
        s2.unlink()
        save_file({"x": torch.ones(1)}, d / "other.safetensors")
    elif breakage == "absent tensor":
        save_file({"c": torch.ones(1)}, s2)
    elif breakage == "unlisted tensor":
        save_file({"b": SD["b"], "c": torch.ones(1)}, s2)
    elif breakage == "duplicate name":
        save_file({"b": SD["b"], "a": torch.ones(1)}, s2)
    elif breakage == "bad index":
        (d / "model.safetensors.index.json").write_text("{")
    else:
        data = bytearray(s2.read_bytes())
        data[9] = ord("!")
        s2.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        verify(d)
    res = run("verify", str(d))
    assert res.exit_code == 1, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


def test_verify_accepts_what_apply_writes(tmp_path):
    d = sharded(tmp_path)
    out = tmp_path / "out"
    assert (
        CliRunner()
        .invoke(main, ["apply", str(d), "-r", "a=normal", "-o", str(out), "-q"])
        .exit_code
        == 0
    )
    res = run("verify", str(out))
    assert res.exit_code == 0 and "2 tensors, 88 bytes" in res.stdout
