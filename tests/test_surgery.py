"""--add / --drop / --rename: parsing, the edited tensor list, and end to end through apply.

Internal: also tests reinit.io.checkpoint, reinit.planning.surgery, reinit.schemes directly (not
the `reinit` API).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import refused, run
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import reinit
from reinit.errors import RuleError
from reinit.io.checkpoint import TensorRef
from reinit.planning.surgery import Surgery, edit_refs, parse_add, parse_drop, parse_rename
from reinit.schemes import seed_for


def st(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def torch_normal(shape, std: float, seed: int, name: str) -> torch.Tensor:
    """What docs/guide/rules-and-schemes.md promises: the plain torch call with the tensor's own generator."""
    t = torch.empty(shape)
    torch.nn.init.normal_(
        t, 0.0, std, generator=torch.Generator().manual_seed(seed_for(seed, name))
    )
    return t


@pytest.fixture
def model(tmp_path):
    tensors = {
        "encoder.0.weight": randn(8, 8, seed=1),
        "encoder.0.bias": randn(8, seed=2),
        "encoder.1.weight": randn(8, 8, seed=3),
        "classifier.weight": randn(3, 8, seed=4),
        "classifier.bias": randn(3, seed=5),
    }
    return st(tmp_path / "m.safetensors", tensors), tensors


# --- parsing ----------------------------------------------------------------------------


def test_parse_add():
    a = parse_add("head.weight=[5, 8]:normal(std=0.02)")
    assert (a.name, a.shape, a.dtype, a.scheme.describe()) == (
        "head.weight",
        (5, 8),
        torch.float32,
        "normal(mean=0.0, std=0.02)",
    )
    b = parse_add("head.bias=[5]:zeros:dtype=bfloat16")
    assert (b.shape, b.dtype, b.scheme.name) == ((5,), torch.bfloat16, "zeros")
    assert parse_add("scale=[]:ones").shape == ()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("head.weight:normal", "NAME=[d0,d1,...]:SCHEME"),
        ("head.weight=[5,x]:zeros", "must be integers"),
        ("head.weight=[5,-1]:zeros", "negative size"),
        ("head.weight=[5,8]:nope", "unknown scheme"),
        ("head.weight=[5,8]:normal(sd=1)", "no argument 'sd'"),
        ("head.bias=[5]:kaiming_normal", "cannot fill a tensor of shape (5,)"),
        ("head.weight=[5,8]:zeros:dtype=int8", "use one of float32"),
        ("head.weight=[5,8]:keep", "needs a scheme"),
        ("head.weight=[5,8]:from(x.safetensors)", "needs a scheme"),
    ],
)
def test_parse_add_errors(text, fragment):
    with pytest.raises(RuleError) as info:
        parse_add(text)
    assert info.value.exit_code == 2 and fragment in str(info.value)


def test_parse_rename_needs_template():
    with pytest.raises(RuleError, match="PATTERN=TEMPLATE"):
        parse_rename("encoder.*")
    with pytest.raises(RuleError, match="empty"):
        parse_rename("encoder.*=")


@pytest.mark.parametrize("parse, text", [(parse_drop, "type:LayerNorm"),
                                          (parse_rename, "type:Linear@head.*=new.{1}")])  # fmt: skip
def test_surgery_patterns_by_module_type_are_refused_saying_why(parse, text):
    """Surgery runs on names before any model maps modules, so `type:` could select nothing:
    `--drop type:LayerNorm` said it "matches no tensor" and listed LayerNorm tensors as the
    closest names."""
    with pytest.raises(RuleError, match="by name") as info:
        parse(text)
    assert info.value.exit_code == 2 and "type:" in str(info.value)


def test_drop_by_module_type_through_the_cli_says_why(model, tmp_path):
    res = run("apply", model[0], "--drop", "type:Linear", "-o", tmp_path / "o.safetensors")
    assert res.exit_code == 2 and "by name" in res.stderr and "matches no tensor" not in res.stderr
    assert not (tmp_path / "o.safetensors").exists()


def refs(*names: str) -> list[TensorRef]:
    return [TensorRef(n, "float32", (2,), "") for n in names]


def test_edit_order_drop_then_rename_then_add():
    surgery = Surgery(
        adds=(parse_add("classifier.weight=[2]:zeros"),),
        drops=(parse_drop("classifier.*"),),
        renames=(
            parse_rename("model.*={1}"),
            parse_rename(r"re:layers\.(\d+)\.(.*)=blocks.{1}.{2}"),
        ),
    )
    ed = edit_refs(
        refs("model.layers.0.w", "model.layers.1.w", "classifier.weight", "classifier.bias"),
        surgery,
    )
    assert [r.name for r in ed.refs] == ["blocks.0.w", "blocks.1.w", "classifier.weight"]
    assert ed.origin == {"blocks.0.w": "model.layers.0.w", "blocks.1.w": "model.layers.1.w"}
    assert ed.dropped == ("classifier.weight", "classifier.bias")
    assert list(ed.added) == ["classifier.weight"]


def test_edit_errors():
    with pytest.raises(RuleError, match="would both be named 'w'"):
        edit_refs(refs("a.w", "b.w"), Surgery(renames=(parse_rename("*.w=w"),)))
    with pytest.raises(RuleError, match="would both be named 'b'"):  # onto a name that stays
        edit_refs(refs("a", "b"), Surgery(renames=(parse_rename("a=b"),)))
    with pytest.raises(RuleError, match="already exists; --drop it first"):
        edit_refs(refs("a"), Surgery(adds=(parse_add("a=[2]:zeros"),)))
    with pytest.raises(RuleError, match="--drop 'enc.*' matches no tensor; closest names: encoder"):
        edit_refs(refs("encoder", "x"), Surgery(drops=(parse_drop("enc.*"),)))
    with pytest.raises(RuleError, match="--rename 'zz=y' matches no tensor"):
        edit_refs(refs("a"), Surgery(renames=(parse_rename("zz=y"),)))
    ed = edit_refs(refs("a"), Surgery(drops=(parse_drop("zz"),)), allow_unmatched=True)
    assert [r.name for r in ed.refs] == ["a"] and "matches no tensor" in ed.warnings[0]


# --- end to end -------------------------------------------------------------------------


def test_new_head_by_drop_and_add(model, tmp_path):
    path, tensors = model
    out = tmp_path / "o.safetensors"
    res = run(
        "apply",
        str(path),
        "-o",
        str(out),
        "--seed",
        "3",
        "--json",
        "--drop",
        "classifier.*",
        "--add",
        "classifier.weight=[5,8]:normal(std=0.02)",
        "--add",
        "classifier.bias=[5]:zeros:dtype=bfloat16",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    o = load_file(out)
    assert sorted(o) == sorted(tensors)
    assert o["classifier.weight"].shape == (5, 8) and o["classifier.weight"].dtype == torch.float32
    assert torch.equal(o["classifier.weight"], torch_normal((5, 8), 0.02, 3, "classifier.weight"))
    assert o["classifier.bias"].dtype == torch.bfloat16 and not o["classifier.bias"].any()
    for name in ("encoder.0.weight", "encoder.0.bias", "encoder.1.weight"):
        assert torch.equal(o[name], tensors[name])

    entries = {t["name"]: t for t in doc["tensors"]}
    w = entries["classifier.weight"]
    assert w["action"] == "reinit" and w["notes"] == ["added"] and w["before"] is None
    assert w["rule"] == "--add classifier.weight=[5,8]:normal(std=0.02)"
    assert w["expected_std"] == pytest.approx(0.02)
    assert entries["classifier.bias"]["dtype"] == "bfloat16"
    assert doc["dropped"] == ["classifier.bias", "classifier.weight"]  # in storage order
    assert doc["summary"]["tensors"] == 5 and doc["summary"]["reinit"] == 2
    assert "dropped 2 tensor(s): classifier." in res.stderr


def test_rename_then_rules_see_new_names(model, tmp_path):
    path, tensors = model
    out = tmp_path / "o.safetensors"
    rep = reinit.apply(
        path,
        ["layers.1.*=zeros"],
        out,
        rename=[r"re:encoder\.(\d+)\.(.*)=layers.{1}.{2}", "classifier.*=head.{1}"],
    )
    o = load_file(out)
    assert sorted(o) == sorted(
        ["layers.0.weight", "layers.0.bias", "layers.1.weight", "head.weight", "head.bias"]
    )
    assert torch.equal(o["layers.0.weight"], tensors["encoder.0.weight"])
    assert torch.equal(o["head.bias"], tensors["classifier.bias"])
    assert not o["layers.1.weight"].any()
    assert rep.entry("layers.0.weight").notes == ("renamed from encoder.0.weight",)
    assert rep.entry("layers.0.weight").action == "kept"
    assert rep.entry("layers.1.weight").action == "reinit"
    assert rep.entry("layers.1.weight").notes == ("renamed from encoder.1.weight",)
    assert rep.entry("layers.1.weight").before is not None  # read under its old name
    # a rule naming an old name matches nothing
    with pytest.raises(RuleError, match="matches no tensor"):
        reinit.plan(path, ["encoder.*=zeros"], rename=["encoder.*=layers.{1}"])


def test_added_tensor_filled_by_a_later_rule(model, tmp_path):
    path, _ = model
    src = st(tmp_path / "src.safetensors", {"proj.weight": randn(4, 8, seed=9)})
    rep = reinit.apply(
        path,
        [f"proj.weight=from({src}, on_mismatch=slice)"],
        tmp_path / "o.safetensors",
        add=["proj.weight=[6,8]:constant(val=0.5)"],
    )
    o = load_file(tmp_path / "o.safetensors")
    assert torch.equal(o["proj.weight"][:4], randn(4, 8, seed=9))
    assert torch.equal(o["proj.weight"][4:], torch.full((2, 8), 0.5))  # the --add values
    e = rep.entry("proj.weight")
    assert e.action == "transplant" and "added" in e.notes and e.before is None


def test_surgery_on_a_sharded_directory(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    s1 = {"a.weight": randn(4, 4, seed=1), "a.bias": randn(4, seed=2)}
    s2 = {"b.weight": randn(2, 4, seed=3), "old_head.weight": randn(3, 4, seed=4)}
    n1, n2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    st(src / n1, s1)
    st(src / n2, s2)
    wm = {k: n1 for k in s1} | {k: n2 for k in s2}
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wm})
    )
    (src / "config.json").write_text("{}")
    out = tmp_path / "out"
    rep = reinit.apply(
        src,
        [],
        out,
        drop=["old_head.*"],
        rename=["a.*=first.{1}"],
        add=["new_head.weight=[5,4]:xavier_uniform"],
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        "first.weight": n1,
        "first.bias": n1,
        "b.weight": n2,
        "new_head.weight": n2,
    }
    assert index["metadata"]["total_size"] == 4 * (16 + 4 + 8 + 20)
    with safe_open(out / n2, "pt") as f:
        assert sorted(f.keys()) == ["b.weight", "new_head.weight"]
        assert torch.equal(f.get_tensor("b.weight"), s2["b.weight"])
    with safe_open(out / n1, "pt") as f:
        assert torch.equal(f.get_tensor("first.weight"), s1["a.weight"])
    assert (out / "config.json").read_text() == "{}"
    report = json.loads((out / "reinit-report.json").read_text())
    assert report["dropped"] == ["old_head.weight"]
    assert rep.entry("new_head.weight").notes == ("added",)


def test_drop_everything_from_a_shard_removes_it(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    n1, n2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    st(src / n1, {"a": torch.ones(2)})
    st(src / n2, {"b": torch.ones(2)})
    wm = {"a": n1, "b": n2}
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wm})
    )
    reinit.apply(src, [], tmp_path / "out", drop=["b"])
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"a": n1}
    assert not (tmp_path / "out" / n2).exists()


def test_added_values_follow_seed_and_name(model, tmp_path):
    path, _ = model
    outs = []
    for i, seed in enumerate((0, 0, 1)):
        out = tmp_path / f"o{i}.safetensors"
        reinit.apply(path, [], out, seed=seed, add=["x.weight=[4,4]:normal"])
        outs.append(load_file(out)["x.weight"])
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert torch.equal(outs[2], torch_normal((4, 4), 1.0, 1, "x.weight"))


def test_dry_run_and_errors_write_nothing(model, tmp_path):
    path, _ = model
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run("apply", str(path), "--dry-run", "--drop", "classifier.bias", "--add", "z=[2]:ones")
    assert res.exit_code == 0, res.output
    assert "dropped 1 tensor(s): classifier.bias" in res.output
    z_line = next(line for line in res.output.splitlines() if line.startswith("z "))
    assert "reinit" in z_line and "ones" in z_line and "[added]" in z_line
    res = run("apply", str(path), "--dry-run", "--rename", "classifier.*=head.{1}")
    assert res.exit_code == 0, res.output
    assert "[renamed from classifier.weight]" in res.output
    plan = reinit.plan(path, [], drop=["classifier.bias"], add=["z=[2]:ones"])
    assert plan.dropped == ("classifier.bias",)
    assert [e.name for e in plan.entries if e.added] == ["z"]

    for args, code, fragment in [
        (["--drop", "nothing.*"], 2, "--drop 'nothing.*' matches no tensor"),
        (["--add", "encoder.0.bias=[8]:zeros"], 2, "already exists"),
        (["--rename", "encoder.*=x"], 2, "would both be named 'x'"),
        (["--add", "h=[2]:bogus"], 2, "unknown scheme"),
        # copy(...) as an --add fill was checked only while writing: an internal error
        (["--add", "h=[4,2]:copy(classifier.bias)"], 2, "cannot copy 'classifier.bias' [3]"),
        (["--add", "h=[3]:copy(nosuch)"], 2, "has no tensor 'nosuch'"),
    ]:
        res = run("apply", str(path), *args)
        assert res.exit_code == code, (args, res.output)
        assert fragment in res.output and res.output.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_rename_keeps_tied_tensors_tied(tmp_path):
    emb = randn(6, 4, seed=1)
    path = tmp_path / "m.bin"
    torch.save({"emb.weight": emb, "lm_head.weight": emb, "b": torch.zeros(2)}, path)
    out = tmp_path / "o.safetensors"
    rep = reinit.apply(path, ["embed.weight=normal(std=0.5)"], out, rename=["emb.*=embed.{1}"])
    o = load_file(out)
    assert sorted(o) == ["b", "embed.weight", "lm_head.weight"]
    assert torch.equal(o["embed.weight"], o["lm_head.weight"])  # still one tensor's values
    assert not torch.equal(o["embed.weight"], emb)
    assert "renamed from emb.weight" in rep.entry("embed.weight").notes


def test_add_and_resize_fills_read_the_config_as_rules_do(tmp_path):
    """`scaled_normal`'s layers (and `small_init`'s dim) come from config.json for a rule; an
    `--add`/`--resize` fill was never resolved: 'internal error: ValueError: layers unknown'.
    Now the same as the rule with the argument written out, and without a config a usage
    error that says what to give."""
    src = tmp_path / "src"
    src.mkdir()
    st(src / "model.safetensors", {"emb.weight": randn(10, 8), "layers.0.w.weight": randn(8, 8)})
    (src / "config.json").write_text(json.dumps({"num_hidden_layers": 8, "vocab_size": 10}))
    outs = {}
    for tag, fill in (("auto", "scaled_normal"), ("given", "scaled_normal(layers=8)")):
        out = tmp_path / tag
        res = run("apply", src, "-o", f"{out}/", "--add", f"x=[64,64]:{fill}",
                  "--resize", f"emb.weight=[12,*]:{fill}", "-q")  # fmt: skip
        assert res.exit_code == 0, res.output
        outs[tag] = load_file(out / "model.safetensors")
    for name in ("x", "emb.weight"):
        assert torch.equal(outs["auto"][name], outs["given"][name]), name
    lone = st(tmp_path / "lone.safetensors", {"emb.weight": randn(10, 8)})  # no config beside
    res = run("apply", lone, "-o", tmp_path / "out.safetensors", "--add", "x=[4,4]:scaled_normal")
    assert res.exit_code == 2 and "internal error" not in res.output, res.output
    assert "--add 'x=[4,4]:scaled_normal': scaled_normal needs layers=N" in res.output


def _tiny_vit(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    transformers.ViTModel(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("out", ["out/", "out.safetensors"])
def test_a_drop_that_leaves_no_tensor_is_refused(tmp_path, out):
    """`--drop "*"` (or drops that together take every tensor) would write a checkpoint of
    nothing with exit 0: refused, exit 2, naming the drop and the tensors, nothing written."""
    src = _tiny_vit(tmp_path / "vit")
    refused(
        tmp_path,
        ["apply", src, "-o", tmp_path / out, "--drop", "embeddings.*", "--drop", "[elp]*", "-q"],
        2,
        "--drop 'embeddings.*' --drop '[elp]*' drops every tensor",
        "embeddings.cls_token",
        "nothing written",
    )


def test_a_recipe_step_or_the_api_that_drops_everything_is_refused(tmp_path):
    src = _tiny_vit(tmp_path / "vit")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"source: {src}\noutput: {tmp_path / 'out'}/\nsteps:\n"
        "  - drop: ['pooler.*']\n  - drop: ['*']\n"
    )
    refused(tmp_path, ["run", recipe], 2, "r.yaml step 2: --drop '*' drops every tensor")
    with pytest.raises(RuleError, match="drops every tensor"):
        reinit.apply_to_state_dict({"a.weight": torch.zeros(2, 2)}, [], drop=["*"])
    new, _ = reinit.apply_to_state_dict(
        {"a.weight": torch.zeros(2, 2)}, [], drop=["*"], add=["b.weight=[2,2]:zeros"]
    )
    assert list(new) == ["b.weight"]  # new tensors only: not empty, so allowed
