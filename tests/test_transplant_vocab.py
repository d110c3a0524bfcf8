"""Rows mapped by token string and by class name, end to end (issue 15 item 6): tiny GPT-2 and
BERT models built in the test with two tokenizer files each (written here, nothing
downloaded). A vocab remap keeps the shared tokens' rows byte-identical and the model's logits
for a text of shared tokens unchanged; a label remap keeps the shared classes' head rows; the
report counts copied and new rows; missing tokenizer files are exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_clean as helpers_load_clean
from helpers import refused, run
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

WTE = "transformer.wte.weight"

SRC_TOKENS = [f"w{i}" for i in range(20)] + ["<|endoftext|>"]
# the target keeps 12 source tokens in another order, adds 5 new ones, and pads to 24 rows
TGT_TOKENS = ["<|endoftext|>", *[f"w{i}" for i in (7, 3, 19, 0, 11, 5, 2, 16, 9, 13, 1)]] + [
    f"new{i}" for i in range(5)
]
SHARED = [f"w{i}" for i in (0, 1, 2, 3, 5, 7, 9, 11, 13, 16, 19)]


def tokenizer_json(path, tokens, added=("<|endoftext|>",)):
    vocab = {t: i for i, t in enumerate(tokens) if t not in added}
    doc = {
        "version": "1.0",
        "added_tokens": [
            {"id": tokens.index(a), "content": a, "special": True} for a in added if a in tokens
        ],
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"},
    }
    path.write_text(json.dumps(doc))


def gpt2(path, vocab: int, seed: int, eot: int):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=16,
        n_embd=8,
        n_layer=2,
        n_head=2,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(path)
    return model


def load_clean(cls, path):
    """`helpers.load_clean` (no missing/unexpected/mismatched key, no warning), in eval mode."""
    return helpers_load_clean(cls, path).eval()


@pytest.fixture
def two_gpt2(tmp_path):
    src = gpt2(tmp_path / "src", len(SRC_TOKENS), 0, 20).eval()
    tokenizer_json(tmp_path / "src" / "tokenizer.json", SRC_TOKENS)
    gpt2(tmp_path / "tgt", 24, 1, 0)
    tokenizer_json(tmp_path / "tgt" / "tokenizer.json", TGT_TOKENS)
    return src


def test_gpt2_vocab_remap_keeps_shared_rows_and_logits(tmp_path, two_gpt2):
    src_model = two_gpt2
    out = tmp_path / "out"
    res = run(
        "apply", tmp_path / "tgt", "-o", out,
        "--rule", f"*=from({tmp_path / 'src'})",
        "--rule", f"{WTE}=from({tmp_path / 'src'}, rows=tokens)",
        "--report", tmp_path / "r.json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    before = load_file(tmp_path / "src" / "model.safetensors")[WTE]
    after = load_file(out / "model.safetensors")[WTE]
    assert after.shape == (24, 8)
    for tok in SHARED:  # byte-identical rows
        a, b = after[TGT_TOKENS.index(tok)], before[SRC_TOKENS.index(tok)]
        assert a.view(torch.int32).equal(b.view(torch.int32))
    new = after[12:]  # 5 new tokens + 7 padding rows past the tokenizer: the copied rows' mean
    copied = before[[SRC_TOKENS.index(t) for t in TGT_TOKENS if t in SRC_TOKENS]]
    assert torch.allclose(new, copied.mean(0).expand_as(new), rtol=0, atol=1e-4)
    assert len({tuple(r.tolist()) for r in new}) == 12  # plus noise (1e-9 of their covariance)
    entry = {e["name"]: e for e in json.loads((tmp_path / "r.json").read_text())["tensors"]}[WTE]
    assert "rows: 12 copied, 12 new (mean_resize)" in entry["notes"], entry["notes"]
    model = load_clean(transformers.GPT2LMHeadModel, out)
    text = ["w3", "w19", "w0", "w7", "w11", "w3", "w2"]
    ids_src = torch.tensor([[SRC_TOKENS.index(t) for t in text]])
    ids_tgt = torch.tensor([[TGT_TOKENS.index(t) for t in text]])
    with torch.no_grad():
        want = src_model(ids_src, output_hidden_states=True)
        got = model(ids_tgt, output_hidden_states=True)
    assert torch.equal(got.hidden_states[-1], want.hidden_states[-1])
    cols_src = [SRC_TOKENS.index(t) for t in SHARED]
    cols_tgt = [TGT_TOKENS.index(t) for t in SHARED]
    # bit-equal here; 1e-6 because a matmul over another vocab size may be blocked differently
    assert torch.allclose(got.logits[..., cols_tgt], want.logits[..., cols_src], rtol=0, atol=1e-6)


def test_tied_embedding_and_head_get_the_same_mapping(tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(len(SRC_TOKENS), 4, generator=g)
    torch.save({"embed.weight": emb, "lm_head.weight": emb}, tmp_path / "src.bin")
    tgt = torch.zeros(24, 4)
    (tmp_path / "t").mkdir()
    torch.save({"embed.weight": tgt, "lm_head.weight": tgt}, tmp_path / "t" / "model.bin")
    tokenizer_json(tmp_path / "t" / "tokenizer.json", TGT_TOKENS)
    tokenizer_json(tmp_path / "src.json", SRC_TOKENS)
    out = tmp_path / "out.safetensors"
    res = run(
        "apply", tmp_path / "t" / "model.bin", "-o", out, "-q",
        "--rule", f"lm_head.weight=from({tmp_path / 'src.bin'}, rows=tokens, src_vocab={tmp_path / 'src.json'})",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert torch.equal(got["embed.weight"], got["lm_head.weight"])
    for tok in SHARED:
        assert torch.equal(got["embed.weight"][TGT_TOKENS.index(tok)], emb[SRC_TOKENS.index(tok)])


def test_bert_vocab_txt_with_explicit_paths_and_the_mlm_bias(tmp_path):
    src_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "##s", "sat", "on", "mat"]
    tgt_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "mat", "dog", "the", "sat", "##s", "rug", "on"]
    (tmp_path / "src.txt").write_text("\n".join(src_vocab) + "\n")
    (tmp_path / "tgt.txt").write_text("\n".join(tgt_vocab) + "\n")

    def mlm(path, vocab, seed):
        torch.manual_seed(seed)
        cfg = transformers.BertConfig(
            vocab_size=vocab,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=16,
        )
        model = transformers.BertForMaskedLM(cfg)
        with torch.no_grad():
            model.cls.predictions.bias.normal_()  # a trained-looking bias, so rows show
        model.save_pretrained(path)
        return model.eval()

    src_model = mlm(tmp_path / "s", len(src_vocab), 0)
    mlm(tmp_path / "t", len(tgt_vocab), 1)
    out = tmp_path / "out"
    both = f"vocab={tmp_path / 'tgt.txt'}, src_vocab={tmp_path / 'src.txt'}"
    res = run(
        "apply", tmp_path / "t", "-o", out, "-q",
        "--rule", f"*=from({tmp_path / 's'})",
        "--rule", f"bert.embeddings.word_embeddings.weight=from({tmp_path / 's'}, rows=tokens, {both})",
        "--rule", f"cls.predictions.bias=from({tmp_path / 's'}, rows=tokens, {both})",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    model = load_clean(transformers.BertForMaskedLM, out)
    text = ["[CLS]", "the", "sat", "on", "mat", "##s", "[SEP]"]
    with torch.no_grad():
        want = src_model(torch.tensor([[src_vocab.index(t) for t in text]])).logits
        got = model(torch.tensor([[tgt_vocab.index(t) for t in text]])).logits
    shared = [t for t in tgt_vocab if t in src_vocab]
    cols_s = [src_vocab.index(t) for t in shared]
    cols_t = [tgt_vocab.index(t) for t in shared]
    assert torch.allclose(got[..., cols_t], want[..., cols_s], rtol=0, atol=1e-6)


def test_missing_tokenizer_file_is_exit_2(tmp_path, two_gpt2):
    (tmp_path / "src" / "tokenizer.json").unlink()
    refused(
        tmp_path,
        ["apply", tmp_path / "tgt", "-o", tmp_path / "o", "--rule",
         f"{WTE}=from({tmp_path / 'src'}, rows=tokens)"],
        2, "src_vocab=",
    )  # fmt: skip


def classifier(path, labels, seed):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
    )
    transformers.BertForSequenceClassification(cfg).save_pretrained(path)
    return load_file(path / "model.safetensors")


def test_label_remap_keeps_shared_class_rows(tmp_path):
    src = classifier(tmp_path / "s", ["neg", "neu", "pos"], 0)
    tgt = classifier(tmp_path / "t", ["pos", "angry", "neg"], 1)
    out = tmp_path / "out"
    s = tmp_path / "s"
    res = run(
        "apply", tmp_path / "t", "-o", out, "-q", "--report", tmp_path / "r.json",
        "--rule", f"*=from({s})",
        "--rule", f"classifier.*=from({s}, rows=labels)",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out / "model.safetensors")
    for p in ("weight", "bias"):
        name = f"classifier.{p}"
        assert torch.equal(got[name][0], src[name][2]) and torch.equal(got[name][2], src[name][0])
        assert torch.equal(got[name][1], tgt[name][1])  # new class: the target's own (keep)
    notes = {
        e["name"]: e["notes"] for e in json.loads((tmp_path / "r.json").read_text())["tensors"]
    }
    assert "rows: 2 copied, 1 new (keep)" in notes["classifier.weight"]
    load_clean(transformers.BertForSequenceClassification, out)


def test_label_remap_with_a_config_given_by_path(tmp_path):
    """rows=labels reads id2label beside each checkpoint, or from src_vocab=/vocab= paths; a
    source with no config.json anywhere is exit 2."""
    src = classifier(tmp_path / "s", ["a", "b"], 0)
    classifier(tmp_path / "t", ["b", "a", "c"], 1)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "w.safetensors").write_bytes(
        (tmp_path / "s" / "model.safetensors").read_bytes()
    )
    bare = tmp_path / "bare" / "w.safetensors"
    rule = f"classifier.weight=from({bare}, rows=labels)"
    refused(tmp_path, ["apply", tmp_path / "t", "-o", tmp_path / "o", "--rule", rule], 2,
            "needs id2label in the source's config.json")  # fmt: skip
    given = (
        f"classifier.weight=from({bare}, rows=labels, src_vocab={tmp_path / 's' / 'config.json'})"
    )
    res = run("apply", tmp_path / "t", "-o", tmp_path / "o", "-q", "--rule", given)
    assert res.exit_code == 0, res.output
    got = load_file(tmp_path / "o" / "model.safetensors")["classifier.weight"]
    assert torch.equal(got[0], src["classifier.weight"][1]) and torch.equal(
        got[1], src["classifier.weight"][0]
    )


def test_hub_source_tokenizer_is_fetched_from_the_repo(offline, tmp_path):
    """src_vocab defaults to the Hub repo's tokenizer.json (from a seeded offline cache)."""
    from hubcache import seed_repo, st_bytes

    emb = torch.randn(len(SRC_TOKENS), 4)
    tok = tmp_path / "src-tokenizer.json"
    tokenizer_json(tok, SRC_TOKENS)
    files = {
        "model.safetensors": st_bytes(tmp_path, {"emb": emb}),
        "tokenizer.json": tok.read_bytes(),
    }
    seed_repo(offline, "acme/tok", files)
    (tmp_path / "t").mkdir()
    save_file({"emb": torch.zeros(24, 4)}, tmp_path / "t" / "model.safetensors")
    tokenizer_json(tmp_path / "t" / "tokenizer.json", TGT_TOKENS)
    out = tmp_path / "o.safetensors"
    res = run(
        "apply", tmp_path / "t", "-o", out, "-q", "--rule", "emb=from(hf://acme/tok, rows=tokens)"
    )
    assert res.exit_code == 0, res.output
    got = load_file(out)["emb"]
    for t in SHARED:
        assert torch.equal(got[TGT_TOKENS.index(t)], emb[SRC_TOKENS.index(t)])
    # the note names the file as the user knows it, not the cache's snapshot folder (a commit)
    (entry,) = json.loads((tmp_path / "o.report.json").read_text())["tensors"]
    assert (
        "rows mapped by token (hf://acme/tok/tokenizer.json -> t/tokenizer.json)" in entry["notes"]
    ), entry["notes"]
