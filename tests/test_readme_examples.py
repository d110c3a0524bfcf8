"""Every ```python block of README.md runs, in order, in one namespace, in a fresh directory:
the README's examples are executed, not just shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python fenced block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def run_blocks(path: Path) -> int:
    """Execute the blocks of a Markdown file in order; returns how many ran."""
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, code in blocks:
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"{path.name} block at line {line} failed: {e!r}") from e
    return len(blocks)


def test_python_blocks_of_the_readme_run(tmp_path, monkeypatch):
    if not README.is_file() or not python_blocks(README.read_text(encoding="utf-8")):
        pytest.skip("README.md has no ```python blocks")
    monkeypatch.chdir(tmp_path)
    assert run_blocks(README) > 0


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\n```\nnot python\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = x + 1\n")]
