"""The runtime dependencies pyproject.toml declares are the ones the package needs: every
third-party import in reinit/ is a declared dependency, or an extra (matplotlib, transformers)
imported lazily inside a function, so a plain `pip install .` runs every command that does not
ask for the extra. (scripts/smoke checks the same from outside, in a venv without extras.)"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).parents[1]
ALIAS = {"yaml": "pyyaml", "PIL": "pillow"}
EXTRAS = {"matplotlib": "plot", "transformers": "hf"}


def _norm(req: str) -> str:
    return re.split(r"[ <>=!~\[;]", req, maxsplit=1)[0].strip().lower().replace("-", "_")


def declared() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_norm(d) for d in meta["dependencies"]}


def third_party_imports(src: str) -> list[tuple[str, bool]]:
    """(distribution name, imported at module level?) for each non-stdlib import in `src`."""
    tree = ast.parse(src)
    top_level = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level count as module level
        for sub in ast.walk(n):
            if isinstance(sub, ast.Import | ast.ImportFrom) and not isinstance(
                n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ):
                top_level.add(id(sub))
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            mods = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            mods = [n.module]
        else:
            continue
        for m in mods:
            top = m.split(".")[0]
            if top != "reinit" and top not in sys.stdlib_module_names:
                out.append((ALIAS.get(top, top).lower().replace("-", "_"), id(n) in top_level))
    return out


def test_every_runtime_import_is_declared_or_a_lazy_extra():
    deps = declared()
    undeclared, eager_extras = set(), set()
    for f in sorted((ROOT / "reinit").rglob("*.py")):
        src = f.read_text(encoding="utf-8")
        rel = f.relative_to(ROOT)
        if ".numpy()" in src and "numpy" not in deps:
            undeclared.add(f"numpy (Tensor.numpy() in {rel})")
        for dist, module_level in third_party_imports(src):
            if dist in deps:
                continue
            if dist in EXTRAS:
                if module_level:
                    eager_extras.add(f"{dist} in {rel}")
                continue
            undeclared.add(f"{dist} in {rel}")
    assert not undeclared, f"imported but not in [project.dependencies]: {sorted(undeclared)}"
    assert not eager_extras, f"extras imported at module level: {sorted(eager_extras)}"


def test_numpy_is_a_runtime_dependency_and_extras_stay_extras():
    """numpy is needed by the safetensors writer path (issue 11); the extras name their
    packages so that the lazy imports' error messages ('pip install reinit[plot]') are true."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "numpy" in declared()
    extras = {k: {_norm(r) for r in v} for k, v in meta["optional-dependencies"].items()}
    assert "matplotlib" in extras["plot"] and "transformers" in extras["hf"]
    assert not ({"matplotlib", "transformers"} & declared())


def test_the_scan_sees_what_it_must():
    src = "import numpy\nfrom yaml import safe_load\ndef f():\n    import matplotlib.pyplot\n"
    assert third_party_imports(src) == [
        ("numpy", True),
        ("pyyaml", True),
        ("matplotlib", False),
    ]
