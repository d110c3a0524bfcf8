"""An output records every step that made it (`run.record` format 3: `before`, the steps that
made its input, oldest first): a multi-step recipe's output and the same steps chained through
files (byte-identical), so `reinit report OUT --against FIRST_INPUT` replays them in order and
gives the verdicts the runs gave; `--against` a later step's input replays the steps after it.

Before: the output recorded its last step only, so against the recipe's input a tensor an
earlier step changed was set aside with a warning (judged against no reference), an earlier
step's `--add` was compared by name, and an earlier step's transplant was a reinit of no scheme.

Internal: also reads records of formats 1, 2 and 3 with reinit.run.record directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from helpers import run
from safetensors import safe_open

import reinit
from reinit.io.sources import open_checkpoint
from reinit.limits import MAX_RECORDED_STEPS
from reinit.run.record import Provenance, SurgeryTexts, parse_provenance
from reinit.tools.provenance import recorded_provenance

CONFIG = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, initializer_range=0.02,
)  # fmt: skip
DOWN = "model.layers.0.mlp.down_proj.weight"
O_PROJ = "model.layers.0.self_attn.o_proj.weight"
STEPS = [
    {"rules": ["lm_head.weight=kaiming_normal", f"{O_PROJ}=orthogonal"], "seed": 1},
    {"rules": ["model.layers.1.mlp.*=from(donor/)"], "seed": 2,
     "drop": [DOWN], "add": [f"{DOWN}=[32,64]:zeros"]},
    {"rules": [f"{O_PROJ}=normal(std=0.5)"], "seed": 3},
]  # fmt: skip


def llama(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).save_pretrained(path)
    return path


def verdicts(rep: reinit.Report, names: set[str] | None = None) -> dict[str, tuple[object, ...]]:
    """What a report says of each tensor (of `names`), its reference std to 6 digits."""
    return {
        e.name: (
            e.action,
            e.scheme,
            tuple(e.flags),
            e.expected_std,
            None if e.reference_std is None else round(e.reference_std, 6),
        )
        for e in rep.tensors
        if names is None or e.name in names
    }


def record(path: Path) -> dict[str, object]:
    with safe_open(path / "model.safetensors", "pt") as f:
        return json.loads(f.metadata()["reinit"])


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    llama(tmp_path / "src", 1)
    llama(tmp_path / "donor", 2)
    return tmp_path


def apply_step(src: str, out: str, step: dict[str, object]) -> reinit.Report:
    kw = {k: v for k, v in step.items() if k != "rules"}
    return reinit.apply(src, step["rules"], out, **kw)  # type: ignore[arg-type]


def test_a_recipes_output_records_every_step_and_report_replays_them(models):
    """A three-step recipe (a head re-initialized; a layer transplanted and a tensor dropped
    and added back as zeros; a tensor drawn again): its output records the three steps in
    order, and `report OUT --against` the recipe's source judges every tensor as the recipe's
    own report did, with no warning; `--fail-on constant` passes (the added zeros are the
    `--add`'s, not a constant where a weight was)."""
    doc = {"source": "src", "output": "out/", "steps": STEPS}
    (models / "r.json").write_text(json.dumps(doc))
    rep = reinit.run_recipe(reinit.load_recipe("r.json"))

    rec = record(models / "out")
    assert rec["record"] == 3 and rec["seed"] == 3 and rec["rules"] == STEPS[2]["rules"]
    before = rec["before"]
    assert [b["rules"] for b in before] == [STEPS[0]["rules"], STEPS[1]["rules"]]
    assert [b["seed"] for b in before] == [1, 2]
    assert before[1]["surgery"] == {"drop": [DOWN], "add": [f"{DOWN}=[32,64]:zeros"]}
    assert "surgery" not in before[0] and "record" not in before[0]

    again = reinit.report_checkpoint("out", "src")
    assert again.warnings == ()
    assert verdicts(again) == verdicts(rep)
    by = {e.name: e for e in again.tensors}
    assert by["lm_head.weight"].scheme.startswith("kaiming_normal")  # step 1's
    assert by[O_PROJ].scheme == "normal(mean=0.0, std=0.5)"  # step 3 redrew step 1's tensor
    assert by["model.layers.1.mlp.up_proj.weight"].action == "transplant"  # step 2's
    assert (by[DOWN].action, by[DOWN].scheme, by[DOWN].flags) == ("reinit", "zeros", ())
    res = run("report", "out", "--against", "src", "--fail-on", "constant")
    assert res.exit_code == 0, res.output


def test_a_chain_of_files_records_the_same_steps_and_each_input_replays_the_rest(models):
    """The same steps as three applies chained through files: the same bytes as the recipe's
    output (each apply records the steps its input records, then its own). `--against` each
    step's input replays the steps from there: the verdicts of the tensors those steps
    changed are the ones the per-step reports gave. Against a file the steps do not start
    from, the output's own run is replayed alone."""
    doc = {"source": "src", "output": "out/", "steps": STEPS}
    (models / "r.json").write_text(json.dumps(doc))
    assert run("run", "r.json", "-q").exit_code == 0
    reports = [
        apply_step("src", "s1", STEPS[0]),
        apply_step("s1", "s2", STEPS[1]),
        apply_step("s2", "s3", STEPS[2]),
    ]
    for f in ("model.safetensors", "config.json"):
        assert (models / "s3" / f).read_bytes() == (models / "out" / f).read_bytes()
    assert record(models / "s2")["before"][0]["rules"] == STEPS[0]["rules"]

    for i, base in enumerate(["src", "s1", "s2"]):
        again = reinit.report_checkpoint("s3", base)
        assert again.warnings == (), (base, again.warnings)
        got = verdicts(again)
        for j in range(i, len(reports)):  # each step's tensors no later step changed
            later = {e.name for r in reports[j + 1 :] for e in r.tensors if e.changes}
            changed = {e.name for e in reports[j].tensors if e.changes} - later
            assert changed, j
            assert {n: got[n] for n in changed} == verdicts(reports[j], changed), (base, j)

    # a baseline whose own recorded steps do not begin the output's (another model's output):
    # the output's own run is replayed alone, and what differs though it does not change it
    # is set aside, as against a one-step record
    llama(models / "other", 5)
    reinit.apply("other", ["lm_head.weight=zeros"], "o1")
    again = reinit.report_checkpoint("s3", "o1")
    warned = [w for w in again.warnings if "differ from the baseline though" in w]
    assert len(warned) == 1 and "its recorded rules and surgery" in warned[0], again.warnings
    by = {e.name: e for e in again.tensors}
    assert by[O_PROJ].scheme == "normal(mean=0.0, std=0.5)"
    assert by["lm_head.weight"].reference_std is None and by["lm_head.weight"].scheme is None


def test_renames_are_followed_through_the_steps(tmp_path, monkeypatch):
    """A tensor step 1 redrew and step 2 renamed: judged by step 1's rule under its new name,
    compared with the baseline tensor it came from."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "enc.weight": torch.randn(8, 4, generator=g),
        "head.weight": torch.randn(3, 8, generator=g),
    }
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    save_file(tensors, tmp_path / "m.safetensors")
    doc = {
        "source": "m.safetensors",
        "output": "out.safetensors",
        "steps": [
            {"rules": ["enc.weight=normal(std=0.3)"], "seed": 4},
            {"rename": ["enc.*=encoder.{1}"], "rules": ["head.weight=zeros"]},
        ],
    }
    (tmp_path / "r.json").write_text(json.dumps(doc))
    res = run("run", tmp_path / "r.json", "-q")
    assert res.exit_code == 0, res.output
    again = reinit.report_checkpoint(tmp_path / "out.safetensors", tmp_path / "m.safetensors")
    assert again.warnings == ()
    by = {e.name: e for e in again.tensors}
    moved = by["encoder.weight"]
    assert (moved.action, moved.scheme, moved.expected_std) == (
        "reinit",
        "normal(mean=0.0, std=0.3)",
        0.3,
    )
    assert moved.before is not None and moved.before.std == pytest.approx(
        tensors["enc.weight"].std(correction=0).item(), rel=1e-5
    )
    assert by["head.weight"].scheme == "zeros"


def test_older_records_still_read():
    """Formats 1 and 2 read as before (no steps before); format 3 with its steps; a `before`
    that is not a list of steps, or too long, is read as not known (the output's own run is
    replayed alone); one apply on a file reinit did not write still writes format 2."""
    one = parse_provenance({"version": "0.0.1", "seed": 4, "rules": ["a=zeros"]})
    assert one == Provenance(4, ("a=zeros",), SurgeryTexts(), None, "0.0.1", 1)
    assert one.steps == (Provenance(4, ("a=zeros",), SurgeryTexts(), None, "0.0.1", 2),)
    text = '{"version":"0.1.0","record":2,"seed":3,"rules":["*=zeros"],"surgery":{"drop":["x"]}}'
    two = parse_provenance(json.loads(text))
    assert two is not None and two.before == () and two.surgery == SurgeryTexts(drop=("x",))
    assert two.to_json() == text  # written back byte for byte
    three = {
        **json.loads(text),
        "record": 3,
        "before": [{"version": "0.1.0", "seed": 1, "rules": ["b=ones"]}],
    }
    got = parse_provenance(three)
    assert got is not None and got.steps is not None
    assert [(s.seed, s.rules) for s in got.steps] == [(1, ("b=ones",)), (3, ("*=zeros",))]
    assert json.loads(got.to_json()) == three
    for bad in (
        [{"seed": "x", "rules": []}],
        "steps",
        [{"seed": 1, "rules": []}] * MAX_RECORDED_STEPS,
    ):
        odd = parse_provenance({**three, "before": bad})
        assert odd is not None and odd.before is None and odd.steps is None
        assert odd.rules == ("*=zeros",) and odd.surgery == SurgeryTexts(drop=("x",))
    assert json.loads(Provenance(1, (), before=None).to_json())["before"] is None


def test_one_apply_on_a_file_reinit_did_not_write_is_format_2(models):
    apply_step("src", "s1", STEPS[0])
    rec = record(models / "s1")
    assert rec["record"] == 2 and "before" not in rec
    with open_checkpoint(models / "s1") as ckpt:
        got = recorded_provenance(ckpt)
    assert got is not None and got.steps is not None and len(got.steps) == 1
