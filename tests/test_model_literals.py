"""`--model` arguments as Python literals, `model:` in recipes and `reinit run --model`, and
`apply_to_module` using the module itself for `default` and `type:` (issue 14 item 3).

Internal: also tests reinit.planning.model_load directly (not the `reinit` API).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file, save_file

import reinit
from reinit.planning.model_load import model_factory

HERE = Path(__file__).parent

NETMOD = """
import torch


class Net(torch.nn.Module):
    def __init__(self, flag=True, n=2, name="x", dims=(4,)):
        super().__init__()
        if not isinstance(flag, bool):  # as a real model's `pretrained=` would need
            raise TypeError(f"flag must be a bool, got {flag!r}")
        self.flag, self.n, self.name, self.dims = flag, n, name, dims
        self.fc = torch.nn.Linear(dims[0], n)
        if flag:
            self.extra = torch.nn.Linear(n, n)
"""


@pytest.fixture()
def netmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "lit_netmod.py").write_text(NETMOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(HERE))
    return "lit_netmod"


def test_model_arguments_are_python_literals(netmod):
    net = model_factory(f"{netmod}:Net(flag=False, n=3, name=None, dims=(5,))")()
    assert net.flag is False and net.n == 3 and net.name is None and net.dims == (5,)
    assert not hasattr(net, "extra")  # 'False' as a string would be truthy


def test_cli_model_with_literal_arguments_plans_default(tmp_path, netmod):
    torch.manual_seed(0)
    src = tmp_path / "net.safetensors"
    save_file({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, src)
    out = tmp_path / "out.safetensors"
    res = run(
        "apply", src, "-o", out, "--model", f"{netmod}:Net(flag=False, n=3)", "-r", "*=default"
    )
    assert res.exit_code == 0, res.output
    assert load_file(out)["fc.weight"].abs().sum() > 0


@pytest.mark.parametrize(
    ("args", "frag"),
    [
        ("flag=os.system", "argument flag (os.system) is not a Python literal"),
        ("open('x')", "argument 1 (open('x')) is not a Python literal"),
        ("n=3,,", "do not parse"),
    ],
)
def test_a_non_literal_argument_is_exit_2_naming_it(tmp_path, netmod, args, frag):
    src = tmp_path / "net.safetensors"
    save_file({"fc.weight": torch.zeros(3, 4)}, src)
    refused(
        tmp_path,
        [
            "apply",
            str(src),
            "-o",
            str(tmp_path / "o.safetensors"),
            "--model",
            f"{netmod}:Net({args})",
            "-r",
            "*=default",
        ],
        2,
        frag,
    )


def _conv_source(tmp_path: Path) -> Path:
    import models_for_tests

    torch.manual_seed(1)
    net = models_for_tests.convnet()
    path = tmp_path / "conv.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def _recipe(tmp_path: Path, src: Path, with_model: bool) -> Path:
    data: dict[str, object] = {
        "source": str(src),
        "output": str(tmp_path / "out.safetensors"),
        "steps": [
            {"rules": ["type:Conv2d=default"]},  # an in-memory step: takes the model too
            {"rules": ["fc.bias=zeros"]},
        ],
    }
    if with_model:
        data["model"] = "models_for_tests:convnet"
    path = tmp_path / ("with.json" if with_model else "without.json")
    path.write_text(json.dumps(data))
    return path


def test_recipe_model_key_and_run_model_flag(tmp_path, netmod):
    src = _conv_source(tmp_path)
    before = load_file(src)
    res = run("run", _recipe(tmp_path, src, True), "--quiet")
    assert res.exit_code == 0, res.output
    got = load_file(tmp_path / "out.safetensors")
    assert not torch.equal(got["stem.weight"], before["stem.weight"])
    assert torch.equal(got["fc.weight"], before["fc.weight"])
    assert not got["fc.bias"].any()
    first = got["stem.weight"]

    without = _recipe(tmp_path, src, False)
    for p in tmp_path.glob("out.*"):
        p.unlink()
    assert run("run", without, "--quiet").exit_code == 2  # type: needs a model
    res = run("run", without, "--quiet", "--model", "models_for_tests:convnet")
    assert res.exit_code == 0, res.output
    assert torch.equal(load_file(tmp_path / "out.safetensors")["stem.weight"], first)


def test_apply_to_module_uses_the_module_for_default_and_type():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        initializer_range=0.5,  # far from anything torch's own init would give
    )
    torch.manual_seed(0)
    bert = BertModel(cfg)
    with torch.no_grad():
        for p in bert.parameters():
            p.zero_()
    report = reinit.apply_to_module(bert, ["encoder.layer.1.*.weight=default"], seed=3)
    q = bert.encoder.layer[1].attention.self.query.weight
    assert abs(q.std().item() - 0.5) < 0.1  # BERT's own init: normal(0, initializer_range)
    assert torch.equal(bert.encoder.layer[1].output.LayerNorm.weight, torch.ones(32))
    assert not bert.encoder.layer[0].attention.self.query.weight.any()
    assert report.entry("encoder.layer.1.attention.self.query.weight").action == "reinit"

    report = reinit.apply_to_module(bert, ["type:Linear=ones"], seed=3)
    assert bert.encoder.layer[0].attention.self.query.weight.eq(1).all()
    assert bert.pooler.dense.weight.eq(1).all() and bert.pooler.dense.bias.eq(1).all()
    assert not bert.embeddings.word_embeddings.weight.any()  # an Embedding, not a Linear
