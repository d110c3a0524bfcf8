"""The statistics worker (`run.ahead`): a second process sums a local safetensors source while
the CLI imports torch. Its numbers must be exactly the engine's own (same cut, same kernel),
and anything that makes them doubtful (the worker killed, the file replaced, a hostile
header) must leave the run as it is without it: same output bytes, same report.

Internal: also tests reinit.run.ahead, reinit.io.checkpoint and reinit.report.stats directly
(not the `reinit` API).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import reinit
from reinit.io.checkpoint import CHUNK_BYTES
from reinit.io.formats import SafetensorsFile
from reinit.report.stats import StatsAccumulator
from reinit.run import ahead
from tests.helpers import child_env, run_child, write_safetensors, write_two_shards

RULES = ["*.down.weight=kaiming_normal", "ln.weight=ones"]


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Kept and re-initialized tensors of several dtypes, NaN/Inf among them, one over a chunk
    (read and summed in two pieces), and the LayerNorm-like values the pivot is for."""
    g = torch.Generator().manual_seed(seed)
    bad = torch.randn(40, 30, generator=g)
    bad[0, 0], bad[3, 4] = math.nan, math.inf
    return {
        "a.down.weight": torch.randn(64, 48, generator=g).bfloat16(),
        "a.up.weight": torch.randn(48, 64, generator=g).half(),
        "b.down.weight": torch.randn(64, 48, generator=g),
        "big.weight": torch.randn(CHUNK_BYTES // 2 + 4099, generator=g).bfloat16(),
        "bad.weight": bad.bfloat16(),
        "fp8.weight": (torch.randn(33, 17, generator=g) * 0.5).to(torch.float8_e4m3fn),
        "ids": torch.randint(0, 100, (6, 11), generator=g),
        "ln.weight": 1 + 0.01 * torch.randn(4096, generator=g),
    }


def comparable(report_path: Path) -> dict:
    doc = json.loads(report_path.read_text())
    doc["summary"].pop("seconds")
    return doc


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "model.safetensors", tensors())


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start a worker whatever the source's size and the machine's CPUs."""
    monkeypatch.setenv(ahead.ENV, "1")


def applied(source: Path, out: Path) -> tuple[bytes, dict]:
    reinit.apply(source, RULES, out, seed=3)
    return out.read_bytes(), comparable(out.with_name(out.stem + ".report.json"))


def test_worker_gives_exactly_the_engines_numbers(src, forced):
    with ahead.stats_ahead(src) as worker:
        assert worker is not None
        f = SafetensorsFile(src)
        try:
            for t in f.file_tensors():
                acc = StatsAccumulator(t.info.code)
                for chunk in f.iter_chunks(t.info.name, CHUNK_BYTES):
                    acc.add_bytes(chunk)
                got = worker.stats(f.fd, t.info.start, t.info.nbytes, t.info.code)
                assert got is not None, t.info.name
                want = acc.result()
                assert repr(got) == repr(want), t.info.name  # bit for bit, NaN fields included
        finally:
            f.close()
    assert worker.proc.returncode is not None  # stopped and reaped with the block


def test_apply_with_the_worker_equals_apply_without(src, tmp_path, forced, monkeypatch):
    with ahead.stats_ahead(src) as worker:
        data, report = applied(src, tmp_path / "with.safetensors")
    assert worker is not None and worker.served == len(tensors())  # every source tensor
    monkeypatch.setenv(ahead.ENV, "0")
    with ahead.stats_ahead(src) as none:
        assert none is None
        data0, report0 = applied(src, tmp_path / "without.safetensors")
    assert data == data0
    report["output"] = report0["output"]
    assert report == report0


def test_a_folder_of_shards(tmp_path, forced, monkeypatch):
    d = _shards(tmp_path)
    t = tensors()
    with ahead.stats_ahead(d) as worker:
        reinit.apply(d, RULES, tmp_path / "with", seed=3)
    assert worker is not None and worker.served == len(t)
    monkeypatch.setenv(ahead.ENV, "0")
    reinit.apply(d, RULES, tmp_path / "without", seed=3)
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert (tmp_path / "with" / shard).read_bytes() == (
            tmp_path / "without" / shard
        ).read_bytes()
    with_report = comparable(tmp_path / "with" / "reinit-report.json")
    without = comparable(tmp_path / "without" / "reinit-report.json")
    with_report["output"] = without["output"]
    assert with_report == without


def test_a_killed_worker_leaves_the_run_as_it_is(src, tmp_path, forced, monkeypatch):
    with ahead.stats_ahead(src) as worker:
        assert worker is not None
        worker.proc.kill()
        worker.proc.wait()
        data, report = applied(src, tmp_path / "with.safetensors")
    assert worker.served == 0
    monkeypatch.setenv(ahead.ENV, "0")
    data0, report0 = applied(src, tmp_path / "without.safetensors")
    assert data == data0
    report["output"] = report0["output"]
    assert report == report0


def test_a_file_replaced_after_the_worker_read_it_is_not_trusted(
    src, tmp_path, forced, monkeypatch
):
    with ahead.stats_ahead(src) as worker:
        assert worker is not None
        worker.stats(0, 0, 0, "F32")  # waits for its list of tensors (and asks for none)
        while len(worker._results) < len(tensors()):  # it has summed the old file whole
            time.sleep(0.01)
        # same names, shapes and so offsets; other values; a new inode at the same path
        new = write_safetensors(tmp_path / "new.safetensors", tensors(seed=1))
        os.replace(new, src)
        data, report = applied(src, tmp_path / "with.safetensors")
    assert worker.served == 0
    monkeypatch.setenv(ahead.ENV, "0")
    data0, report0 = applied(src, tmp_path / "without.safetensors")
    assert data == data0
    report["output"] = report0["output"]
    assert report == report0


def test_the_worker_stays_within_its_lead(src):
    """Never more than `lead` bytes past the furthest tensor asked for (here 1 byte: the
    tensor after it at most)."""
    worker = ahead.StatsAhead(src, lead=1)
    try:
        f = SafetensorsFile(src)
        order = sorted(f.file_tensors(), key=lambda t: t.info.start)
        first = order[0].info
        assert worker.stats(f.fd, first.start, first.nbytes, first.code) is not None
        time.sleep(0.5)
        with worker._cond:
            assert max(worker._results, default=0) <= 1  # asked 0: may have summed 1, not 2
        t3 = order[3].info
        assert worker.stats(f.fd, t3.start, t3.nbytes, t3.code) is not None
        time.sleep(0.5)
        with worker._cond:
            assert max(worker._results) <= 4
        f.close()
    finally:
        worker.close()


def test_small_sources_one_cpu_and_the_switch(tmp_path, monkeypatch):
    small = write_safetensors(tmp_path / "s.safetensors", {"w": torch.zeros(4)})
    monkeypatch.delenv(ahead.ENV, raising=False)
    assert ahead.wanted(small) is None  # under MIN_SOURCE_BYTES
    monkeypatch.setattr(ahead, "MIN_SOURCE_BYTES", 0)
    assert ahead.wanted(small) == small.resolve()
    monkeypatch.setattr(ahead, "_cpus", lambda: 1)
    assert ahead.wanted(small) is None
    monkeypatch.setenv(ahead.ENV, "1")
    assert ahead.wanted(small) == small.resolve()
    monkeypatch.setenv(ahead.ENV, "0")
    assert ahead.wanted(small) is None
    monkeypatch.setenv(ahead.ENV, "1")
    assert ahead.wanted("hf://owner/name") is None
    assert ahead.wanted(tmp_path / "missing.safetensors") is None


def test_cli_with_the_worker_never_imports_from_the_current_directory(src, tmp_path):
    """A `numpy.py` where the user stands is not imported by the worker (nor by reinit)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "ran"
    (cwd / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    out = tmp_path / "cli.safetensors"
    script = Path(sys.executable).with_name("reinit")  # as users run it (not `python -m`,
    assert script.exists(), script  # which puts the current directory first on sys.path)
    res = subprocess.run(
        [script, "apply", src, "-o", out, "--rule", RULES[0], "--rule", RULES[1], "--seed", "3"],
        cwd=cwd, env=child_env(**{ahead.ENV: "1"}), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    data0, _ = applied(src, tmp_path / "api.safetensors")
    assert out.read_bytes() == data0


def test_a_hostile_header_is_refused_the_same_with_the_worker(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    runs = [
        run_child("apply", bad, "--rule", "*=zeros", env=child_env(**{ahead.ENV: mode}))
        for mode in ("1", "0")
    ]
    assert runs[0].returncode == runs[1].returncode == 1  # a corrupt source: exit 1
    assert runs[0].stderr == runs[1].stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bad.safetensors"]


@pytest.mark.parametrize(
    ("name", "ours"),
    [("OPENBLAS_NUM_THREADS", "1"), ("OMP_WAIT_POLICY", "PASSIVE"), ("THP_MEM_ALLOC_ENABLE", "1")],
)
def test_the_command_sets_thread_defaults_the_user_can_override(name, ours):
    """The `reinit` command sets these before numpy and torch load; a value the user set wins."""
    code = f"import os, reinit.cli; print(os.environ.get({name!r}))"
    env = child_env()
    env.pop(name, None)
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == ours, got.stderr
    env[name] = "7"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "7", got.stderr
    plain = f"import os, reinit; print(os.environ.get({name!r}))"  # the API leaves it alone
    env.pop(name)
    got = subprocess.run([sys.executable, "-c", plain], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "None", got.stderr


class Recorded(ahead.StatsAhead):
    """A worker that records itself (and, with `kill`, is killed as soon as it starts)."""

    made: list[ahead.StatsAhead] = []
    kill = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Recorded.made.append(self)
        if Recorded.kill:
            self.proc.kill()


@pytest.mark.parametrize("kill", [False, True])
@pytest.mark.parametrize("form", ["file", "shards"])
def test_report_shares_the_summing_with_a_worker_and_gives_the_same_report(
    kill, form, src, tmp_path, forced, monkeypatch
):
    """`reinit report` sums the second half of the bytes in the worker, the first here; a
    worker that dies leaves its half to this process. The report is the same either way."""
    from reinit.tools.audit import report_checkpoint

    path = src if form == "file" else _shards(tmp_path)
    monkeypatch.setattr(ahead, "StatsAhead", Recorded)
    monkeypatch.setattr(Recorded, "made", [])
    monkeypatch.setattr(Recorded, "kill", kill)
    shared = json.loads(report_checkpoint(path).to_json())
    (worker,) = Recorded.made
    assert worker.proc.returncode is not None  # reaped
    if kill:
        assert worker.served == 0
    else:  # the second half of the bytes: some tensors, not all
        assert 0 < worker.served < len(tensors())
    monkeypatch.setenv(ahead.ENV, "0")
    alone = json.loads(report_checkpoint(path).to_json())
    assert len(Recorded.made) == 1
    for doc in (shared, alone):
        doc["summary"].pop("seconds")
    assert shared == alone


def _shards(tmp_path: Path) -> Path:
    return write_two_shards(tmp_path / "sharded", tensors())


def test_the_worker_never_imports_torch(src):
    code = (
        "import io, os, sys\n"
        "from reinit.run import ahead\n"
        "r, w = os.pipe()\n"  # asks that stay open: the worker runs to its end
        f"ahead._serve({str(src)!r}, 1 << 60, 0, os.fdopen(r, 'rb'), io.BytesIO())\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # ~10 s: 60,000 tensors
def test_a_checkpoint_of_many_small_tensors_still_uses_the_worker(tmp_path, forced, monkeypatch):
    """The worker's list of 60,000 tensors (a line of ~1.6 MB) is read whole, not taken for a
    broken worker."""
    from reinit.tools.audit import report_checkpoint

    many = {f"t.{i}": torch.full((2,), float(i)) for i in range(60_000)}
    path = write_safetensors(tmp_path / "many.safetensors", many)
    monkeypatch.setattr(ahead, "StatsAhead", Recorded)
    monkeypatch.setattr(Recorded, "made", [])
    monkeypatch.setattr(Recorded, "kill", False)
    shared = json.loads(report_checkpoint(path).to_json())
    (worker,) = Recorded.made
    assert worker.served > 20_000
    monkeypatch.setenv(ahead.ENV, "0")
    alone = json.loads(report_checkpoint(path).to_json())
    for doc in (shared, alone):
        doc["summary"].pop("seconds")
    assert shared == alone


def test_an_interrupt_as_the_worker_starts_stops_and_reaps_it(src, forced, monkeypatch):
    """A Ctrl-C landing as the worker process has just started (before the block holds it):
    the interrupt goes on, and the worker is still killed and reaped, not left running."""
    import signal

    pids: list[int] = []

    class Signalled(ahead.StatsAhead):
        def __init__(self, *args):
            super().__init__(*args)
            pids.append(self.proc.pid)
            signal.raise_signal(signal.SIGINT)  # lands as the process has started

    monkeypatch.setattr(ahead, "StatsAhead", Signalled)
    try:
        with pytest.raises(KeyboardInterrupt), ahead.stats_ahead(src):
            pass
        assert pids
        with pytest.raises(ChildProcessError):  # reaped: no such child any more
            os.waitpid(pids[0], os.WNOHANG)
    finally:
        for pid in pids:  # the old code's leftover, so the suite does not keep it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
