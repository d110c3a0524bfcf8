"""Checkpoints for the "Transplants across architecture changes" examples of
docs/guide/transplant.md (run by tests/test_readme_examples.py): tiny models with the names the
examples use."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def tiny_llama(path: Path, layers: int, seed: int) -> None:
    """A Llama of `layers` layers: 4 query heads and 2 key/value heads of head_dim 4 (q_proj
    [16, 16], k_proj and v_proj [8, 16])."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)


def transform_fixtures(root: Path) -> None:
    """llama-32/ (the source), llama-48/ and llama-16/ (deeper and shallower targets),
    llama-48-config/ (llama-48's config.json alone),
    fused-qkv.safetensors (a Phi-3-style fused [q; k; v] projection per layer, GQA: 16 + 8 + 8
    rows), vit-fused.safetensors / vit-split.safetensors (timm-style equal thirds)."""
    tiny_llama(root / "llama-32", 32, 11)
    tiny_llama(root / "llama-48", 48, 12)
    (root / "llama-48-config").mkdir()  # `reinit new`'s up-scaling: the 48-layer config alone
    (root / "llama-48-config" / "config.json").write_bytes(
        (root / "llama-48" / "config.json").read_bytes()
    )
    tiny_llama(root / "llama-16", 16, 13)
    g = torch.Generator().manual_seed(14)
    save_file(
        {
            f"model.layers.{i}.self_attn.qkv_proj.weight": torch.randn(32, 16, generator=g)
            for i in range(32)
        },
        root / "fused-qkv.safetensors",
    )
    fused, split = {}, {}
    for b in range(2):
        a = f"blocks.{b}.attn."
        fused[a + "qkv.weight"] = torch.randn(48, 16, generator=g)
        fused[a + "qkv.bias"] = torch.randn(48, generator=g)
        for p in ("q", "k", "v"):
            split[a + f"{p}.weight"] = torch.zeros(16, 16)
            split[a + f"{p}.bias"] = torch.zeros(16)
    save_file(fused, root / "vit-fused.safetensors")
    save_file(split, root / "vit-split.safetensors")
