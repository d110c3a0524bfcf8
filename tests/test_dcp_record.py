"""A `--format dcp` output records its run (`reinit.json` beside `.metadata`, the safetensors
metadata's `reinit` value), so `reinit report OUT --against SRC` replays it and gives the
verdicts it gives the same job written as safetensors; `torch.distributed.checkpoint.load`
still reads the DCP with no key missing or unexpected.

Before: a DCP output recorded nothing, so a tensor dropped and added back as zeros was
compared with the dropped one and flagged `constant`, and the rules' schemes were unknown.

Internal: also reads the record with reinit.tools.provenance and reinit.io.sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import run, verdicts

import reinit
from reinit.io.sources import open_checkpoint
from reinit.tools.provenance import recorded_provenance

transformers = pytest.importorskip("transformers")

DIMS = dict(
    vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    tie_word_embeddings=False, initializer_range=0.02,
)  # fmt: skip


def config(kind: str) -> object:
    if kind == "mixtral":
        return transformers.MixtralConfig(**DIMS, num_local_experts=4, num_experts_per_tok=2)
    return transformers.LlamaConfig(**DIMS)


def source(tmp_path: Path, kind: str) -> Path:
    """A tiny model of `kind` saved by transformers; a Mixtral's as a DCP of the module's names
    (stacked experts), the baseline a DCP output is compared with by name, its config.json
    beside (the config the report judges by)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config(kind))
    model.save_pretrained(tmp_path / kind)
    if kind != "mixtral":
        return tmp_path / kind
    base = tmp_path / "base-dcp"
    res = run("apply", tmp_path / kind, "--rule", "*norm*=ones", "--format", "dcp", "-o", base)
    assert res.exit_code == 0, res.output
    (base / "config.json").write_text((tmp_path / kind / "config.json").read_text())
    return base


DOWN = "model.layers.1.self_attn.o_proj.weight"


@pytest.mark.parametrize(
    ("kind", "rules"),
    [
        ("llama", ["lm_head.weight=kaiming_normal", "*.mlp.down_proj.weight=normal(std=0.5)"]),
        ("mixtral", ["lm_head.weight=kaiming_normal", "*.experts.down_proj=normal(std=0.5)"]),
    ],
)
def test_report_of_a_dcp_output_replays_its_record_as_for_safetensors(kind, rules, tmp_path):
    src = source(tmp_path, kind)
    surgery = {"drop": [DOWN], "add": [f"{DOWN}=[16,16]:zeros"]}
    out_st, out_dcp = tmp_path / "out-st", tmp_path / "out-dcp"
    reinit.apply(src, rules, out_st, seed=3, **surgery)
    reinit.apply(src, rules, out_dcp, seed=3, format="dcp", **surgery)

    # torch reads the DCP into a fresh model's state_dict(): every key, no other
    state = transformers.AutoModelForCausalLM.from_config(config(kind)).state_dict()
    dcp.load(state, checkpoint_id=out_dcp)
    meta = dcp.FileSystemReader(out_dcp).read_metadata()
    assert meta.state_dict_metadata.keys() == state.keys()
    assert torch.equal(state[DOWN], torch.zeros(16, 16))

    # the same record as the safetensors output's
    with open_checkpoint(out_st) as a, open_checkpoint(out_dcp) as b:
        assert recorded_provenance(b) == recorded_provenance(a) is not None
    record = json.loads((out_dcp / "reinit.json").read_text())
    assert record["rules"] == rules and record["seed"] == 3 and record["surgery"] == surgery

    want, got = reinit.report_checkpoint(out_st, src), reinit.report_checkpoint(out_dcp, src)
    assert verdicts(got, notes=True) == verdicts(want, notes=True)
    assert got.warnings == want.warnings == ()
    by = {e.name: e for e in got.tensors}
    assert (by[DOWN].action, by[DOWN].scheme, by[DOWN].flags) == ("reinit", "zeros", ())
    assert by["lm_head.weight"].flags == ("off_reference",)  # kaiming at fan-in 16, vs 0.02
    res = run("report", out_dcp, "--against", src, "--fail-on", "constant")
    assert res.exit_code == 0, res.output


def test_a_dcp_outputs_record_is_its_own_file_and_in_place_keeps_working(tmp_path):
    """The record is one small JSON file the DCP's own: `--in-place` rewrites the folder (the
    record is the new run's), and `--overwrite` replaces it."""
    src = source(tmp_path, "llama")
    out = tmp_path / "out-dcp"
    reinit.apply(src, ["lm_head.weight=zeros"], out, format="dcp", seed=1)
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp", "reinit.json"]
    res = run("apply", out, "--rule", "*norm*=ones", "--format", "dcp", "--in-place", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "reinit.json").read_text())["rules"] == ["*norm*=ones"]
    res = run("apply", src, "--rule", "lm_head.weight=ones", "--format", "dcp", "-o", out,
              "--overwrite", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((out / "reinit.json").read_text())["rules"] == ["lm_head.weight=ones"]


def test_a_record_file_that_is_not_one_is_no_record(tmp_path):
    """`reinit.json` is read bounded, as JSON only: anything else is no record (judged as a
    file reinit did not write), never an error nor code run."""
    src = source(tmp_path, "llama")
    out = tmp_path / "out-dcp"
    reinit.apply(src, ["lm_head.weight=zeros"], out, format="dcp")
    with open_checkpoint(out) as ckpt:
        got = recorded_provenance(ckpt)
    assert got is not None and got.rules == ("lm_head.weight=zeros",)
    (out / "reinit.json").write_text("cos\nos\nsystem\n(S'touch pwned'\ntR.")
    with open_checkpoint(out) as ckpt:
        assert recorded_provenance(ckpt) is None
    assert not (tmp_path / "pwned").exists()
    rep = reinit.report_checkpoint(out, src)
    assert rep.rules == () and rep.seed == 0


def test_a_per_expert_rule_on_a_dcp_of_stacked_experts_is_not_blamed_on_the_baseline(tmp_path):
    """A Mixtral's per-expert safetensors, one expert redrawn by its per-expert name, written
    as a DCP of stacked experts: `report DCP --against SRC` cannot replay that rule on the
    stacked names, and says so; it never says SRC is not the run's input (it is).
    Before: the warning blamed the baseline ("not the input of the runs it records")."""
    torch.manual_seed(0)
    src = tmp_path / "mixtral"
    transformers.AutoModelForCausalLM.from_config(config("mixtral")).save_pretrained(src)
    out = tmp_path / "out-dcp"
    rule = "*.experts.1.w2.weight=normal(std=0.5)"
    reinit.apply(src, [rule], out, format="dcp", seed=1)
    rep = reinit.report_checkpoint(out, src)
    assert not any("not the input of the runs" in w for w in rep.warnings), rep.warnings
    stacked = [w for w in rep.warnings if "stacked tensor(s) differ" in w]
    assert len(stacked) == 1 and "model.layers.0.mlp.experts.down_proj" in stacked[0]
    changed = {e.name for e in rep.tensors if e.action != "kept"}
    assert changed == {f"model.layers.{i}.mlp.experts.down_proj" for i in (0, 1)}


@pytest.mark.parametrize("kind", ["file", "link", "folder"])
def test_a_users_reinit_json_in_a_dcp_folder_is_never_deleted(tmp_path, kind):
    """A DCP folder torch wrote, holding the user's own `reinit.json` (their notes, a link to
    one, a folder of that name): `--overwrite` and `--in-place` with `--format dcp` would
    replace the folder whole, so both are refused (exit 2, naming it) and it is kept. Only a
    `reinit.json` that is a record reinit wrote is reinit's to replace.
    Before: the name alone made it reinit's, and both deleted the user's file."""
    src = source(tmp_path, "llama")
    folder = tmp_path / "user-dcp"
    state = {k: v.clone() for k, v in transformers.AutoModelForCausalLM.from_pretrained(src)
             .state_dict().items()}  # fmt: skip
    dcp.save(state, checkpoint_id=folder)
    notes = tmp_path / "notes.json"
    notes.write_text('{"lr": 3e-4}')
    mine = folder / "reinit.json"
    if kind == "file":
        mine.write_text(notes.read_text())
    elif kind == "link":
        mine.symlink_to(notes)
    else:
        mine.mkdir()
        (mine / "a.txt").write_text("mine")
    before = sorted(p.name for p in folder.rglob("*"))
    for args in (
        (src, "-o", folder, "--overwrite"),
        (folder, "-o", folder, "--in-place"),
    ):
        res = run("apply", args[0], "--rule", "*norm*=ones", "--format", "dcp", *args[1:])
        assert res.exit_code == 2, res.output
        assert "reinit.json" in res.stderr, res.output
        assert sorted(p.name for p in folder.rglob("*")) == before
    assert notes.read_text() == '{"lr": 3e-4}'
    if kind == "file":
        assert mine.read_text() == '{"lr": 3e-4}'


@pytest.mark.slow
def test_under_torchrun_the_dcp_is_written_once_with_its_record(tmp_path):
    """Two processes under torchrun: the DCP (one output file) is written by one rank with its
    record and published once; its report replays the record as the one-process output's."""
    import subprocess
    import sys

    from helpers import child_env

    src = source(tmp_path, "llama")
    args = ["apply", src, "--rule", "lm_head.weight=zeros", "--add", "model.x.weight=[4,4]:zeros"]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "reinit", *map(str, args), "--format", "dcp", "-o", str(tmp_path / "two"), "-q"]
    done = subprocess.run(argv, env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "reinit.json",
    ]
    reinit.apply(src, ["lm_head.weight=zeros"], tmp_path / "one", format="dcp",
                 add=["model.x.weight=[4,4]:zeros"])  # fmt: skip
    assert (tmp_path / "two" / "reinit.json").read_bytes() == (
        tmp_path / "one" / "reinit.json"
    ).read_bytes()
    two = reinit.report_checkpoint(tmp_path / "two", src)
    assert verdicts(two, notes=True) == verdicts(
        reinit.report_checkpoint(tmp_path / "one", src), notes=True
    )
    assert {e.name: e.scheme for e in two.tensors if e.action != "kept"} == {
        "lm_head.weight": "zeros",
        "model.x.weight": "zeros",
    }
