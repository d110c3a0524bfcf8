"""The package's shape, checked: the rules of reinit/ARCHITECTURE.md as tests, so the map stays
true as the code grows (imports point one way, no cycles, typing-only imports included, no
private names across modules, a subpackage's `_`-prefixed modules imported only from inside it). Size is limited per function, by ruff (C901, PLR0915 in
pyproject.toml); a file's length is advisory (one topic, up to ~600 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "reinit"

# Lower layers never import higher ones. Same-layer imports are allowed (no cycles, below).
LAYERS = {
    "reinit.errors": 0,
    "reinit.version": 0,
    "reinit.text": 0,
    "reinit.limits": 0,
    "reinit.library_output": 0,
    "reinit.lazy": 0,
    "reinit.fans": 0,
    "reinit.matching": 2,
    "reinit.io": 1,  # subpackages io.hub, io.formats: private modules behind their __init__
    "reinit.schemes": 1,
    "reinit.transforms": 1,
    "reinit.rules": 2,
    "reinit.options": 3,  # its ModelInput names planning's Model (typing only)
    "reinit.planning": 3,
    "reinit.report": 4,  # report.views: the renderers, private modules behind their __init__
    "reinit.run": 5,
    "reinit.tools": 6,
    "reinit.recipe": 6,
    "reinit.cli": 7,
    "reinit": 8,  # the facade: nothing inside the package imports it
}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def layer(mod: str) -> int:
    best = ""
    for prefix in LAYERS:
        if (mod == prefix or mod.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return LAYERS[best]


def private_owner(mod: str) -> str | None:
    """The package a `_`-prefixed module belongs to (`reinit.io.hub` for `reinit.io.hub._url`):
    only that package (its `__init__` and its own modules) may import it; the rest of reinit
    imports the names the package's `__init__` exports."""
    parts = mod.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def type_checking_nodes(tree: ast.Module) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                skip.add(id(sub))
    return skip


def imports(path: Path, known: set[str], typing: bool = False) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every runtime import of a reinit module (and, with
    `typing`, every import under `if TYPE_CHECKING:` too)."""
    tree = ast.parse(path.read_text())
    skip = set() if typing else type_checking_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "reinit" or node.module.startswith("reinit."):
                names = [a.name for a in node.names]
                subs = [n for n in names if f"{node.module}.{n}" in known]
                if subs:
                    out += [(node.lineno, f"{node.module}.{n}", []) for n in subs]
                rest = [n for n in names if n not in subs]
                if rest:
                    out.append((node.lineno, node.module, rest))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "reinit" or a.name.startswith("reinit."):
                    out.append((node.lineno, a.name, []))
    return out


MODS = modules()


@pytest.mark.parametrize("mod", sorted(MODS))
def test_imports_point_down_and_name_no_private(mod):
    me = layer(mod)
    for line, target, names in imports(MODS[mod], set(MODS)):
        where = f"{MODS[mod].relative_to(PKG.parent)}:{line}"
        assert target != "reinit" or mod == "reinit", f"{where}: imports the facade `reinit`"
        assert layer(target) <= me, f"{where}: {mod} (layer {me}) imports {target} (higher)"
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{where}: imports private {private} from {target}"
        owner = private_owner(target)
        inside = owner is not None and (mod == owner or mod.startswith(owner + "."))
        assert owner is None or inside, (
            f"{where}: imports the private module {target}; import from {owner} instead"
        )


def test_subpackage_modules_are_private_behind_their_init():
    """`io/hub/`, `io/formats/` and `report/views/` show the rest of reinit a few names in their
    `__init__`; every other module in them is `_`-prefixed, so the rule above keeps it inside."""
    for pkg in ("reinit.io.hub", "reinit.io.formats", "reinit.report.views"):
        assert pkg in MODS, pkg
        inner = [m for m in MODS if m.startswith(pkg + ".")]
        assert inner, pkg
        assert all(private_owner(m) == pkg for m in inner), inner


def test_no_import_cycles():
    """Typing-only imports count: a cycle through `if TYPE_CHECKING:` is still two modules
    that cannot be understood (or moved) one without the other."""
    known = set(MODS)
    graph = {
        m: {t for _, t, _ in imports(p, known, typing=True) if t in known and t != m}
        for m, p in MODS.items()
    }
    # a package's __init__ importing its own submodules is not a cycle of the design
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
