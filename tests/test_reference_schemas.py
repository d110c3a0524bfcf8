"""docs/reference.md's JSON schemas name exactly the keys the documents have: the report (with
`--checksums` and a transform, so its optional keys show), the plan of `--dry-run --json`
(one step and a recipe's several), `inspect --json --stats`, `diff --json`, `verify --json`,
`verify --forward --json` (each made here by the CLI on a tiny BERT built by transformers),
`probe --json` (on a plain torch MLP) and `schemes --json`. A key
added to (or renamed in) a document without its schema line fails here, and so does a schema
key no document has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run

REFERENCE = Path(__file__).parents[1] / "docs" / "reference.md"
# A key in a schema: a quoted word that opens an object or follows a comma, then `:` or `,`
# (`{ "kl_mean", "kl_median", ..., "top1": float }` lists several keys of one type); a quoted
# value (`"kept"|"reinit"`) follows a `:` or `|` and is not one.
_KEY = re.compile(r'(?:^|(?<=[{,\[]))\s*"(\w+)"(?=\s*[:,])', re.M)


def schema_after(marker: str) -> str:
    """The first fenced block after `marker` in the reference."""
    text = REFERENCE.read_text(encoding="utf-8")
    at = text.index(marker)
    return text[at:].split("```", 2)[1]


def documented(block: str, label: str) -> set[str]:
    """The keys of the schema labelled `label:` in a block holding several (`diff:`, ...),
    or of the whole block when `label` is empty."""
    if label:
        parts = re.split(r"^(\w[\w -]*):", block, flags=re.M)
        block = dict(zip(parts[1::2], parts[2::2], strict=True))[label]
    return set(_KEY.findall(block))


def keys(value: object) -> set[str]:
    """Every key of every object in a JSON document."""
    if isinstance(value, dict):
        return set(value).union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value))
    return set()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny BERT (masked LM: its output is logits) saved by transformers."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("schemas")
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        vocab_size=40, max_position_embeddings=16,
    )  # fmt: skip
    BertForMaskedLM(cfg).save_pretrained(root / "bert")  # logits: verify --forward's KL keys
    return root


def json_of(*args: object) -> object:
    r = run(*args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_report_schema_names_every_key(work):
    out = work / "out"
    doc = json_of(
        "apply", work / "bert", "-o", out, "--json", "-q", "--checksums",
        "-r", "cls.predictions.transform.dense.weight=normal(std=0.02)",
        "-r", f"bert.embeddings.position_embeddings.weight=from({work / 'bert'}, resample=linear)",
    )  # fmt: skip
    assert "steps" not in doc  # one step: the report's seed and rules say it
    # an output made in several steps: `reinit report OUT` lists every one (`steps`)
    recipe = work / "r.yaml"
    recipe.write_text(
        f"source: {work / 'bert'}\noutput: {work / 'r-out'}/\nsteps:\n"
        "  - rules: ['*.bias=zeros']\n  - rules: ['cls.*=keep']\n    drop: ['bert.encoder.layer.1.*']\n"
    )
    assert run("run", recipe, "-q").exit_code == 0
    several = json_of("report", work / "r-out", "--json")
    assert [st["surgery"] for st in several["steps"]] == [[], ["--drop bert.encoder.layer.1.*"]]
    assert keys(doc) | keys(several) == documented(schema_after("JSON (the default file"), "")


def test_plan_schema_names_every_key(work, tmp_path, monkeypatch):
    monkeypatch.chdir(work)
    one = json_of("apply", "bert", "-r", "*.bias=zeros", "--dry-run", "--json", "-q")
    block = schema_after("### `--dry-run --json`")
    assert keys(one) == documented(block, "plan")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "source: bert\noutput: r-out/\nsteps:\n"
        "  - rules: ['*.bias=zeros']\n  - rules: ['cls.*=keep']\n"
    )
    several = json_of("run", recipe, "--dry-run", "--json", "-q")
    assert set(several) == {"dry_run", "steps"}  # the reference's `run:` line, in words
    assert all(keys(step) == keys(one) for step in several["steps"])


def zeroed(work, name: str):
    """The BERT with its prediction transform zeroed: a second checkpoint to diff against."""
    other = work / name
    r = run(
        "apply", work / "bert", "-o", other, "-r", "cls.predictions.transform.dense.*=zeros", "-q"
    )
    assert r.exit_code == 0, r.output
    return other


def test_inspect_diff_and_verify_schemas_name_every_key(work):
    block = schema_after("### `inspect --json`")
    inspected = json_of("inspect", work / "bert", "--json", "--stats")
    assert keys(inspected) == documented(block, "inspect")
    block = schema_after("### `diff --json` and `verify --json`")
    other = zeroed(work, "zeroed")
    assert keys(json_of("diff", work / "bert", other, "--json")) == documented(block, "diff")
    assert keys(json_of("verify", other, "--json")) == documented(block, "verify")


def test_verify_forward_schema_names_every_key(work):
    other = zeroed(work, "zeroed-forward")
    block = schema_after("### `diff --json` and `verify --json`")
    doc = json_of("verify", other, "--forward", "--against", work / "bert", "--json")
    assert keys(doc) == documented(block, "verify --forward")


def test_probe_and_schemes_schemas_name_every_key(work):
    """`probe --json` (a plain torch MLP, with a rule so its `after` pass is there) and
    `schemes --json` against the reference's block for them (its `inspect:` line repeats the
    schema tested above)."""
    block = schema_after("### `probe --json`, `schemes --json`, `inspect --json`")
    probed = json_of(
        "probe", "models_for_tests:mlp(depth=3, width=8, inputs=8)", "--input-shape", "4,8",
        "-r", "*.weight=zeros", "--json",
    )  # fmt: skip
    assert probed["after"] is not None
    assert keys(probed) == documented(block, "probe")
    assert keys(json_of("schemes", "--json")) == documented(block, "schemes")


def test_key_extraction():
    block = (
        'a: { "x": str, "y": "p"|"q", "z": [ { "u": int } ],\n'
        '     "s": { "k1", "k2": float } }\n'
        'b: { "w": 1 }\n'
    )
    assert documented(block, "a") == {"x", "y", "z", "u", "s", "k1", "k2"}
    assert documented(block, "b") == {"w"}
