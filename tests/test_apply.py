"""`reinit apply` end to end: the mission example, byte-for-byte guarantees, output forms,
dtypes, and a real transformers round trip.

Internal: also tests reinit.io.formats._safetensors_format, reinit.schemes directly (not the `reinit`
API).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import run, write_safetensors
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import reinit
from reinit.errors import OutputError, RuleError
from reinit.io.formats import tensor_to_bytes
from reinit.schemes import seed_for


def tiny_bert(tmp_path: Path, name: str = "bert") -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=99, max_position_embeddings=64,
    )  # fmt: skip
    model = BertModel(cfg).eval()
    out = tmp_path / name
    model.save_pretrained(out)
    return out


def test_mission_example_on_a_bert_checkpoint(tmp_path):
    src_dir = tiny_bert(tmp_path)
    src = src_dir / "model.safetensors"
    # the int64 position_ids buffer is not saved by every transformers version: add one
    sd = load_file(src)
    sd["embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    save_file(sd, src, metadata={"format": "pt"})

    report = reinit.apply(src, ["*.weight=kaiming"])

    out = src.with_name("model.reinit.safetensors")
    rep_path = src.with_name("model.reinit.report.json")
    assert out.is_file() and rep_path.is_file()
    new = load_file(out)
    assert list(new) == list(load_file(src))
    by = {e.name: e for e in report.tensors}
    n_reinit = 0
    for name, t in sd.items():
        e = by[name]
        if name.endswith(".weight") and t.dim() >= 2:
            n_reinit += 1
            assert e.action == "reinit"
            fan_in = t.shape[1]
            expected = math.sqrt(2.0) / math.sqrt(fan_in)  # torch: a=0 -> leaky_relu gain √2
            assert e.expected_std == pytest.approx(expected)
            n = t.numel()
            assert (
                abs(new[name].double().std().item() - expected) / expected
                < 5 / math.sqrt(2 * n) + 0.01
            )
        elif name.endswith(".weight"):
            assert e.action == "skipped" and "dims" in e.reason  # LayerNorm weights
            assert torch.equal(new[name], t)
        else:
            assert e.action == "kept"
            assert torch.equal(new[name], t)
    assert n_reinit >= 10
    assert by["embeddings.position_ids"].dtype == "int64"
    assert new["embeddings.position_ids"].dtype == torch.int64
    doc = json.loads(rep_path.read_text())
    assert doc["summary"]["reinit"] == n_reinit
    assert doc["summary"]["skipped"] == sum(1 for e in report.tensors if e.action == "skipped") > 0
    assert doc["tensors"][0].keys() >= {
        "name", "shape", "dtype", "action", "rule", "scheme", "from", "reason", "fan_in",
        "fan_out", "before", "after", "expected_std", "var_gain", "flags",
    }  # fmt: skip


def raw(t: torch.Tensor) -> bytes:
    return tensor_to_bytes(t).tobytes()


def _bytes_of(path: Path) -> dict[str, bytes]:
    """Each tensor's stored bytes, read by the safetensors library itself."""
    with safe_open(path, "pt") as f:
        return {k: raw(f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118


def edge_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(16, 8, generator=g),
        "a.bias": torch.randn(16, generator=g),
        "h.weight": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        "h16.weight": torch.randn(8, 8, generator=g).to(torch.float16),
        "f8.weight": torch.randn(8, 8, generator=g).to(torch.float8_e4m3fn),
        "f8b.weight": torch.randn(8, 8, generator=g).to(torch.float8_e5m2),
        "d.weight": torch.randn(4, 4, generator=g, dtype=torch.float64),
        "ids": torch.arange(10, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty.weight": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }


def test_untouched_tensors_are_byte_identical_and_every_dtype_round_trips(tmp_path):
    src = tmp_path / "m.safetensors"
    sd = edge_state_dict()
    save_file(sd, src)
    out = tmp_path / "o.safetensors"
    report = reinit.apply(src, ["h*.weight=normal(std=0.1)", "f8*.weight=normal(std=0.1)"], out)
    new = load_file(out)
    before, after = _bytes_of(src), _bytes_of(out)
    for name, t in sd.items():
        assert new[name].dtype == t.dtype and tuple(new[name].shape) == tuple(t.shape)
        if name in ("h.weight", "h16.weight", "f8.weight", "f8b.weight"):
            assert after[name] != before[name]
        else:
            assert after[name] == before[name] == raw(t), name
    # the fp8 tensor's values are the float32 draw cast to fp8
    ref = torch.empty(8, 8).normal_(
        0, 0.1, generator=torch.Generator().manual_seed(seed_for(0, "f8.weight"))
    )
    assert torch.equal(
        new["f8.weight"].view(torch.uint8), ref.to(torch.float8_e4m3fn).view(torch.uint8)
    )
    assert report.entry("scalar").after.mean == 2.5
    assert report.entry("empty.weight").after.std is None
    assert report.entry("ids").after.max == 9.0


def test_two_runs_and_rule_order_give_identical_bytes(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(edge_state_dict(), src)
    rules = ["a.weight=orthogonal", "h.weight=xavier_uniform", "d.weight=sparse(0.5)"]
    outs = []
    for i, rs in enumerate([rules, rules, list(reversed(rules))]):
        out = tmp_path / f"o{i}.safetensors"
        reinit.apply(src, rs, out, default_report=False, seed=5)
        outs.append(out.read_bytes())
    # the provenance metadata lists the rules in order, so compare everything else
    assert outs[0] == outs[1]
    assert _bytes_of(tmp_path / "o0.safetensors") == _bytes_of(tmp_path / "o2.safetensors")


def test_output_is_bit_identical_to_the_plain_torch_call(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"enc.w": torch.zeros(32, 16)}, src)
    reinit.apply(
        src, ["enc.w=kaiming_uniform(nonlinearity=relu)"], tmp_path / "o.safetensors", seed=3
    )
    ref = torch.empty(32, 16)
    torch.nn.init.kaiming_uniform_(
        ref, nonlinearity="relu", generator=torch.Generator().manual_seed(seed_for(3, "enc.w"))
    )
    assert torch.equal(load_file(tmp_path / "o.safetensors")["enc.w"], ref)


def test_metadata_kept_and_provenance_added(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2, 2)}, src, metadata={"format": "pt", "author": "me"})
    reinit.apply(src, ["w=zeros"], seed=9)
    with safe_open(tmp_path / "m.reinit.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["author"] == "me" and meta["format"] == "pt"
    prov = json.loads(meta["reinit"])
    assert prov == {"version": reinit.__version__, "record": 2, "seed": 9, "rules": ["w=zeros"]}


def test_refuses_existing_output_and_source_as_output(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2, 2)}, src)
    before = src.read_bytes()
    reinit.apply(src, ["w=zeros"])
    out = tmp_path / "m.reinit.safetensors"
    first = out.read_bytes()
    with pytest.raises(OutputError, match="--overwrite"):
        reinit.apply(src, ["w=ones"])
    assert out.read_bytes() == first
    reinit.apply(src, ["w=ones"], overwrite=True)
    assert torch.equal(load_file(out)["w"], torch.ones(2, 2))
    with pytest.raises(OutputError, match="--in-place"):
        reinit.apply(src, ["w=zeros"], src)
    assert src.read_bytes() == before
    reinit.apply(src, ["w=zeros"], in_place=True, default_report=False)
    assert torch.equal(load_file(src)["w"], torch.zeros(2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.reinit.report.json",
        "m.reinit.safetensors",
        "m.safetensors",
    ]


def test_bad_rule_writes_nothing(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2, 2)}, src)
    with pytest.raises(RuleError):
        reinit.apply(src, ["nothing.here=zeros"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_torch_file_with_nested_state_dict_and_non_contiguous_tensor(tmp_path):
    base = torch.randn(6, 4)
    inner = {"layer.weight": base.t(), "layer.bias": torch.zeros(6), "step": torch.tensor(3)}
    assert not inner["layer.weight"].is_contiguous()
    torch.save({"state_dict": inner, "epoch": 3, "hparams": {"lr": 0.1}}, tmp_path / "ck.ckpt")
    report = reinit.apply(tmp_path / "ck.ckpt", ["layer.bias=ones"])
    out = load_file(tmp_path / "ck.reinit.safetensors")
    assert set(out) == {"layer.weight", "layer.bias", "step"}
    assert torch.equal(out["layer.weight"], base.t().contiguous())
    assert torch.equal(out["layer.bias"], torch.ones(6))
    assert report.summary.reinit == 1


def test_torch_output_format(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(3, 3), "b": torch.ones(3)}, src)
    reinit.apply(src, ["w=eye"], tmp_path / "out.pt")
    sd = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(sd["w"], torch.eye(3)) and torch.equal(sd["b"], torch.ones(3))
    assert (tmp_path / "out.report.json").is_file()


def test_sharded_directory_keeps_layout_and_copies_other_files(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    save_file(
        {"a.weight": torch.randn(4, 4), "a.bias": torch.zeros(4)},
        src / "model-00001-of-00002.safetensors",
        metadata={"format": "pt"},
    )
    save_file(
        {"b.weight": torch.randn(4, 4)},
        src / "model-00002-of-00002.safetensors",
        metadata={"format": "pt"},
    )
    index = {
        "metadata": {"total_size": 144},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "a.bias": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
        },
    }
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text('{"x": 1}')
    (src / "tokenizer").mkdir()
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (src / "pytorch_model.bin").write_bytes(b"stale weights must not be copied")

    report = reinit.apply(src, ["b.weight=zeros"])
    out = tmp_path / "model-reinit"
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == sorted([
        "config.json", "tokenizer/vocab.txt", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "reinit-report.json",
    ])  # fmt: skip
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert idx["weight_map"] == index["weight_map"]
    assert idx["metadata"]["total_size"] == 144
    assert (out / "model-00001-of-00002.safetensors").read_bytes()[8:].find(b'"reinit"') > 0
    assert torch.equal(
        load_file(out / "model-00002-of-00002.safetensors")["b.weight"], torch.zeros(4, 4)
    )
    assert report.summary.reinit == 1 and report.output == str(out)


def test_transformers_round_trip(tmp_path):
    """A real architecture: save_pretrained -> reinit -> from_pretrained -> forward."""
    from transformers import BertModel

    src = tiny_bert(tmp_path)
    report = reinit.apply(
        src, ["encoder.layer.1.*.weight=xavier_uniform", "pooler.dense.weight=orthogonal"]
    )
    out = tmp_path / "bert-reinit"
    assert (out / "config.json").is_file()
    original = BertModel.from_pretrained(src).eval()
    model = BertModel.from_pretrained(out).eval()
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(ids).last_hidden_state
        y0 = original(ids).last_hidden_state
    assert y.shape == (2, 7, 32) and torch.isfinite(y).all()
    assert not torch.allclose(y, y0)
    new_sd = model.state_dict()
    for e in report.tensors:
        if e.action == "reinit":
            w = new_sd[e.name]
            assert abs(w.std(unbiased=False).item() - e.after.std) < 1e-6
        elif e.name in new_sd:
            assert torch.equal(new_sd[e.name], original.state_dict()[e.name])


def test_dry_run_plans_and_writes_nothing(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2, 2), "ln.weight": torch.ones(2)}, src)
    p = reinit.plan(src, ["*.weight=kaiming", "w=normal"])
    assert [(e.name, e.action) for e in p.entries] == [("ln.weight", "skipped"), ("w", "reinit")]
    assert [x.name for x in tmp_path.iterdir()] == ["m.safetensors"]


def test_report_formats(tmp_path):
    import csv

    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(8, 8), "b": torch.ones(3)}, src)
    reinit.apply(
        src,
        ["a.weight=xavier_normal"],
        reports=[tmp_path / "r.csv", tmp_path / "r.md", tmp_path / "r.json"],
    )
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["name"] for r in rows] == ["a.weight", "b"]
    assert rows[0]["action"] == "reinit" and float(rows[0]["expected_std"]) == pytest.approx(
        math.sqrt(2 / 16)
    )
    md = (tmp_path / "r.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| `")]
    assert len(table) == 2
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["tensors"] == 2


@pytest.mark.parametrize("out", ["o.SAFETENSORS", "o.Safetensors", "o.PT", "o.BIN"])
def test_default_report_of_an_upper_case_suffix_drops_it(tmp_path, out):
    """`-o o.SAFETENSORS` is a safetensors output (the form is read case-blind), but its
    report was `o.SAFETENSORS.report.json`, not `o.report.json` as for `o.safetensors`."""
    src = write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2, 2)})
    reinit.apply(src, ["w=zeros"], tmp_path / out)
    assert (tmp_path / "o.report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.safetensors", out, "o.report.json"]
    )


@pytest.mark.parametrize("form", ["folder", "dcp"])
def test_source_given_as_dot_gets_its_default_output_beside_it(tmp_path, monkeypatch, form):
    """`cd bert && reinit apply .` put the default output at `./-reinit`... inside the source
    (refused: "-o bert-reinit: is inside the source folder"); for a DCP directory
    `Path('.').with_name` failed with an internal error. The default is beside the folder."""
    src = tiny_bert(tmp_path)
    want = tmp_path / "bert-reinit"
    if form == "dcp":
        from torch.distributed.checkpoint.format_utils import torch_save_to_dcp

        torch.save({"model": load_file(src / "model.safetensors")}, tmp_path / "t.pt")
        src = tmp_path / "bert-dcp"
        torch_save_to_dcp(tmp_path / "t.pt", src)
        want = tmp_path / "bert-dcp.reinit.safetensors"
    monkeypatch.chdir(src)
    for dot in (".", "./", f"../{src.name}/."):
        res = run("apply", dot, "-r", "pooler.dense.bias=zeros", "--overwrite", "-q")
        assert res.exit_code == 0, res.output
        assert want.exists() and not (src / want.name).exists()


def test_a_safetensors_file_the_index_does_not_name_is_said_not_dropped_silently(tmp_path):
    """A folder of shards with a safetensors file its index does not name (an adapter, a
    shard of an earlier save): apply read around it and left it out of the folder output
    without a word, while `reinit verify` counted its tensors in. A warning names it."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=99, max_position_embeddings=64,
    )  # fmt: skip
    src = tmp_path / "bert"
    BertModel(cfg).save_pretrained(src, max_shard_size="20KB")
    write_safetensors(src / "adapter_model.safetensors", {"lora_A.weight": torch.ones(2, 32)})
    res = run("apply", src, "-r", "pooler.dense.bias=zeros", "-o", f"{tmp_path / 'out'}/")
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.stderr.splitlines() if "adapter_model.safetensors" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: "), res.stderr
    assert "model.safetensors.index.json does not name" in warned[0]
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    clean = run("apply", src, "-r", "pooler.dense.bias=zeros", "-o", f"{tmp_path / 'o2'}/")
    assert "adapter_model" in clean.stderr  # said on every run, not only the first


def test_a_safetensors_file_beside_the_single_weight_file_is_said_not_dropped_silently(tmp_path):
    """`adapter_model.safetensors` beside a single `model.safetensors` (no index): apply read
    the one file, as from_pretrained does, and left the other out of the folder output without
    a word, while `reinit verify` counted it in. A warning names it, as beside an index."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=99, max_position_embeddings=64,
    )  # fmt: skip
    src = tmp_path / "bert"
    BertModel(cfg).save_pretrained(src)
    write_safetensors(src / "adapter_model.safetensors", {"lora_A.weight": torch.ones(2, 32)})
    res = run("apply", src, "-r", "pooler.dense.bias=zeros", "-o", f"{tmp_path / 'out'}/")
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.stderr.splitlines() if "adapter_model.safetensors" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: "), res.stderr
    assert "model.safetensors is the weight file read" in warned[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "model.safetensors", "reinit-report.json",
    ]  # fmt: skip
    (src / "adapter_model.safetensors").unlink()
    clean = run("apply", src, "-r", "pooler.dense.bias=zeros", "-o", f"{tmp_path / 'o2'}/")
    assert clean.exit_code == 0 and "warning" not in clean.stderr, clean.stderr


def _two_shards_beside(folder: Path, fmt: str, state: dict[str, torch.Tensor]) -> str:
    """`state` as two shards and their index in `folder`, in transformers' names for `fmt`;
    returns the index's name."""
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"{stem}-0000{i + 1}-of-00002.{ext}"
        tensors = {n: state[n].contiguous() for n in part}
        if fmt == "safetensors":
            save_file(tensors, folder / shard, metadata={"format": "pt"})
        else:
            torch.save(tensors, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    index = f"{stem}.{ext}.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_a_folder_with_a_single_weight_file_and_an_index_is_read_as_from_pretrained_loads_it(
    tmp_path, fmt
):
    """A folder with `model.safetensors` beside `model.safetensors.index.json` and its shards
    (an earlier save left behind): from_pretrained loads `model.safetensors`; reinit read the
    index, so `--in-place` rewrote the shards and the model loaded unchanged, and `-o` wrote
    the weights that never load. Read as transformers reads it; a warning names the index.
    The same for `pytorch_model.bin` beside `pytorch_model.bin.index.json`."""
    from helpers import load_clean, tiny_bert
    from transformers import BertModel

    folder = tiny_bert(tmp_path / "bert")
    state = load_file(folder / "model.safetensors")
    single = "model.safetensors"
    if fmt == "torch":
        (folder / single).unlink()
        single = "pytorch_model.bin"
        torch.save(state, folder / single)
    stale = {k: torch.full_like(v, 0.5) for k, v in state.items()}
    index = _two_shards_beside(folder, fmt, stale)
    loaded = load_clean(BertModel, folder).state_dict()
    assert not loaded["pooler.dense.weight"].eq(0.5).all()  # transformers loads `single`
    rules = ["-r", "pooler.dense.bias=ones"]
    res = run("apply", folder, *rules, "-o", f"{tmp_path / 'out'}/", "-q")
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.stderr.splitlines() if index in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: ") and single in warned[0]
    out = load_clean(BertModel, tmp_path / "out").state_dict()
    assert out["pooler.dense.bias"].eq(1).all()
    assert all(out[k].equal(v) for k, v in loaded.items() if k != "pooler.dense.bias")
    assert run("apply", folder, *rules, "--in-place", "-q").exit_code == 0
    assert BertModel.from_pretrained(folder).pooler.dense.bias.eq(1).all()


def test_an_index_of_the_single_file_alone_is_read_without_a_warning(tmp_path):
    """Some repos hold `model.safetensors` and an index that names only it: the same tensors
    either way, so nothing is said to be left out."""
    from helpers import tiny_bert

    folder = tiny_bert(tmp_path / "bert")
    names = list(load_file(folder / "model.safetensors"))
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "model.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    res = run("apply", folder, "-r", "pooler.dense.bias=ones", "-o", f"{tmp_path / 'out'}/", "-q")
    assert res.exit_code == 0 and "warning" not in res.stderr, res.output
    assert sorted(load_file(tmp_path / "out" / "model.safetensors")) == sorted(names)
