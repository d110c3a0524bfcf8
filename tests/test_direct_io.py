"""Outputs written with direct I/O (`O_DIRECT`, the default where the file system takes it):
the same bytes as the ordinary way (`REINIT_DIRECT_IO=0`) whatever the sizes and where the
staging buffer's edges fall, the flag really in effect, and a file system that refuses direct
writes (at the open, or only at a write) still given the whole file the ordinary way.

Internal: also tests reinit.io.writer directly (not the `reinit` API)."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading
from pathlib import Path

import pytest
import torch
from helpers import run
from safetensors.torch import load_file, save_file

import reinit
from reinit.io.writer import DIRECT_ALIGN, DIRECT_BUFFERS, DIRECT_STAGE, SafetensorsWriter

O_DIRECT = getattr(os, "O_DIRECT", 0)
pytestmark = pytest.mark.skipif(not O_DIRECT, reason="the platform has no O_DIRECT")

# Sizes that put tensor edges on, just before and just after the 4 KiB blocks and the 8 MiB
# staging buffer's end, and one tensor larger than the buffer (bytes, float32 values x 4).
SIZES = [
    12,
    DIRECT_ALIGN - 4,
    DIRECT_STAGE - 4096,
    8,
    DIRECT_STAGE + 4 * 1001,
    4 * 3,
    5 * DIRECT_STAGE + 4 * 77,  # with the rest: 7 full buffers, more than are ever in flight
    40,
]


def takes_direct(folder: Path) -> bool:
    try:
        fd = os.open(folder / ".probe", os.O_WRONLY | os.O_CREAT | O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    (folder / ".probe").unlink()
    return True


def entries() -> list[tuple[str, str, tuple[int, ...]]]:
    return [(f"t{i}", "float32", (n // 4,)) for i, n in enumerate(SIZES)]


def payload(i: int, n: int) -> bytes:
    return bytes((i * 31 + k) % 251 for k in range(min(n, 4093))) * (n // 4093 + 1)


def write_file(path: Path, source: Path, known: set[int] = frozenset()) -> list[int]:
    """Write SIZES' tensors: even ones as data in uneven parts, odd ones copied from `source`
    (the same bytes at the same offsets) in uneven spans; the tensors `known` are given to the
    writer up front as lying in `source` (as `reinit apply` does for the bytes it keeps).
    Returns the fd flags seen while the file was open, after each tensor."""
    with open(source, "rb") as src:
        starts = list(itertools.accumulate([0, *SIZES]))
        spans = {f"t{i}": (src.fileno(), starts[i]) for i in known}
        with SafetensorsWriter(path, entries(), known=spans) as w:
            flags = _write_tensors(w, src)
    return flags


def _write_tensors(w: SafetensorsWriter, src) -> list[int]:
    flags = []
    offset = 0
    for i, n in enumerate(SIZES):
        data = payload(i, n)[:n]
        cut = sorted({0, min(n, n // 3 + 1), min(n, n // 2 + 7), n})
        for a, b in itertools.pairwise(cut):
            if i % 2:
                w.copy_part(f"t{i}", src.fileno(), offset + a, b - a)
            else:
                w.write_part(f"t{i}", memoryview(data)[a:b])
        w.end_tensor(f"t{i}")
        offset += n
        flags.append(fcntl.fcntl(w._fd, fcntl.F_GETFL))
    return flags


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "raw.bin"
    src.write_bytes(b"".join(payload(i, n)[:n] for i, n in enumerate(SIZES)))
    return src


def expected(i: int, n: int) -> torch.Tensor:
    return torch.frombuffer(bytearray(payload(i, n)[:n]), dtype=torch.float32)


def test_direct_and_ordinary_writes_give_the_same_file(tmp_path, source, monkeypatch):
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    direct, plain = tmp_path / "direct.safetensors", tmp_path / "plain.safetensors"
    flags = write_file(direct, source)
    monkeypatch.setenv("REINIT_DIRECT_IO", "0")
    plain_flags = write_file(plain, source)
    assert direct.read_bytes() == plain.read_bytes()
    assert all(f & O_DIRECT for f in flags)  # direct while it wrote
    assert not any(f & O_DIRECT for f in plain_flags)
    got = load_file(direct)
    for i, n in enumerate(SIZES):
        assert torch.equal(got[f"t{i}"], expected(i, n)), i


def _refusing_pwrite(monkeypatch, after: int) -> list[int]:
    """Make `os.pwrite` refuse (EINVAL) every write to an O_DIRECT file once `after` such
    writes went through, as a file system that takes the flag at open but not the writes."""
    real = os.pwrite
    seen = [0]

    def pwrite(fd: int, data, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            seen[0] += 1
            if seen[0] > after:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return seen


@pytest.mark.parametrize("after", [0, 1, 2])
def test_a_refused_direct_write_leaves_the_rest_to_the_ordinary_way(
    tmp_path, source, monkeypatch, after
):
    """Refused at the first, second or third block write. The writes already handed to the
    writer's thread when the refusal is met may be tried (at most DIRECT_BUFFERS - 1 of
    them); none is started after it, though 8 blocks are written in all."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    seen = _refusing_pwrite(monkeypatch, after)
    out = tmp_path / "out.safetensors"
    write_file(out, source)
    assert after + 1 <= seen[0] <= after + DIRECT_BUFFERS, seen
    got = load_file(out)
    for i, n in enumerate(SIZES):
        assert torch.equal(got[f"t{i}"], expected(i, n)), i


def test_a_file_system_refusing_direct_at_open_gets_the_ordinary_way(tmp_path, source, monkeypatch):
    real = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    out = tmp_path / "out.safetensors"
    flags = write_file(out, source)
    assert not any(f & O_DIRECT for f in flags)
    got = load_file(out)
    assert all(torch.equal(got[f"t{i}"], expected(i, n)) for i, n in enumerate(SIZES))


def test_apply_outputs_are_the_same_bytes_with_and_without_direct_io(tmp_path):
    """The user's path: a re-init, a transplant and a sharded folder (each larger than the
    staging buffer), written both ways."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    g = torch.Generator().manual_seed(0)
    src, other = tmp_path / "m.safetensors", tmp_path / "o.safetensors"
    shapes = {"a.weight": (1500, 1024), "b.bias": (7,), "c.weight": (2300, 1001), "d.w": (3,)}
    save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()}, src)
    save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()}, other)
    jobs = {
        "reinit.safetensors": ["-r", "c.weight=kaiming_normal", "-r", "b.bias=zeros"],
        "xplant.safetensors": ["-r", f"*=from({other})"],
        "shards": ["-r", "a.weight=orthogonal", "--max-shard-size", "6MB"],
    }
    for env in ("1", "0"):
        (tmp_path / env).mkdir()
        for name, rules in jobs.items():
            out = tmp_path / env / name
            res = run(
                "apply", src, "-o", out, *rules, "--seed", "3", "-q", env={"REINIT_DIRECT_IO": env}
            )
            assert res.exit_code == 0, res.output
    for name in jobs:
        a, b = tmp_path / "1" / name, tmp_path / "0" / name
        files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors")) if a.is_dir() else [""]
        assert len(files) >= (2 if a.is_dir() else 1)
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), (name, f)


@pytest.mark.parametrize("where", ["thread", "tail"])
def test_a_full_disk_leaves_nothing(tmp_path, monkeypatch, where):
    """ENOSPC on the second block write (made by the writer's thread while later blocks
    fill), or on the last partial block (written the ordinary way at the end): one
    WriteError, no thread left, nothing beside the source."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.ones(3000, 2000), "b.weight": torch.ones(1000, 1000)}, src)
    real = os.pwrite
    calls = []

    def full(fd: int, data, offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)
        calls.append(direct)
        if (where == "thread" and len(calls) == 2) or (where == "tail" and not direct):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(reinit.WriteError, match="disk is full"):
        reinit.apply(src, ["b.weight=zeros"], tmp_path / "o.safetensors")
    if where == "thread":  # the writes already handed to the thread may be tried, no later one
        assert calls[:2] == [True, True] and all(calls) and len(calls) <= DIRECT_BUFFERS, calls
    else:  # a.weight's blocks (kept: written from the start) and b.weight's, then the tail
        assert calls[-1] is False and all(calls[:-1]) and len(calls) >= 5, calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("reinit-")]


def test_an_interrupt_while_the_header_is_written_closes_the_file(tmp_path, monkeypatch):
    """A Ctrl-C landing while the writer opens its file and writes the header (before the
    `with` body, so no `__exit__`): the file is closed and no writing thread is left (an API
    caller that goes on after the KeyboardInterrupt kept the fd and the staging buffers)."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    from reinit.io import writer

    def interrupted(self, view):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer._DirectFile, "write", interrupted)
    before = set(os.listdir("/proc/self/fd"))
    for direct in ("1", "0"):
        monkeypatch.setenv("REINIT_DIRECT_IO", direct)
        if direct == "0":
            monkeypatch.setattr(os, "write", lambda fd, data: interrupted(None, data))
        with pytest.raises(KeyboardInterrupt), SafetensorsWriter(tmp_path / "o", entries()):
            pass
        assert set(os.listdir("/proc/self/fd")) <= before, direct
    assert not [t.name for t in threading.enumerate() if t.name.startswith("reinit-")]


# which tensors are handed to the writer as lying in the source: the copied ones (all under a
# block: none is written ahead); every one (a run from the header to the end); alternate
# pairs; the big ones alone
KNOWN = [
    set(range(1, len(SIZES), 2)),
    set(range(len(SIZES))),
    {0, 1, 4, 5},
    {4, 6},
]


def _recorded_pwrites(monkeypatch) -> list[tuple[str, int, int]]:
    """Record every `os.pwrite` as (thread name, offset, bytes)."""
    real = os.pwrite
    seen: list[tuple[str, int, int]] = []

    def pwrite(fd: int, data, offset: int) -> int:
        n = real(fd, data, offset)
        seen.append((threading.current_thread().name, offset, n))
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)
    return seen


@pytest.mark.parametrize("known", KNOWN, ids=["copied", "all", "pairs", "big"])
def test_known_tensors_are_written_ahead_and_the_file_is_the_same(
    tmp_path, source, monkeypatch, known
):
    """The blocks of tensors the writer is told lie in a source file are written by the
    prefill thread, the in-order writes skip them (no byte written twice), and the file is
    byte for byte the one written without it, and the one written the ordinary way."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    seen = _recorded_pwrites(monkeypatch)
    ahead, plain = tmp_path / "ahead.safetensors", tmp_path / "plain.safetensors"
    write_file(ahead, source, known)
    writes = list(seen)
    write_file(plain, source)
    assert ahead.read_bytes() == plain.read_bytes()
    monkeypatch.setenv("REINIT_DIRECT_IO", "0")
    write_file(tmp_path / "ordinary.safetensors", source, known)
    assert ahead.read_bytes() == (tmp_path / "ordinary.safetensors").read_bytes()
    prefilled = [(a, a + n) for t, a, n in writes if t.startswith("reinit-prefill")]
    assert all(a % DIRECT_ALIGN == 0 and b % DIRECT_ALIGN == 0 for a, b in prefilled)
    assert sum(b - a for a, b in prefilled) == _whole_blocks_of_runs(ahead, known)
    bytes_on_disk = [0] * ahead.stat().st_size
    for _, a, n in writes:
        for k in range(a // DIRECT_ALIGN, -(-(a + n) // DIRECT_ALIGN)):
            bytes_on_disk[k] += 1
    written_twice = [k for k in range(len(bytes_on_disk)) if bytes_on_disk[k] > 1]
    assert written_twice == [], written_twice[:5]  # each block once (by one of the two)


def _whole_blocks_of_runs(path: Path, known: set[int]) -> int:
    """The bytes of whole blocks inside runs of consecutive `known` tensors of the file."""
    data = path.read_bytes()
    at = 8 + int.from_bytes(data[:8], "little")
    total, run = 0, None
    for i, n in enumerate([*SIZES, 0]):
        if i in known and run is None:
            run = at
        elif i not in known and run is not None:
            total += max(0, at // DIRECT_ALIGN - -(-run // DIRECT_ALIGN)) * DIRECT_ALIGN
            run = None
        at += n
    return total


def test_a_prefill_refused_direct_io_writes_the_ordinary_way(tmp_path, source, monkeypatch):
    """The prefill's own descriptor refuses direct writes: its blocks go the ordinary way,
    the in-order writer stays direct, the file is the same."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    real = os.pwrite

    def pwrite(fd: int, data, offset: int) -> int:
        prefill = threading.current_thread().name.startswith("reinit-prefill")
        if prefill and fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    out, plain = tmp_path / "out.safetensors", tmp_path / "plain.safetensors"
    flags = write_file(out, source, set(range(len(SIZES))))
    write_file(plain, source)
    assert out.read_bytes() == plain.read_bytes()
    assert all(f & O_DIRECT for f in flags)


def _interrupted_run_leaves_nothing(tmp_path: Path, src: Path, release: threading.Event) -> None:
    """`reinit.apply` of `src` raises KeyboardInterrupt (the caller's patches see to it) while
    the prefill thread is held until `release` (set after 0.5 s at the latest): after it,
    nothing beside the source, no reinit thread, no descriptor left open."""
    before = set(os.listdir("/proc/self/fd"))
    timer = threading.Timer(0.5, release.set)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            reinit.apply(src, ["b.weight=zeros"], tmp_path / "o.safetensors")
    finally:
        timer.cancel()
        release.set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("reinit-")]
    assert set(os.listdir("/proc/self/fd")) <= before


def test_an_interrupt_while_the_prefill_writes_leaves_no_thread_and_no_file(tmp_path, monkeypatch):
    """A Ctrl-C in the in-order stream while the prefill thread still writes (held on its
    first block here): `reinit.apply` removes its temporary and leaves no thread and no
    descriptor behind; nothing beside the source."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    from reinit.io import writer

    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.ones(3000, 2000), "b.weight": torch.ones(1000, 1000)}, src)
    started, release = threading.Event(), threading.Event()
    real_fill = writer._fill_window

    def slow_fill(*args):
        started.set()
        release.wait(10)
        return real_fill(*args)

    def interrupted(self, name, *args):
        assert started.wait(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_fill_window", slow_fill)
    monkeypatch.setattr(writer.SafetensorsWriter, "write_part", interrupted)
    _interrupted_run_leaves_nothing(tmp_path, src, release)


def test_a_full_disk_met_by_the_prefill_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC on the prefill thread's first write of the kept tensor: one WriteError naming
    the output, no thread left, nothing beside the source."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.ones(3000, 2000), "b.weight": torch.ones(2000, 2000)}, src)
    real = os.pwrite

    def full(fd: int, data, offset: int) -> int:
        if threading.current_thread().name.startswith("reinit-prefill"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "o.safetensors"
    with pytest.raises(reinit.WriteError, match=r"o\.safetensors: cannot write: the disk is full"):
        reinit.apply(src, ["b.weight=zeros"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("reinit-")]


def test_apply_writes_kept_tensors_ahead(tmp_path, monkeypatch):
    """`reinit apply` hands the writer the kept tensors: their blocks are written by the
    prefill thread; the changed tensor's, and a transplant's byte copies from another file,
    by the in-order writer."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    src, other = tmp_path / "m.safetensors", tmp_path / "other.safetensors"
    shapes = {"a.weight": (3000, 2000), "b.weight": (1000, 1000), "c.weight": (2000, 1000)}
    save_file({k: torch.ones(s) for k, s in shapes.items()}, src)
    save_file({"c.weight": torch.full((2000, 1000), 2.0)}, other)
    seen = _recorded_pwrites(monkeypatch)
    reinit.apply(src, ["b.weight=zeros", f"c.weight=from({other})"], tmp_path / "o.safetensors")
    prefilled = sum(n for t, _, n in seen if t.startswith("reinit-prefill"))
    assert 3000 * 2000 * 4 - 2 * DIRECT_ALIGN <= prefilled <= 3000 * 2000 * 4  # a.weight's
    got = load_file(tmp_path / "o.safetensors")
    assert torch.equal(got["a.weight"], torch.ones(3000, 2000))
    assert torch.equal(got["b.weight"], torch.zeros(1000, 1000))
    assert torch.equal(got["c.weight"], torch.full((2000, 1000), 2.0))


def test_a_run_that_only_copies_writes_in_order(tmp_path, monkeypatch):
    """No draw, no torch to wait for: the in-order stream writes everything (nothing is
    handed to a prefill thread), and the file is the source's tensors."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    src, other = tmp_path / "m.safetensors", tmp_path / "other.safetensors"
    save_file({"a.weight": torch.ones(3000, 2000), "c.weight": torch.ones(2000, 1000)}, src)
    save_file({"c.weight": torch.full((2000, 1000), 2.0)}, other)
    seen = _recorded_pwrites(monkeypatch)
    reinit.apply(src, [f"c.weight=from({other})"], tmp_path / "o.safetensors")
    assert seen and not [t for t, _, _ in seen if t.startswith("reinit-prefill")]
    got = load_file(tmp_path / "o.safetensors")
    assert torch.equal(got["a.weight"], torch.ones(3000, 2000))
    assert torch.equal(got["c.weight"], torch.full((2000, 1000), 2.0))


def test_a_source_not_in_the_page_cache_is_written_in_order(tmp_path, monkeypatch):
    """The kept tensors of a source whose pages are not cached (dropped here with
    POSIX_FADV_DONTNEED) are left to the in-order stream: reading them ahead would compete for
    the disk with the reads the stream waits on. The output is the same either way."""
    if not takes_direct(tmp_path) or not hasattr(os, "RWF_NOWAIT"):
        pytest.skip("needs O_DIRECT and RWF_NOWAIT")
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.ones(3000, 2000), "b.weight": torch.ones(1000, 1000)}, src)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    seen = _recorded_pwrites(monkeypatch)
    reinit.apply(src, ["b.weight=zeros"], tmp_path / "cold.safetensors")
    assert seen and not [t for t, _, _ in seen if t.startswith("reinit-prefill")]
    seen.clear()
    reinit.apply(src, ["b.weight=zeros"], tmp_path / "warm.safetensors")  # now cached
    assert [t for t, _, _ in seen if t.startswith("reinit-prefill")]
    cold, warm = tmp_path / "cold.safetensors", tmp_path / "warm.safetensors"
    assert cold.read_bytes() == warm.read_bytes()


def test_an_interrupt_as_the_prefill_starts_leaves_no_thread_and_no_descriptor(
    tmp_path, monkeypatch
):
    """A Ctrl-C landing right as the prefill thread has started (its descriptor open, its
    thread running, not yet the writer's to close): the writer still stops it and closes its
    descriptor; `reinit.apply` raises KeyboardInterrupt and leaves nothing behind."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    import signal

    from reinit.io import writer

    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.ones(3000, 2000), "b.weight": torch.ones(1000, 1000)}, src)
    src.read_bytes()  # in the page cache: the prefill is used
    release = threading.Event()
    real_fill = writer._fill_window

    def held_fill(*args):
        release.wait(10)  # the thread is still writing when the signal lands
        return real_fill(*args)

    class Signalled(writer._Prefill):
        def __init__(self, *args):
            super().__init__(*args)
            signal.raise_signal(signal.SIGINT)  # the signal lands as the thread has started

    monkeypatch.setattr(writer, "_fill_window", held_fill)
    monkeypatch.setattr(writer, "_Prefill", Signalled)
    _interrupted_run_leaves_nothing(tmp_path, src, release)


@pytest.mark.parametrize("ahead", [False, True], ids=["in-order", "prefill"])
def test_a_source_truncated_during_the_copy_is_named_not_the_output(tmp_path, monkeypatch, ahead):
    """The source shrinks after the writer started (another program rewrote it): the copy of
    its bytes (by the in-order stream, or read ahead by the prefill) fails as the source's
    `CheckpointError` naming that file and saying it was truncated, not as the output's "cannot
    write" (its disk is not at fault); the writer leaves no thread behind."""
    if not takes_direct(tmp_path):
        pytest.skip("tmp_path's file system refuses O_DIRECT")
    src = tmp_path / "src.bin"
    n = 3 * DIRECT_STAGE
    src.write_bytes(bytes(range(256)) * (n // 256))
    src.read_bytes()  # in the page cache: the prefill is used
    out = tmp_path / "out.safetensors"
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(
            reinit.CheckpointError, match=r"src\.bin: unexpected end of file.*trunc"
        ):
            known = {"t": (fd, 0)} if ahead else None
            with SafetensorsWriter(out, [("t", "uint8", (n,))], known=known) as w:
                os.truncate(src, n // 2)
                w.copy_part("t", fd, 0, n)
                w.end_tensor("t")
    finally:
        os.close(fd)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("reinit-")]
