"""The `default` scheme says which init the architecture's code ran on each tensor and carries
that init's expected std (JSON, terminal, Markdown), on a tiny transformers BERT and on plain
torch modules; the std is computed from the recorded init call, not drawn a second time.

Internal: also tests reinit.planning.model, reinit.run.stream directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import run
from torch import nn

import reinit
import reinit.planning.model as model_mod
import reinit.run.stream as stream_mod

BERT = re.compile(r"^default \(Bert\w*\._init_weights on (\w+): (.+)\)$")


def _tiny_bert_dir(tmp_path: Path) -> Path:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    torch.manual_seed(0)
    path = tmp_path / "bert"
    BertModel(cfg).save_pretrained(path)
    return path


def test_plain_torch_modules_name_reset_parameters_and_its_std() -> None:
    """nn.Linear / nn.Conv2d: kaiming_uniform(a=√5) has std 1/√(3·fan_in), the bias
    U(±1/√fan_in) the same; LayerNorm ones/zeros: 0; an Embedding's zeroed padding row is
    named and folded into the expected std."""
    torch.manual_seed(0)
    net = nn.ModuleDict(
        {
            "fc": nn.Linear(300, 200),
            "conv": nn.Conv2d(16, 32, 3),
            "emb": nn.Embedding(10, 400, padding_idx=0),
            "norm": nn.LayerNorm(64),
        }
    )
    rep = reinit.apply_to_module(net, ["*=default"])
    e = {t.name: t for t in rep.tensors}
    kaiming = "kaiming_uniform(a=2.236)"
    assert e["fc.weight"].scheme == f"default (Linear.reset_parameters: {kaiming})"
    assert e["fc.weight"].expected_std == pytest.approx(1 / math.sqrt(3 * 300), rel=1e-12)
    assert (
        e["fc.bias"].scheme == "default (Linear.reset_parameters: uniform(a=-0.05774, b=0.05774))"
    )
    assert e["fc.bias"].expected_std == pytest.approx(1 / math.sqrt(3 * 300), rel=1e-12)
    assert e["conv.weight"].scheme == f"default (Conv2d.reset_parameters: {kaiming})"
    assert e["conv.weight"].expected_std == pytest.approx(1 / math.sqrt(3 * 16 * 9), rel=1e-12)
    assert e["norm.weight"].scheme == "default (LayerNorm.reset_parameters: ones)"
    assert e["norm.bias"].scheme == "default (LayerNorm.reset_parameters: zeros)"
    assert e["norm.weight"].expected_std == 0.0 == e["norm.bias"].expected_std
    # N(0, 1) with 1 row of 10 set to 0: variance 0.9 · 1 + 0.9 · 0.1 · 0² = 0.9
    assert (
        e["emb.weight"].scheme
        == "default (Embedding.reset_parameters: normal, then zeros on a part)"
    )
    assert e["emb.weight"].expected_std == pytest.approx(math.sqrt(0.9), rel=1e-12)
    for t in rep.tensors:  # the measured std agrees with the computed one: no std_off
        assert "std_off" not in t.flags, t
        assert t.reference_std == t.expected_std  # `default` is its own reference


class _PatchAsLinear(nn.Conv2d):
    """A patch embedding initialized like a Linear, as ViTMAE's (`xavier_uniform_` on the
    weight seen as [out, in*k*k])."""

    def reset_parameters(self) -> None:
        w = self.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.bias)


def test_an_init_on_a_reshaped_view_is_judged_by_the_views_fans() -> None:
    """xavier_uniform on a conv weight's 2-D view [32, 3*8*8] has std sqrt(2/(32+192)) =
    0.0945; the expected std was computed with the 4-D tensor's fans (0.0299), so a fresh init
    was flagged std_off, 3x off what its own init gives."""
    torch.manual_seed(0)
    net = nn.ModuleDict({"patch": _PatchAsLinear(3, 32, 8, stride=8)})
    rep = reinit.apply_to_module(net, ["*=default"])
    e = {t.name: t for t in rep.tensors}["patch.weight"]
    assert e.scheme == "default (_PatchAsLinear.reset_parameters: xavier_uniform)"
    assert e.expected_std == pytest.approx(math.sqrt(2 / (32 + 3 * 8 * 8)), rel=1e-12)
    assert e.after is not None
    assert abs(e.after.std - e.expected_std) < 5 * e.expected_std / math.sqrt(2 * 32 * 192)
    assert e.flags == ()


def test_tiny_bert_default_names_init_weights_in_json_terminal_and_markdown(
    tmp_path: Path,
) -> None:
    bert = _tiny_bert_dir(tmp_path)
    md = tmp_path / "r.md"
    r = run(
        "apply", bert, "--model", bert, "-r", "encoder.layer.1.*=default",
        "-o", tmp_path / "out", "--json", "--report", md,
        env={"COLUMNS": "100"},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    changed = [t for t in json.loads(r.stdout)["tensors"] if t["action"] == "reinit"]
    assert len(changed) == 16
    for t in changed:
        m = BERT.match(t["scheme"])
        assert m, t["scheme"]
        owner, init = m.groups()
        if owner == "Linear" and t["name"].endswith(".weight"):
            assert init == "normal(std=0.02)" and t["expected_std"] == 0.02
            assert t["reference_std"] == 0.02 and t["reference"] == "model default"
        elif owner == "LayerNorm" and t["name"].endswith(".weight"):
            assert init == "ones" and t["expected_std"] == 0.0
        else:  # the biases
            assert init == "zeros" and t["expected_std"] == 0.0, t
        assert t["flags"] == [], t
    err = r.stderr
    assert re.search(
        r"^note: default ran Bert\w*\._init_weights on Linear: normal\(std=0\.02\) "
        r"\(6 tensors, e\.g\. encoder\.layer\.1\.[\w.]+\.weight\)$",
        err,
        re.M,
    ), err
    # the terminal's expected column shows 0.02 for the matrices (it printed `-` before)
    query = next(line for line in err.splitlines() if "intermediate.dense.weight" in line)
    assert " 0.02 " in query.replace("0.0200", "0.02"), query
    text = md.read_text()
    row = next(x for x in text.splitlines() if "self.query.weight`" in x and "reinit" in x)
    # Markdown: the `_` that could open emphasis is escaped (it renders as `._init_weights`)
    assert "→ Bert" in row and ".\\_init_weights on Linear: normal(std=0.02)" in row, row


def test_default_draws_each_tensor_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap: the architecture's init runs once per `default` tensor (the draw that writes
    it); the expected std and the reference come from that draw's record, not a second one."""
    calls: list[str] = []
    real = stream_mod.default_init

    def counting(view, name, dtype, seed):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(view, name, dtype, seed)

    def no_second_draw(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the reference drew a `default` tensor again")

    monkeypatch.setattr(stream_mod, "default_init", counting)
    # the reference imports `default_value` when it draws (lazily: `reinit report` needs no torch)
    monkeypatch.setattr(model_mod, "default_value", no_second_draw)
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    rep = reinit.apply_to_module(net, ["*=default"])
    assert sorted(calls) == sorted(t.name for t in rep.tensors)
    assert all(t.expected_std is not None for t in rep.tensors)


def test_an_init_of_several_steps_is_named_as_the_nn_init_function_that_ran() -> None:
    """torch.nn.init functions that do not dispatch as themselves (orthogonal_, trunc_normal_,
    xavier_normal_ run copy_/mul_/normal_ inside) are named as the function, with its
    arguments; later in-place ops are named after it, a scalar mul_ scales the expected std,
    and an op with no formula (clamp_) leaves it unknown rather than wrong."""

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, shape in [("x", (20, 30)), ("o", (40, 40)), ("t", (30, 30))]:
                self.register_parameter(name, nn.Parameter(torch.empty(shape)))
            self.register_parameter("s", nn.Parameter(torch.empty(40, 40)))
            self.register_parameter("c", nn.Parameter(torch.empty(8, 8)))

        def reset_parameters(self) -> None:
            nn.init.xavier_normal_(self.x, 2.0)
            nn.init.orthogonal_(self.o)
            nn.init.trunc_normal_(self.t, 0.0, 0.02, -0.04, 0.04)
            self.s.data.normal_(0, 1)
            self.s.data.mul_(0.1)
            self.c.data.normal_()
            self.c.data.clamp_(-1, 1)

    e = {t.name: t for t in reinit.apply_to_module(Custom(), ["*=default"]).tensors}
    assert e["x"].scheme == "default (Custom.reset_parameters: xavier_normal(gain=2))"
    assert e["x"].expected_std == pytest.approx(2 * math.sqrt(2 / 50), rel=1e-12)
    assert e["o"].scheme == "default (Custom.reset_parameters: orthogonal)"
    assert e["o"].expected_std == pytest.approx(1 / math.sqrt(40), rel=1e-12)
    assert (
        e["t"].scheme
        == "default (Custom.reset_parameters: trunc_normal(std=0.02, a=-0.04, b=0.04))"
    )
    assert e["t"].expected_std == pytest.approx(0.02 * 0.8796, rel=1e-3)  # truncated at ±2σ
    assert e["s"].scheme == "default (Custom.reset_parameters: normal, then mul_(0.1))"
    assert e["s"].expected_std == pytest.approx(0.1, rel=1e-12)
    assert e["c"].scheme == "default (Custom.reset_parameters: normal, then clamp_(-1, 1))"
    assert e["c"].expected_std is None
    assert not any(t.flags for t in e.values())


def test_default_on_two_drawing_threads_gives_the_values_of_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`default` draws from torch's one global RNG (`reset_parameters`), seeded per tensor: the
    engine's two drawing threads must not interleave those draws. Without the lock around the
    seeded section the values changed from run to run."""
    import copy

    base = nn.Sequential(*[nn.Linear(96, 96) for _ in range(16)])

    def values(threads: int, ahead: int) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(stream_mod, "DRAW_THREADS", threads)
        monkeypatch.setattr(stream_mod, "DRAW_AHEAD", ahead)
        net = copy.deepcopy(base)
        reinit.apply_to_module(net, ["*=default"], seed=3)
        return {k: v.clone() for k, v in net.state_dict().items()}

    one = values(1, 0)  # drawn in line, one after another
    for _ in range(3):
        two = values(2, 2)
        assert two.keys() == one.keys()
        for name in one:
            assert torch.equal(two[name], one[name]), name


def _global_rng_reference(module: nn.Module, name: str, seed: int) -> torch.Tensor:
    """What `default` promises for a plain torch module: its `reset_parameters()` run on
    torch's global generator seeded with `seed_for(seed, name)`."""
    from reinit.schemes import seed_for

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed_for(seed, name))
        module.reset_parameters()
    return module.weight.detach().clone()


def test_default_on_a_private_generator_gives_the_global_generators_values() -> None:
    """The draws run on a generator of the drawing thread's own (so two threads draw at
    once); the values are exactly those of the global generator seeded the same way, and the
    caller's global RNG state is untouched."""
    net = nn.Sequential(nn.Linear(300, 200), nn.Embedding(50, 64))
    torch.manual_seed(11)
    state = torch.get_rng_state()
    got = reinit.apply_to_module(net, ["*.weight=default"], seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert {t.name for t in got.tensors if t.action == "reinit"} == {"0.weight", "1.weight"}
    assert torch.equal(net[0].weight, _global_rng_reference(nn.Linear(300, 200), "0.weight", 5))
    assert torch.equal(net[1].weight, _global_rng_reference(nn.Embedding(50, 64), "1.weight", 5))


class _DropoutInit(nn.Module):
    """An init drawing through a call that takes no generator (dropout's mask comes from
    the global generator): it escapes the private generator."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(64, 64))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(nn.functional.dropout(torch.ones(64, 64), 0.5))


def test_default_whose_draw_escapes_the_private_generator_is_drawn_on_the_global_one() -> None:
    """A draw the private generator cannot take (dropout) moves the global generator: the
    tensor is drawn again the serial way, so its values are still the global generator's
    seeded with the tensor's seed, on one thread or two, and the caller's RNG is untouched."""
    net = nn.Sequential(*[_DropoutInit() for _ in range(6)])
    torch.manual_seed(2)
    state = torch.get_rng_state()
    reinit.apply_to_module(net, ["*=default"], seed=9)
    assert torch.equal(torch.get_rng_state(), state)
    for i, m in enumerate(net):
        want = _global_rng_reference(_DropoutInit(), f"{i}.weight", 9)
        assert torch.equal(m.weight, want), i
        assert 0 < int((want == 0).sum()) < want.numel()  # really drawn, half dropped


def test_default_on_a_module_with_the_old_weight_norm_is_one_line_or_works() -> None:
    """`torch.nn.utils.weight_norm` (the old hook form) keeps `weight` as a plain attribute that
    autograd computes from `weight_g` and `weight_v`; `default` copies the owning module to run
    its init. Its other tensors get their init; weight_g/weight_v, which Conv1d's
    reset_parameters never sets, are a one-line SchemeError and the module is left unchanged.

    Was: RuntimeError out of `copy.deepcopy` ('Only Tensors created explicitly by the user
    (graph leaves) support the deepcopy protocol'), a traceback."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 4, 3), nn.Linear(3, 3))
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(model[0], dim=2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(reinit.SchemeError, match=r"does not set '0\.weight_g'"):
        reinit.apply_to_module(model, ["*=default"], seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = reinit.apply_to_module(model, ["0.bias=default"], seed=0)
    assert [e.name for e in report.tensors if e.changes] == ["0.bias"]
    assert not torch.equal(before["0.bias"], model[0].bias.detach())
