"""Transplants across architecture changes, the select and permute half (issue 15): capture
arithmetic in key templates, `chunk=` / `cat=` (fused QKV <-> q/k/v, checked by a forward pass),
`rotary=` (checked against transformers' Llama conversion `permute` and by attention scores),
and the exit-2 refusals. Tiny checkpoints built in the tests.

Internal: also tests reinit.planning.transplant, reinit.rules, reinit.schemes.templates,
reinit.transforms.fuse, reinit.transforms.rotary, reinit.transforms.spec directly (not the
`reinit` API).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import refused, run
from safetensors.torch import load_file, save_file
from torch import nn

import reinit.planning.transplant as transplant_mod
from reinit.errors import RuleError, TransplantError
from reinit.rules import parse_rule
from reinit.schemes.templates import fill_template
from reinit.transforms.fuse import cat_shape, chunk_shape, concat, take_chunk
from reinit.transforms.rotary import hf_to_meta, meta_to_hf
from reinit.transforms.spec import Chunk


def reference_permute(w: torch.Tensor, n_heads: int, dim1: int, dim2: int) -> torch.Tensor:
    """transformers' `convert_llama_weights_to_hf.permute` (Meta -> HF), as published in
    src/transformers/models/llama/convert_llama_weights_to_hf.py. The conversion script is not
    shipped in the installed transformers wheel (5.x), so it is re-implemented here from the
    published formula, unchanged; `transformers_permute` below uses the real one when importable."""
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def transformers_permute():
    try:
        from transformers.models.llama import convert_llama_weights_to_hf as conv
    except Exception:
        return None
    return getattr(conv, "permute", None)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


# --- capture arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "capture", "want"),
    [("l.{1+8}", "3", "l.11"), ("l.{1-16}", "20", "l.4"), ("l.{1*2}", "5", "l.10"),
     ("l.{1*2+1}", "5", "l.11"), ("l.{1*2-1}", "5", "l.9"), ("l.{1}", "x", "l.x")],
)  # fmt: skip
def test_capture_arithmetic(template, capture, want):
    assert fill_template(template, "n", (capture,), "", RuleError) == want


def test_capture_arithmetic_refusals():
    with pytest.raises(RuleError, match=r"rule 'r'.*needs an integer capture.*'a'"):
        fill_template("l.{1+1}", "a.w", ("a",), "rule 'r': the template ", RuleError)
    with pytest.raises(RuleError, match=r"gives -1.*must be >= 0"):
        fill_template("l.{1-2}", "1.w", ("1",), "", RuleError)
    with pytest.raises(RuleError, match=r"not \{name\}"):
        fill_template("{name+1}", "1.w", ("1",), "", RuleError)


@pytest.mark.parametrize("field", ["{1/2}", "{1 + 8}", "{nmae}", "{1+}", "{}"])
def test_a_field_the_templates_do_not_know_is_refused_not_kept_literally(field):
    """`{1/2}` (no division) or a misspelt `{nmae}` was left in the name as written, so the
    user saw "source has no tensor 'layers.{1/2}.w'" instead of what is wrong."""
    with pytest.raises(RuleError, match=r"unknown field .*\{name\}, \{1\}"):
        fill_template(f"layers.{field}.w", "layers.4.w", ("4",), "", RuleError)


def test_an_unknown_field_in_a_key_is_exit_2_naming_it(tmp_path):
    save_file({"layers.4.w": torch.zeros(2)}, tmp_path / "a.safetensors")
    rule = f"re:layers\\.(\\d+)\\.w=from({tmp_path / 'a.safetensors'}, key=layers.{{1/2}}.w)"
    refused(tmp_path, ["apply", str(tmp_path / "a.safetensors"), "-o",
                       str(tmp_path / "o.safetensors"), "--rule", rule], 2,
            "unknown field {1/2}")  # fmt: skip


# --- parsing --------------------------------------------------------------------------------


def test_from_parses_every_transform_argument():
    r = parse_rule("*.q.weight=from(s.safetensors, key={1}.qkv.weight, chunk=0/3, dim=1)")
    spec = r.transplant
    assert spec.transform.chunk == Chunk(index=0, count=3) and spec.transform.dim == 1
    assert spec.transform_text() == "dim=1, chunk=0/3"
    r = parse_rule("*=from(s, cat={1}.q;{1}.k;{1}.v)")
    assert r.transplant.cat == ("{1}.q", "{1}.k", "{1}.v") and r.transplant.has_transform
    r = parse_rule("*=from(s, rotary=hf_to_meta, heads=8)")
    assert (r.transplant.transform.rotary, r.transplant.transform.heads) == ("hf_to_meta", 8)
    r = parse_rule("*=from(s, resample=bicubic, prefix=1, grid=14x14)")
    assert r.transplant.transform.grid == (14, 14) and r.transplant.transform.prefix == 1
    r = parse_rule("*=from(s, resample=copy, init=normal(std=0.02))")
    assert r.transplant.transform.init == "normal(std=0.02)"
    r = parse_rule("*=from(s, rows=tokens, vocab=t/tokenizer.json, src_vocab=s/vocab.txt)")
    assert r.transplant.transform.adapter == "rows"
    assert not parse_rule("*=from(s, key={1})").transplant.has_transform


@pytest.mark.parametrize(
    ("action", "fragment"),
    [
        ("from(s, rotary=sideways, heads=2)", "hf_to_meta, meta_to_hf"),
        ("from(s, resample=nearest)", "linear, bicubic, copy"),
        ("from(s, adapt=depth)", "channels"),
        ("from(s, rows=words)", "tokens, labels"),
        ("from(s, rotary=hf_to_meta)", "needs heads=N"),
        ("from(s, heads=4)", "heads= only applies with rotary="),
        ("from(s, dim=1)", "dim= only applies with chunk= or cat="),
        ("from(s, grid=14x14)", "only applies with resample="),
        ("from(s, new=zeros)", "only applies with rows="),
        ("from(s, key=a, cat=b;c)", "key= and cat= are exclusive"),
        ("from(s, cat=b)", "two or more key templates"),
        ("from(s, cat=a;b, chunk=0/2)", "use one per rule"),
        ("from(s, resample=linear, adapt=channels)", "at most one of"),
        ("from(s, chunk=3/3)", "0..N-1"),
        ("from(s, chunk=5:5)", "START must be below STOP"),
        ("from(s, chunk=half)", "I/N"),
        ("from(s, resample=bicubic, grid=0x4)", "HxW"),
        ("from(s, rows=tokens, new=no_such_scheme)", "unknown scheme"),
        ("from(s, chunk=0/3, dim=-1)", "integer >= 0"),
    ],
)
def test_bad_transform_arguments_are_rule_errors(action, fragment):
    with pytest.raises(RuleError, match=None) as e:
        parse_rule(f"x.weight={action}")
    assert fragment in str(e.value) and "x.weight=" in str(e.value)


# --- chunk / cat / rotary as functions ------------------------------------------------------


def test_chunk_and_cat_functions():
    t = randn(10, 3)
    assert torch.equal(take_chunk(t, Chunk(index=1, count=2), 0), t[5:])
    assert torch.equal(take_chunk(t, Chunk(start=2, stop=6), 0), t[2:6])
    assert torch.equal(take_chunk(t, Chunk(index=2, count=3), 1), t[:, 2:])
    assert chunk_shape((10, 3), Chunk(start=2, stop=6), 0) == (4, 3)
    parts = [take_chunk(t, Chunk(index=i, count=5), 0) for i in range(5)]
    assert torch.equal(concat(parts, 0), t)
    assert cat_shape([(2, 3), (4, 3)], 0) == (6, 3)
    with pytest.raises(TransplantError, match="does not split into 3 equal chunks"):
        chunk_shape((10, 3), Chunk(index=0, count=3), 0)
    with pytest.raises(TransplantError, match="runs past"):
        chunk_shape((10, 3), Chunk(start=8, stop=12), 0)
    with pytest.raises(TransplantError, match="has 2 dim"):
        chunk_shape((10, 3), Chunk(index=0, count=1), 2)
    with pytest.raises(TransplantError, match="every other dim equal"):
        cat_shape([(2, 3), (4, 5)], 0)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "hidden"), [(4, 4, 8, 32), (8, 2, 4, 32)]
)
def test_rotary_round_trips_and_equals_the_llama_conversion_permute(
    heads, kv_heads, head_dim, hidden
):
    """meta_to_hf is the conversion script's `permute` (for q with n_heads, and for k with
    n_kv_heads and dim1 = n_kv_heads·head_dim, as the script calls it under GQA); hf_to_meta
    undoes it exactly (a permutation: torch.equal, no rounding)."""
    official = transformers_permute()
    q = randn(heads * head_dim, hidden, seed=1)
    k = randn(kv_heads * head_dim, hidden, seed=2)
    qb, kb = randn(heads * head_dim, seed=3), randn(kv_heads * head_dim, seed=4)
    for w, n in ((q, heads), (k, kv_heads)):
        want = reference_permute(w, n, w.shape[0], hidden)
        assert torch.equal(meta_to_hf(w, n), want)
        if official is not None:
            assert torch.equal(meta_to_hf(w, n), official(w, n, w.shape[0], hidden))
        assert torch.equal(hf_to_meta(meta_to_hf(w, n), n), w)
        assert torch.equal(meta_to_hf(hf_to_meta(w, n), n), w)
        assert not torch.equal(meta_to_hf(w, n), w)  # it does move rows
    for b, n in ((qb, heads), (kb, kv_heads)):  # a bias permutes like a weight's rows
        want = reference_permute(b[:, None], n, b.shape[0], 1)[:, 0]
        assert torch.equal(meta_to_hf(b, n), want)
        assert torch.equal(hf_to_meta(meta_to_hf(b, n), n), b)


def test_rotary_layouts_give_the_same_attention_scores():
    """Independent of any formula: Meta's RoPE (interleaved pairs as complex numbers) on Meta
    weights and HF's rotate-half RoPE on the hf-converted weights give the same q·k scores
    (float32; the two dot products sum the same terms in another order, so allclose at a few
    float32 eps of the scores' size)."""
    heads, kv, hd, hidden, length = 4, 2, 8, 32, 6
    x = randn(length, hidden, seed=5)
    wq, wk = randn(heads * hd, hidden, seed=6), randn(kv * hd, hidden, seed=7)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(length).float(), inv)  # [L, hd/2]

    def meta_rope(w, n):
        y = (x @ w.T).view(length, n, hd // 2, 2)
        c = torch.view_as_complex(y.contiguous()) * torch.polar(torch.ones_like(ang), ang)[:, None]
        return torch.view_as_real(c).reshape(length, n, hd)

    def hf_rope(w, n):
        y = (x @ w.T).view(length, n, hd)
        cos, sin = (
            torch.cat([ang, ang], -1).cos()[:, None],
            torch.cat([ang, ang], -1).sin()[:, None],
        )
        half = torch.cat([-y[..., hd // 2 :], y[..., : hd // 2]], -1)
        return y * cos + half * sin

    def scores(q, k):  # [heads, L, L], k repeated for GQA
        k = k.repeat_interleave(heads // kv, dim=1)
        return torch.einsum("lhd,mhd->hlm", q, k)

    meta = scores(meta_rope(wq, heads), meta_rope(wk, kv))
    hf = scores(hf_rope(meta_to_hf(wq, heads), heads), hf_rope(meta_to_hf(wk, kv), kv))
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(meta, hf, rtol=0, atol=64 * eps * meta.abs().max().item())


# --- fused QKV <-> q/k/v through the CLI, checked by a forward pass -------------------------

E, H = 16, 4


class SplitAttention(nn.Module):
    """The same attention as nn.MultiheadAttention(E, H, batch_first=True), with separate
    q/k/v projections."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(E, E) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape

        def heads(t):
            return t.view(b, n, H, E // H).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        return self.out(a.transpose(1, 2).reshape(b, n, E))


def split_rules(src) -> list[str]:
    rules = []
    for i, p in enumerate("qkv"):
        for kind in ("weight", "bias"):
            rules += ["--rule", f"{p}.{kind}=from({src}, key=in_proj_{kind}, chunk={i}/3)"]
    return rules + ["--rule", f"out.*=from({src}, key=out_proj.{{1}})"]


@pytest.fixture
def fused(tmp_path):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    nn.init.normal_(mha.in_proj_bias)  # torch zeroes it: make the bias chunks tell apart
    path = tmp_path / "mha.safetensors"
    save_file({k: v.contiguous() for k, v in mha.state_dict().items()}, path)
    return mha, path


def forward_tol(want: torch.Tensor) -> float:
    """MHA projects with one [3E, E] matmul, the split module with three [E, E] ones: the same
    sums of E products, possibly blocked differently by the BLAS, so each output may differ by
    a few float32 rounding steps of its magnitude (E terms: a bound of E·eps·scale)."""
    return E * torch.finfo(torch.float32).eps * max(1.0, want.abs().max().item())


def test_fused_qkv_to_separate_projections_gives_the_same_attention(fused, tmp_path):
    mha, src = fused
    torch.manual_seed(1)
    target = SplitAttention()
    save_file(
        {k: v.contiguous() for k, v in target.state_dict().items()}, tmp_path / "split.safetensors"
    )
    out = tmp_path / "split-filled.safetensors"
    res = run("apply", tmp_path / "split.safetensors", "-o", out, "--json", *split_rules(src))
    assert res.exit_code == 0, res.output
    sd = load_file(out)
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    for i, p in enumerate("qkv"):  # bytes: exactly the rows of the fused tensor
        assert raw(sd[f"{p}.weight"]) == raw(w[i * E : (i + 1) * E])
        assert raw(sd[f"{p}.bias"]) == raw(b[i * E : (i + 1) * E])
    split = SplitAttention().eval()
    split.load_state_dict(sd)
    x = randn(2, 5, E, seed=9)
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False)[0]
        got = split(x)
    assert torch.allclose(got, want, rtol=0, atol=forward_tol(want))
    rows = {t["name"]: t for t in json.loads(res.stdout)["tensors"]}
    k = rows["k.weight"]
    assert k["transform"] == "dim=0, chunk=1/3"
    assert k["from"] == f"{src}:in_proj_weight"
    assert any("chunk 1/3: indices 16:32 along dim 0 of a [48, 16] source" in n for n in k["notes"])
    assert "transform" not in rows["out.weight"]  # a plain copy: no transform field


def test_separate_projections_to_fused_qkv_with_cat(fused, tmp_path):
    mha, src = fused
    torch.manual_seed(2)
    split = SplitAttention().eval()
    split_path = tmp_path / "split.safetensors"
    save_file({k: v.contiguous() for k, v in split.state_dict().items()}, split_path)
    out = tmp_path / "fused-again.safetensors"
    res = run(
        "apply", src, "-o", out, "--json",
        "--rule", f"in_proj_*=from({split_path}, cat=q.{{1}};k.{{1}};v.{{1}})",
        "--rule", f"out_proj.*=from({split_path}, key=out.{{1}})",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    sd = load_file(out)
    want_w = torch.cat([split.q.weight, split.k.weight, split.v.weight]).detach()
    assert raw(sd["in_proj_weight"]) == raw(want_w)
    fused_again = nn.MultiheadAttention(E, H, batch_first=True).eval()
    fused_again.load_state_dict(sd)
    x = randn(2, 5, E, seed=10)
    with torch.no_grad():
        want = split(x)
        got = fused_again(x, x, x, need_weights=False)[0]
    assert torch.allclose(got, want, rtol=0, atol=forward_tol(want))
    row = {t["name"]: t for t in json.loads(res.stdout)["tensors"]}["in_proj_weight"]
    assert row["from"] == f"{split_path}:q.weight;k.weight;v.weight"
    assert row["transform"] == "cat=q.{1};k.{1};v.{1}, dim=0"


def test_split_then_cat_round_trips_bytes_and_reads_only_what_it_needs(
    fused, tmp_path, monkeypatch
):
    """chunk= then cat= gives the fused tensor back byte for byte; a transform is never the
    streamed byte copy, and only the source tensors a rule names are read."""
    mha, src = fused
    split_path = tmp_path / "split.safetensors"
    save_file({k: v.contiguous() for k, v in SplitAttention().state_dict().items()}, split_path)
    assert (
        run(
            "apply", split_path, "-o", tmp_path / "s.safetensors", "-q", *split_rules(src)
        ).exit_code
        == 0
    )
    read: list[str] = []
    real_read = transplant_mod.SourcePool.get

    def spy(self, source, state=""):
        ck = real_read(self, source, state)
        if getattr(ck, "spied", False):
            return ck
        ck.spied = True
        orig = ck.read

        def counted(key):
            read.append(key)
            return orig(key)

        ck.read = counted
        return ck

    monkeypatch.setattr(transplant_mod.SourcePool, "get", spy)
    res = run(
        "apply", src, "-o", tmp_path / "back.safetensors", "-q",
        "--rule", f"in_proj_weight=from({tmp_path / 's.safetensors'}, cat=q.weight;k.weight;v.weight)",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(read) == ["k.weight", "q.weight", "v.weight"]
    assert raw(load_file(tmp_path / "back.safetensors")["in_proj_weight"]) == raw(
        mha.in_proj_weight.detach()
    )


def test_rotary_through_the_cli_round_trips(tmp_path):
    """rotary=hf_to_meta then rotary=meta_to_hf gives the bytes back; the first step's output
    is the permuted tensor (not the streamed byte copy a same-shape transplant would be)."""
    q, k = randn(32, 16, seed=1), randn(8, 16, seed=2)
    src = tmp_path / "hf.safetensors"
    save_file({"l.0.q_proj.weight": q, "l.0.k_proj.weight": k}, src)
    meta = tmp_path / "meta.safetensors"
    rules = ["--rule", f"*.q_proj.weight=from({src}, rotary=hf_to_meta, heads=4)",
             "--rule", f"*.k_proj.weight=from({src}, rotary=hf_to_meta, heads=1)"]  # fmt: skip
    assert run("apply", src, "-o", meta, "-q", *rules).exit_code == 0
    m = load_file(meta)
    assert torch.equal(m["l.0.q_proj.weight"], hf_to_meta(q, 4))
    assert torch.equal(reference_permute(m["l.0.q_proj.weight"], 4, 32, 16), q)
    assert torch.equal(reference_permute(m["l.0.k_proj.weight"], 1, 8, 16), k)
    assert not torch.equal(m["l.0.q_proj.weight"], q)
    back = tmp_path / "back.safetensors"
    rules = ["--rule", f"*.q_proj.weight=from({meta}, rotary=meta_to_hf, heads=4)",
             "--rule", f"*.k_proj.weight=from({meta}, rotary=meta_to_hf, heads=1)"]  # fmt: skip
    assert run("apply", meta, "-o", back, "-q", *rules).exit_code == 0
    b = load_file(back)
    assert raw(b["l.0.q_proj.weight"]) == raw(q) and raw(b["l.0.k_proj.weight"]) == raw(k)


# --- refusals -------------------------------------------------------------------------------


@pytest.fixture
def qkv_files(tmp_path):
    save_file(
        {"attn.qkv.weight": randn(10, 4), "blocks.a.w": randn(2, 2)}, tmp_path / "src.safetensors"
    )
    save_file({"attn.q.weight": torch.zeros(4, 4), "blocks.a.w": torch.zeros(2, 2),
               "layers.0.w": torch.zeros(2, 2)}, tmp_path / "tgt.safetensors")  # fmt: skip
    return tmp_path / "src.safetensors", tmp_path / "tgt.safetensors"


@pytest.mark.parametrize(
    ("rule", "fragments"),
    [
        ("attn.q.weight=from(SRC, key=attn.qkv.weight, chunk=0/3)",
         ["cannot make 'attn.q.weight' [4, 4] from 'attn.qkv.weight' [10, 4]",
          "size 10, which does not split into 3 equal chunks", "chunk=START:STOP"]),
        ("attn.q.weight=from(SRC, key=attn.qkv.weight, chunk=0:12)", ["runs past dim 0's size 10"]),
        ("attn.q.weight=from(SRC, key=attn.qkv.weight, chunk=0/2, dim=2)", ["has 2 dim(s)"]),
        ("attn.q.weight=from(SRC, key=attn.qkv.weight, rotary=hf_to_meta, heads=3)",
         ["10 rows are not 3 heads of an even head_dim"]),
        ("attn.q.weight=from(SRC, key=attn.qkv.weight, chunk=0:2)",
         ["shape mismatch", "<- transformed 'attn.qkv.weight' [2, 4]", "on_mismatch=slice"]),
        ("attn.q.weight=from(SRC, cat=attn.qkv.weight;blocks.a.w)", ["every other dim equal"]),
        ("attn.q.weight=from(SRC, cat=attn.qkv.weight;attn.nope)", ["has no tensor 'attn.nope'"]),
        ("blocks.*.w=from(SRC, key=blocks.{1+1}.w)",
         ["rule 'blocks.*.w=", "needs an integer capture", "'a'"]),
        ("layers.*.w=from(SRC, key=blocks.{1-1}.w)", ["gives -1", "results must be >= 0"]),
        ("attn.q.weight=from(SRC, key=attn.qkv.weight, resample=bicubic, prefix=1)",
         ["resample=bicubic: the target's 4 positions less 1 prefix token(s) is not a square grid"]),
        ("attn.q.weight=from(SRC, rotary=sideways, heads=2)", ["hf_to_meta, meta_to_hf"]),
    ],
)  # fmt: skip
def test_impossible_transforms_are_exit_2_before_anything_is_written(
    qkv_files, tmp_path, rule, fragments
):
    src, tgt = qkv_files
    refused(tmp_path, ["apply", str(tgt), "-o", str(tmp_path / "o.safetensors"),
                       "--rule", rule.replace("SRC", str(src))], 2, *fragments)  # fmt: skip


def test_slice_applies_after_the_transform(qkv_files, tmp_path):
    """on_mismatch= comes last: a 2-row chunk sliced into a 4-row target fills 2 rows."""
    src, tgt = qkv_files
    out = tmp_path / "o.safetensors"
    res = run("apply", tgt, "-o", out, "-q", "--rule",
              f"attn.q.weight=from({src}, key=attn.qkv.weight, chunk=2:4, on_mismatch=slice)")  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out)["attn.q.weight"]
    assert torch.equal(got[:2], load_file(src)["attn.qkv.weight"][2:4]) and not got[2:].any()
    assert math.isclose(float(got[2:].abs().sum()), 0.0)


def test_in_memory_module_takes_a_split_fused_projection(fused, tmp_path):
    """The Python API runs the same transforms: `apply_to_module` fills a live module's q/k/v
    from the fused file, in place, and its forward matches the fused attention."""
    import reinit

    mha, src = fused
    split = SplitAttention().eval()
    rules = [r for r in split_rules(src) if r != "--rule"]
    report = reinit.apply_to_module(split, rules)
    assert report.entry("v.bias").transform == "dim=0, chunk=2/3"
    x = randn(1, 3, E, seed=11)
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False)[0]
        assert torch.allclose(split(x), want, rtol=0, atol=forward_tol(want))


def test_rename_takes_capture_arithmetic(tmp_path):
    """`--rename` shares the key templates: shift every layer up by one."""
    src = tmp_path / "m.safetensors"
    save_file({f"layers.{i}.w": torch.full((2,), float(i)) for i in range(3)}, src)
    out = tmp_path / "o.safetensors"
    res = run("apply", src, "-o", out, "-q", "--rename", r"re:layers\.(\d+)\.w=layers.{1+1}.w")
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert sorted(got) == ["layers.1.w", "layers.2.w", "layers.3.w"]
    assert all(got[f"layers.{i + 1}.w"][0].item() == i for i in range(3))


# --- GPT-2's Conv1D: a fused c_attn splits along dim=1 ------------------------------------------


@pytest.fixture
def gpt2_c_attn(tmp_path):
    """A tiny GPT-2 (its c_attn weight is a Conv1D's [in, 3*out]) and a file with its q/k/v
    split out as separate [in, out] weights (and [out] biases), all zeros."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=24, n_layer=1, n_head=2, vocab_size=40, n_positions=8)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    split = {f"h.0.{p}.{w}": torch.zeros((24, 24) if w == "weight" else (24,))
             for p in "qkv" for w in ("weight", "bias")}  # fmt: skip
    save_file(split, tmp_path / "split.safetensors")
    return tmp_path / "gpt2", tmp_path / "split.safetensors"


def test_gpt2_c_attn_splits_along_dim_1_and_joins_back(gpt2_c_attn, tmp_path):
    gpt2, split = gpt2_c_attn
    rules = []
    for i, p in enumerate("qkv"):
        key = "transformer.h.{1}.attn.c_attn"
        rules += ["--rule", f"h.*.{p}.weight=from({gpt2}, key={key}.weight, chunk={i}/3, dim=1)",
                  "--rule", f"h.*.{p}.bias=from({gpt2}, key={key}.bias, chunk={i}/3)"]  # fmt: skip
    out = tmp_path / "filled.safetensors"
    res = run("apply", split, "-o", out, "-q", *rules)
    assert res.exit_code == 0, res.output
    src, got = load_file(gpt2 / "model.safetensors"), load_file(out)
    w, b = src["transformer.h.0.attn.c_attn.weight"], src["transformer.h.0.attn.c_attn.bias"]
    for i, p in enumerate("qkv"):
        assert torch.equal(got[f"h.0.{p}.weight"], w[:, 24 * i : 24 * (i + 1)])
        assert torch.equal(got[f"h.0.{p}.bias"], b[24 * i : 24 * (i + 1)])
    back = tmp_path / "back"
    cat = "h.{1}.q.{2};h.{1}.k.{2};h.{1}.v.{2}"
    res = run("apply", gpt2, "-o", f"{back}/", "-q",
              "--rule", f"re:transformer\\.h\\.(\\d+)\\.attn\\.c_attn\\.(weight)=from({out}, cat={cat}, dim=1)",
              "--rule", f"re:transformer\\.h\\.(\\d+)\\.attn\\.c_attn\\.(bias)=from({out}, cat={cat})")  # fmt: skip
    assert res.exit_code == 0, res.output
    again = load_file(back / "model.safetensors")
    assert again.keys() == src.keys()
    assert all(torch.equal(again[k], src[k]) for k in src)


@pytest.mark.parametrize(
    "rule",
    [
        # dim 0 of [24, 72] splits into thirds, giving [8, 72]: a shape mismatch
        "h.*.q.weight=from(GPT2, key=transformer.h.{1}.attn.c_attn.weight, chunk=0/3)",
        # 0:24 along dim 0 is the whole [24, 72]; along dim 1 it is q
        "h.*.q.weight=from(GPT2, key=transformer.h.{1}.attn.c_attn.weight, chunk=0:24)",
    ],
)
def test_a_chunk_along_the_wrong_dim_says_which_dim_fits(gpt2_c_attn, tmp_path, rule):
    """GPT-2's Conv1D holds [in, out], so its fused c_attn splits along dim=1, not dim 0 as a
    Linear's qkv: the refusal says so instead of only 'give the range' / 'on_mismatch='."""
    gpt2, split = gpt2_c_attn
    args = ["apply", str(split), "-o", str(tmp_path / "o.safetensors"),
            "--rule", rule.replace("GPT2", str(gpt2))]  # fmt: skip
    refused(tmp_path, args, 2, "with dim=1 it gives [24, 24]", "add dim=1")


def test_a_cat_along_the_wrong_dim_says_which_dim_fits(gpt2_c_attn, tmp_path):
    gpt2, split = gpt2_c_attn
    cat = "h.{1}.q.weight;h.{1}.k.weight;h.{1}.v.weight"
    rule = f"re:transformer\\.h\\.(\\d+)\\.attn\\.c_attn\\.weight=from({split}, cat={cat})"
    args = ["apply", str(gpt2), "-o", f"{tmp_path / 'o'}/", "--rule", rule]
    refused(tmp_path, args, 2, "with dim=1 it gives [24, 72]", "add dim=1")
