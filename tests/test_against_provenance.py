"""`report NEW --against OLD`: the Markdown shows NEW's own recorded seed and rules (from the
safetensors `reinit` metadata), not `seed: 0, rules: (none)`.

Internal: also tests reinit.io.sources, reinit.tools.provenance directly (not the `reinit` API).
"""

from __future__ import annotations

import torch
from helpers import run
from safetensors.torch import save_file

from reinit.io.sources import open_checkpoint
from reinit.tools.provenance import recorded_provenance


def test_report_against_markdown_shows_the_files_seed_and_rules(tmp_path):
    old = tmp_path / "old.safetensors"
    save_file({"a.weight": torch.ones(8, 8), "b.weight": torch.ones(8, 8)}, old)
    new = tmp_path / "new.safetensors"
    r = run("apply", str(old), "-r", "a.weight=kaiming", "--seed", "7", "-o", str(new), "-q")
    assert r.exit_code == 0, r.stderr
    md = tmp_path / "r.md"
    r = run("report", str(new), "--against", str(old), "-o", str(md), "-q")
    assert r.exit_code == 0, r.stderr
    text = md.read_text()
    assert "- seed: 7" in text and "a.weight=kaiming" in text
    assert "rules: (none)" not in text


def test_a_file_not_written_by_reinit_has_no_provenance(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2)}, p, metadata={"reinit": "not json"})
    with open_checkpoint(p) as ck:
        assert recorded_provenance(ck) is None
