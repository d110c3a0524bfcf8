"""Issue 17: never delete or replace what the user did not name, and never report a success or
failure that is not what happened.

The adversary's side: before every refused or interrupted run the whole temp tree is
snapshotted (paths, kinds, sizes, modes, sha256) and compared after; nothing outside the named
output may change.

Internal: also tests reinit.io.publish, reinit.report.assemble, reinit.report.entries,
reinit.report.views._files, reinit.report.jsonio, reinit.report.stats, reinit.report.views._terminal,
reinit.run.apply directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import run
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from treesnap import tree_state

from reinit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity tokens (what other parsers do)."""

    def bad(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=bad)


def weights(path: Path, **extra: torch.Tensor) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file({"a.weight": torch.randn(8, 8, generator=g), "b.bias": torch.zeros(8), **extra}, path)
    return path


def project(tmp_path: Path) -> Path:
    """A model folder as users have them: a git checkout with other formats beside ours."""
    m = tmp_path / "model"
    (m / ".git" / "objects").mkdir(parents=True)
    (m / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (m / ".gitattributes").write_text("*.bin filter=lfs\n")
    (m / "tf_model.h5").write_bytes(b"HDF5")
    (m / "q4.gguf").write_bytes(b"GGUF")
    (m / "onnx").mkdir()
    (m / "onnx" / "model.onnx").write_bytes(b"ONNX")
    (m / "config.json").write_text('{"model_type": "bert"}')
    torch.save({"a.weight": torch.ones(8, 8)}, m / "pytorch_model.bin")
    weights(m / "model.safetensors")
    return m


# --- --in-place touches only the weight files it rewrites -----------------------------------


def test_in_place_folder_changes_only_its_weight_file_and_keeps_mode(tmp_path):
    m = project(tmp_path)
    (m / "model.safetensors").chmod(0o600)
    before = tree_state(tmp_path, mtime=False)
    res = run("apply", str(m), "-r", "a.weight=zeros", "--in-place", "-q")
    assert res.exit_code == 0, res.output
    after = tree_state(tmp_path, mtime=False)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"model/model.safetensors", "model/reinit-report.json"}
    assert torch.count_nonzero(load_file(m / "model.safetensors")["a.weight"]) == 0
    assert stat.S_IMODE((m / "model.safetensors").stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*reinit-tmp*")) and not list(m.glob(".*reinit-tmp*"))


def test_interrupted_in_place_folder_is_left_exactly_as_it_was(tmp_path, monkeypatch):
    import reinit.run.write as engine

    m = project(tmp_path)
    before = tree_state(tmp_path, mtime=False)
    real = engine._write_pieces

    def ctrl_c_mid_write(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_write_pieces", ctrl_c_mid_write)
    res = run("apply", str(m), "-r", "a.weight=zeros", "--in-place", "-q")
    assert res.exit_code == 130, res.output
    assert "no partial output was left behind" in res.output
    assert tree_state(tmp_path, mtime=False) == before


def test_in_place_sharded_folder_replaces_shards_and_index_only(tmp_path):
    m = tmp_path / "sharded"
    m.mkdir()
    save_file({"a.weight": torch.ones(4, 4)}, m / "model-00001-of-00002.safetensors")
    save_file({"b.weight": torch.ones(4)}, m / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {"total_size": 80},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
        },
    }
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    (m / "README.md").write_text("card")
    (m / ".git").mkdir()
    (m / ".git" / "config").write_text("[core]")
    before = tree_state(tmp_path, mtime=False)
    res = run("apply", str(m), "-r", "a.weight=zeros", "--in-place", "-q")
    assert res.exit_code == 0, res.output
    after = tree_state(tmp_path, mtime=False)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {
        "sharded/model-00001-of-00002.safetensors",
        "sharded/model-00002-of-00002.safetensors",
        "sharded/model.safetensors.index.json",
        "sharded/reinit-report.json",
    }
    assert "sharded/model-00001-of-00002.safetensors" in changed
    assert "sharded/README.md" in after and "sharded/.git/config" in after


def test_in_place_file_keeps_its_mode(tmp_path):
    src = weights(tmp_path / "m.safetensors")
    src.chmod(0o600)
    owner = (4321, 4321) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(src, *owner)  # as root: another owner, which the replacement must keep
    res = run("apply", str(src), "-r", "a.weight=zeros", "--in-place", "-q")
    assert res.exit_code == 0, res.output
    st = src.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == owner


# --- --overwrite never deletes a folder that is not ours ------------------------------------


def test_overwrite_of_a_folder_holding_the_source_is_refused(tmp_path):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "notes.txt").write_text("mine")
    (proj / "data" / "x.csv").write_text("1,2")
    src = weights(proj / "src.safetensors")
    before = tree_state(tmp_path, mtime=False)
    res = run("apply", str(src), "-r", "a.weight=zeros", "-o", f"{proj}/", "--overwrite", "-q")
    assert res.exit_code == 2, res.output
    assert "holds the source" in res.output
    assert tree_state(tmp_path, mtime=False) == before


def test_output_inside_a_source_folder_is_refused(tmp_path):
    m = project(tmp_path)
    before = tree_state(tmp_path, mtime=False)
    res = run("apply", str(m), "-r", "a.weight=zeros", "-o", str(m / "sub.safetensors"), "-q")
    assert res.exit_code == 2 and "inside the source folder" in res.output, res.output
    assert tree_state(tmp_path, mtime=False) == before


def test_overwrite_of_a_foreign_folder_is_refused_of_our_own_allowed(tmp_path):
    src = weights(tmp_path / "m.safetensors")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    before = tree_state(tmp_path, mtime=False)
    res = run("apply", str(src), "-r", "a.weight=zeros", "-o", f"{other}/", "--overwrite", "-q")
    assert res.exit_code == 2 and "not an earlier reinit output" in res.output, res.output
    assert tree_state(tmp_path, mtime=False) == before
    ours = tmp_path / "ours"
    assert run("apply", str(src), "-r", "a.weight=zeros", "-o", f"{ours}/", "-q").exit_code == 0
    (ours / "tokenizer.json").write_text("{}")  # an older run copied it: replaced as a whole
    res = run("apply", str(src), "-r", "b.bias=ones", "-o", f"{ours}/", "--overwrite", "-q")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ours.iterdir()) == ["model.safetensors", "reinit-report.json"]


# --- report and plot paths: the same rule as the output -----------------------------------


@pytest.mark.parametrize(
    "case",
    ["plot-is-source", "report-is-index", "report-exists", "report-in-source", "twice"],
)
def test_report_and_plot_paths_never_replace_inputs_or_files(tmp_path, case):
    src = weights(tmp_path / "m.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a.weight": torch.ones(2)}, sharded / "model-00001-of-00001.safetensors")
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "model-00001-of-00001.safetensors"}})
    )
    (tmp_path / "old.json").write_text("{}")
    out = str(tmp_path / "out.safetensors")
    args = {
        "plot-is-source": [str(src), "-r", "a.weight=zeros", "-o", out, "--plot", str(src)],
        "report-is-index": [
            str(sharded),
            "-r",
            "a.weight=zeros",
            "-o",
            f"{tmp_path / 'o'}/",
            "--report",
            str(sharded / "model.safetensors.index.json"),
        ],
        "report-exists": [
            str(src),
            "-r",
            "a.weight=zeros",
            "-o",
            out,
            "--report",
            str(tmp_path / "old.json"),
        ],
        "report-in-source": [
            str(sharded),
            "-r",
            "a.weight=zeros",
            "-o",
            f"{tmp_path / 'o'}/",
            "--report",
            str(sharded / "new.md"),
        ],
        "twice": [
            str(src),
            "-r",
            "a.weight=zeros",
            "-o",
            out,
            "--report",
            str(tmp_path / "r.json"),
            "--report",
            str(tmp_path / "r.json"),
        ],
    }[case]
    before = tree_state(tmp_path, mtime=False)
    res = run("apply", *args, "-q")
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert tree_state(tmp_path, mtime=False) == before


def test_report_command_outputs_follow_the_rule(tmp_path):
    src = weights(tmp_path / "m.safetensors")
    (tmp_path / "r.md").write_text("old")
    before = tree_state(tmp_path, mtime=False)
    for args in (["-o", str(src)], ["-o", str(tmp_path / "r.md")], ["--plot", str(src)]):
        res = run("report", str(src), *args, "-q")
        assert res.exit_code == 2, (args, res.output)
        assert tree_state(tmp_path, mtime=False) == before, args
    res = run("report", str(src), "-o", str(tmp_path / "r.md"), "--overwrite", "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.md").read_text().startswith("#")


# --- publishing: no-replace, all together or nothing ---------------------------------------


def test_no_replace_publish_loses_cleanly_to_a_file_that_appeared(tmp_path):
    """The other run's file appears between our checks and our rename: we fail with "exists",
    take back what this batch published, and leave theirs untouched."""
    from reinit.errors import OutputError
    from reinit.io.publish import Publication

    first, second = tmp_path / "a.safetensors", tmp_path / "a.report.json"
    with pytest.raises(OutputError, match="exists"), Publication() as pub:
        pub.stage(first, how="noreplace").write_bytes(b"ours")
        pub.stage(second, how="noreplace").write_bytes(b"ours")
        second.write_bytes(b"theirs")  # the other run won this one
        pub.commit()
    assert not first.exists() and second.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.report.json"]


def test_concurrent_runs_to_one_output_exactly_one_wins(tmp_path):
    src = tmp_path / "m.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"w": torch.randn(1500, 1500, generator=g)}, src)
    out = tmp_path / "out.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REINIT_DEBUG": ""}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reinit",
                "apply",
                str(src),
                "-r",
                "w=orthogonal",
                "--seed",
                str(i),
                "-o",
                str(out),
                "-q",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    winners = [i for i, (rc, _) in enumerate(results) if rc == 0]
    assert len(winners) == 1, results
    for rc, err in results:
        if rc != 0:
            assert rc == 2 and "exists" in err and "Traceback" not in err, err
    # the published checkpoint and report are the winner's, both of them
    meta = json.loads(safe_open(str(out), "pt").metadata()["reinit"])
    assert meta["seed"] == winners[0]
    assert json.loads((tmp_path / "out.report.json").read_text())["seed"] == winners[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.safetensors",
        "out.report.json",
        "out.safetensors",
    ]


def test_checkpoint_and_report_are_published_together_or_not_at_all(tmp_path, monkeypatch):
    import reinit.report.views._files as report_mod

    src = weights(tmp_path / "m.safetensors")
    before = tree_state(tmp_path, mtime=False)

    def broken(report, filename):
        raise RuntimeError("report rendering failed")

    monkeypatch.setattr(report_mod, "render_for_path", broken)
    out = tmp_path / "out.safetensors"
    res = run(
        "apply",
        str(src),
        "-r",
        "a.weight=zeros",
        "-o",
        str(out),
        "--report",
        str(tmp_path / "r.md"),
    )
    assert res.exit_code == 1, res.output
    assert tree_state(tmp_path, mtime=False) == before  # no checkpoint without its report


def test_signal_during_publish_finishes_and_says_so(tmp_path, monkeypatch):
    """A Ctrl-C that lands while the outputs are being renamed: they are all published, the
    command says so and exits 0, never "no partial output was left behind"."""
    import reinit.io.publish as publish

    real = publish.rename_noreplace

    def interrupted(a, b):
        os.kill(os.getpid(), signal.SIGINT)
        real(a, b)

    monkeypatch.setattr(publish, "rename_noreplace", interrupted)
    src = weights(tmp_path / "m.safetensors")
    out = tmp_path / "out.safetensors"
    res = CliRunner().invoke(
        main,
        [
            "apply",
            str(src),
            "-r",
            "a.weight=zeros",
            "-o",
            str(out),
            "--report",
            str(tmp_path / "r.csv"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "no partial output" not in res.output
    assert "interrupted after the output was published" in res.output
    assert (
        out.is_file()
        and (tmp_path / "out.report.json").is_file()
        and (tmp_path / "r.csv").is_file()
    )
    assert not list(tmp_path.glob(".*reinit-tmp*"))


def test_signal_after_publish_exits_0_naming_the_output(tmp_path, monkeypatch):
    import reinit.report.views as report_mod  # the CLI takes render_terminal from here

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_mod, "render_terminal", ctrl_c)
    src = weights(tmp_path / "m.safetensors")
    out = tmp_path / "out.safetensors"
    res = run("apply", str(src), "-r", "a.weight=zeros", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert f"interrupted after the output was published: {out}" in res.output
    assert out.is_file()


# --- statistics and JSON for whatever values a checkpoint holds ------------------------------


def test_huge_and_nonfinite_values_give_a_valid_report(tmp_path):
    big = torch.tensor([1e200, -1e200, 3e199, 5e199], dtype=torch.float64)
    odd = torch.tensor([float("nan"), float("inf"), 1.0, 3.0])
    src = tmp_path / "m.safetensors"
    save_file({"big": big, "odd": odd, "w": torch.ones(4)}, src)
    out = tmp_path / "out.safetensors"
    res = run(
        "apply",
        str(src),
        "-r",
        "w=zeros",
        "-o",
        str(out),
        "--report",
        str(tmp_path / "r.csv"),
        "-q",
    )
    assert res.exit_code == 0, res.output
    rep = strict_json((tmp_path / "out.report.json").read_text())
    stats = {t["name"]: t["after"] for t in rep["tensors"]}
    mean = sum(v / 1e199 for v in big.tolist()) / 4
    std = math.sqrt(sum((v / 1e199 - mean) ** 2 for v in big.tolist()) / 4) * 1e199
    assert math.isclose(stats["big"]["std"], std, rel_tol=1e-12)
    assert math.isclose(stats["big"]["mean"], mean * 1e199, rel_tol=1e-12)
    assert stats["odd"]["nonfinite"] == 2 and stats["odd"]["std"] == 1.0
    # inspect --json is strict JSON too
    res = run("inspect", str(src), "--stats", "--json")
    assert res.exit_code == 0, res.output
    rows = strict_json(res.stdout)
    assert math.isclose(rows[0]["stats"]["std"], std, rel_tol=1e-12)


def test_nonfinite_numbers_are_strings_in_json_and_read_back():
    from reinit.report.assemble import summarize
    from reinit.report.entries import Report, TensorEntry
    from reinit.report.jsonio import dumps
    from reinit.report.stats import Stats

    after = Stats(None, None, None, None, 4)
    entry = TensorEntry(
        name="w",
        shape=(4,),
        dtype="float32",
        action="reinit",
        after=after,
        expected_std=math.inf,
        var_gain=math.nan,
    )
    rep = Report("0", "s", "o", 0, (), (entry,), summarize([entry], 0, 0.0))
    text = rep.to_json()
    d = strict_json(text)
    assert d["tensors"][0]["expected_std"] == "Infinity" and d["tensors"][0]["var_gain"] == "NaN"
    back = Report.from_dict(d).tensors[0]
    assert back.expected_std == math.inf and math.isnan(back.var_gain)
    assert strict_json(dumps({"x": [-math.inf]})) == {"x": ["-Infinity"]}


@pytest.mark.parametrize("rule", ["a.weight=normal(std=inf)", "a.weight=orthogonal(gain=nan)"])
def test_nonfinite_scheme_arguments_publish_both_or_neither(tmp_path, rule):
    """Refused at parse time (issue 16) or written with a valid report: never a checkpoint
    without its report, never a traceback."""
    src = weights(tmp_path / "m.safetensors")
    out = tmp_path / "out.safetensors"
    res = run("apply", str(src), "-r", rule, "-o", str(out), "-q")
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    report = tmp_path / "out.report.json"
    if res.exit_code == 0:
        strict_json(report.read_text())
        assert out.is_file()
    else:
        assert not out.exists() and not report.exists()


def test_ctrl_c_at_any_moment_is_told_truthfully(tmp_path):
    """Real processes, SIGINT at moments spread across a run (before, during and after the
    publish): exit 130 with nothing published, or exit 0 with the checkpoint and its report
    complete; never a published output with "no partial output was left behind"."""
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "REINIT_DEBUG": ""}

    def start(d: Path) -> subprocess.Popen:
        d.mkdir()
        src = weights(d / "m.safetensors")
        cmd = ["apply", str(src), "-r", "a.weight=zeros", "-o", str(d / "out.safetensors"), "-q"]
        return subprocess.Popen(
            [sys.executable, "-m", "reinit", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    t0 = time.monotonic()
    probe = start(tmp_path / "probe")
    assert probe.wait(timeout=120) == 0, probe.stderr.read()
    took = time.monotonic() - t0
    cases = {}
    for i in range(8):
        d = tmp_path / f"run{i}"
        cases[d] = (start(d), time.monotonic() + took * (0.6 + 0.3 * i))
    for p, when in sorted(cases.values(), key=lambda pw: pw[1]):
        time.sleep(max(0.0, when - time.monotonic()))
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    outcomes = []
    for d, (p, _) in cases.items():
        _, err = p.communicate(timeout=120)
        names = sorted(x.name for x in d.iterdir())
        outcomes.append(p.returncode)
        if names == ["m.safetensors"]:  # nothing published: an interrupted run (130, or -2
            assert p.returncode != 0, err  # when the signal beat our handler at start-up)
        else:  # published: complete, and never "no partial output" (the exit status is 0
            # from our handlers; a signal in the interpreter's own exit path is beyond them)
            assert "no partial output" not in err, (p.returncode, names, err)
            assert names == ["m.safetensors", "out.report.json", "out.safetensors"], (names, err)
            assert torch.count_nonzero(load_file(d / "out.safetensors")["a.weight"]) == 0
            strict_json((d / "out.report.json").read_text())
    assert outcomes, outcomes
