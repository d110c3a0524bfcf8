"""No code execution from a checkpoint (issue #7 item 2): torch files load only through
weights_only=True; a pickle that needs other globals is refused with a message naming them;
`--unsafe-pickle` warns loudly and is never implied."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import reinit
from reinit.cli import main
from reinit.errors import UnsafePickleError
from reinit.io.readers import TORCH_FLOOR, _torch_version, load_torch_file


class Planted:
    """Unpickling this creates the file at `path`: the proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_checkpoint(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    sd = {"w": torch.ones(2, 2), "payload": Planted(marker)}
    path = tmp_path / f"evil-{fmt}.bin"
    if fmt == "zip":
        torch.save(sd, path)
    elif fmt == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle named like a checkpoint, the payload first
        with open(path, "wb") as f:
            pickle.dump({"payload": Planted(marker)}, f, protocol=2)
    return path, marker


@pytest.mark.parametrize(
    "fmt,mmap", [("zip", None), ("zip", True), ("zip", False), ("legacy", None), ("plain", None)]
)
def test_planted_reduce_never_runs(tmp_path, fmt, mmap):
    path, marker = evil_checkpoint(tmp_path, fmt)
    with pytest.raises(UnsafePickleError) as info:
        load_torch_file(str(path), mmap=mmap)
    assert not marker.exists()
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "io.open" in msg or "builtins.open" in msg  # names the global it refused
    assert "--unsafe-pickle" in msg


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain"])
def test_apply_refuses_and_writes_nothing(tmp_path, fmt):
    path, marker = evil_checkpoint(tmp_path, fmt)
    out = tmp_path / "out.safetensors"
    res = CliRunner().invoke(main, ["apply", str(path), "-r", "w=zeros", "-o", str(out)])
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith(f"error: {path}: ")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not out.exists()


def test_every_entry_point_refuses(tmp_path):
    """Directory sources, transplant sources, inspect and report: the same loader everywhere."""
    path, marker = evil_checkpoint(tmp_path, "zip")
    d = tmp_path / "model"
    d.mkdir()
    path.rename(d / "pytorch_model.bin")
    good = tmp_path / "good.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, good)
    runner = CliRunner()
    for args in (
        ["apply", str(d), "-r", "w=zeros", "-o", str(tmp_path / "o1")],
        ["apply", str(good), "-r", f"w=from({d})", "-o", str(tmp_path / "o2.safetensors")],
        ["inspect", str(d)],
        ["report", str(d), "-q"],
    ):
        res = runner.invoke(main, args)
        assert res.exit_code == 1, (args, res.output)
        assert "io.open" in res.stderr and "--unsafe-pickle" in res.stderr, res.stderr
    assert not marker.exists()
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2.safetensors").exists()


def test_message_names_the_refused_globals(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "hparams": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle argparse\.Namespace"):
        reinit.open_checkpoint(path)


def test_unsafe_pickle_is_explicit_and_loud(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3, 3)}, "hparams": argparse.Namespace(lr=1)}, path)
    out = tmp_path / "out.safetensors"
    runner = CliRunner()
    res = runner.invoke(main, ["apply", str(path), "-r", "w=zeros", "-o", str(out), "-q"])
    assert res.exit_code == 1 and not out.exists()
    res = runner.invoke(
        main, ["apply", str(path), "-r", "w=zeros", "-o", str(out), "-q", "--unsafe-pickle"]
    )
    assert res.exit_code == 0, res.output
    assert "warning: --unsafe-pickle lets torch files run code" in res.stderr
    assert out.is_file()


def test_torch_floor_is_the_cve_fix():
    # CVE-2025-32434: torch.load(weights_only=True) could run code before torch 2.6.0
    assert TORCH_FLOOR == (2, 6)
    assert _torch_version() >= TORCH_FLOOR
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text
