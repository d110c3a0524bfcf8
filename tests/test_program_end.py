"""How the `reinit` program ends: with the exit code its outcome chose, its exit handlers run,
and an interrupt during `import torch` held until torch is loaded (raised inside torch's C++
import code it aborted the process instead of exiting 130).

Each test runs the program as users do (`python -m reinit`'s entry, in a child process), with
a few lines before it that a test needs (an exit handler, an import hook).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers import HANG_BOUND_S, child_env, run

PROGRAM = "import runpy; runpy.run_module('reinit', run_name='__main__', alter_sys=True)\n"


def program(tmp_path: Path, before: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys\nsys.argv = ['reinit', *{list(args)!r}]\n{before}\n{PROGRAM}"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=HANG_BOUND_S,
    )


def test_the_exit_code_is_the_commands_and_exit_handlers_run(tmp_path):
    mark = tmp_path / "ran"
    handler = f"import atexit\natexit.register(lambda: open({str(mark)!r}, 'w').close())"
    missing = str(tmp_path / "missing.safetensors")
    want = run("apply", missing, "--rule", "x=zeros").exit_code  # in process: the same outcome
    assert want != 0
    res = program(tmp_path, handler, "apply", missing, "--rule", "x=zeros")
    assert res.returncode == want, res.stderr
    assert mark.exists()
    mark.unlink()
    res = program(tmp_path, handler, "--version")
    assert res.returncode == 0 and "reinit" in res.stdout
    assert mark.exists()


def test_an_interrupt_during_the_torch_import_waits_for_it_and_exits_130(tmp_path):
    """SIGINT sent while torch imports (as it loads its C extension: torch is deferred, so
    this is wherever the run first uses it, here the plan of a draw): the import completes,
    then the interrupt is raised (exit 130, nothing written), not inside torch's import."""
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(4, 4)}, src)
    mark = tmp_path / "torch_loaded"
    hook = (
        "import atexit, importlib.abc, os, signal\n"
        "class Hook(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch._C':\n"
        "            sys.meta_path.remove(self)\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hook())\n"
        f"atexit.register(lambda: open({str(mark)!r}, 'w').write("
        "str(hasattr(sys.modules.get('torch'), 'Tensor'))))\n"
    )
    out = tmp_path / "out.safetensors"
    res = program(tmp_path, hook, "apply", str(src), "-o", str(out), "--rule", "*=zeros")
    assert res.returncode == 130, res.stderr
    assert "interrupted" in res.stderr and "Traceback" not in res.stderr
    assert mark.read_text() == "True"  # torch was loaded whole before the interrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "torch_loaded"]


def test_a_signal_during_the_interpreters_teardown_cannot_change_the_exit_code(tmp_path):
    """An object whose finalizer sends SIGTERM at interpreter teardown (where Python puts the
    default handlers back): the program ends before teardown, with its own exit code."""
    bomb = (
        "import os, signal, types\n"
        "class Bomb:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "holder = types.ModuleType('holder')\n"
        "holder.bomb = Bomb()\n"
        "sys.modules['holder'] = holder\n"
        "del holder\n"
    )
    res = program(tmp_path, bomb, "--version")
    assert res.returncode == 0, (res.returncode, res.stderr)


_FINALIZER_MODEL = """\
import os, signal
from torch import nn

class Interrupts:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs here: KeyboardInterrupt inside a finalizer
            pass

def build():
    Interrupts()  # dropped at once: its finalizer runs while the model is built
    return nn.Linear(4, 4)
"""


def test_an_interrupt_that_lands_in_a_finalizer_still_stops_the_run(tmp_path):
    """A Ctrl-C whose KeyboardInterrupt is raised inside a `__del__` (a garbage collection of
    `regex`'s parse trees while transformers builds a model: 2 of 25 Ctrl-Cs of `reinit new`)
    is swallowed by Python ('Exception ignored in ... KeyboardInterrupt', a traceback on
    stderr) and the run went on to publish its output with exit 0. It is raised again where
    the program runs: exit 130, one line, nothing written."""
    (tmp_path / "finalizer_model.py").write_text(_FINALIZER_MODEL)
    out = tmp_path / "out"
    res = program(tmp_path, "", "new", "finalizer_model:build", "-o", str(out), "-q")
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip() == "error: interrupted; no partial output was left behind"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__")
    assert left == ["finalizer_model.py"]
