"""A Hub that trickles bytes (issue 16): `apply hf://…` fails within the stall timeout with a
one-line error naming the repo and file, instead of hanging. Runs the CLI in a subprocess
against the fake Hub of hubcache.py in trickle mode, under a generous wall-clock bound."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import child_env, run_child
from hubcache import st_bytes

BOUND_S = 40.0


@pytest.mark.parametrize("where", ["file", "api"])
def test_trickling_hub_fails_with_a_stall_error(fake_hub, tmp_path, where):
    tensors = {"a.weight": torch.zeros(16, 16)}
    fake_hub.add(
        "acme/slow", {"model.safetensors": st_bytes(tmp_path, tensors), "config.json": b"{}"}
    )
    fake_hub.trickle = 0.2  # ~1 KB file: ~4 minutes at this pace
    fake_hub.trickle_api = where == "api"
    env = child_env(REINIT_HUB_STALL_TIMEOUT="3")
    out_path = tmp_path / "o.safetensors"
    t0 = time.monotonic()
    out = run_child(
        "apply", "hf://acme/slow", "-o", out_path, "-r", "*=zeros", env=env, timeout=BOUND_S
    )
    elapsed = time.monotonic() - t0
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert (
        "acme/slow" in lines[0] and "stalled" in lines[0] and "REINIT_HUB_STALL_TIMEOUT" in lines[0]
    )
    if where == "file":
        assert "'model.safetensors'" in lines[0]
    else:
        assert "listing its files" in lines[0]
    assert "internal error" not in out.stdout + out.stderr
    assert not out_path.exists()
    assert elapsed < BOUND_S


def test_a_normal_hub_is_unaffected_by_the_stall_watch(fake_hub, tmp_path):
    tensors = {"a.weight": torch.ones(4, 4)}
    fake_hub.add(
        "acme/fast", {"model.safetensors": st_bytes(tmp_path, tensors), "config.json": b"{}"}
    )
    env = child_env(REINIT_HUB_STALL_TIMEOUT="3")
    out_path = tmp_path / "o.safetensors"
    out = run_child(
        "apply", "hf://acme/fast", "-o", out_path, "-r", "*=zeros", env=env, timeout=BOUND_S
    )
    assert out.returncode == 0, out.stderr
    assert out_path.exists()
