"""Issue 24 items 1 and 4: `reinit new CONFIG -o OUT` writes the checkpoint the model would
have (save_pretrained's names, ties and layout; config.json beside), every tensor drawn by the
architecture's own init unless a rule says otherwise; depth up-scaling and a new head from a
config alone. Tiny Llama, BERT-MLM (tied), ViT and GPT-2 built from their configs.

Internal: imports reinit.planning.ckpt_names (the memory available that the name trace is
checked against, made small to stand for a small machine)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from helpers import load_clean, refused, run
from safetensors import safe_open
from safetensors.torch import load_file

import reinit

transformers = pytest.importorskip("transformers")


def _configs() -> dict[str, object]:
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return {
        "llama": transformers.LlamaConfig(
            **small, num_key_value_heads=1, vocab_size=128, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
            architectures=["LlamaForCausalLM"],
        ),
        "bert": transformers.BertConfig(
            **small, vocab_size=100, max_position_embeddings=64,
            architectures=["BertForMaskedLM"],
        ),
        "vit": transformers.ViTConfig(
            **small, image_size=32, patch_size=8, num_labels=5,
            architectures=["ViTForImageClassification"],
        ),
        "gpt2": transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64,
            bos_token_id=99, eos_token_id=99, architectures=["GPT2LMHeadModel"],
        ),
    }  # fmt: skip


def _config_dir(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / f"{kind}-config"
    _configs()[kind].save_pretrained(folder)
    return folder


def _cls(kind: str):
    return getattr(transformers, _configs()[kind].architectures[0])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _new(*args: object) -> None:
    res = run("new", *args, "-q")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("kind", ["llama", "bert", "vit", "gpt2"])
def test_new_loads_clean_with_save_pretrained_names(tmp_path, kind):
    cfg = _config_dir(tmp_path, kind)
    out = tmp_path / "out"
    _new(cfg, "-o", out)
    model = load_clean(_cls(kind), out)
    # the names and shapes save_pretrained writes for this model (ties stored once)
    ref = tmp_path / "ref"
    _cls(kind)(_configs()[kind]).save_pretrained(ref)
    with (
        safe_open(ref / "model.safetensors", "pt") as want,
        safe_open(out / "model.safetensors", "pt") as got,
    ):
        assert sorted(got.keys()) == sorted(want.keys())
        assert got.metadata()["format"] == "pt"
        for k in want.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
            assert got.get_slice(k).get_shape() == want.get_slice(k).get_shape(), k
    # what was loaded is what was written: saved again, the same tensors
    model.save_pretrained(tmp_path / "again")
    written, again = _weights(out), _weights(tmp_path / "again")
    assert written.keys() == again.keys()
    assert all(torch.equal(again[n], t) for n, t in written.items())
    report = json.loads((out / "reinit-report.json").read_text())
    assert report["rules"][0] == "*=default"
    assert {e["action"] for e in report["tensors"]} == {"reinit"}
    assert all(e["before"] is None for e in report["tensors"])


def _sampling_bound(std: float, n: int) -> float:
    """Five standard errors of a sample std of n normal draws (se = std / sqrt(2n))."""
    return 5 * std / math.sqrt(2 * n)


@pytest.mark.parametrize("kind", ["llama", "bert", "vit"])
def test_weights_at_the_architectures_init(tmp_path, kind):
    """Every >=2-D weight drawn from normal(0, initializer_range) (ViT: trunc_normal with bounds
    at +-2, 100 sigma away: the same std), norms at one, biases at zero."""
    out = tmp_path / "out"
    _new(_config_dir(tmp_path, kind), "-o", out, "--seed", "7")
    sigma = _configs()[kind].initializer_range
    checked = 0
    for name, t in _weights(out).items():
        if name.endswith("position_embeddings") and kind == "vit":
            pass
        elif t.dim() < 2 and "cls_token" not in name:
            if "norm" in name.lower() and name.endswith("weight"):
                assert torch.equal(t, torch.ones_like(t)), name
            else:
                assert torch.equal(t, torch.zeros_like(t)), name
            continue
        std = t.double().std(correction=0).item()
        padded = (t == 0).all(dim=-1).sum().item() if t.dim() == 2 else 0
        n = t.numel()
        assert abs(std - sigma) < _sampling_bound(sigma, n) + sigma * padded / t.shape[0], name
        checked += 1
    assert checked >= 9


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = _config_dir(tmp_path, "llama")
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        _new(cfg, "-o", tmp_path / name, "--seed", seed)
    a, b, c = ((tmp_path / n / "model.safetensors").read_bytes() for n in "abc")
    assert a == b
    assert a != c
    wa, wc = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "c" / "model.safetensors"),
    )
    assert all(not torch.equal(wa[n], wc[n]) for n in wa if wa[n].std() > 0)


@pytest.mark.parametrize("kind", ["llama", "bert", "vit", "gpt2"])
def test_new_equals_apply_default_on_a_checkpoint_of_the_model(tmp_path, kind):
    cfg = _config_dir(tmp_path, kind)
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    _cls(kind)(_configs()[kind]).save_pretrained(ckpt)
    res = run("apply", ckpt, "--model", cfg, "-r", "*=default", "--seed", "4", "-o",
              tmp_path / "applied", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    _new(cfg, "-o", tmp_path / "new", "--seed", "4")
    applied, made = _weights(tmp_path / "applied"), _weights(tmp_path / "new")
    assert applied.keys() == made.keys()
    for n in applied:
        assert applied[n].dtype == made[n].dtype
        assert torch.equal(applied[n], made[n]), n


def test_dtype_from_the_config_and_dtype_overrides(tmp_path):
    config = _configs()["llama"]
    config.dtype = "bfloat16"
    config.save_pretrained(tmp_path / "cfg")
    _new(tmp_path / "cfg", "-o", tmp_path / "bf16")
    _new(tmp_path / "cfg", "-o", tmp_path / "fp16", "--dtype", "float16")
    bf16, fp16 = _weights(tmp_path / "bf16"), _weights(tmp_path / "fp16")
    assert {t.dtype for t in bf16.values()} == {torch.bfloat16}
    assert {t.dtype for t in fp16.values()} == {torch.float16}
    assert json.loads((tmp_path / "fp16" / "config.json").read_text())["dtype"] == "float16"
    model = load_clean(transformers.LlamaForCausalLM, tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    # the same draws, cast: bf16 is the float32 values rounded
    _new(tmp_path / "cfg", "-o", tmp_path / "fp32", "--dtype", "float32")
    fp32 = _weights(tmp_path / "fp32")
    assert all(torch.equal(fp32[n].to(torch.bfloat16), bf16[n]) for n in fp32)


@pytest.mark.parametrize("dtype", ["complex64", "int8"])
def test_a_config_dtype_that_is_not_floating_is_refused_and_dtype_overrides(tmp_path, dtype):
    """A config whose dtype no model's weights are drawn in was written as float32 with exit 0
    (its config.json then saying float32 too): refused, exit 2, naming it and --dtype; with
    --dtype the output is that dtype and loads."""
    cfg = tmp_path / "cfg"
    config = _configs()["vit"]
    config.save_pretrained(cfg)
    data = json.loads((cfg / "config.json").read_text())
    data["dtype"] = dtype
    (cfg / "config.json").write_text(json.dumps(data))
    refused(
        tmp_path, ["new", cfg, "-o", tmp_path / "out/"], 2, f"config's dtype is {dtype}",
        "--dtype float32",
    )  # fmt: skip
    with pytest.raises(reinit.UsageError, match=f"dtype is {dtype}"):
        reinit.new(cfg, tmp_path / "api/")
    _new(cfg, "-o", tmp_path / "out", "--dtype", "bfloat16")
    assert {t.dtype for t in _weights(tmp_path / "out").values()} == {torch.bfloat16}
    assert load_clean(_cls("vit"), tmp_path / "out").dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_sharded_like_save_pretrained(tmp_path, kind):
    cfg = _config_dir(tmp_path, kind)
    _new(cfg, "-o", tmp_path / "out", "--max-shard-size", "40KB")
    ref = tmp_path / "ref"
    _cls(kind)(_configs()[kind]).save_pretrained(ref, max_shard_size="40KB")
    index = "model.safetensors.index.json"
    got = json.loads((tmp_path / "out" / index).read_text())
    want = json.loads((ref / index).read_text())
    assert got["weight_map"] == want["weight_map"]
    assert got["metadata"] == want["metadata"]
    assert len(set(got["weight_map"].values())) == 3
    load_clean(_cls(kind), tmp_path / "out")


def test_rules_override_default_and_the_api(tmp_path):
    cfg = _config_dir(tmp_path, "llama")
    report = reinit.new(
        cfg,
        tmp_path / "out",
        ["*.mlp.down_proj.weight=zeros", "model.norm.weight=keep"],
        seed=3,
        progress=False,
    )
    w = _weights(tmp_path / "out")
    assert all(torch.equal(w[n], torch.zeros_like(w[n])) for n in w if "down_proj" in n)
    _new(cfg, "-o", tmp_path / "plain", "--seed", "3")
    plain = _weights(tmp_path / "plain")  # other tensors do not move with the rules
    assert all(torch.equal(w[n], plain[n]) for n in w if "down_proj" not in n)
    by = {e.name: e for e in report.tensors}
    assert by["model.layers.0.mlp.down_proj.weight"].scheme == "zeros"
    assert by["model.norm.weight"].action == "kept"


def test_module_callable(tmp_path):
    _new("tests.models_for_tests:mlp(depth=3, width=8, inputs=4)", "-o", tmp_path / "m.safetensors")
    w = load_file(tmp_path / "m.safetensors")
    from tests.models_for_tests import mlp

    want = mlp(depth=3, width=8, inputs=4).state_dict()
    assert {n: t.shape for n, t in w.items()} == {n: t.shape for n, t in want.items()}
    bound = 1 / math.sqrt(
        8
    )  # Linear.reset_parameters: kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in))
    assert w["2.weight"].abs().max() <= bound and w["2.weight"].abs().max() > 0.9 * bound


def test_dry_run_writes_nothing(tmp_path):
    cfg = _config_dir(tmp_path, "bert")
    res = run("new", cfg, "-o", tmp_path / "out", "--dry-run", "--all")
    assert res.exit_code == 0, res.output
    assert "cls.predictions.transform.dense.weight" in res.output
    assert not (tmp_path / "out").exists()


# --- item 4: depth up-scaling and a new head, from a config alone ---------------------------


def _llama_config(layers: int) -> object:
    return transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
        bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"],
    )  # fmt: skip


def test_depth_up_scaling_from_a_config(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(_llama_config(6)).save_pretrained(tmp_path / "llama-6")
    _llama_config(9).save_pretrained(tmp_path / "llama-9-config")
    # SOLAR at 6 -> 9: layers 0-4 from 0-4, layers 5-8 from 2-5 (shift by 3)
    _new(
        tmp_path / "llama-9-config", "-o", tmp_path / "llama-9-up",
        "--rule", f"*=from({tmp_path / 'llama-6'})",
        "--rule", f"re:model\\.layers\\.([5-8])\\.(.*)=from({tmp_path / 'llama-6'}, "
        "key=model.layers.{1-3}.{2})",
    )  # fmt: skip
    src, up = _weights(tmp_path / "llama-6"), _weights(tmp_path / "llama-9-up")
    for name, t in up.items():
        parts = name.split(".")
        if parts[1] == "layers" and int(parts[2]) >= 5:
            parts[2] = str(int(parts[2]) - 3)
        assert torch.equal(t, src[".".join(parts)]), name
    model = load_clean(transformers.LlamaForCausalLM, tmp_path / "llama-9-up")
    assert model.config.num_hidden_layers == 9


def test_new_head_classifier_from_a_pretrained_body(tmp_path):
    body = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=24, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**body)).save_pretrained(tmp_path / "bert-base")
    clf = transformers.BertConfig(
        **body, num_labels=4, architectures=["BertForSequenceClassification"]
    )
    clf.save_pretrained(tmp_path / "clf-config")
    _new(tmp_path / "clf-config", "-o", tmp_path / "clf",
         "--rule", f"bert.*=from({tmp_path / 'bert-base'}, key={{1}})")  # fmt: skip
    src, out = _weights(tmp_path / "bert-base"), _weights(tmp_path / "clf")
    assert all(torch.equal(out[f"bert.{n}"], t) for n, t in src.items())
    assert out["classifier.weight"].shape == (4, 16)
    assert torch.equal(out["classifier.bias"], torch.zeros(4))
    model = load_clean(transformers.BertForSequenceClassification, tmp_path / "clf")
    assert model.config.num_labels == 4


# --- every failure a user can hit: exit 2, one line, nothing written -------------------------


def test_unknown_architecture_is_exit_2(tmp_path):
    doc = json.loads((_config_dir(tmp_path, "llama") / "config.json").read_text())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(
        json.dumps({**doc, "architectures": ["NoSuchForCausalLM"]})
    )
    refused(tmp_path, ["new", str(tmp_path / "bad"), "-o", str(tmp_path / "out")], 2,
            "NoSuchForCausalLM")  # fmt: skip
    # a string, not a list: was "has no architecture 'L'" (its first letter)
    (tmp_path / "bad" / "config.json").write_text(
        json.dumps({**doc, "architectures": "LlamaForCausalLM"})
    )
    refused(tmp_path, ["new", str(tmp_path / "bad"), "-o", str(tmp_path / "out")], 2,
            "architectures is a string", '["LlamaForCausalLM"]')  # fmt: skip


def test_remote_code_is_exit_2(tmp_path):
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "config.json").write_text(
        json.dumps({
            "model_type": "my-custom-arch",
            "architectures": ["MyCustomModel"],
            "auto_map": {"AutoModel": "modeling_custom.MyCustomModel"},
        })
    )  # fmt: skip
    refused(tmp_path, ["new", str(tmp_path / "remote"), "-o", str(tmp_path / "out")], 2,
            "auto_map", "never runs code")  # fmt: skip


def test_rule_naming_no_tensor_is_exit_2(tmp_path):
    cfg = _config_dir(tmp_path, "llama")
    refused(tmp_path, ["new", str(cfg), "-o", str(tmp_path / "out"), "-r", "encoder.*=zeros"],
            2, "encoder.*")  # fmt: skip


def test_a_rule_naming_a_tied_copy_says_where_it_is_stored(tmp_path):
    """A tied Llama's `lm_head.weight` is a tensor of the model that the checkpoint stores once,
    under `model.embed_tokens.weight`: the refusal says so instead of listing close names."""
    cfg = _config_dir(tmp_path, "llama")
    refused(tmp_path, ["new", str(cfg), "-o", str(tmp_path / "out"), "-r", "lm_head.weight=zeros"],
            2, "'lm_head.weight' is tied to 'model.embed_tokens.weight'")  # fmt: skip
    gpt2 = _config_dir(tmp_path, "gpt2")
    refused(tmp_path, ["new", str(gpt2), "-o", str(tmp_path / "out"), "-r", "lm_head.*=zeros"],
            2, "'lm_head.weight' is tied to 'transformer.wte.weight'")  # fmt: skip


def test_from_source_of_the_wrong_shape_is_exit_2(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(_llama_config(2)).save_pretrained(tmp_path / "small")
    cfg = _config_dir(tmp_path, "llama")  # hidden 32, the source's 16
    refused(tmp_path, ["new", str(cfg), "-o", str(tmp_path / "out"), "-r",
                       f"model.layers.*=from({tmp_path / 'small'})"], 2, "shape")  # fmt: skip


def test_existing_output_is_refused(tmp_path):
    cfg = _config_dir(tmp_path, "bert")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    refused(tmp_path, ["new", str(cfg), "-o", str(tmp_path / "out")], 2, "out")


# --- recipes: `new: CONFIG` in place of `source:` -------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_recipe_new_equals_the_command(tmp_path, steps):
    cfg = _config_dir(tmp_path, "llama")
    rules = ["*.mlp.down_proj.weight=zeros", "model.norm.weight=normal(std=0.5)"]
    _new(cfg, "-o", tmp_path / "cmd", "--seed", "3", *(a for r in rules for a in ("-r", r)))
    if steps == 1:
        body = "rules:\n" + "".join(f"  - '{r}'\n" for r in rules)
    else:
        body = "steps:\n" + "".join(f"  - rules: ['{r}']\n" for r in rules)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"new: {cfg}\noutput: {tmp_path / 'rec'}\nseed: 3\n{body}")
    res = run("run", recipe, "-q")
    assert res.exit_code == 0, res.output
    cmd, rec = _weights(tmp_path / "cmd"), _weights(tmp_path / "rec")
    assert cmd.keys() == rec.keys()
    assert all(torch.equal(cmd[n], rec[n]) for n in cmd)
    load_clean(transformers.LlamaForCausalLM, tmp_path / "rec")
    dry = run("run", recipe, "--dry-run")
    assert dry.exit_code == 0, dry.output


def test_recipe_needs_source_or_new(tmp_path):
    cfg = _config_dir(tmp_path, "llama")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"new: {cfg}\nsource: {cfg}\nrules: ['*=zeros']\n")
    refused(tmp_path, ["run", str(recipe)], 2, "one of them")


def test_hf_url_needs_only_the_config(tmp_path, offline):
    """`reinit new hf://OWNER/NAME` reads config.json alone (here the only file the cached
    repo has) and writes the model it describes."""
    from hubcache import seed_repo

    cfg = _config_dir(tmp_path, "bert")
    seed_repo(offline, "acme/bert-mlm", {"config.json": (cfg / "config.json").read_bytes()})
    _new("hf://acme/bert-mlm", "-o", tmp_path / "out", "--seed", "2")
    _new(cfg, "-o", tmp_path / "local", "--seed", "2")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        tmp_path / "local" / "model.safetensors"
    ).read_bytes()
    load_clean(transformers.BertForMaskedLM, tmp_path / "out")


def test_options_new_cannot_honour_are_refused(tmp_path):
    cfg = _config_dir(tmp_path, "llama")
    with pytest.raises(TypeError, match="labels"):  # not a keyword of new()
        reinit.new(cfg, tmp_path / "out", labels="a,b", progress=False)
    # an options object may carry any field: one new cannot honour is refused, not ignored
    options = reinit.ApplyOptions(labels="a,b", progress=False)
    with pytest.raises(reinit.UsageError, match="labels does not apply"):
        reinit.new(cfg, tmp_path / "out", options=options)
    assert not (tmp_path / "out").exists()


def _parent_init_configs() -> dict[str, object]:
    return {
        "gpt2": transformers.GPT2Config(
            n_embd=64, n_layer=8, n_head=2, vocab_size=100, n_positions=64,
            bos_token_id=99, eos_token_id=99, architectures=["GPT2LMHeadModel"],
        ),
        "t5": transformers.T5Config(
            d_model=64, d_ff=128, num_layers=2, num_heads=2, d_kv=32, vocab_size=100,
            architectures=["T5ForConditionalGeneration"],
        ),
        "llava": transformers.LlavaConfig(
            text_config=dict(
                model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, vocab_size=128,
            ),
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=64, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=128, image_size=32, patch_size=8,
            ),
            image_token_index=5, architectures=["LlavaForConditionalGeneration"],
        ),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["gpt2", "t5", "llava"])
def test_inits_a_parent_module_runs_on_its_children(tmp_path, kind):
    """transformers runs `_init_weights` on a block after its children, and some blocks draw
    their children's tensors again: GPT-2's attention and MLP their `c_proj.weight` with std
    initializer_range / sqrt(2 n_layer), T5's attention and feed-forward blocks every Linear
    (d_model^-0.5 ...; torch's reset_parameters alone gives std 1 there, 8x too big). Every
    tensor of `reinit new` must have the std and mean `from_config` gives it (within sampling
    error), and the report name the init that ran and its std. A composite model (Llava) inits
    each sub-model's modules with that sub-model's own `_init_weights` (transformers'
    `smart_apply`): its CLIP vision tower's Linears at CLIP's scales (0.088 to 0.125 here), not
    Llava's 0.02, and CLIP's `class_embedding`, which Llava's init leaves, set."""
    cfg = _parent_init_configs()[kind]
    cfg.save_pretrained(tmp_path / "cfg")
    out = tmp_path / "out"
    _new(tmp_path / "cfg", "-o", out, "--seed", "3")
    torch.manual_seed(0)
    model = getattr(transformers, cfg.architectures[0])(cfg)
    ref = model.state_dict()
    # by the module's names (a composite model's checkpoint names are save_pretrained's)
    made = load_clean(type(model), out).state_dict()
    for name, t in made.items():
        want, got = ref[name].double(), t.double()
        if want.std() == 0:
            assert torch.equal(got, want), name
            continue
        s_want, s_got = want.std(correction=0).item(), got.std(correction=0).item()
        assert abs(s_got - s_want) < math.sqrt(2) * _sampling_bound(s_want, t.numel()), name
        assert abs(got.mean() - want.mean()).item() < 7 * s_want / math.sqrt(t.numel()), name
    if kind == "llava":
        entries = json.loads((out / "reinit-report.json").read_text())["tensors"]
        fc1 = next(
            e for e in entries if e["name"].endswith("vision_tower.encoder.layers.0.mlp.fc1.weight")
        )
        assert fc1["scheme"].startswith("default (CLIPVisionModel._init_weights"), fc1
        assert fc1["expected_std"] == pytest.approx(128**-0.5), fc1
    if kind != "gpt2":
        return
    scaled = cfg.initializer_range / math.sqrt(2 * cfg.n_layer)
    entries = json.loads((out / "reinit-report.json").read_text())["tensors"]
    by_name = {e["name"]: e for e in entries}
    for name in ("transformer.h.0.attn.c_proj.weight", "transformer.h.7.mlp.c_proj.weight"):
        assert by_name[name]["expected_std"] == pytest.approx(scaled), by_name[name]
        assert "on GPT2" in by_name[name]["scheme"], by_name[name]["scheme"]


def test_a_config_with_a_zero_width_writes_what_save_pretrained_writes(tmp_path):
    """A zero-element tensor (`intermediate_size: 0`) has no coordinates to trace through the
    save path; it was an internal error (`min(): Expected reduction dim`). It is written as
    save_pretrained writes it: every name, its empty shape."""
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=0,
        vocab_size=64, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    cfg.save_pretrained(tmp_path / "cfg")
    res = run("new", tmp_path / "cfg", "-o", tmp_path / "out", "-q")
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "Initializing zero-element tensors is a no-op"
        model = transformers.LlamaForCausalLM(cfg)
        model.save_pretrained(tmp_path / "ref")
    got, want = _weights(tmp_path / "out"), _weights(tmp_path / "ref")
    assert {n: t.shape for n, t in got.items()} == {n: t.shape for n, t in want.items()}
    assert got["model.layers.0.mlp.up_proj.weight"].shape == (0, 32)


def test_a_config_with_an_infinite_float_is_read_as_transformers_reads_it(tmp_path):
    """transformers writes an infinite float of a config as `{"__float__": "Infinity"}`
    (Mamba2's default `time_step_limit` is `(0.0, inf)`) and decodes it when it reads the file;
    reinit passed the tag through, so every Mamba2 config was refused ("transformers cannot
    read ... time_step_limit")."""
    cfg = transformers.Mamba2Config(
        hidden_size=32, num_hidden_layers=2, vocab_size=100, state_size=8, head_dim=16,
        num_heads=4, n_groups=1, expand=2, architectures=["Mamba2ForCausalLM"],
    )  # fmt: skip
    cfg.save_pretrained(tmp_path / "cfg")
    assert '"__float__": "Infinity"' in (tmp_path / "cfg" / "config.json").read_text()
    _new(tmp_path / "cfg", "-o", tmp_path / "out")
    model = load_clean(transformers.Mamba2ForCausalLM, tmp_path / "out")
    assert list(model.config.time_step_limit) == [0.0, float("inf")]


def test_a_dimension_too_long_to_trace_is_refused_before_any_allocation(tmp_path, monkeypatch):
    """The checkpoint names come from transformers' save path run on coordinate tensors, one
    int64 per index of each dimension. A config with `n_positions: 10**9` made that 8 GB per
    copy: the process grew to 23 GB and was killed by the kernel (even `--dry-run`, which
    draws nothing). Now the trace's bytes are counted first and a model whose trace does not
    fit is refused, exit 2, naming the tensor. Here a machine with 100 MB free is simulated
    and `n_positions: 10**7` (a 320 MB trace; old code: exit 0, the memory used)."""
    from reinit.planning import ckpt_names

    monkeypatch.setattr(ckpt_names, "available_memory", lambda: 10**8)
    cfg = transformers.GPT2Config(
        n_embd=8, n_layer=1, n_head=2, vocab_size=100, n_positions=10**7,
        architectures=["GPT2LMHeadModel"],
    )  # fmt: skip
    cfg.save_pretrained(tmp_path / "cfg")
    res = run("new", tmp_path / "cfg", "-o", tmp_path / "out", "--dry-run")
    assert res.exit_code == 2, res.output
    assert "'transformer.wpe.weight' [10000000, 8]" in res.stderr, res.stderr
    assert "more than the 100,000,000 bytes of memory available" in res.stderr, res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_new_into_its_own_config_folder_says_what_works_not_in_place(tmp_path):
    """`reinit new FOLDER -o FOLDER/` was refused with "pass --in-place", a flag `new` does
    not take (it answered "No such option"). The refusal names what works, and that works."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
               vocab_size=20).save_pretrained(folder)  # fmt: skip
    for out in (f"{folder}/", f"{folder}/sub/"):
        line = refused(tmp_path, ["new", str(folder), "-o", out], 2, "model folder")
        assert "--in-place" not in line
        assert f"reinit new {folder}/config.json -o {folder}/model.safetensors" in line
    res = run("new", folder / "config.json", "-o", folder / "model.safetensors", "-q")
    assert res.exit_code == 0, res.output
    load_clean(BertModel, folder)
