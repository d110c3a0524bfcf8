"""The new-head workflow on real (tiny) transformers models: a BertForSequenceClassification
target filled from a BertModel source with `bert.*=from(SRC, key={1})`, its head re-initialized,
loaded back by transformers with no missing or unexpected keys.

Internal: also tests reinit.schemes directly (not the `reinit` API).
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from reinit.cli import main
from reinit.schemes import seed_for

transformers = pytest.importorskip("transformers")

HEAD_STD = 0.02
LABELS = 16  # 16 × 64 head weights: enough samples for a meaningful std check


def tiny_config():
    return transformers.BertConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=LABELS,
    )


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    transformers.BertModel(tiny_config()).save_pretrained(root / "src")
    torch.manual_seed(1)  # a different random encoder in the target
    transformers.BertForSequenceClassification(tiny_config()).save_pretrained(root / "tgt")
    return root / "src", root / "tgt"


@pytest.mark.parametrize("key", ["{1}", "auto"])
def test_bert_encoder_transplant_with_new_head(bert_dirs, tmp_path, key):
    src, tgt = bert_dirs
    out = tmp_path / "clf"
    res = CliRunner().invoke(
        main,
        [
            "apply",
            str(tgt),
            "-o",
            str(out),
            "--seed",
            "7",
            "--json",
            "-r",
            f"bert.*=from({src}, key={key})",
            "-r",
            f"classifier.weight=normal(std={HEAD_STD})",
            "-r",
            "classifier.bias=zeros",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    source = load_file(src / "model.safetensors")
    output = load_file(out / "model.safetensors")

    # every bert.* tensor is its source tensor, byte for byte, same dtype
    bert_names = [n for n in output if n.startswith("bert.")]
    assert len(bert_names) == len(source) > 30
    for name in bert_names:
        s, o = source[name.removeprefix("bert.")], output[name]
        assert o.dtype == s.dtype and o.shape == s.shape
        assert o.view(torch.uint8).numpy().tobytes() == s.view(torch.uint8).numpy().tobytes(), name
    assert report["summary"]["transplant"] == len(bert_names)
    assert report["summary"]["reinit"] == 2 and report["summary"]["kept"] == 0

    # the head: exactly the scheme's torch call, with the std the scheme says
    w = output["classifier.weight"]
    want = torch.empty(LABELS, 64)
    gen = torch.Generator().manual_seed(seed_for(7, "classifier.weight"))
    torch.nn.init.normal_(want, 0.0, HEAD_STD, generator=gen)
    assert torch.equal(w, want)
    n = w.numel()
    se = HEAD_STD / (2 * n) ** 0.5  # standard error of a normal sample's std
    assert abs(w.std().item() - HEAD_STD) < 5 * se
    assert abs(w.mean().item()) < 5 * HEAD_STD / n**0.5
    assert not output["classifier.bias"].any()
    head = {t["name"]: t for t in report["tensors"]}["classifier.weight"]
    assert head["expected_std"] == pytest.approx(HEAD_STD)
    assert head["after"]["std"] == pytest.approx(w.double().std(unbiased=False).item(), rel=1e-4)
    assert head["flags"] == []

    # transformers loads it cleanly and the encoder is the source model's encoder
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        out, output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info.get("mismatched_keys")
    base = transformers.BertModel.from_pretrained(src).eval()
    model.eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want_h = base(input_ids=ids, attention_mask=mask).last_hidden_state
        got_h = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got_h, want_h)
    assert logits.shape == (2, LABELS) and torch.isfinite(logits).all()


def test_bert_new_head_by_surgery_alone(bert_dirs, tmp_path):
    """No target to start from: rename the pretrained encoder under `bert.` and add the head."""
    src, _ = bert_dirs
    out = tmp_path / "clf"
    res = CliRunner().invoke(
        main,
        [
            "apply",
            str(src),
            "-o",
            str(out),
            "-q",
            "--rename",
            "*=bert.{1}",
            "--add",
            f"classifier.weight=[{LABELS},64]:normal(std={HEAD_STD})",
            "--add",
            f"classifier.bias=[{LABELS}]:zeros",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file()
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        out, num_labels=LABELS, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    base = transformers.BertModel.from_pretrained(src).eval()
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(
            model.eval().bert(input_ids=ids).last_hidden_state,
            base(input_ids=ids).last_hidden_state,
        )
    report = json.loads((out / "reinit-report.json").read_text())
    notes = {t["name"]: t["notes"] for t in report["tensors"]}
    assert notes["classifier.weight"] == ["added"]
    assert notes["bert.pooler.dense.weight"] == ["renamed from pooler.dense.weight"]
