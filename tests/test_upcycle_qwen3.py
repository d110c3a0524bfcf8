"""Sparse upcycling a tied Qwen3 into a Qwen3-MoE with `reinit new` (docs/guide/moe.md): every
expert a copy of the dense MLP, the router drawn; with `norm_topk_prob: true` the MoE computes
what the dense model computed, and drop-upcycling keeps each expert's kept dims byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import load_clean, run
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

DIMS = dict(
    vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
    tie_word_embeddings=True,
)  # fmt: skip
EXPERT = "model.layers.{l}.mlp.experts.{e}.{p}_proj.weight"


def dense_and_config(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**DIMS)).save_pretrained(tmp_path / "d")
    cfg = transformers.Qwen3MoeConfig(
        **DIMS, moe_intermediate_size=24, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        architectures=["Qwen3MoeForCausalLM"],
    )  # fmt: skip
    cfg.save_pretrained(tmp_path / "cfg")
    return tmp_path / "d", tmp_path / "cfg"


def upcycle(tmp_path: Path) -> tuple[Path, Path]:
    dense, cfg = dense_and_config(tmp_path)
    rules = [f"*=from({dense}/)", "*.mlp.gate.weight=normal(std=0.02)"] + [
        f"model.layers.*.mlp.experts.*.{p}_proj.weight="
        f"from({dense}/, key=model.layers.{{1}}.mlp.{p}_proj.weight)"
        for p in ("gate", "up", "down")
    ]
    out = tmp_path / "moe"
    res = run("new", cfg, "-o", out, "-q", *[a for r in rules for a in ("--rule", r)])
    assert res.exit_code == 0, res.output
    return dense, out


def test_upcycled_qwen3_moe_loads_cleanly_and_keeps_the_dense_logits(tmp_path):
    dense, moe = upcycle(tmp_path)
    model = load_clean(transformers.Qwen3MoeForCausalLM, moe).eval()
    ref = transformers.Qwen3ForCausalLM.from_pretrained(dense).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids).logits, ref(ids).logits
    assert torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max()
    got, src = load_file(moe / "model.safetensors"), load_file(dense / "model.safetensors")
    for e in range(4):
        for p in ("gate", "up", "down"):
            want = src[f"model.layers.1.mlp.{p}_proj.weight"]
            assert torch.equal(got[EXPERT.format(l=1, e=e, p=p)], want)
    assert "lm_head.weight" not in got  # tied, as save_pretrained writes it


def test_drop_upcycling_a_qwen3_moe_redraws_the_same_dims_of_gate_up_and_down(tmp_path):
    _, moe = upcycle(tmp_path)
    out = tmp_path / "drop"
    res = run("apply", moe, "-o", out, "-q", "--seed", "1",
              "--rule", "model.layers.*.mlp.experts.*.[gu][ap]*_proj.weight="
                        "normal_like(rows=random(0.5), group=L{1}E{2})",
              "--rule", "model.layers.*.mlp.experts.*.down_proj.weight="
                        "normal_like(cols=random(0.5), group=L{1}E{2})")  # fmt: skip
    assert res.exit_code == 0, res.output
    load_clean(transformers.Qwen3MoeForCausalLM, out)
    before, after = load_file(moe / "model.safetensors"), load_file(out / "model.safetensors")
    seen = set()
    for e in range(4):
        name = {p: EXPERT.format(l=0, e=e, p=p) for p in ("gate", "up", "down")}
        gate = (before[name["gate"]] != after[name["gate"]]).any(1).nonzero().flatten().tolist()
        up = (before[name["up"]] != after[name["up"]]).any(1).nonzero().flatten().tolist()
        down = (before[name["down"]] != after[name["down"]]).any(0).nonzero().flatten().tolist()
        assert gate == up == down and len(gate) == 12, (e, gate, up, down)
        seen.add(tuple(gate))
    assert len(seen) == 4  # other dims in each expert
