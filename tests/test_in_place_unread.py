"""`--in-place` replaces only files this run read (issue #23 H4): on a torch-sharded folder the
output `model-00001-of-00002.safetensors` must not replace an unrelated file of that name (its
tensor would be lost); exit 2 naming it, the folder unchanged."""

from __future__ import annotations

import json

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
