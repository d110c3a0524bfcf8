"""Surgery (`--drop`, `--add`, `--rename`, `--resize`) must not hide the source's config.json
from what reads it while planning: `from(..., rows=labels)` (the target's id2label),
`scaled_normal`/`small_init` with `auto` arguments, and the report's reference scale
(`initializer_range`). Before, the edited checkpoint had no config at all, so any surgery beside
them gave "rows=labels needs id2label in the target's config.json; none found", "scaled_normal
needs layers=N", or a report with no reference."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")


def _bert_clf(path, labels):
    torch.manual_seed(len(labels))
    cfg = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        vocab_size=40, max_position_embeddings=16,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    transformers.BertForSequenceClassification(cfg).save_pretrained(path)
    return load_file(path / "model.safetensors")


def test_rows_by_label_still_reads_the_targets_labels_after_surgery(tmp_path):
    src = _bert_clf(tmp_path / "old", ["neg", "neu", "pos"])
    tgt = _bert_clf(tmp_path / "new", ["pos", "angry", "neg"])
    out = tmp_path / "out"
    res = run("apply", tmp_path / "new", "-o", f"{out}/", "-q",
              "--drop", "bert.pooler.dense.bias", "--add", "bert.pooler.dense.bias=[16]:zeros",
              "--rule", f"classifier.*=from({tmp_path / 'old'}, rows=labels)")  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(got[name][0], src[name][2])  # pos
        assert torch.equal(got[name][2], src[name][0])  # neg
        assert torch.equal(got[name][1], tgt[name][1])  # angry: the target's own (new=keep)


def test_config_auto_arguments_and_the_reference_survive_surgery(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=16, n_layer=4, n_head=2, vocab_size=40, n_positions=8)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    plain, cut = tmp_path / "plain", tmp_path / "cut"
    rule = ["--rule", "*.mlp.c_proj.weight=scaled_normal"]
    res = run("apply", tmp_path / "gpt2", "-o", f"{plain}/", "-q", *rule)
    assert res.exit_code == 0, res.output
    res = run(
        "apply",
        tmp_path / "gpt2",
        "-o",
        f"{cut}/",
        "-q",
        "--resize",
        "transformer.wte.weight=[44,*]",
        *rule,
    )
    assert res.exit_code == 0, res.output
    entries = {}
    for out in (plain, cut):
        report = json.loads((out / "reinit-report.json").read_text())
        entries[out] = {t["name"]: t for t in report["tensors"]}
    name = "transformer.h.0.mlp.c_proj.weight"
    assert entries[cut][name]["expected_std"] == pytest.approx(0.02 / (2 * 4) ** 0.5)
    assert entries[cut][name]["reference_std"] == 0.02 == entries[plain][name]["reference_std"]
    assert "initializer_range" in entries[cut][name]["reference"]
    assert torch.equal(load_file(cut / "model.safetensors")[name],
                       load_file(plain / "model.safetensors")[name])  # fmt: skip


def test_rows_by_label_maps_to_the_names_labels_gives_the_output(tmp_path, caplog):
    """A 3-class head grown to 4 classes with new names (`--labels`), its rows taken from the
    old head by class name: each output row must hold the source row of the name the output's
    config.json gives it. Before, rows were matched against the source config's old names
    (neg, neu, pos) and then relabelled, so the row named "pos" held "neg"'s weights."""
    src = _bert_clf(tmp_path / "old", ["neg", "neu", "pos"])
    out = tmp_path / "out"
    res = run("apply", tmp_path / "old", "-o", f"{out}/", "-q",
              "--resize", "classifier.weight=[4,*]:zeros", "--resize", "classifier.bias=[4]:zeros",
              "--labels", "pos,angry,neg,calm",
              "--rule", f"classifier.*=from({tmp_path / 'old'}, rows=labels, new=zeros)")  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(got[name][0], src[name][2])  # pos
        assert torch.equal(got[name][2], src[name][0])  # neg
        assert not got[name][1].any() and not got[name][3].any()  # angry, calm: new (zeros)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "pos", 1: "angry", 2: "neg", 3: "calm"}
    report = json.loads((out / "reinit-report.json").read_text())
    (bias,) = [t for t in report["tensors"] if t["name"] == "classifier.bias"]
    assert "rows: 2 copied, 2 new (zeros)" in bias["notes"], bias["notes"]
