"""`reinit report OUT` of an output made in several steps (a recipe's, or applies chained
through files) lists every step its record holds in its header (terminal, Markdown) and in the
JSON's `steps`; a one-step output's report is as it always was (no `steps`, no step line).
Was: the header gave the last step's seed and rules only."""

from __future__ import annotations

import json

from helpers import run, tiny_bert
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import reinit

FIRST = "encoder.layer.0.*.weight=normal(std=0.02)"
LAST = "*.bias=zeros"


def _two_steps(tmp_path):
    """The same two steps as a recipe and as two applies chained through files."""
    src = tiny_bert(tmp_path / "bert")
    (tmp_path / "r.yaml").write_text(
        f"source: {src}\noutput: {tmp_path / 'recipe'}/\nsteps:\n"
        f"  - rules: ['{FIRST}']\n    seed: 3\n"
        f"  - rules: ['{LAST}']\n    drop: ['pooler.*']\n"
    )
    assert run("run", tmp_path / "r.yaml", "-q").exit_code == 0
    mid, out = tmp_path / "mid", tmp_path / "chained"
    assert run("apply", src, "-r", FIRST, "--seed", "3", "-o", f"{mid}/", "-q").exit_code == 0
    res = run("apply", mid, "-r", LAST, "--drop", "pooler.*", "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    return tmp_path / "recipe", out, mid


STEPS = [
    f"step 1 of 2: seed 3, rules {FIRST}",
    f"step 2 of 2: seed 0, rules {LAST}; --drop pooler.*",
]


def test_every_step_is_in_the_terminal_json_and_markdown_reports(tmp_path):
    for out in _two_steps(tmp_path)[:2]:
        res = run("report", out)
        assert res.exit_code == 0, res.output
        assert res.output.splitlines()[1:3] == STEPS, res.output
        doc = json.loads(run("report", out, "--json").stdout)
        assert doc["seed"] == 0 and doc["rules"] == [LAST]  # the last step's, as before
        assert doc["steps"] == [
            {"seed": 3, "rules": [FIRST], "surgery": []},
            {"seed": 0, "rules": [LAST], "surgery": ["--drop pooler.*"]},
        ]
        assert reinit.Report.from_dict(doc).to_dict()["steps"] == doc["steps"]  # read back whole
        md = tmp_path / f"{out.name}.md"
        assert run("report", out, "-o", md).exit_code == 0
        assert [f"- {line[:12]} `{line[13:]}`" for line in STEPS] == [
            ln for ln in md.read_text().splitlines() if ln.startswith("- step ")
        ]  # each step's text in a code span, as the rules line shows rules


def test_a_one_step_output_reports_as_before(tmp_path):
    mid = _two_steps(tmp_path)[2]
    res = run("report", mid)
    assert res.exit_code == 0, res.output
    assert "step 1" not in res.output
    doc = json.loads(run("report", mid, "--json").stdout)
    assert "steps" not in doc and doc["seed"] == 3 and doc["rules"] == [FIRST]
    assert list(doc) == [
        "reinit_version", "source", "output", "seed", "rules", "tensors", "summary", "dropped",
    ]  # fmt: skip


def test_a_hostile_record_s_steps_neither_drive_nor_flood_the_terminal(tmp_path):
    """A record's rules are the file's text: escapes are shown escaped (never sent to the
    terminal), and each step line is bounded (was: a record of 32 steps with 1 MB rules printed
    33 MB on the terminal); the JSON holds every step's rules whole."""
    out = _two_steps(tmp_path)[1]
    path = out / "model.safetensors"
    with safe_open(path, "pt") as f:
        record = json.loads(f.metadata()["reinit"])
    evil = "<img src=x>\x1b[2J\x1b[31merror: forged\n\u202e" + "x" * 100_000 + "=zeros"
    record["before"] = [{**record["before"][0], "rules": [evil]}] * 5
    save_file(load_file(path), path, metadata={"format": "pt", "reinit": json.dumps(record)})
    res = run("report", out)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("step ")]
    assert len(lines) == 6 and "\x1b" not in res.output and "\u202e" not in res.output
    assert "\\x1b[2J" in lines[0]  # shown escaped
    assert len(res.output) < 6 * 3000, len(res.output)
    md = tmp_path / "r.md"
    assert run("report", out, "-o", md).exit_code == 0
    text = md.read_text()
    steps = [ln for ln in text.splitlines() if ln.startswith("- step ")]
    assert "\x1b" not in text and all(len(ln) < 3000 for ln in steps)
    assert steps[0].startswith("- step 1 of 6: `seed 3, rules <img src=x>\\x1b[2J")  # shown
    doc = json.loads(run("report", out, "--json").stdout)
    assert [st["rules"] for st in doc["steps"][:5]] == [[evil]] * 5


def test_a_record_of_a_later_format_claims_no_steps(tmp_path):
    """A one-step output a later reinit recorded (record format past this one's) was reported
    as 'made in several steps; the steps before the last are not recorded' (JSON `steps`
    null): its steps are not read, so nothing is said of them."""
    mid = _two_steps(tmp_path)[2]
    path = mid / "model.safetensors"
    with safe_open(path, "pt") as f:
        record = {**json.loads(f.metadata()["reinit"]), "record": 99}
    save_file(load_file(path), path, metadata={"format": "pt", "reinit": json.dumps(record)})
    res = run("report", mid)
    assert res.exit_code == 0 and "steps" not in res.output, res.output
    doc = json.loads(run("report", mid, "--json").stdout)
    assert "steps" not in doc and doc["seed"] == 3 and doc["rules"] == [FIRST]
