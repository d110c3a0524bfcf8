"""Round three as a new user meets it (the qa pass over `reinit new`, `--format dcp` and
torchrun): each test is a command that misbehaved before its fix."""

from __future__ import annotations

import json

import pytest
from helpers import refused

transformers = pytest.importorskip("transformers")


def _llama_config(tmp_path, **edits: object):
    folder = tmp_path / "cfg"
    transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(folder)  # fmt: skip
    doc = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**doc, **edits}))
    return folder


def test_new_with_a_huge_vocab_is_refused_before_drawing(tmp_path):
    # was: exit 1 "internal error: RuntimeError: ... DefaultCPUAllocator: can't allocate
    # memory: you tried to allocate 64000000000000 bytes" after making the temporary folder
    cfg = _llama_config(tmp_path, vocab_size=10**12)
    refused(tmp_path, ["new", str(cfg), "-o", str(tmp_path / "out")], 2,
            "embed_tokens.weight", "memory available", "vocab_size")  # fmt: skip


def test_new_writes_a_dcp_directory_that_torch_loads(tmp_path):
    # was: exit 2 "drop --max-shard-size" although none was given (new's save_pretrained
    # shard default was passed on to the DCP writer)
    import torch
    import torch.distributed.checkpoint as dcp
    from helpers import run

    cfg = _llama_config(tmp_path)
    res = run("new", str(cfg), "-o", str(tmp_path / "out-dcp"), "--format", "dcp", "-q")
    assert res.exit_code == 0, res.output
    res = run("new", str(cfg), "-o", str(tmp_path / "out.safetensors"), "-q")
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    want = load_file(tmp_path / "out.safetensors")
    state = {k: torch.empty_like(v) for k, v in want.items()}
    dcp.load(state, checkpoint_id=str(tmp_path / "out-dcp"))
    assert state.keys() == want.keys()
    assert all(torch.equal(state[k], want[k]) for k in want)


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_a_recipes_new_never_runs_code(tmp_path, dry):
    # was: `new: "os:system('touch PWNED')"` ran the command (then "the callable returned
    # int"), with and without --dry-run: issue 23's C1 through the new key
    pwned = tmp_path / "PWNED"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"new: \"os:system('touch {pwned}')\"\noutput: {tmp_path / 'out'}\n"
        'rules: ["*.bias=zeros"]\n'
    )
    refused(tmp_path, ["run", str(recipe), *dry], 2, "new", "--trust-model-callable os:system")
    assert not pwned.exists()


def test_a_new_recipe_without_rules_is_reinit_new(tmp_path):
    """`new: CONFIG` with no rules runs as `reinit new CONFIG` (it was refused: "the recipe
    has no rules"): the same bytes."""
    from helpers import run

    cfg = _llama_config(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"new: {cfg}/\noutput: {tmp_path / 'a'}/\n")
    assert run("run", recipe, "-q").exit_code == 0
    assert run("new", cfg, "-o", f"{tmp_path / 'b'}/", "-q").exit_code == 0
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_new_errors_name_the_command_not_a_model_flag(tmp_path):
    """`reinit new` has no --model flag: its errors name `reinit new CONFIG`."""
    line = refused(tmp_path, ["new", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], 2,
                   "reinit new ")  # fmt: skip
    assert "--model" not in line
