"""No code execution from a checkpoint (issue #7 item 2): torch files load only through
weights_only=True; a pickle that needs other globals is refused with a message naming them;
`--unsafe-pickle` warns loudly and is never implied.

Internal: also tests reinit.io.formats._torch_reader directly (not the `reinit` API).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import run

import reinit
from reinit.cli import main
from reinit.errors import UnsafePickleError
from reinit.io.formats._torch_reader import TORCH_FLOOR, load_torch_file, torch_version


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
    res = run("apply", str(path), "-r", "w=zeros", "-o", str(out))
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
        main,
        ["apply", str(path), "-r", "w=zeros", "-o", str(out), "-q", "--unsafe-pickle", str(path)],
    )
    assert res.exit_code == 0, res.output
    assert "warning: --unsafe-pickle lets torch files run code" in res.stderr
    assert out.is_file()


def test_torch_floor_is_the_cve_fix():
    # CVE-2025-32434: torch.load(weights_only=True) could run code before torch 2.6.0
    assert TORCH_FLOOR == (2, 6)
    assert torch_version() >= TORCH_FLOOR
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text


# --- trust names the file (issue #17): it never spreads to other sources ---------------------


def planted(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A torch file that needs --unsafe-pickle: unpickling its payload creates `marker`."""
    marker = tmp_path / f"PWNED-{name}"
    path = tmp_path / name
    torch.save({"w": torch.ones(2, 2), "payload": Planted(marker)}, path)
    return path, marker


def test_unsafe_pickle_trusts_only_the_named_file_not_from_sources(tmp_path):
    """Trusting the source used to trust every from() source too: the donor's payload ran."""
    src, src_marker = planted(tmp_path, "src.bin")
    donor, donor_marker = planted(tmp_path, "donor.bin")
    out = tmp_path / "out.safetensors"
    args = ["apply", str(src), "-r", f"w=from({donor})", "-o", str(out), "-q"]
    res = run(*args, "--unsafe-pickle", str(src))
    assert res.exit_code == 1, res.output
    assert "internal error" not in res.output
    assert f"error: {donor}: refusing to unpickle" in res.stderr, res.stderr
    assert f"--unsafe-pickle {donor} if you trust its author" in res.stderr
    assert src_marker.exists()  # the named file was trusted (its payload ran, as allowed)
    assert not donor_marker.exists() and not out.exists()
    # naming both (repeatable) trusts both; the warning names exactly what is trusted
    res = CliRunner().invoke(
        main, [*args, "--unsafe-pickle", str(src), "--unsafe-pickle", str(donor)]
    )
    assert res.exit_code == 0, res.output
    assert f"only these: {src}, {donor};" in res.stderr
    assert donor_marker.exists() and out.is_file()


def test_unsafe_pickle_matches_the_file_not_its_spelling(tmp_path, monkeypatch):
    src, marker = planted(tmp_path, "src.bin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.bin").symlink_to(src)
    ck = reinit.open_checkpoint("./link.bin", unsafe_pickle={str(src)})
    assert ck.names() == ["w"] and marker.exists()
    # another file never matches
    other, other_marker = planted(tmp_path, "other.bin")
    with pytest.raises(UnsafePickleError):
        reinit.open_checkpoint(other, unsafe_pickle={str(src)})
    assert not other_marker.exists()


def test_unsafe_pickle_folder_trusts_its_shards_only(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    _, marker = planted(folder, "pytorch_model.bin")
    with pytest.raises(UnsafePickleError):
        reinit.open_checkpoint(folder, unsafe_pickle=[tmp_path / "elsewhere"]).refs()
    assert not marker.exists()
    assert [r.name for r in reinit.open_checkpoint(folder, unsafe_pickle=[folder]).refs()] == ["w"]
    assert marker.exists()


@pytest.mark.parametrize(
    ("value", "must"),
    [(True, "name the torch files you trust"), ([3], "expected paths"), (["-r"], "is not a path")],
)
def test_unsafe_pickle_true_or_no_path_is_a_usage_error(tmp_path, value, must):
    from reinit.errors import UsageError

    path, marker = planted(tmp_path, "src.bin")
    with pytest.raises(UsageError, match=must):
        reinit.open_checkpoint(path, unsafe_pickle=value)
    assert not marker.exists()


def test_old_flag_form_is_a_usage_error(tmp_path):
    path, marker = planted(tmp_path, "src.bin")
    res = run("apply", str(path), "--unsafe-pickle", "-r", "w=zeros")
    assert res.exit_code == 2 and "internal error" not in res.output, res.output
    assert not marker.exists()


def test_recipe_unsafe_pickle_names_paths(tmp_path):
    src, marker = planted(tmp_path, "src.bin")
    out = tmp_path / "out.safetensors"
    recipe = tmp_path / "r.yaml"
    base = f"source: {src}\noutput: {out}\nrules: ['w=zeros']\n"
    recipe.write_text(base + "unsafe_pickle: true\n")
    res = run("run", str(recipe), "-q")
    assert res.exit_code == 2 and "internal error" not in res.output, res.output
    assert not marker.exists() and not out.exists()
    recipe.write_text(base + f"unsafe_pickle: [{src}]\n")
    res = run("run", str(recipe), "-q")  # the recipe asks; only the command line may say yes
    assert res.exit_code == 2 and f"add --unsafe-pickle {src}" in res.stderr, res.output
    assert not marker.exists() and not out.exists()
    res = run("run", str(recipe), "-q", "--unsafe-pickle", str(src))
    assert res.exit_code == 0, res.output
    assert (
        f"warning: --unsafe-pickle lets torch files run code while loading, only these: {src}"
        in (res.stderr)
    )
    assert out.is_file()
