"""A SIGTERM (or Ctrl-C) that arrives after the output was published does not make the job look
killed (issue #23 M7): the `reinit` program exits 0 with every output complete, whether the
signal lands after the command returned or during interpreter teardown (exit 143 before: the
group restored SIG_DFL on its way out)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch
from helpers import child_env
from safetensors.torch import load_file, save_file

# Runs the real program entry (`main()` reading sys.argv) with a signal sent to itself at one
# point after the command published its output.
WRAPPER = """
import atexit, os, signal, sys
import reinit.cli.group as group
when, sig = sys.argv[1], getattr(signal, sys.argv[2])
def kill():
    os.kill(os.getpid(), sig)
if when == "returned":
    invoke = group.ReinitGroup.invoke
    def after(self, ctx):
        rv = invoke(self, ctx)
        kill()
        return rv
    group.ReinitGroup.invoke = after
else:
    atexit.register(kill)
sys.argv = ["reinit", *sys.argv[3:]]
from reinit.cli import main
main()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("when", ["returned", "teardown"])
def test_a_signal_after_publication_exits_0_with_the_output(tmp_path, when, sig):
    src, out = tmp_path / "m.safetensors", tmp_path / "o.safetensors"
    save_file({"a.weight": torch.randn(8, 8)}, src)
    args = ["apply", str(src), "-o", str(out), "-r", "a.weight=zeros", "-q"]
    p = subprocess.run(
        [sys.executable, "-c", WRAPPER, when, sig, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert p.returncode == 0, (p.returncode, -signal.SIGTERM, p.stderr)
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    assert not load_file(out)["a.weight"].any()
    assert (tmp_path / "o.report.json").is_file()
    if when == "returned":
        assert "interrupted after the output was published" in p.stderr, p.stderr
