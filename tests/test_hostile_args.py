"""Hostile scheme arguments and recipes (issue 16): each is a one-line usage error naming the
argument (with its allowed range) or the recipe file and line, never an internal error.

Internal: also tests reinit.planning.planner, reinit.planning.surgery, reinit.recipe.validate,
reinit.rules directly (not the `reinit` API).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import run
from safetensors.torch import save_file
from treesnap import assert_unchanged, tree_state

from reinit.errors import RuleError, UsageError
from reinit.planning.planner import plan
from reinit.planning.surgery import parse_add
from reinit.recipe.validate import load_recipe
from reinit.rules import parse_rule

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class T:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@pytest.mark.parametrize(
    "action, fragment",
    [
        ("normal(std=nan)", "'std' must be a finite number in [0, inf)"),
        ("normal(std=inf)", "'std' must be a finite number"),
        ("normal(std=-1)", "'std' must be in [0, inf), got -1"),
        ("uniform(a=1, b=0)", "needs a <= b, got a=1, b=0"),
        ("uniform(-inf, inf)", "'a' must be a finite number"),
        ("trunc_normal(std=0)", "'std' must be in (0, inf), got 0"),
        ("trunc_normal(a=1, b=1)", "needs a < b"),
        ("kaiming_uniform(a=1e200)", "'a' must be in [-1e+06, 1e+06], got 1e+200"),
        ("kaiming_normal(a=nan)", "'a' must be a finite number"),
        ("sparse(sparsity=nan)", "'sparsity' must be a finite number in [0, 1]"),
        ("sparse(sparsity=1.5)", "'sparsity' must be in [0, 1], got 1.5"),
        ("constant(val=1" + "0" * 400 + ")", "'val' must be a number within float64's range"),
        ("xavier_uniform(gain=inf)", "'gain' must be a finite number"),
    ],
)
def test_bad_scheme_arguments_are_refused_at_parse_time(action, fragment):
    with pytest.raises(RuleError) as e:
        parse_rule(f"*.weight={action}")
    assert fragment in str(e.value), str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    "action, dtype, ok",
    [
        ("constant(val=1e39)", torch.float32, False),
        ("constant(val=1e39)", torch.float64, True),
        ("uniform(0, 1e39)", torch.float32, False),
        ("uniform(0, 1e5)", torch.float16, False),
        ("uniform(0, 1e5)", torch.bfloat16, True),
        ("normal(mean=-1e300)", torch.float32, False),
    ],
)
def test_a_value_that_overflows_the_target_dtype_is_named_at_plan_time(action, dtype, ok):
    rule = parse_rule(f"*.weight={action}")
    tensors = [T("a.weight", (2, 2), dtype)]
    if ok:
        assert plan(tensors, [rule]).entries[0].action == "reinit"
        return
    with pytest.raises(RuleError) as e:
        plan(tensors, [rule])
    label = str(dtype).removeprefix("torch.")
    assert f"overflows {label}" in str(e.value) and "a.weight" in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("x=[2]:constant(val=1e39)", "overflows float32"),
        ("x=[2]:uniform(0, 1e5):dtype=float16", "overflows float16"),
        ("x=[2]:normal(std=nan)", "'std' must be a finite number"),
    ],
)
def test_added_tensors_get_the_same_argument_checks(text, fragment):
    with pytest.raises(RuleError) as e:
        parse_add(text)
    assert fragment in str(e.value) and e.value.exit_code == 2


def test_overflow_on_the_command_line_is_exit_2_without_output(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.zeros(2, 2)}, str(src))
    out = tmp_path / "o.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "reinit",
            "apply",
            str(src),
            "-o",
            str(out),
            "-r",
            "*=constant(val=1e39)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert r.returncode == 2, r.stderr
    assert "overflows float32" in r.stderr and "internal error" not in r.stderr
    assert not out.exists()


# --- recipes ------------------------------------------------------------------------------

BILLION_LAUGHS = (
    "source: m.safetensors\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "rules: ['*=zeros']\n"
)


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        (
            "deep.json",
            '{"source": "m", "rules": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "line 1: nested deeper than 32 levels",
        ),
        (
            "deep.toml",
            'source = "m"\nrules = ' + "[" * 100_000 + "]" * 100_000 + "\n",
            "line 2: nested deeper than 32 levels",
        ),
        ("deep.yaml", "source: m\nrules: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested"),
        ("laughs.yaml", BILLION_LAUGHS, "expands to more than 200000 values"),
        (
            "add.yaml",
            "source: m\nrules: ['*=zeros']\nadd: 5\n",
            "line 3: 'add' must be a list of strings",
        ),
        (
            "drop.yaml",
            "source: m\nrules: ['*=zeros']\ndrop: [1]\n",
            "line 3: 'drop' must be a list of strings",
        ),
        (
            "rename.yaml",
            "source: m\nrules: ['*=zeros']\nrename: null\n",
            "line 3: 'rename' must be a list of strings",
        ),
        (
            "step.json",
            '{"source": "m",\n "steps": [{"rules": ["*=zeros"],\n  "drop": {"x": 1}}]}',
            "line 3: 'drop' must be a list of strings",
        ),
    ],
)
def test_hostile_recipes_are_usage_errors_with_file_and_line(tmp_path, name, text, fragment):
    """In-process (each fails fast); the billion laughs also through the CLI, below."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert fragment in msg and str(path) in msg, msg
    assert e.value.exit_code == 2 and "\n" not in msg


def test_billion_laughs_through_the_cli_is_refused_in_bounded_time(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    r = subprocess.run(
        [sys.executable, "-m", "reinit", "run", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "expands to more than 200000 values" in r.stderr and str(path) in r.stderr
    assert "internal error" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


NUL_KEYS = {
    "output": '"output": "o\\u0000.safetensors"',
    "report": '"report": ["r\\u0000.json"]',
    "plot": '"plot": "p\\u0000.png"',
    "from": '"rules": ["*.weight=from(m\\u0000.safetensors)"]',
    "unsafe_pickle": '"unsafe_pickle": ["a\\u0000.pt"]',
}


@pytest.mark.parametrize("key", [*sorted(NUL_KEYS), "--set"])
def test_a_nul_in_a_recipe_value_is_a_usage_error_with_its_line(tmp_path, monkeypatch, key):
    """A NUL character (JSON's \\u0000, YAML's "\\0", also through --set's YAML list) reached
    the OS as a path and ended as `internal error: ValueError: embedded null byte`."""
    monkeypatch.chdir(tmp_path)
    save_file({"a.weight": torch.ones(2, 2)}, tmp_path / "m.safetensors")
    extra = NUL_KEYS.get(key, '"output": "o.safetensors"')
    rules = "" if key == "from" else '"rules": ["*.weight=zeros"],\n'
    (tmp_path / "r.json").write_text(f'{{"source": "m.safetensors",\n{rules}{extra}}}\n')
    sets = ["--set", 'report=["r\\0.json"]'] if key == "--set" else []
    before = tree_state(tmp_path)
    res = run("run", "r.json", "-q", *sets)
    assert res.exit_code == 2, res.output
    assert "NUL character" in res.stderr and "internal error" not in res.stderr, res.stderr
    assert ("--set report" if key == "--set" else "r.json line ") in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert_unchanged(before, tree_state(tmp_path))
