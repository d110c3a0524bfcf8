"""Nothing in a recipe, a `--set`, a config.json or a checkpoint runs code (issue #23 C1, C2):
a recipe's `model: module:callable` and `unsafe_pickle:` are requests that only the command line
grants (`--trust-model-callable`, `--unsafe-pickle`), and a config with `auto_map` is refused
before transformers can prompt for, import or download its code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import child_env, run
from safetensors.torch import save_file

import reinit
from reinit.errors import UsageError

PAYLOAD = "os:system('touch PWNED')"


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(4, 4)}, src)
    return src


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    src = _source(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(
        f"source: {src}\noutput: {tmp_path / 'out'}\nrules: ['*.weight=normal']\n{extra}"
    )
    return path


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("how", ["file", "set", "env"])
def test_a_recipe_model_callable_runs_nothing(tmp_path, monkeypatch, how, dry):
    monkeypatch.chdir(tmp_path)
    extra = {"file": f'model: "{PAYLOAD}"\n', "set": "", "env": "model: ${EVIL}\n"}[how]
    args = ["run", str(_recipe(tmp_path, extra)), "-q", *(["--dry-run"] if dry else [])]
    if how == "set":
        args += ["--set", f"model={PAYLOAD}"]
    res = run(*args, env={"EVIL": PAYLOAD})
    assert res.exit_code == 2, res.output
    assert "add --trust-model-callable os:system to the command line" in res.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


def test_the_api_with_a_recipe_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _recipe(tmp_path, f'model: "{PAYLOAD}"\n')
    for sets in ((), (f"model={PAYLOAD}",)):
        with pytest.raises(UsageError, match="--trust-model-callable os:system"):
            reinit.load_recipe(path, sets)
    # the model key as a path object is never imported, whoever builds the options
    with pytest.raises(UsageError):
        reinit.plan(_source(tmp_path), ["*=zeros"], model=Path(PAYLOAD))
    assert not (tmp_path / "PWNED").exists()


def test_a_granted_callable_runs(tmp_path, monkeypatch):
    """The user's yes on the command line (or the caller's, in Python): the callable runs."""
    monkeypatch.chdir(tmp_path)
    path = _recipe(tmp_path, f'model: "{PAYLOAD}"\n')
    recipe = reinit.load_recipe(path, trust_model_callable=["os:system"])
    with pytest.raises(UsageError, match="returned int, not a torch.nn.Module"):
        reinit.plan_recipe(recipe)
    assert (tmp_path / "PWNED").exists()  # it did run: the user allowed exactly this


def test_run_model_flag_is_the_users_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("run", str(_recipe(tmp_path)), "-q", "--dry-run", "--model", PAYLOAD)
    assert res.exit_code == 2 and "returned int" in res.stderr, res.output
    assert (tmp_path / "PWNED").exists()


def test_a_recipe_cannot_trust_its_own_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _recipe(tmp_path, "unsafe_pickle: [m.safetensors]\n")
    for args in ((), ("--dry-run",)):
        res = run("run", str(path), "-q", *args)
        assert res.exit_code == 2 and "add --unsafe-pickle m.safetensors" in res.stderr
    with pytest.raises(UsageError, match="add --unsafe-pickle"):
        reinit.load_recipe(path)
    assert reinit.load_recipe(path, unsafe_pickle=["m.safetensors"]).unsafe_pickle
    res = run("run", str(_recipe(tmp_path)), "-q", "--set", "unsafe_pickle=[m.safetensors]")
    assert res.exit_code == 2 and "add --unsafe-pickle m.safetensors" in res.stderr
    assert not (tmp_path / "out").exists()


def test_trust_flag_takes_module_callable(tmp_path):
    res = run("run", str(_recipe(tmp_path)), "--trust-model-callable", "nonsense")
    assert res.exit_code == 2 and "write MODULE:CALLABLE" in res.stderr, res.output


# --- C2: a config.json with auto_map ------------------------------------------------------


def _remote_code_dir(tmp_path: Path) -> Path:
    d = tmp_path / "evil"
    d.mkdir()
    marker = tmp_path / "PWNED"
    code = f"open({str(marker)!r}, 'w').close()\n"
    (d / "configuration_evil.py").write_text(
        code + "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    (d / "modeling_evil.py").write_text(code)
    config = {
        "model_type": "evil",
        "architectures": ["EvilModel"],
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModel": "modeling_evil.EvilModel",
        },
    }
    (d / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2, 2)}, d / "model.safetensors")
    return d


def _child(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reinit", *args],
        input="y\ny\ny\n",  # whatever a prompt would ask, the answer is yes
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")),
        timeout=120,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("probe", "evil"),
        ("apply", "evil/model.safetensors", "-r", "w=zeros", "--model", "evil", "--dry-run"),
        ("verify", "evil/model.safetensors", "--forward"),
    ],
    ids=["probe", "apply-model", "verify-forward"],
)
def test_auto_map_config_is_refused(tmp_path, args):
    _remote_code_dir(tmp_path)
    out = _child(tmp_path, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""  # no prompt
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "auto_map" in lines[0] and "evil/config.json" in lines[0], lines
    assert not (tmp_path / "PWNED").exists()
