"""`reinit apply` of a plain copy or transplant of same-dtype safetensors bytes never loads torch
(issue 28, item 4): its modules still `import torch`, but bind a deferred module that loads only
when the run first computes (a draw, a cast, a torch file, `--model`). The outputs are those the
run writes with torch loaded, byte for byte.

Internal: also tests reinit.lazy (`defer_import`), reinit.io.formats (dtype names).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests.helpers import HANG_BOUND_S, child_env, run

transformers = pytest.importorskip("transformers")

PROGRAM = "import runpy; runpy.run_module('reinit', run_name='__main__', alter_sys=True)\n"

# at exit (the CLI runs its exit handlers before it ends), whether torch was loaded
MARK_TORCH = (
    "import atexit\n"
    "def _mark():\n"
    "    from reinit.lazy import is_loaded\n"
    "    subs = sorted(m for m in sys.modules if m.startswith('torch.'))\n"
    "    open('torch_loaded', 'w').write(str(is_loaded('torch') or bool(subs)))\n"
    "atexit.register(_mark)\n"
)


def child(cwd: Path, *args: str) -> bool:
    """`reinit ARGS` as users run it, in a child process; whether it loaded torch."""
    return child_output(cwd, *args)[0]


def child_output(cwd: Path, *args: str) -> tuple[bool, str]:
    """`reinit ARGS` in a child process: whether it loaded torch, and its stdout."""
    code = f"import sys\nsys.argv = ['reinit', *{list(args)!r}]\n{MARK_TORCH}{PROGRAM}"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=cwd,
        timeout=HANG_BOUND_S,
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return (cwd / "torch_loaded").read_text() == "True", res.stdout


def llama(path: Path, seed: int, dtype: torch.dtype) -> Path:
    """A tiny Llama, saved as transformers saves it (one safetensors file)."""
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).to(dtype).save_pretrained(path)
    return path / "model.safetensors"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    return llama(root / "a", 0, torch.bfloat16), llama(root / "b", 1, torch.bfloat16)


def without_timing(path: Path) -> dict[str, object]:
    doc = json.loads(path.read_text())
    del doc["summary"]["seconds"]
    return doc


def child_then_with_torch(tmp_path: Path, args: list[str]) -> bool:
    """Run `args` (whose output is tmp_path/out.safetensors) in a child, then in this process
    (torch loaded) to the same path: the outputs agree byte for byte, and so do the reports but
    for the run's duration. Returns whether the child loaded torch."""
    loaded = child(tmp_path, *args)
    out, report = tmp_path / "out.safetensors", tmp_path / "out.report.json"
    theirs, their_report = out.read_bytes(), without_timing(report)
    out.unlink()
    report.unlink()
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == theirs
    assert without_timing(report) == their_report
    return loaded


@pytest.mark.parametrize(
    "rules, loads",
    [
        (["--rule", "*=from({b})"], False),  # a full transplant
        (["--rule", "model.layers.*.mlp.*=from({b})"], False),  # some transplanted, rest copied
        (["--rule", "nothing.*=zeros", "--allow-unmatched"], False),  # a plain copy
        (["--rule", "*=keep"], False),
        (["--rule", "*=from({b})", "--checksums"], False),  # kept bytes read and hashed
        (["--rule", "*.mlp.down_proj.weight=kaiming_normal"], True),  # a draw
        (["--rule", "*=from({b})", "--dtype", "float16"], True),  # a cast
    ],
)
def test_torch_loads_only_when_the_run_computes(pair, tmp_path, rules, loads):
    """A plain copy or transplant never loads torch; a draw or a cast loads it when it first
    computes. Either way the bytes and report equal a run with torch loaded."""
    a, b = pair
    args = [
        "apply",
        str(a),
        *(r.format(b=b) for r in rules),
        "-o",
        str(tmp_path / "out.safetensors"),
    ]
    assert child_then_with_torch(tmp_path, args) is loads


def test_a_transplant_across_dtypes_loads_torch(tmp_path):
    """The source is bfloat16, OTHER float32: the transplant casts, so it computes."""
    a = llama(tmp_path / "a", 0, torch.bfloat16)
    b = llama(tmp_path / "b", 1, torch.float32)
    args = ["apply", str(a), "--rule", f"*=from({b})", "-o", str(tmp_path / "out.safetensors")]
    assert child_then_with_torch(tmp_path, args) is True


@pytest.mark.parametrize(
    "extra",
    [
        ["--rule", "*=from({b})"],  # the terminal view of the plan
        ["--rule", "model.layers.*.mlp.*=from({b})", "--json", "--all"],  # its JSON
        ["--rule", "*=keep", "--by", "tensor", "--all"],  # every tensor's row
        ["--rule", "*.mlp.down_proj.weight=kaiming_normal"],  # a draw planned, not drawn
    ],
)
def test_a_dry_run_never_loads_torch(pair, tmp_path, extra):
    """`--dry-run` plans as the run does and shows each tensor's dtype by name: no torch
    (planning a draw checks the scheme against the dtype by its name), and the same text as
    with torch loaded."""
    a, b = pair
    args = ["apply", str(a), *(e.format(b=b) for e in extra), "--dry-run"]
    loaded, out = child_output(tmp_path, *args)
    res = run(*args)
    assert res.exit_code == 0 and "plan" in res.output
    assert res.stdout == out
    assert loaded is False


@pytest.mark.parametrize(
    "rule",
    [
        "*.mlp.down_proj.weight=zeros",  # torch first used by the draw, on the compute thread
        "*.mlp.down_proj.weight=from({c})",  # by the cast, on the compute thread
    ],
)
def test_a_torch_that_cannot_load_is_one_error_line_where_the_run_first_needs_it(
    pair, tmp_path, rule
):
    """An install whose torch fails to import (a shared library missing): a run that needs
    torch ends with one line saying so (exit 1, nothing written), not an internal error; a
    plain copy still works."""
    a, b = pair
    c = llama(tmp_path / "c", 2, torch.float32)
    broken = tmp_path / "broken" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise ImportError("libtorch_cpu.so: cannot open shared object file")\n'
    )
    env = child_env()
    env["PYTHONPATH"] = f"{broken.parent}:{env['PYTHONPATH']}"
    out = tmp_path / "out.safetensors"

    def reinit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reinit", "apply", str(a), *args, "-o", str(out), "-q"],
            capture_output=True,
            text=True,
            env=env,
            timeout=HANG_BOUND_S,
        )

    res = reinit("--rule", rule.format(c=c))
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == (
        "error: torch cannot be loaded (libtorch_cpu.so: cannot open shared object file); "
        "reinstall it (pip install torch)"
    )
    assert not out.exists()
    assert reinit("--rule", f"*=from({b})").returncode == 0 and out.exists()


# --- the deferred module itself --------------------------------------------------------------

SLOW = """
import sys, time
sys.modules["slowcount"].runs += 1
time.sleep(0.3)
from slowpkg import sub
VALUE = 42
"""
SUB = """
import sys
sys.modules["slowcount"].subs += 1
"""


@pytest.fixture
def slowpkg(tmp_path, monkeypatch):
    """A package whose import takes 0.3 s and counts its runs (in `slowcount.runs`)."""
    (tmp_path / "slowpkg").mkdir()
    (tmp_path / "slowpkg" / "__init__.py").write_text(SLOW)
    (tmp_path / "slowpkg" / "sub.py").write_text(SUB)
    counter = type(sys)("slowcount")
    counter.runs = counter.subs = 0
    monkeypatch.setitem(sys.modules, "slowcount", counter)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield counter
    sys.modules.pop("slowpkg", None)
    sys.modules.pop("slowpkg.sub", None)


def test_a_deferred_package_runs_once_on_first_use_whole_for_every_thread(slowpkg):
    from reinit.lazy import defer_import, is_loaded

    entered: list[str] = []

    @contextlib.contextmanager
    def around():
        entered.append("in")
        yield

    defer_import("slowpkg", around)
    import slowpkg  # binds it: nothing runs

    assert slowpkg.__spec__ is not None and slowpkg.__spec__.name == "slowpkg"
    assert slowpkg_runs(slowpkg) == 0 and not is_loaded("slowpkg") and entered == []
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(slowpkg.VALUE)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [42] * 4  # no thread saw it half run
    assert slowpkg_runs(slowpkg) == 1 and entered == ["in"] and is_loaded("slowpkg")
    assert type(sys.modules["slowpkg"]) is type(sys)  # a plain module from now on


def test_a_submodule_imported_first_runs_the_package_once_and_itself_once(slowpkg):
    """`import torch.distributed` before torch is loaded: the package runs (importing the
    submodule), and the import gets that submodule, not a second run of it (torch's C types
    registered twice abort the process)."""
    from reinit.lazy import defer_import

    defer_import("slowpkg", contextlib.nullcontext)
    import slowpkg.sub

    assert (slowpkg.sub.__name__, slowpkg.VALUE) == ("slowpkg.sub", 42)
    assert (slowpkg_runs(slowpkg), sys.modules["slowcount"].subs) == (1, 1)
    assert slowpkg.sub.__spec__.origin.endswith("sub.py")  # its own spec, as imported


THREADS = """
import importlib.abc, sys, threading
from reinit.cli.common import defer_torch
defer_torch()
import torch
started, out = threading.Event(), []
class Hook(importlib.abc.MetaPathFinder):  # torch's load has begun (on thread A)
    def find_spec(self, name, path, target=None):
        if name == "torch._C":
            sys.meta_path.remove(self)
            started.set()
        return None
sys.meta_path.insert(0, Hook())
def a():
    out.append(str(torch.float32))
def b():
    started.wait()
    import torch.nn.functional as F
    out.append(F.relu(torch.tensor([-1.0, 2.0])).tolist())
threads = [threading.Thread(target=f, daemon=True) for f in (a, b)]
for t in threads:
    t.start()
for t in threads:
    t.join(30)
print(sorted(map(str, out)))
sys.stdout.flush()
import os
os._exit(0 if len(out) == 2 else 3)
"""


def test_torch_loading_on_one_thread_while_another_imports_torch_nn(tmp_path):
    """Torch itself: thread A's first use loads it while thread B imports `torch.nn.functional`
    (as a worker's lazy import would): both finish, and torch works."""
    res = subprocess.run(
        [sys.executable, "-c", THREADS],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=HANG_BOUND_S,
    )
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.strip() == "['[0.0, 2.0]', 'torch.float32']"


def test_an_interrupt_just_after_the_lock_is_taken_gives_it_back(slowpkg, monkeypatch):
    """A Ctrl-C's KeyboardInterrupt raised as the lock's acquire returns (Python runs signal
    handlers there): the lock is released, so a later read (any thread's) still loads it."""
    import reinit.lazy as lazy

    real = lazy._LOCK

    class Interrupted:
        def acquire(self, *args: object, **kwargs: object) -> bool:
            assert real.acquire(*args, **kwargs)
            raise KeyboardInterrupt

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    lazy.defer_import("slowpkg", contextlib.nullcontext)
    import slowpkg

    monkeypatch.setattr(lazy, "_LOCK", Interrupted())
    with pytest.raises(KeyboardInterrupt):
        slowpkg.VALUE  # noqa: B018
    monkeypatch.setattr(lazy, "_LOCK", real)
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(slowpkg.VALUE), daemon=True)
    t.start()
    t.join(HANG_BOUND_S)
    assert seen == [42] and slowpkg_runs(slowpkg) == 1


def test_find_spec_of_a_submodule_says_where_it_is(slowpkg):
    """`importlib.util.find_spec("torch.nn")` while torch is deferred (third-party code asks
    it): it loads the package, and says where the submodule is, as without the deferral."""
    from reinit.lazy import defer_import

    defer_import("slowpkg", contextlib.nullcontext)
    spec = importlib.util.find_spec("slowpkg.sub")
    assert spec is not None and spec.origin is not None and spec.origin.endswith("sub.py")
    assert spec.submodule_search_locations is None and spec.has_location
    assert spec.loader_state is sys.modules["slowpkg.sub"].__spec__
    assert (slowpkg_runs(slowpkg), sys.modules["slowcount"].subs) == (1, 1)


def slowpkg_runs(_: object) -> int:
    return int(sys.modules["slowcount"].runs)


def test_a_package_already_imported_is_left_as_it_is():
    from reinit.lazy import defer_import, is_loaded

    before = sys.modules["json"]
    defer_import("json", contextlib.nullcontext)
    assert sys.modules["json"] is before and is_loaded("json")


def test_dtype_names_agree_with_torch():
    """What a plan of names says without torch is what torch says of the dtype."""
    from reinit.io.formats import dtype_size, float_max, is_float_name, name_size, torch_dtype
    from reinit.io.formats._safetensors_format import code_dtypes

    for dtype in code_dtypes().values():
        name = str(dtype).removeprefix("torch.")
        assert torch_dtype(name) is dtype
        assert is_float_name(name) is dtype.is_floating_point, name
        assert name_size(name) == dtype_size(dtype), name
        top = float_max(name)
        assert top == (torch.finfo(dtype).max if dtype.is_floating_point else None), name


def test_a_submodule_imported_while_another_thread_runs_the_package_does_not_deadlock(slowpkg):
    """Thread A reads an attribute (so runs the package, whose code imports `slowpkg.sub`)
    while thread B imports `slowpkg.sub`: B holds that module's import lock and reads the
    package's `__path__`. Waiting for A there never ended (A waits for B's import lock); B
    reads the package as it stands instead, as the import system does in a concurrent
    circular import, and both finish with the one module each."""
    from reinit.lazy import defer_import

    defer_import("slowpkg", contextlib.nullcontext)
    import slowpkg

    seen: dict[str, object] = {}

    def a() -> None:
        seen["a"] = slowpkg.VALUE

    def b() -> None:
        while not slowpkg_runs(slowpkg):  # A is running the package (asleep in its code)
            pass
        seen["b"] = importlib.import_module("slowpkg.sub").__name__  # `import slowpkg.sub`

    threads = [threading.Thread(target=f, daemon=True) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_BOUND_S)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert seen == {"a": 42, "b": "slowpkg.sub"}
    assert (slowpkg_runs(slowpkg), sys.modules["slowcount"].subs) == (1, 1)


GC_AROUND_LOAD = """
import gc, sys
from reinit.cli.common import defer_torch
from reinit.lazy import is_loaded
defer_torch()
import torch
during = []  # collections that started on their own while torch loaded
def seen(phase, info):
    if phase == "start" and gc.isenabled() and not is_loaded("torch"):
        during.append(info["generation"])
frozen = gc.get_freeze_count()
gc.collect()  # counts at 0: the few objects made before the load starts set off none
gc.callbacks.append(seen)
torch.zeros(1)  # the first use loads it
print(len(during), gc.isenabled(), gc.get_freeze_count() - frozen > 10_000)
"""


def test_the_collector_is_off_while_torch_loads_and_torch_is_frozen_out_of_it_after():
    """Deferred torch loads with the cyclic collector paused (no collection starts on its own
    during the ~10^5 objects it makes; the code before: 351) and is then frozen out of later
    collections; the collector is on again after (a collection may start as soon as it is)."""
    res = subprocess.run(
        [sys.executable, "-c", GC_AROUND_LOAD], capture_output=True, text=True, env=child_env()
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "True", "True"]


def test_gc_paused_restores_the_collector_and_freezes_only_on_success():
    import gc

    from reinit.lazy import gc_paused

    assert gc.isenabled()
    before = gc.get_freeze_count()
    with pytest.raises(RuntimeError), gc_paused(freeze=True):
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled() and gc.get_freeze_count() == before
    try:
        with gc_paused(freeze=True):
            kept = [[] for _ in range(100)]
        assert gc.isenabled() and gc.get_freeze_count() >= before + 100
    finally:
        gc.unfreeze()
    del kept
