"""Issue 28: a big bf16/fp16/fp8 tensor drawn by a plain-normal scheme (normal, kaiming_normal,
xavier_normal) is drawn in float32 chunks and cast chunk by chunk (`generate_chunked`), never
whole in float32, and its bytes are exactly those of the whole draw (`generate`: one
`normal_` on the whole float32 tensor, then the cast), for every chunk/tail split.

Internal: imports reinit.schemes."""

from __future__ import annotations

import pytest
import torch

import reinit
from reinit.schemes import bind_scheme, generate, generate_chunked

NARROW = [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]
SCHEMES = [
    ("normal", {"mean": 0.5, "std": 0.02}),
    ("kaiming_normal", {}),
    ("kaiming_normal", {"a": 0.1, "mode": "fan_out", "nonlinearity": "leaky_relu"}),
    ("kaiming_normal", {"nonlinearity": "relu"}),
    ("xavier_normal", {"gain": 1.5}),
]
# numel against the 64-value chunk: whole chunks, a tail of 16+ (no torch redraw), a tail
# under 16 (merged into the last chunk), one off either side
SHAPES = [(8, 32), (9, 31), (7, 37), (33, 9), (65, 3), (129, 2)]


@pytest.mark.parametrize("dtype", NARROW, ids=str)
@pytest.mark.parametrize(("name", "kwargs"), SCHEMES, ids=lambda x: str(x))
def test_chunked_draw_is_the_whole_draw(monkeypatch, dtype, name, kwargs):
    monkeypatch.setattr(reinit.schemes, "DRAW_CHUNK", 64)
    bound = bind_scheme(name, (), kwargs)
    for shape in SHAPES:
        got = generate_chunked(bound, "layers.0.w", shape, dtype, seed=7)
        assert got is not None, shape
        want = generate(bound, "layers.0.w", shape, dtype, seed=7)
        assert got.dtype == dtype and got.shape == shape
        assert got.view(torch.uint8).numpy().tobytes() == want.view(torch.uint8).numpy().tobytes()


def test_only_plain_normal_narrow_cpu_draws_are_chunked(monkeypatch):
    monkeypatch.setattr(reinit.schemes, "DRAW_CHUNK", 64)
    shape = (33, 9)
    assert generate_chunked(bind_scheme("uniform"), "w", shape, torch.bfloat16, 0) is None
    assert generate_chunked(bind_scheme("trunc_normal"), "w", shape, torch.bfloat16, 0) is None
    assert generate_chunked(bind_scheme("normal"), "w", shape, torch.float32, 0) is None
    assert generate_chunked(bind_scheme("normal"), "w", (8, 16), torch.bfloat16, 0) is None


def test_apply_draws_big_tensors_in_chunks_with_the_same_values(monkeypatch):
    """The engine takes the chunked draw (a spy counts it) and gives `generate`'s bytes."""
    monkeypatch.setattr(reinit.schemes, "DRAW_CHUNK", 64)
    calls = []
    real = reinit.schemes.generate_chunked

    def spy(*args, **kw):
        out = real(*args, **kw)
        calls.append(out is not None)
        return out

    monkeypatch.setattr("reinit.run.stream.generate_chunked", spy)
    sd = {"a.weight": torch.zeros(33, 9, dtype=torch.bfloat16), "b": torch.ones(4)}
    out, _ = reinit.apply_to_state_dict(sd, ["a.weight=kaiming_normal"], seed=3)
    want = generate(bind_scheme("kaiming_normal"), "a.weight", (33, 9), torch.bfloat16, 3)
    assert calls == [True]
    assert torch.equal(out["a.weight"], want) and torch.equal(out["b"], sd["b"])
