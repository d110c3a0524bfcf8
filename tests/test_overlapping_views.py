"""State-dict entries that are different views of overlapping memory (partly overlapping slices,
a tensor and its transpose or reshape, a parameter and a buffer viewing it) are not one tie
reinit can keep consistent: a rule that would change one of them is refused before anything is
written. Views whose memory does not overlap (a flat buffer's disjoint slices, as FSDP and
DeepSpeed hold parameters; interleaved columns) work as separate tensors.

Was: only identical views were tied, so `apply_to_module` changed the other view in place while
the report said it was kept, and `apply_to_state_dict` returned tensors out of step.

Internal: also tests `reinit.io.memory.find_overlaps` and `overlaps_itself` directly (the exact
overlap decision on strided views, and its limit).
"""

from __future__ import annotations

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file

import reinit
from reinit.errors import UsageError


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tiny_llama() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=50, max_position_embeddings=32,
        tie_word_embeddings=False,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def _llama_with_transposed_head() -> torch.nn.Module:
    """A tiny Llama that also registers its LM head's transpose as a buffer (a different view
    of the head's memory, as code that caches `W.T` for a matmul does)."""
    model = _tiny_llama()
    model.register_buffer("head_t", model.lm_head.weight.detach().t())
    return model


class _Views(torch.nn.Module):
    """A weight, and a buffer that is another view of its memory (`how`)."""

    def __init__(self, how: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 6))
        w = self.weight.detach()
        view = {
            "transpose": lambda: w.t(),
            "reshape": lambda: w.view(-1),
            "rows": lambda: w[1:3],
            "bits": lambda: w.view(torch.int32),
        }[how]()
        self.register_buffer("other", view)


@pytest.mark.parametrize("how", ["transpose", "reshape", "rows", "bits"])
def test_apply_to_module_refuses_a_rule_on_a_view_another_entry_overlaps(how):
    torch.manual_seed(0)
    module = _Views(how)
    before = _snapshot(module)
    with pytest.raises(UsageError) as err:
        reinit.apply_to_module(module, ["weight=zeros"])
    msg = str(err.value)
    assert "'weight'" in msg and "'other'" in msg and "clone" in msg
    assert "\n" not in msg
    assert _same(before, _snapshot(module))  # refused before anything was written


def test_a_rule_on_the_other_view_is_refused_too():
    module = _Views("transpose")
    before = _snapshot(module)
    with pytest.raises(UsageError, match="'other'.*'weight'"):
        reinit.apply_to_module(module, ["other=ones"])
    assert _same(before, _snapshot(module))


def test_a_tiny_llama_with_a_transposed_head_buffer_is_left_unchanged():
    model = _llama_with_transposed_head()
    before = _snapshot(model)
    with pytest.raises(UsageError) as err:
        reinit.apply_to_module(model, ["lm_head.weight=normal(0.02)"], seed=1)
    assert "'lm_head.weight'" in str(err.value) and "'head_t'" in str(err.value)
    assert _same(before, _snapshot(model))
    # rules on the model's other tensors are as before, and the two views stay one
    report = reinit.apply_to_module(model, ["*.mlp.*.weight=zeros"], seed=1)
    assert report.summary.reinit == 3
    assert torch.equal(model.head_t, model.lm_head.weight.detach().t())
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])


def test_cloning_one_view_is_the_way_out():
    model = _llama_with_transposed_head()
    model.head_t = model.head_t.clone()  # its own memory: a separate tensor
    before = _snapshot(model)
    report = reinit.apply_to_module(model, ["lm_head.weight=zeros"])
    assert report.entry("head_t").action == "kept"
    assert not model.lm_head.weight.any()
    assert torch.equal(model.head_t, before["head_t"])


def test_apply_to_state_dict_refuses_partly_overlapping_slices_and_leaves_them():
    base = torch.arange(20, dtype=torch.float32)
    state = {"a": base[:10], "b": base[5:15]}
    with pytest.raises(UsageError, match="'a'.*'b'"):
        reinit.apply_to_state_dict(state, ["a=zeros"])
    assert torch.equal(base, torch.arange(20, dtype=torch.float32))


def test_dropping_the_other_view_lets_the_rule_run():
    base = torch.arange(20, dtype=torch.float32)
    state = {"a": base[:10], "b": base[5:15]}
    new, report = reinit.apply_to_state_dict(state, ["a=zeros"], drop=["b"])
    assert list(new) == ["a"] and not new["a"].any()
    assert torch.equal(base, torch.arange(20, dtype=torch.float32))  # input untouched


def test_identical_views_stay_a_tie():
    """A parameter and a buffer that is the same view of it: one tensor under two names."""
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.ones(3, 4))
    module.register_buffer("copy", module.weight.detach())
    report = reinit.apply_to_module(module, ["weight=zeros"])
    assert report.entry("copy").action == "reinit"
    assert any("tied with" in n for n in report.entry("copy").notes)
    assert not module.copy.any()


class _FlatHeld(torch.nn.Module):
    """Parameters that are disjoint views of one flat buffer (as FSDP and DeepSpeed hold
    them), and a matrix held as its even and odd columns."""

    def __init__(self, width: int):
        super().__init__()
        flat = torch.randn(4 * 6 + 6 + 5 * width)
        self.weight = torch.nn.Parameter(flat[:24].view(4, 6))
        self.bias = torch.nn.Parameter(flat[24:30])
        grid = flat[30:].view(5, width)
        self.even = torch.nn.Parameter(grid[:, ::2])
        self.odd = torch.nn.Parameter(grid[:, 1::2])


@pytest.mark.parametrize("width", [8, 7])  # 7: odd, so the columns' strides share no factor
def test_disjoint_views_of_one_buffer_are_separate_tensors(width):
    torch.manual_seed(0)
    module = _FlatHeld(width)
    assert module.weight.untyped_storage().data_ptr() == module.odd.untyped_storage().data_ptr()
    before = _snapshot(module)
    report = reinit.apply_to_module(module, ["weight=zeros", "even=ones"])
    assert not module.weight.any() and bool((module.even == 1).all())
    assert torch.equal(module.bias, before["bias"]) and torch.equal(module.odd, before["odd"])
    assert report.entry("bias").action == report.entry("odd").action == "kept"


def test_find_overlaps_is_exact_on_strided_views():
    from reinit.io.memory import find_overlaps

    w = torch.zeros(5, 7)
    state = {
        "even": w[:, ::2],
        "odd": w[:, 1::2],
        "col0": w[:, 0],
        "mid": w[2, 1:6:2],  # odd columns of row 2 only
        "t": w.t(),
    }
    got = {n: list(others) for n, others in find_overlaps(state).items()}
    assert got == {
        "even": ["col0", "t"],
        "odd": ["mid", "t"],
        "col0": ["even", "t"],
        "mid": ["odd", "t"],
        "t": ["even", "odd", "col0", "mid"],
    }
    assert all(all(v.values()) for v in find_overlaps(state).values())  # all known, none assumed


def test_find_overlaps_past_its_exact_limit_says_maybe(monkeypatch):
    """Above the mask's limit an inconclusive pair counts as overlapping (refused, never a
    silent change); the message says it could not be checked exactly."""
    import reinit.io.memory as memory
    from reinit.io.memory import find_overlaps

    monkeypatch.setattr(memory, "EXACT_OVERLAP_LIMIT", 16)
    monkeypatch.setattr(memory, "OVERLAP_SOLVER_WORK", 0)
    w = torch.zeros(5, 7)
    assert find_overlaps({"even": w[:, ::2], "odd": w[:, 1::2]}) == {
        "even": {"odd": False},
        "odd": {"even": False},
    }
    with pytest.raises(UsageError, match="may overlap"):
        reinit.apply_to_state_dict({"even": w[:, ::2], "odd": w[:, 1::2]}, ["even=ones"])


def test_a_torch_file_holding_overlapping_views_is_refused_by_apply(tmp_path):
    """A torch file keeps views of one storage as views: written apart, the output would hold
    the new `w` beside the old `w_t`, which a model tying them loads out of step."""
    w = torch.randn(4, 6)
    torch.save({"w": w, "w_t": w.t(), "b": torch.zeros(4)}, tmp_path / "m.pt")
    out = tmp_path / "o.safetensors"
    refused(
        tmp_path,
        ["apply", tmp_path / "m.pt", "-o", out, "--rule", "w=zeros"],
        2,
        "'w'",
        "'w_t'",
    )
    res = run("apply", tmp_path / "m.pt", "-o", out, "--rule", "b=ones", "-q")
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert torch.equal(got["w"], w) and torch.equal(got["w_t"], w.t())


def test_a_torch_file_of_disjoint_views_applies(tmp_path):
    flat = torch.randn(30)
    torch.save({"w": flat[:24].view(4, 6), "b": flat[24:]}, tmp_path / "m.pt")
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "m.pt", "-o", out, "--rule", "w=zeros", "-q")
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert not got["w"].any() and torch.equal(got["b"], flat[24:])


def test_an_expanded_buffer_a_rule_changes_is_refused_before_any_write():
    """Was: torch's RuntimeError from `copy_` after the tensors before it were written."""
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.ones(2, 3))
    module.register_buffer("scale", torch.ones(3).expand(4, 3))
    before = _snapshot(module)
    with pytest.raises(UsageError, match="'scale'.*share memory"):
        reinit.apply_to_module(module, ["*=zeros"])
    assert _same(before, _snapshot(module))
    # a state dict gets a new tensor: nothing is written into the expanded one
    new, _ = reinit.apply_to_state_dict(module.state_dict(), ["scale=zeros"])
    assert not new["scale"].any() and bool(module.scale.all())


def test_overlaps_itself():
    from reinit.io.memory import overlaps_itself

    w = torch.zeros(6, 8)
    assert not overlaps_itself(w) and not overlaps_itself(w.t()) and not overlaps_itself(w[:, ::2])
    assert not overlaps_itself(torch.zeros(1, 5).expand(1, 5))  # a size-1 dimension
    assert overlaps_itself(torch.zeros(3).expand(4, 3))
    assert overlaps_itself(w.view(-1).as_strided((3, 4), (2, 1)))  # rows two apart, four wide
    assert not overlaps_itself(w.view(-1).as_strided((2, 3), (1, 2)))  # 0,2,4 and 1,3,5


class _Wrapper(torch.Tensor):
    """A tensor subclass with no memory of its own (as DTensor is): torch gives address 0."""

    @staticmethod
    def __new__(cls, shape: tuple[int, ...]) -> _Wrapper:
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func is torch.ops.aten.detach.default:  # what state_dict() takes of a buffer
            return _Wrapper(tuple(args[0].shape))
        raise NotImplementedError(func)


def test_tensors_without_an_address_are_tied_only_to_views_of_their_own_storage():
    """Meta tensors and wrapper subclasses (DTensor) all have address 0: two of one shape are
    not one tie, while a meta tensor's detach() (what state_dict() holds) is.

    Was: every such tensor of one shape was tied to the first; and a wrapper subclass's storage
    address raised RuntimeError ('invalid python storage') out of planning, a traceback."""
    from reinit.io.memory import find_aliases

    m = torch.empty(3, 4, device="meta")
    got = find_aliases(
        {"a": _Wrapper((3, 4)), "b": _Wrapper((3, 4)), "m": m, "n": torch.empty(3, 4, device="meta"),
         "m2": m.detach(), "m_t": m.t()}
    )  # fmt: skip
    assert got == {"m2": "m"}


def test_tensors_without_an_address_of_their_own_are_never_overlapping():
    """A wrapper subclass (as DTensor is) reports address 0 for every instance: not one memory."""
    from reinit.io.memory import find_overlaps, overlaps_itself

    a, b = _Wrapper((3, 4)), _Wrapper((12,))
    assert a.data_ptr() == b.data_ptr() == 0
    assert find_overlaps({"a": a, "b": b, "m": torch.empty(3, device="meta")}) == {}
    assert not overlaps_itself(a)


def test_a_recipe_refuses_a_later_step_that_changes_one_of_two_views(tmp_path):
    """A step's kept tensors are the source's own objects, so a later step sees the views too:
    `plan_recipe` (steps planned on shapes only) and `run_recipe` refuse alike, writing nothing."""
    w = torch.randn(4, 6)
    torch.save({"w": w, "w_t": w.t(), "b": torch.zeros(4)}, tmp_path / "m.pt")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        f"source: {tmp_path / 'm.pt'}\n"
        f"output: {tmp_path / 'out.safetensors'}\n"
        "steps:\n"
        "  - rules: ['b=ones']\n"
        "  - rules: ['w_t=zeros']\n"
    )
    recipe = reinit.load_recipe(recipe_file)
    for how in (reinit.plan_recipe, reinit.run_recipe):
        with pytest.raises(UsageError, match="step 2.*'w_t'.*'w'"):
            how(recipe)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "r.yaml"]


@pytest.mark.parametrize("tie", [False, True])
def test_planning_a_meta_model_ties_only_its_tied_weights(tie):
    """A model built on the meta device (plan only: no memory, every address 0) has ties only
    where the model ties (the LM head and the embeddings when the config says so).

    Was: every meta tensor of one shape counted as the same view of one storage, so a rule on
    q_proj also re-initialized k_proj, v_proj and o_proj of every layer ("tied with ...")."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=50, max_position_embeddings=32,
        tie_word_embeddings=tie,
    )  # fmt: skip
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    plan = reinit.plan(model.state_dict(), ["*.q_proj.weight=zeros", "lm_head.weight=ones"])
    changed = sorted(e.name for e in plan.entries if e.changes)
    want = ["lm_head.weight"] + [f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 1)]
    assert changed == sorted(want + (["model.embed_tokens.weight"] if tie else []))
    tied = {e.name: e.reason for e in plan.entries if e.reason and "tied" in e.reason}
    assert list(tied) == (["model.embed_tokens.weight"] if tie else [])


def test_column_halves_of_a_matrix_past_the_masks_limit_are_separate(monkeypatch):
    """Two column blocks of one matrix (a tensor-parallel split along the input dimension) share
    no byte. numpy's exact solver tells them apart at any size; the mask is only its fallback
    (its limit lowered here to what a 65536x4096 bf16 matrix's halves exceed at 2^27).

    Was: past the mask's limit the pair counted as 'may overlap' and a rule on one half was
    refused."""
    import reinit.io.memory as memory
    from reinit.io.memory import find_overlaps

    monkeypatch.setattr(memory, "EXACT_OVERLAP_LIMIT", 16)
    w = torch.zeros(6, 8)
    state = {"left": w[:, :4], "right": w[:, 4:], "mid": w[:, 3:5]}
    assert find_overlaps({"left": state["left"], "right": state["right"]}) == {}
    assert find_overlaps(state) == {
        "left": {"mid": True},
        "right": {"mid": True},
        "mid": {"left": True, "right": True},
    }
    out, _ = reinit.apply_to_state_dict(
        {"left": state["left"], "right": state["right"]}, ["left=ones"]
    )
    assert bool((out["left"] == 1).all()) and not out["right"].any()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.float32, torch.complex64])
@pytest.mark.parametrize("decider", ["solver", "mask"])
def test_find_overlaps_agrees_with_the_bytes_each_view_covers(dtype, decider, monkeypatch):
    """Random strided views (slices, steps, transposes, zero strides) of one small buffer: two
    overlap exactly when the sets of bytes they cover meet, whether numpy's solver or the mask
    decides what the cheap tests leave (the other one switched off)."""
    import reinit.io.memory as memory
    from reinit.io.memory import find_overlaps

    off = {"solver": "EXACT_OVERLAP_LIMIT", "mask": "OVERLAP_SOLVER_WORK"}[decider]
    monkeypatch.setattr(memory, off, 0)
    seen = set()

    size = torch.empty(0, dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(int(size))
    base = torch.zeros(64, dtype=dtype)

    def draw() -> torch.Tensor:
        dims = int(torch.randint(1, 4, (1,), generator=gen))
        shape = [int(torch.randint(1, 5, (1,), generator=gen)) for _ in range(dims)]
        strides = [int(torch.randint(0, 9, (1,), generator=gen)) for _ in range(dims)]
        reach = sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        offset = int(torch.randint(0, 64 - reach, (1,), generator=gen)) if reach < 64 else 0
        return base.as_strided(shape, strides, offset) if reach < 64 else base[:1]

    def covered(t: torch.Tensor) -> set[int]:
        start = (t.data_ptr() - base.data_ptr()) // size
        idx = torch.arange(64).as_strided(t.shape, t.stride(), start).flatten().tolist()
        return {i * size + k for i in idx for k in range(size)}

    for _ in range(60):
        a, b = draw(), draw()
        if (a.shape, a.stride(), a.data_ptr()) == (b.shape, b.stride(), b.data_ptr()):
            continue  # one view: a tie, not an overlap
        want = bool(covered(a) & covered(b))
        assert bool(find_overlaps({"a": a, "b": b})) == want, (a.shape, a.stride(), b.stride())
        seen.add(want)
    assert seen == {True, False}


def test_the_refusal_names_the_tensor_the_rule_hits_when_its_tie_overlaps_a_view():
    """'tied' is an exact alias of 'w', which 'w_t' transposes: a rule on 'tied' is refused
    naming 'tied' (the tensor the user's rule names) and 'w_t', and leaves the dict unchanged.

    Was: the message named 'w' (changed only through the tie), which no rule named."""
    w = torch.randn(4, 6)
    state = {"w": w, "tied": w, "w_t": w.t(), "b": torch.zeros(4)}
    before = {k: v.clone() for k, v in state.items()}
    with pytest.raises(UsageError) as err:
        reinit.apply_to_state_dict(state, ["tied=zeros"])
    msg = str(err.value)
    assert "would change tensor 'tied', whose memory overlaps that of 'w_t'" in msg
    assert "\n" not in msg and "clone" in msg
    assert all(torch.equal(before[k], v) for k, v in state.items())
    assert state["w_t"].data_ptr() == state["w"].data_ptr()  # still the caller's own views


def test_applying_to_a_tensor_subclass_with_no_memory_is_one_line():
    """A DTensor (FSDP2, tensor parallelism) or another wrapper subclass holds no memory reinit
    can read or write: `apply_to_state_dict` and `apply_to_module` refuse it in one line naming
    it and the way to plain tensors, and change nothing; planning (shapes only) works.

    Was: RuntimeError ('.numpy() is not supported for tensor subclasses') from the reader."""
    state = {"a": _Wrapper((3, 4)), "b": torch.zeros(2)}
    plan = reinit.plan(state, ["*=ones"])
    assert [e.name for e in plan.entries if e.changes] == ["a", "b"]
    with pytest.raises(UsageError) as err:
        reinit.apply_to_state_dict(state, ["b=ones"])
    assert "'a' is a _Wrapper" in str(err.value) and "full_tensor()" in str(err.value)
    module = torch.nn.Linear(2, 2)
    module.register_buffer("sharded", _Wrapper((3, 4)))
    before = module.weight.detach().clone()
    with pytest.raises(UsageError, match="'sharded' is a _Wrapper"):
        reinit.apply_to_module(module, ["weight=zeros"])
    assert torch.equal(module.weight.detach(), before)


def test_a_recipe_plans_ties_and_views_under_a_steps_new_names_as_it_runs(tmp_path):
    """A step's --rename keeps a tie and an overlapping view: `plan_recipe` (the dry run) plans
    the next step as `run_recipe` runs it, the renamed tie changed with its partner, a change
    to the renamed view refused by both.

    Was: the dry run dropped ties and views whose names a step renamed, so it showed 'tied'
    kept where the run changed it, and planned a change the run refused."""
    w = torch.randn(4, 6)
    torch.save({"w": w, "tied": w, "b": torch.zeros(4)}, tmp_path / "t.pt")
    torch.save({"w": w, "w_t": w.t(), "b": torch.zeros(4)}, tmp_path / "v.pt")

    def recipe(source: str, out: str, rule: str) -> reinit.Recipe:
        (tmp_path / "r.yaml").write_text(
            f"source: {tmp_path / source}\noutput: {tmp_path / out}\nsteps:\n"
            f"  - rename: ['w=v']\n  - rules: ['{rule}']\n"
        )
        return reinit.load_recipe(tmp_path / "r.yaml")

    tied = recipe("t.pt", "t-out.pt", "v=zeros")
    planned = {e.name: e.changes for e in reinit.plan_recipe(tied)[-1].entries}
    ran = {e.name: e.changes for e in reinit.run_recipe(tied).tensors}
    assert planned == ran == {"v": True, "tied": True, "b": False}
    views = recipe("v.pt", "v-out.safetensors", "w_t=zeros")
    for how in (reinit.plan_recipe, reinit.run_recipe):
        with pytest.raises(UsageError, match="step 2.*'w_t'.*'v'"):
            how(views)
    assert not (tmp_path / "v-out.safetensors").exists()
