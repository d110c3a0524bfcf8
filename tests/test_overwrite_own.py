"""`-o DIR --overwrite` replaces a folder only when it is reinit's own earlier output: marked as
ours (its report or our safetensors metadata) and every entry one such an output holds (issue
#23 H1). A user's folder that merely holds a `reinit-report.json` (as `--in-place` leaves one)
is refused, naming the first foreign entry, and left untouched."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import refused, run, run_child
from safetensors.torch import save_file


def _source(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(4, 4)}, src)
    return src


def _earlier_output(tmp_path):
    src = _source(tmp_path)
    out = tmp_path / "out"
    assert run("apply", src, "-o", f"{out}/", "-r", "a.weight=zeros", "-q").exit_code == 0
    assert (out / "reinit-report.json").is_file()
    return src, out


@pytest.mark.parametrize(
    "plant, first",
    [
        (lambda d: (d / ".git").mkdir(), ".git/"),
        (lambda d: (d / "onnx").mkdir(), "onnx/"),
        (lambda d: (d / "model.gguf").write_bytes(b"GGUF"), "model.gguf"),
        (lambda d: (d / "notes.txt").write_text("mine"), "notes.txt"),
        (lambda d: (d / "pytorch_model.bin").write_bytes(b"x"), "pytorch_model.bin"),
    ],
    ids=["git", "onnx", "gguf", "notes", "bin"],
)
def test_earlier_output_with_a_foreign_entry_is_refused(tmp_path, plant, first):
    src, out = _earlier_output(tmp_path)
    plant(out)
    args = ["apply", str(src), "-o", f"{out}/", "-r", "a.weight=ones", "--overwrite", "-q"]
    refused(tmp_path, args, 2, f"holds {first}", "--overwrite would delete")


def test_a_user_folder_with_a_report_is_not_ours(tmp_path):
    """The old test was `"reinit_version" in json.loads(...)`: the JSON string passed it."""
    src = _source(tmp_path)
    for doc in ('"reinit_version"', json.dumps({"reinit_version": "0.1"})):
        user = tmp_path / "project"
        user.mkdir(exist_ok=True)
        (user / "reinit-report.json").write_text(doc)
        (user / "notes.txt").write_text("mine")
        (user / "config.json").write_text("{}")
        args = ["apply", str(src), "-o", f"{user}/", "-r", "a.weight=ones", "--overwrite"]
        refused(tmp_path, args, 2, str(user), "notes.txt")


def test_own_earlier_output_is_still_replaced(tmp_path):
    src, out = _earlier_output(tmp_path)
    (out / "config.json").write_text("{}")  # a copied Hugging Face file is one an output holds
    res = run("apply", src, "-o", f"{out}/", "-r", "a.weight=ones", "--overwrite", "-q")
    assert res.exit_code == 0, res.output
    assert not (out / "config.json").exists()  # this run's output holds none


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_the_output_folder_does_not_block_overwrite(tmp_path):
    """Deciding whether `-o DIR` is ours read the header of each `*.safetensors` in it: a FIFO
    named `a.safetensors` (beside a user's file) blocked `apply` forever."""
    src = _source(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "a.safetensors")
    (out / "notes.txt").write_text("mine")
    res = run_child("apply", src, "-o", out, "--overwrite", "-r", "a.weight=zeros", "-q",
                    cwd=tmp_path, timeout=60)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "is not an earlier reinit output" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.safetensors", "notes.txt"]


@pytest.mark.parametrize("fmt", ["safetensors", "dcp"])
def test_a_folder_output_named_through_a_link_is_refused_up_front(tmp_path, fmt):
    """`-o link/ --overwrite`, `link` a symlink to an earlier output: the run did all its
    work, then failed to publish with exit 1, 'exists and is not a directory' (the folder is
    replaced whole, and a link is not replaced by one). Exit 2 before any work, naming the
    folder to give instead; the link and its folder untouched."""
    src, out = _earlier_output(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    args = ["apply", str(src), "-r", "a.weight=ones", "-o", f"{link}/", "--overwrite"]
    line = refused(tmp_path, [*args, "--format", fmt], 2, "is a link", f"-o {out}/")
    assert line.startswith(f"error: -o {link}")
    assert link.is_symlink()
