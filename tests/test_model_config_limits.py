"""A model's config.json is read the bounded way before transformers sees it (issue #23 M5):
past `MAX_CONFIG_BYTES`, nested past `MAX_JSON_DEPTH`, a FIFO, or not an object, every command
that builds a model from it (`probe`, `apply --model`, `verify --forward`, `new`) stops with one
line, exit 2, and transformers never parses the file.

Internal: imports reinit.limits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import refused, run_child
from safetensors.torch import save_file

from reinit.limits import MAX_CONFIG_BYTES

LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def _model_dir(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(text)
    save_file({"model.norm.weight": torch.ones(16)}, d / "model.safetensors")
    return d


def _commands(d: Path) -> dict[str, list[str]]:
    out = d.parent / "out"
    return {
        "probe": ["probe", str(d)],
        "apply-model": [
            "apply",
            str(d / "model.safetensors"),
            "-r",
            "*=zeros",
            "--model",
            str(d),
            "--dry-run",
        ],
        "verify-forward": ["verify", str(d / "model.safetensors"), "--forward"],
        "new": ["new", str(d / "config.json"), "-o", str(out)],
    }


COMMANDS = ["probe", "apply-model", "verify-forward", "new"]


def _too_big() -> str:
    padding = "x" * (MAX_CONFIG_BYTES + 1)
    return json.dumps({**LLAMA, "padding": padding})


def _too_deep() -> str:
    return json.dumps({**LLAMA, "nest": "@"}).replace('"@"', "[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize(
    "text, fragment",
    [(_too_big, "MB"), (_too_deep, "nested more than"), (lambda: "[1, 2]", "not a JSON object")],
    ids=["too-big", "too-deep", "not-object"],
)
def test_config_past_the_caps_is_one_line(tmp_path, cmd, text, fragment):
    d = _model_dir(tmp_path, text())
    refused(tmp_path, _commands(d)[cmd], 2, "config.json", fragment)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("cmd", ["probe", "new"])
def test_config_fifo_does_not_block(tmp_path, cmd):
    d = _model_dir(tmp_path, "{}")
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")
    out = run_child(*_commands(d)[cmd], cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.json" in lines[0], lines


def test_config_within_caps_still_builds(tmp_path):
    d = _model_dir(tmp_path, json.dumps(LLAMA))
    out = run_child(*_commands(d)["new"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "config.json").is_file()
