"""Many views of one storage (10,000 columns of one matrix, its rows, a flat buffer's interleaved
strided views): the overlap check gives the verdicts it gives a pair, for every pair, at about
n log n (`find_overlaps` compares only the pairs whose byte ranges overlap and whose residues
modulo the views' common stride meet; speed is measured in the report, not asserted here).

Was: every pair of views whose byte ranges overlap was compared, 52-66 s for 10,000 columns.

Internal: calls `reinit.io.memory.find_overlaps` directly; the limits of its exact tests are
lowered through the module (`EXACT_OVERLAP_LIMIT`, `OVERLAP_SOLVER_WORK`)."""

from __future__ import annotations

import pytest
import torch

import reinit
from reinit.errors import UsageError
from reinit.io.memory import find_overlaps

N = 10_000


def _layout(kind: str) -> dict[str, torch.Tensor]:
    """10,000 disjoint views of one storage, of the three kinds the check must split."""
    if kind == "columns":
        w = torch.randn(64, N)
        return {f"c{i}": w[:, i] for i in range(N)}
    if kind == "rows":
        w = torch.randn(N, 64)
        return {f"r{i}": w[i] for i in range(N)}
    flat = torch.randn(3 * N)  # "strided": three elements each, N apart, interleaved
    return {f"s{i}": flat[i::N] for i in range(N)}


@pytest.mark.parametrize("kind", ["columns", "rows", "strided"])
def test_ten_thousand_disjoint_views_of_one_storage_are_separate(kind):
    state = _layout(kind)
    first = next(iter(state.values()))
    assert all(
        t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for t in state.values()
    )
    assert find_overlaps(state) == {}


def test_a_rule_on_one_of_ten_thousand_columns_changes_only_it():
    """The QA run: `apply_to_state_dict` on 10,000 columns of one matrix (was 52 s in the
    overlap check alone)."""
    state = _layout("columns")
    before = {k: v.clone() for k, v in state.items()}
    new, report = reinit.apply_to_state_dict(state, ["c0=zeros"])
    assert not new["c0"].any() and report.entry("c1").action == "kept"
    assert all(new[k] is state[k] for k in list(state)[1:])
    assert all(torch.equal(before[k], v) for k, v in state.items())  # the input is untouched


def test_real_overlaps_among_ten_thousand_columns_are_all_found_and_named():
    """Beside the columns: the whole matrix (overlaps each), its odd columns, one block of two
    columns, a column block of the left half, and an exact alias of a column (a tie, which
    shares its column's overlaps). Every pair found is exactly known (True)."""
    w = torch.randn(64, N)
    state = {f"c{i}": w[:, i] for i in range(N)}
    state |= {"w": w, "odd": w[:, 1::2], "pair": w[:, 7:9], "left": w[:, : N // 2], "tie": w[:, 5]}

    def of(j: int) -> dict[str, bool]:
        names = ["w"] + ["odd"] * (j % 2) + ["pair"] * (j in (7, 8)) + ["left"] * (j < N // 2)
        return dict.fromkeys(names, True)

    want = {f"c{j}": of(j) for j in range(N)}
    want["tie"] = of(5)
    cols = [f"c{j}" for j in range(N)]
    want["w"] = dict.fromkeys([*cols, "odd", "pair", "left", "tie"], True)
    want["odd"] = dict.fromkeys([*cols[1::2], "w", "pair", "left", "tie"], True)
    want["pair"] = dict.fromkeys(["c7", "c8", "w", "odd", "left"], True)
    want["left"] = dict.fromkeys([*cols[: N // 2], "w", "odd", "pair", "tie"], True)
    got = find_overlaps(state)
    assert {n: dict(o) for n, o in got.items()} == want
    assert [list(got[n]) for n in ("c7", "tie")] == [
        ["w", "odd", "pair", "left"],
        ["w", "odd", "left"],
    ]
    with pytest.raises(UsageError, match="'c8', whose memory overlaps that of 'w'"):
        reinit.apply_to_state_dict(state, ["c8=zeros"])


def _covered(t: torch.Tensor, base: torch.Tensor) -> set[int]:
    """The bytes of `base` that view `t` holds (by enumerating its elements)."""
    size = t.element_size()
    start = (t.data_ptr() - base.data_ptr()) // size
    idx = torch.arange(base.numel()).as_strided(t.shape, t.stride(), start).flatten().tolist()
    return {i * size + k for i in idx for k in range(size)}


def _views(gen: torch.Generator, base: torch.Tensor) -> dict[str, torch.Tensor]:
    """2-40 strided views of `base` drawn from 1-3 geometries (shapes and strides, zero strides
    among them) at random offsets, so that many share strides as columns do; sometimes the
    whole buffer and a column block of it beside them."""

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=gen))

    geoms = []
    for _ in range(draw(1, 4)):
        dims = draw(1, 4)
        geoms.append(([draw(1, 6) for _ in range(dims)], [draw(0, 24) for _ in range(dims)]))
    views = {}
    for k in range(draw(2, 41)):
        shape, strides = geoms[draw(0, len(geoms))]
        reach = sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if reach < base.numel():
            views[f"v{k}"] = base.as_strided(shape, strides, draw(0, base.numel() - reach))
    extra = {"all": base, "block": base.view(16, 16)[:, 2:5]}
    return views | {k: v for k, v in extra.items() if draw(0, 4) == 0}


def _truth(views: dict[str, torch.Tensor], base: torch.Tensor) -> dict[str, set[str]]:
    """Which views share a byte, exact aliases (one view under two names) left out."""
    cells = {k: _covered(v, base) for k, v in views.items()}
    where = {k: (v.data_ptr(), tuple(v.shape), v.stride()) for k, v in views.items()}
    return {
        a: others
        for a in views
        if (others := {b for b in views if where[b] != where[a] and cells[a] & cells[b]})
    }


@pytest.mark.parametrize("decider", ["solver", "mask"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_many_views_of_one_buffer_agree_with_the_bytes_each_covers(dtype, decider, monkeypatch):
    """Sets of up to 42 views of one 256-element buffer: every pair that shares a byte is found
    (and known, True), no other, whichever exact test decides what the cheap ones leave."""
    import reinit.io.memory as memory

    off = {"solver": "EXACT_OVERLAP_LIMIT", "mask": "OVERLAP_SOLVER_WORK"}[decider]
    monkeypatch.setattr(memory, off, 0)
    base = torch.zeros(256, dtype=dtype)
    gen = torch.Generator().manual_seed(base.element_size())
    found = 0
    for _ in range(40):
        views = _views(gen, base)
        got = find_overlaps(views)
        assert {a: set(o) for a, o in got.items()} == _truth(views, base)
        assert all(all(o.values()) for o in got.values())
        found += len(got)
    assert found > 100  # the draws overlap often enough to test both verdicts


def test_column_blocks_past_both_exact_limits_are_told_apart_by_their_residues(monkeypatch):
    """Pins the one verdict the faster check changes. With numpy's solver off and the mask's
    limit below the views' size, blocks of columns of one matrix (`w[:, 0:2]`, `w[:, 2:4]`)
    were 'may overlap' (assumed, a rule refused); their columns' residues modulo the row stride
    are disjoint, so they are separate tensors. Pairs whose residues meet are as before: even
    and odd columns stay 'may overlap', overlapping blocks too."""
    import reinit.io.memory as memory

    monkeypatch.setattr(memory, "EXACT_OVERLAP_LIMIT", 16)
    monkeypatch.setattr(memory, "OVERLAP_SOLVER_WORK", 0)
    w = torch.zeros(6, 8)
    assert find_overlaps({"a": w[:, 0:2], "b": w[:, 2:4]}) == {}
    assert find_overlaps({"a": w[:, 0:2], "c": w[:, 1:3]}) == {"a": {"c": False}, "c": {"a": False}}
    odd_width = torch.zeros(5, 7)  # even and odd columns: the residues of one meet the other's
    assert find_overlaps({"even": odd_width[:, ::2], "odd": odd_width[:, 1::2]}) == {
        "even": {"odd": False},
        "odd": {"even": False},
    }
    out, _ = reinit.apply_to_state_dict({"a": w[:, 0:2], "b": w[:, 2:4]}, ["a=ones"])
    assert bool((out["a"] == 1).all()) and not out["b"].any()
