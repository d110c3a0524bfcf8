"""Memory stays at about one tensor, not the model (a bound, not a timing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

MB = 1024 * 1024
_WRAPPER = (
    "import resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:]).returncode;"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024);"
    "sys.exit(rc)"
)


def peak_rss(cmd: list[str], cwd: Path) -> int:
    """Peak RSS in bytes of `cmd`, run as the only child of a fresh wrapper process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def make_checkpoint(path: Path, layers: int = 12) -> int:
    """~400 MB: `layers` blocks of two 2048×2048 fp32 matrices and a bias each."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(layers):
        sd[f"layers.{i}.up.weight"] = torch.randn(2048, 2048, generator=g)
        sd[f"layers.{i}.down.weight"] = torch.randn(2048, 2048, generator=g)
        sd[f"layers.{i}.down.bias"] = torch.zeros(2048)
    save_file(sd, path)
    del sd
    return path.stat().st_size


@pytest.mark.slow
def test_apply_peak_rss_growth_is_bounded(tmp_path):
    src = tmp_path / "big.safetensors"
    size = make_checkpoint(src)
    assert size > 380 * MB
    py = sys.executable
    baseline = peak_rss(
        [py, "-c", "import reinit.cli, reinit.run.apply, torch, safetensors"], tmp_path
    )
    used = peak_rss(
        [
            py,
            "-m",
            "reinit",
            "apply",
            str(src),
            "-r",
            "*.down.weight=kaiming_normal",
            "-r",
            "*.bias=zeros",
            "-q",
        ],
        tmp_path,
    )
    growth = used - baseline
    print(
        f"checkpoint {size / MB:.0f} MB, baseline {baseline / MB:.0f} MB, apply peak {used / MB:.0f} MB, growth {growth / MB:.0f} MB"
    )
    from safetensors import safe_open

    with safe_open(tmp_path / "big.reinit.safetensors", "pt") as f:
        assert len(list(f.keys())) == 36
    assert growth < 200 * MB
