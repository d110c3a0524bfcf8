"""Determinism (issue #7 item 5): the same inputs and seed give byte-identical output across runs
and CPU thread counts, independent of the order of non-overlapping rules and of the input's
sharding; a different seed changes every re-initialized tensor.

Internal: also tests reinit.io.formats._safetensors_format directly (not the `reinit` API), and
probes reinit.run.stream.Applier._draw (the thread count each draw runs on).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import reinit
from reinit.io.formats import read_header

RULES = [
    "enc.*.weight=kaiming_normal",
    "enc.*.bias=uniform(-0.1, 0.1)",
    "head.weight=orthogonal(gain=relu)",
    "emb.weight=trunc_normal(std=0.02)",
    "conv.weight=xavier_uniform",
    "sparse.weight=sparse(0.5)",
]


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sd = {"emb.weight": torch.randn(100, 64, generator=g)}
    for i in range(3):
        sd[f"enc.{i}.weight"] = torch.randn(256, 256, generator=g)
        sd[f"enc.{i}.bias"] = torch.randn(256, generator=g)
    sd["head.weight"] = torch.randn(300, 256, generator=g).to(torch.bfloat16)
    sd["conv.weight"] = torch.randn(16, 8, 3, 3, generator=g).half()
    sd["sparse.weight"] = torch.randn(64, 32, generator=g)
    sd["norm.weight"] = torch.ones(256)
    return sd


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("det") / "model.safetensors"
    save_file(state(), p, metadata={"format": "pt"})
    return p


def run(src: Path | str, out: Path, rules=RULES, seed: int = 0) -> bytes:
    reinit.apply(src, rules, out, seed=seed, default_report=False)
    return out.read_bytes() if out.is_file() else b""


def data_section(path: Path) -> bytes:
    return path.read_bytes()[read_header(path).data_start :]


def test_same_inputs_same_bytes(src, tmp_path):
    a = run(src, tmp_path / "a.safetensors")
    b = run(src, tmp_path / "b.safetensors")
    assert a == b


def test_thread_count_does_not_matter(src, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(src, tmp_path / "one.safetensors")
        torch.set_num_threads(2)
        two = run(src, tmp_path / "two.safetensors")
    finally:
        torch.set_num_threads(before)
    assert one == two


def _count_in_a_new_thread() -> int:
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.mark.parametrize("where", ["file", "memory"])
def test_a_run_leaves_the_thread_count_of_later_threads_as_it_was(where, tmp_path):
    """`orthogonal` draws its QR on one thread (`set_num_threads(1)` in a draw thread). The count
    a thread adopts when it first uses torch is process-wide, so a draw thread that started while
    another held 1 put back 1, and every thread a pipeline made after the run computed on one
    core (seen in 17-22 of 40 rounds on the old code). A run now leaves it as it found it."""
    sd = {f"l{i}.weight": torch.zeros(384, 384) for i in range(6)}
    src = tmp_path / "orth.safetensors"
    save_file(sd, src)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = []
        for k in range(30):
            if where == "file":
                reinit.apply(src, ["*=orthogonal"], tmp_path / f"o{k}.safetensors", seed=k)
            else:
                reinit.apply_to_state_dict(sd, ["*=orthogonal"], seed=k)
            seen.append(_count_in_a_new_thread())
            torch.set_num_threads(2)  # each round starts from the same count
    finally:
        torch.set_num_threads(before)
    assert seen == [2] * 30


def _me() -> str:
    return threading.current_thread().name


class QrRace:
    """Forces the race of `test_each_draw_runs_on_...`: the second draw thread first uses
    torch while the first one's orthogonal holds the count at 1, and that QR goes on only once
    the second thread asks for the run's thread-count lock. Records the count each draw runs
    on and any count change made while another thread's QR runs."""

    def __init__(self):
        from reinit.run.stream import Applier

        self.seen: list[tuple[str, int]] = []
        self.under_qr: list[str] = []
        self.holder: list[str] = []  # the thread of the first draw: its orthogonal holds 1
        self.in_qr: list[str] = []
        self.holding, self.trying, self.pick = (
            threading.Event(),
            threading.Event(),
            threading.Lock(),
        )
        self.lock = threading.Lock()
        self.draw_on, self.draw = Applier._draw_on, Applier._draw
        self.orthogonal, self.set_threads = torch.nn.init.orthogonal_, torch.set_num_threads

    def begin(self, applier, threads, p):  # Applier._draw_on
        with self.pick:
            self.holder[:] = self.holder or [_me()]
        if _me() != self.holder[0]:  # first uses torch only while the holder is at 1
            assert self.holding.wait(60), "the first orthogonal never began"
        return self.draw_on(applier, threads, p)

    def probe(self, applier, p):  # Applier._draw
        self.seen.append((_me(), torch.get_num_threads()))
        return self.draw(applier, p)

    def held(self, t, gain=1.0, generator=None):  # torch.nn.init.orthogonal_
        self.in_qr.append(_me())
        try:
            if _me() == self.holder[0] and not self.holding.is_set():
                assert torch.get_num_threads() == 1
                self.holding.set()
                assert self.trying.wait(60), "the second thread never asked to set the count"
            return self.orthogonal(t, gain, generator=generator)
        finally:
            self.in_qr.remove(_me())

    def set_num_threads(self, n):  # torch.set_num_threads
        if any(t != _me() for t in self.in_qr):
            self.under_qr.append(_me())
            self.trying.set()  # it asked, without the lock: the held QR goes on
        self.set_threads(n)

    def __enter__(self):  # the run's thread-count lock (torch_init._THREAD_COUNT)
        if self.holder and _me() != self.holder[0]:
            self.trying.set()
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


@pytest.mark.parametrize("where", ["file", "memory"])
def test_each_draw_runs_on_the_runs_thread_count_and_no_count_changes_under_a_qr(
    where, tmp_path, monkeypatch
):
    """A draw thread that first uses torch while another holds the count at 1 (inside its
    `orthogonal`) adopts 1; it used to draw every later tensor on one core. And the count
    LAPACK's QR runs on is process-wide: that thread setting it back while the other's QR ran
    would run the QR on two threads, which rounds differently. Made to happen every time
    (`QrRace`). Now the change waits for the QR, no count changes under a QR, and every draw
    runs on the run's count (2)."""
    from reinit.run.stream import Applier
    from reinit.schemes import torch_init

    sd = {f"l{i}.weight": torch.zeros(8, 8) for i in range(8)}
    src = tmp_path / "orth.safetensors"
    save_file(sd, src)
    race = QrRace()
    monkeypatch.setattr(Applier, "_draw_on", lambda a, threads, p: race.begin(a, threads, p))
    monkeypatch.setattr(Applier, "_draw", lambda a, p: race.probe(a, p))
    monkeypatch.setattr(torch.nn.init, "orthogonal_", race.held)
    monkeypatch.setattr(torch_init, "_THREAD_COUNT", race)
    before = torch.get_num_threads()
    try:
        race.set_threads(2)
        monkeypatch.setattr(torch, "set_num_threads", race.set_num_threads)
        if where == "file":
            reinit.apply(src, ["*=orthogonal"], tmp_path / "o.safetensors")
        else:
            reinit.apply_to_state_dict(sd, ["*=orthogonal"])
    finally:
        monkeypatch.setattr(torch, "set_num_threads", race.set_threads)
        race.set_threads(before)
    assert len(race.seen) == 8 and len({name for name, _ in race.seen}) == 2, race.seen
    assert [n for _, n in race.seen] == [2] * 8, race.seen
    assert race.under_qr == [], race.under_qr


def test_order_of_non_overlapping_rules_does_not_matter(src, tmp_path):
    fwd = tmp_path / "fwd.safetensors"
    rev = tmp_path / "rev.safetensors"
    run(src, fwd)
    run(src, rev, rules=list(reversed(RULES)))
    # every tensor byte is the same; only the provenance metadata records the rules as written
    assert data_section(fwd) == data_section(rev)
    meta_f = json.loads(read_header(fwd).metadata["reinit"])
    meta_r = json.loads(read_header(rev).metadata["reinit"])
    assert meta_r["rules"] == list(reversed(meta_f["rules"]))


def test_sharding_does_not_matter(src, tmp_path):
    sd = load_file(src)
    d = tmp_path / "sharded"
    d.mkdir()
    names = list(sd)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, members in shards.items():
        save_file({n: sd[n] for n in members}, d / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: s for s, ms in shards.items() for n in ms}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    single = tmp_path / "single.safetensors"
    run(src, single)
    run(d, tmp_path / "out")
    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        merged.update(load_file(tmp_path / "out" / shard))
    ref = load_file(single)
    assert merged.keys() == ref.keys()
    for n in ref:
        assert ref[n].dtype == merged[n].dtype
        assert ref[n].view(torch.uint8).equal(merged[n].view(torch.uint8)), n


def test_a_different_seed_changes_every_reinit_tensor(src, tmp_path):
    a, b = tmp_path / "s0.safetensors", tmp_path / "s1.safetensors"
    rep = reinit.apply(src, RULES, a, seed=0, default_report=False)
    reinit.apply(src, RULES, b, seed=1, default_report=False)
    ta, tb = load_file(a), load_file(b)
    changed = [e.name for e in rep.tensors if e.action == "reinit"]
    assert len(changed) == 10
    for n in changed:
        assert not torch.equal(ta[n], tb[n]), n
    assert torch.equal(ta["norm.weight"], tb["norm.weight"])  # kept: untouched by the seed
