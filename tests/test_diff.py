"""`reinit diff A B`: bitwise change detection, the size of each change, shape/dtype
changes, added and removed names; JSON and the terminal table.

Internal: also tests reinit.tools.diff directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run
from safetensors.torch import save_file

import reinit
from reinit.tools.diff import diff_checkpoints, value_diff


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_report.py: the shared box thrashes with more
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = {
        "same": torch.randn(16, 8, generator=g),
        "scaled": torch.randn(16, 8, generator=g),
        "one_value": torch.randn(10, generator=g),
        "nan_same": torch.tensor([1.0, float("nan"), 3.0]),
        "nan_new": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "grown": torch.randn(4, 8, generator=g),
        "recast": torch.randn(32, generator=g),
        "was_zero": torch.zeros(3, 3),
        "removed": torch.ones(2),
    }
    b = {k: v.clone() for k, v in a.items() if k != "removed"}
    b["scaled"] = a["scaled"] * 1.5
    b["one_value"][3] += 0.25
    b["nan_new"][2] = float("nan")
    b["grown"] = torch.cat([a["grown"], torch.zeros(2, 8)])
    b["recast"] = a["recast"].to(torch.bfloat16)
    b["was_zero"][1, 1] = 2.0
    b["added"] = torch.full((5,), 7.0)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors", a, b


def test_diff_measures_each_change(pair):
    pa, pb, a, b = pair
    d = diff_checkpoints(pa, pb)
    status = {t.name: t.status for t in d.tensors}
    assert status == {
        "same": "identical",
        "nan_same": "identical",  # the same NaN bits
        "scaled": "changed",
        "one_value": "changed",
        "nan_new": "changed",
        "grown": "changed",
        "recast": "changed",
        "was_zero": "changed",
        "removed": "removed",
        "added": "added",
    }
    sc = d.entry("scaled")
    delta = (b["scaled"] - a["scaled"]).double()
    assert sc.max_abs_diff == pytest.approx(float(delta.abs().max()), rel=1e-12)
    assert sc.rel_frobenius == pytest.approx(0.5, rel=1e-6)  # ‖1.5a − a‖/‖a‖
    assert sc.std_b == pytest.approx(1.5 * sc.std_a, rel=1e-6)
    assert d.entry("one_value").max_abs_diff == pytest.approx(0.25, rel=1e-6)
    nn = d.entry("nan_new")
    assert nn.nonfinite_changed == 1 and nn.max_abs_diff == 0.0  # finite positions agree
    gr = d.entry("grown")
    assert (gr.shape_a, gr.shape_b, gr.max_abs_diff, gr.rel_frobenius) == (
        (4, 8),
        (6, 8),
        None,
        None,
    )
    assert gr.what == "4×8→6×8"
    rc = d.entry("recast")
    assert rc.what == "32 float32→bfloat16"
    assert 0 < rc.max_abs_diff < 2**-7 * float(a["recast"].abs().max())  # bf16 rounding only
    assert d.entry("was_zero").rel_frobenius is None  # ‖A‖ = 0: no relative change exists
    assert d.entry("was_zero").max_abs_diff == 2.0
    doc = json.loads(d.to_json())
    assert doc["added"] == ["added"] and doc["removed"] == ["removed"]
    assert doc["summary"] == {
        "compared": 8, "identical": 2, "changed": 6, "added": 1, "removed": 1,
    }  # fmt: skip


def test_value_diff_is_exact_in_float64_across_chunks(monkeypatch):
    import reinit.tools.diff as diff_mod

    monkeypatch.setattr(diff_mod, "_CHUNK", 7)  # many chunks on a small tensor
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, generator=g)
    y = x + torch.randn(100, generator=g) * 1e-3
    max_abs, rel, bad = value_diff(x, y)
    d = y.double() - x.double()
    assert max_abs == pytest.approx(float(d.abs().max()), rel=1e-12)
    assert rel == pytest.approx(float(d.norm() / x.double().norm()), rel=1e-12)
    assert bad == 0


def test_diff_cli_json_terminal_and_formats(pair, tmp_path):
    pa, pb, a, _ = pair
    r = run("diff", str(pa), str(pb), "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert {t["name"]: t["status"] for t in doc["tensors"]}["scaled"] == "changed"
    r = run("diff", str(pa), str(pb))
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "8 tensors in both: 6 changed, 2 identical; 1 added, 1 removed"
    assert max(len(line) for line in lines) <= 100 and "\x1b[" not in r.stdout
    body = "\n".join(lines[1:])
    assert "scaled" in body and "same " not in body  # identical tensors are only counted
    assert "+1 nonfinite" in body and "4×8→6×8" in body
    # a torch file with the same tensors is identical to the safetensors file, bit for bit
    torch.save(a, tmp_path / "a.bin")
    same = diff_checkpoints(tmp_path / "a.bin", pa)
    assert {t.status for t in same.tensors} == {"identical"}
    missing = run("diff", str(pa), str(tmp_path / "nope.safetensors"))
    assert missing.exit_code == 2 and "nope.safetensors" in missing.stderr


def test_diff_of_an_apply(tmp_path):
    """What a user runs after `reinit apply`: exactly the re-initialized tensors changed."""
    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.weight": torch.randn(8, 8, generator=g) for i in range(3)}
    save_file(sd, tmp_path / "m.safetensors")
    reinit.apply(tmp_path / "m.safetensors", ["layers.2.weight=zeros"], default_report=False)
    d = diff_checkpoints(tmp_path / "m.safetensors", tmp_path / "m.reinit.safetensors")
    assert [t.name for t in d.of("changed")] == ["layers.2.weight"]
    assert d.entry("layers.2.weight").rel_frobenius == pytest.approx(1.0)
    assert math.isclose(d.entry("layers.2.weight").std_b, 0.0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_tensors_are_compared_exactly(tmp_path, dtype):
    """int64 values past 2^53 (a step counter, a hashed id) that differ by 1 were reported
    `changed` with max |Δ| 0 and rel Δ 0: the difference was taken after a float64 cast."""
    big = 2**53 if dtype == torch.int64 else 100
    a = torch.tensor([big, 7, 3], dtype=dtype)
    b = torch.tensor([big + 1, 7, 3], dtype=dtype)
    save_file({"t": a}, tmp_path / "a.safetensors")
    save_file({"t": b}, tmp_path / "b.safetensors")
    d = reinit.diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    t = d.entry("t")
    assert t.status == "changed"
    assert t.max_abs_diff == 1.0
    assert t.rel_frobenius == pytest.approx(1 / math.sqrt(big**2 + 49 + 9))
