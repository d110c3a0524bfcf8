"""Corrupt input (issue #7 item 3): every defect is a `CheckpointError` (exit 1) with one line that
names the file and what is wrong, and `apply` writes nothing and leaves the input as it was.

Internal: also tests reinit.io.formats._safetensors_format, reinit.io.sources, reinit.io.formats._torch_reader
directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from helpers import run
from safetensors.torch import save_file

from reinit.errors import CheckpointError
from reinit.io.formats import TorchFile, read_header
from reinit.io.sources import open_checkpoint

GOOD = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}


def raw_file(path: Path, header: object, data: bytes, *, length: int | None = None) -> Path:
    """A safetensors-shaped file with an arbitrary header (a dict, or raw bytes)."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def good_file(tmp_path: Path) -> Path:
    p = tmp_path / "good.safetensors"
    save_file(GOOD, p)
    return p


def run_apply(src: Path, out: Path) -> object:
    return run("apply", src, "--rule", "*=zeros", "-o", out, "-q")


def assert_clean_failure(src: Path, tmp_path: Path, *fragments: str) -> None:
    """apply on `src`: exit 1, one `error:` line naming the file and every fragment, no output
    (nor temporary) written, the input unchanged."""
    before = src.read_bytes() if src.is_file() else None
    out = tmp_path / "out.safetensors"
    res = run_apply(src, out)
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {src}"), lines[0]
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".out.safetensors.reinit-tmp-*"))
    if before is not None:
        assert src.read_bytes() == before


# --- safetensors header defects ---------------------------------------------------------

CASES = {
    # name: (header, data, expected fragments)
    "header length beyond the file": (None, b"", ("header length", "runs past the end")),
    "invalid JSON": (b'{"a": {"dtype": "F32",', b"", ("not valid JSON",)),
    "not UTF-8": (b'{"\xff\xfe": 1}', b"", ("not valid JSON",)),
    "not an object": (b"[1, 2, 3]", b"", ("not a JSON object",)),
    "unknown dtype": ({"a": entry("F31", [2], 0, 8)}, bytes(8), ("unknown dtype 'F31'",)),
    "overlapping offsets": (
        {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)},
        bytes(12),
        ("'b' overlaps tensor 'a'",),
    ),
    "duplicate offsets (aliasing)": (
        {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8)},
        bytes(8),
        ("'a' and 'b' share data offsets [0, 8]", "aliased"),
    ),
    "hole between tensors": (
        {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)},
        bytes(20),
        ("4 unused bytes before tensor 'b'", "hole"),
    ),
    "offsets not shape x dtype": (
        {"a": entry("F32", [3], 0, 8)},
        bytes(8),
        ("'a' spans 8 bytes but shape [3] of F32 needs 12",),
    ),
    "offsets past the end": (
        {"a": entry("F32", [4], 0, 16)},
        bytes(8),
        ("'a' runs 8 bytes past the end", "truncated"),
    ),
    "bytes after the last tensor": (
        {"a": entry("F32", [2], 0, 8)},
        bytes(12),
        ("4 bytes after the last tensor",),
    ),
    "reversed offsets": ({"a": entry("F32", [0], 8, 0)}, bytes(8), ("invalid data_offsets",)),
    "negative shape": ({"a": entry("F32", [-2], 0, 8)}, bytes(8), ("invalid shape",)),
    "duplicate tensor name": (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        bytes(8),
        ("names 'a' twice",),
    ),
    "metadata not strings": (
        {"__metadata__": {"k": 1}, "a": entry("F32", [1], 0, 4)},
        bytes(4),
        ("__metadata__ must map strings to strings",),
    ),
    "huge integer in JSON": (
        b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}',
        bytes(4),
        ("not valid JSON",),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_header_is_one_clear_line(tmp_path, case):
    header, data, fragments = CASES[case]
    src = tmp_path / "bad.safetensors"
    if header is None:
        raw_file(src, b"{}", b"", length=1000)
    else:
        raw_file(src, header, data)
    with pytest.raises(CheckpointError) as info:
        read_header(src)
    assert info.value.exit_code == 1
    assert str(info.value).startswith(str(src))
    assert "\n" not in str(info.value)
    assert_clean_failure(src, tmp_path, *fragments)


def test_header_over_100_mb_is_refused_without_reading_it(tmp_path):
    src = tmp_path / "huge.safetensors"
    src.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    assert_clean_failure(src, tmp_path, "over the 100 MB limit")


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -1])
def test_truncated_safetensors_file(tmp_path, cut):
    src = good_file(tmp_path)
    data = src.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:-1])
    assert_clean_failure(bad, tmp_path, "truncated")


def test_file_shrinking_after_the_header_is_read(tmp_path):
    """The header was valid when opened, the data vanished before it was read: still one line."""
    src = good_file(tmp_path)
    ck = open_checkpoint(src)
    try:
        with open(src, "r+b") as f:
            f.truncate(read_header(src).data_start + 4)
        with pytest.raises(CheckpointError, match="unexpected end of file; the file is truncated"):
            ck.read("b")
    finally:
        ck.close()


# --- torch files ------------------------------------------------------------------------


def torch_file(tmp_path: Path, zip_format: bool = True) -> Path:
    p = tmp_path / ("good.bin" if zip_format else "legacy.bin")
    torch.save({"w": torch.randn(64, 64)}, p, _use_new_zipfile_serialization=zip_format)
    return p


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.95])
def test_zip_torch_file_cut_short(tmp_path, fraction):
    data = torch_file(tmp_path).read_bytes()
    bad = tmp_path / "cut.bin"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="zip archive is cut short"):
        TorchFile(bad)
    assert_clean_failure(bad, tmp_path, "zip archive is cut short", "truncated")


@pytest.mark.parametrize("cut", [10, 30, 300, -100])
def test_legacy_torch_file_cut_short(tmp_path, cut):
    data = torch_file(tmp_path, zip_format=False).read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[:cut])
    # a cut inside a global's name reads as an unknown global: refused either way, one line
    assert_clean_failure(bad, tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"hello world garbage", b"PK\x03\x04" + bytes(100), b"\x80\x02}q\x00."]
)
def test_garbage_torch_file(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError):
        TorchFile(bad)
    res = run_apply(bad, tmp_path / "out.safetensors")
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert res.stderr.startswith(f"error: {bad}")


# --- sharded directories ----------------------------------------------------------------


def sharded_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sharded"
    d.mkdir()
    save_file({"a": torch.ones(2, 2)}, d / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(3)}, d / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {"total_size": 28},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "config.json").write_text("{}")
    return d


def test_index_names_a_missing_shard(tmp_path):
    d = sharded_dir(tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    res = run_apply(d, tmp_path / "out")
    assert res.exit_code == 1, res.output
    assert "names shard 'model-00002-of-00002.safetensors', which is missing" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_index_puts_a_tensor_in_a_shard_that_lacks_it(tmp_path):
    d = sharded_dir(tmp_path)
    save_file({"c": torch.ones(3)}, d / "model-00002-of-00002.safetensors")
    res = run_apply(d, tmp_path / "out")
    assert res.exit_code == 1, res.output
    assert "the index puts 'b' in model-00002-of-00002.safetensors, but that shard lacks it" in (
        res.stderr
    )
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.reinit-tmp-*"))


def test_index_that_is_not_json(tmp_path):
    d = sharded_dir(tmp_path)
    (d / "model.safetensors.index.json").write_text("{not json")
    res = run_apply(d, tmp_path / "out")
    assert res.exit_code == 1 and "unreadable index" in res.stderr, res.output


def test_corrupt_shard_names_the_shard(tmp_path):
    d = sharded_dir(tmp_path)
    shard = d / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-2])
    res = run_apply(d, tmp_path / "out")
    assert res.exit_code == 1, res.output
    assert "model-00002-of-00002.safetensors" in res.stderr and "truncated" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["sparse coo", "sparse csr", "quantized", "nested"])
def test_a_torch_file_holding_a_sparse_quantized_or_nested_tensor_is_one_line(tmp_path, layout):
    """A sparse, quantized or nested tensor in a `.pt` (torch.load reads them weights-only)
    was an internal error from every command ('Cannot access storage of SparseTensorImpl',
    KeyError 'qint8'). Exit 1 naming the file and the tensor, nothing written."""
    odd = {
        "sparse coo": lambda: torch.eye(3).to_sparse(),
        "sparse csr": lambda: torch.eye(3).to_sparse_csr(),
        "quantized": lambda: torch.quantize_per_tensor(torch.eye(3), 0.1, 0, torch.qint8),
        "nested": lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
    }[layout]()
    src = tmp_path / "m.pt"
    torch.save({"emb.weight": odd, "fc.weight": torch.ones(3, 3)}, src)
    for args in (
        ["inspect", src],
        ["report", src],
        ["diff", src, src],
        ["apply", src, "-r", "fc.weight=zeros", "-o", tmp_path / "out.safetensors"],
    ):
        res = run(*args)
        assert res.exit_code == 1, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "internal error" not in lines[0], res.stderr
        assert lines[0].startswith(f"error: {src}: tensor 'emb.weight' is {layout.split()[0]}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
