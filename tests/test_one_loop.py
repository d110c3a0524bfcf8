"""One apply loop (issue 12): `probe`, `apply_to_state_dict` and `apply_to_module` run the same
streaming Applier as `reinit apply`, so the schemes that read other values (`copy(...)`, which
reads another tensor, and `mean_resize`, which reads the tensor's own rows) work everywhere
and give the values `reinit apply` writes for the same tensors and seed.

Internal: also tests reinit.planning.model_load, reinit.rules, reinit.tools.probe directly (not
the `reinit` API).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import reinit
from reinit.cli import main
from reinit.planning.model_load import build_real
from reinit.rules import parse_rules
from reinit.tools.probe import apply_rules_in_memory, probe

HERE = Path(__file__).parent
MLP = "models_for_tests:mlp(depth=3, width=8, inputs=8)"
# names in the MLP: 0/2/4 are the Linear layers
READING = ["2.weight=copy(4.weight)", "0.weight=mean_resize(old_rows=4)", "4.weight=kaiming"]


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def _applied(tmp_path: Path, state: dict[str, torch.Tensor], rules: list[str], **kw: object):
    src, out = tmp_path / "src.safetensors", tmp_path / "out.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, src)
    reinit.apply(src, rules, out, seed=7, default_report=False, **kw)  # type: ignore[arg-type]
    return load_file(out)


def test_probe_applies_copy_and_mean_resize_as_apply_writes_them(tmp_path: Path) -> None:
    module = build_real(MLP, seed=3)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    expected = _applied(tmp_path, before, READING, model=MLP)

    the_plan = apply_rules_in_memory(module, parse_rules(READING), seed=7)

    assert {e.name for e in the_plan.entries if e.changes} == {"0.weight", "2.weight", "4.weight"}
    got = module.state_dict()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    # what the schemes mean: copy reads the source as it was before the run; mean_resize
    # keeps the old rows
    assert torch.equal(got["2.weight"], before["4.weight"])
    assert torch.equal(got["0.weight"][:4], before["0.weight"][:4])
    assert not torch.equal(got["0.weight"][4:], before["0.weight"][4:])
    assert got["0.weight"].requires_grad is False  # a state_dict view; the parameter itself:
    assert module[0].weight.requires_grad


def test_probe_library_and_cli_accept_reading_schemes() -> None:
    result = probe(MLP, READING, input_shape=(4, 8), seed=0)
    assert result.after is not None and result.after != result.before
    r = CliRunner().invoke(
        main,
        ["probe", MLP, "--input-shape", "4,8", "--json", *(a for x in READING for a in ("-r", x))],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rules"] == READING


def test_apply_to_state_dict_and_module_accept_reading_schemes(tmp_path: Path) -> None:
    module = build_real(MLP, seed=5)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    expected = _applied(tmp_path, state, READING[:2])

    new, report = reinit.apply_to_state_dict(state, READING[:2], seed=7)
    assert {e.name for e in report.tensors if e.changes} == {"0.weight", "2.weight"}
    for name, value in expected.items():
        assert torch.equal(new[name], value), name

    report = reinit.apply_to_module(module, READING[:2], seed=7)
    for name, value in expected.items():
        assert torch.equal(module.state_dict()[name], value), name


def test_probe_keeps_tied_parameters_tied() -> None:
    # before: probe planned only the first name of a tied pair, so a rule naming the second
    # matched nothing; through apply's engine both names take the rule's values
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    module = Tied()
    the_plan = apply_rules_in_memory(module, parse_rules(["head.weight=zeros"]), seed=0)
    assert {e.name: e.action for e in the_plan.entries} == {
        "emb.weight": "reinit",
        "head.weight": "reinit",
    }
    assert module.head.weight is module.emb.weight and not module.emb.weight.any()
