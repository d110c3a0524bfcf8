"""`default` (and `reinit new`) on a tensor that only the model's constructor gives a value:
CLIP's `logit_scale` (`nn.Parameter(torch.tensor(config.logit_scale_init_value))`), which no
`_init_weights` touches, is written as the config's value and loads cleanly; a `module:callable`
model's constants, computed and written-in-place values are those eager construction gives; a
drawn or empty one is still refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import load_clean, run
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")


def _clip_config(folder: Path, scale: float) -> Path:
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg = transformers.CLIPConfig(
        text_config=dict(
            **small, vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(**small, image_size=16, patch_size=8),
        projection_dim=8, logit_scale_init_value=scale,
    )  # fmt: skip
    cfg.architectures = ["CLIPModel"]
    cfg.save_pretrained(folder)
    return folder


def test_new_clip_writes_logit_scale_from_the_config_and_loads_clean(tmp_path):
    config = _clip_config(tmp_path / "clip-config", 3.25)  # not the default 2.6592
    out = tmp_path / "clip"
    res = run("new", config, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    assert load_file(out / "model.safetensors")["logit_scale"].item() == 3.25
    model = load_clean(transformers.CLIPModel, out)
    assert model.logit_scale.item() == 3.25
    doc = json.loads((out / "reinit-report.json").read_text())
    entry = next(t for t in doc["tensors"] if t["name"] == "logit_scale")
    assert entry["scheme"] == "default (CLIPModel.__init__: constant(val=3.25))"
    assert entry["expected_std"] == 0.0 and entry["flags"] == []


def test_apply_default_on_a_clip_checkpoint_gives_the_config_value(tmp_path):
    config = _clip_config(tmp_path / "clip-config", 3.25)
    src = tmp_path / "trained"
    transformers.CLIPModel(transformers.CLIPConfig.from_pretrained(config)).save_pretrained(src)
    out = tmp_path / "out"
    res = run("apply", src, "--model", config, "-r", "logit_scale=default", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    assert load_file(out / "model.safetensors")["logit_scale"].item() == 3.25


def test_a_module_callables_constructed_values_are_those_eager_construction_gives(tmp_path):
    from tests.models_for_tests import constants

    out = tmp_path / "m.safetensors"
    spec = "tests.models_for_tests:constants"
    res = run("new", spec, "-r", "{noise,gate}=zeros", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    got, eager = load_file(out), constants().state_dict()
    for name in ("scale", "temperature", "shift"):  # full, tensor(2).log(), ones then *= 3 on [1:]
        assert torch.equal(got[name], eager[name]), name
    assert got["shift"].tolist() == [1.0, 3.0, 3.0, 3.0]
    assert got["temperature"].item() == pytest.approx(math.log(2.0))
    schemes = {
        t["name"]: t["scheme"]
        for t in json.loads(out.with_suffix(".report.json").read_text())["tensors"]
    }
    assert schemes["scale"] == "default (Constants.__init__: constant(val=0.5))"
    assert schemes["shift"] == "default (Constants.__init__: its constructor's values)"


def test_a_value_viewed_as_another_dtype_keeps_its_own_dtype(tmp_path):
    """A constructor that writes a float parameter through its int32 view, or keeps an int32
    view of a float buffer: the values written are the float ones eager construction gives.
    Before: the view (same storage, shape and strides) took the tensor's place, so `scale`
    was written as the float 1065353216.0 and `mask` as 1073741824.0."""
    from tests.models_for_tests import bit_views

    out = tmp_path / "m.safetensors"
    res = run("new", "tests.models_for_tests:bit_views", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    got, eager = load_file(out), bit_views().state_dict()
    assert got["scale"].tolist() == [1.0] * 4 and got["mask"].tolist() == [2.0] * 4
    for name in ("scale", "mask"):
        assert got[name].dtype == eager[name].dtype and torch.equal(got[name], eager[name])


@pytest.mark.parametrize(("name", "other"), [("noise", "gate"), ("gate", "noise")])
def test_a_value_drawn_or_left_empty_by_the_constructor_is_refused(tmp_path, name, other):
    out = tmp_path / "m.safetensors"
    res = run("new", "tests.models_for_tests:constants", "-r", f"{other}=zeros", "-o", out)
    assert res.exit_code == 2 and not out.exists()
    assert f"the architecture's init does not set '{name}'" in res.stderr
