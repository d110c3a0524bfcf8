"""Values as the rules say across dtypes: from() between one-byte floats (float8_e4m3fn,
float8_e5m2) and the other dtypes gives the source's values cast to the target's dtype (it was
an internal error: torch has no `isinf`/`<` kernel for float8), an out-of-range value is named in
the note or refused for an integer target, and `mean_resize` as a rule gives what `--resize`
gives (a bias too)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run
from safetensors.torch import load_file, save_file

DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16, torch.float32]


def _values() -> torch.Tensor:
    return torch.randn(8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("src_dtype", DTYPES, ids=str)
def test_every_dtype_pair_gives_the_cast_source(tmp_path, src_dtype):
    source = _values().to(src_dtype)
    save_file({"w": source}, tmp_path / "s.safetensors")
    target = {f"t{i}": torch.zeros(8, 8, dtype=d) for i, d in enumerate(DTYPES)}
    target["i"] = torch.zeros(8, 8, dtype=torch.int16)
    save_file(target, tmp_path / "t.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "t.safetensors", "-o", out, "-q",
              "-r", f"*=from({tmp_path / 's.safetensors'}, key=w)")  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out)
    for name, t in target.items():
        assert got[name].dtype == t.dtype
        assert torch.equal(got[name].float(), source.to(t.dtype).float()), name


@pytest.mark.parametrize(
    "dtype, note",
    [
        (torch.float8_e5m2, "2 values overflowed to inf"),
        (torch.float8_e4m3fn, "2 values out of range saturated at +-448"),
    ],
    ids=str,
)
def test_a_value_past_a_float8_range_is_named(tmp_path, dtype, note):
    save_file({"w": torch.zeros(4, dtype=dtype)}, tmp_path / "t.safetensors")
    save_file({"w": torch.tensor([1.0, 1e6, -7e5, 2.0])}, tmp_path / "s.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "t.safetensors", "-o", out, "--json",
              "-r", f"w=from({tmp_path / 's.safetensors'})")  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = json.loads(res.stdout)["tensors"][0]["notes"]
    assert any(n.startswith("lossy cast float32 -> ") and n.endswith(note) for n in notes), notes


def test_a_float8_source_into_an_integer_refuses_what_does_not_fit(tmp_path):
    save_file({"w": torch.zeros(3, dtype=torch.int8)}, tmp_path / "t.safetensors")
    source = torch.tensor([1.0, 300.0, -2.0]).to(torch.float8_e4m3fn)
    save_file({"w": source}, tmp_path / "s.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "t.safetensors", "-o", out,
              "-r", f"w=from({tmp_path / 's.safetensors'})")  # fmt: skip
    assert res.exit_code == 2 and "1 source value(s) do not fit int8" in res.output, res.output
    assert not out.exists()


@pytest.mark.parametrize("part", ["rows=6:8", "cols=random(0.5), group=g"])
def test_a_partial_reinit_of_a_float8_tensor_keeps_the_rest_byte_for_byte(tmp_path, part):
    """`rows=`/`cols=` on a float8 tensor (drop-upcycling an fp8 MoE) was an internal error:
    torch has no index_copy for float8. The part gets the whole-tensor draw's values there."""
    before = _values().to(torch.float8_e4m3fn)
    save_file({"w": before}, tmp_path / "t.safetensors")
    whole, out = tmp_path / "whole.safetensors", tmp_path / "o.safetensors"
    assert run("apply", tmp_path / "t.safetensors", "-o", whole, "-q",
               "-r", "w=normal(std=0.02)").exit_code == 0  # fmt: skip
    res = run("apply", tmp_path / "t.safetensors", "-o", out, "-q",
              "-r", f"w=normal(std=0.02, {part})")  # fmt: skip
    assert res.exit_code == 0, res.output
    got, drawn = (load_file(p)["w"].view(torch.uint8) for p in (out, whole))
    old = before.view(torch.uint8)
    dim = 0 if part.startswith("rows") else 1
    changed = (got != old).any(dim=1 - dim)
    assert changed.sum() >= 2  # rows 6, 7 / about half the columns were drawn again
    kept = changed.logical_not()
    assert torch.equal(got.index_select(dim, kept.nonzero().flatten()),
                       old.index_select(dim, kept.nonzero().flatten()))  # fmt: skip
    picked = changed.nonzero().flatten()
    assert torch.equal(got.index_select(dim, picked), drawn.index_select(dim, picked))


@pytest.mark.parametrize(
    "src_dtype", [torch.uint64, torch.int64, torch.uint8, torch.float32], ids=str
)
def test_a_uint64_target_takes_the_values_that_fit_it(tmp_path, src_dtype):
    """uint64's max does not fit int64, in which the bound was compared: every source value,
    0 included, was 'not fitting uint64' (exit 2), even a plain uint64 -> uint64 copy."""
    source = torch.tensor([0, 3, 255]).to(src_dtype)
    save_file({"w": source}, tmp_path / "s.safetensors")
    save_file({"w": torch.zeros(3, dtype=torch.uint64)}, tmp_path / "t.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "t.safetensors", "-o", out, "-q",
              "-r", f"w=from({tmp_path / 's.safetensors'})")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert load_file(out)["w"].tolist() == [0, 3, 255]


@pytest.mark.parametrize(
    "source, dtype",
    [
        (torch.tensor([2.0**31]), torch.int32),  # float32 rounds int32's max up to 2**31
        (torch.tensor([2.0**63], dtype=torch.float64), torch.int64),
        (torch.tensor([-1], dtype=torch.int64), torch.uint64),
    ],
    ids=["2**31-int32", "2**63-int64", "-1-uint64"],
)
def test_a_value_just_past_an_integer_range_is_refused_not_wrapped(tmp_path, source, dtype):
    """2**31 in float32 compared equal to int32's max (2**31 - 1, rounded up to float32) and was
    written as -2**31."""
    save_file({"w": source}, tmp_path / "s.safetensors")
    save_file({"w": torch.zeros(1, dtype=dtype)}, tmp_path / "t.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "t.safetensors", "-o", out,
              "-r", f"w=from({tmp_path / 's.safetensors'})")  # fmt: skip
    assert res.exit_code == 2 and "1 source value(s) do not fit" in res.output, res.output
    assert not out.exists()


def test_the_mean_resize_rule_gives_what_resize_gives_a_bias(tmp_path):
    """The report of `--resize b=[48]` names the scheme `mean_resize(old_rows=40)`, and the docs
    say that rule gives the same values on the grown tensor; on a 1-D tensor (an LM head's bias)
    the rule was refused ('needs a 2-D tensor')."""
    g = torch.Generator().manual_seed(0)
    save_file({"b": torch.randn(40, generator=g), "w": torch.randn(40, 4, generator=g)},
              tmp_path / "s.safetensors")  # fmt: skip
    grown, again = tmp_path / "grown.safetensors", tmp_path / "again.safetensors"
    res = run("apply", tmp_path / "s.safetensors", "-o", grown, "--json",
              "--resize", "b=[48]", "--resize", "w=[48,*]")  # fmt: skip
    assert res.exit_code == 0, res.output
    schemes = {t["name"]: t["scheme"] for t in json.loads(res.stdout)["tensors"]}
    assert schemes == {"b": "mean_resize(old_rows=40)", "w": "mean_resize(old_rows=40)"}
    res = run("apply", grown, "-o", again, "-q",
              "-r", "b=mean_resize(old_rows=40)", "-r", "w=mean_resize(old_rows=40)")  # fmt: skip
    assert res.exit_code == 0, res.output
    a, b = load_file(grown), load_file(again)
    assert torch.equal(a["b"], b["b"]) and torch.equal(a["w"], b["w"])
    source = load_file(tmp_path / "s.safetensors")["b"]
    assert torch.equal(a["b"][:40], source)
    assert torch.allclose(a["b"][40:], source.mean().expand(8), rtol=0, atol=1e-6)
