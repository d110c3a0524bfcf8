"""-o naming a from() source (not the run's own source) is exit 2 saying it is a from() source:
it said "is the source; pass --in-place", and --in-place would rewrite the other file."""

from __future__ import annotations

import pytest
import torch
from helpers import run
from safetensors.torch import save_file


@pytest.mark.parametrize("inside", [False, True])
def test_apply_over_a_from_source_names_it(tmp_path, inside):
    save_file({"w": torch.zeros(2)}, tmp_path / "t.safetensors")
    (tmp_path / "d").mkdir()
    save_file({"w": torch.ones(2)}, tmp_path / "d" / "model.safetensors")
    before = (tmp_path / "d" / "model.safetensors").read_bytes()
    src = tmp_path / "d" if inside else tmp_path / "d" / "model.safetensors"
    out = tmp_path / "d" / ("o.safetensors" if inside else "model.safetensors")
    res = run("apply", tmp_path / "t.safetensors", "-o", out, "--overwrite", "-r", f"w=from({src})")
    assert res.exit_code == 2, res.output
    assert "a from() source this run reads" in res.output and "--in-place" not in res.output
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "d" / "o.safetensors").exists()


def test_new_over_a_from_source_names_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    cfg.save_pretrained(tmp_path / "cfg")
    assert run("new", tmp_path / "cfg", "-o", tmp_path / "old", "-q").exit_code == 0
    res = run("new", tmp_path / "cfg", "-o", tmp_path / "old", "-q", "--overwrite",
              "-r", f"*=from({tmp_path / 'old'}/)")  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "a from() source this run reads" in res.output
    assert "reads the config of" not in res.output  # the config is cfg/'s, not old/'s


def test_the_runs_own_source_keeps_its_in_place_hint(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "t.safetensors")
    res = run("apply", tmp_path / "t.safetensors", "-o", tmp_path / "t.safetensors",
              "-r", f"w=from({tmp_path / 't.safetensors'})")  # fmt: skip
    assert res.exit_code == 2 and "is the source; pass --in-place" in res.output, res.output
