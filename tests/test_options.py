"""One ApplyOptions (reinit/options.py): `reinit apply`'s flags, a recipe's keys and the API's
keyword arguments are the same set as its fields, minus the exceptions each field documents;
the API takes them as keywords or as one `options=` object; and a recipe's dry run plans each
step on the previous step's result, as the run does.

Internal: also tests reinit.options, reinit.recipe.validate directly (not the `reinit` API).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import reinit
from reinit.cli import main
from reinit.options import (
    APPLY_FIELDS,
    ApplyOptions,
    OptionKwargs,
    meta,
    option_names,
)
from reinit.recipe.validate import OWN_STEP_KEYS, OWN_TOP_KEYS, STEP_KEYS, TOP_KEYS

APPLY_OWN = {"source", "rules", "output", "dry_run", "all_tensors", "as_json", "quiet", "by"}
NOT_FLAGS = {"default_report", "progress", "config"}
NOT_RECIPE_KEYS = {"default_report", "progress", "config"}


def test_apply_flags_are_the_option_fields_with_flags():
    params = {p.name for p in main.commands["apply"].params}
    assert params - APPLY_OWN == set(option_names()) - NOT_FLAGS
    for name in NOT_FLAGS:
        assert not meta(name).flags and meta(name).why_not  # each exception says why
    # the flag spelled as the metadata says, with its help
    by_name = {p.name: p for p in main.commands["apply"].params}
    assert by_name["allow_unmatched"].opts == ["--allow-unmatched"]
    assert by_name["reports"].opts == ["--report"] and by_name["reports"].multiple


def test_recipe_keys_are_the_option_fields_with_recipe_keys():
    keys = {meta(n).key or n for n in option_names() if n not in NOT_RECIPE_KEYS}
    assert set(TOP_KEYS) - set(OWN_TOP_KEYS) == keys
    per_step = {meta(n).key or n for n in option_names() if meta(n).per_step}
    assert set(STEP_KEYS) - set(OWN_STEP_KEYS) == per_step
    assert per_step == {"seed", "strict", "allow_unmatched", "add", "drop", "rename", "resize"}
    for name in NOT_RECIPE_KEYS:
        assert meta(name).recipe is None and meta(name).why_not


def test_api_keywords_are_the_option_fields():
    keys = OptionKwargs.__required_keys__ | OptionKwargs.__optional_keys__
    assert keys == set(option_names()) == APPLY_FIELDS
    for fn in (reinit.apply, reinit.plan, reinit.apply_to_state_dict, reinit.apply_to_module):
        params = inspect.signature(fn).parameters
        assert "options" in params and params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD


def tiny(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "a.weight": torch.randn(8, 4, generator=g),
            "a.bias": torch.randn(8, generator=g),
            "b.weight": torch.randn(3, 8, generator=g),
            "b.bias": torch.randn(3, generator=g),
        },
        path,
    )
    return path


def test_an_unknown_keyword_is_a_type_error_naming_the_valid_ones(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    with pytest.raises(
        TypeError, match=r"apply\(\) got an unexpected keyword argument 'sed'.*seed"
    ):
        reinit.apply(src, ["*=zeros"], tmp_path / "o.safetensors", sed=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"plan\(\) .* 'overwrite'"):
        reinit.plan(src, ["*=zeros"], overwrite=True)
    with pytest.raises(TypeError, match="'in_place'"):
        reinit.apply_to_state_dict({"w": torch.ones(2, 2)}, ["w=zeros"], in_place=True)
    assert not (tmp_path / "o.safetensors").exists()


def test_options_object_equals_keywords_and_keywords_override_it(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    rules = ["*.weight=kaiming_normal"]
    reinit.apply(src, rules, tmp_path / "kw.safetensors", seed=3, drop=["b.*"])
    opts = ApplyOptions(seed=3, drop="b.*")  # one string is one item
    assert opts.drop == ("b.*",)
    reinit.apply(src, rules, tmp_path / "obj.safetensors", options=opts)
    reinit.apply(src, rules, tmp_path / "over.safetensors", options=opts.updated(seed=9), seed=3)
    kw, obj = load_file(tmp_path / "kw.safetensors"), load_file(tmp_path / "obj.safetensors")
    assert sorted(kw) == ["a.bias", "a.weight"]
    assert all(torch.equal(kw[n], obj[n]) for n in kw)
    over = load_file(tmp_path / "over.safetensors")
    assert all(torch.equal(kw[n], over[n]) for n in kw)
    # the in-memory functions: positional seed, else the options' seed
    state = {"w": torch.zeros(4, 4)}
    a, _ = reinit.apply_to_state_dict(state, ["w=normal"], options=ApplyOptions(seed=5))
    b, _ = reinit.apply_to_state_dict(state, ["w=normal"], 5)
    assert torch.equal(a["w"], b["w"])


def test_torch_dtype_and_device_objects_are_taken_as_their_names(tmp_path):
    """A pipeline passes `dtype=torch.float16`, `device=torch.device("cpu")`: the same as
    the names (was an AttributeError from `.strip()`/`.startswith()` deep in the run)."""
    src = tiny(tmp_path / "m.safetensors")
    reinit.apply(src, ["*=normal"], tmp_path / "s.safetensors", dtype="float16", device="cpu")
    reinit.apply(
        src,
        ["*=normal"],
        tmp_path / "t.safetensors",
        dtype=torch.float16,  # type: ignore[typeddict-item]
        device=torch.device("cpu"),  # type: ignore[typeddict-item]
    )
    by_name, by_object = (
        load_file(tmp_path / "s.safetensors"),
        load_file(tmp_path / "t.safetensors"),
    )
    assert all(by_object[n].dtype == torch.float16 for n in by_object)
    assert all(torch.equal(by_name[n], by_object[n]) for n in by_name)
    assert ApplyOptions(dtype=torch.bfloat16).dtype == "bfloat16"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("dtype", 3),
        ("device", 0),
        ("strict", "yes"),
        ("overwrite", 1),
        ("max_shard_size", 1.5),
        ("max_shard_size", True),
        ("plot", 3),
        ("reference_tolerance", "2"),
        ("key", 1),
        ("format", None),
    ],
)
def test_an_option_of_the_wrong_type_is_a_usage_error_naming_it(tmp_path, keyword, value):
    """Not an AttributeError/TypeError from inside the run, nor `strict="yes"` taken as
    true: a UsageError that names the keyword, before anything is written."""
    src = tiny(tmp_path / "m.safetensors")
    with pytest.raises(reinit.UsageError, match=f"^{keyword}= must be "):
        reinit.apply(src, ["*=zeros"], tmp_path / "o.safetensors", **{keyword: value})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def _rows(plan: reinit.Plan) -> list[tuple]:
    return [
        (e.name, e.action, e.shape, e.dtype, e.rule.text if e.rule else None) for e in plan.entries
    ] + [("dropped", plan.dropped)]


def test_recipe_dry_run_equals_the_run_step_by_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny(tmp_path / "m.safetensors")
    (tmp_path / "r.yaml").write_text(
        "source: m.safetensors\n"
        "output: out.safetensors\n"
        "steps:\n"
        "  - rules: ['*.weight=lecun_normal']\n"
        "  - rules: ['enc.*=zeros']\n"
        "    drop: ['b.*']\n"
        "    rename: ['a.*=enc.{1}']\n"
    )
    recipe = reinit.load_recipe("r.yaml")
    dry = reinit.plan_recipe(recipe)
    # the run, step by step with files in between (byte-identical to the recipe's run)
    step0, step1 = recipe.steps
    run0 = reinit.plan("m.safetensors", step0.rules, options=step0.options)
    reinit.apply("m.safetensors", step0.rules, "mid.safetensors", options=step0.options)
    run1 = reinit.plan("mid.safetensors", step1.rules, options=step1.options)
    assert [_rows(p) for p in dry] == [_rows(run0), _rows(run1)]
    assert sorted(dry[1].dropped) == ["b.bias", "b.weight"]
    assert sorted(e.name for e in dry[1].entries) == ["enc.bias", "enc.weight"]
    # and the recipe's own run writes what the last plan says
    report = reinit.run_recipe(recipe)
    assert [e.name for e in report.tensors] == [e.name for e in dry[1].entries]
    assert sorted(load_file("out.safetensors")) == ["enc.bias", "enc.weight"]
    # the CLI's --dry-run prints these plans and writes nothing new
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(main, ["run", "r.yaml", "--dry-run"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "enc.weight" in res.output and "step 2:" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_dry_run_recipe_is_refused_by_run_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny(tmp_path / "m.safetensors")
    (tmp_path / "r.yaml").write_text("source: m.safetensors\nrules: ['*=zeros']\ndry_run: true\n")
    with pytest.raises(reinit.UsageError, match="plan_recipe"):
        reinit.run_recipe(reinit.load_recipe("r.yaml"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "r.yaml"]


def test_a_recipe_plot_key_plots_as_the_flag_does(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    tiny(tmp_path / "m.safetensors")
    (tmp_path / "r.yaml").write_text(
        "source: m.safetensors\noutput: o.safetensors\nplot: std.png\nrules: ['*.weight=zeros']\n"
    )
    reinit.run_recipe(reinit.load_recipe("r.yaml"))
    assert (tmp_path / "std.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
