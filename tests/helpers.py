"""Test code shared by the test modules: running the CLI (in process or as a child process) and
measuring a command's peak memory.

Why here: each test module once had its own copy of these (the in-process CLI helper in a dozen
files, the peak-RSS recipe in three, modules importing each other's helpers). Test modules
import from here (and from `treesnap`, `hubcache`, `models_for_tests`), never from each other.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file
from treesnap import assert_unchanged, tree_state

from reinit.cli import main

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
HANG_BOUND_S = 60.0


def run(*args: str | os.PathLike[str], env: Mapping[str, str | None] | None = None) -> Result:
    """`reinit ARGS` in this process (click's CliRunner; Paths may be given as they are). An
    exception that escapes the command is raised, not folded into an exit code: the CLI maps
    every error it knows to exit 1 or 2 itself. `env`: variables to set (None unsets one)."""
    runner = CliRunner(env=dict(env) if env is not None else None)
    return runner.invoke(main, [os.fspath(a) for a in args], catch_exceptions=False)


def refused(
    tmp_path: Path, args: list[str], code: int, *fragments: str, skip: tuple[Path, ...] = ()
) -> str:
    """Run the CLI and check a refusal: exit `code`, one `error:` line holding each fragment,
    no traceback, and the whole tmp tree unchanged (nothing read was truncated, nothing written
    anywhere; the subtrees in `skip`, e.g. a Hub cache, left out). Returns the error line."""
    before = tree_state(tmp_path, skip=skip)
    res = run(*args)
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert_unchanged(before, tree_state(tmp_path, skip=skip))
    return lines[0]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child `python -m reinit`: this checkout's `reinit` first."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def run_child(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = HANG_BOUND_S,
) -> subprocess.CompletedProcess[str]:
    """`python -m reinit ARGS` in a child process; a run past `timeout` fails the test
    instead of hanging the suite (a regression such as a blocking open of a FIFO), and so does
    a traceback or an "internal error" (every failure must be a one-line error)."""
    argv = [os.fspath(a) for a in args]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "reinit", *argv],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=dict(env) if env is not None else child_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"reinit {' '.join(argv)[:200]} ran past {timeout} s")
    assert "internal error" not in out.stdout + out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out


# --- peak memory ------------------------------------------------------------------------

_WRAPPER = (
    "import resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:]).returncode;"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024);"
    "sys.exit(rc)"
)

#: What every `reinit` command imports before it reads a byte: the baseline of `rss_growth`.
_IMPORTS = "import reinit.cli, reinit.run.apply, torch, safetensors"


def peak_rss(cmd: list[str], cwd: Path) -> int:
    """Peak RSS in bytes of `cmd`, run as the only child of a fresh wrapper process."""
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def rss_growth(*args: str | os.PathLike[str], cwd: Path) -> int:
    """How much more memory (peak RSS, bytes) `reinit ARGS` takes than a process that only
    imports what it imports: the memory the command's work costs."""
    baseline = peak_rss([sys.executable, "-c", _IMPORTS], cwd)
    used = peak_rss([sys.executable, "-m", "reinit", *map(os.fspath, args)], cwd)
    print(f"reinit {args[0]}: baseline {baseline / MB:.0f} MB, peak {used / MB:.0f} MB")
    return used - baseline


def make_checkpoint(path: Path, layers: int = 12) -> int:
    """~400 MB: `layers` blocks of two 2048×2048 fp32 matrices and a bias each; its size."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(layers):
        sd[f"layers.{i}.up.weight"] = torch.randn(2048, 2048, generator=g)
        sd[f"layers.{i}.down.weight"] = torch.randn(2048, 2048, generator=g)
        sd[f"layers.{i}.down.bias"] = torch.zeros(2048)
    save_file(sd, path)
    del sd
    return path.stat().st_size


# --- safetensors fixtures written with reinit's own header builder -------------------------


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A safetensors file written with reinit's header builder: every dtype this torch has,
    fp8 and uint included, in the order given."""
    from reinit.io.formats import build_header, dtype_name, tensor_to_bytes

    items = list(tensors.items())
    header, _ = build_header(
        [(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in items], {"k": "v"}
    )
    with open(path, "wb") as f:
        f.write(header)
        for _, v in items:
            f.write(tensor_to_bytes(v))
    return path


def write_two_shards(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A model folder of two safetensors shards (alternate names by sort order) and their
    index; returns the folder."""
    import json

    folder.mkdir()
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, ns in halves.items():
        write_safetensors(folder / shard, {n: tensors[n] for n in ns})
        weight_map.update(dict.fromkeys(ns, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def tiny_bert(path: Path) -> Path:
    """A tiny BERT (transformers, seed 0) saved at `path`: 2 layers, hidden 64, vocabulary 64."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    return path


def trained_bert(path: Path) -> Path:
    """`tiny_bert` with its matrices at a trained scale: 2.5x the config's 0.02."""
    from safetensors.torch import load_file

    src = tiny_bert(path)
    sd = {
        k: v * 2.5 if v.dim() >= 2 else v for k, v in load_file(src / "model.safetensors").items()
    }
    save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    return src


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def quietly(fn, *args, **kwargs):
    """`fn(...)` with every Python warning and every transformers log record of WARNING or
    above captured: returns (result, the messages), so a test can assert there were none."""
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = fn(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    return result, [str(w.message) for w in seen] + handler.messages


def load_clean(cls, path: Path, **kwargs):
    """`cls.from_pretrained(path)` (a transformers model or auto class) with no missing/
    unexpected/mismatched key, no Python warning and no transformers log record of WARNING or
    above."""
    (model, info), messages = quietly(cls.from_pretrained, path, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    assert messages == []
    return model


def verdicts(rep: object, notes: bool = False) -> dict[str, tuple[object, ...]]:
    """What a `reinit.Report` says of each tensor: action, scheme, flags, the reference's file
    name (apply names SRC's config, `report` OUT's copy of it), reference and expected std,
    and with `notes` its notes."""
    return {
        e.name: (
            e.action,
            e.scheme,
            tuple(e.flags),
            (e.reference or "").rsplit("/", 1)[-1],
            e.reference_std,
            e.expected_std,
            *((e.notes,) if notes else ()),
        )
        for e in rep.tensors  # type: ignore[attr-defined]
    }
