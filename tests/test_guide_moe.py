"""Every ```bash block of docs/guide/moe.md runs, in order, in one shell, in an empty
directory (`reinit` and `python` are this checkout's): the guide's recipes are executed,
not just shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, child_env

pytest.importorskip("transformers")

GUIDE = ROOT / "docs" / "guide" / "moe.md"
_BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def tools(bin_dir: Path) -> None:
    """`reinit` and `python` on PATH, running this checkout with the test's interpreter."""
    bin_dir.mkdir()
    for name, body in (("reinit", f'exec "{sys.executable}" -m reinit "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):  # fmt: skip
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)


@pytest.mark.slow  # about 2 min: a dozen commands, each a fresh python with torch
def test_guide_blocks_run(tmp_path):
    blocks = _BLOCK.findall(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) >= 7
    tools(tmp_path / "bin")
    work = tmp_path / "work"
    work.mkdir()
    env = child_env(PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    script = "set -eu\n" + "\n".join(blocks)
    res = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "max |logit difference|" in res.stdout
    assert "MixtralExperts: normal(std=0.02)" in res.stdout + res.stderr
