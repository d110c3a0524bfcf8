"""Transplants across architecture changes, end to end (issue 15 items 1-2): a ViT's position
grid resampled 224 -> 384 (and shrunk 384 -> 224), its patch stem adapted to 4 and 1 input
channels, a BERT's 1-D position table grown 512 -> 1024. Real-shaped models (transformers'
ViTModel / BertModel at tiny widths), built in the test; the output loads with
`from_pretrained` with no missing, unexpected or mismatched keys.

The references are timm's `resample_abs_pos_embed` and `adapt_input_conv`, written here from
timm's published code because timm is not a dependency (see tests/test_pos_resample.py and
tests/test_stem_adapt.py, which also compare with timm itself when it is importable):
`F.interpolate(grid, size, mode="bicubic", antialias=True)` in float32 on the grid after the
class token, and `weight.repeat(1, ceil(N/3), 1, 1)[:, :N] * 3/N` (N = 1: the sum over RGB).

Internal: also tests reinit.schemes directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import refused, run
from safetensors.torch import load_file

from reinit.schemes import bind_scheme, generate

transformers = pytest.importorskip("transformers")

POS = "embeddings.position_embeddings"
STEM = "embeddings.patch_embeddings.projection.weight"


def timm_pos(posemb: torch.Tensor, side: int) -> torch.Tensor:
    """timm's resample_abs_pos_embed(posemb, (side, side)) with one prefix token."""
    prefix, grid = posemb[:, :1], posemb[:, 1:]
    old = int(math.sqrt(grid.shape[1]))
    g = grid.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=(side, side), mode="bicubic", antialias=True)
    return torch.cat([prefix, g.permute(0, 2, 3, 1).reshape(1, side * side, -1)], 1)


def timm_stem(w: torch.Tensor, n: int) -> torch.Tensor:
    """timm's adapt_input_conv(n, w) for an RGB weight."""
    if n == 1:
        return w.float().sum(1, keepdim=True)
    return w.float().repeat(1, math.ceil(n / 3), 1, 1)[:, :n] * (3 / float(n))


def vit(path, image_size: int, channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(
        image_size=image_size,
        patch_size=16,
        num_channels=channels,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return load_file(path / "model.safetensors")


def load_clean(cls, path, **kw):
    model, info = cls.from_pretrained(path, output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    return model


def test_vit_224_to_384_with_a_4_channel_stem_equals_timm(tmp_path):
    src = vit(tmp_path / "vit224", 224)
    vit(tmp_path / "vit384", 384, channels=4, seed=1)
    out = tmp_path / "out"
    res = run(
        "apply", tmp_path / "vit384", "-o", out, "-q",
        "--rule", f"*=from({tmp_path / 'vit224'})",
        "--rule", f"{POS}=from({tmp_path / 'vit224'}, resample=bicubic)",
        "--rule", f"{STEM}=from({tmp_path / 'vit224'}, adapt=channels)",
        "--report", tmp_path / "r.json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out / "model.safetensors")
    assert src[POS].shape == (1, 197, 8) and got[POS].shape == (1, 577, 8)
    assert torch.equal(got[POS], timm_pos(src[POS], 24))
    assert torch.equal(got[STEM], timm_stem(src[STEM], 4))
    assert torch.equal(got["embeddings.cls_token"], src["embeddings.cls_token"])
    model = load_clean(transformers.ViTModel, out, add_pooling_layer=False)
    assert model(torch.randn(1, 4, 384, 384)).last_hidden_state.shape == (1, 577, 8)
    entries = {e["name"]: e for e in json.loads((tmp_path / "r.json").read_text())["tensors"]}
    assert any("grid 14x14 -> 24x24" in n for n in entries[POS]["notes"]), entries[POS]
    assert any("adapt=channels" in n for n in entries[STEM]["notes"]), entries[STEM]


def test_vit_shrink_384_to_224_is_antialiased_and_a_grey_stem_sums_rgb(tmp_path):
    src = vit(tmp_path / "big", 384)
    vit(tmp_path / "small", 224, channels=1, seed=2)
    out = tmp_path / "out"
    big = tmp_path / "big"
    res = run(
        "apply", tmp_path / "small", "-o", out, "-q",
        "--rule", f"*=from({big})",
        "--rule", f"{POS}=from({big}, resample=bicubic)",
        "--rule", f"{STEM}=from({big}, adapt=channels)",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out / "model.safetensors")
    assert torch.equal(got[POS], timm_pos(src[POS], 14))
    assert torch.equal(got[STEM], src[STEM].sum(1, keepdim=True))
    load_clean(transformers.ViTModel, out, add_pooling_layer=False)


def bert(path, positions: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=positions,
    )
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return load_file(path / "model.safetensors")


BPOS = "embeddings.position_embeddings.weight"


def test_bert_positions_512_to_1024_linear_and_copy(tmp_path):
    src = bert(tmp_path / "b512", 512)
    bert(tmp_path / "b1024", 1024, seed=1)
    s = tmp_path / "b512"
    lin, cp = tmp_path / "lin", tmp_path / "cp"
    res = run(
        "apply", tmp_path / "b1024", "-o", lin, "-q",
        "--rule", f"*=from({s})", "--rule", f"{BPOS}=from({s}, resample=linear)",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ref = F.interpolate(src[BPOS].T[None], size=1024, mode="linear", align_corners=False)[0].T
    assert torch.equal(load_file(lin / "model.safetensors")[BPOS], ref)
    load_clean(transformers.BertModel, lin, add_pooling_layer=False)
    res = run(
        "apply", tmp_path / "b1024", "-o", cp, "-q", "--seed", "7", "--report", tmp_path / "c.json",
        "--rule", f"*=from({s})",
        "--rule", f'{BPOS}=from({s}, resample=copy, init="normal(std=0.02)")',
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(cp / "model.safetensors")[BPOS]
    assert torch.equal(got[:512], src[BPOS])
    drawn = generate(bind_scheme("normal", (), {"std": 0.02}), BPOS, (1024, 8), torch.float32, 7)
    assert torch.equal(got[512:], drawn[512:])  # the tensor's own generator, as a plain rule
    entry = {e["name"]: e for e in json.loads((tmp_path / "c.json").read_text())["tensors"]}[BPOS]
    assert entry["transform"] == "resample=copy, init=normal(std=0.02)"
    want = "resample=copy: positions 512 -> 1024; 512 copied, 512 new (normal(mean=0.0, std=0.02))"
    assert want in entry["notes"], entry["notes"]
    load_clean(transformers.BertModel, cp, add_pooling_layer=False)


def test_impossible_shapes_are_exit_2_and_write_nothing(tmp_path):
    vit(tmp_path / "vit224", 224)
    vit(tmp_path / "vit384", 384, channels=4, seed=1)
    s, t = tmp_path / "vit224", tmp_path / "vit384"
    refused(
        tmp_path,
        ["apply", t, "-o", tmp_path / "o1", "--rule", f"{POS}=from({s}, resample=bicubic, prefix=2)"],
        2, "not a square grid",
    )  # fmt: skip
    refused(
        tmp_path,
        ["apply", t, "-o", tmp_path / "o2", "--rule", f"{STEM}=from({s}, adapt=channels, key={POS})"],
        2, "adapt=channels: needs a convolution weight",
    )  # fmt: skip
    refused(
        tmp_path,
        ["apply", t, "-o", tmp_path / "o3", "--rule", f"{STEM}=from({s}, resample=bicubic)"],
        2, "position table",
    )  # fmt: skip
    refused(
        tmp_path,
        ["apply", t, "-o", tmp_path / "o4", "--rule", f"{POS}=from({s}, resample=cubic)"],
        2, "resample='cubic' is not one of linear, bilinear, bicubic, copy",
    )  # fmt: skip
