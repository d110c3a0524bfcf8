"""Conv stems adapted to another number of input channels (issue 15 item 2): the pure function
of `reinit/transforms/stems.py` against timm's `adapt_input_conv`.

timm is not a dependency of the tests. When it is importable its own function is the reference
(`test_matches_timm_itself`); otherwise `timm_adapt_input_conv` below is, written from timm's
published code (timm/models/_manipulate.py): in float32, 1 channel = the sum over the input
filters; N channels = `weight.repeat(1, ceil(N/3), 1, 1)[:, :N]` scaled by 3/N; cast back.

Internal: also tests reinit.transforms.stems directly (not the `reinit` API).
"""

from __future__ import annotations

import math

import pytest
import torch

from reinit.errors import TransplantError
from reinit.transforms.stems import adapt_channels


def timm_adapt_input_conv(in_chans, conv_weight):
    """timm's `adapt_input_conv` for a 3-channel (RGB) weight, from its published formula."""
    conv_type = conv_weight.dtype
    conv_weight = conv_weight.float()
    if in_chans == 1:
        conv_weight = conv_weight.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        repeat = int(math.ceil(in_chans / 3))
        conv_weight = conv_weight.repeat(1, repeat, 1, 1)[:, :in_chans, :, :]
        conv_weight *= 3 / float(in_chans)
    return conv_weight.to(conv_type)


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_resnet_stem_equals_timm_reference(channels, dtype):
    torch.manual_seed(channels)
    w = torch.randn(64, 3, 7, 7).to(dtype)  # ResNet's conv1
    got = adapt_channels(w, (64, channels, 7, 7), dtype, "t")
    assert got.dtype == dtype and torch.equal(got, timm_adapt_input_conv(channels, w.clone()))


def test_the_response_to_a_grey_image_is_kept():
    """What the formula is for: a grey image (all channels equal) gives the old response for 1
    channel (the sum) and for any multiple of 3 (each filter repeated k times, scaled by 1/k)."""
    torch.manual_seed(0)
    conv3 = torch.nn.Conv2d(3, 8, 3, bias=False)
    img = torch.rand(1, 1, 9, 9)
    want = conv3(img.expand(1, 3, 9, 9))
    for n in (1, 6, 9):
        conv = torch.nn.Conv2d(n, 8, 3, bias=False)
        with torch.no_grad():
            conv.weight.copy_(
                adapt_channels(conv3.weight.detach(), conv.weight.shape, torch.float32, "t")
            )
        got = conv(img.expand(1, n, 9, 9) if n > 1 else img)
        assert torch.allclose(got, want, atol=1e-5)


def test_other_source_channel_counts_and_kernel_dims():
    """Beyond timm's RGB-only rule: a source of `in` channels repeats its `in` filters and
    scales by in/N (timm ≥ 1.0's `base_chans`); 1-D and 3-D convs work the same way."""
    w = torch.randn(4, 2, 5)
    got = adapt_channels(w, (4, 5, 5), torch.float32, "t")
    assert torch.equal(got, torch.cat([w, w, w], 1)[:, :5] * (2 / 5))
    w3 = torch.randn(4, 3, 2, 2, 2)
    assert torch.equal(
        adapt_channels(w3, (4, 1, 2, 2, 2), torch.float32, "t"), w3.sum(1, keepdim=True)
    )


@pytest.mark.parametrize(
    ("src", "tgt", "says"),
    [
        ((64, 3), (64, 1), "convolution weight"),
        ((64, 3, 7, 7), (32, 1, 7, 7), "output channels or the kernel differ"),
        ((64, 3, 7, 7), (64, 4, 3, 3), "output channels or the kernel differ"),
        ((64, 3, 7, 7), (64, 4, 7), "convolution weight"),
    ],
)
def test_impossible_shapes_are_refused(src, tgt, says):
    with pytest.raises(TransplantError, match="^adapt=channels: ") as e:
        adapt_channels(torch.zeros(src), tgt, torch.float32, "adapt=channels")
    assert says in str(e.value) and e.value.exit_code == 2


def test_matches_timm_itself():
    manipulate = pytest.importorskip("timm.models._manipulate")
    w = torch.randn(16, 3, 3, 3)
    for n in (1, 2, 4, 8):
        got = adapt_channels(w, (16, n, 3, 3), torch.float32, "t")
        assert torch.equal(got, manipulate.adapt_input_conv(n, w.clone()))
