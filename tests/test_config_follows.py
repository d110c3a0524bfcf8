"""Issue 14 item 1: a directory output's config.json follows the surgery (`--config`, `--labels`,
implied vocab_size/num_labels/num_hidden_layers), a file output with --config gets config.json
beside it, and the source's stale reports and model card are not copied. Each output is loaded
by its consumer with no missing, unexpected or mismatched keys and no warnings.

Internal: also tests reinit.run.config_update directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file

import reinit
from reinit.run.config_update import stale_file, update_config

transformers = pytest.importorskip("transformers")


def _minilm(path, layers=2):
    """A MiniLM-shaped tiny BertModel saved as transformers saves it, with a stale card and
    report beside it."""
    import torch

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    transformers.BertModel(cfg).save_pretrained(path)
    (path / "README.md").write_text("# the source's model card\n")
    (path / "reinit-report.json").write_text("{}\n")
    (path / "old.report.md").write_text("stale\n")


def _load_clean(auto, path, caplog):
    """Load `path` with `auto`; assert no missing/unexpected/mismatched key and no warning."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model, info = auto.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    assert [str(w.message) for w in seen] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    return model


def test_minilm_becomes_a_3_label_classifier_that_loads_as_one(tmp_path, caplog):
    _minilm(tmp_path / "src")
    out = tmp_path / "out"
    res = run(
        "apply", tmp_path / "src", "--rename", "*=bert.{1}",
        "--add", "classifier.weight=[3,32]:xavier_uniform", "--add", "classifier.bias=[3]:zeros",
        "--labels", "neg,neu,pos",
        "--config", 'architectures=["BertForSequenceClassification"]',
        "-o", f"{out}/", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
    assert any("num_labels 2 -> 3" in n for n in notes), notes
    assert any("architectures" in n for n in notes), notes
    assert sum("not copied" in n for n in notes) == 3, notes  # README.md and both reports
    assert not (out / "README.md").exists() and not (out / "old.report.md").exists()
    assert json.loads((out / "reinit-report.json").read_text())["output"]  # ours, not the stale {}
    model = _load_clean(transformers.AutoModelForSequenceClassification, out, caplog)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.num_labels == 3
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}


def test_dropping_a_layer_sets_num_hidden_layers_and_loads(tmp_path, caplog):
    _minilm(tmp_path / "src")
    out = tmp_path / "cut"
    res = run("apply", tmp_path / "src", "--drop", "encoder.layer.1.*", "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    assert "note: config.json: num_hidden_layers 2 -> 1" in res.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    model = _load_clean(transformers.AutoModel, out, caplog)
    assert len(model.encoder.layer) == 1


def test_dropping_a_layer_of_a_qwen2_shortens_layer_types_and_loads(tmp_path, caplog):
    """Qwen2 (like Qwen3, Gemma 2/3) has a per-layer `layer_types` list that transformers checks
    against `num_hidden_layers`: cutting layers must shorten it, or the output does not load
    ("`num_hidden_layers` (2) must be equal to the number of `layer_types` (3)")."""
    import torch

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "src")
    out = tmp_path / "cut"
    res = run("apply", tmp_path / "src", "--drop", "model.layers.2.*", "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    assert "note: config.json: layer_types" in res.stderr, res.stderr
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] == 2
    assert written["layer_types"] == ["full_attention"] * 2
    model = _load_clean(transformers.AutoModelForCausalLM, out, caplog)
    assert len(model.model.layers) == 2


def test_the_renumber_hint_is_a_rename_that_runs(tmp_path, caplog):
    """Dropping a middle layer leaves indices 0, 2; the note's example --rename must be one the
    CLI takes (it said 'encoder.layer.3.*=encoder.layer.1.{2}', whose glob has one capture)
    and that, given, makes the output load."""
    import re

    _minilm(tmp_path / "src", layers=3)
    res = run(
        "apply", tmp_path / "src", "--drop", "encoder.layer.1.*", "-o", tmp_path / "gap", "-q"
    )
    assert res.exit_code == 0, res.output
    hint = re.search(r"--rename '([^']*)'", res.stderr)
    assert hint and hint.group(1) == "encoder.layer.2.*=encoder.layer.1.{1}", res.stderr
    out = tmp_path / "renumbered"
    args = ["--drop", "encoder.layer.1.*", "--rename", hint.group(1), "-o", f"{out}/", "-q"]
    res = run("apply", tmp_path / "src", *args)
    assert res.exit_code == 0, res.output
    assert "not 0..1" not in res.stderr
    model = _load_clean(transformers.AutoModel, out, caplog)
    assert len(model.encoder.layer) == 2


@pytest.mark.parametrize(
    ("make", "table", "auto", "key"),
    [
        ("gpt2", "transformer.wpe.weight", "AutoModelForCausalLM", "n_positions"),
        ("bert", "embeddings.position_embeddings.weight", "AutoModel", "max_position_embeddings"),
    ],
)
def test_a_resized_position_table_sets_the_positions_and_loads(
    tmp_path, caplog, make, table, auto, key
):
    """Growing the learned position table (GPT-2's wpe, BERT's position_embeddings) from 32 to
    64 rows must set n_positions / max_position_embeddings, or the output does not load (a
    size mismatch)."""
    import torch

    torch.manual_seed(0)
    if make == "gpt2":
        cfg = transformers.GPT2Config(
            n_embd=16, n_layer=1, n_head=2, vocab_size=40, n_positions=32, bos_token_id=1,
            eos_token_id=2,
        )  # fmt: skip
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "src")
    else:
        _minilm(tmp_path / "src")
        cfg_path = tmp_path / "src" / "config.json"
        assert json.loads(cfg_path.read_text())["max_position_embeddings"] == 512
        table_rows = 512
    out = tmp_path / "out"
    rows = 64 if make == "gpt2" else 1024
    res = run("apply", tmp_path / "src", "--resize", f"{table}=[{rows},*]", "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    old = 32 if make == "gpt2" else table_rows
    assert f"note: config.json: {key} {old} -> {rows}" in res.stderr, res.stderr
    assert json.loads((out / "config.json").read_text())[key] == rows
    _load_clean(getattr(transformers, auto), out, caplog)


def test_layer_types_follow_the_layer_indices_unit():
    shapes = {"model.layers.0.w": (4, 4), "model.layers.1.w": (4, 4)}
    mixed = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    cut = update_config({"num_hidden_layers": 4, "layer_types": mixed}, shapes)
    assert cut.config["layer_types"] == mixed[:2]
    assert any("layer_types" in n and "by layer index" in n for n in cut.notes), cut.notes
    grown = {f"model.layers.{i}.w": (4, 4) for i in range(3)}
    up = update_config({"num_hidden_layers": 2, "layer_types": ["full_attention"] * 2}, grown)
    assert up.config["layer_types"] == ["full_attention"] * 3
    odd = update_config({"num_hidden_layers": 2, "layer_types": ["a", "b"]}, grown)
    assert odd.config["layer_types"] == ["a", "b"]  # no way to know layer 2's type
    assert any("--config" in n and "layer_types" in n for n in odd.notes), odd.notes
    # set by the user: theirs wins, whatever the surgery implies
    mine = update_config(
        {"num_hidden_layers": 4, "layer_types": mixed}, shapes, (("layer_types", ["x", "y"]),)
    )
    assert mine.config["layer_types"] == ["x", "y"]


def test_a_file_output_with_config_writes_config_json_beside_it(tmp_path, caplog):
    _minilm(tmp_path / "src")
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "model.safetensors"
    args = ["apply", tmp_path / "src" / "model.safetensors", "--rule", "pooler.*=zeros"]
    res = run(*args, "--config", "layer_norm_eps=1e-6", "-o", out)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    # the source file's own config.json (beside it) with the change: the folder loads as a model
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["vocab_size"] == 100
    model = _load_clean(transformers.AutoModel, tmp_path / "o", caplog)
    assert model.config.layer_norm_eps == 1e-6
    # an existing config.json beside the output is never replaced without --overwrite
    again = [*args, "--config", "hidden_size=32", "-o", tmp_path / "o" / "m2.safetensors"]
    refused(tmp_path, again, 2, "config.json", "--overwrite")


def test_without_config_a_file_output_writes_no_config(tmp_path):
    _minilm(tmp_path / "src")
    out = tmp_path / "m.safetensors"
    res = run(
        "apply", tmp_path / "src" / "model.safetensors", "--rule", "pooler.*=zeros", "-o", out
    )
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "config.json").exists()


def test_config_values_are_json_and_labels_must_match_the_head(tmp_path):
    _minilm(tmp_path / "src")
    src = tmp_path / "src"
    refused(tmp_path, ["apply", src, "--rule", "pooler.*=zeros", "--config", "a=b c"], 2, "JSON")
    refused(tmp_path, ["apply", src, "--rule", "pooler.*=zeros", "--config", "novalue"], 2, "KEY")
    grow = ["--add", "classifier.weight=[3,32]:zeros", "--labels", "a,b"]
    refused(tmp_path, ["apply", src, *grow], 2, "2 labels", "3 rows")
    refused(tmp_path, ["apply", src, "--rule", "pooler.*=zeros", "--labels", "a,b"], 2, "head")


def test_grown_embeddings_set_vocab_size_through_the_api(tmp_path):
    _minilm(tmp_path / "src")
    add = "embeddings.word_embeddings.weight=[108,32]:normal(std=0.02)"
    report = reinit.apply(
        tmp_path / "src",
        [],
        tmp_path / "grown",
        drop=["embeddings.word_embeddings.weight"],
        add=[add],
        config_set=["tie_word_embeddings=false"],
    )
    cfg = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert cfg["vocab_size"] == 108 and cfg["tie_word_embeddings"] is False
    assert any("vocab_size 100 -> 108" in n for n in report.notes), report.notes


def test_a_recipe_sets_config_and_labels(tmp_path):
    _minilm(tmp_path / "src")
    recipe = tmp_path / "r.json"
    recipe.write_text(
        json.dumps(
            {
                "source": str(tmp_path / "src"),
                "output": str(tmp_path / "r-out") + "/",
                "config": ['problem_type="single_label_classification"'],
                "labels": "x,y",
                "steps": [
                    {"rules": ["pooler.dense.weight=zeros"]},
                    {"add": ["classifier.weight=[2,32]:zeros", "classifier.bias=[2]:zeros"]},
                ],
            }
        )
    )
    res = run("run", recipe, "-q")
    assert res.exit_code == 0, res.output
    assert "note: config.json: id2label" in res.stderr  # a multi-step recipe prints its notes
    cfg = json.loads((tmp_path / "r-out" / "config.json").read_text())
    assert cfg["problem_type"] == "single_label_classification"
    assert cfg["id2label"] == {"0": "x", "1": "y"}


def test_update_config_unit():
    shapes = {
        "model.layers.0.w": (4, 4),
        "model.layers.1.w": (4, 4),
        "model.embed_tokens.weight": (9, 4),
    }
    up = update_config({"vocab_size": 8, "num_hidden_layers": 4}, shapes)
    assert up.config == {"vocab_size": 9, "num_hidden_layers": 2} and up.changed
    assert len(up.notes) == 2
    same = update_config({"vocab_size": 9, "num_hidden_layers": 2}, shapes)
    assert not same.changed and same.notes == ()
    gap = update_config({"num_hidden_layers": 4}, {"h.0.w": (1,), "h.3.w": (1,)})
    assert any("not 0..1" in n for n in gap.notes)
    assert (
        stale_file("README.md") and stale_file("x.report.csv") and stale_file("reinit-report.json")
    )
    assert not stale_file("config.json") and not stale_file("docs/notes.md")


def test_a_lone_file_with_config_gets_just_those_fields(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, tmp_path / "lone.safetensors")
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "lone.safetensors"
    res = run(
        "apply",
        tmp_path / "lone.safetensors",
        "--rule",
        "w=ones",
        "--config",
        'model_type="x"',
        "-o",
        out,
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "config.json").read_text()) == {"model_type": "x"}


def test_without_surgery_config_json_is_copied_byte_for_byte(tmp_path):
    _minilm(tmp_path / "src")
    res = run("apply", tmp_path / "src", "--rule", "pooler.*=zeros", "-o", f"{tmp_path / 'o'}/")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "config.json").read_bytes() == (
        tmp_path / "src" / "config.json"
    ).read_bytes()
    assert "note: config.json" not in res.stderr


def test_in_place_surgery_updates_config_and_keeps_the_card(tmp_path):
    _minilm(tmp_path / "src")
    res = run("apply", tmp_path / "src", "--drop", "encoder.layer.1.*", "--in-place")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "src" / "config.json").read_text())["num_hidden_layers"] == 1
    assert (tmp_path / "src" / "README.md").read_text() == "# the source's model card\n"
    assert "not copied" not in res.stderr  # nothing is copied in place: the card stays


# --- encoder-decoder stacks and experts (QA of surgery, config follows) ---------------------


def _save(model_cls, cfg, path):
    import torch

    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(path)


@pytest.mark.parametrize(
    ("drop", "want"),
    [("decoder.block.2.*", {"num_layers": 3, "num_decoder_layers": 2}),
     ("encoder.block.2.*", {"num_layers": 2, "num_decoder_layers": 3})],
)  # fmt: skip
def test_cutting_one_stack_of_a_t5_sets_that_stacks_count_and_loads(tmp_path, caplog, drop, want):
    """T5 counts its encoder's blocks in `num_layers` and its decoder's in
    `num_decoder_layers`: a layer dropped from one stack changes that stack's count only (the
    union of both stacks' indices was counted, so nothing changed and the output did not load:
    the dropped block's keys were missing)."""
    cfg = transformers.T5Config(
        d_model=16, d_kv=4, d_ff=32, num_layers=3, num_heads=4, vocab_size=64,
    )  # fmt: skip
    _save(transformers.T5ForConditionalGeneration, cfg, tmp_path / "src")
    out = tmp_path / "cut"
    res = run("apply", tmp_path / "src", "--drop", drop, "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    written = json.loads((out / "config.json").read_text())
    assert {k: written[k] for k in want} == want
    model = _load_clean(transformers.T5ForConditionalGeneration, out, caplog)
    assert len(model.encoder.block) == want["num_layers"]
    assert len(model.decoder.block) == want["num_decoder_layers"]


def test_cutting_a_bart_decoder_layer_sets_decoder_layers_and_loads(tmp_path, caplog):
    """BART counts its stacks in `encoder_layers` / `decoder_layers` (no `num_hidden_layers`
    in its config.json): a dropped decoder layer must set `decoder_layers`."""
    cfg = transformers.BartConfig(
        d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64,
        max_position_embeddings=32,
    )  # fmt: skip
    _save(transformers.BartForConditionalGeneration, cfg, tmp_path / "src")
    out = tmp_path / "cut"
    res = run(
        "apply", tmp_path / "src", "--drop", "model.decoder.layers.1.*", "-o", f"{out}/", "-q"
    )
    assert res.exit_code == 0, res.output
    assert "note: config.json: decoder_layers 2 -> 1" in res.stderr, res.stderr
    written = json.loads((out / "config.json").read_text())
    assert (written["encoder_layers"], written["decoder_layers"]) == (2, 1)
    model = _load_clean(transformers.BartForConditionalGeneration, out, caplog)
    assert len(model.model.decoder.layers) == 1


def _mixtral(path):
    cfg = transformers.MixtralConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, num_local_experts=4,
        num_experts_per_tok=2,
    )  # fmt: skip
    _save(transformers.MixtralForCausalLM, cfg, path)


def test_dropping_an_expert_sets_the_expert_count_and_loads(tmp_path, caplog):
    """Mixtral's last expert dropped from every layer (and its router row cut): the output is a
    3-expert Mixtral, so `num_local_experts` must say 3 or transformers builds 4 and the
    router's rows mismatch."""
    _mixtral(tmp_path / "src")
    out = tmp_path / "cut"
    res = run(
        "apply", tmp_path / "src", "--drop", "model.layers.*.block_sparse_moe.experts.3.*",
        "--resize", "model.layers.0.block_sparse_moe.gate.weight=[3,*]",
        "--resize", "model.layers.1.block_sparse_moe.gate.weight=[3,*]",
        "-o", f"{out}/", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "note: config.json: num_local_experts 4 -> 3" in res.stderr, res.stderr
    assert json.loads((out / "config.json").read_text())["num_local_experts"] == 3
    model = _load_clean(transformers.MixtralForCausalLM, out, caplog)
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 3


def test_experts_that_no_config_can_describe_get_a_note(tmp_path):
    """Experts dropped from one layer only (3 in one, 4 in the other), or a middle one dropped
    (indices 0, 1, 3): no expert count loads that; the run says so instead of writing a
    config.json that silently does not fit."""
    _mixtral(tmp_path / "src")
    uneven = run(
        "apply", tmp_path / "src", "--drop", "model.layers.1.block_sparse_moe.experts.3.*",
        "-o", f"{tmp_path / 'uneven'}/", "-q",
    )  # fmt: skip
    assert uneven.exit_code == 0, uneven.output
    assert "experts per layer differ" in uneven.stderr, uneven.stderr
    gap = run(
        "apply", tmp_path / "src", "--drop", "model.layers.*.block_sparse_moe.experts.2.*",
        "-o", f"{tmp_path / 'gap'}/", "-q",
    )  # fmt: skip
    assert gap.exit_code == 0, gap.output
    assert "expert indices [0, 1, 3] are not 0..2" in gap.stderr, gap.stderr
    assert "--rename 'model.layers.*.block_sparse_moe.experts.3.*=" in gap.stderr, gap.stderr
    # the router's rows follow the expert indices: it needs rows 0, 1, 3, which `--resize`
    # (it keeps the first rows) does not give, so no `--resize` is offered for it
    assert (
        "block_sparse_moe.gate.weight has 4 rows for experts [0, 1, 3]: transformers will not "
        "load it; its rows follow the expert indices, so it needs rows [0, 1, 3], not the first 3 "
        "that --resize keeps"
    ) in gap.stderr, gap.stderr
    assert "gate.weight=[3,*]" not in gap.stderr, gap.stderr


def test_a_router_cut_to_its_first_rows_after_a_middle_expert_is_dropped_is_warned(tmp_path):
    """Following the notes for a dropped middle expert by the letter (drop expert 2, rename 3
    to 2, `--resize` each router to 3 rows) writes a model that loads and routes wrongly: the
    router keeps row 2 (the dropped expert's) for the expert renumbered 2, and expert 3's row
    is gone. The run says so (it said nothing); dropping the last expert is not warned."""
    _mixtral(tmp_path / "src")
    moe = "model.layers.{}.block_sparse_moe."
    resize = [f"--resize={moe.format(i)}gate.weight=[3,*]" for i in (0, 1)]
    res = run(
        "apply", tmp_path / "src", "--drop", "model.layers.*.block_sparse_moe.experts.2.*",
        "--rename", "model.layers.*.block_sparse_moe.experts.3.*="
        "model.layers.{1}.block_sparse_moe.experts.2.{2}",
        *resize, "-o", f"{tmp_path / 'mid'}/", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        f"warning: --resize '{moe.format(0)}gate.weight=[3,*]' keeps the first 3 entries of "
        f"'{moe.format(0)}gate.weight' along its experts axis, but --drop took expert 2 of that "
        "layer: its router entry stays and expert 3's is lost (entry i routes to expert i); "
        "re-initialize the router with a rule, or drop the last experts instead"
    ) in res.stderr, res.stderr
    src, out = (load_file(p / "model.safetensors") for p in (tmp_path / "src", tmp_path / "mid"))
    router = f"{moe.format(0)}gate.weight"  # what the warning says: rows 0..2 of the source
    assert torch.equal(out[router], src[router][:3])
    last = run(
        "apply", tmp_path / "src", "--drop", "model.layers.*.block_sparse_moe.experts.3.*",
        *resize, "-o", f"{tmp_path / 'last'}/", "-q",
    )  # fmt: skip
    assert last.exit_code == 0 and "warning" not in last.stderr, last.output
    fresh = run(  # the router re-initialized by a rule: nothing routes by a dropped row
        "apply", tmp_path / "src", "--drop", "model.layers.*.block_sparse_moe.experts.2.*",
        "--rename", "model.layers.*.block_sparse_moe.experts.3.*="
        "model.layers.{1}.block_sparse_moe.experts.2.{2}",
        *resize, "--rule", "*.gate.weight=normal(std=0.02)", "-o", f"{tmp_path / 'fresh'}/", "-q",
    )  # fmt: skip
    assert fresh.exit_code == 0 and "warning" not in fresh.stderr, fresh.output


DEEPSEEK = dict(
    vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=8,
    q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_routed_experts=4,
    num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
    max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip


def test_dropping_an_expert_names_every_router_tensor_to_resize(tmp_path, caplog):
    """DeepSeek-V3's router keeps a bias per expert beside its weight
    (`mlp.gate.e_score_correction_bias` [E]): with the weight's rows cut and the bias not, the
    output did not load (a size mismatch) and the run said nothing. The note names the bias and
    its `--resize`; with it, the 3-expert model loads and keeps the first 3 experts' values."""
    cfg = transformers.DeepseekV3Config(**DEEPSEEK)
    _save(transformers.DeepseekV3ForCausalLM, cfg, tmp_path / "src")
    cut = ["--drop", "model.layers.1.mlp.experts.3.*"]
    cut += ["--resize", "model.layers.1.mlp.gate.weight=[3,*]"]
    res = run("apply", tmp_path / "src", *cut, "-o", f"{tmp_path / 'half'}/", "-q")
    assert res.exit_code == 0, res.output
    assert (
        "note: model.layers.1.mlp.gate.e_score_correction_bias has 4 entries for 3 experts: "
        "transformers will not load it; resize each layer's router too "
        "(--resize 'model.layers.1.mlp.gate.e_score_correction_bias=[3]')"
    ) in res.stderr, res.stderr
    assert "gate.weight has" not in res.stderr, res.stderr
    out = tmp_path / "cut"
    cut += ["--resize", "model.layers.1.mlp.gate.e_score_correction_bias=[3]"]
    res = run("apply", tmp_path / "src", *cut, "-o", f"{out}/", "-q")
    assert res.exit_code == 0 and "has 4" not in res.stderr, res.output
    assert json.loads((out / "config.json").read_text())["n_routed_experts"] == 3
    model = _load_clean(transformers.DeepseekV3ForCausalLM, out, caplog)
    src = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "src").model.layers[1].mlp
    moe = model.model.layers[1].mlp
    assert torch.equal(moe.experts.gate_up_proj, src.experts.gate_up_proj[:3])
    assert torch.equal(moe.gate.weight, src.gate.weight[:3])
    assert torch.equal(moe.gate.e_score_correction_bias, src.gate.e_score_correction_bias[:3])


def test_ernie_s_expert_count_follows_a_dropped_expert(tmp_path, caplog):
    """ERNIE 4.5 MoE counts its experts in `moe_num_experts` (and keeps its router's expert
    biases in `mlp.moe_statics.e_score_correction_bias`, [1, E]): the count was left at 4 after
    an expert was dropped, so the output did not load."""
    cfg = transformers.Ernie4_5_MoeConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        moe_num_experts=4, moe_k=2, moe_num_shared_experts=1, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    _save(transformers.Ernie4_5_MoeForCausalLM, cfg, tmp_path / "src")
    cut = ["--drop", "model.layers.*.mlp.experts.3.*"]
    cut += ["--resize", "model.layers.1.mlp.gate.weight=[3,*]"]
    res = run("apply", tmp_path / "src", *cut, "-o", f"{tmp_path / 'half'}/", "-q")
    assert res.exit_code == 0, res.output
    assert "note: config.json: moe_num_experts 4 -> 3 (experts per MoE layer)" in res.stderr
    bias = "model.layers.1.mlp.moe_statics.e_score_correction_bias"
    assert f"{bias} has 4 columns for 3 experts" in res.stderr, res.stderr
    assert f"(--resize '{bias}=[*,3]')" in res.stderr, res.stderr
    out = tmp_path / "cut"
    res = run("apply", tmp_path / "src", *cut, "--resize", f"{bias}=[*,3]", "-o", f"{out}/", "-q")
    assert res.exit_code == 0 and "has 4" not in res.stderr, res.output
    assert json.loads((out / "config.json").read_text())["moe_num_experts"] == 3
    model = _load_clean(transformers.Ernie4_5_MoeForCausalLM, out, caplog)
    src = transformers.Ernie4_5_MoeForCausalLM.from_pretrained(tmp_path / "src")
    moe, was = model.model.layers[1].mlp, src.model.layers[1].mlp
    assert torch.equal(moe.experts.down_proj, was.experts.down_proj[:3])
    bias_in = moe.gate.moe_statics.e_score_correction_bias  # the module holds it in its gate
    assert torch.equal(bias_in, was.gate.moe_statics.e_score_correction_bias[:, :3])


def test_a_stacked_experts_checkpoint_s_expert_count_follows_a_resize(tmp_path, caplog):
    """Llama 4 saves its experts stacked (`feed_forward.experts.gate_up_proj` [E, H, 2I]): cut
    to 3 experts with `--resize` (and the router with them), the output said nothing and its
    config.json still built 4, so it did not load. The count now follows dim 0 of the stacked
    parameters; one left at 4 beside the others is a note."""
    cfg = transformers.Llama4TextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, intermediate_size_mlp=32,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    _save(transformers.Llama4ForCausalLM, cfg, tmp_path / "src")
    ff = "model.layers.{}.feed_forward."
    cut = [f"--resize={ff.format(i)}router.weight=[3,*]" for i in (0, 1)]
    cut += [f"--resize={ff.format(i)}experts.{t}=[3,*,*]" for i in (0, 1) for t in ("gate_up_proj", "down_proj")]  # fmt: skip
    out = tmp_path / "cut"
    res = run("apply", tmp_path / "src", *cut, "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    assert "note: config.json: num_local_experts 4 -> 3 (experts per MoE layer)" in res.stderr
    assert json.loads((out / "config.json").read_text())["num_local_experts"] == 3
    model = _load_clean(transformers.Llama4ForCausalLM, out, caplog)
    src = transformers.Llama4ForCausalLM.from_pretrained(tmp_path / "src").model.layers[1]
    got = model.model.layers[1].feed_forward
    assert torch.equal(got.experts.down_proj, src.feed_forward.experts.down_proj[:3])
    assert torch.equal(got.router.weight, src.feed_forward.router.weight[:3])
    res = run("apply", tmp_path / "src", *cut[:-1], "-o", f"{tmp_path / 'half'}/", "-q")
    assert res.exit_code == 0, res.output
    assert (
        f"note: config.json: the stacked experts of '{ff.format(1)}experts.*' hold [3, 4] "
        "experts (dim 0): transformers will not load them; resize them together"
    ) in res.stderr, res.stderr


def _vit(path):
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    _save(transformers.ViTModel, cfg, path)
    return transformers.ViTModel


def _clip(path):
    cfg = transformers.CLIPConfig(
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16,
                       "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32},
        text_config={"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 32,
                     "max_position_embeddings": 16},
        projection_dim=8,
    )  # fmt: skip
    _save(transformers.CLIPModel, cfg, path)
    return transformers.CLIPModel


def _resize_flags(items):
    """`--resize X` for each item; an item after "--rule" (and "--rule" itself) as given."""
    out, i = [], 0
    while i < len(items):
        if items[i] == "--rule":
            out += items[i : i + 2]
            i += 2
        else:
            out += ["--resize", items[i]]
            i += 1
    return out


def _bart(path):
    cfg = transformers.BartConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64,
        max_position_embeddings=32,
    )  # fmt: skip
    _save(transformers.BartModel, cfg, path)
    return transformers.BartModel


@pytest.mark.parametrize(
    ("make", "resize", "section", "want"),
    [
        # ViT: 1 class token + a 4x4 grid of 8-pixel patches -> 1 + 6x6: image_size 48
        (_vit, ["embeddings.position_embeddings=[1,37,*]"], "", {"image_size": 48}),
        # the same, filled from the 4x4 table by resample= (transplant.md, position tables)
        (
            _vit,
            [
                "embeddings.position_embeddings=[1,37,*]",
                "--rule",
                "embeddings.position_embeddings=from(src/, resample=bicubic)",
            ],
            "",
            {"image_size": 48},
        ),  # fmt: skip
        # CLIP: each tower's table sets its own section of the composite config
        (
            _clip,
            [
                "vision_model.embeddings.position_embedding.weight=[37,*]",
                "text_model.embeddings.position_embedding.weight=[24,*]",
            ],
            "both",
            {"vision_config": {"image_size": 48}, "text_config": {"max_position_embeddings": 24}},
        ),  # fmt: skip
        # BART: 2 rows before position 0 in both tables; 66 -> 130 rows is 64 -> 128 positions
        (
            _bart,
            ["encoder.embed_positions.weight=[130,*]", "decoder.embed_positions.weight=[130,*]"],
            "",
            {"max_position_embeddings": 128},
        ),
    ],
)
def test_a_resized_vision_or_offset_position_table_sets_its_field_and_loads(
    tmp_path, caplog, monkeypatch, make, resize, section, want
):
    """ViT's and CLIP vision's positions are a class token and a grid (`image_size` /
    `patch_size`), BART's table keeps 2 rows before position 0: a resized table must set the
    field the model reads, in its own section of a composite config, or the output does not
    load (a size mismatch)."""
    monkeypatch.chdir(tmp_path)
    model_class = make(tmp_path / "src")
    out = tmp_path / "out"
    flags = _resize_flags(resize)
    res = run("apply", tmp_path / "src", *flags, "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    written = json.loads((out / "config.json").read_text())
    for key, value in want.items():
        if isinstance(value, dict):
            for k, v in value.items():
                assert written[key][k] == v, written[key]
                assert f"note: config.json: {key}.{k} " in res.stderr, res.stderr
        else:
            assert written[key] == value, written
            assert f"note: config.json: {key} " in res.stderr, res.stderr
    _load_clean(model_class, out, caplog)


@pytest.mark.parametrize(
    ("make", "resize", "says"),
    [
        (_vit, ["embeddings.position_embeddings=[1,20,*]"], "no class token and square grid"),
        (_bart, ["encoder.embed_positions.weight=[130,*]"], "different rows"),
    ],
)
def test_a_position_table_no_config_can_describe_gets_a_note(tmp_path, make, resize, says):
    """20 positions are no 1 + g*g grid; a BART whose encoder table alone grew has two sizes
    for one max_position_embeddings: a note says so and how to fix it, the field is left."""
    make(tmp_path / "src")
    before = json.loads((tmp_path / "src" / "config.json").read_text())
    out = tmp_path / "out"
    flags = [a for r in resize for a in ("--resize", r)]
    res = run("apply", tmp_path / "src", *flags, "-o", f"{out}/", "-q")
    assert res.exit_code == 0, res.output
    assert says in res.stderr and "transformers will not load" in res.stderr, res.stderr
    written = json.loads((out / "config.json").read_text())
    for key in ("image_size", "max_position_embeddings"):
        assert written.get(key) == before.get(key)
