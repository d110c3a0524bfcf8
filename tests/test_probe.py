"""`reinit probe`: activation and gradient std per layer, before and after rules.

Internal: also tests reinit.tools.probe, reinit.tools.probe_render directly (not the `reinit`
API).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from reinit.cli import main
from reinit.tools.probe import parse_shape, probe

HERE = Path(__file__).parent
MLP = "models_for_tests:mlp(depth=8, width=64, inputs=64)"


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def _linear_acts(p) -> list[float]:
    return [layer.act_std for layer in p.layers if layer.type == "Linear"]


def test_deep_mlp_explodes_at_normal_and_is_stable_after_kaiming() -> None:
    # N(0,1) weights, fan_in 64, ReLU: each layer multiplies the pre-activation std by
    # ≈ sqrt(64/2) ≈ 5.7 (a finite-width sample over 7 gaps lands within 4..7 per layer).
    exploded = probe(MLP, ["*.weight=normal"], input_shape=(256, 64), seed=0)
    after = exploded.after
    assert after is not None
    acts = _linear_acts(after)
    assert len(acts) == 8 and after.depth == 8
    per_layer = (acts[-1] / acts[0]) ** (1 / 7)
    assert 4.0 < per_layer < 7.0
    assert after.act_verdict == "exploding" and after.grad_verdict == "exploding"
    assert after.act_growth is not None and after.act_growth > 1e4

    stable = probe(
        MLP,
        ["*.weight=kaiming(nonlinearity=relu)", "*.bias=zeros"],
        input_shape=(256, 64),
        seed=0,
    )
    assert stable.after is not None
    assert stable.after.act_verdict == "stable" and stable.after.grad_verdict == "stable"
    acts = _linear_acts(stable.after)
    assert all(0.5 < a < 2.0 for a in acts), acts  # input std 1, gain sqrt(2): stays O(1)
    # "before" is the same model as built, the same for both runs (seeded from --seed)
    assert exploded.before == stable.before
    # torch's default init (kaiming_uniform a=sqrt(5)) makes the gradients vanish here
    assert exploded.before.grad_verdict == "vanishing"


def test_probe_cli_json_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "probe.png"
    r = CliRunner().invoke(
        main,
        [
            "probe",
            MLP,
            "--input-shape",
            "64,64",
            "-r",
            "*.weight=normal",
            "--json",
            "--plot",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["input"] == "N(0,1) [64, 64]"
    assert data["rules"] == ["*.weight=normal"]
    assert data["after"]["activations"] == "exploding"
    assert [layer["type"] for layer in data["before"]["layers"][:2]] == ["Linear", "ReLU"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = CliRunner().invoke(
        main, ["probe", MLP, "--input-shape", "64x64", "-r", "*.weight=normal"]
    )
    assert table.exit_code == 0, table.output
    assert "after *.weight=normal: activations exploding" in table.output
    assert "→" in table.output


def test_probe_hf_model_uses_token_ids(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
    )
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    res = probe(str(tmp_path / "bert"), ["type:Linear=normal(std=1)"], seed=0)
    assert res.input == "token ids [2, 16] uniform in [0, 50)"
    types = {layer.type for layer in res.before.layers}
    assert {"Embedding", "Linear", "LayerNorm"} <= types
    assert res.after is not None
    # N(0,1) Linear weights at width 16 blow up the projections' outputs (std ≈ 4 vs 0.02·4)
    before = {layer.name: layer.act_std for layer in res.before.layers}
    after = {layer.name: layer.act_std for layer in res.after.layers}
    q = "encoder.layer.0.attention.self.query"
    assert after[q] > 20 * before[q]
    # every encoder Linear lies on the path to last_hidden_state, so each gets a gradient
    encoder = [layer for layer in res.before.layers if layer.name.startswith("encoder.")]
    assert encoder and all(layer.grad_std is not None for layer in encoder)


def test_probe_usage_errors() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["probe", MLP])
    assert r.exit_code == 2 and "--input-shape" in r.output
    r = runner.invoke(main, ["probe", MLP, "--input-shape", "0,a"])
    assert r.exit_code == 2 and "--input-shape" in r.output
    assert parse_shape("[8, 3, 32, 32]") == (8, 3, 32, 32)
    assert math.isclose(len(parse_shape("2x3")), 2)


def test_probe_before_is_the_checkpoint_when_given(tmp_path: Path) -> None:
    import models_for_tests
    import torch
    from safetensors.torch import save_file

    net = models_for_tests.mlp(depth=8, width=64, inputs=64)
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=g) if k.endswith("weight") else torch.zeros(v.shape)
        for k, v in net.state_dict().items()
    }
    ckpt = tmp_path / "mlp.safetensors"
    save_file(state, ckpt)
    res = probe(
        MLP, ["*.weight=kaiming(nonlinearity=relu)"], input_shape=(128, 64), checkpoint=str(ckpt)
    )
    assert res.before.act_verdict == "exploding"  # the checkpoint's N(0,1) weights
    assert res.after is not None and res.after.act_verdict == "stable"
    assert res.to_dict()["checkpoint"] == str(ckpt)


def test_probe_says_random_weights_and_names_the_worst_gradient_layer() -> None:
    from reinit.tools.probe_render import render, worst_grad_change

    # one middle layer scaled down 100x: its own and earlier layers' gradients fall
    res = probe(MLP, ["6.weight=normal(std=0.001)"], input_shape=(64, 64), seed=0)
    text = render(res)
    assert "randomly initialized by the model's constructor (seed 0)" in text
    assert "--checkpoint" in text
    worst = worst_grad_change(res)
    assert worst is not None and max(worst[1], 1 / worst[1]) > 4
    last = text.splitlines()[-1]
    assert (
        last.startswith("after ")
        and f"{worst[0]}'s gradients" in last
        and "(after vs before)" in last
    )


def test_probe_with_checkpoint_does_not_say_random(tmp_path: Path) -> None:
    import models_for_tests
    from safetensors.torch import save_file

    from reinit.tools.probe_render import render

    net = models_for_tests.mlp(depth=8, width=64, inputs=64)
    ckpt = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, ckpt)
    assert "randomly initialized" not in render(
        probe(MLP, input_shape=(16, 64), checkpoint=str(ckpt))
    )


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_probe_seed_past_torchs_range_is_a_usage_error(seed: int) -> None:
    """`--seed 2**64` reached torch.manual_seed: "internal error: ValueError: Overflow"."""
    r = CliRunner().invoke(main, ["probe", MLP, "--input-shape", "4,64", "--seed", str(seed)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: --seed {seed}:") and "internal" not in r.output


def test_probe_takes_the_largest_seed_torch_takes() -> None:
    """Its gradient pass seeds `seed + 1`, which overflowed at 2**64 - 1."""
    assert probe(MLP, input_shape=(4, 64), seed=2**64 - 1).seed == 2**64 - 1


def test_probe_of_a_missing_model_names_probe_not_a_model_flag(tmp_path: Path) -> None:
    """`reinit probe nope` said `error: --model nope: ...`, a flag probe does not have."""
    r = CliRunner().invoke(main, ["probe", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert r.output.startswith(f"error: reinit probe {tmp_path / 'nope'}: no such directory")
    assert "--model" not in r.output


def test_probe_numbers_equal_a_hand_computation_with_torch(tmp_path: Path) -> None:
    """Every layer's act_std and grad_std, and the growths, before and after the rules,
    equal a plain torch forward/backward on the same weights, inputs (seed) and cotangents
    (seed + 1)."""
    import torch
    from models_for_tests import mlp
    from safetensors.torch import save_file

    import reinit

    torch.manual_seed(3)
    model = mlp(depth=4, width=32, inputs=16)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors"
    )
    got = probe(
        "models_for_tests:mlp(depth=4, width=32, inputs=16)",
        ["*.weight=kaiming_normal"],
        input_shape=(8, 16),
        seed=5,
        checkpoint=str(tmp_path / "w.safetensors"),
    )

    def by_hand(state: dict[str, torch.Tensor]) -> tuple[list[tuple[float, float]], float]:
        m = mlp(depth=4, width=32, inputs=16)
        m.load_state_dict(state)
        outs: list[torch.Tensor] = []

        def keep(_m: torch.nn.Module, _i: object, o: torch.Tensor) -> None:
            o.retain_grad()
            outs.append(o)

        for layer in m:
            layer.register_forward_hook(keep)
        y = m(torch.randn((8, 16), generator=torch.Generator().manual_seed(5)))
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(6)))

        def std(t: torch.Tensor) -> float:
            return float(t.detach().double().std(correction=0))

        return [(std(o), std(o.grad)) for o in outs], std(y)

    after, _ = reinit.apply_to_state_dict(model.state_dict(), ["*.weight=kaiming_normal"], seed=5)
    for p, state in ((got.before, model.state_dict()), (got.after, after)):
        assert p is not None
        layers, out_std = by_hand(state)
        assert [(x.act_std, x.grad_std) for x in p.layers] == layers
        assert p.output_std == out_std
        linear = [i for i, x in enumerate(p.layers) if x.type == "Linear"]
        assert p.act_growth == layers[linear[-1]][0] / layers[linear[0]][0]
        assert p.grad_growth == layers[linear[0]][1] / layers[linear[-1]][1]


@pytest.mark.parametrize("shape", ["1,99999999999", "100000,1000000", "99999999999,64"])
def test_an_input_shape_past_the_memory_available_is_a_usage_error(shape: str) -> None:
    """`--input-shape 1,99999999999` was an internal error (torch's 'can't allocate memory:
    you tried to allocate 799999999992 bytes'); the limits table promises probe exit 2 before
    allocating. Token ids (int64) and N(0, 1) inputs (float32) alike."""
    from transformers import BertConfig

    with CliRunner().isolated_filesystem():
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=24).save_pretrained("bert")  # fmt: skip
        model = "bert" if not shape.endswith(",64") else MLP
        r = CliRunner().invoke(main, ["probe", model, "--input-shape", shape])
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output
    assert f"--input-shape {shape}" in r.output and "bytes of memory available" in r.output
