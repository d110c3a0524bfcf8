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
from helpers import refused, run, run_child
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
    res = run(*_commands(d)["new"])  # in process: the caps are reinit's own, no child needed
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "config.json").is_file()


MIXTRAL = {
    **LLAMA,
    "model_type": "mixtral",
    "architectures": ["MixtralForCausalLM"],
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
}


@pytest.mark.parametrize("cmd", ["apply-model", "new"])
@pytest.mark.parametrize(
    "config, key",
    [
        ({**LLAMA, "num_hidden_layers": 30_000_000}, "num_hidden_layers is 30,000,000"),
        ({**MIXTRAL, "num_local_experts": 10_000_000}, "num_local_experts is 10,000,000"),
    ],
    ids=["layers", "experts"],
)
def test_a_layer_or_expert_count_past_the_cap_is_refused_before_building(
    tmp_path, cmd, config, key
):
    """transformers builds per-layer lists while it reads a config and then one module per
    layer: 30,000,000 layers took 4 GB and 90 s (Qwen2), or grew ~85 MB/s until memory ran
    out (Llama), before anything refused it."""
    d = _model_dir(tmp_path, json.dumps(config))
    refused(tmp_path, _commands(d)[cmd], 2, "config.json", key)


def test_a_build_that_registers_too_many_tensors_is_stopped(tmp_path, monkeypatch):
    """Whatever the config says (or a module:callable does), a build stops once it registers
    more parameters and buffers than a checkpoint may hold (the cap lowered here: a 2-layer
    Llama registers ~25)."""
    import reinit.planning.model_load as model_load

    monkeypatch.setattr(model_load, "MAX_TOTAL_TENSORS", 10)
    d = _model_dir(tmp_path, json.dumps({**LLAMA, "num_hidden_layers": 2}))
    refused(tmp_path, _commands(d)["new"], 2, str(d), "registers more than 10 parameters")
    monkeypatch.setattr(model_load, "MAX_TOTAL_TENSORS", 1000)
    assert model_load.load_model(d).module is not None  # the hooks are gone, a build works
