"""Output control (issue 14 item 5, docs/guide/outputs.md): --dtype, --max-shard-size, --checksums and
`verify --report`.

Internal: also tests reinit.run.outcontrol directly (not the `reinit` API).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MB, make_checkpoint, refused, rss_growth, run
from safetensors.torch import load_file, save_file

from reinit.run.outcontrol import parse_size, split_like_save_pretrained


def _src(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "emb.weight": torch.randn(50, 16, generator=g),
        "lin.weight": torch.randn(16, 16, generator=g),
        "lin.bias": torch.randn(16, generator=g),
        "big.weight": torch.tensor([1.0, 70000.0, -1e6, 3.0]),
        "pos.ids": torch.arange(12, dtype=torch.int64),
    }
    path = tmp_path / "m.safetensors"
    save_file(sd, path)
    return path, sd


def test_dtype_bfloat16_casts_every_float_tensor_like_torch(tmp_path):
    src, sd = _src(tmp_path)
    out = tmp_path / "o.safetensors"
    r = run("apply", src, "-o", out, "-r", "lin.bias=zeros", "--dtype", "bfloat16", "--json")
    assert r.exit_code == 0, r.output
    got = load_file(out)
    for name, t in sd.items():
        if t.is_floating_point():
            assert got[name].dtype == torch.bfloat16
            if name != "lin.bias":  # kept tensors: torch's own cast, bit for bit
                assert torch.equal(got[name], t.to(torch.bfloat16)), name
        else:
            assert torch.equal(got[name], t)  # integers untouched
    assert torch.equal(got["lin.bias"], torch.zeros(16, dtype=torch.bfloat16))
    doc = json.loads((tmp_path / "o.report.json").read_text())
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["emb.weight"]["dtype"] == "bfloat16"
    assert "lossy cast float32 -> bfloat16" in by["emb.weight"]["notes"]
    assert by["pos.ids"]["dtype"] == "int64" and by["pos.ids"]["notes"] == []
    assert "--dtype bfloat16: 4 tensors cast lossily" in r.output


def test_dtype_float16_counts_overflow(tmp_path):
    src, _ = _src(tmp_path)
    out = tmp_path / "o.safetensors"
    r = run("apply", src, "-o", out, "-r", "lin.bias=zeros", "--dtype", "float16", "-q")
    assert r.exit_code == 0, r.output
    assert load_file(out)["big.weight"].isinf().sum() == 2
    doc = json.loads((tmp_path / "o.report.json").read_text())
    by = {t["name"]: t for t in doc["tensors"]}
    assert any("2 values overflowed to inf" in n for n in by["big.weight"]["notes"])
    assert "2 values overflowed to inf" in r.output


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu])
def test_dtype_float16_casts_fp8_tensors_like_torch(tmp_path, fp8):
    # The fp16 overflow count asked torch.isfinite of the fp8 source, which torch lacks: exit 1
    # "internal error". e8m0 reaches 2**127, past fp16's range: those values become inf, counted.
    g = torch.Generator().manual_seed(0)
    sd = {"q.weight": torch.randn(8, 8, generator=g).to(fp8), "lin.bias": torch.zeros(8)}
    if fp8 == torch.float8_e8m0fnu:
        sd["q.weight"] = torch.tensor([2.0**-3, 1.0, 2.0**20, 2.0**100]).to(fp8)
    src = save_file(sd, tmp_path / "m.safetensors") or tmp_path / "m.safetensors"
    out = tmp_path / "o.safetensors"
    r = run("apply", src, "-o", out, "-r", "lin.bias=ones", "--dtype", "float16", "-q")
    assert r.exit_code == 0, r.output
    got = load_file(out)["q.weight"]
    assert got.dtype == torch.float16
    assert torch.equal(got, sd["q.weight"].to(torch.float16))
    by = {t["name"]: t for t in json.loads((tmp_path / "o.report.json").read_text())["tensors"]}
    if fp8 == torch.float8_e8m0fnu:
        assert got.isinf().sum() == 2
        assert (
            "lossy cast float8_e8m0fnu -> float16; 2 values overflowed to inf"
            in by["q.weight"]["notes"]
        )
    else:
        assert by["q.weight"]["notes"] == [f"cast {str(fp8)[6:]} -> float16"]


def test_dtype_unknown_is_a_usage_error(tmp_path):
    src, _ = _src(tmp_path)
    refused(tmp_path, ["apply", str(src), "-r", "lin.bias=zeros", "--dtype", "int8"], 2, "--dtype")


def test_checksums_verify_passes_then_fails_after_a_flipped_byte(tmp_path):
    src, _ = _src(tmp_path)
    out = tmp_path / "o.safetensors"
    rep = tmp_path / "o.report.json"
    r = run("apply", src, "-o", out, "-r", "lin.bias=zeros", "--checksums", "--dtype", "float16")
    assert r.exit_code == 0, r.output
    doc = json.loads(rep.read_text())
    assert all(len(t["sha256"]) == 64 for t in doc["tensors"])
    ok = run("verify", out, "--report", rep)
    assert ok.exit_code == 0, ok.output
    assert "5 tensors match" in ok.output
    data = bytearray(out.read_bytes())
    hlen = int.from_bytes(data[:8], "little")
    start = json.loads(data[8 : 8 + hlen])["lin.weight"]["data_offsets"][0]
    data[8 + hlen + start + 1] ^= 0x01  # one bit of one value of lin.weight
    out.write_bytes(bytes(data))
    bad = run("verify", out, "--report", rep)
    assert bad.exit_code == 1
    assert "'lin.weight' does not match its sha256" in bad.output


def test_checksums_in_csv_report(tmp_path):
    src, _ = _src(tmp_path)
    out = tmp_path / "o.safetensors"
    csv_path = tmp_path / "r.csv"
    r = run("apply", src, "-o", out, "-r", "lin.bias=zeros", "--checksums", "--report", csv_path)
    assert r.exit_code == 0, r.output
    import hashlib

    header, *rows = csv_path.read_text().splitlines()
    assert header.split(",")[-1] == "sha256"
    digest = hashlib.sha256(load_file(out)["lin.weight"].numpy().tobytes()).hexdigest()
    assert any(row.startswith("lin.weight,") and row.endswith(digest) for row in rows)


def test_parse_size_and_split():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("10MiB") == 10 * 2**20
    assert parse_size("1234") == 1234
    # huggingface_hub's documented example: [6, 6, 2, 6, 2, 2] GB at 10 GB
    names = list("abcdef")
    assert split_like_save_pretrained(names, [6, 6, 2, 6, 2, 2], 10) == [
        ["a"],
        ["b", "c"],
        ["d", "e", "f"],
    ]
    assert split_like_save_pretrained(names[:3], [2, 20, 3], 10) == [["b"], ["a", "c"]]


def _tiny_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    src = tmp_path / "bert"
    model.save_pretrained(src)
    return transformers, model, src


def test_max_shard_size_matches_save_pretrained_and_loads(tmp_path):
    transformers, model, src = _tiny_bert(tmp_path)
    out = tmp_path / "out"
    r = run(
        "apply",
        src,
        "-o",
        f"{out}/",
        "-r",
        "pooler.dense.bias=zeros",
        "--max-shard-size",
        "20KB",
        "--model",
        src,
    )
    assert r.exit_code == 0, r.output
    ref = tmp_path / "ref"
    model.save_pretrained(ref, max_shard_size="20KB")
    ref_index = json.loads((ref / "model.safetensors.index.json").read_text())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == ref_index["weight_map"]
    assert index["metadata"]["total_size"] == ref_index["metadata"]["total_size"]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(p.name for p in ref.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    loaded, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    want = model.state_dict()
    for name, value in loaded.state_dict().items():
        expect = torch.zeros_like(want[name]) if name == "pooler.dense.bias" else want[name]
        assert torch.equal(value, expect), name


def test_max_shard_size_from_a_single_file_makes_a_folder(tmp_path):
    src, sd = _src(tmp_path)
    r = run("apply", src, "-r", "lin.bias=zeros", "--max-shard-size", "1000", "-q")
    assert r.exit_code == 0, r.output
    out = tmp_path / "m.reinit"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == sorted(p.name for p in out.glob("*.safetensors"))
    # emb.weight (3,200 bytes) is over the limit: a shard of its own
    assert [
        n for n, f in index["weight_map"].items() if f == index["weight_map"]["emb.weight"]
    ] == ["emb.weight"]
    refused(
        tmp_path,
        [
            "apply",
            str(src),
            "-o",
            str(tmp_path / "x.safetensors"),
            "-r",
            "lin.bias=zeros",
            "--max-shard-size",
            "1000",
        ],
        2,
        "--max-shard-size",
    )


def test_max_shard_size_default_folder_is_the_one_checked_for_existence(tmp_path):
    """With --max-shard-size and no -o, the output is `m.reinit/`: an earlier
    `m.reinit.safetensors` (which this run does not write) must not block it, and an existing
    `m.reinit/` is what the refusal names."""
    src, _ = _src(tmp_path)
    (tmp_path / "m.reinit.safetensors").write_bytes(b"an earlier run's file")
    r = run("apply", src, "-r", "lin.bias=zeros", "--max-shard-size", "1000", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.reinit" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "m.reinit.safetensors").read_bytes() == b"an earlier run's file"
    again = run("apply", src, "-r", "lin.bias=zeros", "--max-shard-size", "1000", "-q")
    assert again.exit_code == 2 and "m.reinit: exists" in again.output, again.output


@pytest.mark.slow
def test_dtype_cast_memory_stays_bounded(tmp_path):
    src = tmp_path / "big.safetensors"
    size = make_checkpoint(src)
    growth = rss_growth(
        "apply", src, "-r", "*.bias=zeros", "--dtype", "bfloat16", "--checksums", "-q", cwd=tmp_path
    )
    print(f"checkpoint {size / MB:.0f} MB, growth {growth / MB:.0f} MB")
    assert growth < 200 * MB


def test_api_keywords(tmp_path):
    import reinit

    src, sd = _src(tmp_path)
    out = tmp_path / "api.safetensors"
    report = reinit.apply(src, ["lin.bias=zeros"], out, dtype="float16", checksums=True)
    by = {t.name: t for t in report.tensors}
    assert by["emb.weight"].dtype == "float16" and by["pos.ids"].dtype == "int64"
    assert load_file(out)["emb.weight"].dtype == torch.float16
    assert all(t.sha256 is not None for t in report.tensors)


def test_split_keeps_a_shared_storage_in_one_shard():
    """huggingface_hub counts the tensors of one storage once, at the first, and puts the
    others in its shard; within a shard the tensors keep their order."""
    names = ["a", "e0", "b", "e1", "e2", "c"]
    sizes = [2, 3, 2, 3, 3, 1]
    storage = {"e0": "E", "e1": "E", "e2": "E"}
    assert split_like_save_pretrained(names, sizes, 10, storage) == [
        ["a"],
        ["e0", "e1", "e2"],
        ["b", "c"],
    ]
    assert split_like_save_pretrained(names, sizes, 10) == [["a", "e0", "b", "e1"], ["e2", "c"]]
    sizes = [1, 2, 1, 2, 2, 9]
    assert split_like_save_pretrained(names, sizes, 10, storage) == [
        ["a", "e0", "b", "e1", "e2"],
        ["c"],
    ]
    sizes = [1, 2, 9, 2, 2, 1]  # e1 and e2 join e0's shard, before b's
    assert split_like_save_pretrained(names, sizes, 10, storage) == [
        ["a", "e0", "e1", "e2"],
        ["b", "c"],
    ]


def test_dtype_folder_output_loads_in_that_dtype(tmp_path):
    """`--dtype bfloat16 -o out/` kept the source config's `"dtype": "float32"`, so
    `from_pretrained(out)` built a float32 model (twice the memory) from the bf16 weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "src")
    assert json.loads((tmp_path / "src" / "config.json").read_text())["dtype"] == "float32"
    out = tmp_path / "out"
    r = run("apply", tmp_path / "src", "-o", f"{out}/", "-r", "lm_head.weight=zeros",
            "--dtype", "bfloat16", "--max-shard-size", "10KB")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert 'config.json: dtype float32 -> "bfloat16" (--dtype)' in r.output
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_checksums_of_a_torch_output_are_verified_and_a_changed_value_caught(tmp_path):
    """`-o out.pt --checksums` wrote a sha256 per tensor, but `reinit verify out.pt --report`
    refused the file ("verify checks safetensors files"): the checksums could not be checked."""
    src, sd = _src(tmp_path)
    out, rep = tmp_path / "o.pt", tmp_path / "o.report.json"
    r = run("apply", src, "-o", out, "-r", "lin.bias=zeros", "--checksums", "-q")
    assert r.exit_code == 0, r.output
    ok = run("verify", out, "--report", rep)
    assert ok.exit_code == 0, ok.output
    assert "5 tensors match" in ok.output and "valid torch file" in ok.output
    state = torch.load(out, weights_only=True)
    state["lin.weight"][0, 0] += 1.0
    torch.save(state, out)
    bad = run("verify", out, "--report", rep)
    assert bad.exit_code == 1
    assert "'lin.weight' does not match its sha256" in bad.output
