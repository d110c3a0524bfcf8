"""Ctrl-C and SIGTERM while a `torch.save` record is being written (`--format dcp`, and the
`.bin/.pt` output): exit 130 with nothing left behind, never "internal error" (exit 1).

A signal handler that raised inside torch's C++ writer (it calls the file's `write` in the main
thread) either had its interrupt replaced by the RuntimeError of torch's end of the archive
("unexpected pos": exit 1, "internal error"), or left the writer to end the archive from its
destructor after the file was closed (SIGABRT). `io.writer.save_to` holds the signals for the
record and raises them once it is complete.

Internal: also tests reinit.io.formats.DcpWriter and reinit.io.writer directly (not the
`reinit` API).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
import torch
from helpers import child_env
from safetensors.torch import save_file

import reinit.io.formats._dcp_writer as dcp_writer_module
import reinit.io.writer as writer_module
from reinit.errors import WriteError
from reinit.io.formats import DcpWriter
from reinit.io.formats._dcp_writer import DATA_NAME
from reinit.io.writer import write_torch_file

SHAPE = (256, 256)


class _FailingWrite:
    """A real file whose `at`-th write first runs `fail` (sends a signal, or raises)."""

    def __init__(self, f: BinaryIO, fail: Callable[[], None], at: int = 2):
        self.f, self.fail, self.at, self.writes = f, fail, at, 0

    def write(self, b: bytes) -> int:
        self.writes += 1
        if self.writes == self.at:
            self.fail()
        return self.f.write(b)

    def __getattr__(self, name: str) -> object:  # tell, flush, fileno, close
        return getattr(self.f, name)

    def __enter__(self) -> _FailingWrite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def failing_open(monkeypatch, module, fail: Callable[[], None]) -> None:
    """`open(..., "wb")` in `module` hands out files whose second write runs `fail`."""

    def fake(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the wrapper closes it)
        return _FailingWrite(f, fail) if "w" in mode else f

    monkeypatch.setattr(module, "open", fake, raising=False)


def interrupt() -> None:
    """A Ctrl-C arriving now: its handler runs inside the write, as the kernel may time it."""
    signal.raise_signal(signal.SIGINT)


def disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_dcp(folder: Path, t: torch.Tensor) -> None:
    with DcpWriter(folder, [("w", str(t.dtype).removeprefix("torch."), SHAPE)]) as w:
        w.write_part("w", memoryview(t.view(torch.uint8).numpy()))
        w.end_tensor("w")


def test_interrupt_inside_a_dcp_record_is_an_interrupt(tmp_path, monkeypatch, default_sigint):
    """The interrupt is raised once the record is whole (torch loads it), not inside it."""
    failing_open(monkeypatch, dcp_writer_module, interrupt)
    t = torch.randn(SHAPE).to(torch.bfloat16)
    with pytest.raises(KeyboardInterrupt):
        write_dcp(tmp_path, t)
    assert torch.equal(torch.load(tmp_path / DATA_NAME, weights_only=True), t)


def test_interrupt_inside_torch_save_output_is_an_interrupt(tmp_path, monkeypatch, default_sigint):
    failing_open(monkeypatch, writer_module, interrupt)
    state = {"w": torch.randn(SHAPE)}
    with pytest.raises(KeyboardInterrupt):
        write_torch_file(tmp_path / "out.bin", state)
    assert torch.equal(torch.load(tmp_path / "out.bin", weights_only=True)["w"], state["w"])


def test_full_disk_inside_a_dcp_record_says_so(tmp_path, monkeypatch):
    failing_open(monkeypatch, dcp_writer_module, disk_full)
    with pytest.raises(WriteError) as info:
        write_dcp(tmp_path, torch.zeros(SHAPE))
    assert (
        str(info.value)
        == f"{tmp_path}: cannot write: the disk is full; free space or choose another -o"
    )


def test_sigterm_mid_write_dcp(tmp_path):
    """The real program: SIGTERM once the DCP folder is part-written is exit 130, no output,
    no temporary, the source unchanged."""
    src = tmp_path / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    n = 1024  # a.weight is copied first; orthogonal on big.weight keeps the run busy after it
    save_file({"a.weight": torch.randn(n, n, generator=g), "big.weight": torch.randn(n, n)}, src)
    before = src.read_bytes()
    p = subprocess.Popen(
        [sys.executable, "-m", "reinit", "apply", str(src), "-o", str(tmp_path / "out") + "/"]
        + ["--format", "dcp", "-r", "big.weight=orthogonal", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(REINIT_DEBUG="", REINIT_STATS_PROCESS="1"),
    )
    deadline = time.monotonic() + 90
    while not any(f.stat().st_size > 2**20 for f in tmp_path.glob(".*reinit-tmp-*/*")):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "never started writing"
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip().splitlines()[-1] == "error: interrupted; no partial output was left behind"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.safetensors"]
    assert src.read_bytes() == before
