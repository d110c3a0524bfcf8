"""An F8_E8M0 tensor (an MX block scale: powers of two only, no zero) cannot hold any scheme's
values: a normal(std=1) draw came out with std 0.125 and no flag (issue #23 L1). A rule naming
one is refused at plan time (exit 2, naming the dtype); a wildcard rule skips it, with the
reason in the report; the tensor's bytes are kept."""

from __future__ import annotations

import json

import torch
from helpers import refused, run
from safetensors.torch import load_file, save_file


def _source(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(
        {"scale": torch.full((64, 4), 0.5).to(torch.float8_e8m0fnu), "w": torch.randn(4, 4)}, src
    )
    return src


def test_a_rule_naming_an_e8m0_tensor_is_refused(tmp_path):
    src = _source(tmp_path)
    refused(
        tmp_path,
        ["apply", src, "-r", "scale=normal", "-o", tmp_path / "out"],
        2,
        "'scale'",
        "float8_e8m0fnu",
        "powers of two",
    )


def test_a_wildcard_skips_an_e8m0_tensor_and_says_why(tmp_path):
    src = _source(tmp_path)
    out = tmp_path / "out.safetensors"
    res = run("apply", src, "-r", "*=normal", "-o", out, "--json", "-q")
    assert res.exit_code == 0, res.output
    entry = next(e for e in json.loads(res.stdout)["tensors"] if e["name"] == "scale")
    assert entry["action"] == "skipped" and "powers of two" in entry["reason"]
    got, want = load_file(out)["scale"], load_file(src)["scale"]
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
