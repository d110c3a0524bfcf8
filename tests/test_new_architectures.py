"""`reinit new` across real architectures (tiny configs of transformers 5): the output loads
with the class's `from_pretrained` with no missing/unexpected/mismatched key and no warning,
under `save_pretrained`'s names and shapes, its ties tied as the config says, its buffers what
`from_config` builds, every tensor at the statistics `from_config` gives it (a constant
exactly, a draw within sampling error of its std and mean) and no report flag on this fresh
init. The fast set holds the architectures where a bug was found and a few representative
ones; the sweep over the rest is `slow`.

Internal: none (the CLI, the report JSON and transformers only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import load_clean, run
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

_S = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_DEC = dict(
    **_S, vocab_size=128, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
    pad_token_id=0,
)  # fmt: skip
_SEQ2SEQ = dict(
    vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=1,
    bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
)  # fmt: skip


def _configs() -> dict[str, tuple[object, str]]:
    t = transformers
    return {
        "vit_mae": (t.ViTMAEConfig(
            **_S, image_size=32, patch_size=8, decoder_hidden_size=16,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=32,
        ), "ViTMAEForPreTraining"),
        "gemma2": (t.Gemma2Config(**_DEC, num_key_value_heads=1, head_dim=16),
                   "Gemma2ForCausalLM"),
        "whisper": (t.WhisperConfig(
            **_SEQ2SEQ, num_mel_bins=16, max_source_positions=32, max_target_positions=32,
            suppress_tokens=[], begin_suppress_tokens=[],
        ), "WhisperForConditionalGeneration"),
        "siglip": (t.SiglipConfig(
            text_config=dict(**_DEC, projection_size=32), vision_config=dict(
                **_S, image_size=32, patch_size=8),
        ), "SiglipModel"),
        "wav2vec2": (t.Wav2Vec2Config(
            **_S, vocab_size=32, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
        ), "Wav2Vec2ForCTC"),
        # the sweep (slow)
        "hubert": (t.HubertConfig(
            **_S, vocab_size=32, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
        ), "HubertForCTC"),
        "gemma3": (t.Gemma3Config(
            text_config=dict(**_DEC, num_key_value_heads=1, head_dim=16),
            vision_config=dict(**_S, image_size=32, patch_size=8), mm_tokens_per_image=4,
            image_token_index=100, boi_token_index=101, eoi_token_index=102,
        ), "Gemma3ForConditionalGeneration"),
        "phi3": (t.Phi3Config(**_DEC, num_key_value_heads=1), "Phi3ForCausalLM"),
        "qwen3": (t.Qwen3Config(**_DEC, num_key_value_heads=1, head_dim=16), "Qwen3ForCausalLM"),
        "falcon": (t.FalconConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=128,
            bos_token_id=1, eos_token_id=2,
        ), "FalconForCausalLM"),
        "gpt_neox": (t.GPTNeoXConfig(**_DEC), "GPTNeoXForCausalLM"),
        "opt": (t.OPTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
            vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ), "OPTForCausalLM"),
        "bloom": (t.BloomConfig(
            hidden_size=32, n_layer=2, n_head=2, vocab_size=128, bos_token_id=1,
            eos_token_id=2, pad_token_id=0,
        ), "BloomForCausalLM"),
        "roberta": (t.RobertaConfig(
            **_S, vocab_size=128, max_position_embeddings=70, pad_token_id=1,
            bos_token_id=0, eos_token_id=2,
        ), "RobertaForMaskedLM"),
        "deberta_v2": (t.DebertaV2Config(
            **_S, vocab_size=128, max_position_embeddings=64, pad_token_id=0,
        ), "DebertaV2ForMaskedLM"),
        "distilbert": (t.DistilBertConfig(
            dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=128,
            max_position_embeddings=64, pad_token_id=0,
        ), "DistilBertForMaskedLM"),
        "albert": (t.AlbertConfig(
            **_S, embedding_size=16, vocab_size=128, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=2, eos_token_id=3,
        ), "AlbertForMaskedLM"),
        "electra": (t.ElectraConfig(
            **_S, embedding_size=16, vocab_size=128, max_position_embeddings=64,
            pad_token_id=0,
        ), "ElectraForPreTraining"),
        "bart": (t.BartConfig(**_SEQ2SEQ, max_position_embeddings=64, forced_eos_token_id=2),
                 "BartForConditionalGeneration"),
        "mbart": (t.MBartConfig(**_SEQ2SEQ, max_position_embeddings=64, forced_eos_token_id=2),
                  "MBartForConditionalGeneration"),
        "swin": (t.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4, num_labels=3,
        ), "SwinForImageClassification"),
        "convnext": (t.ConvNextConfig(
            num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
        ), "ConvNextForImageClassification"),
        "resnet": (t.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
        ), "ResNetForImageClassification"),
        "dinov2": (t.Dinov2Config(**_S, image_size=32, patch_size=8), "Dinov2Model"),
        "encodec": (t.EncodecConfig(
            hidden_size=16, num_filters=4, num_residual_layers=1, upsampling_ratios=[2, 2],
            codebook_size=16, codebook_dim=16, compress=2, num_lstm_layers=1,
            target_bandwidths=[1.5],
        ), "EncodecModel"),
        "speecht5": (t.SpeechT5Config(
            vocab_size=64, hidden_size=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            speech_decoder_prenet_units=16, speech_decoder_postnet_units=16,
            speech_decoder_postnet_layers=2, num_mel_bins=8, max_speech_positions=64,
            max_text_positions=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2,
        ), "SpeechT5ForSpeechToText"),
        "gpt_oss": (t.GptOssConfig(
            **_DEC, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
            head_dim=16, layer_types=["sliding_attention", "full_attention"],
        ), "GptOssForCausalLM"),
        "deepseek_v3": (t.DeepseekV3Config(
            **_DEC, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=2,
            n_group=1, topk_group=1, moe_intermediate_size=16, first_k_dense_replace=1,
            q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=8,
        ), "DeepseekV3ForCausalLM"),
        "switch": (t.SwitchTransformersConfig(
            vocab_size=128, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=2, num_experts=4, encoder_sparse_step=1, decoder_sparse_step=1,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        ), "SwitchTransformersForConditionalGeneration"),
        "mamba2": (t.Mamba2Config(
            hidden_size=32, num_hidden_layers=2, vocab_size=128, state_size=8, num_heads=4,
            head_dim=16, n_groups=1, expand=2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ), "Mamba2ForCausalLM"),
        "bert2bert": (t.EncoderDecoderConfig.from_encoder_decoder_configs(
            t.BertConfig(**_S, vocab_size=128, max_position_embeddings=64, pad_token_id=0),
            t.BertConfig(
                **_S, vocab_size=128, max_position_embeddings=64, pad_token_id=0,
                is_decoder=True, add_cross_attention=True,
            ), decoder_start_token_id=1, pad_token_id=0,
        ), "EncoderDecoderModel"),
        "mamba": (t.MambaConfig(
            hidden_size=32, num_hidden_layers=2, vocab_size=128, state_size=4,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ), "MambaForCausalLM"),
    }  # fmt: skip


_FAST = ["vit_mae", "wav2vec2", "gemma2", "whisper", "siglip"]
_SLOW = [k for k in _configs() if k not in _FAST]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _ties(model: torch.nn.Module) -> list[tuple[str, ...]]:
    """The groups of parameter names that share one tensor."""
    by_storage: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_storage.setdefault(p.data_ptr(), []).append(name)
    return sorted(tuple(sorted(v)) for v in by_storage.values() if len(v) > 1)


def _like_from_config(got: torch.Tensor, want: torch.Tensor, other: torch.Tensor, name: str):
    """What `from_config` gives whatever its seed (`want` and `other`, two seeds) exactly; a
    draw of 16 values or more within 7 standard errors (plus 2% for the shape of the
    distribution: a uniform's or truncated normal's sample std varies a little otherwise) of
    `want`'s std and mean (fewer: too few to judge)."""
    g, w = got.double(), want.double()
    if torch.equal(want, other):
        assert torch.equal(g, w), (name, g.flatten()[:4], w.flatten()[:4])
        return
    n = w.numel()
    if n < 16:
        return
    s_want, s_got = w.std().item(), g.std().item()
    assert abs(s_got - s_want) < 7 * s_want / math.sqrt(2 * n) + 0.02 * s_want, (name, s_got)
    assert abs(g.mean() - w.mean()).item() < 7 * s_want / math.sqrt(n), name


def _check(tmp_path: Path, kind: str) -> None:
    cfg, cls_name = _configs()[kind]
    cfg.architectures = [cls_name]  # type: ignore[attr-defined]
    cfg.save_pretrained(tmp_path / "cfg")  # type: ignore[attr-defined]
    cls = getattr(transformers, cls_name)
    out = tmp_path / "out"
    res = run("new", tmp_path / "cfg", "-o", out, "--seed", "5", "-q")
    assert res.exit_code == 0, res.output
    torch.manual_seed(0)
    ref = cls(cfg)
    ref.save_pretrained(tmp_path / "ref")
    torch.manual_seed(1)
    cls(cfg).save_pretrained(tmp_path / "other")
    want, got = _weights(tmp_path / "ref"), _weights(out)
    other = _weights(tmp_path / "other")
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    model = load_clean(cls, out)
    assert _ties(model) == _ties(ref)
    loaded_buffers = dict(model.named_buffers())
    for name, b in ref.named_buffers():
        assert torch.equal(loaded_buffers[name], b), name
    for name, t in want.items():
        _like_from_config(got[name], t, other[name], name)
    entries = json.loads((out / "reinit-report.json").read_text())["tensors"]
    assert [(e["name"], e["flags"]) for e in entries if e["flags"]] == []


@pytest.mark.parametrize("kind", _FAST)
def test_new_is_what_from_config_builds(tmp_path, kind):
    """vit_mae: transformers marks each module done as it initializes it, children first, and
    ViTMAE's embeddings skip their init (sin-cos positions, xavier patch projection, cls_token
    draw) once the patch projection is marked, so `from_config` gives zeros and a normal(0.02)
    projection; reinit drew the skipped init (positions at std 0.5, the projection 5x too
    wide, flagged `std_off` against a std computed for the wrong fans).

    wav2vec2: its positional convolution's weight is `weight_norm`ed (a torch parametrization:
    `conv.parametrizations.weight.original0`, the norms g, and `original1`, v), which no init
    after the constructor reaches; `default` had no value for them (exit 2). They are the
    Conv1d's own draw through weight_norm's `right_inverse`, as the constructor makes them."""
    _check(tmp_path, kind)


def test_weight_norms_g_is_the_norm_of_its_v(tmp_path):
    """weight_norm's originals are one draw, as the constructor makes them: g the norms of v,
    so the convolution's weight (g * v / |v|) is v, the Conv1d's own draw. Each was seeded by
    its own name, so g held the norms of another draw than v (a weight at the architecture's
    distribution only on average)."""
    cfg, cls_name = _configs()["wav2vec2"]
    cfg.architectures = [cls_name]  # type: ignore[attr-defined]
    cfg.save_pretrained(tmp_path / "cfg")  # type: ignore[attr-defined]
    assert run("new", tmp_path / "cfg", "-o", tmp_path / "out", "-q").exit_code == 0
    w = _weights(tmp_path / "out")
    conv = "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight"
    g, v = w[f"{conv}.original0"], w[f"{conv}.original1"]
    assert torch.equal(g, torch.norm_except_dim(v, 2, 2))
    model = load_clean(getattr(transformers, cls_name), tmp_path / "out")
    assert torch.allclose(model.wav2vec2.encoder.pos_conv_embed.conv.weight, v)


def test_apply_default_on_a_parametrized_checkpoint_equals_new(tmp_path):
    """`apply --model CONFIG --rule '*=default'` on a checkpoint of the model gives what
    `new` gives, the weight_norm originals included."""
    cfg, cls_name = _configs()["wav2vec2"]
    cfg.architectures = [cls_name]  # type: ignore[attr-defined]
    cfg.save_pretrained(tmp_path / "cfg")  # type: ignore[attr-defined]
    getattr(transformers, cls_name)(cfg).save_pretrained(tmp_path / "ckpt")
    assert run("new", tmp_path / "cfg", "-o", tmp_path / "new", "--seed", "2", "-q").exit_code == 0
    res = run(
        "apply", tmp_path / "ckpt", "-o", tmp_path / "applied", "--model", tmp_path / "cfg",
        "--rule", "*=default", "--seed", "2", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    new, applied = _weights(tmp_path / "new"), _weights(tmp_path / "applied")
    assert new.keys() == applied.keys()
    assert any("parametrizations.weight.original0" in k for k in new)
    assert all(torch.equal(new[k], applied[k]) for k in new)


@pytest.mark.slow
@pytest.mark.parametrize("kind", _SLOW)
def test_new_is_what_from_config_builds_sweep(tmp_path, kind):
    _check(tmp_path, kind)
