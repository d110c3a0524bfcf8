"""`--format dcp` of a transformers 5 mixture of experts, loaded as a training job loads a DCP:
`torch.distributed.checkpoint.load(model.state_dict(), ...)` into a fresh model built from
its config. The module holds stacked experts (`mlp.experts.gate_up_proj` `[E, 2I, H]`), the
checkpoint one tensor per expert: each per-expert tensor is written as its box (a chunk) of
the stacked parameter, never the stacked tensor whole; tied names are listed with the records
of the name they are tied to; a dense model's names are unchanged.

Internal: imports reinit.io.formats, reinit.planning.ckpt_names, reinit.planning.dcp_names."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import ROOT, run
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

DIMS = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
E = 4
EXPERTS = 2 * 3 * E  # per-expert tensors of the two layers
# a rule on the feed-forward weights, and the checkpoint tensors it changes
FFN = {"mixtral": ("*.experts.*", EXPERTS), "qwen3-moe": ("*.experts.*", EXPERTS),
       "qwen2-moe": ("*.experts.*", EXPERTS), "llama": ("*.mlp.*", 2 * 3)}  # fmt: skip


def config(kind: str, tie: bool = False) -> object:
    dims = {**DIMS, "tie_word_embeddings": tie}
    if kind == "mixtral":
        return transformers.MixtralConfig(**dims, num_local_experts=E, num_experts_per_tok=2)
    if kind == "qwen3-moe":
        return transformers.Qwen3MoeConfig(
            **dims, moe_intermediate_size=8, num_experts=E, num_experts_per_tok=2,
            decoder_sparse_step=1, mlp_only_layers=[],
        )  # fmt: skip
    if kind == "qwen2-moe":  # a shared expert and its gate beside the routed experts
        return transformers.Qwen2MoeConfig(
            **dims, moe_intermediate_size=8, shared_expert_intermediate_size=12, num_experts=E,
            num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
        )  # fmt: skip
    return transformers.LlamaConfig(**dims)


def saved(tmp_path: Path, kind: str, tie: bool = False) -> Path:
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config(kind, tie)).save_pretrained(
        tmp_path / kind
    )
    return tmp_path / kind


def metadata(folder: Path) -> object:
    return pickle.loads((folder / ".metadata").read_bytes())  # our own output


def loaded(kind: str, folder: Path, tie: bool = False) -> dict[str, torch.Tensor]:
    """A fresh model's `state_dict()` filled by `dcp.load` (strict: a key it lacks fails)."""
    state = transformers.AutoModelForCausalLM.from_config(config(kind, tie)).state_dict()
    dcp.load(state, checkpoint_id=folder)
    return state


def apply_both(src: Path, tmp_path: Path, *rules: str, said: str = "") -> tuple[Path, Path]:
    """The same apply (same seed) written as DCP and as a safetensors folder; `said`: a line
    the DCP run prints."""
    args = [a for r in rules for a in ("--rule", r)]
    out_dcp, out_st = tmp_path / "out-dcp", tmp_path / "out-st"
    res = run("apply", src, *args, "--format", "dcp", "-o", f"{out_dcp}/", "--seed", "7")
    assert res.exit_code == 0, res.output
    assert said in res.output, res.output
    res = run("apply", src, *args, "-o", f"{out_st}/", "-q", "--seed", "7")
    assert res.exit_code == 0, res.output
    return out_dcp, out_st


@pytest.mark.parametrize("kind", ["mixtral", "qwen3-moe", "qwen2-moe", "llama"])
def test_dcp_load_into_a_fresh_models_state_dict_equals_from_pretrained(kind, tmp_path):
    """Every tensor of the fresh model's `state_dict()` (none missing: `dcp.load` is strict)
    equals what `from_pretrained` of the safetensors output of the same apply holds, and the
    DCP names nothing the module lacks; the experts did change."""
    src = saved(tmp_path, kind)
    ffn, count = FFN[kind]
    out_dcp, out_st = apply_both(src, tmp_path, f"{ffn}=kaiming_normal", "*norm*=zeros")
    state = loaded(kind, out_dcp)
    want = transformers.AutoModelForCausalLM.from_pretrained(out_st).state_dict()
    assert state.keys() == want.keys() == metadata(out_dcp).state_dict_metadata.keys()
    for name, tensor in want.items():
        assert torch.equal(state[name], tensor), name
    before = load_file(src / "model.safetensors")
    after = load_file(out_st / "model.safetensors")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n in before if fnmatch(n, ffn) or "norm" in n}
    assert len([n for n in changed if "norm" not in n]) == count
    if kind == "llama":  # a dense model: the checkpoint's names, each tensor one whole chunk
        md = metadata(out_dcp).state_dict_metadata
        assert md.keys() == after.keys()
        assert all(
            len(md[n].chunks) == 1 and md[n].chunks[0].sizes == t.shape for n, t in after.items()
        )


@pytest.mark.parametrize("kind", ["mixtral", "qwen3-moe"])
def test_each_expert_is_a_chunk_of_the_stacked_parameter_never_the_whole(kind, tmp_path):
    """The stacked parameter is listed whole in `.metadata`, its chunks the per-expert tensors at
    their offsets (one record each, none larger than one expert's matrix); the report keeps the
    checkpoint's per-expert entries."""
    src = saved(tmp_path, kind)
    routers = 2 if kind == "mixtral" else 0  # Mixtral's block_sparse_moe.gate is mlp.gate
    said = f"{EXPERTS + routers} checkpoint tensors into {4 + routers} of the model's"
    out_dcp, _ = apply_both(src, tmp_path, "*.experts.*=kaiming_normal", said=said)
    md = metadata(out_dcp)
    fresh = transformers.AutoModelForCausalLM.from_config(config(kind)).state_dict()
    stacked = md.state_dict_metadata["model.layers.0.mlp.experts.gate_up_proj"]
    whole = fresh["model.layers.0.mlp.experts.gate_up_proj"].shape
    assert tuple(stacked.size) == tuple(whole)  # [E, 2I, H]
    half = whole[1] // 2
    assert sorted(tuple(c.offsets) for c in stacked.chunks) == sorted(
        (e, h, 0) for e in range(E) for h in (0, half)
    )
    assert {tuple(c.sizes) for c in stacked.chunks} == {(1, half, whole[2])}
    per_expert = max(
        half * whole[2], whole[2] * fresh["model.layers.0.mlp.experts.down_proj"].shape[2]
    )
    biggest = max(
        i.length for k, i in md.storage_data.items() if ".experts." in k.fqn
    )  # a torch.save record: the bytes and under 2 KB of zip framing
    assert per_expert * 4 < biggest < per_expert * 4 + 2048 < 2 * E * half * whole[2] * 4
    report = json.loads(Path(f"{out_dcp}.report.json").read_text())
    names = {t["name"] for t in report["tensors"]}
    assert len([n for n in names if ".experts." in n]) == EXPERTS  # per expert
    assert not [n for n in names if n.endswith("gate_up_proj")]


@pytest.mark.parametrize("kind", ["mixtral", "llama"])
def test_a_tied_model_lists_the_tied_name_with_the_same_records(kind, tmp_path):
    """`lm_head.weight` (tied, stored once by save_pretrained) is a key of `state_dict()`: the
    DCP lists it, pointing at the embedding's record (no bytes twice), so a strict load passes."""
    src = saved(tmp_path, kind, tie=True)
    out_dcp, out_st = apply_both(src, tmp_path, f"{FFN[kind][0]}=kaiming_normal")
    state = loaded(kind, out_dcp, tie=True)
    want = transformers.AutoModelForCausalLM.from_pretrained(out_st).state_dict()
    assert all(torch.equal(state[n], t) for n, t in want.items())
    md = metadata(out_dcp)
    records = {k.fqn: v for k, v in md.storage_data.items()}
    assert records["lm_head.weight"] == records["model.embed_tokens.weight"]


def test_new_of_a_mixtral_as_dcp_loads_into_its_state_dict(tmp_path):
    """`reinit new CONFIG --format dcp`: the model's own names, equal to `new`'s safetensors."""
    cfg = tmp_path / "cfg"
    made = config("mixtral")
    made.architectures = ["MixtralForCausalLM"]
    made.save_pretrained(cfg)
    for fmt, out in (("dcp", tmp_path / "d"), ("safetensors", tmp_path / "s")):
        res = run("new", cfg, "--format", fmt, "-o", f"{out}/", "-q", "--seed", "3")
        assert res.exit_code == 0, res.output
    state = loaded("mixtral", tmp_path / "d")
    want = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "s").state_dict()
    assert all(torch.equal(state[n], t) for n, t in want.items())


def test_an_output_missing_some_experts_keeps_the_checkpoint_names_and_says_why(tmp_path):
    """A dropped expert leaves its stacked parameter incomplete: the whole output keeps the
    checkpoint's names (all or nothing), with a note naming the parameter."""
    src = saved(tmp_path, "mixtral")
    out = tmp_path / "o"
    res = run("apply", src, "--drop", "model.layers.0.block_sparse_moe.experts.3.*",
              "--format", "dcp", "-o", f"{out}/")  # fmt: skip
    assert res.exit_code == 0, res.output
    names = set(metadata(out).state_dict_metadata)
    assert "model.layers.1.block_sparse_moe.experts.3.w1.weight" in names
    assert not [n for n in names if "gate_up_proj" in n]
    said = [line for line in res.output.splitlines() if "checkpoint's names" in line]
    assert len(said) == 1 and "model.layers.0.mlp.experts.gate_up_proj" in said[0], res.output


def test_a_transposed_expert_is_permuted_into_its_box(tmp_path):
    """A module that stacks experts transposed (`[E, H, I]` while each checkpoint matrix is
    `[I, H]`): the slice is a box with its axes swapped; the record holds it in the module's
    axis order, and `dcp.load` of the stacked tensor gives every expert transposed in place."""
    from reinit.io.formats import DcpWriter
    from reinit.planning.ckpt_names import CheckpointSlice
    from reinit.planning.dcp_names import module_box

    n_exp, hid, inter = 3, 4, 5
    experts = [
        torch.randn(inter, hid, generator=torch.Generator().manual_seed(e)) for e in range(n_exp)
    ]
    chunks, entries = {}, []
    for e in range(n_exp):
        index = (
            torch.tensor([[e]]),
            torch.arange(hid).view(1, hid),
            torch.arange(inter).view(inter, 1),
        )
        part = CheckpointSlice(f"experts.{e}.w", "stacked", (inter, hid), torch.float32, index,
                               (n_exp, hid, inter))  # fmt: skip
        assert torch.equal(part.take(torch.stack([x.T for x in experts])), experts[e])
        box = module_box(part)
        assert box is not None and box.offsets == (e, 0, 0) and box.perm == (1, 0)
        chunks[part.name] = box
        entries.append((part.name, "float32", (inter, hid)))  # DcpWriter takes dtype names
    out = tmp_path / "t"
    out.mkdir()
    with DcpWriter(out, entries, None, chunks) as w:
        for e, x in enumerate(experts):
            w.write_part(f"experts.{e}.w", x.numpy().tobytes())
            w.end_tensor(f"experts.{e}.w")
    state = {"stacked": torch.empty(n_exp, hid, inter)}
    dcp.load(state, checkpoint_id=out)
    assert torch.equal(state["stacked"], torch.stack([x.T for x in experts]))


def test_a_slice_that_is_no_box_is_not_placed():
    """Every other expert's row (a stride, not a run of indices) is no box: None."""
    from reinit.planning.ckpt_names import CheckpointSlice
    from reinit.planning.dcp_names import module_box

    index = (torch.tensor([[0]]), torch.arange(0, 8, 2).view(4, 1), torch.arange(3).view(1, 3))
    part = CheckpointSlice("x", "stacked", (4, 3), torch.float32, index, (2, 8, 3))
    assert module_box(part) is None


def test_a_dcp_with_the_modules_names_is_a_source_both_ways(tmp_path):
    """Read back, the DCP holds the module's names (stacked experts, whole shapes); its
    safetensors output keeps them and `from_pretrained` loads it with no key missing or
    unexpected; its `--format dcp` output loads into `state_dict()` again."""
    src = saved(tmp_path, "mixtral")
    out_dcp, out_st = apply_both(src, tmp_path, "*.experts.*=kaiming_normal")
    res = run("inspect", out_dcp, "--json")
    assert res.exit_code == 0, res.output
    shapes = {t["name"]: tuple(t["shape"]) for t in json.loads(res.stdout)}
    assert shapes["model.layers.1.mlp.experts.gate_up_proj"] == (E, 48, 16)
    back = tmp_path / "back"
    res = run("apply", out_dcp, "--rule", "*norm*=zeros", "-o", f"{back}/", "-q")
    assert res.exit_code == 0, res.output
    (back / "config.json").write_text((src / "config.json").read_text())
    model, info = transformers.AutoModelForCausalLM.from_pretrained(back, output_loading_info=True)
    assert not any(info.values()), info
    want = transformers.AutoModelForCausalLM.from_pretrained(out_st).state_dict()
    got = model.state_dict()
    assert all(torch.equal(got[n], t) for n, t in want.items() if "norm" not in n)
    again = tmp_path / "again"
    res = run("apply", out_dcp, "--rule", "*norm*=zeros", "--format", "dcp", "-o", f"{again}/")
    assert res.exit_code == 0, res.output
    assert torch.equal(loaded("mixtral", again)["model.layers.1.mlp.experts.down_proj"],
                       want["model.layers.1.mlp.experts.down_proj"])  # fmt: skip


@pytest.mark.slow
def test_a_job_of_two_processes_loads_it_into_sharded_dtensors(tmp_path):
    """As FSDP2 loads it: 2 gloo processes, the fresh model's tensors DTensors sharded by
    expert (dim 0) or along their last dim, every whole tensor equal to `from_pretrained`'s."""
    src = saved(tmp_path, "mixtral")
    out_dcp, out_st = apply_both(src, tmp_path, "*.experts.*=kaiming_normal")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "dcp_sharded_load.py"), str(out_dcp), str(out_st)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_boxes_must_cover_the_stacked_tensor_once():
    """Boxes that add up to the tensor's elements but overlap (so leave a hole) do not cover it;
    the experts' halves do."""
    from reinit.io.formats import DcpBox
    from reinit.planning.dcp_names import covers_once

    def box(offsets, sizes):
        return DcpBox("t", offsets, sizes, (2, 4, 3))

    halves = [box((e, h, 0), (1, 2, 3)) for e in range(2) for h in (0, 2)]
    assert covers_once(halves, (2, 4, 3))
    shifted = [*halves[:3], box((1, 1, 0), (1, 2, 3))]  # rows 1-2 of expert 1 twice, row 3 never
    assert not covers_once(shifted, (2, 4, 3))
    assert not covers_once(halves[:3], (2, 4, 3))


def test_expert_surgery_names_the_model_of_the_config_the_output_follows(tmp_path):
    """Dropping the last expert of every layer (and its router row) makes the output a 3-expert
    Mixtral (the folder's config.json says so): the DCP is written under that model's names,
    the stacked parameters whole from 3 experts' boxes, and `dcp.load` into a fresh 3-expert
    model equals `from_pretrained` of the safetensors output of the same surgery."""
    src = saved(tmp_path, "mixtral")
    routers = [f"model.layers.{i}.block_sparse_moe.gate.weight=[3,*]" for i in (0, 1)]
    surgery = ["--drop", "*.experts.3.*", *(a for r in routers for a in ("--resize", r))]
    out_dcp, out_st = tmp_path / "d", tmp_path / "s"
    for fmt, out in (("dcp", out_dcp), ("safetensors", out_st)):
        res = run("apply", src, *surgery, "--format", fmt, "-o", f"{out}/", "--seed", "7")
        assert res.exit_code == 0, res.output
    assert "3 experts" not in res.output, res.output  # the routers were resized: no warning
    cfg = transformers.AutoConfig.from_pretrained(out_st)
    assert cfg.num_local_experts == E - 1
    state = transformers.AutoModelForCausalLM.from_config(cfg).state_dict()
    dcp.load(state, checkpoint_id=out_dcp)
    want = transformers.AutoModelForCausalLM.from_pretrained(out_st).state_dict()
    assert state.keys() == want.keys() == metadata(out_dcp).state_dict_metadata.keys()
    assert all(torch.equal(state[n], t) for n, t in want.items())
    # the 4-expert source's experts do not line up with the 3-expert stacks: matched by name,
    # and said to be held under the model's names, not compared
    res = run("report", out_dcp, "--against", src)
    assert res.exit_code == 0 and "under 6 of the model's state_dict() names" in res.stderr
    assert "not compared" in res.stderr and "compared as" not in res.stderr
    # its recorded surgery, replayed on the source, gives the DCP's tensors as the writer placed
    # them: said so, not blamed on the baseline (was: 'does not give its tensors (another
    # baseline, or a file changed after apply)', both false)
    assert "another baseline" not in res.stderr, res.stderr
    assert "under the model's state_dict() names (a --format dcp output)" in res.stderr
    # the dropped expert is the report's `dropped`, not said to be held in the DCP (was: 26)
    assert "20 tensor(s) of the baseline are held in" in res.stderr, res.stderr
    doc = json.loads(run("report", out_dcp, "--against", src, "--json").stdout)
    assert sorted(doc["dropped"]) == sorted(
        f"model.layers.{i}.block_sparse_moe.experts.3.{w}.weight"
        for i in (0, 1)
        for w in ("w1", "w2", "w3")
    )
    res = run("diff", src, out_dcp)
    assert res.exit_code == 0 and "26 removed tensor(s)" in res.output
    assert "are held in" in res.output and "compared as" not in res.output


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"auto_map": {"AutoModelForCausalLM": "modeling_x.MyMixtral"}}, "auto_map"),
        ({"model_type": "nosuchmodel"}, "nosuchmodel"),
    ],
)
def test_a_config_that_is_not_built_keeps_the_checkpoint_names_and_says_why(edit, said, tmp_path):
    """A source whose config.json names a model reinit does not build (custom code, a type this
    transformers lacks) is written under the checkpoint's names, and a note says so and why:
    the training job's module may name its tensors otherwise."""
    src = saved(tmp_path, "mixtral")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **edit}))
    out = tmp_path / "o"
    res = run("apply", src, "--rule", "*norm*=zeros", "--format", "dcp", "-o", f"{out}/")
    assert res.exit_code == 0, res.output
    names = set(metadata(out).state_dict_metadata)
    assert names == set(load_file(src / "model.safetensors"))
    notes = [line for line in res.output.splitlines() if "checkpoint's names" in line]
    assert len(notes) == 1 and said in notes[0] and "--model" not in notes[0], res.output


@pytest.mark.parametrize("kind", ["mixtral", "qwen3-moe"])
def test_a_rule_on_the_stacked_parameter_scales_as_on_each_expert(kind, tmp_path):
    """`kaiming_normal` on the module-named DCP's stacked experts (`[E, 2I, H]`), with the
    source as `--model`, uses each expert matrix's fans (fan_in H), as the same rule on the
    per-expert source does, not torch's 2I*H of the 3-D tensor (a std 2I times too small)."""
    src = saved(tmp_path, kind)
    out_dcp, _ = apply_both(src, tmp_path, "*norm*=zeros")
    expected = {}
    for source, model, out in ((src, [], "per-expert"), (out_dcp, ["--model", src], "stacked")):
        res = run("apply", source, *model, "--rule", "*.experts.*=kaiming_normal",
                  "-o", f"{tmp_path / out}/", "-q", "--report", tmp_path / f"{out}.json")  # fmt: skip
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / f"{out}.json").read_text())
        stds = {t["expected_std"] for t in report["tensors"] if ".experts." in t["name"]}
        expected[out] = sorted(round(x, 6) for x in stds)
    inter = 24 if kind == "mixtral" else 8  # w2's fan_in; w1's and w3's is H = 16
    assert expected["per-expert"] == sorted(round((2 / n) ** 0.5, 6) for n in (16, inter))
    assert expected["stacked"] == expected["per-expert"]


def test_legacy_names_are_written_under_the_names_transformers_loads_them_as(tmp_path):
    """A BERT checkpoint of the old `LayerNorm.gamma`/`beta` names (which `from_pretrained`
    renames as it loads, by transformers' legacy conversion mapping): the DCP holds them
    under the module's `LayerNorm.weight`/`bias`, so a strict `dcp.load` into a fresh
    model's `state_dict()` equals `from_pretrained` of the safetensors output."""
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=24,
                                  max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    src = tmp_path / "bert"
    transformers.BertForMaskedLM(cfg).save_pretrained(src)
    from safetensors.torch import save_file

    state = load_file(src / "model.safetensors")
    legacy = {n.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
              "LayerNorm.beta"): t for n, t in state.items()}  # fmt: skip
    assert len([n for n in legacy if n.endswith(".gamma")]) == 6
    save_file(legacy, src / "model.safetensors", metadata={"format": "pt"})
    out_dcp, out_st = apply_both(src, tmp_path, "*.dense.weight=normal(0,0.02)")
    fresh = transformers.BertForMaskedLM(cfg).state_dict()
    dcp.load(fresh, checkpoint_id=out_dcp)
    model, info = transformers.BertForMaskedLM.from_pretrained(out_st, output_loading_info=True)
    assert not any(info.values()), info
    assert all(torch.equal(fresh[n], t) for n, t in model.state_dict().items())
    assert not [n for n in metadata(out_dcp).state_dict_metadata if n.endswith((".gamma", ".beta"))]


def _other(kind: str) -> tuple[type, object]:
    t = transformers
    if kind == "gpt2":  # Conv1D weights, stored [in, out]
        return t.GPT2LMHeadModel, t.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2,
                                              n_positions=32)  # fmt: skip
    if kind == "vit":  # checkpoint names transformers renames (attention.attention.key)
        return t.ViTForImageClassification, t.ViTConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            image_size=16, patch_size=8, num_labels=3,
        )  # fmt: skip
    return t.T5ForConditionalGeneration, t.T5Config(  # shared, encoder/decoder embeddings tied
        vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
        tie_word_embeddings=True,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["gpt2", "vit", "t5"])
def test_other_architectures_load_strictly_equal_to_from_pretrained(kind, tmp_path):
    """GPT-2 (Conv1D), ViT (renamed checkpoint names), T5 (four names tied to one): a strict
    `dcp.load` into a fresh model's `state_dict()` equals `from_pretrained` of the
    safetensors output of the same apply."""
    cls, cfg = _other(kind)
    torch.manual_seed(0)
    cls(cfg).save_pretrained(tmp_path / kind)
    out_dcp, out_st = apply_both(tmp_path / kind, tmp_path, "*=normal(0,0.02)")
    state = cls(cfg).state_dict()
    dcp.load(state, checkpoint_id=out_dcp)
    model, info = cls.from_pretrained(out_st, output_loading_info=True)
    assert not any(info.values()), info
    want = model.state_dict()
    assert state.keys() == want.keys()
    assert all(torch.equal(state[n], t) for n, t in want.items())


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_a_tied_name_read_back_stays_tied_under_a_rule(kind, tmp_path):
    """Read back, a DCP's tied names (listed with the same records) are one tensor: a rule
    that redraws every tensor draws it once, so the output's `lm_head.weight` (T5: its four
    embedding names) equal the kept name's, and `from_pretrained` ties them again."""
    if kind == "t5":
        cls, cfg = _other("t5")
        tied = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                "lm_head.weight"]  # fmt: skip
    else:
        cls, cfg = transformers.LlamaForCausalLM, config("llama", tie=True)
        tied = ["model.embed_tokens.weight", "lm_head.weight"]
    torch.manual_seed(0)
    cls(cfg).save_pretrained(tmp_path / kind)
    out_dcp, _ = apply_both(tmp_path / kind, tmp_path, "*norm*=zeros")
    back = tmp_path / "back"
    res = run("apply", out_dcp, "--rule", "*=normal(0,0.02)", "-o", f"{back}/", "-q")
    assert res.exit_code == 0, res.output
    state = load_file(back / "model.safetensors")
    assert all(torch.equal(state[n], state[tied[0]]) for n in tied)
    (back / "config.json").write_text((tmp_path / kind / "config.json").read_text())
    model = cls.from_pretrained(back)
    assert model.state_dict()[tied[-1]].data_ptr() == model.state_dict()[tied[0]].data_ptr()


@pytest.mark.parametrize("kind", ["mixtral", "qwen3-moe"])
def test_report_against_the_per_expert_source_compares_the_stacked_values(kind, tmp_path):
    """`report DCP --against SOURCE`: the source's per-expert tensors are stacked as the DCP
    holds them (the writer's own placement, read backwards), so each stacked parameter has its
    `before` (the std of the module tensor `from_pretrained` of the source builds) and is
    "changed vs baseline" only where the rule changed it; a note says how they were compared."""
    src = saved(tmp_path, kind)
    out_dcp, _ = apply_both(src, tmp_path, "model.layers.0.*experts.*=kaiming_normal")
    res = run("report", out_dcp, "--against", src, "--json")
    assert res.exit_code == 0, res.output
    assert "not compared" not in res.stderr and "are not in" not in res.stderr, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note: ")]
    routers = 2 if kind == "mixtral" else 0  # Mixtral's block_sparse_moe.gate: renamed whole
    said = f"{EXPERTS + routers} tensor(s) of {src} compared as the {4 + routers} tensor(s)"
    assert len(notes) == 1 and said in notes[0], notes
    by = {t["name"]: t for t in json.loads(res.stdout)["tensors"]}
    module = transformers.AutoModelForCausalLM.from_pretrained(src).state_dict()
    for layer in (0, 1):
        for p in ("gate_up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.experts.{p}"
            entry = by[name]
            assert entry["before"]["std"] == pytest.approx(module[name].std(correction=0).item())
            assert ("changed vs baseline" in entry["notes"]) == (layer == 0), entry
            assert entry["action"] == ("reinit" if layer == 0 else "kept")
    assert by["model.layers.0.mlp.gate.weight"]["action"] == "kept"  # a router, renamed whole


@pytest.mark.parametrize("kind", ["mixtral", "qwen3-moe"])
def test_report_of_the_per_expert_source_against_the_dcp_compares_the_stacked_values(
    kind, tmp_path
):
    """`report SOURCE --against DCP` (the other way round): SOURCE's per-expert tensors are
    stacked as the DCP holds them, so each stacked parameter has the DCP's tensor as its
    `before` and is "changed vs baseline" only where the rule changed it. Was: matched by name,
    every per-expert tensor "not in baseline" and the DCP's stacked ones listed as missing."""
    src = saved(tmp_path, kind)
    out_dcp, _ = apply_both(src, tmp_path, "model.layers.0.*experts.*=kaiming_normal")
    res = run("report", src, "--against", out_dcp, "--json")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note: ")]
    routers = 2 if kind == "mixtral" else 0
    said = f"{EXPERTS + routers} tensor(s) of {src} compared as the {4 + routers} tensor(s)"
    assert len(notes) == 1 and said in notes[0] and str(out_dcp) in notes[0], notes
    doc = json.loads(res.stdout)
    by = {t["name"]: t for t in doc["tensors"]}
    after = loaded(kind, out_dcp)  # the baseline: what `dcp.load` of the DCP gives
    module = transformers.AutoModelForCausalLM.from_pretrained(src).state_dict()
    assert set(by) == set(after)  # under the model's names, every one
    for name, entry in by.items():
        assert entry["before"]["std"] == pytest.approx(after[name].std(correction=0).item())
        assert entry["after"]["std"] == pytest.approx(module[name].std(correction=0).item())
        assert ("changed vs baseline" in entry["notes"]) == ("layers.0.mlp.experts." in name)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3-moe"])
def test_diff_with_the_per_expert_source_compares_the_stacked_values(kind, tmp_path):
    """`diff SOURCE DCP` (and the other way round) compares the stacked parameters: changed
    where the rule changed them, by the max |Δ| between `from_pretrained` of the source and
    `dcp.load` of the DCP, identical elsewhere; nothing added or removed; `--json` carries the
    note."""
    src = saved(tmp_path, kind)
    out_dcp, _ = apply_both(src, tmp_path, "model.layers.0.*experts.*=kaiming_normal")
    before = transformers.AutoModelForCausalLM.from_pretrained(src).state_dict()
    after = loaded(kind, out_dcp)
    for a, b in ((src, out_dcp), (out_dcp, src)):
        res = run("diff", a, b, "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        routers = 2 if kind == "mixtral" else 0
        said = f"compared as the {4 + routers} tensor(s)"
        assert len(doc["notes"]) == 1 and said in doc["notes"][0], doc["notes"]
        by = {t["name"]: t for t in doc["tensors"]}
        assert {t["status"] for t in doc["tensors"]} == {"changed", "identical"}
        assert set(by) == set(after)  # under the model's names, every one
        for name, t in by.items():
            want = (after[name].double() - before[name].double()).abs().max().item()
            assert t["status"] == ("identical" if want == 0 else "changed"), name
            assert t["max_abs_diff"] == pytest.approx(want), name
            assert ("layers.0.mlp.experts." in name) == (want > 0), name


def test_per_expert_tensors_stored_transposed_are_stacked_back_in_place():
    """The stacked view of per-expert tensors whose module stacks them transposed (`[E, H, I]`
    from `[I, H]` matrices): each is permuted back into its box, as the DCP writer put it."""
    from reinit.io.formats import DcpBox
    from reinit.io.memory import StateDictCheckpoint
    from reinit.planning.dcp_names import DcpNames
    from reinit.planning.model_named import ModelNamedCheckpoint

    n_exp, hid, inter = 3, 4, 5
    g = torch.Generator().manual_seed(0)
    experts = {f"experts.{e}.w": torch.randn(inter, hid, generator=g) for e in range(n_exp)}
    boxes = {
        f"experts.{e}.w": DcpBox("stacked", (e, 0, 0), (1, hid, inter), (n_exp, hid, inter), (1, 0))
        for e in range(n_exp)
    }
    base = StateDictCheckpoint({**experts, "other": torch.ones(2)})
    seen = ModelNamedCheckpoint(base, DcpNames(boxes))
    assert seen.names() == ["stacked", "other"]
    assert seen.ref("stacked").shape == (n_exp, hid, inter)
    assert torch.equal(seen.read("stacked"), torch.stack([x.T for x in experts.values()]))
    assert torch.equal(seen.read("other"), torch.ones(2))
