"""--model: type: selectors, module fans and the `default` scheme, on a tiny transformers BERT
(saved with save_pretrained) and on a torchvision-style conv net (tests/models_for_tests.py,
named as module:callable).

Internal: also tests reinit.planning.model, reinit.planning.model_load, reinit.rules,
reinit.schemes directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hubcache import seed_repo
from safetensors.torch import load_file, save_file

import reinit
from reinit.cli import main
from reinit.errors import RuleError, UsageError
from reinit.planning.model_load import load_model
from reinit.rules import parse_pattern
from reinit.schemes import seed_for

HERE = Path(__file__).parent
CONV = "models_for_tests:convnet"


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bert") / "bert"
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


@pytest.fixture()
def conv_ckpt(tmp_path: Path) -> Path:
    import models_for_tests

    torch.manual_seed(1)
    net = models_for_tests.convnet()
    path = tmp_path / "conv.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def _actions(report: reinit.Report) -> dict[str, str]:
    return {e.name: e.action for e in report.tensors}


# --- patterns -----------------------------------------------------------------------------


def test_type_pattern_matches_by_owner_type_and_captures_from_glob() -> None:
    p = parse_pattern("type:Linear@encoder.*")
    assert p.match("encoder.layer.0.weight", ("Linear",)) == ("layer.0.weight",)
    assert p.match("encoder.layer.0.weight", ("NonDynamicallyQuantizableLinear", "Linear")) == (
        "layer.0.weight",
    )
    assert p.match("encoder.layer.0.weight", ("LayerNorm",)) is None
    assert p.match("decoder.layer.0.weight", ("Linear",)) is None
    assert p.match("encoder.layer.0.weight") is None  # no model, no type match
    alt = parse_pattern("type:Conv2d|ConvTranspose2d")
    assert alt.match("x.weight", ("ConvTranspose2d",)) == ()
    assert alt.has_wildcards
    with pytest.raises(RuleError, match="type:CLASS"):
        parse_pattern("type:@x")


def test_type_pattern_and_default_without_model_are_usage_errors(conv_ckpt: Path) -> None:
    runner = CliRunner()
    for rule in ("type:Linear=kaiming", "*.weight=default"):
        r = runner.invoke(main, ["apply", str(conv_ckpt), "--rule", rule, "--dry-run"])
        assert r.exit_code == 2, r.output
        assert "--model" in r.output and "Traceback" not in r.output


# --- the conv net (module:callable) ---------------------------------------------------------


def test_type_selectors_on_conv_net(conv_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    rep = reinit.apply(
        conv_ckpt,
        ["type:Conv2d=kaiming", "type:LayerNorm=zeros", "type:Linear@fc.bias=ones"],
        out,
        model=CONV,
    )
    acts = _actions(rep)
    assert acts["stem.weight"] == acts["grouped.weight"] == "reinit"
    assert acts["grouped.bias"] == "skipped"  # 1-D: kaiming cannot take it
    assert acts["up.weight"] == acts["up.bias"] == "kept"  # ConvTranspose2d is not Conv2d
    assert acts["norm.weight"] == acts["norm.bias"] == "reinit"
    assert acts["fc.bias"] == "reinit" and acts["fc.weight"] == "kept"
    assert acts["bn.weight"] == "kept"
    before, after = load_file(conv_ckpt), load_file(out)
    for name, action in acts.items():
        if action in ("kept", "skipped"):
            assert torch.equal(before[name], after[name]), name
    assert torch.equal(after["fc.bias"], torch.ones(10))
    assert torch.equal(after["norm.weight"], torch.zeros(6))


def test_module_fans_grouped_conv_and_conv_transpose(conv_ckpt: Path, tmp_path: Path) -> None:
    m = load_model(CONV)
    assert next(m.module.parameters()).device.type == "meta"
    # Conv2d(8, 16, 3, groups=4): weight (16, 2, 3, 3); fan_out counts only the group's outputs
    assert m.sites["grouped.weight"].fans == (2 * 9, 16 // 4 * 9)
    # ConvTranspose2d(16, 6, 2, groups=2): weight (16, 3, 2, 2) = (in, out/g, k, k)
    assert m.sites["up.weight"].fans == (16 // 2 * 4, 3 * 4)
    assert m.sites["fc.weight"].fans == (6, 10)

    out = tmp_path / "out.safetensors"
    rep = reinit.apply(conv_ckpt, ["up.weight=kaiming_normal"], out, model=CONV)
    e = rep.entry("up.weight")
    assert (e.fan_in, e.fan_out) == (32, 12)
    assert e.expected_std == pytest.approx(math.sqrt(2) / math.sqrt(32))
    assert "std_off" not in e.flags
    # the same draw as torch's (fan_in 12 from the shape), rescaled to the module's fan_in 32
    torch_draw = torch.nn.init.kaiming_normal_(
        torch.empty(16, 3, 2, 2), generator=torch.Generator().manual_seed(seed_for(0, "up.weight"))
    )
    assert torch.allclose(
        load_file(out)["up.weight"], torch_draw * math.sqrt(12 / 32), rtol=1e-6, atol=0
    )
    # without a model the report keeps torch's shape convention
    plain = reinit.apply(conv_ckpt, ["up.weight=kaiming_normal"], tmp_path / "plain.safetensors")
    assert (plain.entry("up.weight").fan_in, plain.entry("up.weight").fan_out) == (12, 64)


def test_default_on_conv_net_is_torch_reset_parameters_seeded_per_tensor(
    conv_ckpt: Path, tmp_path: Path
) -> None:
    rules = ["type:Conv2d|ConvTranspose2d|Linear|BatchNorm2d|LayerNorm=default"]
    out = tmp_path / "out.safetensors"
    rep = reinit.apply(conv_ckpt, rules, out, model=CONV, seed=7)
    acts = _actions(rep)
    assert acts["bn.num_batches_tracked"] == "skipped"  # integer buffer
    assert all(a == "reinit" for n, a in acts.items() if n != "bn.num_batches_tracked")
    got = load_file(out)
    with torch.random.fork_rng():
        torch.manual_seed(seed_for(7, "fc.weight"))
        fc = torch.nn.Linear(6, 10)
    assert torch.equal(got["fc.weight"], fc.weight.detach())
    with torch.random.fork_rng():
        torch.manual_seed(seed_for(7, "up.weight"))
        up = torch.nn.ConvTranspose2d(16, 6, kernel_size=2, stride=2, groups=2)
    assert torch.equal(got["up.weight"], up.weight.detach())
    assert torch.equal(got["bn.running_var"], torch.ones(8))
    assert torch.equal(got["bn.running_mean"], torch.zeros(8))
    # reproducible from seed and name; another seed gives other values
    again = tmp_path / "again.safetensors"
    reinit.apply(conv_ckpt, rules, again, model=CONV, seed=7)
    assert out.read_bytes() == again.read_bytes()
    other = tmp_path / "other.safetensors"
    reinit.apply(conv_ckpt, rules, other, model=CONV, seed=8)
    assert not torch.equal(load_file(other)["fc.weight"], got["fc.weight"])


def test_default_with_a_tensor_the_model_lacks(conv_ckpt: Path, tmp_path: Path) -> None:
    state = load_file(conv_ckpt)
    state["extra.weight"] = torch.zeros(3, 3)
    path = tmp_path / "extra.safetensors"
    save_file(state, path)
    p = reinit.plan(path, ["*.weight=default"], model=CONV)
    entry = next(e for e in p.entries if e.name == "extra.weight")
    assert entry.action == "skipped" and "not a parameter" in (entry.reason or "")
    with pytest.raises(RuleError, match="extra.weight"):
        reinit.plan(path, ["extra.weight=default"], model=CONV)


def test_unknown_type_lists_the_model_types(conv_ckpt: Path) -> None:
    r = CliRunner().invoke(
        main,
        ["apply", str(conv_ckpt), "--model", CONV, "--rule", "type:Linaer=kaiming", "--dry-run"],
    )
    assert r.exit_code == 2
    assert "did you mean Linear" in r.output and "Conv2d" in r.output


def test_model_spec_errors(conv_ckpt: Path, tmp_path: Path, bert_dir: Path) -> None:
    with pytest.raises(UsageError, match="cannot import"):
        load_model("no_such_module_xyz:net")
    with pytest.raises(UsageError, match="has no 'nothing'"):
        load_model("models_for_tests:nothing")
    with pytest.raises(UsageError, match="no config.json"):
        load_model(str(tmp_path))
    r = CliRunner().invoke(
        main,
        [
            "apply",
            str(conv_ckpt),
            "--model",
            str(bert_dir),
            "-r",
            "type:Linear=default",
            "--dry-run",
        ],
    )
    assert r.exit_code == 2
    assert "no checkpoint tensor name matches" in r.output and "bn.bias" in r.output


# --- transformers ---------------------------------------------------------------------------


def test_hf_skeleton_is_on_meta_and_types_come_from_modules(bert_dir: Path) -> None:
    m = load_model(bert_dir)
    assert type(m.module).__name__ == "BertForSequenceClassification"  # from architectures
    assert all(p.device.type == "meta" for p in m.module.parameters())
    assert m.sites["bert.encoder.layer.0.attention.self.query.weight"].types == ("Linear",)
    assert m.sites["bert.embeddings.word_embeddings.weight"].types == ("Embedding",)
    assert m.sites["bert.embeddings.LayerNorm.weight"].types == ("LayerNorm",)


def test_type_selectors_and_default_on_bert(bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rules = [
        "type:Linear@bert.encoder.*=default",
        "type:LayerNorm=default",
        "type:Embedding=default",
    ]
    rep = reinit.apply(bert_dir, rules, out, model=bert_dir, seed=3)
    acts = _actions(rep)
    assert acts["classifier.weight"] == "kept"  # a Linear outside bert.encoder
    assert acts["bert.pooler.dense.weight"] == "kept"
    assert acts["bert.encoder.layer.1.output.dense.weight"] == "reinit"
    assert acts["bert.embeddings.word_embeddings.weight"] == "reinit"
    assert acts["bert.encoder.layer.0.output.LayerNorm.weight"] == "reinit"

    got = reinit.open_checkpoint(out)
    # BertPreTrainedModel._init_weights: Linear N(0, 0.02) with zero bias, LayerNorm 1/0,
    # Embedding N(0, 0.02) with the padding row zeroed; seeded from seed_for(seed, name)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    with torch.random.fork_rng():
        torch.manual_seed(seed_for(3, name))
        lin = torch.nn.Linear(32, 32)
        torch.nn.init.normal_(lin.weight, 0.0, 0.02)
    assert torch.equal(got.read(name), lin.weight.detach())
    assert torch.equal(got.read("bert.encoder.layer.0.attention.self.query.bias"), torch.zeros(32))
    assert torch.equal(got.read("bert.embeddings.LayerNorm.weight"), torch.ones(32))
    emb = got.read("bert.embeddings.word_embeddings.weight")
    assert torch.equal(emb[0], torch.zeros(32))  # pad_token_id = 0
    rest = emb[1:].double()
    n = rest.numel()  # 98*32 = 3136 normals: std's relative sampling error ≈ 1/sqrt(2n) ≈ 1.3%
    assert abs(float(rest.std()) / 0.02 - 1) < 5 / math.sqrt(2 * n)
    # the model's config travels with the output directory, and transformers loads it
    from transformers import BertForSequenceClassification

    loaded = BertForSequenceClassification.from_pretrained(out)
    assert torch.equal(
        loaded.bert.encoder.layer[0].attention.self.query.weight.detach(), got.read(name)
    )


def test_base_checkpoint_aligns_with_prefixed_model(bert_dir: Path, tmp_path: Path) -> None:
    """A BertModel checkpoint (no `bert.` prefix) against the BertForSequenceClassification
    config: names line up through base_model_prefix."""
    from transformers import BertConfig, BertModel

    base = tmp_path / "base"
    BertModel(BertConfig.from_pretrained(bert_dir), add_pooling_layer=True).save_pretrained(base)
    p = reinit.plan(base, ["type:Linear=default"], model=bert_dir)
    acts = {e.name: e.action for e in p.entries}
    assert acts["encoder.layer.0.attention.self.query.weight"] == "reinit"
    assert acts["embeddings.word_embeddings.weight"] == "kept"


def test_cli_apply_with_model_json(bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main,
        [
            "apply",
            str(bert_dir),
            "--model",
            str(bert_dir),
            "-r",
            "type:Linear@classifier.*=default",
            "-o",
            str(out),
            "--json",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    changed = {t["name"]: t for t in data["tensors"] if t["action"] == "reinit"}
    assert set(changed) == {"classifier.weight", "classifier.bias"}
    assert changed["classifier.weight"]["scheme"] == (
        "default (BertForSequenceClassification._init_weights on Linear: normal(std=0.02))"
    )
    assert changed["classifier.weight"]["expected_std"] == 0.02
    assert changed["classifier.weight"]["fan_in"] == 32


def test_model_from_hub_cache_offline(bert_dir: Path, offline: Path) -> None:
    """`--model hf://...` fetches only config.json (here from a seeded offline cache)."""
    seed_repo(
        offline, "acme/tiny-bert-cls", {"config.json": (bert_dir / "config.json").read_bytes()}
    )
    m = load_model("hf://acme/tiny-bert-cls")
    assert type(m.module).__name__ == "BertForSequenceClassification"
    p = reinit.plan(bert_dir, ["type:Linear@classifier.*=default"], model="hf://acme/tiny-bert-cls")
    assert {e.name for e in p.entries if e.action == "reinit"} == {
        "classifier.weight",
        "classifier.bias",
    }


def test_default_refuses_a_model_of_another_shape(conv_ckpt: Path, tmp_path: Path) -> None:
    """The checkpoint's head has 10 classes; a 5-class model cannot give it its own init."""
    five = "models_for_tests:convnet(num_classes=5)"
    p = reinit.plan(conv_ckpt, ["type:Linear=default"], model=five)
    fc = {e.name: e for e in p.entries if e.name.startswith("fc.")}
    assert all(e.action == "skipped" for e in fc.values())
    assert "[5, 6]" in (fc["fc.weight"].reason or "") and "[10, 6]" in (
        fc["fc.weight"].reason or ""
    )
    with pytest.raises(RuleError, match="fc.weight"):
        reinit.plan(conv_ckpt, ["fc.weight=default"], model=five)
    with pytest.raises(UsageError, match="--strict"):
        reinit.plan(conv_ckpt, ["type:Linear=default"], model=five, strict=True)
    rep = reinit.apply(conv_ckpt, ["type:Linear=default"], tmp_path / "o.safetensors", model=five)
    assert rep.entry("fc.weight").action == "skipped"
    assert rep.entry("fc.weight").fan_out == 10  # torch's fans from the shape, not the model's


def test_module_fans_hf_conv1d_and_plain_layers() -> None:
    from transformers.pytorch_utils import Conv1D

    from reinit.planning.model import module_fans

    # GPT-2's Conv1D(nf=12, nx=4) stores its weight as (in, out) = (4, 12)
    assert module_fans(Conv1D(12, 4), "weight", (4, 12)) == (4, 12)
    assert module_fans(torch.nn.Linear(4, 12), "weight", (12, 4)) == (4, 12)
    assert module_fans(torch.nn.Embedding(7, 3), "weight", (7, 3)) == (3, 7)  # torch's convention
    assert module_fans(torch.nn.Linear(4, 12), "bias", (12,)) is None
