"""Atomic output (issue #7 items 1 and 4): output appears complete or not at all; the temporary
sibling (`.NAME.reinit-tmp-*`) is removed on every failure, Ctrl-C and SIGTERM included; the
source of `--in-place` is replaced only by a complete file; a full disk, a file size limit and a
read-only folder are exit 1 with one line saying so.

Internal: also tests reinit.io.publish, reinit.io.writer directly (not the `reinit` API).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import child_env, run
from safetensors.torch import load_file, save_file

from reinit.cli import main
from reinit.errors import WriteError
from reinit.io.publish import atomic_output
from reinit.io.writer import SafetensorsWriter

ROOT = Path(__file__).resolve().parents[1]


def digest(path: Path) -> str:
    if path.is_dir():
        return "".join(digest(p) + p.name for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.reinit-tmp-*"))


def written(folder: Path) -> int:
    """Bytes written so far under the temporaries in `folder`."""
    total = 0
    for t in temporaries(folder):
        files = [t] if t.is_file() else [f for f in t.rglob("*") if f.is_file()]
        for f in files:
            with contextlib.suppress(FileNotFoundError):  # the writer may be renaming it
                total += f.stat().st_size
    return total


def cli(*args: str, preexec=None, **kw) -> subprocess.Popen:
    env = child_env(REINIT_DEBUG="")
    return subprocess.Popen(
        [sys.executable, "-m", "reinit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=preexec,
        **kw,
    )


def model(tmp_path: Path, mb: int = 8) -> Path:
    """A checkpoint of about `mb` MB with a large square matrix (slow to orthogonalize)."""
    src = tmp_path / "model.safetensors"
    n = int((mb * 2**20 / 4 / 2) ** 0.5)
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "a.weight": torch.randn(n, n, generator=g),
            "big.weight": torch.randn(n, n, generator=g),
            "z.bias": torch.zeros(n),
        },
        src,
    )
    return src


# --- in-process ---------------------------------------------------------------------------


def test_success_leaves_no_temporary_and_fsyncs(tmp_path):
    src = model(tmp_path, 1)
    out = tmp_path / "out.safetensors"
    res = run("apply", str(src), "-r", "a.weight=zeros", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.is_file() and not temporaries(tmp_path)
    assert torch.count_nonzero(load_file(out)["a.weight"]) == 0


def test_exception_mid_write_removes_temporary_and_keeps_target(tmp_path):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        assert temporaries(tmp_path) == [tmp]
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and not temporaries(tmp_path)
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "d", directory=True) as tmp:
        (tmp / "f").write_bytes(b"x")
        raise KeyboardInterrupt
    assert not (tmp_path / "d").exists() and not temporaries(tmp_path)


def test_directory_overwrite_is_complete_or_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target, directory=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_output(target, directory=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert not temporaries(tmp_path)


def test_in_place_replaces_the_source_only_when_complete(tmp_path):
    src = model(tmp_path, 1)
    before = load_file(src)
    res = run("apply", str(src), "-r", "a.weight=zeros", "--in-place", "-q")
    assert res.exit_code == 0, res.output
    after = load_file(src)
    assert torch.count_nonzero(after["a.weight"]) == 0
    assert torch.equal(after["big.weight"], before["big.weight"])
    assert not temporaries(tmp_path)
    # a failing in-place run (a rule that cannot apply) leaves the source as it was
    snapshot = digest(src)
    res = CliRunner().invoke(
        main, ["apply", str(src), "-r", "big.weight=from(nowhere.safetensors)", "--in-place"]
    )
    assert res.exit_code != 0 and digest(src) == snapshot and not temporaries(tmp_path)


def test_disk_full_is_one_clear_line():
    """/dev/full fails every write with ENOSPC: the writer says the disk is full."""
    with pytest.raises(WriteError) as info:  # noqa: SIM117
        with SafetensorsWriter("/dev/full", [("w", "float32", (4096,))]) as w:
            w.write("w", memoryview(bytes(4 * 4096)))
    assert (
        str(info.value)
        == "/dev/full: cannot write: the disk is full; free space or choose another -o"
    )
    assert info.value.exit_code == 1


# --- subprocess: file size limit, read-only folder ----------------------------------------
# Each case is a real `reinit` process (rlimits, capabilities and signals are per process).
# The cases of one test run side by side: starting Python + torch is most of their cost.


def limit_fsize(limit: int):
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def read_only_for_root() -> None:
    """Root ignores file permissions (CAP_DAC_OVERRIDE). Drop that capability from the bounding
    set before exec, so the `reinit` process sees a read-only folder as one."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_file_size_limit_and_read_only_folder(tmp_path):
    src = model(tmp_path, 2)
    snapshot = digest(src)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cases = {  # output -> (preexec, what the message must say)
        tmp_path / "fs" / "out.safetensors": (limit_fsize(2**20), "file size limit (ulimit -f)"),
        tmp_path / "fs" / "out.bin": (limit_fsize(2**20), "file size limit (ulimit -f)"),
        tmp_path / "fs" / "outdir": (limit_fsize(2**20), "file size limit (ulimit -f)"),
        ro / "out.safetensors": (read_only_for_root, "permission denied; choose a writable -o"),
    }
    (tmp_path / "fs").mkdir()
    try:
        procs = {
            out: cli("apply", str(src), "-r", "a.weight=zeros", "-o", str(out), "-q", preexec=pre)
            for out, (pre, _) in cases.items()
        }
        errs = {out: p.communicate(timeout=120)[1] for out, p in procs.items()}
    finally:
        ro.chmod(0o755)
    for out, (_, why) in cases.items():
        err = errs[out]
        assert procs[out].returncode == 1, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"error: {out}") and ": cannot write: " in lines[0], lines[0]
        assert why in lines[0], lines[0]
    assert list((tmp_path / "fs").iterdir()) == [] and list(ro.iterdir()) == []
    assert digest(src) == snapshot and not temporaries(tmp_path)


# --- subprocess: Ctrl-C and SIGTERM mid-write -------------------------------------------


def test_signal_mid_write(tmp_path):
    """SIGINT and SIGTERM while the output is being written (the temporary exists): exit 130,
    no output, no temporary, the source unchanged; also for --in-place."""
    cases = [
        ("sigint-file", signal.SIGINT, "out.safetensors"),
        ("sigterm-dir", signal.SIGTERM, "outdir"),
        ("sigint-in-place", signal.SIGINT, None),
    ]
    # a.weight is copied first; orthogonal on the large big.weight then keeps the writer busy
    rules = ["-r", "big.weight=orthogonal", "-q"]
    procs, snapshots = {}, {}
    for label, _sig, out_name in cases:
        d = tmp_path / label
        d.mkdir()
        src = model(d, 16)
        snapshots[label] = digest(src)
        target = ["--in-place"] if out_name is None else ["-o", str(d / out_name)]
        procs[label] = cli("apply", str(src), *rules, *target)
    deadline = time.monotonic() + 90
    pending = {label: sig for label, sig, _ in cases}
    while pending:
        for label in list(pending):
            p = procs[label]
            assert p.poll() is None, (label, p.communicate())
            if written(tmp_path / label) > 2**20:  # the output is part-written
                p.send_signal(pending.pop(label))
        assert time.monotonic() < deadline, f"never started writing: {sorted(pending)}"
        time.sleep(0.005)
    for label, _sig, _out in cases:
        p = procs[label]
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, (label, p.returncode, err)
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            "error: interrupted; no partial output was left behind"
        )
        d = tmp_path / label
        assert sorted(x.name for x in d.iterdir()) == ["model.safetensors"], label
        assert digest(d / "model.safetensors") == snapshots[label], label


def test_signal_mid_write_of_reinit_new(tmp_path):
    """`reinit new` of a ~58 MB Llama into a folder (written with direct I/O where tmp_path
    takes it: the writer's thread busy with one staging buffer while the next fills), sent
    SIGTERM or SIGINT once the output is part-written: exit 130, one line, no output and no
    temporary, the config untouched."""
    from transformers import LlamaConfig

    config = tmp_path / "cfg"
    LlamaConfig(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(config)
    snapshot = digest(config)
    rules = ["-r", "*mlp*.weight=orthogonal", "-q"]
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        (tmp_path / sig.name).mkdir()
        procs[sig] = cli("new", str(config), "-o", str(tmp_path / sig.name / "out"), *rules)
    deadline = time.monotonic() + 90
    pending = set(procs)
    while pending:
        for sig in list(pending):
            assert procs[sig].poll() is None, procs[sig].communicate()
            if written(tmp_path / sig.name) > 2**20:  # the output is part-written
                procs[sig].send_signal(sig)
                pending.remove(sig)
        assert time.monotonic() < deadline, f"never started writing: {pending}"
        time.sleep(0.002)
    for sig, p in procs.items():
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, (sig, p.returncode, err)
        assert err.strip().splitlines() == ["error: interrupted; no partial output was left behind"]
        assert list((tmp_path / sig.name).iterdir()) == [], sig
    assert digest(config) == snapshot


def test_errno_messages():
    from reinit.io.writer import write_error

    assert "disk is full" in str(write_error("x", OSError(errno.ENOSPC, "No space")))
    assert "ulimit -f" in str(write_error("x", OSError(errno.EFBIG, "File too large")))
    assert "read-only file system" in str(write_error("x", OSError(errno.EROFS, "Read-only")))


def test_signals_are_held_while_publishing():
    """A Ctrl-C inside the publish step is delivered after it, not in the middle."""
    from reinit.io.signals import signals_deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):  # noqa: SIM117
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("finished")
    assert steps == ["finished"]
