"""Issue 23, medium and low items: inputs that once ended in an `internal error`, a silent
wrong result, or unbounded memory or time. Each is a one-line error with the right exit code,
nothing written, or a bounded, counted result.

Internal: imports reinit.limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import child_env, refused, run, run_child
from safetensors.torch import load_file, save_file

from reinit.limits import (
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    MAX_JSON_DEPTH,
    MAX_TOKENIZER_BYTES,
    MAX_TOTAL_TENSORS,
    available_memory,
)

DEEP = 100_000  # far past Python's recursion limit


def llama_like(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A few tensors with Llama's names (the values do not matter here)."""
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "model.embed_tokens.weight": torch.randn(8, 4, generator=g).to(dtype),
            "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g).to(dtype),
            "model.norm.weight": torch.ones(4).to(dtype),
        },
        path,
    )
    return path


# --- M3: every remaining internal error is one line --------------------------------------


@pytest.mark.parametrize(
    "action, fragment",
    [
        ("xavier_uniform(gain=1e300)", "overflow float32"),
        ("uniform(a=-3.4e38, b=3.4e38)", "spread"),
        ("orthogonal(gain=1e300)", "overflow float32"),
        ("kaiming_normal(a=0.0, nonlinearity='linear')", None),  # fine: control
    ],
)
def test_scheme_values_past_the_dtype_are_refused_at_plan_time(tmp_path, action, fragment):
    src = llama_like(tmp_path / "m.safetensors")
    args = [
        "apply",
        str(src),
        "-q",
        "-o",
        str(tmp_path / "o.safetensors"),
        "-r",
        f"model.layers.0.self_attn.q_proj.weight={action}",
    ]
    if fragment is None:
        assert run(*args).exit_code == 0
        return
    refused(tmp_path, args, 2, "q_proj.weight", fragment, "largest finite float32")


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--rename", "model.norm.weight=__metadata__"),
        ("--add", "__metadata__=[2]:zeros"),
    ],
)
def test_the_header_key_cannot_name_a_tensor(tmp_path, flag, value):
    src = llama_like(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    refused(tmp_path, ["apply", str(src), "-q", "-o", str(out), flag, value], 2, "__metadata__")


def test_a_name_that_is_not_utf8_from_argv_is_refused(tmp_path):
    # bytes that are not UTF-8 on the command line reach Python as lone surrogates
    src = llama_like(tmp_path / "m.safetensors")
    out = run_child(
        "apply", src, "-q", "-o", tmp_path / "o.safetensors",
        "--rename", os.fsdecode(b"model.norm.weight=norm\xff"),
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("error:") == 1 and "not valid UTF-8" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def _deep_list() -> str:
    return "[" * DEEP + "]" * DEEP


def test_deep_json_in_a_config_value_is_refused(tmp_path):
    src = llama_like(tmp_path / "m.safetensors")
    out = tmp_path / "o"
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    refused(
        tmp_path,
        [
            "apply",
            str(src),
            "-q",
            "-o",
            f"{out}/",
            "--drop",
            "model.norm.weight",
            "--config",
            f"x={deep}",
        ],
        2,
        "--config x",
        f"more than {MAX_JSON_DEPTH} levels",
    )


def test_deep_json_in_the_source_config_is_no_config(tmp_path):
    """config.json that is not a config (here: nested far past any config) is read as none,
    as a malformed one always was; the run goes on."""
    folder = tmp_path / "m"
    folder.mkdir()
    llama_like(folder / "model.safetensors")
    (folder / "config.json").write_text(_deep_list())
    res = run("apply", folder, "-q", "-o", f"{tmp_path / 'o'}/", "-r", "model.norm.weight=ones")
    assert res.exit_code == 0, res.output
    assert "internal error" not in res.output


def _two_embeddings(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(1)
    save_file(
        {"model.embed_tokens.weight": torch.randn(3, 4, generator=g)}, tmp_path / "s.safetensors"
    )
    save_file(
        {"model.embed_tokens.weight": torch.randn(3, 4, generator=g)}, tmp_path / "t.safetensors"
    )
    return tmp_path / "s.safetensors", tmp_path / "t.safetensors"


@pytest.mark.parametrize("rows", ["tokens", "labels"])
def test_deep_json_in_a_vocab_or_labels_file_is_refused(tmp_path, rows):
    src, tgt = _two_embeddings(tmp_path)
    good = tmp_path / "good.json"
    if rows == "tokens":
        good.write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1, "c": 2}}}))
        (tmp_path / "deep.json").write_text('{"model":' * DEEP + "1" + "}" * DEEP)
    else:
        good.write_text(json.dumps({"id2label": {"0": "a", "1": "b", "2": "c"}}))
        (tmp_path / "deep.json").write_text('{"id2label":' * DEEP + "1" + "}" * DEEP)
    rule = f"model.embed_tokens.weight=from({src}, rows={rows}, vocab=deep.json, src_vocab={good})"
    os.chdir(tmp_path)
    refused(
        tmp_path,
        ["apply", str(tgt), "-q", "-o", "o.safetensors", "-r", rule],
        2,
        "deep.json",
        "levels deep",
    )


@pytest.fixture
def checked_output(tmp_path: Path) -> Path:
    src = llama_like(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", src, "-q", "-o", out, "-r", "model.norm.weight=ones", "--checksums")
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize(
    "content, fragment",
    [
        (json.dumps({"tensors": [1, 2]}), "not a reinit JSON report"),
        (_deep_list(), "levels deep"),
        ("{" * 10, "not valid JSON"),
    ],
)
def test_verify_report_that_is_not_a_report(tmp_path, checked_output, content, fragment):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    refused(tmp_path, ["verify", str(checked_output), "--report", str(bad)], 2, fragment)


def run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    """`python -m reinit ARGS` in a child whose address space is capped at `limit` bytes
    (`ulimit -v`): an unbounded allocation fails there instead of taking the machine."""
    code = (
        "import resource, runpy, sys;"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}));"
        "sys.argv = ['reinit'] + sys.argv[1:];"
        "runpy.run_module('reinit', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )


def test_resize_past_ulimit_v_is_refused_before_allocating(tmp_path):
    """`ulimit -v` (RLIMIT_AS) counts: a size check that reads MemAvailable only let torch's
    allocator fail with an internal error."""
    src = llama_like(tmp_path / "m.safetensors")
    # the child maps ~1 GB of address space for torch's libraries; the resized tensor (2 GB)
    # fits the machine's memory (so MemAvailable alone lets it through) but not the limit
    side = 23_000  # 2.1 GB of float32
    if available_memory() < 3 * side * side * 4:
        pytest.skip("needs ~6 GB of free memory to tell the two checks apart")
    out = run_limited(
        ["apply", str(src), "-q", "-o", str(tmp_path / "o.safetensors"),
         "--resize", f"model.embed_tokens.weight=[{side},{side}]"],
        2 * 1024**3,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr
    assert "memory available" in out.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_available_memory_counts_the_address_space_limit():
    import resource

    mapped = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmSize:")
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    room = 512 * 1024**2
    try:
        resource.setrlimit(resource.RLIMIT_AS, (mapped + room, hard))
        left = available_memory()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert left <= room


# --- M4: verify --report never blocks or reads forever -----------------------------------


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_verify_report_from_a_fifo_or_device_is_refused(tmp_path, checked_output, kind):
    if kind == "fifo":
        report = tmp_path / "r.json"
        os.mkfifo(report)
    else:
        report = Path(kind)
    out = run_child("verify", checked_output, "--report", report, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "not a regular file" in out.stderr and out.stderr.count("\n") == 1


# --- M9: a transplant into an integer tensor never wraps ---------------------------------

POS = "bert.embeddings.position_ids"


@pytest.mark.parametrize(
    "source, ok",
    [
        (torch.tensor([[0.0, 300.0, 2.0]]), False),  # float past int8: once 300 -> 44
        (torch.tensor([[0.0, float("nan"), 2.0]]), False),
        (torch.tensor([[0, 300, 2]]), False),  # int64 past int8
        (torch.tensor([[0.0, 1.0, 2.0]]), True),  # fits: copied
    ],
)
def test_transplant_into_an_integer_tensor_refuses_values_that_wrap(tmp_path, source, ok):
    save_file({POS: torch.zeros(1, 3, dtype=torch.int8)}, tmp_path / "t.safetensors")
    save_file({POS: source}, tmp_path / "s.safetensors")
    out = tmp_path / "o.safetensors"
    args = [
        "apply",
        str(tmp_path / "t.safetensors"),
        "-q",
        "-o",
        str(out),
        "-r",
        f"{POS}=from({tmp_path / 's.safetensors'})",
    ]
    if ok:
        assert run(*args).exit_code == 0
        assert load_file(out)[POS].tolist() == [[0, 1, 2]]
        return
    refused(tmp_path, args, 2, POS, "do not fit int8", "wrap")


def test_transplant_of_a_complex_source_into_a_real_tensor_is_refused(tmp_path):
    """`from()` of a complex64 tensor into a float32 one dropped the imaginary part, exit 0,
    with only torch's own UserWarning relayed as a warning line."""
    save_file({"w": torch.zeros(2, 3)}, tmp_path / "t.safetensors")
    source = torch.complex(torch.ones(2, 3), torch.full((2, 3), 5.0))
    save_file({"w": source}, tmp_path / "s.safetensors")
    args = ["apply", str(tmp_path / "t.safetensors"), "-q", "-o", str(tmp_path / "o.safetensors")]
    args += ["-r", f"w=from({tmp_path / 's.safetensors'})"]
    refused(tmp_path, args, 2, "'w'", "complex source cannot go into float32", "imaginary")


def test_transplant_overflow_to_inf_is_counted(tmp_path):
    name = "model.norm.weight"
    save_file({name: torch.ones(4, dtype=torch.float16)}, tmp_path / "t.safetensors")
    save_file({name: torch.tensor([1.0, 1e5, -1e6, 2.0])}, tmp_path / "s.safetensors")
    out = tmp_path / "o.safetensors"
    res = run(
        "apply",
        tmp_path / "t.safetensors",
        "-o",
        out,
        "--json",
        "-r",
        f"{name}=from({tmp_path / 's.safetensors'})",
    )
    assert res.exit_code == 0, res.output
    notes = json.loads(res.stdout)["tensors"][0]["notes"]
    assert any("2 values overflowed to inf" in n for n in notes), notes


# --- M10: values that overflow the dtype are never published -----------------------------


@pytest.mark.parametrize("how", ["rule", "add"])
def test_drawn_values_past_float16_fail_before_publishing(tmp_path, how):
    """normal(mean=65000, std=1000) fits float16 argument by argument (65000 < 65504), but
    about a third of its values do not: exit 1, nothing written (once: exit 0 with infs)."""
    src = llama_like(tmp_path / "m.safetensors", torch.float16)
    out = tmp_path / "o.safetensors"
    scheme = "normal(mean=65000, std=1000)"
    if how == "rule":
        extra = ["-r", f"model.layers.0.self_attn.q_proj.weight={scheme}"]
        name = "q_proj.weight"
    else:
        extra = ["--add", f"model.extra.weight=[16,16]:{scheme}:dtype=float16"]
        name = "model.extra.weight"
    refused(
        tmp_path,
        ["apply", str(src), "-q", "-o", str(out), *extra],
        1,
        name,
        "beyond float16",
        "nothing was written",
    )


def test_values_that_fit_float16_are_written(tmp_path):
    src = llama_like(tmp_path / "m.safetensors", torch.float16)
    out = tmp_path / "o.safetensors"
    res = run(
        "apply",
        src,
        "-q",
        "-o",
        out,
        "-r",
        "model.layers.0.self_attn.q_proj.weight=normal(mean=60000, std=100)",
    )
    assert res.exit_code == 0, res.output
    assert torch.isfinite(load_file(out)["model.layers.0.self_attn.q_proj.weight"]).all()


# --- M1, M2: a regex is bounded in size before it compiles, and in time in total ----------


@pytest.mark.parametrize(
    "pattern, fragment",
    [
        ("re:model.a{99999999}", "multiply to over 1,000"),
        ("re:((a{1000}){1000}){1000}", "multiply to over 1,000"),
        ("re:" + "x" * 5000, "at most 4,096"),
    ],
)
def test_a_regex_too_big_to_compile_is_refused(tmp_path, pattern, fragment):
    """Once: 23.7 GB in 24 s at compile time (here capped at 3 GB: MemoryError)."""
    src = llama_like(tmp_path / "m.safetensors")
    out = run_limited(["apply", str(src), "-q", "--dry-run", "-r", f"{pattern}=zeros"], 3 * 1024**3)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and fragment in out.stderr, out.stderr
    assert len(out.stderr) < 400  # the pattern is cut, not echoed whole


def test_sane_counted_repeats_still_work(tmp_path):
    src = llama_like(tmp_path / "m.safetensors")
    res = run(
        "apply",
        src,
        "--dry-run",
        "-r",
        r"re:model\.layers\.\d{1,3}\.self_attn\.q_proj\.weight=zeros",
    )
    assert res.exit_code == 0, res.output


def test_a_slow_regex_has_a_total_budget(tmp_path, monkeypatch):
    """Each name under the per-name limit, many names: the pattern's total time is bounded
    (once: 300 names x 0.18 s = 56 s for one rule)."""
    names = {f"{'a' * 24}.{i}": torch.zeros(1) for i in range(100)}
    save_file(names, tmp_path / "m.safetensors")
    monkeypatch.setattr("reinit.matching.REGEX_BUDGET_S", 0.2, raising=False)
    refused(
        tmp_path,
        ["apply", str(tmp_path / "m.safetensors"), "--dry-run", "-r", "re:(a|aa)+c=zeros"],
        2,
        "in total",
    )


# --- M5: the JSON files beside a checkpoint are capped by size before parsing --------------


def _sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk (its size alone must refuse it)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_an_oversized_index_is_refused_before_parsing(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    llama_like(folder / "model-00001-of-00001.safetensors")
    _sparse(folder / "model.safetensors.index.json", MAX_INDEX_BYTES + 1)
    refused(tmp_path, ["inspect", str(folder)], 1, "index", "more than the 64.0 MB")


def test_an_oversized_tokenizer_file_is_refused_before_parsing(tmp_path):
    src, tgt = _two_embeddings(tmp_path)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1, "c": 2}}}))
    big = _sparse(tmp_path / "tokenizer.json", MAX_TOKENIZER_BYTES + 1)
    rule = f"model.embed_tokens.weight=from({src}, rows=tokens, vocab={big}, src_vocab={good})"
    out = str(tmp_path / "o.safetensors")
    refused(
        tmp_path,
        ["apply", str(tgt), "-q", "-o", out, "-r", rule],
        2,
        "tokenizer.json",
        "more than the 64.0 MB",
    )


def test_an_oversized_config_is_refused_before_parsing(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    llama_like(folder / "model.safetensors")
    _sparse(folder / "config.json", MAX_CONFIG_BYTES + 1)
    args = [
        "apply",
        str(folder),
        "-q",
        "-o",
        f"{tmp_path / 'o'}/",
        "--drop",
        "model.norm.weight",
        "--config",
        "x=1",
    ]
    refused(tmp_path, args, 1, "config.json", "more than the 16.0 MB")


# --- M6: the tensor cap counts all shards together -----------------------------------------


@pytest.mark.parametrize("command", ["inspect", "report"])
def test_an_index_over_the_total_tensor_cap_is_refused(tmp_path, command):
    """Once the cap was per file: 5 shards x 199,999 tensors took 107 s and 1.8 GB."""
    folder = tmp_path / "m"
    folder.mkdir()
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for shard in shards:
        llama_like(folder / shard)
    half = MAX_TOTAL_TENSORS // 2 + 1
    weight_map = {
        f"model.layers.{i}.mlp.up_proj.weight": shards[i // half] for i in range(2 * half)
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(tmp_path, [command, str(folder)], 1, f"over reinit's limit of {MAX_TOTAL_TENSORS:,}")


# --- M8: verify --forward and probe check a model's size before allocating it -------------


@pytest.mark.parametrize("command", ["probe", "verify"])
def test_a_config_too_big_for_memory_is_refused_before_allocating(tmp_path, command):
    """`vocab_size: 128000000` in an untrusted config.json: 8 GB of weights. Run under a 3 GB
    address-space cap, so the old behaviour (allocate, then fail or swap) stays contained."""
    from transformers import LlamaConfig

    folder = tmp_path / "m"
    LlamaConfig(
        vocab_size=128_000_000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    ).save_pretrained(folder)  # fmt: skip
    llama_like(folder / "model.safetensors")
    args = ["probe", str(folder)] if command == "probe" else ["verify", str(folder), "--forward"]
    out = run_limited(args, 3 * 1024**3)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert "bytes of weights, more than" in out.stderr and "vocab_size" in out.stderr


# --- L7: the Python API raises reinit's own errors -----------------------------------------


def _api_cases(src: Path, out: Path) -> dict[str, object]:
    import reinit

    rule = ["model.norm.weight=ones"]
    return {
        "rules=None": lambda: reinit.apply(src, None, output=out),
        "rules=[1]": lambda: reinit.apply(src, [1], output=out),
        "bytes source": lambda: reinit.apply(os.fsencode(src), rule, output=out),
        "int source": lambda: reinit.apply(3, rule, output=out),
        "config=[1, 2]": lambda: reinit.apply(src, rule, output=out, config=[1, 2]),
        "seed=1.5": lambda: reinit.apply(src, rule, output=out, seed=1.5),
        "state dict None": lambda: reinit.apply_to_state_dict(None, rule),
        "meta tensor": lambda: reinit.apply_to_state_dict(
            {"model.norm.weight": torch.empty(4, device="meta")}, rule
        ),
        "plan of an int": lambda: reinit.plan(3, rule),
    }


@pytest.mark.parametrize(
    "case",
    ["rules=None", "rules=[1]", "bytes source", "int source", "config=[1, 2]", "seed=1.5",
     "state dict None", "meta tensor", "plan of an int"],
)  # fmt: skip
def test_the_api_refuses_wrong_types_with_its_own_errors(tmp_path, case):
    from reinit import ReinitError

    src = llama_like(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    with pytest.raises(ReinitError) as err:
        _api_cases(src, out)[case]()
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert not out.exists()


def test_planning_a_meta_state_dict_still_works():
    """Only applying needs values: a plan of a meta model's state dict is fine."""
    import reinit

    plan = reinit.plan(
        {"model.norm.weight": torch.empty(4, device="meta")}, ["model.norm.weight=ones"]
    )
    assert [e.action for e in plan.entries] == ["reinit"]


# --- L3: messages say what is wrong, in bounded length --------------------------------------


def test_a_fifo_vocab_is_not_called_missing(tmp_path):
    src, tgt = _two_embeddings(tmp_path)
    fifo = tmp_path / "tokenizer.json"
    os.mkfifo(fifo)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1, "c": 2}}}))
    rule = f"model.embed_tokens.weight=from({src}, rows=tokens, vocab={fifo}, src_vocab={good})"
    line = refused(
        tmp_path,
        ["apply", str(tgt), "-q", "-o", str(tmp_path / "o.safetensors"), "-r", rule],
        2,
        "not a regular file",
    )
    assert "not found" not in line


def test_a_recipe_config_of_the_wrong_type_shows_an_example(tmp_path):
    llama_like(tmp_path / "m.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"source: {tmp_path / 'm.safetensors'}\nrules: ['model.norm.weight=ones']\nconfig: [1]\n"
    )
    line = refused(
        tmp_path,
        ["run", str(recipe), "--dry-run"],
        2,
        "'config' must be a list of strings, e.g. ['num_labels=3'",
    )
    assert "e.g. ," not in line


@pytest.mark.parametrize("where", ["rule", "label"])
def test_a_huge_value_is_cut_in_the_error_line(tmp_path, where):
    """A 100 kB rule or id2label name was echoed whole to stderr."""
    huge = "y" * 100_000
    if where == "rule":
        src = llama_like(tmp_path / "m.safetensors")
        line = refused(
            tmp_path, ["apply", str(src), "--dry-run", "-r", f"{huge}=zeros"], 2, "characters cut"
        )
    else:
        src, tgt = _two_embeddings(tmp_path)
        (tmp_path / "s.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b", "2": "c"}}))
        (tmp_path / "t.json").write_text(
            json.dumps({"id2label": {"0": "a", "1": "b", "2": "c", "3": huge}})
        )
        rule = f"model.embed_tokens.weight=from({src}, rows=labels, vocab={tmp_path / 't.json'}, src_vocab={tmp_path / 's.json'})"
        args = ["apply", str(tgt), "-q", "-o", str(tmp_path / "o.safetensors"), "-r", rule]
        line = refused(tmp_path, args, 2, "characters cut")
    assert len(line) < 2200


# --- L2: --config writes standard JSON only -------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "[1, NaN]"])
def test_config_values_that_are_not_standard_json_are_refused(tmp_path, value):
    folder = tmp_path / "m"
    folder.mkdir()
    llama_like(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    args = [
        "apply",
        str(folder),
        "-q",
        "-o",
        f"{tmp_path / 'o'}/",
        "--drop",
        "model.norm.weight",
        "--config",
        f"x={value}",
    ]
    refused(tmp_path, args, 2, "--config x", "finite number")


def test_a_finite_config_value_is_written(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    llama_like(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    res = run(
        "apply",
        folder,
        "-q",
        "-o",
        f"{tmp_path / 'o'}/",
        "--drop",
        "model.norm.weight",
        "--config",
        "x=1e300",
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["x"] == 1e300


# --- L4: a token listed twice in a tokenizer file is refused ---------------------------------


@pytest.mark.parametrize(
    "filename, text",
    [
        ("vocab.txt", "[PAD]\na\nb\na\n"),
        ("vocab.json", '{"a": 0, "b": 1, "a": 2}'),
        (
            "tokenizer.json",
            '{"model": {"vocab": {"a": 0, "b": 1, "c": 2}}, "added_tokens": [{"id": 2, "content": "a"}]}',
        ),
        ("tokenizer.json", '{"model": {"vocab": [["a", 0.0], ["b", 0.0], ["a", 0.0]]}}'),
    ],
)
def test_a_token_listed_twice_is_refused(tmp_path, filename, text):
    src, tgt = _two_embeddings(tmp_path)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1, "c": 2}}}))
    (tmp_path / "dup").mkdir()
    dup = tmp_path / "dup" / filename
    dup.write_text(text)
    rule = f"model.embed_tokens.weight=from({src}, rows=tokens, vocab={dup}, src_vocab={good})"
    refused(
        tmp_path,
        ["apply", str(tgt), "-q", "-o", str(tmp_path / "o.safetensors"), "-r", rule],
        2,
        "'a' is listed twice",
    )


def test_an_added_token_that_restates_its_id_is_fine(tmp_path):
    src, tgt = _two_embeddings(tmp_path)
    tok = tmp_path / "tokenizer.json"
    tok.write_text(
        json.dumps(
            {
                "model": {"vocab": {"a": 0, "b": 1, "c": 2}},
                "added_tokens": [{"id": 0, "content": "a"}],
            }
        )
    )
    rule = f"model.embed_tokens.weight=from({src}, rows=tokens, vocab={tok}, src_vocab={tok})"
    res = run("apply", tgt, "-q", "-o", tmp_path / "o.safetensors", "-r", rule)
    assert res.exit_code == 0, res.output
    assert torch.equal(
        load_file(tmp_path / "o.safetensors")["model.embed_tokens.weight"],
        load_file(src)["model.embed_tokens.weight"],
    )


# --- L5: a folder whose shard names say shards are missing is refused ------------------------


def test_shards_without_their_index_are_refused(tmp_path):
    """One safetensors shard and one torch shard, no index: once read as one file, the torch
    shard's tensors silently gone."""
    folder = tmp_path / "m"
    folder.mkdir()
    llama_like(folder / "model-00001-of-00002.safetensors")
    torch.save({"lm_head.weight": torch.zeros(8, 4)}, folder / "pytorch_model-00001-of-00002.bin")
    for command in (
        ["inspect", str(folder)],
        ["apply", str(folder), "-q", "-o", f"{tmp_path / 'o'}/", "-r", "model.norm.weight=ones"],
    ):
        refused(
            tmp_path, command, 1, "model-00001-of-00002.safetensors is shard 1 of 2", "no index"
        )


def test_a_single_shard_of_one_is_read(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    llama_like(folder / "model-00001-of-00001.safetensors")
    assert run("inspect", folder).exit_code == 0


# --- L8: -o with another file kind's suffix is not silently a folder --------------------------


@pytest.mark.parametrize("name", ["out.json", "weights.gguf"])
def test_an_output_named_like_another_file_kind_is_refused(tmp_path, name):
    src = llama_like(tmp_path / "m.safetensors")
    refused(
        tmp_path,
        ["apply", str(src), "-q", "-o", str(tmp_path / name), "-r", "model.norm.weight=ones"],
        2,
        "not a checkpoint format",
        f"{name}/",
    )


def test_an_output_folder_with_that_suffix_and_a_slash_is_written(tmp_path):
    src = llama_like(tmp_path / "m.safetensors")
    res = run("apply", src, "-q", "-o", f"{tmp_path / 'out.json'}/", "-r", "model.norm.weight=ones")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out.json" / "model.safetensors").is_file()


# --- L9: a top-level tensor beside a model_state_dict nest is ambiguous ----------------------


def test_a_top_level_tensor_beside_a_nest_is_ambiguous(tmp_path):
    ckpt = tmp_path / "train.pt"
    torch.save(
        {
            "ema_decay": torch.tensor(0.999),
            "model_state_dict": {
                "model.norm.weight": torch.ones(4),
                "lm_head.weight": torch.zeros(8, 4),
            },
            "epoch": 3,
        },
        ckpt,
    )
    refused(
        tmp_path,
        ["inspect", str(ckpt)],
        2,
        "beside nests",
        "model_state_dict (2 tensors)",
        "--key .",
    )
    nest = run("inspect", ckpt, "--key", "model_state_dict", "--json")
    assert nest.exit_code == 0 and "lm_head.weight" in nest.stdout
    top = run("inspect", ckpt, "--key", ".", "--json")
    assert top.exit_code == 0 and "ema_decay" in top.stdout and "lm_head" not in top.stdout


# --- L1 (part): a BOOL tensor with bytes other than 0/1 is flagged -------------------------


def _bool_file(path: Path, data: bytes) -> Path:
    import struct

    header = json.dumps(
        {"attention_mask": {"dtype": "BOOL", "shape": [len(data)], "data_offsets": [0, len(data)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize(
    "data, flagged", [(bytes([0, 1, 2, 255]), True), (bytes([0, 1, 1, 0]), False)]
)
def test_bool_bytes_other_than_0_and_1_are_garbage(tmp_path, data, flagged):
    src = _bool_file(tmp_path / "m.safetensors", data)
    res = run("report", src, "--json")
    assert res.exit_code == 0, res.output
    flags = json.loads(res.stdout)["tensors"][0]["flags"]
    assert ("garbage" in flags) == flagged, flags


def test_non_tensor_entries_of_the_state_dict_are_named(tmp_path):
    ckpt = tmp_path / "train.pt"
    torch.save({"model.norm.weight": torch.ones(4), "step": 5, "optimizer_note": "adam"}, ckpt)
    res = run(
        "apply", ckpt, "-q", "-o", tmp_path / "o.safetensors", "-r", "model.norm.weight=zeros"
    )
    assert res.exit_code == 0, res.output
    assert "left out 2 entries that are not tensors: step, optimizer_note" in res.stderr
    assert list(load_file(tmp_path / "o.safetensors")) == ["model.norm.weight"]
