"""from(SOURCE, key=TEMPLATE, on_mismatch=…) end to end on small hand-built checkpoints.

Internal: also tests reinit.planning.transplant directly (not the `reinit` API).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import MB, make_checkpoint, rss_growth, run
from safetensors.torch import load_file, save_file

import reinit
import reinit.planning.transplant as transplant_mod
from reinit.errors import TransplantError
from reinit.planning.transplant import auto_keys


def st(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.fixture
def pair(tmp_path):
    """A target with encoder + head, and a source holding the encoder under other names."""
    target = {
        "encoder.0.weight": torch.zeros(4, 4),
        "encoder.0.bias": torch.zeros(4),
        "encoder.1.weight": torch.zeros(4, 4),
        "head.weight": torch.full((2, 4), 7.0),
    }
    source = {
        "model.encoder.0.weight": randn(4, 4, seed=1),
        "model.encoder.0.bias": randn(4, seed=2),
        "model.encoder.1.weight": randn(4, 4, seed=3),
        "model.lm_head.weight": randn(9, 4, seed=4),
    }
    return st(tmp_path / "t.safetensors", target), st(tmp_path / "s.safetensors", source)


# --- key mapping ------------------------------------------------------------------------


def test_default_key_is_the_same_name(tmp_path):
    tgt = st(tmp_path / "t.safetensors", {"a.w": torch.zeros(3, 2), "b.w": torch.ones(2)})
    src = st(tmp_path / "s.safetensors", {"a.w": randn(3, 2), "b.w": randn(2, seed=5)})
    rep = reinit.apply(tgt, [f"a.*=from({src})"], tmp_path / "o.safetensors")
    out, s, t = load_file(tmp_path / "o.safetensors"), load_file(src), load_file(tgt)
    assert raw(out["a.w"]) == raw(s["a.w"])
    assert raw(out["b.w"]) == raw(t["b.w"])  # no rule: byte-for-byte
    e = rep.entry("a.w")
    assert e.action == "transplant" and e.source == f"{src}:a.w"
    assert e.notes == ("equal to source",) and (e.reference, e.reference_std) == (
        "source",
        e.after.std,
    )
    assert rep.summary.transplant == 1 and rep.summary.kept == 1


@pytest.mark.parametrize(
    "rule",
    [
        "encoder.*=from(SRC, key=model.{name})",
        "encoder.*=from(SRC, key=model.encoder.{1})",
        r"re:encoder\.(\d+)\.(weight|bias)=from(SRC, key=model.encoder.{1}.{2})",
        "encoder.*=from(SRC, key=auto)",
    ],
)
def test_key_templates_and_auto(pair, tmp_path, rule):
    tgt, src = pair
    out = tmp_path / "o.safetensors"
    rep = reinit.apply(tgt, [rule.replace("SRC", str(src))], out)
    o, s = load_file(out), load_file(src)
    for name in ("encoder.0.weight", "encoder.0.bias", "encoder.1.weight"):
        assert raw(o[name]) == raw(s["model." + name]), name
        assert rep.entry(name).source == f"{src}:model.{name}"
    assert torch.equal(o["head.weight"], torch.full((2, 4), 7.0))


def test_template_capture_out_of_range_is_a_usage_error(pair, tmp_path):
    tgt, src = pair
    res = run("apply", str(tgt), "-r", f"encoder.*=from({src}, key={{2}})")
    assert res.exit_code == 2
    assert "{2}" in res.output and "1 capture" in res.output


def test_missing_source_tensor_lists_closest_names(pair, tmp_path):
    tgt, src = pair
    out = tmp_path / "o.safetensors"
    res = run("apply", str(tgt), "-o", str(out), "-r", f"encoder.*=from({src}, key={{name}})")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "has no tensor 'encoder.0.bias'" in line  # the first target in order
    assert "2 more missing: 'encoder.0.weight', 'encoder.1.weight'" in line
    assert "closest names: model.encoder.0.bias" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "s.safetensors",
        "t.safetensors",
    ]


# --- key=auto ---------------------------------------------------------------------------


def test_auto_longest_common_suffix():
    sources = [
        "embeddings.LayerNorm.weight",
        "encoder.layer.0.output.LayerNorm.weight",
        "encoder.layer.1.output.LayerNorm.weight",
        "pooler.dense.weight",
    ]
    got = auto_keys(
        [
            "bert.embeddings.LayerNorm.weight",
            "bert.encoder.layer.1.output.LayerNorm.weight",
            "pooler.dense.weight",
        ],
        sources,
        "rule",
    )
    assert got == {
        "bert.embeddings.LayerNorm.weight": "embeddings.LayerNorm.weight",
        "bert.encoder.layer.1.output.LayerNorm.weight": "encoder.layer.1.output.LayerNorm.weight",
        "pooler.dense.weight": "pooler.dense.weight",
    }


def test_auto_ambiguity_errors(tmp_path):
    tgt = st(tmp_path / "t.safetensors", {"head.dense.weight": torch.zeros(2, 2)})
    src = st(
        tmp_path / "s.safetensors",
        {"a.dense.weight": randn(2, 2), "b.dense.weight": randn(2, 2, seed=1)},
    )
    res = run("apply", str(tgt), "-r", f"head.*=from({src}, key=auto)")
    assert res.exit_code == 2, res.output
    assert "key=auto is ambiguous for 'head.dense.weight'" in res.output
    assert "'a.dense.weight'" in res.output and "'b.dense.weight'" in res.output

    # one source tensor would feed two targets
    tgt2 = st(
        tmp_path / "t2.safetensors",
        {"x.proj.weight": torch.zeros(2, 2), "y.proj.weight": torch.zeros(2, 2)},
    )
    src2 = st(tmp_path / "s2.safetensors", {"proj.weight": randn(2, 2)})
    res = run("apply", str(tgt2), "-r", f"*.proj.weight=from({src2}, key=auto)")
    assert res.exit_code == 2, res.output
    assert "would feed source tensor 'proj.weight' to 2 targets" in res.output
    assert "'x.proj.weight'" in res.output and "'y.proj.weight'" in res.output

    # a one-part suffix ("weight") is no match
    with pytest.raises(TransplantError, match="no source tensor sharing a dotted suffix"):
        auto_keys(["classifier.weight"], ["encoder.dense.weight"], "rule")
    assert not list(tmp_path.glob("*.reinit.*"))


# --- shape and dtype --------------------------------------------------------------------


def test_mismatch_error_lists_the_first_pairs_and_the_count(tmp_path):
    tgt = st(
        tmp_path / "t.safetensors",
        {f"l{i}.w": torch.zeros(4, 4) for i in range(7)} | {"ok.w": torch.zeros(2)},
    )
    src = st(
        tmp_path / "s.safetensors",
        {f"l{i}.w": torch.zeros(4, 5 + i) for i in range(7)} | {"ok.w": torch.ones(2)},
    )
    res = run("apply", str(tgt), "-r", f"*=from({src})")
    assert res.exit_code == 2, res.output
    assert "shape mismatch in 7 transplant(s)" in res.output
    for i in range(5):
        assert f"'l{i}.w' [4, 4] <- 'l{i}.w' [4, {5 + i}]" in res.output
    assert "'l5.w'" not in res.output and "… and 2 more" in res.output
    assert "on_mismatch=skip" in res.output and "on_mismatch=slice" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "t.reinit.safetensors").exists()


def test_mismatch_skip_keeps_target_and_reports(tmp_path):
    tgt_t = {"emb": randn(10, 4, seed=9), "w": torch.zeros(3, 3)}
    tgt = st(tmp_path / "t.safetensors", tgt_t)
    src = st(tmp_path / "s.safetensors", {"emb": randn(6, 4), "w": randn(3, 3, seed=2)})
    rep = reinit.apply(tgt, [f"*=from({src}, on_mismatch=skip)"], tmp_path / "o.safetensors")
    o = load_file(tmp_path / "o.safetensors")
    assert raw(o["emb"]) == raw(tgt_t["emb"])
    assert raw(o["w"]) == raw(load_file(src)["w"])
    e = rep.entry("emb")
    assert e.action == "skipped" and "shape mismatch" in e.reason
    assert "'emb' [10, 4] <- 'emb' [6, 4]" in e.reason
    assert rep.summary.skipped == 1 and rep.summary.transplant == 1
    with pytest.raises(reinit.StrictError):
        reinit.apply(
            tgt, [f"*=from({src}, on_mismatch=skip)"], tmp_path / "x.safetensors", strict=True
        )


def test_mismatch_slice_grow_and_shrink(tmp_path):
    tgt_t = {
        "emb": randn(10, 4, seed=9),  # vocabulary extension: 6 -> 10 rows
        "cls.weight": randn(5, 4, seed=8),  # more classes: 3 -> 5
        "cls.bias": randn(5, seed=7),
        "proj": randn(2, 3, seed=6),  # smaller than the source in both dims
    }
    src_t = {
        "emb": randn(6, 4, seed=1),
        "cls.weight": randn(3, 4, seed=2),
        "cls.bias": randn(3, seed=3),
        "proj": randn(4, 5, seed=4),
    }
    tgt, src = st(tmp_path / "t.safetensors", tgt_t), st(tmp_path / "s.safetensors", src_t)
    rep = reinit.apply(tgt, [f"*=from({src}, on_mismatch=slice)"], tmp_path / "o.safetensors")
    o = load_file(tmp_path / "o.safetensors")
    assert torch.equal(o["emb"][:6], src_t["emb"]) and torch.equal(o["emb"][6:], tgt_t["emb"][6:])
    assert torch.equal(o["cls.weight"][:3], src_t["cls.weight"])
    assert torch.equal(o["cls.weight"][3:], tgt_t["cls.weight"][3:])
    assert torch.equal(o["cls.bias"][:3], src_t["cls.bias"])
    assert torch.equal(o["cls.bias"][3:], tgt_t["cls.bias"][3:])
    assert torch.equal(o["proj"], src_t["proj"][:2, :3])
    notes = rep.entry("emb").notes
    assert any("sliced: copied block [6, 4] of source [6, 4]" in n for n in notes)
    assert rep.entry("emb").action == "transplant"

    bad = st(tmp_path / "b.safetensors", {"emb": torch.zeros(6, 4, 1)})
    res = run("apply", str(tgt), "-r", f"emb=from({bad}, on_mismatch=slice)")
    assert res.exit_code == 2 and "the number of dims differs" in res.output


def test_cast_to_target_dtype_and_lossy_note(tmp_path):
    src_t = {"a": randn(8, 8, seed=1), "b": randn(8, seed=2).to(torch.bfloat16), "c": torch.ones(4)}
    tgt_t = {
        "a": torch.zeros(8, 8, dtype=torch.bfloat16),
        "b": torch.zeros(8),
        "c": torch.zeros(4, dtype=torch.float16),
    }
    tgt, src = st(tmp_path / "t.safetensors", tgt_t), st(tmp_path / "s.safetensors", src_t)
    rep = reinit.apply(tgt, [f"*=from({src})"], tmp_path / "o.safetensors")
    o = load_file(tmp_path / "o.safetensors")
    assert o["a"].dtype == torch.bfloat16 and torch.equal(o["a"], src_t["a"].to(torch.bfloat16))
    assert o["b"].dtype == torch.float32 and torch.equal(o["b"], src_t["b"].float())
    assert o["c"].dtype == torch.float16 and torch.equal(o["c"], torch.ones(4, dtype=torch.float16))
    assert rep.entry("a").notes == ("lossy cast float32 -> bfloat16",)
    assert rep.entry("b").notes == ("equal to source",)  # bf16 -> fp32 is exact
    assert rep.entry("c").notes == ("equal to source",)  # 1.0 is exact in fp16
    doc = {t["name"]: t for t in json.loads(rep.to_json())["tensors"]}
    assert doc["a"]["notes"] == ["lossy cast float32 -> bfloat16"]
    assert doc["a"]["from"] == f"{src}:a"


# --- source forms -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, nest", [(".bin", None), (".pt", "state_dict"), (".ckpt", "model")]
)
def test_torch_file_source(pair, tmp_path, suffix, nest):
    tgt, st_src = pair
    sd = load_file(st_src)
    path = tmp_path / f"src{suffix}"
    torch.save({nest: sd, "epoch": 3} if nest else sd, path)
    out = tmp_path / "o.safetensors"
    rep = reinit.apply(tgt, [f"encoder.*=from({path}, key=model.{{name}})"], out)
    o = load_file(out)
    for name in ("encoder.0.weight", "encoder.0.bias", "encoder.1.weight"):
        assert raw(o[name]) == raw(sd["model." + name])
    assert rep.summary.transplant == 3


def test_several_sources_each_opened_once(tmp_path, monkeypatch):
    tgt = st(
        tmp_path / "t.safetensors",
        {"a.w": torch.zeros(2), "b.w": torch.zeros(2), "c.w": torch.zeros(2)},
    )
    s1 = st(tmp_path / "s1.safetensors", {"a.w": randn(2, seed=1), "b.w": randn(2, seed=2)})
    st(tmp_path / "s2.safetensors", {"c.w": randn(2, seed=3)})
    opened: list[str] = []
    real = transplant_mod.open_checkpoint

    def counting(source, **kw):
        opened.append(str(source))
        return real(source, **kw)

    monkeypatch.setattr(transplant_mod, "open_checkpoint", counting)
    monkeypatch.chdir(tmp_path)
    rules = ["a.w=from(s1.safetensors)", f"b.w=from({s1})", "c.w=from(./s2.safetensors)"]
    reinit.apply(tgt, rules, tmp_path / "o.safetensors")
    assert sorted(Path(p).name for p in opened) == ["s1.safetensors", "s2.safetensors"]
    o = load_file(tmp_path / "o.safetensors")
    assert torch.equal(o["a.w"], randn(2, seed=1)) and torch.equal(o["b.w"], randn(2, seed=2))
    assert torch.equal(o["c.w"], randn(2, seed=3))


def test_sharded_directory_source_reads_only_needed_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    s1 = {"enc.w": randn(3, 3, seed=1)}
    st(src / "model-00001-of-00002.safetensors", s1)
    (src / "model-00002-of-00002.safetensors").write_bytes(b"not a safetensors file at all")
    index = {
        "metadata": {},
        "weight_map": {
            "enc.w": "model-00001-of-00002.safetensors",
            "dec.w": "model-00002-of-00002.safetensors",
        },
    }
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    tgt = st(tmp_path / "t.safetensors", {"enc.w": torch.zeros(3, 3), "x": torch.ones(1)})
    reinit.apply(tgt, [f"enc.w=from({src})"], tmp_path / "o.safetensors")
    assert torch.equal(load_file(tmp_path / "o.safetensors")["enc.w"], s1["enc.w"])
    # asking for a tensor of the corrupt shard does fail, clearly
    res = run(
        "apply",
        str(tgt),
        "-r",
        f"enc.w=from({src}, key=dec.w)",
        "-o",
        str(tmp_path / "p.safetensors"),
    )
    assert res.exit_code == 1 and "model-00002-of-00002.safetensors" in res.output


def test_dry_run_shows_resolved_transplants(pair):
    tgt, src = pair
    rule = f"encoder.*=from({src}, key=auto)"
    res = run("apply", str(tgt), "--dry-run", "-r", rule, "--by", "tensor")
    assert res.exit_code == 0, res.output
    assert f"from({src}, key=auto) <- model.encoder.0.weight" in res.output
    assert "3 transplant" in res.output
    plan = reinit.plan(tgt, [f"encoder.*=from({src}, key=auto)"])
    assert {e.name: e.source_key for e in plan.entries if e.action == "transplant"} == {
        "encoder.0.weight": "model.encoder.0.weight",
        "encoder.0.bias": "model.encoder.0.bias",
        "encoder.1.weight": "model.encoder.1.weight",
    }


# --- memory -----------------------------------------------------------------------------


@pytest.mark.slow
def test_transplant_every_tensor_peak_rss_growth_is_bounded(tmp_path):
    src = tmp_path / "src.safetensors"
    size = make_checkpoint(src)
    assert size > 380 * MB
    tgt = tmp_path / "tgt.safetensors"
    layout = load_file_shapes(src)
    save_file({k: torch.zeros(s) for k, s in layout.items()}, tgt)
    growth = rss_growth(
        "apply", tgt, "-r", f"*=from({src})", "-o", "out.safetensors", "-q", cwd=tmp_path
    )
    print(f"source {size / MB:.0f} MB, growth {growth / MB:.0f} MB")
    from safetensors import safe_open

    with safe_open(src, "pt") as a, safe_open(tmp_path / "out.safetensors", "pt") as b:
        for k in ("layers.0.up.weight", "layers.11.down.bias"):
            assert torch.equal(a.get_tensor(k), b.get_tensor(k))
    assert growth < 200 * MB


def load_file_shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
