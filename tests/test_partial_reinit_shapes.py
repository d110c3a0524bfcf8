"""Partial re-init (`rows=`/`cols=`, docs/guide/rules-and-schemes.md#partial-re-init) on a
tensor the part does not fit is decided at plan time, like any scheme a tensor cannot take
(DESIGN §2): a rule naming the tensor is one exit-2 line naming it, nothing written; a wildcard
rule skips it with the reason in the plan and report. Before, `cols=` on a 1-D tensor (a
norm's weight) was an "internal error" (IndexError) while writing, and a range past the
dim was refused without naming the tensor."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")


@pytest.fixture
def llama(tmp_path):
    cfg = transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.mark.parametrize(
    ("rule", "fragments"),
    [
        ("model.norm.weight=normal(cols=0:3)",
         ["'model.norm.weight' (16,)", "cols= needs a tensor of 2 or more dims"]),
        ("model.norm.weight=zeros(cols=random(0.5))", ["'model.norm.weight'", "2 or more dims"]),
        ("model.embed_tokens.weight=normal(rows=60:70)",
         ["'model.embed_tokens.weight' (64, 16)", "rows=60:70 runs past dim 0's size 64"]),
    ],
)  # fmt: skip
def test_a_part_that_does_not_fit_a_named_tensor_is_exit_2(llama, tmp_path, rule, fragments):
    refused(tmp_path, ["apply", str(llama), "-o", f"{tmp_path / 'out'}/", "--rule", rule], 2,
            *fragments)  # fmt: skip


def test_a_wildcard_part_skips_what_it_does_not_fit(llama, tmp_path):
    out = tmp_path / "out"
    res = run("apply", llama, "-o", f"{out}/", "-q", "--rule", "*.weight=normal(cols=0:3)")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "reinit-report.json").read_text())
    entries = {t["name"]: t for t in report["tensors"]}
    norm = entries["model.norm.weight"]
    assert norm["action"] == "skipped" and "2 or more dims" in norm["reason"], norm
    old, new = load_file(llama / "model.safetensors"), load_file(out / "model.safetensors")
    assert torch.equal(new["model.norm.weight"], old["model.norm.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert entries[q]["action"] == "reinit"
    assert torch.equal(new[q][:, 3:], old[q][:, 3:]) and not torch.equal(new[q], old[q])
    # --strict turns the skip into an error, before anything is written
    strict = ["apply", str(llama), "-o", f"{tmp_path / 'strict'}/", "--strict",
              "--rule", "*.weight=normal(cols=0:3)"]  # fmt: skip
    refused(tmp_path, strict, 2, "--strict", "cols= needs a tensor of 2 or more dims")
