"""The streaming path: kernel-side copies give the same bytes as the plain path, the
buffered fallback works without copy_file_range, the pipeline cleans up after errors, and
memory stays bounded for apply, transplant and report.

Internal: also tests reinit.io, reinit.io.pipeline, reinit.run directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from helpers import MB, make_checkpoint, rss_growth
from safetensors.torch import save_file

import reinit
from reinit.io import writer
from reinit.io.pipeline import prefetch
from reinit.run import stream as engine


def odd_checkpoint(path: Path) -> None:
    """Tensors of mixed dtypes and odd sizes, so offsets shift when an earlier tensor changes
    dtype-size... and tensors larger than one streaming chunk."""
    g = torch.Generator().manual_seed(1)
    save_file(
        {
            "a.weight": torch.randn(3, 5, generator=g).to(torch.float16),
            "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
            "c.big": torch.randn(5_000_003, generator=g),  # > CHUNK_BYTES, not a round size
            "d.ids": torch.arange(11, dtype=torch.int64),
            "e.weight": torch.randn(9, 3, generator=g, dtype=torch.float64),
            "f.flag": torch.tensor([True, False]),
        },
        path,
        metadata={"format": "pt"},
    )


def sharded_dir(root: Path) -> Path:
    src = root / "sharded"
    src.mkdir()
    g = torch.Generator().manual_seed(2)
    save_file(
        {
            "x.0.weight": torch.randn(33, 17, generator=g),
            "x.0.bias": torch.randn(33, generator=g).to(torch.bfloat16),
        },
        src / "model-00001-of-00002.safetensors",
    )
    save_file(
        {"x.1.weight": torch.randn(6_000_001, generator=g), "x.1.bias": torch.zeros(5)},
        src / "model-00002-of-00002.safetensors",
    )
    wm = {"x.0.weight": "model-00001-of-00002.safetensors", "x.0.bias": "model-00001-of-00002.safetensors",
          "x.1.weight": "model-00002-of-00002.safetensors", "x.1.bias": "model-00002-of-00002.safetensors"}  # fmt: skip
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wm})
    )
    return src


def _outputs(tmp_path: Path, source: Path, rules: list[str], tag: str) -> dict[str, bytes]:
    out = tmp_path / tag
    reinit.apply(
        source,
        rules,
        out if source.is_dir() else out.with_suffix(".safetensors"),
        default_report=False,
    )
    target = out if source.is_dir() else out.with_suffix(".safetensors")
    files = sorted(target.rglob("*")) if target.is_dir() else [target]
    return {
        str(f.relative_to(target)) if target.is_dir() else "file": f.read_bytes()
        for f in files
        if f.is_file()
    }


@pytest.mark.parametrize("kind", ["file", "sharded"])
def test_kernel_copy_and_plain_path_give_identical_bytes(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(engine, "READ_ONCE", False)  # the kernel copy is the old path's
    if kind == "file":
        src = tmp_path / "m.safetensors"
        odd_checkpoint(src)
        rules = ["a.weight=normal", "e.weight=orthogonal"]  # changed tensors before kept ones
    else:
        src = sharded_dir(tmp_path)
        rules = ["x.0.weight=xavier_uniform"]
    fast = _outputs(tmp_path, src, rules, "fast")
    monkeypatch.setattr(engine, "KERNEL_COPY", False)
    plain = _outputs(tmp_path, src, rules, "plain")
    assert fast.keys() == plain.keys() and len(fast) >= 1
    assert fast == plain


def test_buffered_fallback_without_copy_file_range(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "READ_ONCE", False)  # the kernel copy is the old path's
    monkeypatch.setenv("REINIT_DIRECT_IO", "0")  # ... and the ordinary output's
    src = tmp_path / "m.safetensors"
    odd_checkpoint(src)
    expected = _outputs(tmp_path, src, ["a.weight=zeros"], "kernel")
    calls = []
    real = os.pread
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    monkeypatch.setattr(writer.os, "pread", lambda *a: calls.append(1) or real(*a))
    assert _outputs(tmp_path, src, ["a.weight=zeros"], "fallback") == expected
    assert calls, "the fallback path was not taken"


def test_fallback_when_the_kernel_refuses(tmp_path, monkeypatch):
    import errno

    def refuse(*a, **k):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(engine, "READ_ONCE", False)  # the kernel copy is the old path's
    monkeypatch.setenv("REINIT_DIRECT_IO", "0")  # ... and the ordinary output's
    src = tmp_path / "m.safetensors"
    odd_checkpoint(src)
    expected = _outputs(tmp_path, src, ["b.bias=ones"], "kernel")
    monkeypatch.setattr(writer.os, "copy_file_range", refuse)
    assert _outputs(tmp_path, src, ["b.bias=ones"], "refused") == expected


def test_prefetch_propagates_errors_and_stops_its_thread():
    def items():
        yield 1
        yield 2
        raise ValueError("producer broke")

    got = []
    with pytest.raises(ValueError, match="producer broke"):
        for x in prefetch(items(), depth=1):
            got.append(x)
    assert got == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    gen = prefetch(endless(), depth=2)
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before
    assert len(produced) <= 5  # stopped, not running on


@pytest.mark.parametrize("direct", ["0", "1"])
def test_write_error_midway_leaves_nothing(tmp_path, monkeypatch, direct):
    """A full disk met by the ordinary writes (the third `write`) or the direct ones (the
    first `pwrite`, where this small file's blocks go out at its end)."""
    src = tmp_path / "m.safetensors"
    odd_checkpoint(src)
    calls = {"n": 0}
    name = "pwrite" if direct == "1" else "write"
    real = getattr(os, name)
    fail_at = 1 if direct == "1" else 3

    def failing(fd, *args):
        calls["n"] += 1
        if calls["n"] == fail_at:
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *args)

    monkeypatch.setenv("REINIT_DIRECT_IO", direct)
    monkeypatch.setattr(engine, "KERNEL_COPY", False)
    monkeypatch.setattr(writer.os, name, failing)
    with pytest.raises(reinit.WriteError, match="disk is full"):
        reinit.apply(src, ["a.weight=zeros"], tmp_path / "o.safetensors")
    assert calls["n"] >= fail_at
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("reinit-")]


@pytest.mark.slow
def test_transplant_and_report_memory_bounded(tmp_path):
    src = tmp_path / "big.safetensors"
    size = make_checkpoint(src)
    out = tmp_path / "t.safetensors"
    transplant = rss_growth("apply", src, "-o", out, "-r", f"*=from({src})", "-q", cwd=tmp_path)
    report = rss_growth("report", src, "-q", cwd=tmp_path)
    print(
        f"{size / MB:.0f} MB checkpoint: transplant +{transplant / MB:.0f} MB, report +{report / MB:.0f} MB"
    )
    assert (tmp_path / "t.safetensors").stat().st_size > size  # metadata grew, every tensor there
    assert transplant < 200 * MB
    assert report < 200 * MB
