"""`verify OUT --report R.json` checks every tensor's name, dtype, shape and bytes (issue #23
H2): a header rewrite that keeps the bytes, an injected tensor, or a report entry without a
checksum fails (exit 1, one line naming the tensor)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from helpers import run
from safetensors.torch import load_file, save_file


def _written(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "m.safetensors"
    save_file({"lin.weight": torch.randn(4, 6, generator=g), "lin.bias": torch.zeros(4)}, src)
    out, rep = tmp_path / "o.safetensors", tmp_path / "o.report.json"
    res = run("apply", src, "-o", out, "-r", "lin.bias=ones", "--checksums", "-q")
    assert res.exit_code == 0, res.output
    assert run("verify", out, "--report", rep).exit_code == 0
    return out, rep


def _rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def _fails(out: Path, rep: Path, *fragments: str) -> None:
    res = run("verify", out, "--report", rep)
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_dtype_rewritten_in_the_header_fails(tmp_path):
    out, rep = _written(tmp_path)
    _rewrite_header(out, lambda h: h["lin.weight"].update(dtype="I32"))
    assert load_file(out)["lin.weight"].dtype == torch.int32  # a valid file, same bytes
    _fails(out, rep, "'lin.weight'", "int32", "float32")


def test_shape_rewritten_in_the_header_fails(tmp_path):
    out, rep = _written(tmp_path)
    _rewrite_header(out, lambda h: h["lin.weight"].update(shape=[6, 4]))
    _fails(out, rep, "'lin.weight'", "[6, 4]", "[4, 6]")


def test_an_injected_tensor_fails(tmp_path):
    out, rep = _written(tmp_path)
    tensors = load_file(out)
    save_file({**tensors, "evil.backdoor": torch.ones(3)}, out)
    _fails(out, rep, "'evil.backdoor'", "is not in")


@pytest.mark.parametrize("edit", ["drop_sha", "drop_entry"])
def test_a_report_entry_without_checksum_or_a_missing_entry_fails(tmp_path, edit):
    out, rep = _written(tmp_path)
    doc = json.loads(rep.read_text())
    if edit == "drop_sha":
        del doc["tensors"][0]["sha256"]
        name = doc["tensors"][0]["name"]
        fragments = (f"'{name}'", "no sha256")
    else:
        name = doc["tensors"].pop(0)["name"]
        fragments = (f"'{name}'", "is not in")
    rep.write_text(json.dumps(doc))
    _fails(out, rep, *fragments)


def test_untouched_output_passes(tmp_path):
    out, rep = _written(tmp_path)
    res = run("verify", out, "--report", rep)
    assert (
        res.exit_code == 0 and "2 tensors match their name, dtype, shape and sha256" in res.stderr
    )
