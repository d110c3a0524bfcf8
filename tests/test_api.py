"""The Python API (docs/guide/python-api.md): reinit.apply -> a typed Report, open_checkpoint, plan, and the
in-memory forms apply_to_state_dict / apply_to_module, which give the CLI's values.

Internal: also tests reinit.report.entries, reinit.report.stats, reinit.tools.diff directly (not
the `reinit` API).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import reinit
from reinit.cli import main
from reinit.errors import RuleError
from reinit.report.entries import Report, TensorEntry
from reinit.report.stats import Stats

RULES = [
    "*.weight=kaiming_normal(nonlinearity=relu)",
    "*.bias=zeros",
    "0.weight=lecun_normal",
    "1.*=keep",
    "2.weight=delta_orthogonal(relu)",
    "4.weight=scaled_normal(0.02, 3)",
    "4.bias=bias_prior(0.01)",
    "5.weight=small_init",
]


def make_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 16),
        torch.nn.LayerNorm(16),
        torch.nn.Conv1d(16, 16, 3),
        torch.nn.BatchNorm1d(16),  # buffers, incl. an int64 num_batches_tracked
        torch.nn.Linear(16, 16),
        torch.nn.Embedding(20, 16),
    )


def test_apply_to_module_equals_the_cli_on_its_saved_state_dict(tmp_path):
    module = make_module()
    src = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, src)
    res = CliRunner().invoke(
        main,
        ["apply", str(src), "-o", str(tmp_path / "o.safetensors"), "--seed", "7", "--json", "-q"]
        + [a for r in RULES for a in ("--rule", r)],
    )
    assert res.exit_code == 0, res.output
    cli = load_file(tmp_path / "o.safetensors")
    cli_report = json.loads(res.stdout)

    params_before = {n: p for n, p in module.named_parameters()}
    report = reinit.apply_to_module(module, RULES, seed=7)

    after = module.state_dict()
    assert set(after) == set(cli)
    for name, t in cli.items():
        assert torch.equal(after[name], t), name
    # in place: the same Parameter objects, still trainable
    for n, p in module.named_parameters():
        assert p is params_before[n] and p.requires_grad
    # the same report, entry by entry (but where it came from and how long it took)
    # and the reference scale: apply_to_module knows its model, the CLI ran without --model
    theirs = {t["name"]: t for t in cli_report["tensors"]}

    def comparable(e: dict) -> dict:
        out = {k: v for k, v in e.items() if k not in ("reference", "reference_std")}
        out["flags"] = [f for f in e["flags"] if f != "off_reference"]
        # with no reference (the CLI's case) a std moved from its own before is noted
        out["notes"] = [n for n in e["notes"] if not n.endswith("; no reference")]
        return out

    for entry in report.to_dict()["tensors"]:
        assert comparable(entry) == comparable(theirs[entry["name"]])
    assert report.summary.reinit == cli_report["summary"]["reinit"] > 5
    assert report.entry("3.num_batches_tracked").action == "kept"
    assert report.entry("2.weight").scheme == "delta_orthogonal(gain=relu)"


def test_apply_to_state_dict_leaves_its_input_alone():
    module = make_module()
    sd = module.state_dict()
    copy = {k: v.clone() for k, v in sd.items()}
    new, report = reinit.apply_to_state_dict(sd, ["*.weight=orthogonal"], seed=3)
    for k in sd:
        assert torch.equal(sd[k], copy[k])
    assert new["0.bias"] is sd["0.bias"]  # untouched tensors are not copied
    assert not torch.equal(new["0.weight"], sd["0.weight"])
    assert new["0.weight"].dtype == sd["0.weight"].dtype
    assert isinstance(report, Report) and report.output is None
    assert report.source == "<state_dict>"
    # the same values again from the same seed; others from another seed
    again, _ = reinit.apply_to_state_dict(sd, ["*.weight=orthogonal"], seed=3)
    other, _ = reinit.apply_to_state_dict(sd, ["*.weight=orthogonal"], seed=4)
    assert torch.equal(again["0.weight"], new["0.weight"])
    assert not torch.equal(other["0.weight"], new["0.weight"])


def test_module_config_supplies_scheme_arguments():
    module = torch.nn.Linear(8, 8)

    class Config:
        def to_dict(self):
            return {"num_hidden_layers": 8, "hidden_size": 50}

    module.config = Config()  # what a transformers model carries
    report = reinit.apply_to_module(module, ["weight=scaled_normal", "bias=small_init"])
    assert report.entry("weight").expected_std == pytest.approx(0.02 / 4)
    assert report.entry("bias").expected_std == pytest.approx(math.sqrt(2 / 250))
    with pytest.raises(RuleError, match="needs layers=N"):
        reinit.apply_to_module(torch.nn.Linear(2, 2), ["weight=scaled_normal"])


def test_typed_errors_and_nothing_changed_on_error():
    module = make_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuleError, match="matches no tensor"):
        reinit.apply_to_module(module, ["*.weight=zeros", "missing.*=ones"])
    with pytest.raises(reinit.StrictError):
        reinit.apply_to_module(module, ["*.weight=kaiming"], strict=True)  # LayerNorm: 1-D
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])


def test_report_lookups_and_json_that_is_not_a_report_are_typed_errors():
    """`entry(name)` of a name not listed is a UsageError that is also a KeyError (a caller
    may catch either); `Report.from_dict` of a JSON that is not a report is a UsageError
    naming what is missing (was a bare KeyError/TypeError)."""
    report = reinit.apply_to_module(make_module(), RULES, seed=0)
    again = Report.from_dict(json.loads(report.to_json()))
    assert again.entry("0.weight").after == report.entry("0.weight").after
    for catch in (KeyError, reinit.UsageError):
        with pytest.raises(catch, match=r"^the report of <Sequential> has no tensor 'nope' \("):
            report.entry("nope")
    d = json.loads(report.to_json())
    for bad, fragment in [
        ({}, "no 'reinit_version'"),
        ({**d, "tensors": [{"name": "x"}]}, "no 'shape'"),
        ({**d, "seed": "abc"}, "invalid literal"),
        ({**d, "summary": {"tensors": 1}}, "missing"),
    ]:
        with pytest.raises(reinit.UsageError, match=f"^not a reinit JSON report: .*{fragment}"):
            Report.from_dict(bad)


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (
            lambda: reinit.apply_to_module({"w": torch.ones(2)}, ["*=zeros"]),
            reinit.UsageError,
            "module must be a torch.nn.Module, got dict",
        ),
        (lambda: reinit.run_recipe("r.yaml"), reinit.UsageError, "recipe must be a reinit.Recipe"),
        (lambda: reinit.plan_recipe("r.yaml"), reinit.UsageError, "recipe must be a reinit.Recipe"),
        (lambda: reinit.load_recipe(5), reinit.UsageError, "path must be a str or os.PathLike"),
        (lambda: reinit.plan_new(5), reinit.UsageError, "or an nn.Module, got int"),
        (lambda: reinit.new(5, "o.safetensors"), reinit.UsageError, "or an nn.Module, got int"),
        (lambda: reinit.new(torch.nn.Linear(2, 2), None), reinit.UsageError, "output is required"),
        (
            lambda: reinit.new_split(torch.nn.Linear(2, 2), None),
            reinit.UsageError,
            "output is required",
        ),
        (lambda: reinit.parse_rule(5), reinit.RuleError, "'PATTERN=ACTION' string, got int"),
        (lambda: reinit.calculate_gain(5), reinit.SchemeError, "is a name"),
        (lambda: reinit.forward_check(5), reinit.UsageError, "must be a path"),
        (
            lambda: reinit.apply("m.safetensors", ["*=zeros"], 5),
            reinit.UsageError,
            "output must be a path",
        ),
        # were a bare TypeError from os.fspath, a NotImplementedError from torch, or a seed
        # silently computed from swapped arguments
        (
            lambda: reinit.new(torch.nn.Linear(2, 2), 5),
            reinit.UsageError,
            "output must be a path",
        ),
        (lambda: reinit.seed_for("w", 0), reinit.UsageError, "seed_for: seed must be an int"),
        (lambda: reinit.seed_for(True, "w"), reinit.UsageError, "seed_for: seed must be an int"),
        (lambda: reinit.seed_for(0, 5), reinit.UsageError, "seed_for: name must be a str"),
        (
            lambda: reinit.apply_to_state_dict({"w": torch.eye(3).to_sparse()}, ["w=zeros"]),
            reinit.UsageError,
            "tensor 'w' is sparse",
        ),
    ],
)
def test_an_argument_of_the_wrong_type_is_a_typed_error(
    tmp_path, monkeypatch, call, error, fragment
):
    """A pipeline's slip (a path where a Recipe goes, a dict where a module goes) is a
    ReinitError naming the argument, not an AttributeError/TypeError from deep inside."""
    monkeypatch.chdir(tmp_path)
    save_file({"w": torch.ones(2, 2)}, "m.safetensors")
    with pytest.raises(error, match=fragment):
        call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


class _WithExtraState(torch.nn.Linear):
    """A layer whose `state_dict()` holds a non-tensor `_extra_state` (as quantized and
    TransformerEngine layers do)."""

    def get_extra_state(self) -> dict[str, float]:
        return {"scale": 2.0}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.loaded_extra = state


def test_apply_to_state_dict_keeps_entries_that_are_not_tensors():
    """A module's state dict with `_extra_state`: the result loads back with
    load_state_dict (strict), the extra state the input's own object (was left out: 'Missing
    key(s) in state_dict: "0._extra_state"'); apply_to_module takes the module (was an
    AttributeError: the extra state read as a tensor)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(_WithExtraState(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    state = model.state_dict()
    new, report = reinit.apply_to_state_dict(state, ["*.weight=zeros"], seed=0)
    assert new["0._extra_state"] is state["0._extra_state"]
    assert report.summary.tensors == 4 and "0._extra_state" not in {t.name for t in report.tensors}
    model.load_state_dict(new)
    assert model[0].loaded_extra == {"scale": 2.0} and not model[0].weight.any()
    # in place, with `default` (the module's own init; its fans read the module's tensors)
    report = reinit.apply_to_module(model, ["*.weight=zeros", "*.bias=default"], seed=0)
    assert report.summary.reinit == 4 and not model[2].weight.any()


def test_apply_returns_a_typed_report_and_plan_and_open_checkpoint_work(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(8, 4), "a.bias": torch.randn(8)}, src)
    with reinit.open_checkpoint(src) as ckpt:
        assert ckpt.names() == ["a.bias", "a.weight"] or set(ckpt.names()) == {"a.bias", "a.weight"}
        assert ckpt.ref("a.weight").shape == (8, 4)
    plan = reinit.plan(src, ["*.weight=lecun_uniform"])
    assert {e.name: e.action for e in plan.entries} == {"a.weight": "reinit", "a.bias": "kept"}
    rep = reinit.apply(src, ["*.weight=lecun_uniform"], tmp_path / "o.safetensors", seed=2)
    e = rep.entry("a.weight")
    assert isinstance(e, TensorEntry) and isinstance(e.after, Stats)
    assert e.expected_std == pytest.approx(1 / 2) and e.fan_in == 4
    assert rep.summary.reinit == 1 and rep.seed == 2
    # the in-memory form of the same plan on the same tensors gives the same values
    new, _ = reinit.apply_to_state_dict(load_file(src), ["*.weight=lecun_uniform"], seed=2)
    assert torch.equal(new["a.weight"], load_file(tmp_path / "o.safetensors")["a.weight"])
    # plan also takes a state dict
    assert reinit.plan(load_file(src), ["*.bias=zeros"]).entries[0].name in ("a.bias", "a.weight")


def test_public_api_is_exported_and_typed():
    import importlib.resources

    for name in ("apply", "plan", "open_checkpoint", "apply_to_module", "apply_to_state_dict"):
        assert name in reinit.__all__ and callable(getattr(reinit, name))
    assert importlib.resources.files("reinit").joinpath("py.typed").is_file()
    for name in reinit.__all__:  # every advertised name resolves (the package is lazy)
        assert getattr(reinit, name) is not None, name
    assert set(reinit._LAZY) <= set(reinit.__all__)  # and every lazy name is advertised
    with pytest.raises(AttributeError, match="no_such_thing"):
        reinit.no_such_thing  # noqa: B018


def test_the_cli_answers_help_without_importing_torch():
    """`reinit --help` should not pay ~2 s for torch: the package imports its API lazily."""
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from reinit.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); "
        "print(r.exit_code, 'apply' in r.output, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "True", "False"]


@pytest.mark.parametrize("module_name", ["reinit.run.inmemory", "reinit.recipe.files"])
def test_docstring_examples_run(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_tied_parameters_stay_tied_and_match_the_cli_on_the_torch_file(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.emb = torch.nn.Embedding(30, 8)
    model.head = torch.nn.Linear(8, 30, bias=False)
    model.head.weight = model.emb.weight  # tied, as an LM head
    torch.save(model.state_dict(), tmp_path / "m.pt")
    rules = ["*.weight=small_init(8)"]
    res = CliRunner().invoke(
        main, ["apply", str(tmp_path / "m.pt"), "-o", str(tmp_path / "o.safetensors"), "-q"]
        + ["--seed", "3", "--rule", rules[0]],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cli = load_file(tmp_path / "o.safetensors")
    report = reinit.apply_to_module(model, rules, seed=3)
    assert model.head.weight is model.emb.weight
    assert torch.equal(model.emb.weight.detach(), cli["emb.weight"])
    assert torch.equal(cli["emb.weight"], cli["head.weight"])
    assert any("tied with" in n for n in report.entry("head.weight").notes)


def test_apply_to_state_dict_takes_a_config():
    """`config` reaches the schemes that read it (it once landed in the model-view slot)."""
    import math

    state = {"h.0.proj.weight": torch.zeros(64, 32)}
    new, report = reinit.apply_to_state_dict(
        state, ["*.proj.weight=scaled_normal"], config={"num_hidden_layers": 8}
    )
    e = report.entry("h.0.proj.weight")
    assert e.expected_std == pytest.approx(0.02 / math.sqrt(16))
    assert abs(
        new["h.0.proj.weight"].std().item() - e.expected_std
    ) < 5 * e.expected_std / math.sqrt(2 * 2048)


def test_dir_lists_only_the_api():
    """`dir(reinit)` is the API: no helper of the package module (`importlib`, `Any`,
    `TYPE_CHECKING`, `annotations`) and no submodule, even after submodules were imported."""
    import reinit.tools.diff  # noqa: F401  (makes `reinit.tools` an attribute)

    names = dir(reinit)
    assert names == sorted(reinit.__all__)
    for helper in ("Any", "TYPE_CHECKING", "annotations", "importlib", "tools", "run", "io"):
        assert helper not in names, helper


def test_public_docstrings_name_no_internal_module_path():
    """What `help(reinit.X)` shows points users at `reinit.X` names, not at internal modules."""
    import inspect
    import re

    internal = re.compile(
        r"reinit\.(run|planning|io|report|tools|recipe|schemes|transforms|cli)\.[a-z_]+"
    )
    for name in reinit.__all__:
        doc = inspect.getdoc(getattr(reinit, name)) or ""
        assert not internal.search(doc), (name, internal.search(doc))


def test_tests_of_internal_modules_say_so():
    """A test module that imports a module below `reinit` (not the API) says so in its
    docstring with a line starting `Internal:`, so a refactor knows what it may break."""
    import ast
    from pathlib import Path

    api = {"reinit", "reinit.cli", "reinit.errors", "reinit.version"}
    silent = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reinit.")
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name.startswith("reinit.")
        }
        if imported - api and "\nInternal:" not in (ast.get_docstring(tree) or ""):
            silent.append(path.name)
    assert not silent, silent


def _gpt2_or_wav2vec2(kind: str) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":  # its block init draws every `c_proj.weight` below it again
        cfg = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32
        )
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.Wav2Vec2Config(  # a weight_norm'ed convolution, whose bias is drawn too
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(8, 8), conv_stride=(2, 2), conv_kernel=(3, 3), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    return transformers.Wav2Vec2Model(cfg)


@pytest.mark.parametrize("how", ["apply_to_module", "model=module"])
@pytest.mark.parametrize("kind", ["gpt2", "wav2vec2"])
def test_a_live_module_keeps_every_tensor_no_rule_names(tmp_path, kind, how):
    # planning learns the architecture's own init by running it on copies; a live module
    # (apply_to_module's own model, or model=) holds real tensors, and none of them may change
    # but those the rules name, while `default` draws what it draws from a model on meta
    model = _gpt2_or_wav2vec2(kind)
    model.save_pretrained(tmp_path / "src")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = {"gpt2": "transformer.h.1.mlp.c_fc.bias"}.get(
        kind, "encoder.layers.0.attention.k_proj.bias"
    )
    rules = [f"{name}=ones"]
    if how == "model=module":
        reinit.apply(tmp_path / "src", rules, tmp_path / "o.safetensors", model=model)
        want: set[str] = set()
    else:
        reinit.apply_to_module(model, rules)
        want = {name}
    assert {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])} == want
    drawn = ["*=default"]
    reinit.apply_to_module(model, drawn, seed=3)
    reinit.apply(
        tmp_path / "src", drawn, tmp_path / "d.safetensors", model=tmp_path / "src", seed=3
    )
    after = model.state_dict()
    assert all(torch.equal(after[k], t) for k, t in load_file(tmp_path / "d.safetensors").items())
