"""`reinit report` of safetensors (a file, or a folder of shards) runs without torch
(tools.raw_report) and gives the same report as the streaming engine that `apply` uses: on
a tiny BERT and on a file with every dtype and the edge cases (zero-size, scalar, NaN/Inf,
huge values, LayerNorm-like values, a tensor over one 16 MB chunk).

Internal: also tests reinit.io.checkpoint, reinit.io.formats._directory, reinit.io.formats._safetensors_format,
reinit.io.formats._safetensors_header, reinit.io.formats._safetensors_reader, reinit.tools.audit,
reinit.tools.raw_report directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reinit.io.checkpoint import CHUNK_BYTES, FileTensor
from reinit.io.formats import (
    DirectoryCheckpoint,
    SafetensorsFile,
    TensorInfo,
)
from reinit.io.formats._safetensors_format import code_dtypes
from reinit.tools.audit import report_checkpoint
from reinit.tools.raw_report import plan_reads
from tests.helpers import write_safetensors, write_two_shards

ROOT = Path(__file__).parents[1]


def edge_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for code, dtype in code_dtypes().items():
        if dtype.is_floating_point:
            base = torch.randn(33, 17, generator=g) * 0.5
            if code == "F8_E8M0":
                base = base.abs() + 0.1
            t = base.to(dtype)
        elif dtype.is_complex:
            t = torch.randn(8, 4, generator=g, dtype=dtype)
        elif dtype == torch.bool:
            t = torch.rand(5, 7, generator=g) < 0.5
        else:
            t = torch.randint(0, 100, (6, 11), generator=g).to(dtype)
        out[f"layers.0.{code.lower()}.weight"] = t
    out["empty.weight"] = torch.empty(0, 4)
    out["scalar"] = torch.tensor(3.5, dtype=torch.float16)
    bad = torch.randn(40, 30, generator=g)
    bad[0, 0], bad[3, 4], bad[7, 7] = math.nan, math.inf, -math.inf
    out["bad.weight"] = bad.bfloat16()
    out["huge.weight"] = torch.randn(20, 20, generator=g, dtype=torch.float64) * 1e300
    out["ln.weight"] = 1 + 0.01 * torch.randn(4096, generator=g)
    # over one chunk: read and summed in two pieces by both paths
    out["big.weight"] = torch.randn(CHUNK_BYTES // 2 + 4099, generator=g).bfloat16()
    return out


def tiny_bert(tmp_path: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=99, max_position_embeddings=64,
    )  # fmt: skip
    out = tmp_path / "bert"
    BertModel(cfg).eval().save_pretrained(out)
    return out


def sharded(tmp_path: Path) -> Path:
    """A model folder of two safetensors shards and their index."""
    return write_two_shards(tmp_path / "sharded", edge_tensors())


def comparable(report_json: str) -> dict:
    doc = json.loads(report_json)
    doc["summary"].pop("seconds")
    return doc


def streamed_report(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The report as the streaming engine makes it (the path before this module existed)."""
    with monkeypatch.context() as m:
        m.setattr(SafetensorsFile, "file_tensors", lambda self: None)
        m.setattr(DirectoryCheckpoint, "file_tensors", lambda self: None)
        return comparable(report_checkpoint(path).to_json())


@pytest.mark.parametrize("form", ["file", "bert", "shards"])
def test_same_report_as_the_streaming_engine(form, tmp_path, monkeypatch):
    if form == "file":
        path = write_safetensors(tmp_path / "edge.safetensors", edge_tensors())
    elif form == "bert":
        path = tiny_bert(tmp_path)
    else:
        path = sharded(tmp_path)
    fast = comparable(report_checkpoint(path).to_json())
    assert fast == streamed_report(path, monkeypatch)
    if form != "bert":
        by_name = {e["name"]: e for e in fast["tensors"]}
        assert by_name["bad.weight"]["after"]["nonfinite"] == 3
        assert by_name["empty.weight"]["after"]["std"] is None
        assert by_name["huge.weight"]["after"]["std"] > 1e299
        assert abs(by_name["ln.weight"]["after"]["std"] - 0.01) < 0.001
        assert len(fast["tensors"]) == len(edge_tensors())


NO_TORCH = """
import sys
from reinit.cli import main
try:
    main(sys.argv[1:], prog_name="reinit")
except SystemExit as e:
    assert not e.code, e.code
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not bad, "imported " + ", ".join(bad[:5])
"""


@pytest.mark.parametrize("form", ["file", "shards"])
@pytest.mark.parametrize("args", [["--json"], []])
@pytest.mark.parametrize("worker", ["0", "1"])  # without, and with a second summing process
def test_report_of_safetensors_never_imports_torch(form, args, worker, tmp_path):
    if form == "file":
        path = write_safetensors(tmp_path / "edge.safetensors", edge_tensors())
    else:
        path = sharded(tmp_path)
    env = {
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "100",
        "PATH": "/usr/bin:/bin",
        "REINIT_STATS_PROCESS": worker,
    }
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "report", str(path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    if args:
        assert len(json.loads(proc.stdout)["tensors"]) == len(edge_tensors())
    else:
        assert "tensors" in proc.stderr and "kept" in proc.stderr  # the terminal report


def _stored(sizes: list[int], fd: int = 3) -> list[FileTensor]:
    out, pos = [], 100
    for i, n in enumerate(sizes):
        out.append(FileTensor(TensorInfo(f"t{i}", "U8", (n,), pos, pos + n), "f", fd))
        pos += n
    return out


def test_reads_cover_every_byte_once_in_order_and_cut_big_tensors_as_iter_chunks():
    tensors = _stored([10, 0, 20, 100, 5, 0, 300, 7])
    reads = plan_reads(tensors, size=64)
    pos = 100
    seen: dict[int, list[tuple[int, int]]] = {}
    for r in reads:
        assert r.start == pos and r.nbytes <= 64
        inner = 0
        for i, off, n, last in r.parts:
            assert off == inner
            inner += n
            seen.setdefault(i, []).append((r.start + off, n))
            assert last == (sum(k for _, k in seen[i]) == tensors[i].info.nbytes)
        assert inner == r.nbytes
        pos += r.nbytes
    assert pos == 100 + sum(t.info.nbytes for t in tensors)
    assert sorted(seen) == list(range(len(tensors)))
    # the 100- and 300-byte tensors: pieces of 64 from their start, as iter_chunks cuts them
    assert [n for _, n in seen[3]] == [64, 36]
    assert [n for _, n in seen[6]] == [64, 64, 64, 64, 44]
    assert len(reads) < len(tensors) + 5  # small neighbours share reads


@pytest.mark.parametrize("form", ["file", "shards"])
@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["inspect", "{p}"], ["inspect", "{p}", "--stats", "--json"]]
)
def test_help_version_and_inspect_of_safetensors_never_import_torch(form, args, tmp_path):
    """Issue 28 item 4: start-up without torch for what only reads headers (or raw bytes)."""
    if form == "file":
        path = write_safetensors(tmp_path / "edge.safetensors", edge_tensors())
    else:
        path = sharded(tmp_path)
    env = {"PYTHONPATH": str(ROOT), "COLUMNS": "100", "PATH": "/usr/bin:/bin"}
    argv = [a.format(p=path) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    if "--json" in argv:
        rows = json.loads(proc.stdout)
        assert len(rows) == len(edge_tensors()) and all(r["stats"] for r in rows)


@pytest.mark.parametrize("form", ["file", "shards"])
def test_inspect_without_torch_lists_what_torch_reads(form, tmp_path):
    """The header-and-raw-bytes rows equal the rows read through torch (`tensor_stats` of
    each tensor), statistics included, on every dtype and the edge cases."""
    from reinit.io.sources import open_checkpoint
    from reinit.tools.inspect import _torch_rows, inspect_checkpoint

    path = write_safetensors(tmp_path / "e.safetensors", edge_tensors())
    if form == "shards":
        path = sharded(tmp_path)
    raw = inspect_checkpoint(path, stats=True)
    with open_checkpoint(path) as ckpt:
        via_torch = _torch_rows(ckpt, lambda name: True, stats=True)
    assert [r.to_dict() for r in raw] == [r.to_dict() for r in via_torch]
    assert {r.shard for r in raw} == ({""} if form == "file" else {
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})  # fmt: skip
    big = write_safetensors(tmp_path / "big.safetensors", {"w": torch.randn(4097, 1025)})
    (row,) = inspect_checkpoint(big, stats=True)  # over one 4 Mi-value step
    with open_checkpoint(big) as ckpt:
        assert row == _torch_rows(ckpt, lambda name: True, stats=True)[0]
