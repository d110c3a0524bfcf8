"""Hostile input on the reading side (issues #16 and #17): malformed safetensors headers, tensor
counts past the limit, deflated torch zips, --add sizes that cannot be allocated. Each case is
a one-line error naming the file/tensor/argument with the right exit code, never "internal
error".

Internal: also tests reinit.io, reinit.io.sources, reinit.io.formats._torch_reader, reinit.limits,
reinit.tools.audit directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import run
from safetensors.torch import save_file

from reinit.cli import main
from reinit.errors import CheckpointError
from reinit.io.formats import TorchFile
from reinit.io.formats import _safetensors_header as safetensors_header
from reinit.io.sources import open_checkpoint


def write_raw(path: Path, doc: dict, data_len: int) -> Path:
    """A safetensors file with exactly this header (json.dumps' ASCII escapes kept, so a lone
    surrogate travels as `\\ud800`, as a hostile file would carry it)."""
    body = json.dumps(doc).encode()
    body += b" " * (-(8 + len(body)) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(data_len))
    return path


def entry(dtype: object, shape: object, offsets: object) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


OK = entry("F32", [2], [0, 8])

# case -> (header, data bytes, text the one-line message must hold)
MALFORMED = {
    "dim 2^62 times 4": ({"x.w": entry("F32", [2**62, 4], [0, 8])}, 8, "'x.w'"),
    "dims 2^62 x 2^62 x 0": (
        {"x.w": entry("F32", [2**62, 2**62, 0], [0, 0]), "ok": OK},
        8,
        "'x.w' has a shape whose dims multiply past",
    ),
    "bigint dim with a zero": (
        {"x.w": entry("F32", [2**70, 0], [0, 0]), "ok": OK},
        8,
        "'x.w' has a shape whose dims multiply past",
    ),
    "zero then bigint dim": (
        {"x.w": entry("F32", [0, 2**70], [0, 0]), "ok": OK},
        8,
        "'x.w' has a shape whose dims multiply past",
    ),
    "shape product not matching the span": (
        {"x.w": entry("F32", [3], [0, 8])},
        8,
        "'x.w' spans 8 bytes but shape [3] of F32 needs 12",
    ),
    "negative dim": ({"x.w": entry("F32", [-2], [0, 8])}, 8, "'x.w' has an invalid shape"),
    "overlapping offsets": (
        {"x.w": entry("F32", [2], [0, 8]), "y.w": entry("F32", [2], [4, 12])},
        12,
        "overlaps",
    ),
    "offsets out of file": ({"x.w": entry("F32", [2], [8, 16])}, 8, "'x.w'"),
    "offsets reversed": ({"x.w": entry("F32", [0], [8, 0])}, 8, "'x.w' has invalid data_offsets"),
    "lone surrogate name": ({"a\ud800.w": OK}, 8, "'a\\ud800.w' holds a lone surrogate"),
    "lone surrogate metadata": (
        {"__metadata__": {"k\udc00": "v"}, "ok": OK},
        8,
        "__metadata__ entry 'k\\udc00' holds a lone surrogate",
    ),
    "non-string dtype": ({"x.w": entry(32, [2], [0, 8])}, 8, "'x.w' has unknown dtype 32"),
    "unknown dtype": ({"x.w": entry("F31", [2], [0, 8])}, 8, "'x.w' has unknown dtype 'F31'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("command", ["inspect", "apply", "report"])
def test_malformed_header_is_a_corrupt_file_error(tmp_path, case, command):
    """The validator refuses the header before torch sees it (on main, the dim and surrogate
    cases ended as `internal error` or passed as valid)."""
    doc, data_len, must = MALFORMED[case]
    bad = write_raw(tmp_path / "bad.safetensors", doc, data_len)
    args = {
        "inspect": ["inspect", str(bad)],
        "apply": ["apply", str(bad), "-r", "*=zeros", "-o", str(tmp_path / "out.safetensors")],
        "report": ["report", str(bad), "-q"],
    }[command]
    res = run(*args)
    assert "internal error" not in res.output
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {bad}: "), lines[0]
    assert must in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_tensor_count_over_the_limit_is_refused(tmp_path, monkeypatch):
    """A header declaring more tensors than MAX_TENSORS: a clear error naming the limit and
    the file, not minutes of work and gigabytes of memory (the limit is lowered here so the
    file stays tiny)."""
    monkeypatch.setattr(safetensors_header, "MAX_TENSORS", 50)  # where the header is parsed
    doc = {f"t{i}": entry("U8", [1], [i, i + 1]) for i in range(51)}
    bad = write_raw(tmp_path / "many.safetensors", doc, 51)
    res = run("inspect", str(bad))
    assert res.exit_code == 1 and "internal error" not in res.output, res.output
    assert res.stderr.strip() == (
        f"error: {bad}: header declares over 50 tensors, reinit's limit per file; "
        "split the checkpoint into shards (a model folder with an index)"
    )
    ok = write_raw(tmp_path / "fifty.safetensors", dict(list(doc.items())[:50]), 50)
    assert len(open_checkpoint(ok).names()) == 50


def test_tensor_count_limit_applies_to_torch_files(tmp_path, monkeypatch):
    from reinit.io import memory

    monkeypatch.setattr(memory, "MAX_TENSORS", 3)
    path = tmp_path / "m.pt"
    torch.save({f"t{i}": torch.zeros(1) for i in range(4)}, path)
    with pytest.raises(CheckpointError, match="holds 4 tensors, over reinit's limit of 3"):
        open_checkpoint(path)


def test_a_header_of_a_million_tensors_fails_fast_in_bounded_memory(tmp_path):
    """The real limit against a ~1M-tensor header (issue #16: MemoryError under a 3 GB cap;
    issue #17: 270 s and 6.5 GB). Refused after parsing the JSON alone: one process, an
    address-space cap of 3 GB, a generous time bound."""
    import subprocess
    import sys

    n = 1_000_000
    body = (
        "{"
        + ",".join(
            f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(n)
        )
        + "}"
    ).encode()
    body += b" " * (-(8 + len(body)) % 8)
    bad = tmp_path / "million.safetensors"
    bad.write_bytes(struct.pack("<Q", len(body)) + body + bytes(n))
    code = (
        "import resource,sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
        "from reinit.cli import main; sys.argv=['reinit','inspect',sys.argv[1]]; main()"
    )
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run(
        [sys.executable, "-c", code, str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 1, p.stderr
    assert "internal error" not in p.stderr and "MemoryError" not in p.stderr
    assert "header declares over 200000 tensors, reinit's limit per file" in p.stderr


# --- torch zips with compressed records -----------------------------------------------------


def random_state() -> dict[str, torch.Tensor]:
    """Incompressible bytes: DEFLATE makes each record a little longer, so mapping the raw
    record (what torch's mmap path does) reads garbage of the right size instead of failing."""
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randint(0, 256, (32, 64), dtype=torch.uint8, generator=g).view(
            torch.float16
        ),
        "b.bias": torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=g),
    }


def rezip(src: Path, dst: Path, compression: int) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    return dst


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_torch_zip_stored_or_deflated_reads_the_true_values(tmp_path, compression):
    """Decision: a torch zip with compressed records is read with torch's non-mapped loader
    (which decompresses), not refused; stored records stay memory-mapped."""
    state = random_state()
    saved = tmp_path / "saved.pt"
    torch.save(state, saved)
    path = rezip(saved, tmp_path / "model.pt", compression)
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {compression}
    ck = TorchFile(path)
    for name, want in state.items():
        got = ck.read(name)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name
    # end to end: the output holds the source's exact bytes for the kept tensor
    out = tmp_path / "out.safetensors"
    res = run("apply", str(path), "-r", "a.weight=zeros", "-o", str(out))
    assert res.exit_code == 0, res.output
    kept = open_checkpoint(out).read("b.bias")
    assert torch.equal(kept, state["b.bias"])


def test_torch_file_lone_surrogate_key_is_named(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"a\ud800": torch.zeros(2), "b": torch.ones(2)}, path)
    res = run("inspect", str(path))
    assert res.exit_code == 1 and "internal error" not in res.output, res.output
    assert "tensor name 'a\\ud800' holds a lone surrogate" in res.stderr


# --- --add sizes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "must"),
    [
        ("[100000,100000]", "needs 40,000,000,000 bytes, more than the 1,000,000 bytes"),
        (f"[{2**62},4]", "needs more than 9223372036854775807 bytes"),
        (f"[0,{2**70}]", "needs more than 9223372036854775807 bytes"),
        (f"[{2**40},{2**20}]", "needs 4,611,686,018,427,387,904 bytes, more than the 1,000,000"),
        ("[1000,1000]", "needs 4,000,000 bytes, more than the 1,000,000 bytes"),
    ],
)
def test_add_sizes_that_cannot_be_allocated_are_refused_first(tmp_path, monkeypatch, shape, must):
    """Refused at parse time (exit 2), with the size in bytes, before any allocation: memory
    available is pinned at 1 MB so the 40 GB case does not depend on this machine."""
    from reinit import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 1_000_000)
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.ones(2)}, src)
    res = CliRunner().invoke(
        main,
        ["apply", str(src), "--add", f"x={shape}:zeros", "-o", str(tmp_path / "o.safetensors")],
    )
    assert res.exit_code == 2 and "internal error" not in res.output, res.output
    assert f"error: --add 'x={shape}:zeros': the shape" in res.stderr
    assert must in res.stderr, res.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_add_limit_reads_real_memory():
    from reinit.limits import available_memory, declared_bytes

    assert available_memory() > 0
    assert declared_bytes((3, 0, 2**70), 4) is None
    assert declared_bytes((3, 0, 5), 4) == 0
    assert declared_bytes((3, 5), 2) == 30


def test_report_json_is_one_line_per_tensor_and_round_trips(tmp_path):
    """Per-tensor cost of the JSON report (issue #17: a 494 MB report for 1M tensors): rows are
    encoded compactly, one per line; the document is the same JSON as before."""
    from reinit.tools.audit import report_checkpoint

    src = tmp_path / "m.safetensors"
    save_file({f"t{i}": torch.full((2,), float(i)) for i in range(5)}, src)
    rep = report_checkpoint(src, progress=False)
    text = rep.to_json()
    assert json.loads(text) == json.loads(rep.to_json(None)) == rep.to_dict()
    assert list(json.loads(text)) == list(rep.to_dict())
    rows = [ln for ln in text.splitlines() if ln.startswith('    {"name": ')]
    assert len(rows) == 5
