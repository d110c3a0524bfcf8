"""`reinit verify OUTPUT --forward` (docs/guide/model-awareness.md "Forward check", issue 14 item 6): the weights
run in their architecture; a same-architecture transplant gives KL exactly 0, a mean_resize
vocabulary growth a small measured KL; --max-kl fails beyond; --model callables; no transformers
-> a clear usage error.

Internal: also tests reinit.tools.forward directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import ROOT, refused, run

from reinit.tools.forward import forward_check, output_distance

transformers = pytest.importorskip("transformers")


def gpt2(path: Path, vocab: int, seed: int) -> Path:
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def bert(path: Path, seed: int) -> Path:
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    transformers.BertModel(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("make", [gpt2, bert], ids=["gpt2", "bert"])
def test_same_architecture_transplant_gives_kl_exactly_zero(tmp_path, make):
    kw = {"vocab": 60} if make is gpt2 else {}
    src = make(tmp_path / "src", seed=1, **kw)
    target = make(tmp_path / "target", seed=2, **kw)
    out = tmp_path / "out"
    res = run("apply", target, "-r", f"*=from({src})", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    limit = ["--max-kl", "0", "--min-top1", "1"] if make is gpt2 else ["--min-cosine", "1"]
    res = run("verify", out, "--forward", "--against", src, *limit)
    assert res.exit_code == 0, res.output
    if make is gpt2:
        assert re.search(r"max \|Δ\| 0, KL 0 nats", res.stdout), res.stdout
        assert "top-1 agreement 100.00%" in res.stdout
    else:  # hidden features: no KL over a softmax of them, a cosine and a relative error
        assert "max |Δ| 0, last_hidden_state cosine 1.000000, relative error 0" in res.stdout
    assert "no layer diverges" in res.stdout
    data = json.loads(run("verify", out, "--forward", "--against", src, "--json").stdout)
    assert data["max_abs_diff"] == 0.0 and data["first_divergent_layer"] is None
    final = ["transformer.ln_f"] if make is gpt2 else []  # GPT-2's last state is after ln_f
    assert [d["layer"] for d in data["hidden_states"]] == ["embeddings", "0", "1", *final]
    assert all(
        d["cosine"] == pytest.approx(1.0) and d["rel_error"] == 0 for d in data["hidden_states"]
    )
    assert data["output_name"] == ("logits" if make is gpt2 else "last_hidden_state")
    if make is gpt2:
        assert data["kl"] == 0.0 and data["positions"] == 32  # 2 x 16 token positions
        assert data["kl_stats"]["kl_max"] == 0.0 and data["kl_stats"]["top1"] == 1.0
    else:
        assert data["kl"] is None and data["compared"] == "hidden states"
    assert all(s["act_std"] is None or s["act_std"] > 0 for s in data["layers"])
    assert any("attn" in s["name"] or "attention" in s["name"] for s in data["layers"])
    # against the untouched target (other weights), the outputs do differ: the check sees weights
    other = forward_check(out, against=target)
    assert other.max_abs_diff > 0 and other.first_divergent_layer == "embeddings"
    assert other.kl > 0 if make is gpt2 else other.output_diff.rel_error > 0


def test_mean_resize_growth_by_8_tokens_gives_small_measured_kl(tmp_path, capsys):
    old = gpt2(tmp_path / "old", vocab=1000, seed=1)
    new = gpt2(tmp_path / "new", vocab=1008, seed=2)  # the grown config: vocab_size 1008
    grown = tmp_path / "grown"
    env = {"MODEL": str(new), "OLD": str(old), "OLD_VOCAB": "1000", "OUT": str(grown)}
    recipe = ROOT / "examples" / "grow-vocab.toml"
    res = run("run", recipe, "-q", "--allow-write", tmp_path, env=env)  # OUT is outside examples/
    assert res.exit_code == 0, res.output
    res = run("verify", grown, "--forward", "--against", old)
    assert res.exit_code == 0, res.output
    line = res.stdout.strip().splitlines()[-1]
    assert "token ids [2, 16] uniform in [0, 1000)" in res.stdout  # the shared vocabulary
    kl = float(re.search(r"KL (\S+) nats", line)[1])
    with capsys.disabled():
        print(f"\n[forward check] GPT-2 1000 -> 1008 tokens by mean_resize: {line}")
    assert 0 < kl < 1e-2
    # near uniform logits at init: the 8 new tokens take about 8/1008 of the mass
    assert kl == pytest.approx(-torch.log1p(torch.tensor(-8 / 1008)).item(), rel=0.2)
    assert "1000 classes compared" in line
    # --max-kl: exit 1 beyond, one line saying by how much
    res = run("verify", grown, "--forward", "--against", old, "--max-kl", "1e-4")
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and re.match(
        r"error: --max-kl 0.0001: KL \S+ nats exceeds it by \S+", err[0]
    )
    exceed = float(err[0].rsplit(" ", 1)[1])
    assert exceed == pytest.approx(kl - 1e-4, rel=1e-3)


CONVNET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, channels=3, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def net(channels=3, classes=5):
    return Net(channels, classes)


def deeper(channels=3):
    model = Net(channels)
    model.extra = nn.Linear(5, 5)  # not in the checkpoints
    return model
"""


@pytest.fixture()
def fnet(tmp_path, monkeypatch):
    """A module `fnet_mod` (a small conv net taking 1-channel images) on sys.path, and two of its
    checkpoints: a.safetensors and b.safetensors (other weights)."""
    from safetensors.torch import save_file

    (tmp_path / "fnet_mod.py").write_text(textwrap.dedent(CONVNET))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fnet_mod", None)
    import fnet_mod

    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        save_file(fnet_mod.net(channels=1).state_dict(), tmp_path / f"{name}.safetensors")
    return tmp_path


def test_model_callable_runs_images_by_first_conv(fnet):
    spec = "fnet_mod:net(channels=1)"
    res = run("verify", fnet / "a.safetensors", "--forward", "--model", spec, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["inputs"] == "N(0,1) images [2, 1, 32, 32]"
    assert [s["name"] for s in data["layers"]] == ["conv", "pool", "fc"]
    assert data["output_shape"] == [2, 5] and data["kl"] is None
    same = forward_check(fnet / "a.safetensors", against=fnet / "a.safetensors", model=spec)
    assert same.kl == 0.0 and same.max_abs_diff == 0.0
    other = forward_check(fnet / "a.safetensors", against=fnet / "b.safetensors", model=spec)
    assert other.kl > 0 and other.positions == 2
    res = run("verify", fnet / "a.safetensors", "--forward", "--model", spec, "--against",
              fnet / "b.safetensors", "--max-kl", "0")  # fmt: skip
    assert res.exit_code == 1 and "exceeds it by" in res.stderr


def test_without_transformers_a_clear_usage_error(tmp_path, monkeypatch):
    src = gpt2(tmp_path / "src", vocab=60, seed=1)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    refused(tmp_path, ["verify", str(src), "--forward"], 2, "pip install 'reinit[hf]'")


def test_usage_errors(tmp_path, fnet):
    a = str(fnet / "a.safetensors")
    refused(tmp_path, ["verify", a, "--against", a], 2, "--against only apply with --forward")
    refused(tmp_path, ["verify", a, "--forward", "--max-kl", "1"], 2, "give --against")
    refused(tmp_path, ["verify", a, "--forward"], 2, "has no config.json", "--model")
    # a model that the checkpoint does not fill would run on random init: refused
    refused(tmp_path, ["verify", a, "--forward", "--model", "fnet_mod:deeper(channels=1)"], 2,
            "lacks 2 of the model's parameters (extra.weight, extra.bias)")  # fmt: skip
    refused(tmp_path, ["verify", a, "--forward", "--model", "fnet_mod:net(channels=1, classes=7)"],
            2, "'fc.bias' is [5] but the model's 'fc.bias' is [7]")  # fmt: skip


def test_output_distance_counts_new_classes_as_taken_mass():
    ref = torch.zeros(3, 4, dtype=torch.float64)
    out = torch.zeros(3, 5, dtype=torch.float64)  # one new class with the same logit
    diff, kl, positions, classes = output_distance(ref, out)
    assert (diff, positions, classes) == (0.0, 3, 4)
    assert kl == pytest.approx(-torch.log(torch.tensor(4 / 5, dtype=torch.float64)).item())


def _qwen3_next(path: Path, seed: int, **extra) -> Path:
    """A tiny Qwen3-Next (a mixture of experts) at transformers' default layer types: for 2
    layers, both linear attention."""
    cfg = transformers.Qwen3NextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
        shared_expert_intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, num_experts=4, num_experts_per_tok=2,
        linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=8,
        linear_value_head_dim=8, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, **extra,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.Qwen3NextForCausalLM(cfg).save_pretrained(path)
    return path


def test_a_model_whose_cache_cannot_be_built_is_run_without_one(tmp_path):
    """verify --forward runs the model with no cache (nothing is generated): a Qwen3-Next of
    linear-attention layers only, which transformers' own cached forward cannot run, was an
    internal error; it is compared as any model is."""
    a, b = _qwen3_next(tmp_path / "a", 0), _qwen3_next(tmp_path / "b", 0)
    res = run("verify", b, "--forward", "--against", a)
    assert res.exit_code == 0, res.output
    assert "max |Δ| 0, KL 0 nats" in res.stdout, res.stdout
    assert "top-1 agreement 100.00%" in res.stdout, res.stdout


def test_a_model_that_fails_on_the_inputs_is_a_usage_error_naming_it(tmp_path):
    """A config the model cannot run (here Qwen3-Next's attention with a head size its rotary
    table does not fit) is one line naming the model, exit 2: not an internal error."""
    bad = _qwen3_next(
        tmp_path / "bad", 0, layer_types=["full_attention"] * 2, partial_rotary_factor=3.0
    )
    refused(
        tmp_path,
        ["verify", bad, "--forward"],
        2,
        "Qwen3NextForCausalLM fails on the fixed inputs (",
        "the model does not run as configured",
    )


def test_top1_counts_a_new_class_that_wins_as_a_disagreement():
    """A grown head whose new class takes the argmax predicts that class, not the old top one:
    top-1 is the argmax over each model's own classes (the first n are the same tokens)."""
    from reinit.tools.forward_compare import logit_stats

    ref = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]], dtype=torch.float64)
    out = torch.cat([ref, torch.tensor([[9.0], [-9.0]], dtype=torch.float64)], dim=-1)
    assert logit_stats(ref, out).top1 == 0.5  # row 0 now predicts the new class 3
    assert logit_stats(out, ref).top1 == 0.5  # a shrunk head: the same positions disagree


def llama(path: Path, head: bool) -> Path:
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg)
    (lm if head else lm.model).save_pretrained(path)
    return path


def test_logits_against_hidden_states_of_the_same_positions_compare_the_shared_trunk(tmp_path):
    """LlamaForCausalLM's logits [2, 16, 64] against LlamaModel's last_hidden_state [2, 16, 16]:
    the heads differ though the positions agree; no |Δ| between logits and hidden features."""
    lm, base = llama(tmp_path / "lm", head=True), llama(tmp_path / "base", head=False)
    for out, against in ((lm, base), (base, lm)):
        res = forward_check(out, against=against)
        assert res.compared == "shared trunk"
        assert res.max_abs_diff is None and res.logits is None and res.output_diff is None
        assert [d.rel_error for d in res.hidden] == [0.0, 0.0, 0.0, 0.0]
    res = run("verify", lm, "--forward", "--against", base, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert (got["compared"], got["max_abs_diff"]) == ("shared trunk", None)


def test_a_changed_final_norm_is_named_not_blamed_on_the_last_block(tmp_path):
    """Llama's last hidden state has the final norm applied: a change to `model.norm.weight`
    alone was reported as `first divergent layer: 1` (block 1, whose weights are untouched).
    The last block's own output is layer 1, and the final norm is a layer of its own."""
    from safetensors.torch import load_file, save_file

    src = llama(tmp_path / "src", head=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.5
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    res = forward_check(out, against=src)
    got = [(d.layer, d.rel_error) for d in res.hidden]
    assert [n for n, _ in got] == ["embeddings", "0", "1", "model.norm"]
    assert [e for _, e in got[:3]] == [0.0, 0.0, 0.0]
    assert got[3][1] == pytest.approx(0.5, rel=1e-6)
    assert res.first_divergent_layer == "model.norm"
    same = forward_check(src, against=src)  # BERT-like naming is kept where nothing differs
    assert [d.layer for d in same.hidden] == ["embeddings", "0", "1", "model.norm"]
    assert same.first_divergent_layer is None


def test_nan_outputs_fail_every_limit_and_add_no_layer(tmp_path):
    """A NaN in one weight makes the logits NaN: `--max-kl` passed them (NaN > X is false,
    exit 0), and a NaN state counted as unequal to itself made a final norm of BERT-like
    last blocks. Each limit now fails; the layers are the model's own."""
    from safetensors.torch import load_file, save_file

    src = llama(tmp_path / "src", head=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    for limit in (["--max-kl", "0.01"], ["--min-top1", "0.5"], ["--min-cosine", "0.5"]):
        res = run("verify", out, "--forward", "--against", src, *limit)
        assert res.exit_code == 1, (limit, res.output)
        assert res.stderr.startswith(f"error: {limit[0]} "), res.stderr
    res = forward_check(out, against=src)
    assert [d.layer for d in res.hidden] == ["embeddings", "0", "1", "model.norm"]
    assert res.first_divergent_layer == "1"


def test_another_tasks_head_compares_the_shared_trunk(tmp_path):
    """A token classifier (logits [2, 16, 5]) whose encoder is a masked LM's, against that
    masked LM (logits [2, 16, 50]): the 5 labels were compared with the first 5 tokens as a
    grown head (KL 2.3 nats, top-1 0%: `--max-kl` failed a file whose trunk agrees exactly).
    Another class of model with another class count is another head: the trunk is compared."""
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=5,
    )  # fmt: skip
    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(cfg)
    mlm.save_pretrained(tmp_path / "mlm")
    tagger = transformers.BertForTokenClassification(cfg)
    tagger.bert.load_state_dict(mlm.bert.state_dict(), strict=False)  # no pooler in either
    tagger.save_pretrained(tmp_path / "tagger")
    res = forward_check(tmp_path / "tagger", against=tmp_path / "mlm")
    assert res.compared == "shared trunk" and res.logits is None and res.max_abs_diff is None
    assert [d.rel_error for d in res.hidden] == [0.0, 0.0, 0.0]
    res = run("verify", tmp_path / "tagger", "--forward", "--against", tmp_path / "mlm",
              "--min-cosine", "0.9999")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "the heads differ (logits [2, 16, 5] vs [2, 16, 50])" in res.stdout
