"""Layer arithmetic and split projections on tiny Llamas built in the test (issue 15): depth
up-scaling with `{1-2}` loads with `from_pretrained` cleanly, depth slicing with `{1*2}`, and a
grouped-query fused QKV split by index ranges gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import quietly, refused, run
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")


def config(layers: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )


def llama(path, layers: int, seed: int):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config(layers))
    model.save_pretrained(path)
    return path


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


LAYER = r"re:model\.layers\.(\d+)\.(.*)"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return llama(tmp_path_factory.mktemp("llama") / "src4", 4, 0)


def load_cleanly(path):
    """from_pretrained with its loading info, every Python warning and every transformers
    log record at WARNING or above captured (`helpers.quietly`)."""
    (model, info), warned = quietly(
        transformers.LlamaForCausalLM.from_pretrained, path, output_loading_info=True
    )
    return model.eval(), info, warned


def test_depth_upscaled_llama_loads_cleanly_and_keeps_the_source_layers(source, tmp_path):
    """Target: a 6-layer Llama; layers 0-3 <- source 0-3 (and everything else by name),
    4-5 <- source 2-3 via {1-2}: two rules."""
    target = llama(tmp_path / "tgt6", 6, 1)
    out = tmp_path / "up6"
    res = run(
        "apply", target, "-o", out, "--json",
        "--rule", f"*=from({source})",
        "--rule", rf"re:model\.layers\.([45])\.(.*)=from({source}, key=model.layers.{{1-2}}.{{2}})",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["summary"]["transplant"] == len(load_file(target / "model.safetensors"))
    src, got = load_file(source / "model.safetensors"), load_file(out / "model.safetensors")
    for name, t in got.items():
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            want = src[f"model.layers.{int(i) - 2 if int(i) >= 4 else i}.{rest}"]
        else:
            want = src[name]
        assert raw(t) == raw(want), name
    rows = {t["name"]: t for t in report["tensors"]}
    assert rows["model.layers.5.mlp.up_proj.weight"]["from"].endswith(
        ":model.layers.3.mlp.up_proj.weight"
    )
    model, info, warned = load_cleanly(out)
    assert model.config.num_hidden_layers == 6
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info.get("mismatched_keys") and not info.get("error_msgs")
    assert warned == []
    base = transformers.LlamaForCausalLM.from_pretrained(source).eval()
    for i in range(4):  # the first layers are the source's, parameter for parameter
        for (n, a), (_, b) in zip(
            model.model.layers[i].named_parameters(),
            base.model.layers[i].named_parameters(),
            strict=True,
        ):
            assert torch.equal(a, b), (i, n)


def test_depth_slicing_takes_every_other_layer(source, tmp_path):
    target = llama(tmp_path / "tgt2", 2, 2)
    out = tmp_path / "half"
    res = run(
        "apply", target, "-o", out, "-q",
        "--rule", f"*=from({source})",
        "--rule", f"{LAYER}=from({source}, key=model.layers.{{1*2}}.{{2}})",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    src, got = load_file(source / "model.safetensors"), load_file(out / "model.safetensors")
    for i, j in ((0, 0), (1, 2)):
        for rest in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert raw(got[f"model.layers.{i}.{rest}"]) == raw(src[f"model.layers.{j}.{rest}"])
    _, info, warned = load_cleanly(out)
    assert not info["missing_keys"] and not info["unexpected_keys"] and warned == []


def test_layer_shift_past_the_source_is_a_missing_key_error(source, tmp_path):
    target = llama(tmp_path / "tgt6", 6, 3)
    res = run(
        "apply", target, "-o", tmp_path / "o", "-q",
        "--rule", f"{LAYER}=from({source}, key=model.layers.{{1+1}}.{{2}})",
    )  # fmt: skip
    assert res.exit_code == 2
    assert "has no tensor 'model.layers.4." in res.stderr and "fix key=" in res.stderr
    assert not (tmp_path / "o").exists()


def test_grouped_query_fused_qkv_splits_by_ranges(source, tmp_path):
    """A fused [q; k; v] projection of unequal parts (4 query heads, 2 key/value heads of 8:
    rows 0:32, 32:48, 48:64) split into a fresh Llama's q/k/v by chunk=START:STOP gives the
    original model's logits exactly (the same tensors, byte for byte)."""
    src = load_file(source / "model.safetensors")
    fused = {
        k: v for k, v in src.items() if not any(p in k for p in ("q_proj", "k_proj", "v_proj"))
    }
    for i in range(4):
        a = f"model.layers.{i}.self_attn."
        fused[a + "qkv_proj.weight"] = torch.cat(
            [src[a + "q_proj.weight"], src[a + "k_proj.weight"], src[a + "v_proj.weight"]]
        )
    fused_path = tmp_path / "fused.safetensors"
    save_file(fused, fused_path)
    target = llama(tmp_path / "fresh", 4, 4)
    out = tmp_path / "split"
    qkv = "key=model.layers.{1}.self_attn.qkv_proj.weight"
    res = run(
        "apply", target, "-o", out, "-q",
        "--rule", f"*=from({fused_path})",
        "--rule", rf"re:model\.layers\.(\d+)\.self_attn\.q_proj\.weight=from({fused_path}, {qkv}, chunk=0:32)",
        "--rule", rf"re:model\.layers\.(\d+)\.self_attn\.k_proj\.weight=from({fused_path}, {qkv}, chunk=32:48)",
        "--rule", rf"re:model\.layers\.(\d+)\.self_attn\.v_proj\.weight=from({fused_path}, {qkv}, chunk=48:64)",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out / "model.safetensors")
    assert all(raw(got[k]) == raw(v) for k, v in src.items())
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = transformers.LlamaForCausalLM.from_pretrained(source).eval()(ids).logits
        have = transformers.LlamaForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(have, want)


def test_a_tied_source_missing_its_lm_head_says_which_tensor_is_the_head(tmp_path):
    """A source with tied embeddings (Qwen2-0.5B, GPT-2: `save_pretrained` keeps only the
    embedding) has no `lm_head.weight`; transplanting it into an untied model must say the
    head is the embedding and name the rule that takes it, and that rule must work."""
    transformers = pytest.importorskip("transformers")
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=40, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    tied = transformers.Qwen2Config(tie_word_embeddings=True, **small)
    transformers.Qwen2ForCausalLM(tied).save_pretrained(tmp_path / "tied")
    untied = transformers.Qwen2Config(tie_word_embeddings=False, **small)
    transformers.Qwen2ForCausalLM(untied).save_pretrained(tmp_path / "untied")
    src = tmp_path / "tied"
    args = ["apply", str(tmp_path / "untied"), "-o", f"{tmp_path / 'out'}/",
            "--rule", f"*=from({src})"]  # fmt: skip
    hint = f"--rule 'lm_head.weight=from({src}, key=model.embed_tokens.weight)'"
    refused(tmp_path, args, 2, "has no tensor 'lm_head.weight'", "tied to its embedding", hint)
    res = run(*args, "-q", "--rule", f"lm_head.weight=from({src}, key=model.embed_tokens.weight)")
    assert res.exit_code == 0, res.output
    model = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
