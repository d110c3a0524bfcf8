"""Tied and aliased tensors (issue #7 item 6): a .bin whose names share storage stays consistent;
a safetensors file with duplicate data offsets is refused clearly.

Internal: also tests reinit.schemes directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import load_clean, run, verdicts
from safetensors.torch import load_file, save_file

import reinit
from reinit.cli import main
from reinit.errors import CheckpointError, RuleError
from reinit.schemes import seed_for


def tied_bin(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(50, 16, generator=g)
    sd = {
        "embed.weight": emb,
        "block.weight": torch.randn(16, 16, generator=g),
        "lm_head.weight": emb,  # tied: the same storage
    }
    path = tmp_path / "tied.bin"
    torch.save(sd, path)
    return path, emb


def test_rule_on_one_changes_both_and_the_report_says_tied(tmp_path):
    src, emb = tied_bin(tmp_path)
    out = tmp_path / "out.safetensors"
    rep = reinit.apply(src, ["lm_head.weight=normal(std=0.5)"], out, seed=3)
    new = load_file(out)
    assert torch.equal(new["embed.weight"], new["lm_head.weight"])
    assert not torch.equal(new["embed.weight"], emb)
    # the values are those the rule gives the tensor it names (seeded by its name)
    g = torch.Generator().manual_seed(seed_for(3, "lm_head.weight"))
    expected = torch.nn.init.normal_(torch.empty(50, 16), 0.0, 0.5, generator=g)
    assert torch.equal(new["lm_head.weight"], expected)
    by = {e.name: e for e in rep.tensors}
    assert by["lm_head.weight"].action == by["embed.weight"].action == "reinit"
    # no config: no reference, so the 2x move from their own std is noted after the tie
    assert by["lm_head.weight"].notes[0] == "tied with embed.weight"
    assert by["embed.weight"].notes[0] == "tied with lm_head.weight"
    assert by["embed.weight"].notes[1:] == ("std 0.49x its own before (1.02 -> 0.5); no reference",)
    assert "tied with 'lm_head.weight'" in by["embed.weight"].reason
    assert by["block.weight"].action == "kept" and by["block.weight"].notes == ()
    doc = json.loads((tmp_path / "out.report.json").read_text())
    notes = {t["name"]: t["notes"] for t in doc["tensors"]}
    assert notes["embed.weight"][0] == "tied with lm_head.weight"


def test_torch_output_keeps_the_tie(tmp_path):
    src, _ = tied_bin(tmp_path)
    out = tmp_path / "out.bin"
    reinit.apply(src, ["embed.weight=zeros"], out)
    sd = torch.load(out, weights_only=True)
    assert sd["embed.weight"].untyped_storage().data_ptr() == (
        sd["lm_head.weight"].untyped_storage().data_ptr()
    )
    assert torch.count_nonzero(sd["lm_head.weight"]) == 0


def test_one_rule_hitting_both_gives_one_value(tmp_path):
    src, _ = tied_bin(tmp_path)
    out = tmp_path / "out.safetensors"
    reinit.apply(src, ["*.weight=xavier_uniform"], out)
    new = load_file(out)
    assert torch.equal(new["embed.weight"], new["lm_head.weight"])


def test_transplant_into_a_tied_pair(tmp_path):
    src, _ = tied_bin(tmp_path)
    donor = tmp_path / "donor.bin"
    torch.save({"lm_head.weight": torch.full((50, 16), 7.0)}, donor)
    out = tmp_path / "out.safetensors"
    reinit.apply(src, [f"lm_head.weight=from({donor})"], out)
    new = load_file(out)
    assert torch.equal(new["embed.weight"], torch.full((50, 16), 7.0))


@pytest.mark.parametrize(
    "rules",
    [
        ["lm_head.weight=normal", "embed.weight=zeros"],
        ["*.weight=normal", "embed.weight=keep"],
    ],
)
def test_conflicting_rules_on_a_tied_pair_are_refused(tmp_path, rules):
    src, _ = tied_bin(tmp_path)
    out = tmp_path / "out.safetensors"
    with pytest.raises(RuleError, match="are tied .* give the tied names one rule"):
        reinit.apply(src, rules, out)
    assert not out.exists()
    args = ["apply", str(src), "-o", str(out)] + [a for r in rules for a in ("-r", r)]
    res = run(*args)
    assert res.exit_code == 2 and "are tied" in res.stderr and not out.exists()


def test_dry_run_shows_the_tie(tmp_path):
    src, _ = tied_bin(tmp_path)
    res = run("apply", str(src), "-r", "lm_head.weight=zeros", "--dry-run", "--by", "tensor")
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if ln.startswith("embed.weight"))
    assert "reinit" in line and "tied with 'lm_head.weight'" in line


def test_report_of_a_tied_checkpoint_names_the_tie(tmp_path):
    src, _ = tied_bin(tmp_path)
    rep = reinit.report_checkpoint(src)
    assert {e.name: e.notes for e in rep.tensors}["lm_head.weight"] == ("tied with embed.weight",)


def test_safetensors_with_duplicate_offsets_is_refused(tmp_path):
    header = {
        "embed.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "lm_head.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    }
    body = json.dumps(header).encode()
    src = tmp_path / "aliased.safetensors"
    src.write_bytes(struct.pack("<Q", len(body)) + body + bytes(16))
    with pytest.raises(CheckpointError, match="share data offsets"):
        reinit.open_checkpoint(src)
    res = CliRunner().invoke(
        main, ["apply", str(src), "-r", "*=zeros", "-o", str(tmp_path / "o.safetensors")]
    )
    assert res.exit_code == 1
    assert "'embed.weight' and 'lm_head.weight' share data offsets [0, 16]" in res.stderr


# A safetensors GPT-2 holding both `transformer.wte.weight` and an equal `lm_head.weight` (what
# `save_file(model.state_dict())` or an older tool writes; `save_pretrained` writes `wte` only):
# its config ties word embeddings, so the two names are one tie group.


def _gpt2_both(folder: Path, tie: bool = True, differ: bool = False) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=49,
        eos_token_id=49, architectures=["GPT2LMHeadModel"], tie_word_embeddings=tie,
    )  # fmt: skip
    sd = {k: v.clone() for k, v in transformers.GPT2LMHeadModel(cfg).state_dict().items()}
    if differ:
        sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    assert torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]) == (tie and not differ)
    folder.mkdir()
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    cfg.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("how", ["config.json beside", "--model"])
def test_a_rule_on_wte_sets_the_saved_lm_head_too(tmp_path, how):
    src = _gpt2_both(tmp_path / "gpt2")
    out = tmp_path / "out"
    args = ["apply", str(src), "-r", "transformer.wte.weight=normal(std=0.05)", "-o", str(out)]
    if how == "--model":  # the checkpoint alone, the model from --model
        (tmp_path / "model").mkdir()
        (src / "config.json").rename(tmp_path / "model" / "config.json")
        args += ["--model", str(tmp_path / "model")]
    res = run(*args, "-q")
    assert res.exit_code == 0, res.output
    new = load_file(out / "model.safetensors")
    g = torch.Generator().manual_seed(seed_for(0, "transformer.wte.weight"))
    expected = torch.nn.init.normal_(torch.empty(50, 16), 0.0, 0.05, generator=g)
    assert torch.equal(new["transformer.wte.weight"], expected)
    assert torch.equal(new["lm_head.weight"], expected)  # the file agrees with itself
    doc = json.loads((out / "reinit-report.json").read_text())
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["lm_head.weight"]["notes"][0] == "tied with transformer.wte.weight"
    assert "the model's config ties them" in by["lm_head.weight"]["reason"]
    # `report --against` replays the rule with the tie, as apply ran it: nothing unexplained
    res = run("report", str(out), "--against", str(src), *args[6:])
    assert res.exit_code == 0 and "differ from the baseline" not in res.output + res.stderr
    if how == "config.json beside":
        transformers = pytest.importorskip("transformers")
        model = load_clean(transformers.GPT2LMHeadModel, out)
        assert torch.equal(model.lm_head.weight.detach(), expected)


def test_a_keep_on_the_saved_lm_head_against_a_rule_on_wte_is_refused(tmp_path):
    src = _gpt2_both(tmp_path / "gpt2")
    out = tmp_path / "out"
    res = run(
        "apply", str(src), "-o", str(out), "-r", "transformer.wte.weight=zeros",
        "-r", "lm_head.weight=keep",
    )  # fmt: skip
    assert res.exit_code == 2 and not out.exists()
    assert "are tied (the model's config ties them; the file holds two equal copies)" in res.stderr
    assert "give the tied names one rule" in res.stderr


@pytest.mark.parametrize("case", ["untied config", "copies that differ"])
def test_no_tie_when_the_config_unties_or_the_copies_differ(tmp_path, case):
    src = _gpt2_both(tmp_path / "gpt2", tie=case != "untied config", differ=case != "untied config")
    before = load_file(src / "model.safetensors")["lm_head.weight"]
    out = tmp_path / "out"
    res = run("apply", str(src), "-r", "transformer.wte.weight=zeros", "-o", str(out), "-q")
    assert res.exit_code == 0, res.output
    new = load_file(out / "model.safetensors")
    assert torch.count_nonzero(new["transformer.wte.weight"]) == 0
    assert torch.equal(new["lm_head.weight"], before)  # its own tensor, kept


def _llama_both(folder: Path) -> Path:
    """A Llama-like safetensors checkpoint with `tie_word_embeddings: true` holding both
    `model.embed_tokens.weight` and an equal `lm_head.weight`."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=50, max_position_embeddings=32, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=True, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    sd = {k: v.clone() for k, v in transformers.LlamaForCausalLM(cfg).state_dict().items()}
    assert torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    folder.mkdir()
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    cfg.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("make", "embedding", "cls"),
    [
        (_gpt2_both, "transformer.wte.weight", "GPT2LMHeadModel"),
        (_llama_both, "model.embed_tokens.weight", "LlamaForCausalLM"),
    ],
)
def test_a_resize_of_the_embedding_resizes_the_saved_lm_head_too(tmp_path, make, embedding, cls):
    """Was: only the embedding grew, with a warning naming the `--resize` to add for
    `lm_head.weight`, and the output did not load (a size mismatch)."""
    transformers = pytest.importorskip("transformers")
    src = make(tmp_path / "src")
    before = load_file(src / "model.safetensors")
    out = tmp_path / "out"
    res = run("apply", str(src), "--resize", f"{embedding}=[56,*]", "-o", str(out), "-q")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr, res.stderr
    new = load_file(out / "model.safetensors")
    assert new[embedding].shape == new["lm_head.weight"].shape == (56, 16)
    assert torch.equal(new[embedding], new["lm_head.weight"])  # the same new rows
    assert torch.equal(new[embedding][:50], before[embedding])
    model = load_clean(getattr(transformers, cls), out)
    assert model.config.vocab_size == 56
    assert torch.equal(model.get_output_embeddings().weight.detach(), new[embedding])
    doc = json.loads((out / "reinit-report.json").read_text())
    head = next(t for t in doc["tensors"] if t["name"] == "lm_head.weight")
    assert head["notes"] == [
        "resized [50, 16] -> [56, 16] (6 new rows by mean_resize)",
        f"tied with {embedding}",
    ]
    # `report --against` replays the resize with the tie: nothing unexplained, no warning
    res = run("report", str(out), "--against", str(src))
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr and "differ from the baseline" not in res.output


def test_a_rule_on_a_resized_tied_embedding_sets_the_saved_lm_head_too(tmp_path):
    src = _gpt2_both(tmp_path / "gpt2")
    out = tmp_path / "out.safetensors"
    res = run("apply", str(src), "--resize", "lm_head.weight=[56,*]",
              "-r", "transformer.wte.weight=normal(std=0.05)", "-o", str(out), "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    new = load_file(out)
    g = torch.Generator().manual_seed(seed_for(0, "transformer.wte.weight"))
    expected = torch.nn.init.normal_(torch.empty(56, 16), 0.0, 0.05, generator=g)
    assert torch.equal(new["transformer.wte.weight"], expected)
    assert torch.equal(new["lm_head.weight"], expected)


def test_a_config_beside_the_checkpoint_never_makes_it_reach_the_network(
    tmp_path, online, monkeypatch
):
    """Whether a config ties the two equal tensors is read off the model transformers builds
    from it, so a config.json beside a checkpoint could make that build reach the Hub: a
    DETR's `backbone` naming a Hub repo is looked up by its config's own constructor (here
    beside a file holding two equal vocabulary-shaped tensors, with a `vocab_size` that
    matches). The build is offline: no connection is tried, the config ties nothing, the run
    is the plain one. Before: `apply` looked the repo up on the Hub."""
    import socket

    tried: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        tried.append(args[0] if args else kwargs)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    save_file({"transformer.wte.weight": w, "lm_head.weight": w.clone()},
              folder / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    config = {"model_type": "detr", "vocab_size": 64, "use_timm_backbone": False,
              "backbone": "facebook/detr-resnet-50", "backbone_config": None}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rep = reinit.apply(folder, ["lm_head.weight=zeros"], tmp_path / "out.safetensors")
    assert tried == []
    new = load_file(tmp_path / "out.safetensors")
    assert torch.count_nonzero(new["lm_head.weight"]) == 0
    assert torch.equal(new["transformer.wte.weight"], w)  # no tie: its own tensor, kept
    assert rep.entry("lm_head.weight").notes == ()


def _out_of_vocabulary(folder: Path, token: int) -> Path:
    """`_gpt2_both` with bos/eos `token`, outside its vocabulary of 50. (transformers says so
    once per process and message: `warning_once`, so each test gives its own token.)"""
    src = _gpt2_both(folder)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(bos_token_id=token, eos_token_id=token)
    (src / "config.json").write_text(json.dumps(cfg))
    return src


def test_the_internal_build_of_the_checkpoint_s_config_says_nothing(tmp_path):
    """The model a checkpoint's own config.json builds to find its ties is reinit's, not the
    command's: what transformers says of that config (token ids outside the vocabulary) was
    printed as `warning: transformers: ...` lines by an ordinary apply. Given as `--model`, a
    config is the user's, and its warnings are still shown."""
    src = _out_of_vocabulary(tmp_path / "gpt2", 7907)
    rule = ["-r", "transformer.wte.weight=normal(std=0.05)"]
    level = logging.getLogger("transformers").level
    for i, surgery in enumerate([[], ["--resize", "lm_head.weight=[56,*]"]]):
        out = tmp_path / f"out{i}"
        res = run("apply", src, *rule, *surgery, "-o", f"{out}/", "-q")
        assert res.exit_code == 0, res.output
        assert "transformers" not in res.stderr, res.stderr
        new = load_file(out / "model.safetensors")
        assert torch.equal(new["transformer.wte.weight"], new["lm_head.weight"])  # tie found
    assert logging.getLogger("transformers").level == level  # restored after the quiet build
    # the model that names a --format dcp output's tensors is reinit's too
    dcp_src = _out_of_vocabulary(tmp_path / "for-dcp", 7933)
    layer = ["-r", "transformer.h.0.*.weight=zeros"]  # no tie to look for: the layout's build
    res = run("apply", dcp_src, *layer, "--format", "dcp", "-o", f"{tmp_path / 'dcp'}/", "-q")
    assert res.exit_code == 0 and "transformers" not in res.stderr, res.output
    own = _out_of_vocabulary(tmp_path / "own", 7919)
    res = run("apply", own, *rule, "--model", own, "-o", f"{tmp_path / 'o'}/", "-q")
    assert res.exit_code == 0, res.output
    assert "warning: transformers: " in res.stderr and "got 7919" in res.stderr


def test_report_against_a_bin_judges_its_tied_resize_as_apply_did(tmp_path):
    """A `.bin` GPT-2 (wte and lm_head one storage; a config.json without `architectures`, so
    it builds no head to ask about ties), resized with a rule on the other name, written as
    safetensors (two copies, tied no more in the file): `report OUT --against SRC` judged
    `transformer.wte.weight` as the resize's fill and flagged it `constant`; apply had given
    it lm_head's rule. The baseline's shared storage ties the replay as it tied apply."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=49,
        eos_token_id=49,
    )  # fmt: skip
    sd = transformers.GPT2LMHeadModel(cfg).state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    src = tmp_path / "gpt2"
    src.mkdir()
    torch.save(sd, src / "pytorch_model.bin")
    cfg.save_pretrained(src)
    out = tmp_path / "out"
    rep = reinit.apply(src, ["lm_head.weight=zeros"], out, resize=["transformer.wte.weight=[56,*]"])
    new = load_file(out / "model.safetensors")
    assert torch.count_nonzero(new["transformer.wte.weight"]) == 0
    again = reinit.report_checkpoint(out, src)
    assert verdicts(again) == verdicts(rep)
    assert again.entry("transformer.wte.weight").flags == () and again.warnings == ()


def test_a_vocabulary_cut_below_a_token_id_says_which_to_set(tmp_path):
    """Shrinking the tied embeddings below `eos_token_id` wrote a config transformers warns
    about at every load (the id outside the vocabulary), with nothing said: a note names each
    such id and the `--config` that sets it; set, the output loads clean."""
    transformers = pytest.importorskip("transformers")
    src = _gpt2_both(tmp_path / "gpt2")  # bos = eos = 49, vocabulary 50
    res = run("apply", src, "--resize", "lm_head.weight=[37,*]", "-o", f"{tmp_path / 'a'}/")
    assert res.exit_code == 0, res.output
    for key in ("bos_token_id", "eos_token_id"):
        assert f"note: config.json: {key} 49 is outside the 37 rows" in res.output, res.output
        assert f"--config '{key}=N' (N < 37)" in res.output
    ids = ["--config", "bos_token_id=36", "--config", "eos_token_id=36"]
    out = tmp_path / "b"
    res = run("apply", src, "--resize", "lm_head.weight=[37,*]", *ids, "-o", f"{out}/")
    assert res.exit_code == 0 and "is outside" not in res.output, res.output
    model = load_clean(transformers.GPT2LMHeadModel, out)
    assert model.config.vocab_size == 37 and model.config.eos_token_id == 36


def test_only_a_resize_of_a_possible_tie_builds_the_model_to_ask(tmp_path, monkeypatch):
    """Every `--resize` built the model of the checkpoint's config and read both copies of its
    embeddings whole to see whether they are tied, even a resize of another tensor (on a
    256k-token model, gigabytes read for a classifier's resize). Only a resize of a tensor of
    the vocabulary's length asks."""
    from reinit.planning import config_ties

    src = _gpt2_both(tmp_path / "gpt2")
    built: list[object] = []
    real = config_ties._own_view
    monkeypatch.setattr(config_ties, "_own_view", lambda *a: built.append(a) or real(*a))
    reinit.apply(src, [], tmp_path / "a", resize=["transformer.h.0.mlp.c_fc.bias=[80]"])
    assert built == []
    reinit.apply(src, [], tmp_path / "b", resize=["transformer.wte.weight=[56,*]"])
    assert len(built) == 1
    assert load_file(tmp_path / "b" / "model.safetensors")["lm_head.weight"].shape == (56, 16)


def test_a_resize_with_model_resizes_the_copy_the_model_ties(tmp_path):
    """The checkpoint alone (no config.json beside it), the model from `--model`: a rule on
    `transformer.wte.weight` set `lm_head.weight` too, but a `--resize` of it left the head at
    50 rows with a warning, and the output did not load. `--model`'s ties resize together."""
    transformers = pytest.importorskip("transformers")
    folder = _gpt2_both(tmp_path / "gpt2")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    out = tmp_path / "out"
    res = run("apply", lone / "model.safetensors", "--model", folder,
              "--resize", "transformer.wte.weight=[56,*]", "-o", f"{out}/", "-q")  # fmt: skip
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    new = load_file(out / "model.safetensors")
    assert new["lm_head.weight"].shape == (56, 16)
    assert torch.equal(new["lm_head.weight"], new["transformer.wte.weight"])
    cfg = transformers.GPT2Config.from_pretrained(folder)
    cfg.vocab_size = 56
    cfg.save_pretrained(out)
    load_clean(transformers.GPT2LMHeadModel, out)
