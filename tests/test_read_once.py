"""The apply paths of issue 19. With `READ_ONCE` every kept byte is read once into a reused
buffer, its statistics computed there and the same buffer written; the default reads into
reused buffers for the statistics and copies kernel-side. Both must give the same output bytes
and the same report (statistics) as the first engine's path (fresh buffers, then a kernel
copy, or a plain write) on every dtype a safetensors file holds, across chunk boundaries; and
two tensors drawn at once must give the values one thread gives.

Internal: also tests reinit.io, reinit.io.formats._safetensors_reader, reinit.run, reinit.schemes directly (not the `reinit` API).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import reinit
from reinit.io import buffers, writer
from reinit.io.formats import _safetensors_reader as safetensors_reader
from reinit.run import pieces
from reinit.run import stream as engine
from reinit.schemes import bind_scheme, generate

CHUNK = 4096  # bytes: patched in as CHUNK_BYTES so small tensors span many chunks


def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(pieces, "CHUNK_BYTES", CHUNK)


def every_dtype(path: Path) -> dict[str, torch.Tensor]:
    """One tensor per dtype, most of them several chunks long and not a whole number of chunks,
    with NaN/Inf in some chunks of the float ones, plus zero-size and one-value tensors."""
    g = torch.Generator().manual_seed(7)
    n = 3 * CHUNK + 5  # elements: > 3 chunks for every dtype, never a whole number of chunks

    def floats(dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(n, generator=g) * scale).to(dtype)

    with_bad = torch.randn(n, generator=g)
    with_bad[CHUNK // 4 + 3] = float("nan")  # in the second 4 KB chunk of float32
    with_bad[n - 2] = float("inf")  # in the last chunk
    with_bad[n - 1] = float("-inf")
    all_bad = torch.full((2 * CHUNK,), float("nan"))
    tensors = {
        "f32.weight": floats(torch.float32),
        "f32_bad.weight": with_bad,
        "f32_allnan.weight": all_bad,
        "f16.weight": floats(torch.float16),
        "f16_bad.weight": with_bad.to(torch.float16),
        "bf16.weight": floats(torch.bfloat16, 0.02),
        "bf16_bad.weight": with_bad.to(torch.bfloat16),
        "f64.weight": floats(torch.float64),
        "e4m3.weight": floats(torch.float8_e4m3fn),
        "e5m2.weight": floats(torch.float8_e5m2),
        "i8.ids": torch.randint(-128, 127, (n,), generator=g, dtype=torch.int8),
        "i16.ids": torch.randint(-(2**15), 2**15 - 1, (n,), generator=g, dtype=torch.int16),
        "i32.ids": torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32),
        "i64.ids": torch.randint(-(2**62), 2**62, (n,), generator=g, dtype=torch.int64),
        "u8.ids": torch.randint(0, 255, (n,), generator=g, dtype=torch.uint8),
        "mask.flag": torch.rand(n, generator=g) > 0.5,
        "empty.weight": torch.zeros(0, 4),
        "empty16.weight": torch.zeros(3, 0, dtype=torch.bfloat16),
        "one.bias": torch.tensor([1.5]),
        "norm.weight": torch.ones(n, dtype=torch.bfloat16),  # constant: std 0
        "changed.weight": floats(torch.bfloat16).reshape(-1, 1),  # re-initialized below
        "changed32.weight": floats(torch.float32).reshape(-1, 1),
    }
    save_file(tensors, path, metadata={"format": "pt"})
    return tensors


RULES = ["changed.weight=normal(std=0.02)", "changed32.weight=kaiming_uniform"]


def _run(tmp: Path, src: Path, rules: list[str], tag: str) -> tuple[bytes, dict]:
    out = tmp / f"{tag}.safetensors"
    report = reinit.apply(src, rules, out, default_report=False)
    return out.read_bytes(), {t.name: t.to_dict() for t in report.tensors}


class _FreshBuffers:
    """The first engine's reads: a new buffer for every chunk, never recycled."""

    def __init__(self, size: int, keep: int):
        self.size = size

    def take(self, n: int) -> memoryview:
        return memoryview(bytearray(n))

    def give(self, view: object) -> None:
        pass


@pytest.mark.parametrize("read_once", [True, False])
@pytest.mark.parametrize("kernel_copy", [True, False])
def test_new_paths_give_the_old_paths_bytes_and_statistics(
    tmp_path, monkeypatch, kernel_copy, read_once
):
    src = tmp_path / "m.safetensors"
    every_dtype(src)
    _small_chunks(monkeypatch)
    monkeypatch.setattr(engine, "READ_ONCE", read_once)
    new_bytes, new_stats = _run(tmp_path, src, RULES, "new")
    monkeypatch.setattr(engine, "READ_ONCE", False)
    monkeypatch.setattr(engine, "KERNEL_COPY", kernel_copy)
    monkeypatch.setattr(engine, "BufferPool", _FreshBuffers)
    monkeypatch.setattr(engine, "DRAW_THREADS", 1)
    monkeypatch.setattr(engine, "DRAW_AHEAD", 1)
    old_bytes, old_stats = _run(tmp_path, src, RULES, "old")
    assert new_bytes == old_bytes
    assert new_stats.keys() == old_stats.keys()
    for name in new_stats:
        # exactly equal: the same chunks in the same order (NaN compared as text)
        assert repr(new_stats[name]) == repr(old_stats[name]), name
    bad = new_stats["f32_bad.weight"]["after"]
    assert (
        bad["nonfinite"] == 3 and new_stats["f32_allnan.weight"]["after"]["nonfinite"] == 2 * CHUNK
    )
    assert new_stats["changed.weight"]["before"] is not None  # changed tensors' before, read once


def test_every_source_byte_is_read_once_and_never_copied_again(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "READ_ONCE", True)
    src = tmp_path / "m.safetensors"
    tensors = every_dtype(src)
    _small_chunks(monkeypatch)
    read = {"bytes": 0}
    real_preadv = os.preadv

    def counting_preadv(fd, bufs, offset):
        n = real_preadv(fd, bufs, offset)
        read["bytes"] += n
        return n

    def no_kernel_copy(*a, **k):
        raise AssertionError("copy_file_range called on the read-once path")

    monkeypatch.setattr(safetensors_reader.os, "preadv", counting_preadv)
    monkeypatch.setattr(writer.os, "copy_file_range", no_kernel_copy)
    monkeypatch.setattr(writer.os, "pread", no_kernel_copy)
    _run(tmp_path, src, RULES, "once")
    data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert read["bytes"] == data_bytes


@pytest.mark.parametrize("read_once", [True, False])
def test_buffers_are_recycled(tmp_path, monkeypatch, read_once):
    """Many chunks pass through a handful of buffers: each goes back once counted (kernel
    copy) or once written (READ_ONCE), and the before-statistics of a changed tensor give
    theirs back too."""
    monkeypatch.setattr(engine, "READ_ONCE", read_once)
    src = tmp_path / "m.safetensors"
    every_dtype(src)
    _small_chunks(monkeypatch)
    pools: list[buffers.BufferPool] = []
    real_pool = engine.BufferPool

    def recording_pool(size: int, keep: int) -> buffers.BufferPool:
        pools.append(real_pool(size, keep))
        return pools[-1]

    monkeypatch.setattr(engine, "BufferPool", recording_pool)
    _run(tmp_path, src, RULES, "pooled")
    (pool,) = pools
    assert os.path.getsize(src) // CHUNK > 50  # far more chunks than buffers
    assert pool.made <= engine.POOL_KEEP + 2


def test_pool_only_takes_back_its_own_buffers():
    pool = buffers.BufferPool(16, keep=2)
    a = pool.take(10)
    foreign = memoryview(bytearray(16))
    pool.give(foreign)
    pool.give(b"not a view")  # type: ignore[arg-type]
    pool.give(None)
    assert pool.take(16).obj is not foreign.obj  # a new one, not the foreign buffer
    pool.give(a)
    pool.give(a)  # twice: still one free entry
    assert pool.take(3).obj is a.obj
    assert pool.take(3).obj is not a.obj
    assert pool.made == 3


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]
)
def test_narrow_in_place_is_the_plain_cast(dtype):
    g = torch.Generator().manual_seed(3)
    for n in (0, 1, 7, pieces.CAST_CHUNK + 3, 3 * pieces.CAST_CHUNK):
        t = torch.randn(n, generator=g) * 100
        if n:
            t[:: max(1, n // 5)] = float("nan")
            t[-1] = float("inf")
        want = t.to(dtype)
        got = pieces.narrow_in_place(t.clone().reshape(-1, 1), dtype)
        assert got.dtype == dtype and got.shape == (n, 1)
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.view(torch.uint8))


def _reinit_all(path: Path) -> list[str]:
    g = torch.Generator().manual_seed(5)
    names = []
    tensors = {}
    for i, dtype in enumerate(
        [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.float8_e4m3fn] * 2
    ):
        name = f"layer.{i}.weight"
        tensors[name] = torch.randn(37, 29 + i, generator=g).to(dtype)
        names.append(name)
    save_file(tensors, path)
    return names


RULES_ALL = ["*.weight=kaiming_normal", "layer.3.weight=orthogonal", "layer.6.weight=trunc_normal"]


def test_two_drawing_threads_give_the_values_of_one(tmp_path, monkeypatch):
    src = tmp_path / "m.safetensors"
    _reinit_all(src)
    _small_chunks(monkeypatch)
    monkeypatch.setattr(engine, "DRAW_THREADS", 2)
    monkeypatch.setattr(engine, "DRAW_AHEAD", 2)
    two, two_stats = _run(tmp_path, src, RULES_ALL, "two")
    monkeypatch.setattr(engine, "DRAW_THREADS", 1)
    monkeypatch.setattr(engine, "DRAW_AHEAD", 0)  # drawn in line, one after another
    one, one_stats = _run(tmp_path, src, RULES_ALL, "one")
    assert two == one
    assert repr(two_stats) == repr(one_stats)


def test_drawn_values_are_generates_own(tmp_path, monkeypatch):
    """The values written are `generate`'s (a float32 draw cast with `.to`): casting in the
    draw's own storage changes nothing."""
    src = tmp_path / "m.safetensors"
    names = _reinit_all(src)
    out = tmp_path / "o.safetensors"
    reinit.apply(src, ["*.weight=kaiming_normal"], out, default_report=False, seed=11)
    bound = bind_scheme("kaiming_normal")
    with reinit.open_checkpoint(out) as ck, reinit.open_checkpoint(src) as before:
        for name in names:
            ref = before.ref(name)
            want = generate(bound, name, ref.shape, ref.dtype, 11)
            got = ck.read(name)
            assert got.dtype == want.dtype
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name


def test_two_tensors_are_drawn_at_the_same_time(tmp_path, monkeypatch):
    """Both drawing threads work at once: each draw waits at a two-party barrier, which only
    opens when a second draw is running beside it (a single drawing thread would time out)."""
    src = tmp_path / "m.safetensors"
    _reinit_all(src)
    monkeypatch.setattr(engine, "DRAW_THREADS", 2)
    monkeypatch.setattr(engine, "DRAW_AHEAD", 2)
    barrier = threading.Barrier(2, timeout=20)
    met = []
    real_draw = engine.Applier._draw

    def draw_in_pairs(self, p):
        if threading.current_thread().name.startswith("reinit-draw") and len(met) < 2:
            met.append(threading.current_thread().name)
            barrier.wait()
        return real_draw(self, p)

    monkeypatch.setattr(engine.Applier, "_draw", draw_in_pairs)
    _run(tmp_path, src, ["layer.*.weight=normal"], "pairs")
    assert len(set(met)) == 2


@pytest.mark.parametrize("budget, most", [(256 << 20, 2), (1, 1)])
def test_a_second_tensor_is_drawn_ahead_only_within_the_byte_budget(
    tmp_path, monkeypatch, budget, most
):
    """Two small tensors are drawn ahead; tensors whose float32 draws exceed DRAW_AHEAD_BYTES
    together are drawn one ahead, as before (two huge embeddings are never held at once)."""
    src = tmp_path / "m.safetensors"
    _reinit_all(src)
    monkeypatch.setattr(engine, "DRAW_AHEAD", 2)  # the count bound; this test is the bytes'
    monkeypatch.setattr(engine, "DRAW_AHEAD_BYTES", budget)
    seen: list[int] = []
    real_pieces = engine.Applier.pieces

    def recording_pieces(self, p, reads):
        seen.append(len(self._drawn))  # right after top_up(): what is drawn ahead now
        return real_pieces(self, p, reads)

    monkeypatch.setattr(engine.Applier, "pieces", recording_pieces)
    _run(tmp_path, src, ["layer.*.weight=normal"], "budget")
    assert max(seen) == most
