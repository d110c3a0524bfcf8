"""`--in-place` replaces only files this run read (issue #23 H4): on a torch-sharded folder the
output `model-00001-of-00002.safetensors` must not replace an unrelated file of that name (its
tensor would be lost); exit 2 naming it, the folder unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file, save_file


def _torch_sharded(folder):
    folder.mkdir()
    shards = {
        "pytorch_model-00001-of-00002.bin": {"a.weight": torch.randn(3, 3)},
        "pytorch_model-00002-of-00002.bin": {"b.weight": torch.randn(2, 3)},
    }
    weight_map = {}
    for name, sd in shards.items():
        torch.save(sd, folder / name)
        weight_map.update(dict.fromkeys(sd, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def test_in_place_does_not_replace_an_unrelated_safetensors_shard(tmp_path):
    m = tmp_path / "m"
    _torch_sharded(m)
    victim = m / "model-00001-of-00002.safetensors"
    save_file({"precious.weight": torch.ones(4)}, victim)
    args = ["apply", str(m), "-r", "a.weight=zeros", "--in-place", "-q"]
    refused(tmp_path, args, 2, "--in-place", str(victim), "not part of the checkpoint")
    assert list(load_file(victim)) == ["precious.weight"]


def test_in_place_on_a_torch_sharded_folder_still_converts(tmp_path):
    m = tmp_path / "m"
    _torch_sharded(m)
    res = run("apply", str(m), "-r", "a.weight=zeros", "--in-place", "-q")
    assert res.exit_code == 0, res.output
    assert not load_file(m / "model-00001-of-00002.safetensors")["a.weight"].any()
    assert json.loads((m / "model.safetensors.index.json").read_text())["weight_map"]


def _llama(folder, **save):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder, **save)


@pytest.mark.parametrize("sharded", [False, True])
def test_in_place_resharding_never_leaves_the_old_shards_beside(tmp_path, sharded):
    """`--in-place --max-shard-size` wrote new shards and index beside the old
    `model.safetensors`, which `from_pretrained` loads first: the surgery was silently not
    there. From 7 shards to 3, every tensor was in two files (`verify` failed). Refused."""
    folder = tmp_path / "m"
    _llama(folder, **({"max_shard_size": "8KB"} if sharded else {}))
    stale = min(p.name for p in folder.glob("model*.safetensors"))
    assert stale == ("model-00001-of-00004.safetensors" if sharded else "model.safetensors")
    args = ["apply", str(folder), "-r", "lm_head.weight=zeros", "--in-place"]
    refused(tmp_path, [*args, "--max-shard-size", "20KB"], 2, stale, "--max-shard-size")
    assert run(*args, "-q").exit_code == 0  # the same sharding is rewritten in place
    from transformers import LlamaForCausalLM

    assert not LlamaForCausalLM.from_pretrained(folder).lm_head.weight.any()


@pytest.mark.parametrize("target", ["victim", "from_source", "new_file", "folder"])
def test_in_place_with_an_o_that_is_not_the_source_is_refused(tmp_path, target):
    """`--in-place -o X` with X not the source wrote X, and an existing X (a file the run never
    read, even a `from()` source, which is an input) was replaced without `--overwrite`:
    `--in-place` skipped both the exists and the is-an-input checks. Exit 2, nothing written."""
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(3, 3), "b.weight": torch.randn(3, 3)}, src)
    donor = tmp_path / "donor.safetensors"
    save_file({"a.weight": torch.ones(3, 3)}, donor)
    victim = tmp_path / "victim.safetensors"
    save_file({"precious.weight": torch.ones(4)}, victim)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "notes.txt").write_text("mine")
    out = {
        "victim": str(victim),
        "from_source": str(donor),
        "new_file": str(tmp_path / "new.safetensors"),
        "folder": f"{tmp_path / 'proj'}/",
    }[target]
    rules = ["-r", f"a.weight=from({donor})", "-r", "b.weight=zeros"]
    args = ["apply", str(src), *rules, "--in-place", "-o", out]
    refused(tmp_path, args, 2, "--in-place", "is not the source")
    assert list(load_file(victim)) == ["precious.weight"]


def test_in_place_with_the_source_as_o_still_rewrites_it(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(3, 3)}, src)
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    for out in (src, link):  # the source itself, however it is named
        res = run("apply", str(src), "-r", "a.weight=zeros", "--in-place", "-o", str(out), "-q")
        assert res.exit_code == 0, res.output
        assert not load_file(src)["a.weight"].any()
