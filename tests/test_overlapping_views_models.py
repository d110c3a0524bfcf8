"""The overlapping-views refusal refuses nothing an ordinary model holds: for tiny real
architectures (decoders with tied embeddings, encoder-decoders, vision, speech with weight_norm,
MoE, SSMs), `apply_to_module`, `apply_to_state_dict` (the state dict, its `keep_vars=True`
form, `named_parameters()`) and `reinit apply` of its `torch.save`d state dict all run; tied
weights (exact aliases) stay one tie with one value. The fast set is a sample; the sweep over
every architecture of `test_new_architectures` is `slow`.

Internal: also calls `reinit.io.memory.find_overlaps` (nothing found on any of them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import run

import reinit
from reinit.io.memory import find_aliases, find_overlaps

transformers = pytest.importorskip("transformers")

from test_new_architectures import _DEC, _S, _configs  # noqa: E402

_RULE = "*.weight=normal(std=0.02)"


def _extra() -> dict[str, tuple[object, str]]:
    t = transformers
    return {
        "llama_tied": (t.LlamaConfig(**_DEC, tie_word_embeddings=True), "LlamaForCausalLM"),
        "mixtral": (t.MixtralConfig(
            **_DEC, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
        ), "MixtralForCausalLM"),
        "qwen3_moe": (t.Qwen3MoeConfig(
            **_DEC, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=16, head_dim=16,
        ), "Qwen3MoeForCausalLM"),
        "t5": (t.T5Config(
            vocab_size=128, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            decoder_start_token_id=0,
        ), "T5ForConditionalGeneration"),
        "gpt2": (t.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64),
                 "GPT2LMHeadModel"),
        "vit": (t.ViTConfig(**_S, image_size=32, patch_size=8), "ViTForImageClassification"),
        "clip": (t.CLIPConfig(text_config=dict(**_DEC), vision_config=dict(
            **_S, image_size=32, patch_size=8)), "CLIPModel"),
        "bert": (t.BertConfig(**_S, vocab_size=128, max_position_embeddings=64),
                 "BertForMaskedLM"),
    }  # fmt: skip


def _all() -> dict[str, tuple[object, str]]:
    return {**_configs(), **_extra()}


_FAST = ["llama_tied", "t5", "wav2vec2", "mixtral", "mamba", "vit"]
_SLOW = [k for k in _all() if k not in _FAST and k != "encodec"]  # encodec: no '*.weight'


def _model(kind: str) -> torch.nn.Module:
    cfg, cls_name = _all()[kind]
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(cfg)


def _check(tmp_path: Path, kind: str) -> None:
    model = _model(kind)
    state = model.state_dict()
    assert find_overlaps(state) == {}
    before = {k: v.clone() for k, v in state.items()}
    out, _ = reinit.apply_to_state_dict(state, [_RULE], seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input kept
    for name, first in find_aliases(state).items():  # a tie keeps one value
        assert torch.equal(out[name], out[first]), (name, first)
    for form in (model.state_dict(keep_vars=True), dict(model.named_parameters())):
        reinit.apply_to_state_dict(form, [_RULE], seed=0)
    torch.save(state, tmp_path / "m.pt")
    res = run("apply", tmp_path / "m.pt", "-r", _RULE, "-o", tmp_path / "o.safetensors", "-q")
    assert res.exit_code == 0, res.output
    report = reinit.apply_to_module(model, [_RULE], seed=0)
    assert report.summary.reinit > 0
    for name, t in model.state_dict().items():  # in place, the values the state dict got
        assert torch.equal(t, out[name]), name


@pytest.mark.parametrize("kind", _FAST)
def test_an_ordinary_model_has_no_overlapping_views(tmp_path, kind):
    _check(tmp_path, kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", _SLOW)
def test_an_ordinary_model_has_no_overlapping_views_sweep(tmp_path, kind):
    _check(tmp_path, kind)
