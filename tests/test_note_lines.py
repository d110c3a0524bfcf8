"""Lossy float32 -> bfloat16 casts of a transplant are said on the terminal (one `note:` line
with a count), not only in the JSON."""

from __future__ import annotations

import torch
from helpers import run
from safetensors.torch import save_file


def test_lossy_cast_is_one_note_line_with_a_count(tmp_path):
    g = torch.Generator().manual_seed(0)
    donor = tmp_path / "donor.safetensors"
    save_file({f"l.{i}.w": torch.randn(8, 8, generator=g) for i in range(3)}, donor)
    target = tmp_path / "t.safetensors"
    save_file({f"l.{i}.w": torch.zeros(8, 8, dtype=torch.bfloat16) for i in range(3)}, target)
    r = run("apply", str(target), "-r", f"*=from({donor})", "-o", str(tmp_path / "o.safetensors"))
    assert r.exit_code == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: lossy cast float32 -> bfloat16 (3 tensors, e.g. l.0.w)"]
