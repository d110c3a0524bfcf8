"""Issue 14 item 4: add/drop/rename/resize in any step of a recipe, not only the last. A step's
surgery runs in memory like its rules; the next step sees the new names and shapes; the output
equals the steps run one after another with files in between, and a directory output's
config.json follows surgery done in an earlier step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file, save_file

import reinit

transformers = pytest.importorskip("transformers")

WTE = "transformer.wte.weight"


def _gpt2(path: Path) -> Path:
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=1000, n_positions=64,
        bos_token_id=999, eos_token_id=999,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def test_grow_the_vocabulary_in_step_1_and_redraw_its_new_rows_in_step_2(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    _gpt2(tmp_path / "gpt2")
    Path("grow.yaml").write_text(
        "source: gpt2\noutput: grown/\nsteps:\n"
        "  - name: resize\n"
        f"    resize: ['{WTE}=[1008,*]']\n"
        "  - name: new-rows\n"
        "    seed: 5\n"
        f"    rules: ['{WTE}=mean_resize(old_rows=1000)', 'transformer.h.1.mlp.c_proj.bias=zeros']\n"
    )
    res = run("run", "grow.yaml", "-q")
    assert res.exit_code == 0, res.output
    # the config follows step 1's resize though the last step did no surgery
    assert "note: config.json: vocab_size 1000 -> 1008" in res.stderr
    assert json.loads(Path("grown/config.json").read_text())["vocab_size"] == 1008
    model = transformers.AutoModelForCausalLM.from_pretrained("grown")
    assert model.lm_head.weight.shape == (1008, 32)
    old, new = load_file("gpt2/model.safetensors"), load_file("grown/model.safetensors")
    assert torch.equal(new[WTE][:1000], old[WTE])
    # step 2's rule read step 1's grown tensor and redrew the 8 rows with its own seed (5)
    grown = torch.cat([old[WTE], torch.zeros(8, 32)])
    want, _ = reinit.apply_to_state_dict(
        {WTE: grown}, [f"{WTE}=mean_resize(old_rows=1000)"], seed=5
    )
    assert torch.equal(new[WTE], want[WTE])
    step1, _ = reinit.apply_to_state_dict({WTE: old[WTE]}, [], resize=[f"{WTE}=[1008,*]"])
    assert not torch.equal(new[WTE][1000:], step1[WTE][1000:])  # not step 1's rows
    report = json.loads(Path("grown/reinit-report.json").read_text())
    entry = next(e for e in report["tensors"] if e["name"] == WTE)
    assert entry["notes"] == [
        "resized [1000, 32] -> [1008, 32] (8 new rows by mean_resize)",
        "changed by steps 1, 2",
    ]
    # the forward check: the grown model computes what the old one did, up to the new tokens'
    # share of the probability mass
    res = run("verify", "grown", "--forward", "--against", "gpt2")
    assert res.exit_code == 0, res.output
    line = res.stdout.strip().splitlines()[-1]
    kl = float(re.search(r"KL (\S+) nats", line)[1])
    with capsys.disabled():
        print(f"\n[recipe: resize in step 1, rule in step 2] forward check: {line}")
    assert 0 < kl < 1e-2


def _small(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "enc.0.weight": torch.randn(6, 4, generator=g),
            "enc.0.bias": torch.randn(6, generator=g),
            "head.weight": torch.randn(2, 6, generator=g),
            "head.bias": torch.randn(2, generator=g),
        },
        path,
    )
    return path


def test_surgery_in_every_step_equals_the_steps_chained_through_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _small(tmp_path / "m.safetensors")
    step1 = {
        "drop": ["head.*"],
        "rename": ["enc.*=encoder.{1}"],
        "add": ["cls.weight=[3,6]:normal(std=0.02)", "cls.bias=[3]:zeros"],
        "resize": ["encoder.0.weight=[8,*]", "encoder.0.bias=[8]"],
    }
    step2 = {
        "rules": ["classifier.bias=ones", "encoder.0.weight=orthogonal"],
        "rename": ["cls.*=classifier.{1}"],
        "resize": ["classifier.weight=[3,8]"],
    }
    Path("r.json").write_text(
        json.dumps({"source": "m.safetensors", "output": "out.safetensors", "seed": 2,
                    "steps": [{"name": "one", **step1}, {"name": "two", **step2}]})
    )  # fmt: skip
    res = run("run", "r.json", "-q")
    assert res.exit_code == 0, res.output
    # the same steps as two applies with a file between them: the same bytes
    a = reinit.apply("m.safetensors", [], "mid.safetensors", seed=2, **step1)
    assert a.entry("encoder.0.weight").shape == (8, 4)
    rules = step2.pop("rules")
    reinit.apply("mid.safetensors", rules, "chained.safetensors", seed=2, **step2)
    assert Path("out.safetensors").read_bytes() == Path("chained.safetensors").read_bytes()
    out = load_file("out.safetensors")
    assert sorted(out) == ["classifier.bias", "classifier.weight", "encoder.0.bias",
                           "encoder.0.weight"]  # fmt: skip
    assert out["classifier.weight"].shape == (3, 8)
    assert torch.equal(out["classifier.weight"][:, 6:], torch.zeros(3, 2))
    assert torch.equal(out["classifier.weight"][:, :6], load_file("mid.safetensors")["cls.weight"])
    assert torch.equal(out["classifier.bias"], torch.ones(3))
    # the dry run plans each step on the previous one's names and shapes, as the run does
    plans = reinit.plan_recipe(reinit.load_recipe("r.json"))
    assert {e.name: e.shape for e in plans[1].entries} == {n: tuple(t.shape) for n, t in
                                                           out.items()}  # fmt: skip
    shown = run("run", "r.json", "--dry-run")
    assert shown.exit_code == 0 and "resized [6, 4] -> [8, 4]" in shown.output


def test_surgery_at_the_top_of_a_multi_step_recipe_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _small(tmp_path / "m.safetensors")
    Path("r.yaml").write_text(
        "source: m.safetensors\nresize: ['head.bias=[3]']\nsteps:\n  - rules: ['*.bias=zeros']\n"
    )
    refused(tmp_path, ["run", "r.yaml"], 2, "put resize in the step it belongs to")
    Path("r.yaml").write_text(
        "source: m.safetensors\nsteps:\n  - resize: ['head.bias=[3,1]']\n"
        "  - rules: ['*.bias=zeros']\n"
    )
    refused(tmp_path, ["run", "r.yaml"], 2, "step 1", "give 1 dims")


def test_a_tensor_redrawn_then_renamed_is_reported_as_redrawn(tmp_path, monkeypatch):
    """Step 1 redraws a tensor, step 2 renames it: the merged report follows the rename back
    to step 1 (it once reported the redrawn tensor `kept`, with no rule and no step note)."""
    monkeypatch.chdir(tmp_path)
    _gpt2(tmp_path / "gpt2")
    old, new = "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.out_proj.weight"
    Path("r.yaml").write_text(
        "source: gpt2\noutput: o.safetensors\nsteps:\n"
        f"  - rules: ['{old}=normal(std=0.5)']\n"
        f"  - rename: ['{old}={new}']\n"
        "    rules: ['transformer.ln_f.bias=ones']\n"
    )
    res = run("run", "r.yaml", "--json", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    entry = {t["name"]: t for t in report["tensors"]}[new]
    assert entry["action"] == "reinit"
    assert entry["rule"] == f"{old}=normal(std=0.5)"
    assert entry["expected_std"] == 0.5
    assert entry["before"]["std"] < 0.05 < 0.4 < entry["after"]["std"]
    assert entry["notes"] == [f"renamed from {old}", "changed by step 1"]
    assert "off_reference" in entry["flags"]
    assert report["summary"]["reinit"] == 2


def test_a_tensor_redrawn_then_shrunk_is_reported_as_written(tmp_path, monkeypatch):
    """Step 1 redraws a tensor, step 2 shrinks it, and `checksums: true`: the merged entry
    has the written tensor's shape, fans, var_gain and sha256 (it had step 1's shape and fans,
    and no sha256 for any tensor an earlier step changed, so verify --report skipped them)."""
    monkeypatch.chdir(tmp_path)
    _gpt2(tmp_path / "gpt2")
    fc, other = "transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.weight"
    Path("r.yaml").write_text(
        "source: gpt2\noutput: o.safetensors\nchecksums: true\nsteps:\n"
        f"  - rules: ['{fc}=normal(std=0.5)', '{other}=normal(std=0.5)']\n"
        f"  - resize: ['{fc}=[8,*]']\n"
        "    rules: ['transformer.ln_f.bias=ones']\n"
    )
    res = run("run", "r.yaml", "--json", "-q")
    assert res.exit_code == 0, res.output
    entries = {t["name"]: t for t in json.loads(res.stdout)["tensors"]}
    written = load_file("o.safetensors")
    fc_entry = entries[fc]
    assert fc_entry["shape"] == [8, 128] == list(written[fc].shape)
    assert (fc_entry["fan_in"], fc_entry["fan_out"]) == (128, 8)  # Conv1D [in, out]
    assert fc_entry["var_gain"] == pytest.approx(128 * fc_entry["after"]["std"] ** 2)
    assert all(t["sha256"] for t in entries.values())
    verified = run("verify", "o.safetensors", "--report", "o.report.json")
    assert verified.exit_code == 0, verified.output


def test_equal_to_source_is_not_kept_once_a_later_step_redraws_the_tensor(tmp_path, monkeypatch):
    """Step 1 copies two tensors from a donor, step 2 redraws one: only the untouched one
    still says `equal to source` (the redrawn one said it too, though its values were not)."""
    monkeypatch.chdir(tmp_path)
    _gpt2(tmp_path / "gpt2")
    a, b = "transformer.h.0.attn.c_proj.weight", "transformer.h.1.attn.c_proj.weight"
    save_file({a: torch.randn(32, 32), b: torch.randn(32, 32)}, "donor.safetensors")
    Path("r.yaml").write_text(
        "source: gpt2\noutput: o.safetensors\nsteps:\n"
        "  - rules: ['*.attn.c_proj.weight=from(donor.safetensors)']\n"
        f"  - rules: ['{b}=normal(std=0.02)']\n"
    )
    res = run("run", "r.yaml", "--json", "-q")
    assert res.exit_code == 0, res.output
    notes = {t["name"]: t["notes"] for t in json.loads(res.stdout)["tensors"]}
    assert notes[a] == ["equal to source", "changed by step 1"]
    assert notes[b] == ["changed by steps 1, 2"]
    assert torch.equal(load_file("o.safetensors")[a], load_file("donor.safetensors")[a])


def test_the_report_lists_what_every_step_dropped(tmp_path, monkeypatch):
    """A multi-step recipe's report said `"dropped": []` though its steps dropped tensors
    (the merged report left the steps' dropped names out)."""
    monkeypatch.chdir(tmp_path)
    _gpt2(tmp_path / "gpt2")
    Path("r.yaml").write_text(
        "source: gpt2\noutput: o.safetensors\nsteps:\n"
        "  - drop: ['transformer.h.1.ln_2.*']\n"
        "    rules: ['transformer.ln_f.bias=ones']\n"
        "  - drop: ['transformer.h.0.ln_2.weight']\n"
        "    rules: ['transformer.ln_f.weight=zeros']\n"
    )
    res = run("run", "r.yaml", "--json", "-q")
    assert res.exit_code == 0, res.output
    dropped = json.loads(res.stdout)["dropped"]
    assert dropped == [
        "transformer.h.1.ln_2.bias",
        "transformer.h.1.ln_2.weight",
        "transformer.h.0.ln_2.weight",
    ]
    assert not set(dropped) & set(load_file("o.safetensors"))


def test_a_sharded_folders_renamed_and_added_tensors_go_to_the_shards_a_chain_of_files_puts_them(
    tmp_path, monkeypatch
):
    # a renamed tensor stays in its own shard and an added one goes to the last, in a recipe's
    # later step as in an apply on a file: the recipe's folder is the chain's, byte for byte
    monkeypatch.chdir(tmp_path)
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained("llama", max_shard_size="100KB")
    index = json.loads(Path("llama/model.safetensors.index.json").read_text())["weight_map"]
    up = "model.layers.1.mlp.up_proj.weight"
    assert index[up] != index["model.embed_tokens.weight"]  # not in the first shard
    step1 = {"rename": [f"{up}=model.layers.1.mlp.upx.weight"], "add": ["extra.bias=[64]:ones"]}
    step2 = {"rules": ["*.gate_proj.weight=kaiming_normal"]}
    Path("r.json").write_text(
        json.dumps({"source": "llama", "output": "out/", "seed": 2, "steps": [step1, step2]})
    )
    res = run("run", "r.json", "-q")
    assert res.exit_code == 0, res.output
    reinit.apply("llama", [], "mid/", seed=2, **step1)
    reinit.apply("mid", step2["rules"], "chained/", seed=2)
    names = sorted(p.name for p in Path("chained").iterdir())
    assert sorted(p.name for p in Path("out").iterdir()) == names
    for name in names:
        if name != "reinit-report.json":
            assert Path("out", name).read_bytes() == Path("chained", name).read_bytes(), name
    placed = json.loads(Path("out/model.safetensors.index.json").read_text())["weight_map"]
    assert placed["model.layers.1.mlp.upx.weight"] == index[up]
    assert placed["extra.bias"] == sorted(set(index.values()))[-1]


def test_a_recipes_dtype_casts_once_the_written_output(tmp_path, monkeypatch):
    # output options act on the output: the earlier steps run in the source's dtypes, so the
    # recipe equals the chain that passes --dtype to its last apply only (a mean of rows
    # already rounded to bfloat16 would differ)
    monkeypatch.chdir(tmp_path)
    _small(tmp_path / "m.safetensors")
    step1 = {"rules": ["head.weight=kaiming_normal"], "resize": ["enc.0.weight=[9,*]"]}
    step2 = {"rules": ["enc.0.weight=mean_resize(old_rows=6)"], "seed": 3}
    Path("r.json").write_text(
        json.dumps({"source": "m.safetensors", "output": "out.safetensors", "dtype": "bfloat16",
                    "steps": [step1, step2]})
    )  # fmt: skip
    assert run("run", "r.json", "-q").exit_code == 0
    reinit.apply("m.safetensors", step1.pop("rules"), "mid.safetensors", **step1)
    rules = step2.pop("rules")
    reinit.apply("mid.safetensors", rules, "last.safetensors", dtype="bfloat16", **step2)
    assert Path("out.safetensors").read_bytes() == Path("last.safetensors").read_bytes()
    reinit.apply("m.safetensors", ["head.weight=kaiming_normal"], "mid16.safetensors",
                 resize=["enc.0.weight=[9,*]"], dtype="bfloat16")  # fmt: skip
    reinit.apply("mid16.safetensors", rules, "each.safetensors", dtype="bfloat16", **step2)
    assert load_file("out.safetensors")["enc.0.weight"].dtype == torch.bfloat16
    assert Path("each.safetensors").read_bytes() != Path("out.safetensors").read_bytes()
