"""The command line: CliRunner for each command and its errors, and once through the
installed `reinit` executable in a subprocess.

Internal: also tests reinit.run.apply directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run
from safetensors.torch import load_file, save_file


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_file(
        {
            "layers.0.fc.weight": torch.randn(16, 8, generator=g),
            "layers.0.fc.bias": torch.zeros(16),
            "layers.0.norm.weight": torch.ones(16),
            "head.weight": torch.randn(4, 16, generator=g),
        },
        path,
    )
    return path


def test_apply_default_output_summary_and_table(ckpt):
    r = run("apply", str(ckpt), "--rule", "*.weight=kaiming")
    assert r.exit_code == 0, r.output
    assert "4 tensors, 2 reinit, 0 transplanted, 1 kept, 1 skipped" in r.stderr
    assert "layers.*.fc.weight" in r.stderr and "head.weight" in r.stderr  # by kind
    assert (
        "layers.0.fc.weight"
        in run("apply", str(ckpt), "-r", "*.weight=kaiming", "--by", "tensor", "--overwrite").stderr
    )
    assert "skipped 1: kaiming_normal needs a tensor of 2 or more dims" in r.stderr
    assert r.stdout == ""
    assert (ckpt.parent / "model.reinit.safetensors").is_file()
    assert (ckpt.parent / "model.reinit.report.json").is_file()


def test_apply_json_goes_to_stdout_only(ckpt, tmp_path):
    r = run(
        "apply",
        str(ckpt),
        "-r",
        "head.weight=zeros",
        "-o",
        str(tmp_path / "o.safetensors"),
        "--json",
    )
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["summary"]["reinit"] == 1
    assert doc["output"] == str(tmp_path / "o.safetensors")
    assert {t["name"]: t["action"] for t in doc["tensors"]}["head.weight"] == "reinit"


def test_dry_run_prints_plan_and_writes_nothing(ckpt):
    r = run("apply", str(ckpt), "-r", "*.weight=orthogonal", "--dry-run")
    assert r.exit_code == 0
    assert "dry run, nothing written" in r.stdout
    assert "layers.*.norm.weight" in r.stdout and "skipped" in r.stdout  # changed/skipped kinds
    assert "head.weight" in r.stdout and "layers.0.fc.bias" not in r.stdout  # unchanged: --all
    every = run(
        "apply", str(ckpt), "-r", "*.weight=orthogonal", "--dry-run", "--all", "--by", "tensor"
    )
    assert "layers.0.fc.bias" in every.stdout and "layers.0.norm.weight" in every.stdout
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["-r", "nothing=zeros"], 2, "matches no tensor; closest names"),
        (["-r", "*.weight=kaimin"], 2, "unknown scheme 'kaimin'"),
        (["-r", "*.weight=normal(sd=1)"], 2, "has no argument 'sd'"),
        (["-r", "layers.0.norm.weight=kaiming"], 2, "layers.0.norm.weight"),
        (["-r", "*.weight=kaiming", "--strict"], 2, "--strict"),
        (["-r", "*=zeros", "--device", "cuda"], 2, "CUDA is not available"),
        (["-r", "*=zeros", "--report", "x.txt"], 2, "unknown report format"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(ckpt, args, code, fragment):
    r = run("apply", str(ckpt), *args)
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in r.output
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.safetensors"]


def test_missing_input_and_corrupt_input(tmp_path):
    r = run("apply", str(tmp_path / "nope.safetensors"), "-r", "*=zeros")
    assert r.exit_code == 2 and "no such file" in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    r = run("apply", str(bad), "-r", "*=zeros")
    assert r.exit_code == 1 and "not valid JSON" in r.stderr and str(bad) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_existing_output_refused(ckpt):
    assert run("apply", str(ckpt), "-r", "head.weight=zeros").exit_code == 0
    r = run("apply", str(ckpt), "-r", "head.weight=ones")
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert run("apply", str(ckpt), "-r", "head.weight=ones", "--overwrite").exit_code == 0
    assert torch.equal(
        load_file(ckpt.parent / "model.reinit.safetensors")["head.weight"], torch.ones(4, 16)
    )


def test_allow_unmatched_warns(ckpt, tmp_path):
    r = run(
        "apply", str(ckpt), "-r", "head.weight=zeros", "-r", "nope=zeros", "--allow-unmatched", "-q"
    )
    assert r.exit_code == 0
    assert "warning: rule 'nope=zeros' matches no tensor" in r.stderr


def test_inspect(ckpt):
    r = run("inspect", str(ckpt), "--filter", "layers.*", "--stats")
    assert r.exit_code == 0
    assert "layers.0.fc.weight" in r.stdout and "head.weight" not in r.stdout and "std" in r.stdout
    r = run("inspect", str(ckpt), "--json")
    rows = json.loads(r.stdout)
    assert {x["name"] for x in rows} == {
        "layers.0.fc.weight",
        "layers.0.fc.bias",
        "layers.0.norm.weight",
        "head.weight",
    }
    assert {x["name"]: x["shape"] for x in rows}["head.weight"] == [4, 16]


def test_schemes_lists_every_scheme_with_formula():
    r = run("schemes")
    assert r.exit_code == 0
    for word in [
        "kaiming_normal(a=0, mode=fan_in, nonlinearity=leaky_relu)",
        "gain/√fan",
        "(b−a)/√12",
        "sparse(sparsity, std=0.01)",
        "keep",
        "from(SOURCE",
    ]:
        assert word in r.stdout
    doc = json.loads(run("schemes", "--json").stdout)
    assert {"uniform", "orthogonal", "dirac"} <= {d["name"] for d in doc}


def test_gain_and_measure():
    r = run("gain", "tanh", "--measure")
    assert r.exit_code == 0
    assert "gain 1.66667" in r.stdout and "1.59" in r.stdout
    assert "gain 1.41421" in run("gain", "leaky_relu", "0").stdout
    bad = run("gain", "mish")
    assert bad.exit_code == 2 and "relu" in bad.stderr


def test_report_command(ckpt, tmp_path):
    r = run("report", str(ckpt), "--json", "-o", str(tmp_path / "r.csv"))
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["output"] is None and len(doc["tensors"]) == 4
    assert (tmp_path / "r.csv").read_text().startswith("name,shape,dtype")


def test_internal_errors_are_one_line_unless_debugging(ckpt, monkeypatch):
    import reinit.run.apply as running

    def boom(*a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(running, "apply", boom)
    r = run("apply", str(ckpt), "-r", "*=zeros")
    assert r.exit_code == 1 and "internal error: ZeroDivisionError: oops" in r.stderr
    assert "REINIT_DEBUG=1" in r.stderr and "Traceback" not in r.stderr
    monkeypatch.setenv("REINIT_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):  # debugging: the exception itself escapes
        run("apply", str(ckpt), "-r", "*=zeros")


def test_installed_executable_in_a_subprocess(ckpt, tmp_path):
    exe = Path(sys.executable).with_name("reinit")
    assert exe.is_file(), "the project must be installed (./scripts/test does it)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ok = subprocess.run(
        [str(exe), "apply", str(ckpt), "-r", "*.weight=xavier_uniform", "--json", "-q"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["summary"]["reinit"] == 2
    assert ok.stderr == ""  # --quiet, and no progress bar when stderr is not a terminal
    bad = subprocess.run(
        [str(exe), "apply", str(ckpt), "-r", "x=y"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# --- first contact (issue 11) ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["apply"], ["apply", "--dry-run"], ["apply", "--seed", "3", "-o", "x.safetensors"]],
)
def test_apply_without_rules_is_a_usage_error_naming_what_to_pass(ckpt, tmp_path, args):
    before = sorted(os.listdir(tmp_path))
    r = run(args[0], str(ckpt), *args[1:])
    assert r.exit_code == 2, r.output
    assert "no rules" in r.output and "--rule PATTERN=ACTION" in r.output
    assert "--add/--drop/--rename" in r.output
    assert sorted(os.listdir(tmp_path)) == before  # no full copy written


def test_api_apply_without_rules_is_a_usage_error(ckpt, tmp_path):
    import reinit

    with pytest.raises(reinit.UsageError, match="no rules"):
        reinit.apply(ckpt, [], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("out", ["missing/dir/out.safetensors", "missing/dir/out/"])
def test_output_in_a_missing_folder_is_exit_2_naming_it(ckpt, tmp_path, out):
    r = run("apply", str(ckpt), "-r", "*=zeros", "-o", str(tmp_path / out))
    assert r.exit_code == 2, r.output
    assert f"the folder {tmp_path / 'missing' / 'dir'} does not exist" in r.output
    assert "create it" in r.output
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("command", "option", "name"),
    [
        ("apply", "--report", "r.json"),
        ("apply", "--plot", "p.png"),
        ("report", "-o", "r.md"),
        ("report", "--plot", "p.png"),
    ],
)
def test_a_report_or_plot_in_a_missing_folder_is_exit_2_before_any_work(
    ckpt, tmp_path, command, option, name
):
    """`--report missing/r.json` was found missing only when publishing, after all the work
    (hours, on a big model), and as exit 1 without the option's name; `-o` in a missing
    folder was already exit 2 up front. Now every output path is."""
    rules = ["-r", "*=zeros", "-o", str(tmp_path / "out.safetensors")] if command == "apply" else []
    target = tmp_path / "missing" / name
    r = run(command, str(ckpt), *rules, option, str(target))
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"error: {option} {target}: the folder {target.parent} does not")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-shard-size", "nan"],
        ["--dtype", "int8"],
        ["--format", "bogus"],
        ["--report", "r.txt"],
        ["--plot", "p.jpg"],
        ["--config", "not-json"],
        ["--labels", ",,"],
        ["--reference-tolerance", "0"],
        ["--device", "tpu"],
    ],
    ids=lambda f: f[0],
)
def test_a_dry_run_refuses_the_flags_the_run_refuses(ckpt, tmp_path, flags):
    """`--dry-run` never looked at the output flags: it said yes (exit 0) to a command the
    run then refused (exit 2), so a dry run as a pipeline's pre-flight check passed it. The
    same error line, from apply, new and a recipe's dry run."""
    out = ["-o", str(tmp_path / "out/")]
    real = run("apply", str(ckpt), "-r", "*=zeros", *out, *flags)
    assert real.exit_code == 2, real.output
    dry = run("apply", str(ckpt), "-r", "*=zeros", *out, *flags, "--dry-run")
    assert (dry.exit_code, dry.stderr) == (2, real.stderr)
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
               vocab_size=20).save_pretrained(tmp_path / "bert")  # fmt: skip
    if flags[0] not in ("--config", "--labels"):  # apply's alone
        new = run("new", str(tmp_path / "bert"), *out, *flags, "--dry-run")
        assert (new.exit_code, new.stderr) == (2, real.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "model.safetensors"]
    if flags[0] in ("--max-shard-size", "--dtype", "--format", "--device"):
        key = flags[0].removeprefix("--").replace("-", "_")
        recipe = tmp_path / "bert" / "r.yaml"
        recipe.write_text(f"source: {ckpt}\noutput: {recipe.parent}/o/\nrules: ['*=zeros']\n")
        planned = run("run", str(recipe), "--set", f"{key}={flags[1]}", "--dry-run")
        assert planned.exit_code == 2 and flags[0] in planned.stderr, planned.output


@pytest.mark.parametrize("output", ["out.json", "-", ""], ids=["suffix", "dash", "empty"])
def test_a_dry_run_refuses_an_output_the_run_refuses_by_its_name(
    ckpt, tmp_path, monkeypatch, output
):
    """`-o out.json` (no checkpoint format), `-o -` and `-o ""` are refused by the run (exit
    2) from their text alone, but `--dry-run` said yes to them (exit 0), so a dry run as a
    pre-flight check passed a command that then failed. The same line from apply, new and a
    recipe's dry run; nothing written."""
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
               vocab_size=20).save_pretrained(tmp_path / "bert")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    real = run("apply", str(ckpt), "-r", "*=zeros", "-o", output)
    assert real.exit_code == 2 and real.stderr.startswith("error: -o "), real.output
    dry = run("apply", str(ckpt), "-r", "*=zeros", "-o", output, "--dry-run")
    assert (dry.exit_code, dry.stderr) == (2, real.stderr)
    new = run("new", str(tmp_path / "bert"), "-o", output, "--dry-run")
    assert (new.exit_code, new.stderr) == (2, real.stderr)
    names = ["bert", "model.safetensors"]
    if output:  # a recipe's empty output is refused as a recipe value, its own line
        recipe = f"source: {ckpt}\noutput: '{output}'\nrules: ['*=zeros']\n"
        (tmp_path / "r.yaml").write_text(recipe)
        planned = run("run", "r.yaml", "--dry-run")
        assert (planned.exit_code, planned.stderr) == (2, real.stderr), planned.output
        names.append("r.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == names


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "", "-r", "*=zeros", "-o", "../out.safetensors"],
        ["inspect", ""],
        ["report", ""],
        ["verify", ""],
        ["diff", "", "model.safetensors"],
        ["probe", ""],
        ["new", "", "-o", "../out/"],
        ["apply", "../m.safetensors", "-r", "*=zeros", "-o", "", "--overwrite"],
        ["apply", "model.safetensors", "-r", "*=zeros", "--model", "", "-o", "../o.safetensors"],
        ["report", "model.safetensors", "--against", ""],
    ],
    ids=lambda a: " ".join(repr(x) if x == "" else x for x in a[:3]),
)
def test_an_empty_path_is_a_usage_error_never_the_current_directory(tmp_path, monkeypatch, args):
    """`reinit apply "$MODEL"` with MODEL unset read the current directory (pathlib's
    `Path("")` is "."), `new ""` built the model of its config.json, and `-o "" --overwrite`
    tried to replace the current directory, a reinit output, as a whole. Exit 2 saying the
    path is empty, nothing written, whatever the current directory holds."""
    from helpers import tiny_bert

    here = tiny_bert(tmp_path / "bert")
    run("apply", here, "-r", "pooler.*=zeros", "--in-place", "-q")  # a reinit output, too
    save_file({"w": torch.ones(2, 2)}, tmp_path / "m.safetensors")
    monkeypatch.chdir(here)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "path is empty (an unset variable?)" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_o_dash_is_not_stdout_and_writes_no_folder_named_dash(ckpt, tmp_path, monkeypatch):
    """`-o -` (stdout, by the shell's convention) wrote a folder named `-` (any -o without a
    checkpoint suffix is a folder), awkward to remove (`rm -r -` fails). Exit 2, nothing
    written; `-o ./-/` still names such a folder on purpose."""
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
               vocab_size=20).save_pretrained(tmp_path / "bert")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (["apply", str(ckpt), "-r", "*=zeros"], ["new", "bert"]):
        r = run(*args, "-o", "-")
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error: -o -: ") and "stdout" in r.stderr, r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert run("apply", str(ckpt), "-r", "*=zeros", "-o", "./-/", "-q").exit_code == 0
    assert (tmp_path / "-" / "model.safetensors").is_file()


COMMANDS = ["apply", "report", "diff", "verify", "inspect", "schemes", "gain", "probe", "run"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_shows_real_examples(command):
    r = run(command, "--help")
    assert r.exit_code == 0
    examples = r.output.split("Examples:\n", 1)[1].splitlines()
    lines = [line.strip() for line in examples if line.strip()]
    assert 2 <= len(lines) <= 4
    assert all(f"reinit {command}" in line for line in lines)


def test_report_help_names_every_flag_fail_on_takes():
    """`reinit report --help` lists the flags it shows and --fail-on takes: all of them
    (it once left out off_reference and untrained)."""
    from reinit.report.flags import FLAGS

    text = " ".join(run("report", "--help").output.split())
    missing = [f for f in FLAGS if f not in text]
    assert not missing, missing


def test_apply_help_says_the_default_output_and_what_seed_does():
    r = run("apply", "--help")
    text = " ".join(r.output.split())
    assert "Default: X.reinit.safetensors beside a file" in text
    assert "--seed INTEGER Seeds every re-initialized tensor" in text
    assert 'reinit apply model.safetensors --rule "*.weight=kaiming"' in r.output


@pytest.fixture()
def many(tmp_path: Path) -> Path:
    """3000 tensors: far more output than a pipe buffer holds, so the pipe really breaks."""
    path = tmp_path / "many.safetensors"
    save_file(
        {f"block.{i}.a_rather_long_tensor_name.weight": torch.ones(2) for i in range(3000)}, path
    )
    return path


@pytest.mark.parametrize(
    "args",
    [["inspect", "{m}"], ["report", "{m}", "--json", "-q"], ["diff", "{m}", "{m}", "--json"]],
)
def test_a_closed_pipe_ends_quietly_with_exit_0(many, args):
    cmd = [sys.executable, "-m", "reinit", *(a.format(m=many) for a in args)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert os.read(p.stdout.fileno(), 100)  # `| head -c 100`: the reader stops early
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err and "Exception" not in err, err


def test_dry_run_json_prints_the_plan_as_json_on_stdout(ckpt, tmp_path):
    """`--dry-run --json` printed the plan on stderr and nothing on stdout: `| jq` got no JSON."""
    r = run(
        "apply", ckpt, "-r", "*.weight=kaiming", "-r", "head.weight=zeros", "--dry-run", "--json"
    )
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True
    assert plan["summary"] == {"tensors": 4, "reinit": 2, "transplant": 0, "kept": 1, "skipped": 1}
    by_name = {t["name"]: t for t in plan["tensors"]}
    assert by_name["head.weight"] == {
        "name": "head.weight",
        "shape": [4, 16],
        "dtype": "float32",
        "action": "reinit",
        "what": "zeros",
        "rule": "head.weight=zeros",
    }
    assert by_name["layers.0.norm.weight"]["action"] == "skipped"
    assert by_name["layers.0.fc.bias"]["rule"] is None
    assert "plan: 4 tensors" in r.stderr  # the human view stays on stderr
    assert list(tmp_path.iterdir()) == [ckpt]  # nothing written


def test_recipe_dry_run_json_is_one_document_with_every_step(ckpt, tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(
        json.dumps(
            {
                "source": str(ckpt),
                "output": str(tmp_path / "o.safetensors"),
                "steps": [{"rules": ["head.weight=zeros"]}, {"rules": ["*.fc.weight=kaiming"]}],
            }
        )
    )
    r = run("run", recipe, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    steps = json.loads(r.stdout)["steps"]
    assert [s["summary"]["reinit"] for s in steps] == [1, 1]


def test_verify_help_report_example_runs_as_written(ckpt, tmp_path, monkeypatch):
    """The example named `out/reinit_report.json`; a folder output's report is reinit-report.json."""
    import shlex

    monkeypatch.chdir(tmp_path)
    assert run("apply", ckpt, "-r", "head.weight=zeros", "-o", "out/", "--checksums").exit_code == 0
    examples = run("verify", "--help").output.split("Examples:\n", 1)[1].splitlines()
    line = next(e.strip() for e in examples if "--report" in e)
    r = run(*shlex.split(line)[1:])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["apply"], "Missing argument 'SOURCE'"),
        (
            ["apply", "m.safetensors", "--rul", "*=zeros"],
            "(Did you mean one of: '--all', '--rule'?)",
        ),
        (["aply"], "Did you mean 'apply'?"),
        (["apply", "m.safetensors", "--by", "kindd"], "'kindd' is not one of 'kind', 'tensor'"),
        (["gain", "leaky_relu", "abc"], "'abc' is not a valid float"),
    ],
)
def test_a_usage_error_is_one_error_line_naming_the_help(args, fragment):
    """click's own usage errors printed four lines (Usage:, Try ..., a blank, `Error: ...`)."""
    r = run(*args)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert fragment in r.stderr and "--help" in r.stderr


def test_reinit_alone_still_shows_the_help():
    r = run()
    assert "Commands:" in r.output and "apply" in r.output


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["gain", "relux"], "did you mean relu?"),
        (["gain", "leaky_reluu"], "did you mean leaky_relu?"),
        (["report", "{m}", "--fail-on", "nonfinit"], "did you mean nonfinite?"),
        (["report", "{m}", "--fail-on", "garbage,stdoff"], "did you mean std_off?"),
    ],
)
def test_a_mistyped_nonlinearity_or_fail_on_flag_gets_a_did_you_mean(ckpt, args, hint):
    r = run(*(a.format(m=ckpt) for a in args))
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and hint in r.stderr, r.stderr


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """`reinit ARGS` with stdout and stderr on a pseudo-terminal: what it printed there."""
    import pty

    leader, follower = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "reinit", *args],
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", **env},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    assert p.wait(timeout=120) == 0
    os.close(leader)
    return b"".join(chunks).decode()


def test_no_color_turns_the_terminal_colors_off(ckpt, tmp_path):
    """NO_COLOR (no-color.org) was ignored: a terminal always got ANSI colors."""
    other = tmp_path / "b.safetensors"
    save_file({k: v * 2 for k, v in load_file(ckpt).items()}, other)
    args = ["diff", str(ckpt), str(other)]
    assert "\x1b[" in _on_a_terminal(args, {})
    shown = _on_a_terminal(args, {"NO_COLOR": "1"})
    assert "changed" in shown and "\x1b[" not in shown


@pytest.mark.parametrize("columns", ["1", "2", "0", "-5", "abc"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_tiny_or_odd_columns_never_fails_a_run(ckpt, tmp_path, columns, dry_run):
    """COLUMNS=1 or 2: apply published its output, then ended 'internal error: ValueError:
    invalid width -3' (exit 1 for a run that was done); the dry run too."""
    out = tmp_path / "o.safetensors"
    args = ["apply", ckpt, "-r", "*.weight=kaiming", "-o", out, *(["--dry-run"] if dry_run else [])]
    r = run(*args, env={"COLUMNS": columns})
    assert r.exit_code == 0, r.output
    assert "error" not in r.stderr
    assert "error" not in r.stdout and "kaiming" in r.output
    assert out.is_file() != dry_run


def test_inspect_never_elides_a_name(tmp_path):
    """At 100 columns a BERT name of 54 characters showed as
    `bert.encoder.layer.0.att…ion.output.LayerNorm.bias`: not a name one can copy into --rule
    or grep for. A name too long for its column now stands whole on its own line."""
    long = "bert.encoder.layer.0.attention.output.LayerNorm.bias"
    path = tmp_path / "m.safetensors"
    save_file({long: torch.zeros(16), "short.weight": torch.ones(4, 4)}, path)
    for columns in ("100", "20"):
        r = run("inspect", path, "--stats", env={"COLUMNS": columns})
        assert r.exit_code == 0
        lines = r.stdout.splitlines()
        assert long in lines and "…" not in r.stdout
        row = lines[lines.index(long) + 1]
        assert row.split()[:2] == ["16", "float32"]
        assert any(line.startswith("short.weight") and "4×4" in line for line in lines)


@pytest.mark.parametrize("command", ["diff", "dry-run"])
def test_diff_and_the_dry_run_never_elide_a_name(tmp_path, command):
    """`reinit diff` at 100 columns showed `b….emb….position_embeddings.weight`, and the dry
    run by tensor `b….enco….layer.0...`: names one cannot copy into a rule."""
    long = "bert.encoder.layer.0.attention.output.LayerNorm.weight.with.a.longer.tail"
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({long: torch.ones(4, 4), "short.weight": torch.ones(4, 4)}, a)
    save_file({long: torch.full((4, 4), 2.0), "short.weight": torch.zeros(4, 4)}, b)
    if command == "diff":
        r = run("diff", a, b, env={"COLUMNS": "100"})
    else:
        args = ["apply", a, "-r", "*=zeros", "--dry-run", "--by", "tensor"]
        r = run(*args, env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert long in lines and "…" not in r.output
    assert "4×4" in lines[lines.index(long) + 1]  # its row, below it
    assert any(line.startswith("short.weight") and "4×4" in line for line in lines)


def test_inspect_filter_matching_nothing_names_the_closest(ckpt):
    """`--filter "hed.*"` said only `0 tensors, 0 bytes`: no hint of the typo, where a rule
    matching nothing names the closest names."""
    r = run("inspect", ckpt, "--filter", "hed.*")
    assert r.exit_code == 0 and r.stdout == ""
    assert "no tensor matches 'hed.*'; closest names: head.weight" in r.stderr


def test_inspect_filter_by_module_type_is_refused_not_an_empty_list(ckpt):
    """`inspect` has no --model, so a `type:` filter can select nothing: it said
    "no tensor matches 'type:Linear'" with exit 0, as if the checkpoint had no Linear."""
    r = run("inspect", ckpt, "--filter", "type:Linear")
    assert r.exit_code == 2 and r.stdout == ""
    assert "--filter type:Linear" in r.stderr and "glob or re:" in r.stderr


def test_dry_run_json_quiet_prints_the_json_alone(ckpt):
    r = run("apply", ckpt, "-r", "head.weight=zeros", "--dry-run", "--json", "-q")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["summary"]["reinit"] == 1
    assert r.stderr == ""


def test_a_closed_stderr_does_not_stop_a_run(ckpt, tmp_path):
    """`reinit apply ... 2>&-` (a cron line, a daemon): stderr is None in Python, and
    `sys.stderr.isatty()` ended the run as an internal error no one could read (exit 1,
    nothing written)."""
    out = tmp_path / "o.safetensors"
    code = (
        "import sys; sys.stderr = None; sys.argv = ['reinit', *sys.argv[1:]]\n"
        "from reinit.cli import main; main()"
    )
    args = ["apply", str(ckpt), "-r", "*.weight=kaiming", "-o", str(out)]
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stdout
    assert out.is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_on_a_full_disk_is_one_line_not_an_internal_error(ckpt):
    """`reinit inspect x > /dev/full` said `internal error: OSError ... please report it`."""
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [sys.executable, "-m", "reinit", "inspect", str(ckpt)],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "error: cannot write to stdout: No space left on device" in err
    assert "internal error" not in err and "Traceback" not in err


def test_report_naming_the_default_report_is_that_report(ckpt, tmp_path):
    """`-o o.safetensors --report o.report.json` named the default report path once, and was
    refused as `named twice among the outputs (also as o.report.json)`."""
    out = tmp_path / "o.safetensors"
    r = run(
        "apply", ckpt, "-r", "head.weight=zeros", "-o", out, "--report", tmp_path / "o.report.json"
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o.report.json").read_text())["summary"]["reinit"] == 1


@pytest.mark.parametrize("slope", ["nan", "inf"])
def test_gain_of_a_non_finite_slope_is_refused(slope):
    """`reinit gain leaky_relu nan` printed `gain nan`, exit 0."""
    r = run("gain", "leaky_relu", slope)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "finite" in r.stderr


def test_gain_of_a_huge_slope_prints_its_limit():
    """`reinit gain leaky_relu 1e200` was `error: internal error: OverflowError`, exit 1."""
    r = run("gain", "leaky_relu", "1e200")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "leaky_relu: gain 1.41421e-200"
