"""`reinit report OUT --against SRC` after surgery, and after a `default` rule: OUT records its
`--drop`/`--rename`/`--resize`/`--add` and the kind of `--model` (safetensors metadata, format
2), and `report --against` replays them to give apply's verdict.

Before: an added `zeros` tensor was flagged `constant`, a renamed grown embedding was judged
against the config (`off_reference`), a dropped-and-re-added tensor was compared with the one
dropped, and a `default` rule dropped every recorded rule (no way to pass `--model`).

Internal: also tests reinit.run.record and reinit.tools.provenance directly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import run, trained_bert, verdicts
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import reinit
from reinit.io.sources import open_checkpoint
from reinit.limits import MAX_RECORDED_SURGERY_BYTES
from reinit.run.record import Provenance, SurgeryTexts, model_record, parse_provenance
from reinit.tools.provenance import recorded_provenance


def tiny_llama(path: Path) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.02,
    )  # fmt: skip
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def metadata(path: Path) -> dict[str, object]:
    with safe_open(path / "model.safetensors", "pt") as f:
        return json.loads(f.metadata()["reinit"])


EMB = "embeddings.word_embeddings.weight"


def test_a_renamed_grown_embedding_is_judged_against_its_std_before(tmp_path):
    src = trained_bert(tmp_path / "bert")
    out = tmp_path / "out"
    rep = reinit.apply(
        src, [], out, rename=["embeddings.*=emb.{1}"], resize=["emb.word_embeddings.weight=[80,*]"]
    )
    assert metadata(out)["surgery"] == {
        "rename": ["embeddings.*=emb.{1}"],
        "resize": ["emb.word_embeddings.weight=[80,*]"],
    }
    again = reinit.report_checkpoint(out, src)
    assert verdicts(again) == verdicts(rep)
    grown = next(e for e in again.tensors if e.name == "emb.word_embeddings.weight")
    std_before = load_file(src / "model.safetensors")[EMB].double().std(correction=0).item()
    assert grown.action == "reinit" and grown.scheme == "mean_resize(old_rows=64)"
    assert grown.reference == "before resize" and not grown.flags
    assert grown.reference_std == pytest.approx(std_before, rel=1e-6)
    assert f"renamed from {EMB}" in grown.notes
    assert again.summary.reinit == 1 and again.summary.flagged == 0  # the rest: kept
    assert [w for w in again.warnings if "are not in" in w] == []


def test_a_resize_s_fill_is_its_scheme(tmp_path):
    src = trained_bert(tmp_path / "bert")
    rep = reinit.apply(src, [], tmp_path / "out", resize=[f"{EMB}=[80,*]:normal(std=0.02)"])
    again = reinit.report_checkpoint(tmp_path / "out", src)
    assert verdicts(again) == verdicts(rep)
    assert {e.name: e.scheme for e in again.tensors}[EMB] == "normal(mean=0.0, std=0.02)"


def test_a_layer_dropped_and_added_back_zero_initialized(tmp_path):
    """A residual branch zero-initialized (a new layer that starts as the identity): apply
    says `reinit` by `zeros`, no flag; report once compared it with the dropped tensor of the
    same name and flagged it `constant`."""
    src = tiny_llama(tmp_path / "llama")
    down = "model.layers.2.mlp.down_proj.weight"
    out = tmp_path / "out"
    rep = reinit.apply(src, [], out, drop=[down], add=[f"{down}=[32,64]:zeros"])
    model, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    again = reinit.report_checkpoint(out, src)
    assert verdicts(again) == verdicts(rep)
    added = next(e for e in again.tensors if e.name == down)
    assert (added.action, added.scheme, added.flags) == ("reinit", "zeros", ())
    assert added.before is None and "not in baseline" in added.notes
    assert again.summary.reinit == 1 and again.summary.flagged == 0
    res = run("report", out, "--against", src, "--fail-on", "any")
    assert res.exit_code == 0, res.output


def test_an_added_tensor_gets_its_scheme_s_expected_std(tmp_path):
    src = tiny_llama(tmp_path / "llama")
    out = tmp_path / "out"
    rep = reinit.apply(src, [], out, add=["extra.weight=[64,32]:kaiming"])
    again = reinit.report_checkpoint(out, src)
    assert verdicts(again) == verdicts(rep)
    added = next(e for e in again.tensors if e.name == "extra.weight")
    assert added.expected_std == pytest.approx(2**0.5 / 32**0.5)


def test_a_default_rule_is_judged_with_model(tmp_path):
    src = tiny_llama(tmp_path / "llama")
    out = tmp_path / "out"
    rules = ["model.layers.0.mlp.*.weight=default"]
    rep = reinit.apply(src, rules, out, model=str(src))
    assert metadata(out)["model"] == {"kind": "folder", "ref": None}  # never the path
    again = reinit.report_checkpoint(out, src, model=str(src))
    assert verdicts(again) == verdicts(rep)
    e = next(e for e in again.tensors if e.name == "model.layers.0.mlp.up_proj.weight")
    assert e.scheme is not None and e.scheme.startswith("default (LlamaForCausalLM._init_weights")
    assert e.expected_std == pytest.approx(0.02) and e.reference == "model default"
    res = run("report", out, "--against", src, "--model", src, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["reinit"] == 3


def test_without_model_a_default_rule_says_to_pass_it(tmp_path):
    src = tiny_llama(tmp_path / "llama")
    out = tmp_path / "out"
    reinit.apply(src, ["model.layers.0.mlp.*.weight=default"], out, model=str(src))
    again = reinit.report_checkpoint(out, src)
    said = [w for w in again.warnings if "pass --model" in w]
    assert said and "apply had a model folder" in said[0]
    assert again.summary.reinit == 3  # still seen as changed, by no known scheme
    res = run("report", out, "--model", src)  # --model without --against: usage error
    assert res.exit_code == 2 and "give --against" in res.stderr


def test_a_recorded_callable_is_named_never_imported(tmp_path, monkeypatch):
    """The model a file records is text for the message: a `module:callable` in it is never
    imported by `report` (that would run code from a file)."""
    (tmp_path / "evil_model.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w').close()\ndef build():\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "src.safetensors"
    save_file({"w": torch.ones(4, 4)}, src, metadata={"format": "pt"})
    out = tmp_path / "out.safetensors"
    record = {"version": "x", "record": 2, "seed": 0, "rules": ["w=default"],
              "model": {"kind": "callable", "ref": "evil_model:build"}}  # fmt: skip
    save_file(
        {"w": torch.zeros(4, 4)}, out, metadata={"format": "pt", "reinit": json.dumps(record)}
    )
    again = reinit.report_checkpoint(out, src)
    assert any("pass --model (apply had evil_model:build)" in w for w in again.warnings)
    assert not (tmp_path / "ran").exists() and "evil_model" not in sys.modules


def test_an_output_without_the_record_is_judged_as_before(tmp_path):
    """A format-1 output (seed and rules only): a grown tensor is still judged against its std
    before, with no scheme (the fill is unknown)."""
    src = trained_bert(tmp_path / "bert")
    out = tmp_path / "out"
    reinit.apply(src, [], out, resize=[f"{EMB}=[80,*]"])
    sd = load_file(out / "model.safetensors")
    old = json.dumps({"version": "0", "seed": 0, "rules": []})
    save_file(sd, out / "model.safetensors", metadata={"format": "pt", "reinit": old})
    e = {e.name: e for e in reinit.report_checkpoint(out, src).tensors}[EMB]
    assert (e.action, e.scheme, e.reference) == ("reinit", None, "before resize")


def test_a_record_that_does_not_give_the_file_is_set_aside(tmp_path):
    src = tiny_llama(tmp_path / "llama")
    out = tmp_path / "out"
    reinit.apply(src, [], out, add=["extra.weight=[8,8]:zeros"])
    sd = load_file(out / "model.safetensors")
    meta = {"format": "pt", "reinit": json.dumps(metadata(out))}
    sd["extra.weight"] = torch.zeros(4, 4)  # changed after apply
    save_file(sd, out / "model.safetensors", metadata=meta)
    again = reinit.report_checkpoint(out, src)
    assert any("does not give its tensors" in w for w in again.warnings)


def test_the_surgery_record_is_bounded():
    many = tuple(f"extra.{i}.weight=[4,4]:zeros" for i in range(5000))
    data = json.loads(Provenance(0, (), SurgeryTexts(add=many)).to_json())
    assert data["surgery"] is None and data["record"] == 2  # too large: said, not written
    small = json.loads(Provenance(0, (), SurgeryTexts(drop=("a.*",))).to_json())
    assert small["surgery"] == {"drop": ["a.*"]}
    huge = {
        "seed": 0,
        "rules": [],
        "record": 2,
        "surgery": {"add": ["x" * MAX_RECORDED_SURGERY_BYTES]},
    }
    got = parse_provenance(huge)
    assert got is not None and got.surgery is None  # read back: ignored, seed and rules kept
    later = parse_provenance({"seed": 1, "rules": ["w=zeros"], "record": 99, "surgery": {}})
    assert later is not None and later.rules == ("w=zeros",) and later.surgery is None
    assert later.format == 99
    assert parse_provenance({"seed": 0, "rules": [], "surgery": {"drop": [1]}}).surgery is None


def test_the_model_is_recorded_by_name_or_kind(tmp_path):
    assert model_record("hf://org/m") == model_record("hf://org/m")
    assert model_record("hf://org/m").ref == "hf://org/m"
    assert (model_record("torchvision.models:resnet18").kind, model_record("pkg:f").ref) == (
        "callable",
        "pkg:f",
    )
    assert model_record(tmp_path) == model_record(str(tmp_path))
    assert model_record(str(tmp_path)).kind == "folder" and model_record(str(tmp_path)).ref is None
    assert model_record(torch.nn.Linear(2, 2)).kind == "module"


def test_provenance_reads_the_record(tmp_path):
    src = tiny_llama(tmp_path / "llama")
    out = tmp_path / "out"
    reinit.apply(src, ["lm_head.weight=zeros"], out, drop=["model.layers.2.*"], seed=3)
    with open_checkpoint(out) as ck:
        got = recorded_provenance(ck)
    assert got is not None and (got.seed, got.rules) == (3, ("lm_head.weight=zeros",))
    assert got.surgery == SurgeryTexts(drop=("model.layers.2.*",)) and got.model is None


def test_a_hostile_surgery_record_is_set_aside_not_run(tmp_path):
    """A record edited into a huge `--add`, a runaway regex, broken texts: nothing is
    allocated or hangs; the record is set aside with a warning and the file judged by name."""
    src = tmp_path / "src.safetensors"
    save_file({"w": torch.ones(4, 4), "v": torch.ones(4)}, src, metadata={"format": "pt"})
    surgery = {
        "add": ["x=[99999999999999,99999999999]:zeros", "y=[2,2]:nonsense(", "z" * 5000],
        "drop": ["re:(a+)+$"],
        "resize": ["q=[1,2,3"],
        "rename": ["noeq"],
    }
    record = {"version": "x", "record": 2, "seed": 0, "rules": [], "surgery": surgery}
    out = tmp_path / "out.safetensors"
    save_file({"w": torch.ones(4, 4)}, out, metadata={"format": "pt", "reinit": json.dumps(record)})
    res = run("report", out, "--against", src)
    assert res.exit_code == 0, res.output
    assert "its recorded surgery does not replay on the baseline" in res.stderr
    rep = reinit.report_checkpoint(out, src)
    assert [(e.name, e.action) for e in rep.tensors] == [("w", "kept")]


@pytest.mark.parametrize("fmt", [2, 3])
def test_recorded_rules_that_do_not_parse_are_set_aside_not_an_error(tmp_path, fmt):
    """A record whose rules were edited into text that is no rule (its own run's, format 2,
    or an earlier step's in `before`, format 3, which every later apply carries): `report
    --against` warns that they do not plan and judges the changed tensor without them.
    Before, the warning's own check parsed the rules again, so the report failed (exit 2)."""
    src = tmp_path / "src.safetensors"
    save_file({"w": torch.ones(4, 4), "v": torch.ones(4)}, src, metadata={"format": "pt"})
    bad = ["((((", "v=zeros"]
    step = {"version": "x", "seed": 1, "rules": bad}
    record = (
        {**step, "record": 2}
        if fmt == 2
        else {"version": "x", "record": 3, "seed": 2, "rules": [], "before": [step]}
    )
    out = tmp_path / "out.safetensors"
    meta = {"format": "pt", "reinit": json.dumps(record)}
    save_file({"w": torch.ones(4, 4), "v": torch.zeros(4)}, out, metadata=meta)
    res = run("report", out, "--against", src)
    assert res.exit_code == 0, res.output
    assert "do not plan on its tensors (rule '((((' has no '='" in res.stderr
    rep = reinit.report_checkpoint(out, src)
    assert {e.name: e.action for e in rep.tensors} == {"w": "kept", "v": "reinit"}


def test_report_against_a_recipes_first_input_judges_every_step(tmp_path, monkeypatch):
    """A two-step recipe's output records both steps (`before`: step 1). `report OUT
    --against` the recipe's own input used to judge step 1's transplant as a reinit against
    the config's 0.02 and flag it off_reference (exit 1 under --fail-on); then, with the
    last step alone recorded, to set it aside with a warning: it is now the transplant step 1
    made, judged against its source. Step 2's tensor is judged as apply did. The report's
    seed is the last step's (each step's in a note), not the top-level one."""
    monkeypatch.chdir(tmp_path)
    donor = trained_bert(tmp_path / "donor")
    config = transformers.BertConfig.from_pretrained(donor)
    torch.manual_seed(1)
    transformers.BertModel(config).save_pretrained(tmp_path / "fresh")
    moved = "encoder.layer.0.output.dense.weight"
    (tmp_path / "r.yaml").write_text(
        "source: fresh\noutput: out/\nseed: 9\nsteps:\n"
        f"  - rules: ['{moved}=from(donor/)']\n    seed: 1\n"
        "  - rules: ['pooler.dense.weight=normal(std=0.02)']\n    seed: 3\n"
    )
    res = run("run", "r.yaml", "-q")
    assert res.exit_code == 0, res.output
    assert "note: seeds by step: step 1 seed 1, step 2 seed 3" in res.stderr, res.stderr
    assert json.loads((tmp_path / "out" / "reinit-report.json").read_text())["seed"] == 3

    res = run("report", "out", "--against", "fresh", "--fail-on", "off_reference", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    by = {t["name"]: t for t in rep["tensors"]}
    assert (by[moved]["action"], by[moved]["rule"]) == ("transplant", f"{moved}=from(donor/)")
    assert by[moved]["flags"] == [] and by[moved]["reference_std"] == by[moved]["after"]["std"]
    assert by["pooler.dense.weight"]["rule"] == "pooler.dense.weight=normal(std=0.02)"
    assert by["pooler.dense.weight"]["reference_std"] == pytest.approx(0.02)
    assert "differ from the baseline though" not in res.stderr, res.stderr


def test_tensors_the_recorded_drop_removed_are_dropped_not_missing(tmp_path):
    """`report OUT --against SRC` once warned '2 tensor(s) of the baseline ... are not in OUT'
    for the tensors OUT's own record says a `--drop` removed. They are the report's `dropped`
    (under their baseline names, through a rename in an earlier step) and the warning is
    kept for a tensor the record does not account for."""
    src = tiny_llama(tmp_path / "llama")
    gate = "model.layers.2.mlp.gate_proj.weight"
    mid, out = tmp_path / "mid", tmp_path / "out"
    reinit.apply(src, [], mid, rename=["model.layers.2.mlp.up_proj.weight=spare.weight"])
    reinit.apply(mid, [], out, drop=["spare.weight", gate])
    again = reinit.report_checkpoint(out, src)
    assert [w for w in again.warnings if "are not in" in w] == []
    assert sorted(again.dropped) == sorted([gate, "model.layers.2.mlp.up_proj.weight"])
    res = run("report", out, "--against", src, "--json")
    assert res.exit_code == 0 and "are not in" not in res.stderr, res.output
    assert sorted(json.loads(res.stdout)["dropped"]) == sorted(again.dropped)
    # the same file without its record: nothing says why they are gone, so they are warned of
    sd = load_file(out / "model.safetensors")
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    again = reinit.report_checkpoint(out, src)
    assert again.dropped == ()
    assert [w for w in again.warnings if "2 tensor(s) of the baseline" in w and gate in w]
