"""Lazy exports for a package `__init__` (PEP 562): a name loads its own private module on first
use, so importing `reinit.io.formats` does not import torch and `reinit.report.views` does not
import matplotlib. The modules named are fixed in the package's own `_WHERE` table, never taken
from a file or an argument."""

from __future__ import annotations

__all__ = ["lazy_exports"]

import importlib
from collections.abc import Callable, Mapping
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
