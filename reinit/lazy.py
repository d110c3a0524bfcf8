"""Lazy exports for a package `__init__` (PEP 562): a name loads its own private module on first
use, so importing `reinit.io.formats` does not import torch and `reinit.report.views` does not
import matplotlib. The modules named are fixed in the package's own `_WHERE` table, never taken
from a file or an argument. And a deferred package (`defer_import`): torch bound by every
`import torch` but loaded only when a run first uses it, so `reinit apply` of a plain copy
never loads it."""

from __future__ import annotations

__all__ = ["defer_import", "gc_paused", "is_loaded", "lazy_exports"]

import contextlib
import gc
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any


def lazy_exports(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's `__getattr__` and `__dir__`: `where` maps each exported name to the
    private module (relative to `package`) that defines it; a loaded name is cached in
    `namespace` (the package's globals); `__dir__` lists `namespace["__all__"]`."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{where[name]}")  # reviewed: own table
        value = getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(namespace["__all__"])

    return __getattr__, __dir__


class _Deferred(types.ModuleType):
    """A module found but not yet run: the first look at any attribute other than `__spec__`
    runs it, in place, under the lock (one thread runs it, any other waits for the whole
    module) and inside `around()`; then the object is a plain module. `__spec__` answers
    without running it, so `import torch` elsewhere (which reads it) binds the same object and
    loads nothing."""

    def __getattribute__(self, attr: str) -> Any:
        if attr != "__spec__" and _acquire(self):
            try:
                if type(self) is _Deferred and id(self) not in _RUNNING:
                    _run(self)
            finally:
                _LOCK.release()
        return types.ModuleType.__getattribute__(self, attr)


_LOCK = threading.RLock()  # the module's own code re-enters it while it runs
_RUNNING: set[int] = set()  # modules whose code is running (their reads pass straight through)
_RUNNER: dict[int, int] = {}  # the thread running each of them
_AROUND: dict[str, Callable[[], AbstractContextManager[object]]] = {}
_POLL_S = 0.05  # how often a thread waiting for the lock looks for a deadlock


def _acquire(module: types.ModuleType) -> bool:
    """Take `_LOCK`; or, when the thread running `module` waits on an import lock this thread
    holds, give up (False) and read the module as it stands, as the import system does in a
    concurrent circular import. Waiting would never end: thread B imports `torch.nn` (holding
    that module's import lock) and reads `torch.__path__` while thread A runs torch, whose
    code imports `torch.nn` and so waits for B."""
    me = threading.get_ident()
    owned = _is_owned()  # re-entered (the running module's own reads): never waits
    try:
        while not _LOCK.acquire(blocking=False):
            runner = _RUNNER.get(id(module))
            if runner is not None and _waits_on(runner, me):
                return False
            if _LOCK.acquire(timeout=_POLL_S):
                break
        return True
    except BaseException:  # a signal's exception right after the lock was taken: give it back
        if not owned and _is_owned():
            _LOCK.release()
        raise


def _is_owned() -> bool:
    """Whether this thread holds `_LOCK` (an RLock says so; the typing stubs leave it out)."""
    return bool(_LOCK._is_owned())  # type: ignore[attr-defined]


def _waits_on(tid: int, holder: int) -> bool:
    """Whether thread `tid` waits, directly or through other threads, for an import lock
    (`importlib._bootstrap._blocking_on`, which the import system keeps for its own deadlock
    check: one lock per thread up to 3.11, a list of them since 3.12) that `holder` owns."""
    from importlib import _bootstrap

    blocking = getattr(_bootstrap, "_blocking_on", None)
    seen: set[int] = set()
    todo = [tid]
    while blocking is not None and todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        locks = blocking.get(t)
        for lock in locks if isinstance(locks, list) else [locks] if locks is not None else []:
            owner = getattr(lock, "owner", None)
            if owner == holder:
                return True
            if owner is not None:
                todo.append(owner)
    return False


def _run(module: types.ModuleType) -> None:
    spec = object.__getattribute__(module, "__spec__")
    assert spec is not None and spec.loader is not None
    _RUNNING.add(id(module))
    _RUNNER[id(module)] = threading.get_ident()
    with _AROUND[spec.name]():  # a signal it holds is raised on leaving: the module is done
        try:
            spec.loader.exec_module(module)
        except BaseException:
            if sys.modules.get(spec.name) is module:  # as a failed import leaves it: not there
                del sys.modules[spec.name]
            raise
        finally:  # run once, whatever happened: never again on a later read
            _RUNNING.discard(id(module))
            _RUNNER.pop(id(module), None)
            module.__class__ = types.ModuleType


class _AlreadyRun(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import torch.distributed` while torch is deferred: the import system has checked that
    `torch.distributed` is not loaded, then reads `torch.__path__`, which runs torch, which
    imports `torch.distributed`; left alone, the import would then run that module's code a
    second time (a C extension's types registered twice abort the process). This finder, first
    on `sys.meta_path`, hands that import the module the load made. It answers only for a
    submodule of a deferred package that is already in `sys.modules` and not being reloaded
    (`importlib.reload` passes `target`), which the import system asks only in that case (and
    `importlib.util.find_spec`, after loading the package: its answer has the module's own
    origin and search path)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        module = sys.modules.get(fullname)
        if target is not None or module is None or fullname.partition(".")[0] not in _AROUND:
            return None
        real = module.__spec__
        if real is None:
            return importlib.machinery.ModuleSpec(fullname, self)
        # where it is, as `importlib.util.find_spec("torch.nn")` (which loads torch) answers
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=real.origin, loader_state=real)
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return sys.modules[spec.name]

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None
        module.__spec__ = spec.loader_state  # its own spec back (the import system set ours)


def defer_import(name: str, around: Callable[[], AbstractContextManager[object]]) -> None:
    """Put `name` (a top-level package that is installed but not imported) in `sys.modules`
    unloaded: modules that `import` it bind it at no cost, and it loads (whole, inside
    `around()`, e.g. with signals held) the first time anything reads one of its attributes.
    A package already imported, or not installed, is left as it is (the import then fails
    where it is used, as it would have).

    Why: `reinit apply` of a plain copy needs no torch, but ~40 modules `import torch` at the
    top for the paths that do (the stdlib's `importlib.util.LazyLoader` does this too, but
    loads on `__spec__` and, before Python 3.12, not thread-safely)."""
    with _LOCK:
        if name in sys.modules:
            return
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        _AROUND[name] = around
        module.__class__ = _Deferred
        if not any(isinstance(f, _AlreadyRun) for f in sys.meta_path):
            sys.meta_path.insert(0, _AlreadyRun())
        sys.modules[name] = module


def is_loaded(name: str) -> bool:
    """Whether `name` has been imported and run (False while `defer_import` holds it)."""
    module = sys.modules.get(name)
    return module is not None and type(module) is not _Deferred


@contextlib.contextmanager
def gc_paused(freeze: bool = False) -> Iterator[None]:
    """Python's cyclic garbage collector off while a big package is imported (torch: ~0.1 of
    its ~0.85 CPU-s here; transformers, and a model built on the meta device: ~10^6 long-lived
    objects, about a CPU-second of `reinit new`'s start), the caller's setting restored after.
    With `freeze`, what exists when the block ends successfully is frozen out of later
    collections (`gc.freeze`: the `reinit` command's choice for the modules it loads, which
    live as long as the process)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if was:
            gc.enable()
