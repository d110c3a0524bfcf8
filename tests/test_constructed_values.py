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

import reinit

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


# A live transformers model (`apply_to_module`, `model=module`): its class built again on meta
# from its config, as `reinit new` builds it, gives the constructor's values.


def _vitmae_config(folder: Path) -> Path:
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg = transformers.ViTMAEConfig(
        **small, image_size=16, patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )  # fmt: skip
    cfg.architectures = ["ViTMAEForPreTraining"]
    cfg.save_pretrained(folder)
    return folder


def _new(config: Path, out: Path, seed: int) -> dict[str, torch.Tensor]:
    res = run("new", config, "-o", out, "--seed", str(seed), "-q")
    assert res.exit_code == 0, res.output
    return load_file(out / "model.safetensors")


def _trained(cls, config: Path):
    """The model of `config` with every parameter moved off its constructed value."""
    model = cls(transformers.AutoConfig.from_pretrained(config))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.5)
    return model


def test_default_on_a_live_clip_gives_what_reinit_new_gives(tmp_path):
    """Before: `default: the architecture's init does not set 'logit_scale' ...; give it an
    explicit scheme`, for a live model only."""
    config = _clip_config(tmp_path / "clip-config", 3.25)
    new = _new(config, tmp_path / "new", seed=3)
    model = _trained(transformers.CLIPModel, config)
    kept_config = model.config.to_dict()
    report = reinit.apply_to_module(model, ["*=default"], seed=3)
    assert model.logit_scale.item() == 3.25
    state = model.state_dict()
    assert set(new) <= set(state)
    assert [n for n, t in new.items() if not torch.equal(state[n], t)] == []
    assert report.entry("logit_scale").scheme == "default (CLIPModel.__init__: constant(val=3.25))"
    assert model.config.to_dict() == kept_config  # the class was built from a copy of it


def test_default_on_a_live_vitmae_gives_new_s_cls_token_and_positions(tmp_path):
    """ViTMAE's `cls_token` and `position_embeddings` keep their constructor's zeros (its init
    skips them once the patch projection is marked, as `from_config` leaves them)."""
    config = _vitmae_config(tmp_path / "vitmae-config")
    new = _new(config, tmp_path / "new", seed=5)
    model = _trained(transformers.ViTMAEForPreTraining, config)
    reinit.apply_to_module(model, ["*=default"], seed=5)
    state = model.state_dict()
    for name in ("vit.embeddings.cls_token", "vit.embeddings.position_embeddings"):
        assert torch.equal(state[name], new[name]), name
    assert not state["vit.embeddings.cls_token"].any()  # the constructor's zeros


def test_apply_with_a_live_model_gives_the_config_value(tmp_path):
    config = _clip_config(tmp_path / "clip-config", 3.25)
    new = _new(config, tmp_path / "new", seed=0)
    model = _trained(transformers.CLIPModel, config)
    model.save_pretrained(tmp_path / "trained")
    out = tmp_path / "out.safetensors"
    reinit.apply(tmp_path / "trained", ["logit_scale=default"], out, model=model)
    assert load_file(out)["logit_scale"].item() == new["logit_scale"].item() == 3.25
    assert model.logit_scale.item() == 3.25 + 1.5  # the live model itself is only read


class TaggedCLIP(transformers.CLIPModel):
    """A CLIP whose class its config alone does not build: its constructor's values are
    not known."""

    def __init__(self, config, tag: str) -> None:
        super().__init__(config)
        self.tag = tag


def _unknowable(kind: str, tmp_path: Path) -> tuple[torch.nn.Module, str]:
    from tests.models_for_tests import constants

    if kind == "plain":
        return constants(), "scale"
    config = transformers.CLIPConfig.from_pretrained(_clip_config(tmp_path / "c", 3.25))
    return TaggedCLIP(config, "mine"), "logit_scale"


@pytest.mark.parametrize("kind", ["plain", "tagged-clip"])
def test_a_live_module_whose_constructor_values_are_unknown_is_refused_unchanged(tmp_path, kind):
    model, name = _unknowable(kind, tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = getattr(model, "config", None)
    kept_config = config.to_dict() if config is not None else None
    rng = torch.get_rng_state()
    with pytest.raises(reinit.SchemeError) as err:
        reinit.apply_to_module(model, ["*=default"], seed=1)
    assert str(err.value) == (
        f"default: the architecture's init does not set '{name}' (module (root) of type "
        f"{type(model).__name__} has no reset_parameters"
        f"{' and _init_weights leaves it' if config is not None else ''}); give it an explicit "
        "scheme"
    )
    after = model.state_dict()
    assert (
        all(torch.equal(after[k], v) for k, v in before.items()) and after.keys() == before.keys()
    )
    assert (config.to_dict() if config is not None else None) == kept_config
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_live_module_swapped_for_another_class_keeps_no_constructed_value(tmp_path):
    """The class built again from the config has ViTMAE's own embeddings, whose `cls_token` is
    zeros; the live model's are another class's (ones): that value is not known, so refused
    rather than the other constructor's zeros."""
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

    class OnesClsEmbeddings(ViTMAEEmbeddings):
        def __init__(self, config) -> None:
            super().__init__(config)
            with torch.no_grad():
                self.cls_token.fill_(1.0)

    config = _vitmae_config(tmp_path / "vitmae-config")
    model = _trained(transformers.ViTMAEForPreTraining, config)
    model.vit.embeddings = OnesClsEmbeddings(model.config)
    with pytest.raises(reinit.SchemeError, match="does not set 'vit.embeddings.cls_token'"):
        reinit.apply_to_module(model, ["vit.embeddings.cls_token=default"])
    assert bool((model.vit.embeddings.cls_token == 1.0).all())
