"""`reinit apply` under torchrun (DESIGN §9, issue #25 item 4): the output's shards split over
the ranks give the bytes of one process (shards, index, config, report minus timings); a rank
that fails or is killed leaves nothing published and no temporary, and every rank that can
speak says, in one line, which rank it is and why it stopped.

The torchrun tests start `python -m torch.distributed.run --standalone --nproc-per-node 2`
as a child process (this checkout first on PYTHONPATH); a rank is found by the RANK in its
environment, among torchrun's children. Failures are made from outside, with no hook in the
product: a rank's file-size limit lowered (`prlimit`, as a full quota would), a rank killed.

Internal: imports reinit.options, reinit.run.layout, reinit.run.prepare, reinit.run.ranks,
reinit.run.torchrun, reinit.run.write (the shard assignment, the ranks' verdict, torchrun's
variables, a rank's view of the shared folder)."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from helpers import child_env, run

import reinit
from reinit.errors import OutputError, RankError
from reinit.options import ApplyOptions
from reinit.run.layout import OutputRequest, lay_out
from reinit.run.prepare import Job, prepare
from reinit.run.ranks import Group, share, share_in_order, torchrun_world, wait_timeout
from reinit.run.torchrun import Part, apply_split, assign_shards, run_split
from reinit.run.write import Written

RULES = ["*.mlp.*.weight=kaiming_normal", "*.self_attn.o_proj.weight=normal(std=0.02)"]
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A Llama of ~18 MB in 4 shards, as save_pretrained writes them."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    src = tmp_path_factory.mktemp("llama") / "llama"
    model.save_pretrained(src, max_shard_size="5MB")
    assert len(list(src.glob("*.safetensors"))) == 4
    return transformers, src


def _torchrun(*args: str | os.PathLike[str], cwd: Path, **env_extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    argv += ["2", "-m", "reinit", *map(os.fspath, args)]
    env = child_env(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", **env_extra)
    return subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)


def _rank_pid(launcher: subprocess.Popen[str], rank: int) -> int:
    """The pid of torchrun's child whose environment says RANK=`rank`."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{launcher.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in env:
                    return int(pid)
        time.sleep(0.01)
    raise AssertionError(f"no rank {rank} under torchrun")


def _writing(pid: int) -> bool:
    """Whether the process has a shard of the shared temporary open (it is writing it)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if ".reinit-tmp-" in target and target.endswith(".safetensors"):
            return True
    return False


def _finished(launcher: subprocess.Popen[str], start: str = "error") -> tuple[int, list[str]]:
    """torchrun's exit code and the lines of its ranks that begin with `start`."""
    _, stderr = launcher.communicate(timeout=TIMEOUT_S)
    return launcher.returncode, [line for line in stderr.splitlines() if line.startswith(start)]


def _same_run(a: Path, b: Path) -> None:
    """Every file byte for byte; the report too, once its timing and output path are set."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in sorted(a.iterdir()):
        q = b / p.name
        if p.name != "reinit-report.json":
            assert p.read_bytes() == q.read_bytes(), p.name
    ra, rb = (json.loads((d / "reinit-report.json").read_text()) for d in (a, b))
    for r in (ra, rb):
        r.pop("output")
        r["summary"].pop("seconds")
    assert ra == rb


def _nothing_left(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == []  # no output, no .reinit-tmp-*


def test_two_ranks_write_the_bytes_of_one_process(llama, tmp_path):
    transformers, src = llama
    flags = ["--seed", "7", "--dtype", "bfloat16", "--checksums", "-q"]
    rules = [a for r in RULES for a in ("-r", r)]
    one = tmp_path / "one"
    alone = run("apply", src, "-o", f"{one}/", *rules, *flags)
    assert alone.exit_code == 0
    launcher = _torchrun("apply", src, "-o", "two/", *rules, *flags, cwd=tmp_path)
    code, said = _finished(launcher, start="")
    assert code == 0 and not [line for line in said if line.startswith("error")], said
    two = tmp_path / "two"
    assert len(list(two.glob("*.safetensors"))) == 4
    _same_run(one, two)
    # the run's one line on lossy casts counts every rank's tensors, as one process does
    lossy = [line for line in alone.stderr.splitlines() if "cast lossily" in line]
    assert lossy == ["warning: --dtype bfloat16: 39 tensors cast lossily"]  # all
    assert [line for line in said if "cast lossily" in line] == lossy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no temporaries
    loaded, info = transformers.LlamaForCausalLM.from_pretrained(two, output_loading_info=True)
    assert not any(info.values()), info


@pytest.mark.slow  # another torchrun start (~15 s loaded); the killed rank covers the rest
def test_a_rank_that_cannot_write_fails_every_rank_and_publishes_nothing(llama, tmp_path):
    _, src = llama
    out = tmp_path / "work"
    out.mkdir()
    launcher = _torchrun("apply", src, "-o", "two/", "-r", RULES[0], "-q", cwd=out)
    rank1 = _rank_pid(launcher, 1)  # before it has imported torch: seconds ahead of writing
    limit = 1024 * 1024  # smaller than any of its shards: writing one fails (EFBIG)
    resource.prlimit(rank1, resource.RLIMIT_FSIZE, (limit, limit))
    code, errors = _finished(launcher)
    assert code != 0
    by_rank = sorted(errors)
    assert len(by_rank) == 2, errors  # one line from each rank
    assert by_rank[0].startswith("error: rank 0 of 2: rank 1 failed: "), by_rank
    assert by_rank[1].startswith("error: rank 1 of 2: "), by_rank
    assert all(line.endswith("nothing was published") for line in by_rank)
    assert "internal error" not in by_rank[1] and ".reinit-tmp-" not in by_rank[1]
    assert "two/model-" in by_rank[1]  # the shard it could not write, by its output path
    _nothing_left(out)


def test_a_rank_killed_mid_run_leaves_nothing(llama, tmp_path):
    _, src = llama
    out = tmp_path / "work"
    out.mkdir()
    launcher = _torchrun("apply", src, "-o", "two/", "-r", RULES[0], "-q", cwd=out)
    rank0, rank1 = _rank_pid(launcher, 0), _rank_pid(launcher, 1)
    deadline = time.monotonic() + TIMEOUT_S
    while not any(p.name.startswith(".two.reinit-tmp-") for p in out.iterdir()):
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.002)
    os.setpriority(os.PRIO_PROCESS, rank1, 19)  # staged: rank 1 writes slowly, easy to catch
    while not _writing(rank1):
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.001)
    os.kill(rank0, signal.SIGSTOP)  # held: it cannot publish, whatever rank 1 got done
    os.kill(rank1, signal.SIGKILL)  # rank 1 dies while it writes a shard
    os.kill(rank0, signal.SIGCONT)
    code, errors = _finished(launcher)
    assert code != 0
    assert len(errors) == 1 and errors[0].startswith("error: rank 0 of 2: "), errors
    assert errors[0].endswith("nothing was published")
    assert "lost another rank" in errors[0] or "interrupted" in errors[0]  # gloo or torchrun
    _nothing_left(out)  # the survivor removed the temporary rank 1 was writing into


@pytest.mark.slow  # another torchrun start (~15 s loaded)
def test_report_summed_by_two_ranks_is_the_report_of_one(llama, tmp_path):
    _, src = llama
    alone = run("report", src, "--json", "-q")
    assert alone.exit_code == 0
    launcher = _torchrun("report", src, "-o", "two.json", "-q", cwd=tmp_path)
    code, errors = _finished(launcher)
    assert (code, errors) == (0, [])
    one, two = json.loads(alone.stdout), json.loads((tmp_path / "two.json").read_text())
    for r in (one, two):
        r["summary"].pop("seconds")
    assert one == two and len(two["tensors"]) == 39
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.json"]  # written once, by rank 0


@pytest.mark.slow  # another torchrun start (~15 s loaded)
def test_new_by_two_ranks_writes_the_bytes_of_one_process(llama, tmp_path):
    transformers, src = llama
    flags = ["--max-shard-size", "5MB", "--seed", "4", "-r", RULES[1], "-q"]
    one = tmp_path / "one"
    assert run("new", src / "config.json", "-o", f"{one}/", *flags).exit_code == 0
    launcher = _torchrun("new", src / "config.json", "-o", "two/", *flags, cwd=tmp_path)
    code, errors = _finished(launcher)
    assert (code, errors) == (0, [])
    two = tmp_path / "two"
    assert len(list(two.glob("*.safetensors"))) == 4
    _same_run(one, two)
    loaded, info = transformers.LlamaForCausalLM.from_pretrained(two, output_loading_info=True)
    assert not any(info.values()), info


@pytest.mark.slow  # another torchrun start, and the wait for the hung rank
def test_a_hung_rank_is_given_up_on_after_the_timeout(llama, tmp_path):
    _, src = llama
    out = tmp_path / "work"
    out.mkdir()
    launcher = _torchrun(
        "apply", src, "-o", "two/", "-r", RULES[0], "-q", cwd=out, REINIT_TORCHRUN_TIMEOUT="3"
    )
    rank0, rank1 = _rank_pid(launcher, 0), _rank_pid(launcher, 1)
    deadline = time.monotonic() + TIMEOUT_S
    while not any(p.name.startswith(".two.reinit-tmp-") for p in out.iterdir()):
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.002)
    os.kill(rank1, signal.SIGSTOP)  # rank 1 hangs; rank 0 waits 3 s for it, then gives up
    while Path(f"/proc/{rank0}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(rank1, signal.SIGCONT)  # torchrun's SIGTERM, pending meanwhile, stops it now
    code, errors = _finished(launcher)
    assert code != 0
    ours = [line for line in errors if line.startswith("error: rank 0 of 2: ")]
    assert len(ours) == 1 and "lost another rank while" in ours[0], errors
    _nothing_left(out)


# --- in this process: the split itself, the one-process case, the messages ------------------


def test_shards_go_biggest_first_to_the_least_loaded_rank(llama, tmp_path):
    _, src = llama
    o = ApplyOptions()
    with ExitStack() as stack:
        prepared = prepare(stack, Job.of(src, RULES, o), o)
        folder = lay_out(prepared, OutputRequest.of(f"{tmp_path / 'o'}/", o))
        single = lay_out(prepared, OutputRequest.of(tmp_path / "o.safetensors", o))
    split = assign_shards(folder, 2)
    assert sorted(s for part in split for s in part) == sorted(folder.shards())  # each once
    assert all(split)  # both ranks have work
    loads = [sum(folder.in_bytes[n] for f in folder.files_of(p) for n in f.names) for p in split]
    assert max(loads) - min(loads) <= max(loads) // 2
    # one output file: rank 0 writes it, the others wait
    assert assign_shards(single, 3) == [("",), (), ()]


def test_alone_it_is_apply(llama, tmp_path):
    _, src = llama
    whole = tmp_path / "whole"
    reinit.apply(src, RULES, f"{whole}/", seed=5)
    alone = tmp_path / "alone"
    report = apply_split(src, RULES, f"{alone}/", seed=5)
    assert report.summary.reinit == 16  # 4 x (3 mlp + o_proj)
    _same_run(whole, alone)
    with pytest.raises(OutputError, match="exists"):  # its own errors, as apply raises them
        apply_split(src, RULES, f"{alone}/", seed=5)


def test_work_is_shared_out_whole_and_balanced():
    assert share([5, 1, 4, 2], 2) == [[0, 1], [2, 3]]  # 5+1 | 4+2
    assert share([3], 3) == [[0], [], []]
    weights = [10, 1, 1, 1, 1, 6, 2, 2, 8]
    runs = share_in_order(weights, 3)
    assert [list(r) for r in runs] == [[0, 1], [2, 3, 4, 5, 6], [7, 8]]  # 11 | 11 | 10
    assert [list(r) for r in share_in_order([1, 1], 4)] == [[], [0], [], [1]]
    assert [list(r) for r in share_in_order([], 2)] == [[], []]


@dataclasses.dataclass(frozen=True)
class _Beside(Group):
    """One rank of two, the other imagined: it stages `theirs` (rank 0's temporary, as rank 1
    sees it) and writes nothing of its own."""

    theirs: Path | None = None

    def exchange(self, outcome, what, lost=None):
        other = (self.theirs if what == "staging the output" else None, None)
        if what == "writing":
            other = (Part(Written((), 0)), None)
        if what == "rank 0 published":
            other = (None, (1, "the imagined rank 0 stops here"))
        return [outcome, other] if self.rank == 0 else [other, outcome]


def _planned(src, out):
    o = ApplyOptions(seed=1)

    def planned(stack):
        prepared = prepare(stack, Job.of(src, RULES, o), o)
        return prepared, lay_out(prepared, OutputRequest.of(f"{out}/", o))

    return planned


def test_ranks_on_file_systems_of_their_own_are_refused(llama, tmp_path):
    """A rank that cannot see rank 0's temporary folder writes nothing; a rank 0 that lacks a
    shard another rank wrote elsewhere publishes nothing."""
    _, src = llama
    out = tmp_path / "out"
    rank1 = _Beside(1, 2, theirs=tmp_path / ".out.reinit-tmp-elsewhere")
    with pytest.raises(RankError, match=r"^rank 1 of 2: .*that rank 0 made is not there"):
        run_split(rank1, _planned(src, out))
    with pytest.raises(RankError, match=r"^rank 0 of 2: .* is not in the temporary folder"):
        run_split(_Beside(0, 2), _planned(src, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, nothing left


def test_a_rank_reads_only_the_tensors_of_its_shards(llama, tmp_path, monkeypatch):
    import reinit.run.stream as stream

    _, src = llama
    read: list[str] = []
    real = stream.read_stream

    def spy(ckpt, names, pool):
        read.extend(names)
        return real(ckpt, names, pool)

    monkeypatch.setattr(stream, "read_stream", spy)
    shared = tmp_path / ".out.reinit-tmp-shared"
    shared.mkdir()
    with pytest.raises(RankError, match="the imagined rank 0 stops here"):
        run_split(_Beside(1, 2, theirs=shared), _planned(src, tmp_path / "out"))
    written = sorted(p.name for p in shared.iterdir())  # handed over to rank 0: left in place
    assert 0 < len(written) < 4
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    mine = {n for n, f in index.items() if f in written}
    assert sorted(read) == sorted(mine)  # its shards' tensors, each once, nothing else


def test_the_wait_for_the_others_is_a_day_unless_told(monkeypatch):
    assert wait_timeout() == 24 * 3600
    monkeypatch.setenv("REINIT_TORCHRUN_TIMEOUT", "90")
    assert wait_timeout() == 90
    monkeypatch.setenv("REINIT_TORCHRUN_TIMEOUT", "soon")
    assert wait_timeout() == 24 * 3600


@pytest.mark.parametrize("told", ["inf", "1e400", "1e15", "1e10"])
def test_a_wait_too_long_for_gloo_is_a_year(monkeypatch, tmp_path, told):
    """`inf` or `1e15` seconds was an internal error in every rank (OverflowError while gloo
    took the timeout), `1e10` a store that gave up at once: the wait is capped at a year, which
    a gloo group takes."""
    from datetime import timedelta

    import torch.distributed as dist

    monkeypatch.setenv("REINIT_TORCHRUN_TIMEOUT", told)
    assert wait_timeout() == 365 * 24 * 3600
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1,
                            timeout=timedelta(seconds=wait_timeout()))  # fmt: skip
    try:
        got = [None]
        dist.all_gather_object(got, "ok")
        assert got == ["ok"]
    finally:
        dist.destroy_process_group()


def test_torchrun_is_told_by_its_variables():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost"}
    assert torchrun_world(env) == (1, 4)
    assert torchrun_world({**env, "WORLD_SIZE": "1"}) is None  # one process: nothing to split
    assert torchrun_world({k: v for k, v in env.items() if k != "MASTER_ADDR"}) is None
    assert torchrun_world({}) is None


def test_a_recipe_under_torchrun_is_refused(tmp_path):
    (tmp_path / "r.yaml").write_text("source: m.safetensors\nrules: ['*=zeros']\n")
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost"}
    res = run("run", tmp_path / "r.yaml", env=env)
    assert res.exit_code == 2 and "does not split across processes" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_a_signal_while_stopping_keeps_the_line_of_the_failure():
    g = Group(1, 2)

    def failing_then_signalled() -> None:
        try:
            raise RankError("rank 1 of 2: rank 0 failed: x; nothing was published", 2)
        finally:  # the cleanup, as torchrun's SIGTERM lands in it
            raise KeyboardInterrupt

    with pytest.raises(RankError, match="rank 0 failed: x") as e:
        g.speaking(failing_then_signalled)
    assert e.value.exit_code == 2

    def signalled() -> None:
        raise KeyboardInterrupt

    with pytest.raises(RankError, match=r"^rank 1 of 2: interrupted") as e:
        g.speaking(signalled)
    assert e.value.exit_code == 130


def test_every_rank_names_itself_and_the_rank_that_failed():
    outcomes = [(None, None), (None, (2, "x.safetensors: exists")), (None, (1, "later"))]
    with pytest.raises(RankError, match=r"^rank 0 of 3: rank 1 failed: x.safetensors") as e:
        Group(0, 3).verdict(outcomes)
    assert e.value.exit_code == 2  # the failing rank's code
    with pytest.raises(RankError, match=r"^rank 2 of 3: later; nothing was published$"):
        Group(2, 3).verdict(outcomes)  # its own failure first


def test_an_interrupt_anywhere_in_a_rank_is_told_as_every_rank_tells_it(monkeypatch, capsys):
    """torchrun's SIGTERM can land between the steps a rank words itself (once, in a fresh
    clone's suite, rank 0 said the plain 'error: interrupted; ...' line): the command's own
    handler says it as the ranks do. Alone, the plain line."""
    import reinit.run.ranks as ranks
    from reinit.cli.group import _interrupted

    for k in ranks.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    assert _interrupted() == 130
    assert capsys.readouterr().err == "error: interrupted; no partial output was left behind\n"
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "x"}.items():
        monkeypatch.setenv(k, v)
    assert set(ranks.TORCHRUN_ENV) <= {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"}
    assert _interrupted() == 130
    err = capsys.readouterr().err
    assert err.startswith("error: rank 1 of 2: interrupted") and err.endswith(
        "; nothing was published\n"
    ), err


def test_rank_0_interrupted_after_it_published_says_so_as_one_process_does(monkeypatch):
    """A Ctrl-C held through the renames is let in after them: rank 0 has published, so the
    interrupt goes on to the command, which names what was published (exit 0), instead of
    'nothing was published'. Before it published: the rank's one line, exit 130."""
    from reinit.io import publish

    g = Group(0, 2)

    def signalled() -> None:
        raise KeyboardInterrupt

    with pytest.raises(RankError, match="nothing was published"):
        g.speaking(lambda: g.attempt(signalled))
    monkeypatch.setattr(publish, "_PUBLISHED", ["out.safetensors"])
    with pytest.raises(KeyboardInterrupt):
        g.speaking(lambda: g.attempt(signalled))


def test_a_rank_interrupted_once_every_part_is_written_says_the_output_may_be_in_place(
    monkeypatch, tmp_path
):
    """Once every rank has written its part, rank 0 may publish whatever becomes of the others:
    a rank other than 0 interrupted from then on (here as it hands the temporary over) must not
    say 'nothing was published' (seen once in ~21 interrupted torchrun runs)."""
    from reinit.run import torchrun
    from reinit.run.write import Written

    class Local(Group):
        def agree(self, what, step):
            return step()

        def gather(self, what, step):
            step()
            if what == "staging the output":
                return [tmp_path]
            return [torchrun.Part(Written((), 0))] * self.size

    def interrupted(self) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torchrun, "assign_shards", lambda layout, n: [[]] * n)
    monkeypatch.setattr(torchrun, "_part", lambda *a: torchrun.Part(Written((), 0)))
    monkeypatch.setattr(torchrun._Leftover, "hand_over", interrupted)
    g = Local(1, 2)
    with pytest.raises(RankError, match="the output may be in place: check it") as e:
        g.speaking(lambda: torchrun.run_split(g, lambda stack: (None, None)))
    assert e.value.exit_code == 130 and "nothing was published" not in str(e.value)
