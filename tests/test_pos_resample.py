"""Position tables resampled to a new length or grid (issue 15 item 1): the pure functions of
`reinit/transforms/positions.py` against timm's `resample_abs_pos_embed`.

timm is not a dependency of the tests. When it is importable its own function is the reference
(`test_matches_timm_itself`); otherwise `timm_resample_abs_pos_embed` below is the reference,
written from timm's published code (timm/layers/pos_embed.py): split the prefix tokens off,
reshape the rest to a square (or given) grid, `torch.nn.functional.interpolate(posemb,
size=new_size, mode=interpolation, antialias=True)` in float32 (align_corners left at its
default, False), flatten, cast back, put the prefix back in front.

Internal: also tests reinit.transforms.positions directly (not the `reinit` API).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reinit.errors import TransplantError
from reinit.transforms.positions import (
    copy_positions,
    parse_grid,
    position_layout,
    resample_positions,
)


def timm_resample_abs_pos_embed(
    posemb, new_size, old_size=None, num_prefix_tokens=1, interpolation="bicubic", antialias=True
):
    """timm's `resample_abs_pos_embed` from its published formula (see the module doc)."""
    num_pos_tokens = posemb.shape[1]
    num_new_tokens = new_size[0] * new_size[1] + num_prefix_tokens
    if num_new_tokens == num_pos_tokens and new_size[0] == new_size[1]:
        return posemb
    if old_size is None:
        hw = int(math.sqrt(num_pos_tokens - num_prefix_tokens))
        old_size = hw, hw
    prefix, posemb = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    embed_dim = posemb.shape[-1]
    orig_dtype = posemb.dtype
    posemb = posemb.float().reshape(1, old_size[0], old_size[1], -1).permute(0, 3, 1, 2)
    posemb = F.interpolate(posemb, size=new_size, mode=interpolation, antialias=antialias)
    posemb = posemb.permute(0, 2, 3, 1).reshape(1, -1, embed_dim).to(orig_dtype)
    return torch.cat([prefix, posemb], dim=1)


def _ours(src, tgt_shape, mode="bicubic", **kw):
    layout = position_layout(src.shape, tgt_shape, where="t", **kw)
    return resample_positions(src, layout, mode, src.dtype), layout


@pytest.mark.parametrize(
    ("src_n", "tgt_n", "mode"),
    [
        (14, 24, "bicubic"),  # ViT-B/16 224 -> 384
        (24, 14, "bicubic"),  # a shrink: antialiased
        (14, 7, "bilinear"),
        (7, 16, "bilinear"),
    ],
)
def test_vit_grid_equals_timm_reference(src_n, tgt_n, mode):
    torch.manual_seed(0)
    src = torch.randn(1, 1 + src_n * src_n, 16)
    ours, layout = _ours(src, (1, 1 + tgt_n * tgt_n, 16), mode)
    ref = timm_resample_abs_pos_embed(src, (tgt_n, tgt_n), interpolation=mode)
    assert layout.prefix == 1 and layout.src_grid == (src_n, src_n)
    assert torch.equal(ours, ref)
    assert torch.equal(ours[:, 0], src[:, 0])  # the class token is kept as it is


def test_no_prefix_and_two_prefix_tokens_found_from_the_counts():
    torch.manual_seed(1)
    src0 = torch.randn(1, 196, 8)  # no class token
    ours, layout = _ours(src0, (1, 576, 8))
    assert layout.prefix == 0
    assert torch.equal(ours, timm_resample_abs_pos_embed(src0, (24, 24), num_prefix_tokens=0))
    src2 = torch.randn(1, 198, 8)  # DeiT: class + distillation tokens
    ours, layout = _ours(src2, (1, 578, 8))
    assert layout.prefix == 2
    assert torch.equal(ours, timm_resample_abs_pos_embed(src2, (24, 24), num_prefix_tokens=2))


def test_given_grid_and_a_2d_table_with_prefix():
    torch.manual_seed(2)
    src = torch.randn(1, 1 + 12 * 16, 8)  # a non-square source grid, given
    ours, layout = _ours(src, (1, 1 + 20 * 20, 8), grid=(12, 16))
    assert layout.prefix == 1 and layout.tgt_grid == (20, 20)
    assert torch.equal(ours, timm_resample_abs_pos_embed(src, (20, 20), old_size=(12, 16)))
    flat = torch.randn(50, 8)  # CLIP: [1 + 7*7, d], a grid because prefix= is given
    ours, layout = _ours(flat, (1 + 16 * 16, 8), prefix=1)
    assert layout.two_d and ours.shape == (257, 8)
    assert torch.equal(ours, timm_resample_abs_pos_embed(flat[None], (16, 16))[0])


def test_bert_1d_linear_512_to_1024_and_half_precision_computed_in_float32():
    torch.manual_seed(3)
    src = torch.randn(512, 8)
    ours, layout = _ours(src, (1024, 8), "linear")
    assert not layout.two_d
    ref = F.interpolate(src.T[None], size=1024, mode="linear", align_corners=False)[0].T
    assert torch.equal(ours, ref)
    half = src.to(torch.bfloat16)
    got = resample_positions(half, layout, "linear", torch.bfloat16)
    want = F.interpolate(half.float().T[None], size=1024, mode="linear", align_corners=False)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want[0].T.to(torch.bfloat16))


def test_1d_shrink_is_antialiased():
    torch.manual_seed(4)
    src = torch.randn(64, 4)
    ours, _ = _ours(src, (16, 4), "linear")
    ref = F.interpolate(src.T[None, :, None], size=(1, 16), mode="bilinear", antialias=True)
    assert torch.equal(ours, ref[0, :, 0].T)
    plain = F.interpolate(src.T[None], size=16, mode="linear", align_corners=False)[0].T
    assert not torch.allclose(ours, plain)  # averaging 4 neighbours, not sampling 2


def test_copy_keeps_the_overlap_and_takes_the_rest_from_the_fill():
    src = torch.arange(512 * 2, dtype=torch.float32).reshape(512, 2)
    layout = position_layout(src.shape, (1024, 2), where="t")
    fill = torch.full((1024, 2), -1.0)
    out, copied = copy_positions(src, layout, fill)
    assert copied == 512 and torch.equal(out[:512], src) and (out[512:] == -1).all()
    vit = torch.randn(1, 1 + 4 * 4, 3)
    layout = position_layout(vit.shape, (1, 1 + 6 * 6, 3), where="t")
    out, copied = copy_positions(vit, layout, torch.zeros(1, 37, 3))
    grid = out[0, 1:].reshape(6, 6, 3)
    assert copied == 17 and torch.equal(out[0, 0], vit[0, 0])
    assert torch.equal(grid[:4, :4], vit[0, 1:].reshape(4, 4, 3)) and (grid[4:] == 0).all()


@pytest.mark.parametrize(
    ("src", "tgt", "kw", "says"),
    [
        ((512, 8), (1024, 16), {}, "widths differ"),
        ((512, 8), (1, 1024, 8), {}, "[positions, dim] or [1, positions, dim]"),
        ((2, 197, 8), (2, 577, 8), {}, "[1, positions, dim]"),
        ((1, 203, 8), (1, 590, 8), {}, "give prefix=N and/or grid=HxW"),
        ((1, 197, 8), (1, 580, 8), {"prefix": 1}, "not a square grid"),
        ((1, 197, 8), (1, 577, 8), {"grid": (15, 15)}, "does not fit"),
        ((1, 197, 8), (1, 577, 8), {"prefix": 2}, "not a square grid; give grid=HxW"),
    ],
)
def test_impossible_shapes_are_refused_with_what_to_give(src, tgt, kw, says):
    with pytest.raises(TransplantError, match="^t: ") as e:
        position_layout(src, tgt, where="t", **kw)
    assert says in str(e.value) and e.value.exit_code == 2


def test_parse_grid():
    assert parse_grid("14x16", "t") == (14, 16) and parse_grid("7X7", "t") == (7, 7)
    for bad in ("14", "0x3", "axb", "3x"):
        with pytest.raises(TransplantError, match="HxW"):
            parse_grid(bad, "t")


def test_matches_timm_itself():
    timm_pos = pytest.importorskip("timm.layers.pos_embed")
    torch.manual_seed(5)
    for n, m in ((14, 24), (24, 14)):
        src = torch.randn(1, 1 + n * n, 8)
        ours, _ = _ours(src, (1, 1 + m * m, 8))
        assert torch.equal(ours, timm_pos.resample_abs_pos_embed(src, [m, m]))
