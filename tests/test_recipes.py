"""`reinit run RECIPE`: each recipe form gives the bytes the same flags give, multi-step recipes
chain in memory (no intermediate file, output byte-identical to chained applies), --set and
${VAR}, errors that name the key and its line, and the examples in examples/.

Internal: also tests reinit.io directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run
from safetensors.torch import load_file, save_file

import reinit
from reinit.io import writer

EXAMPLES = Path(__file__).parents[1] / "examples"


def gpt2_dir(path: Path, vocab: int = 99, d: int = 16, layers: int = 2, seed: int = 0) -> Path:
    """A GPT-2-shaped Hugging Face directory (names, shapes and config.json of GPT2Model)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {
        "wte.weight": torch.randn(vocab, d, generator=g),
        "wpe.weight": torch.randn(32, d, generator=g),
    }
    for i in range(layers):
        for ln in ("ln_1", "ln_2"):
            sd[f"h.{i}.{ln}.weight"] = torch.ones(d) + 0.1 * torch.randn(d, generator=g)
            sd[f"h.{i}.{ln}.bias"] = 0.1 * torch.randn(d, generator=g)
        for name, shape in [
            ("attn.c_attn", (d, 3 * d)),
            ("attn.c_proj", (d, d)),
            ("mlp.c_fc", (d, 4 * d)),
            ("mlp.c_proj", (4 * d, d)),
        ]:
            sd[f"h.{i}.{name}.weight"] = torch.randn(*shape, generator=g)
            sd[f"h.{i}.{name}.bias"] = torch.randn(shape[1], generator=g)
    sd["ln_f.weight"] = torch.ones(d)
    sd["ln_f.bias"] = torch.zeros(d)
    path.mkdir(parents=True)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    config = {"model_type": "gpt2", "n_layer": layers, "n_embd": d, "vocab_size": vocab}
    (path / "config.json").write_text(json.dumps(config))
    return path


def small_file(path: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    save_file(
        {
            "enc.0.weight": torch.randn(24, 16, generator=g),
            "enc.0.bias": torch.randn(24, generator=g),
            "enc.1.weight": torch.randn(24, 24, generator=g).to(torch.bfloat16),
            "norm.weight": torch.ones(24),
            "head.weight": torch.randn(5, 24, generator=g),
            "head.bias": torch.zeros(5),
        },
        path,
        metadata={"format": "pt", "note": "kept"},
    )
    return path


def to_toml(doc: dict) -> str:
    """Just enough TOML for these tests: scalars, lists of strings, [[steps]] tables."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[\n" + "".join(f"  {json.dumps(x)},\n" for x in v) + "]"
        return json.dumps(v)

    lines = [f"{k} = {val(v)}" for k, v in doc.items() if k != "steps"]
    for step in doc.get("steps", []):
        lines += ["", "[[steps]]"] + [f"{k} = {val(v)}" for k, v in step.items()]
    return "\n".join(lines) + "\n"


def write_recipe(path: Path, doc: dict) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(doc, indent=2))
    elif path.suffix == ".toml":
        path.write_text(to_toml(doc))
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


RULES = [
    "*.weight=lecun_normal",
    "enc.1.weight=variance_scaling(2.0, fan_avg, uniform)",
    "head.bias=bias_prior(0.05)",
    "norm.weight=keep",
]


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_each_recipe_form_gives_the_bytes_the_flags_give(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    flags = ["apply", "m.safetensors", "-o", "flags.safetensors", "--seed", "5", "-q"]
    flags += [a for r in RULES for a in ("--rule", r)] + ["--report", "flags.csv"]
    assert run(*flags).exit_code == 0
    doc = {
        "source": "m.safetensors",
        "output": "recipe.safetensors",
        "seed": 5,
        "rules": RULES,
        "report": ["recipe.csv"],
        "strict": False,
    }
    recipe = write_recipe(tmp_path / f"r{suffix}", doc)
    res = run("run", recipe, "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "recipe.safetensors").read_bytes() == (
        tmp_path / "flags.safetensors"
    ).read_bytes()
    assert (tmp_path / "recipe.csv").read_text() == (tmp_path / "flags.csv").read_text()
    assert (tmp_path / "recipe.report.json").is_file()


def test_multi_step_recipe_equals_chained_applies_and_writes_no_intermediate_file(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    gpt2_dir(tmp_path / "model")
    step1 = ["*.weight=lecun_normal", "*.bias=zeros"]
    step2 = ["wte.weight=mean_resize(old_rows=90)", "h.*.c_proj.weight=scaled_normal"]
    reinit.apply("model", step1, "chain1", seed=1)
    reinit.apply("chain1", step2, "chain2", seed=2)

    doc = {
        "source": "model",
        "output": "piped",
        "seed": 1,
        "steps": [{"rules": step1}, {"rules": step2, "seed": 2}],
    }
    recipe = write_recipe(tmp_path / "pipe.yaml", doc)
    before = set(os.listdir(tmp_path))
    opened: list[str] = []
    real_init = writer.SafetensorsWriter.__init__

    def spy(self, path, *a, **k):
        opened.append(os.fspath(path))
        real_init(self, path, *a, **k)

    monkeypatch.setattr(writer.SafetensorsWriter, "__init__", spy)
    res = run("run", recipe, "--json", "-q")
    assert res.exit_code == 0, res.output
    assert len(opened) == 1 and "piped" in opened[0]  # one file written: the final output
    assert set(os.listdir(tmp_path)) - before == {"piped"}
    assert sorted(os.listdir(tmp_path / "piped")) == [
        "config.json",
        "model.safetensors",
        "reinit-report.json",
    ]
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "piped" / f).read_bytes() == (tmp_path / "chain2" / f).read_bytes()

    # one report for the whole pipeline: the last step that acted, std before the first change
    rep = json.loads(res.stdout)
    assert rep["rules"] == step1 + step2
    by = {t["name"]: t for t in rep["tensors"]}
    wte = by["wte.weight"]
    assert wte["scheme"] == "mean_resize(old_rows=90)"
    orig = load_file(tmp_path / "model" / "model.safetensors")["wte.weight"].double()
    assert wte["before"]["std"] == pytest.approx(orig.std(unbiased=False).item(), rel=1e-6)
    assert by["h.0.attn.c_proj.weight"]["expected_std"] == pytest.approx(0.02 / math.sqrt(4))
    assert by["h.0.attn.c_attn.weight"]["scheme"] == "lecun_normal"
    on_disk = json.loads((tmp_path / "piped" / "reinit-report.json").read_text())
    assert on_disk["tensors"] == rep["tensors"]


def test_set_overrides_and_environment_variables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "source: ${SRC}\noutput: ${OUT:-default.safetensors}\nseed: ${SEED:-1}\n"
        "rules:\n  - '*.weight=normal(0, 0.02)'\n"
    )
    env = {"SRC": "m.safetensors", "SEED": "4", "OUT": None}
    assert run("run", recipe, "-q", env=env).exit_code == 0
    reinit.apply("m.safetensors", ["*.weight=normal(0, 0.02)"], "ref4.safetensors", seed=4)
    same = (tmp_path / "default.safetensors").read_bytes() == (
        tmp_path / "ref4.safetensors"
    ).read_bytes()
    assert same

    sets = ["--set", "seed=7", "--set", "output=o7.safetensors"]
    sets += ["--set", 'rules=["*.weight=zeros", "head.*=ones"]']
    assert run("run", recipe, "-q", *sets, env=env).exit_code == 0
    reinit.apply("m.safetensors", ["*.weight=zeros", "head.*=ones"], "ref7.safetensors", seed=7)
    assert (tmp_path / "o7.safetensors").read_bytes() == (
        tmp_path / "ref7.safetensors"
    ).read_bytes()

    res = run("run", recipe, env={"SRC": None})
    assert res.exit_code == 2
    assert "r.yaml line 1: environment variable SRC is not set" in res.output


def _line_of(text: str, needle: str) -> int:
    return next(i for i, s in enumerate(text.splitlines(), 1) if needle in s)


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_unknown_keys_name_the_key_and_its_line(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    doc = {
        "source": "m.safetensors",
        "seed": 1,
        "steps": [{"rules": ["*.weight=zeros"]}, {"rules": ["head.*=ones"], "sed": 3}],
    }
    recipe = write_recipe(tmp_path / f"r{suffix}", doc)
    text = recipe.read_text()
    res = run("run", recipe)
    assert res.exit_code == 2
    line = _line_of(text, "sed")
    assert f"r{suffix} line {line}: unknown key 'sed' in steps[1]; did you mean 'seed'?" in (
        res.output
    )
    assert "Traceback" not in res.output

    doc2 = {"source": "m.safetensors", "rules": ["*.weight=zeros"], "overwirte": True}
    recipe = write_recipe(tmp_path / f"s{suffix}", doc2)
    res = run("run", recipe)
    assert res.exit_code == 2
    assert f"s{suffix} line {_line_of(recipe.read_text(), 'overwirte')}: unknown key" in res.output
    assert "did you mean 'overwrite'?" in res.output
    assert not (tmp_path / "m.reinit.safetensors").exists()


def test_bad_values_are_one_line_errors_with_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    r = tmp_path / "r.yaml"
    r.write_text("source: m.safetensors\nrules: ['*.weight=zeros']\nseed: many\n")
    res = run("run", r)
    assert res.exit_code == 2 and "r.yaml line 3: 'seed' must be an integer" in res.output
    r.write_text("source: m.safetensors\nrules: ['*.weight=zeros']\nseed: 1\nseed: 2\n")
    assert "r.yaml line 4: key 'seed' given twice" in run("run", r).output
    r.write_text("source: m.safetensors\nsteps:\n  - rules: ['nothing.here=zeros']\n")
    res = run("run", r)
    assert res.exit_code == 2 and "matches no tensor" in res.output
    r.write_text("source: m.safetensors\nrules: [x\n")
    assert "not valid YAML" in run("run", r).output
    r.write_text("source: m.safetensors\nrules:\n  - *.weight=zeros\n")
    res = run("run", r)
    assert res.exit_code == 2 and "r.yaml line 3: not valid YAML" in res.output
    assert "quote rules that start with '*'" in res.output
    bad = tmp_path / "r.ini"
    bad.write_text("x")
    assert "use .yaml, .yml, .toml or .json" in run("run", bad).output
    assert not (tmp_path / "m.reinit.safetensors").exists()


def test_add_drop_rename_in_a_recipe_equal_the_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    flags = run(
        "apply", "m.safetensors", "-o", "flags.safetensors", "-q",
        "--drop", "head.*", "--rename", "enc.*=encoder.{1}",
        "--add", "cls.weight=[3,24]:xavier_uniform", "--add", "cls.bias=[3]:zeros",
        "-r", "encoder.1.weight=normal(std=0.02)",
    )  # fmt: skip
    assert flags.exit_code == 0, flags.output
    r = tmp_path / "r.yaml"
    r.write_text(
        "source: m.safetensors\noutput: recipe.safetensors\n"
        "drop: ['head.*']\nrename: ['enc.*=encoder.{1}']\n"
        "add: ['cls.weight=[3,24]:xavier_uniform', 'cls.bias=[3]:zeros']\n"
        "rules: ['encoder.1.weight=normal(std=0.02)']\n"
    )
    res = run("run", r, "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "recipe.safetensors").read_bytes() == (
        tmp_path / "flags.safetensors"
    ).read_bytes()
    names = set(load_file(tmp_path / "recipe.safetensors"))
    assert names == {
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.1.weight",
        "norm.weight",
        "cls.weight",
        "cls.bias",
    }


def test_dry_run_plans_every_step_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gpt2_dir(tmp_path / "model")
    doc = {
        "source": "model",
        "steps": [{"rules": ["*.weight=lecun_normal"]}, {"rules": ["*.bias=bias_prior(0.2)"]}],
    }
    r = write_recipe(tmp_path / "r.json", doc)
    before = sorted(os.listdir(tmp_path))
    res = run("run", r, "--dry-run")
    assert res.exit_code == 0
    assert "step 1:" in res.output and "step 2:" in res.output
    assert "bias_prior(p=0.2)" in res.output and "lecun_normal" in res.output
    assert sorted(os.listdir(tmp_path)) == before


# --- the examples ------------------------------------------------------------------------


def test_example_gpt2_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gpt2_dir(tmp_path / "gpt2", layers=3)
    res = run("run", EXAMPLES / "gpt2-init.yaml", "-q", env={"MODEL": "gpt2", "OUT": None})
    assert res.exit_code == 0, res.output
    out = load_file(tmp_path / "gpt2-init" / "model.safetensors")
    rep = json.loads((tmp_path / "gpt2-init" / "reinit-report.json").read_text())
    by = {t["name"]: t for t in rep["tensors"]}
    assert by["h.2.mlp.c_proj.weight"]["expected_std"] == pytest.approx(0.02 / math.sqrt(6))
    assert by["h.0.attn.c_attn.weight"]["expected_std"] == 0.02
    assert torch.equal(out["h.1.ln_2.weight"], torch.ones(16))
    assert torch.equal(out["ln_f.bias"], torch.zeros(16))
    assert not any(t["flags"] for t in rep["tensors"] if t["action"] == "reinit")
    assert (tmp_path / "gpt2-init.report.md").is_file()


def test_example_grow_vocab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gpt2_dir(tmp_path / "old", vocab=90, seed=1)
    gpt2_dir(tmp_path / "new", vocab=97, seed=2)
    env = {"MODEL": "new", "OLD": "old", "OLD_VOCAB": "90", "OUT": None}
    res = run("run", EXAMPLES / "grow-vocab.toml", "-q", env=env)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path)) == ["grown", "new", "old"]  # no intermediate output
    old = load_file(tmp_path / "old" / "model.safetensors")
    out = load_file(tmp_path / "grown" / "model.safetensors")
    assert torch.equal(out["wte.weight"][:90], old["wte.weight"])
    mean = old["wte.weight"].double().mean(0)
    new_rows = out["wte.weight"][90:].double()
    assert torch.allclose(new_rows, mean.expand(7, -1), atol=1e-3)  # spread √1e-9·σ ≈ 3e-5
    assert not torch.equal(new_rows[0], new_rows[1])  # drawn, not the bare mean
    for name in old:
        if name != "wte.weight":
            assert torch.equal(out[name], old[name]), name


def test_example_detection_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            conv = lambda: torch.nn.Sequential(  # noqa: E731
                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)
            )
            self.cls = torch.nn.Module()
            self.cls.conv = conv()
            self.box = torch.nn.Module()
            self.box.conv = conv()
            self.cls_logits = torch.nn.Conv2d(8, 9, 3)
            self.bbox_pred = torch.nn.Conv2d(8, 4, 3)

    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(4, 8)
    model.head = Head()
    save_file(model.state_dict(), tmp_path / "det.safetensors")
    res = run(
        "run",
        EXAMPLES / "detection-head.json",
        "--json",
        "-q",
        env={"MODEL": "det.safetensors", "OUT": None},
    )
    assert res.exit_code == 0, res.output
    out = load_file(tmp_path / "detector-init.safetensors")
    assert torch.allclose(out["head.cls_logits.bias"], torch.full((9,), -math.log(99)))
    assert torch.equal(out["backbone.weight"], model.backbone.weight.detach())
    rep = json.loads(res.stdout)
    assert rep["summary"]["reinit"] == 12 and rep["summary"]["skipped"] == 0


def test_every_example_parses(monkeypatch):
    found = sorted(p.name for p in EXAMPLES.iterdir() if re.search(r"\.(ya?ml|toml|json)$", p.name))
    assert found == ["detection-head.json", "gpt2-init.yaml", "grow-vocab.toml"]
    for key, value in {"MODEL": "m", "OLD": "o", "OLD_VOCAB": "3"}.items():
        monkeypatch.setenv(key, value)
    for name in found:
        recipe = reinit.load_recipe(EXAMPLES / name)
        assert recipe.source == "m" and recipe.steps


def test_a_failing_later_step_names_the_step_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    doc = {
        "source": "m.safetensors",
        "output": "out.safetensors",
        "steps": [
            {"rules": ["*.weight=lecun_normal"]},
            {"name": "head", "rules": ["classifier.*=zeros"]},
        ],
    }
    r = write_recipe(tmp_path / "r.yaml", doc)
    before = sorted(os.listdir(tmp_path))
    res = run("run", r)
    assert res.exit_code == 2
    line = _line_of(r.read_text(), "classifier.*=zeros")
    assert f"r.yaml line {line} (step 2, head): rule 'classifier.*=zeros' matches no" in res.output
    assert sorted(os.listdir(tmp_path)) == before


def test_multi_step_report_says_which_step_changed_each_tensor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file(
        {"a": torch.ones(4, 4), "b": torch.ones(4, 4), "c": torch.ones(4, 4)}, "m.safetensors"
    )
    doc = {
        "source": "m.safetensors",
        "output": "o.safetensors",
        "steps": [{"rules": ["a=zeros", "b=zeros"]}, {"rules": ["b=normal", "c=keep"]}],
    }
    res = run("run", write_recipe(tmp_path / "r.yaml", doc), "--json", "-q")
    assert res.exit_code == 0, res.output
    notes = {t["name"]: t["notes"] for t in json.loads(res.stdout)["tensors"]}
    assert notes == {"a": ["changed by step 1"], "b": ["changed by steps 1, 2"], "c": []}


@pytest.mark.parametrize(
    "rule, says",
    [
        ("head.weight=zeroes", "unknown scheme 'zeroes'"),
        ("head.weight=normal(sd=1)", "normal has no argument 'sd'"),
        ("head.weight=normal(std=-1)", "argument 'std' must be in [0, inf)"),
        ("head.weight=normal(", "missing ')'"),
        ("head.weight", "has no '='"),
    ],
)
@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_a_bad_rule_names_the_line_it_is_written_on(tmp_path, monkeypatch, suffix, rule, says):
    """A rule that does not parse (unknown scheme, bad argument or value, bad syntax) named
    only the file (`r.yaml: rule ...`), in a step of a long recipe too; now its line."""
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    doc = {
        "source": "m.safetensors",
        "steps": [{"rules": ["*.weight=zeros"]}, {"seed": 2, "rules": ["head.*=ones", rule]}],
    }
    recipe = write_recipe(tmp_path / f"r{suffix}", doc)
    res = run("run", recipe, "--dry-run")
    assert res.exit_code == 2
    line = _line_of(recipe.read_text(), rule)
    assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1
    assert f"r{suffix} line {line} (step 2): rule {rule!r}" in res.stderr, res.stderr
    assert says in res.stderr


def test_a_toml_rule_in_a_literal_string_names_its_own_line(tmp_path, monkeypatch):
    """TOML's parser keeps no positions: a bad rule named the `rules = [` line; its own line is
    found in the text for basic ("...") and literal ('...') strings alike."""
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'source = "m.safetensors"\nrules = [\n  "head.*=ones",\n  \'head.weight=zeroes\',\n]\n'
    )
    res = run("run", recipe, "--dry-run")
    assert res.exit_code == 2
    assert "r.toml line 4: rule 'head.weight=zeroes'" in res.stderr, res.stderr


def test_a_bad_rule_given_with_set_is_named_as_set_not_by_the_file_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    recipe = write_recipe(tmp_path / "r.yaml", {"source": "m.safetensors", "rules": ["a=zeros"]})
    res = run("run", recipe, "--set", 'rules=["head.weight=zeroes"]', "--dry-run")
    assert res.exit_code == 2
    assert res.stderr.startswith("error: --set rules: rule 'head.weight=zeroes'"), res.stderr


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_a_number_too_long_for_python_is_a_usage_error_with_its_line(tmp_path, monkeypatch, suffix):
    """A 5,000-digit integer (past Python's int-string cap) was `internal error: ValueError`,
    exit 1, in every recipe form and in `--set seed=`."""
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    huge = "9" * 5000
    recipe = tmp_path / f"r{suffix}"
    recipe.write_text(
        {
            ".yaml": f"source: m.safetensors\nrules: ['a=b']\nseed: {huge}\n",
            ".toml": f'source = "m.safetensors"\nrules = ["a=b"]\nseed = {huge}\n',
            ".json": f'{{"source": "m.safetensors",\n "rules": ["a=b"],\n "seed": {huge}}}',
        }[suffix]
    )
    res = run("run", recipe, "--dry-run")
    assert res.exit_code == 2, res.output
    line = _line_of(recipe.read_text(), huge)
    assert f"r{suffix} line {line}: a number of more than" in res.stderr
    assert "internal error" not in res.output
    ok = write_recipe(tmp_path / f"s{suffix}", {"source": "m.safetensors", "rules": ["a=b"]})
    res = run("run", ok, "--set", f"seed={huge}", "--dry-run")
    assert res.exit_code == 2 and "--set seed: 'seed' is an integer of 5000 digits" in res.stderr


def test_set_with_a_huge_or_non_ascii_step_index_names_the_missing_step(tmp_path, monkeypatch):
    """`--set steps.<5,000 digits>.seed=1` was `internal error: ValueError`; `steps.١.seed`
    (an Arabic-Indic one, which int() reads as 1) set steps[1] silently."""
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    doc = {"source": "m.safetensors", "steps": [{"rules": ["a=b"]}, {"rules": ["a=b"]}]}
    recipe = write_recipe(tmp_path / "r.yaml", doc)
    for index in ("9" * 5000, "\u0661"):
        res = run("run", recipe, "--set", f"steps.{index}.seed=1", "--dry-run")
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: --set steps.") and "internal" not in res.stderr
    res = run("run", recipe, "--set", "steps.\u0661.seed=1", "--dry-run")
    assert "error: --set steps.\u0661.seed: the recipe has no steps.\u0661" in res.stderr


def test_a_recipe_that_never_ends_is_read_only_up_to_the_cap(tmp_path, monkeypatch):
    """A recipe path that is /dev/zero (a size of 0 by stat, endless to read) was read
    whole: the 16 MiB cap was checked on st_size, and the read ran until memory ran out."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").symlink_to("/dev/zero")
    res = run("run", "r.yaml", "--dry-run")
    assert res.exit_code == 2
    assert "r.yaml: the recipe is larger than 16 MiB" in res.stderr


def test_errors_the_dry_run_and_the_report_number_steps_alike(tmp_path, monkeypatch):
    """The second step was `step 1 (b)` in errors and `step 1:` in the dry run, but
    `changed by step 2` in the report: one step, two numbers. All count from 1 now."""
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    doc = {
        "source": "m.safetensors",
        "output": "o.safetensors",
        "steps": [{"rules": ["*.weight=zeros"]}, {"name": "b", "rules": ["head.bias=ones"]}],
    }
    recipe = write_recipe(tmp_path / "r.yaml", doc)
    dry = run("run", recipe, "--dry-run")
    assert dry.exit_code == 0 and "step 1:" in dry.output and "step 2 (b):" in dry.output
    res = run("run", recipe, "--json", "-q")
    notes = {t["name"]: t["notes"] for t in json.loads(res.stdout)["tensors"]}
    assert notes["head.bias"] == ["changed by step 2"]
    bad = run("run", recipe, "--set", "steps.1.rules=nothing.here=zeros", "--dry-run")
    assert (
        bad.exit_code == 2 and "--set steps.1.rules (step 2, b): rule 'nothing.here" in bad.stderr
    )


@pytest.mark.parametrize("value", ["${OUT-model}", "${OUT:-${HOME}/m}", "${1}", "x${OUT"])
def test_a_variable_reference_a_recipe_cannot_expand_is_refused(tmp_path, monkeypatch, value):
    """`output: ${OUT-model}` (the shell's form without `:`) was kept as text: exit 0, the
    output written to a folder literally named `${OUT-model}`, whatever OUT held."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OUT", "wanted")
    small_file(tmp_path / "m.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: m.safetensors\noutput: '{value}'\nrules: ['head.bias=ones']\n")
    before = sorted(os.listdir(tmp_path))
    res = run("run", recipe)
    assert res.exit_code == 2, res.output
    assert "r.yaml line 2: " in res.stderr and "expands only ${VAR} and ${VAR:-default}" in (
        res.stderr
    )
    assert sorted(os.listdir(tmp_path)) == before
    recipe.write_text("source: m.safetensors\noutput: '$${OUT}.safetensors'\nrules: ['a=ones']\n")
    assert reinit.load_recipe(recipe).output == "${OUT}.safetensors"  # $$: a literal $


def test_a_step_name_is_escaped_in_the_dry_run_heading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    doc = {
        "source": "m.safetensors",
        "steps": [
            {"name": "a\x1b[2Jb", "rules": ["*.weight=zeros"]},
            {"rules": ["head.bias=ones"]},
        ],
    }
    res = run("run", write_recipe(tmp_path / "r.json", doc), "--dry-run")
    assert res.exit_code == 0 and "step 1 (a\\x1b[2Jb):" in res.output
    assert "\x1b" not in res.output


def test_a_rule_that_matches_nothing_names_its_line_in_the_run_and_the_dry_run(
    tmp_path, monkeypatch
):
    """A one-step recipe's unmatched rule said `error: rule 'x' matches no tensor` in the run
    (no file) but `r.yaml: rule ...` in its dry run; neither named the line."""
    monkeypatch.chdir(tmp_path)
    small_file(tmp_path / "m.safetensors")
    doc = {
        "source": "m.safetensors",
        "output": "o.safetensors",
        "rules": ["head.bias=ones", "nothing=zeros"],
    }
    recipe = write_recipe(tmp_path / "r.yaml", doc)
    line = _line_of(recipe.read_text(), "nothing=zeros")
    for args in ((), ("--dry-run",)):
        res = run("run", recipe, *args)
        assert res.exit_code == 2, res.output
        assert f"r.yaml line {line}: rule 'nothing=zeros' matches no tensor" in res.stderr
    assert not (tmp_path / "o.safetensors").exists()
