"""Issue 14 item 4: `--resize NAME=[d0,...][:SCHEME]` grows or shrinks a named tensor in place
(kept entries byte-identical, new ones reproducible: mean_resize for new rows by default, zeros
for new columns, any scheme when named), tied names together, the config following; and the
must-show loads: a GPT-2 grown by 8 tokens loads and generates, a Llama cut from 4 to 2 layers
loads, each with no missing/unexpected/mismatched key and no warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_clean, quietly, refused, run
from safetensors.torch import load_file, save_file

import reinit

transformers = pytest.importorskip("transformers")

WTE = "transformer.wte.weight"


def _gpt2(path: Path) -> Path:
    # bos/eos inside the 1,000-token vocabulary: GPT-2's default 50256 makes transformers warn
    # about the config itself, on the source as on any output
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=1000, n_positions=64,
        bos_token_id=999, eos_token_id=999,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def test_gpt2_grown_by_8_tokens_loads_and_generates(tmp_path):
    src = _gpt2(tmp_path / "gpt2")
    out = tmp_path / "grown"
    res = run("apply", src, "--resize", f"{WTE}=[1008,*]", "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    assert "note: config.json: vocab_size 1000 -> 1008" in res.stderr
    model = load_clean(transformers.AutoModelForCausalLM, out)
    assert model.config.vocab_size == 1008
    assert model.lm_head.weight.shape == (1008, 32)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    ids = torch.tensor([[1, 2, 3, 4]])
    gen, messages = quietly(
        model.generate,
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=999,
    )
    assert messages == []
    assert gen.shape == (1, 10) and torch.equal(gen[:, :4], ids)
    assert int(gen.max()) < 1008
    # values: the old rows byte for byte, every other tensor untouched, the 8 new rows exactly
    # what the mean_resize scheme (transformers >= 4.46's resize) gives on the grown tensor
    old, new = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert new[WTE][:1000].numpy().tobytes() == old[WTE].numpy().tobytes()
    assert all(torch.equal(new[n], old[n]) for n in old if n != WTE)
    grown = torch.cat([old[WTE], torch.zeros(8, 32)])
    want, _ = reinit.apply_to_state_dict({WTE: grown}, [f"{WTE}=mean_resize(old_rows=1000)"])
    assert torch.equal(new[WTE], want[WTE])
    assert torch.allclose(new[WTE][1000:], old[WTE].mean(0).expand(8, -1), atol=1e-5)
    # the report says what was done
    (entry,) = [e for e in json.loads((out / "reinit-report.json").read_text())["tensors"]
                if e["name"] == WTE]  # fmt: skip
    assert entry["notes"] == ["resized [1000, 32] -> [1008, 32] (8 new rows by mean_resize)"]
    assert entry["rule"] == f"--resize {WTE}=[1008,*]"
    assert entry["scheme"] == "mean_resize(old_rows=1000)" and entry["shape"] == [1008, 32]
    assert entry["before"]["std"] == pytest.approx(old[WTE].double().std(correction=0).item())
    assert entry["flags"] == []


def test_resize_is_reproducible_per_tensor_and_seed(tmp_path):
    src = _gpt2(tmp_path / "gpt2") / "model.safetensors"
    outs = {}
    for label, seed, rule in [("a", 0, []), ("b", 0, ["-r", "transformer.h.0.*.bias=zeros"]),
                              ("c", 1, [])]:  # fmt: skip
        o = tmp_path / f"{label}.safetensors"
        res = run("apply", src, "--resize", f"{WTE}=[1008,*]", *rule, "--seed", str(seed), "-o", o)
        assert res.exit_code == 0, res.output
        outs[label] = load_file(o)[WTE]
    assert torch.equal(outs["a"], outs["b"])  # other rules do not move the new rows
    assert torch.equal(outs["a"][:1000], outs["c"][:1000])
    assert not torch.equal(outs["a"][1000:], outs["c"][1000:])  # another seed, other rows


def test_llama_cut_from_4_to_2_layers_loads_as_a_2_layer_model(tmp_path):
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    src = tmp_path / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(src)
    out = tmp_path / "llama-2"
    res = run(
        "apply", src, "--drop", "model.layers.2.*", "--drop", "model.layers.3.*",
        "-o", f"{out}/", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "note: config.json: num_hidden_layers 4 -> 2" in res.stderr
    model = load_clean(transformers.AutoModelForCausalLM, out)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    old = load_file(src / "model.safetensors")
    for name, t in model.state_dict().items():
        assert torch.equal(t, old[name]), name  # the kept layers are the source's own
    ids = torch.tensor([[3, 4, 5]])
    logits = model(ids).logits
    assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()
    # its vocabulary grown too: Llama's head is untied, so it is resized beside the embedding
    grow = ["--resize", "model.embed_tokens.weight=[136,*]"]
    res = run("apply", out, *grow, "-o", f"{tmp_path / 'half'}/", "-q")
    assert res.exit_code == 0, res.output
    assert "'lm_head.weight' still has 128 rows; resize it too" in res.stderr
    res = run("apply", out, *grow, "--resize", "lm_head.weight=[136,*]",
              "-o", f"{tmp_path / 'grown'}/", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "still has" not in res.stderr and "gets" not in res.stderr
    # a typo gives the head another vocabulary: said (it was silent; the output did not load)
    apart = ["--resize", "lm_head.weight=[137,*]", "-o", f"{tmp_path / 'apart'}/", "-q"]
    res = run("apply", out, *grow, *apart)
    assert res.exit_code == 0, res.output
    assert "'lm_head.weight' gets 137 rows but 'model.embed_tokens.weight' 136" in res.stderr
    grown = load_clean(transformers.AutoModelForCausalLM, tmp_path / "grown")
    assert grown.config.vocab_size == 136 and grown.config.num_hidden_layers == 2
    assert grown(ids).logits.shape == (1, 3, 136)


def _tiny(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "emb.weight": torch.randn(10, 4, generator=g),
            "fc.weight": torch.randn(4, 3, generator=g),
            "fc.bias": torch.randn(4, generator=g),
            "steps": torch.arange(5, dtype=torch.int64),
            "half": torch.ones(2, dtype=torch.float16),
        },
        path,
    )
    return path


def test_shrink_keeps_leading_rows_and_new_columns_are_zeros(tmp_path):
    src = _tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    res = run(
        "apply", src, "-o", out, "--resize", "emb.weight=[6,*]", "--resize", "fc.weight=[*,5]",
        "--resize", "fc.bias=[6]", "--resize", "steps=[7]",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    old, new = load_file(src), load_file(out)
    assert torch.equal(new["emb.weight"], old["emb.weight"][:6])
    # new input columns of a Linear are zeros: on the old inputs it computes what it did
    assert torch.equal(new["fc.weight"][:, :3], old["fc.weight"])
    assert torch.equal(new["fc.weight"][:, 3:], torch.zeros(4, 2))
    x = torch.randn(3)
    assert torch.equal(new["fc.weight"] @ torch.cat([x, torch.randn(2)]), old["fc.weight"] @ x)
    # a 1-D tensor grown by mean_resize: the kept values' mean, spread 1e-9·std (as
    # transformers grows an LM head's bias)
    assert torch.equal(new["fc.bias"][:4], old["fc.bias"])
    assert new["fc.bias"][4:].tolist() == pytest.approx([old["fc.bias"].mean().item()] * 2)
    assert torch.equal(new["steps"], torch.tensor([0, 1, 2, 3, 4, 0, 0]))  # integers: zeros
    report = json.loads((tmp_path / "o.report.json").read_text())
    notes = {e["name"]: (e["action"], e["notes"]) for e in report["tensors"]}
    assert notes["emb.weight"] == ("kept", ["resized [10, 4] -> [6, 4] (leading entries kept)"])
    assert notes["fc.weight"] == ("reinit", ["resized [4, 3] -> [4, 5] (2 new columns by zeros)"])


def test_a_named_scheme_fills_new_rows_from_the_tensors_generator(tmp_path):
    src = _tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", src, "-o", out, "--resize", "emb.weight=[16,*]:normal(std=0.02)",
              "--seed", "3")  # fmt: skip
    assert res.exit_code == 0, res.output
    new = load_file(out)["emb.weight"]
    # the whole new shape drawn as torch would with the tensor's own generator, the kept
    # block put back: reproducible without reinit (docs/guide/rules-and-schemes.md)
    want = torch.empty(16, 4)
    g = torch.Generator().manual_seed(reinit.schemes.seed_for(3, "emb.weight"))
    torch.nn.init.normal_(want, 0.0, 0.02, generator=g)
    want[:10] = load_file(src)["emb.weight"]
    assert torch.equal(new, want)


def test_tied_names_resize_together(tmp_path):
    w = torch.randn(10, 4)
    torch.save({"emb.weight": w, "head.weight": w, "head.bias": torch.zeros(10)},
               tmp_path / "m.bin")  # fmt: skip
    out = tmp_path / "o.bin"
    res = run("apply", tmp_path / "m.bin", "--resize", "emb.weight=[12,*]",
              "--resize", "head.bias=[12]", "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    sd = torch.load(out, weights_only=True)
    assert sd["emb.weight"].shape == sd["head.weight"].shape == (12, 4)
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()  # still one storage
    assert torch.equal(sd["emb.weight"][:10], w)
    report = json.loads((tmp_path / "o.report.json").read_text())
    head = next(e for e in report["tensors"] if e["name"] == "head.weight")
    assert "tied with emb.weight" in head["notes"] and head["shape"] == [12, 4]
    # resizing the tied names to different shapes is refused
    refused(tmp_path, ["apply", str(tmp_path / "m.bin"), "--resize", "emb.weight=[12,*]",
                       "--resize", "head.weight=[11,*]", "-o", str(tmp_path / "x.bin")],
            2, "already resized", "tied")  # fmt: skip


def test_the_api_and_recipes_take_resize(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _tiny(tmp_path / "m.safetensors")
    report = reinit.apply(src, [], "api.safetensors", resize="emb.weight=[12,*]")
    assert report.entry("emb.weight").shape == (12, 4)
    opts = reinit.ApplyOptions(resize="emb.weight=[12,*]")
    assert opts.resize == ("emb.weight=[12,*]",)
    plan = reinit.plan(src, [], options=opts)
    assert {e.name: e.shape for e in plan.entries}["emb.weight"] == (12, 4)
    new, _ = reinit.apply_to_state_dict(load_file(src), [], resize=["emb.weight=[12,*]"])
    assert torch.equal(new["emb.weight"], load_file("api.safetensors")["emb.weight"])
    (tmp_path / "r.yaml").write_text(
        "source: m.safetensors\noutput: recipe.safetensors\nresize: ['emb.weight=[12,*]']\n"
    )
    res = run("run", "r.yaml", "-q")
    assert res.exit_code == 0, res.output
    assert Path("recipe.safetensors").read_bytes() == Path("api.safetensors").read_bytes()
    with pytest.raises(reinit.errors.UsageError, match="apply_to_module: resize"):
        reinit.apply_to_module(torch.nn.Linear(2, 2), [], options=opts)


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("emb.weigth=[12,*]", ("matches no tensor", "emb.weight")),
        ("emb.weight=[12]", ("2-D", "give 2 dims")),
        ("emb.weight=[*,6]:mean_resize", ("mean_resize fills new rows",)),
        ("steps=[9]:normal", ("integer tensor can only be zeros",)),
        ("emb.weight=12", ("write NAME=[d0,d1,...][:SCHEME]",)),
        ("emb.weight=[12,*]:from(x.safetensors)", ("new entries need a scheme",)),
        ("emb.weight=[12,x]", ("integer or '*'",)),
        ("half=[4]:constant(1e6)", ("overflows float16",)),
        # a pattern: was "matches no tensor; closest names: fc.weight, ..." (the names it matches)
        ("fc.*=[8,*]", ("exact name, not a pattern", "fc.bias, fc.weight", "one --resize per")),
    ],
)
def test_bad_resizes_are_usage_errors_that_write_nothing(tmp_path, spec, fragments):
    src = _tiny(tmp_path / "m.safetensors")
    refused(tmp_path, ["apply", str(src), "--resize", spec], 2, "--resize", *fragments)


def test_a_bert_mlm_grown_is_told_to_grow_its_decoder_bias_and_then_loads(tmp_path):
    """BERT's MLM head ties its decoder to the word embeddings but keeps its own bias
    (`cls.predictions.bias`, one entry per token): growing the embedding alone gives a folder
    that does not load (a size mismatch). Say so, as for an untied `lm_head`, and name the fix;
    with it, the output loads clean."""
    cfg = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        vocab_size=50, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    src = tmp_path / "mlm"
    transformers.BertForMaskedLM(cfg).save_pretrained(src)
    grow = ["--resize", "bert.embeddings.word_embeddings.weight=[56,*]"]
    res = run("apply", src, *grow, "-o", f"{tmp_path / 'half'}/", "-q")
    assert res.exit_code == 0, res.output
    assert "'cls.predictions.bias' still has 50 rows; resize it too" in res.stderr, res.stderr
    assert "--resize 'cls.predictions.bias=[56]'" in res.stderr, res.stderr
    out = tmp_path / "grown"
    res = run("apply", src, *grow, "--resize", "cls.predictions.bias=[56]", "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    assert "still has" not in res.stderr and "gets" not in res.stderr
    apart = ["--resize", "cls.predictions.bias=[57]", "-o", f"{tmp_path / 'apart'}/", "-q"]
    res = run("apply", src, *grow, *apart)
    assert res.exit_code == 0, res.output
    assert (
        "'cls.predictions.bias' gets 57 rows but 'bert.embeddings.word_embeddings.weight' 56"
        in res.stderr
    )
    grown = load_clean(transformers.AutoModelForMaskedLM, out)
    assert grown.config.vocab_size == 56
    assert grown(torch.tensor([[3, 4, 55]])).logits.shape == (1, 3, 56)
