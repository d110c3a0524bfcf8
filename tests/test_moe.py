"""Mixture-of-experts models (issue 24, items 2-3): checkpoint names <-> module names through
transformers' own conversion mapping, and MoE surgery (stack/expert transforms, partial
re-init, drop-upcycling, sparse upcycling, expert re-init, the report by kind), on
transformers' own Mixtral and Qwen2-MoE built tiny from configs.

Internal: imports reinit.planning.ckpt_names, reinit.planning.model, reinit.planning.model_load, reinit.report.views._plot_groups, reinit.rules, reinit.schemes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import load_clean, refused, run
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reinit.planning.model import default_value
from reinit.planning.model_load import load_model
from reinit.schemes import seed_for

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(
    not hasattr(transformers, "MixtralForCausalLM"), reason="needs transformers with Mixtral"
)

DIMS = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
E = 4  # experts
PER = "model.layers.{l}.block_sparse_moe.experts.{e}.{w}.weight"


def mixtral(path: Path, seed: int = 0, tie: bool = False) -> Path:
    cfg = transformers.MixtralConfig(
        **{**DIMS, "tie_word_embeddings": tie}, num_local_experts=E, num_experts_per_tok=2
    )
    torch.manual_seed(seed)
    transformers.MixtralForCausalLM(cfg).save_pretrained(path)
    return path


def mistral(path: Path, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    transformers.MistralForCausalLM(transformers.MistralConfig(**DIMS)).save_pretrained(path)
    return path


def qwen2_moe(path: Path, seed: int = 0) -> Path:
    cfg = transformers.Qwen2MoeConfig(
        **DIMS,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=24,
        num_experts=E,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    torch.manual_seed(seed)
    transformers.Qwen2MoeForCausalLM(cfg).save_pretrained(path)
    return path


def header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(path / "model.safetensors", "pt") as f:
        return {
            k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
            for k in f.keys()  # noqa: SIM118 (safe_open is no dict)
        }


def load_cleanly(cls, path: Path):
    """`load_clean` (no missing/unexpected/mismatched key, no warning), in eval mode."""
    return load_clean(cls, path).eval()


# --- item 2: checkpoint names through transformers' conversion mapping ----------------------


@pytest.mark.parametrize("make", [mixtral, qwen2_moe])
def test_checkpoint_tensors_are_what_save_pretrained_writes(make, tmp_path):
    """Names, shapes and dtypes of the per-expert checkpoint, from the stacked module."""
    path = make(tmp_path / "m")
    model = load_model(path)
    listed = {t.name: (t.shape, "F32") for t in model.view().checkpoint_tensors()}
    saved = header(path)
    assert listed == saved
    assert any(".experts.3." in n for n in listed)  # per-expert, as the checkpoint keeps them
    assert not any(n.endswith("gate_up_proj") for n in listed)


def test_tied_checkpoint_lists_the_tied_weight_once(tmp_path):
    path = mixtral(tmp_path / "m", tie=True)
    names = [t.name for t in load_model(path).view().checkpoint_tensors()]
    assert set(names) == set(header(path))
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_checkpoint_tensors_of_a_dense_model_are_its_state_dict(tmp_path):
    path = mistral(tmp_path / "d")
    model = load_model(path)
    assert {t.name: t.shape for t in model.checkpoint} == {k: v[0] for k, v in header(path).items()}
    assert all(s.part is None for s in model.sites.values())


def test_default_on_an_expert_is_its_slice_of_the_module_init(tmp_path):
    """`default` on expert 2's w3 = rows I..2I of expert 2 of `gate_up_proj` as the module's
    init draws it, seeded by the checkpoint tensor's own name."""
    path = mixtral(tmp_path / "m")
    view = load_model(path).view()
    name = PER.format(l=1, e=2, w="w3")
    got = default_value(view, name, torch.float32, seed=7)
    cfg = transformers.MixtralConfig.from_pretrained(path)
    real = transformers.MixtralForCausalLM(cfg)
    experts = real.model.layers[1].mlp.experts
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed_for(7, name))
        experts.gate_up_proj.fill_(float("nan"))
        real._init_weights(experts)
        want = experts.gate_up_proj[2, DIMS["intermediate_size"] :].clone()
    assert torch.equal(got, want)
    other = default_value(view, PER.format(l=1, e=3, w="w3"), torch.float32, seed=7)
    assert not torch.equal(got, other)  # per-tensor seeded


def test_type_linear_matches_experts_router_and_shared_expert(tmp_path):
    path = qwen2_moe(tmp_path / "q")
    types = load_model(path).view().module_types
    for n in (
        "model.layers.0.mlp.experts.3.down_proj.weight",
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.shared_expert.up_proj.weight",
        "model.layers.0.mlp.shared_expert_gate.weight",
    ):
        assert "Linear" in types[n], (n, types[n])
    assert "Linear" not in types["model.layers.0.input_layernorm.weight"]


def test_model_default_reinitializes_every_expert_at_the_module_init(tmp_path):
    """The issue's case: all 24 expert tensors re-initialized (none skipped), their std the
    module init's (normal(std=0.02)), the report naming that init."""
    path = mixtral(tmp_path / "m")
    out = tmp_path / "out"
    res = run(
        "apply", path, "-o", out, "--model", path, "--rule", "*.experts.*=default",
        "--report", tmp_path / "r.json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    entries = [t for t in rep["tensors"] if ".experts." in t["name"]]
    assert len(entries) == 2 * E * 3
    assert all(t["action"] == "reinit" for t in entries)
    assert all("MixtralExperts: normal(std=0.02)" in t["scheme"] for t in entries)
    assert all(t["expected_std"] == pytest.approx(0.02) for t in entries)
    assert "MixtralForCausalLM._init_weights on MixtralExperts: normal(std=0.02)" in res.output
    new, old = load_file(out / "model.safetensors"), load_file(path / "model.safetensors")
    values = torch.cat([new[t["name"]].flatten() for t in entries])
    assert abs(values.std().item() - 0.02) < 4 * 0.02 / math.sqrt(2 * values.numel())
    assert all(not torch.equal(new[t["name"]], old[t["name"]]) for t in entries)
    load_cleanly(transformers.MixtralForCausalLM, out)


# --- item 3: stacked <-> per-expert -----------------------------------------------------------


def stacked_rules(per: Path) -> list[str]:
    lay = "model.layers.*.mlp.experts"
    src = "model.layers.{1}.block_sparse_moe.experts.{e}"
    return [
        f"{lay}.gate_up_proj=from({per}, stack={src}.w1.weight;{src}.w3.weight, experts={E})",
        f"{lay}.down_proj=from({per}, stack={src}.w2.weight, experts={E})",
    ]


def test_stack_and_expert_round_trip_byte_exact(tmp_path):
    """The per-expert checkpoint -> transformers 5's stacked module layout (equal to the
    module's own state dict) -> back to per-expert tensors equal to the original."""
    per = mixtral(tmp_path / "per")
    module = transformers.MixtralForCausalLM.from_pretrained(per)
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, tmp_path / "zeros.safetensors")
    stacked = tmp_path / "stacked.safetensors"
    res = run("apply", tmp_path / "zeros.safetensors", "-o", stacked, "-q",
              *[a for r in stacked_rules(per) for a in ("--rule", r)])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(stacked)
    moved = [k for k in state if k.endswith(("gate_up_proj", "down_proj"))]
    assert len(moved) == 2 * DIMS["num_hidden_layers"]
    assert all(torch.equal(got[k], state[k]) for k in moved)
    back = tmp_path / "back"
    src = "model.layers.{1}.mlp.experts"
    res = run(
        "apply", per, "-o", back, "-q",
        "--rule", f"model.layers.*.block_sparse_moe.experts.*.w1.weight=from({stacked}, key={src}.gate_up_proj, expert={{2}}, chunk=0/2)",
        "--rule", f"model.layers.*.block_sparse_moe.experts.*.w3.weight=from({stacked}, key={src}.gate_up_proj, expert={{2}}, chunk=1/2)",
        "--rule", f"model.layers.*.block_sparse_moe.experts.*.w2.weight=from({stacked}, key={src}.down_proj, expert={{2}})",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    a, b = load_file(back / "model.safetensors"), load_file(per / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k


def test_stack_refuses_experts_of_different_shapes_before_writing(tmp_path):
    per = mixtral(tmp_path / "per")
    save_file({"x": torch.zeros(E, 24, 16)}, tmp_path / "t.safetensors")
    src = "model.layers.0.block_sparse_moe.experts.{e}"
    refused(
        tmp_path,
        ["apply", str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "o.safetensors"),
         "--rule", f"x=from({per}, stack={src}.w1.weight;{src}.w3.weight, experts={E})"],
        2, "[4, 48, 16]", "'x' [4, 24, 16]",
    )  # fmt: skip
    refused(
        tmp_path,
        ["apply", str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "o.safetensors"),
         "--rule", f"x=from({per}, stack=model.layers.0.x.weight, experts={E})"],
        2, "{e}",
    )  # fmt: skip


# --- item 3: partial re-init ------------------------------------------------------------------


def test_rows_and_cols_reinit_only_the_chosen_indices(tmp_path):
    from reinit.schemes import bind_scheme, generate

    w = torch.randn(10, 6)
    save_file({"w": w, "v": w.clone()}, tmp_path / "a.safetensors")
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "a.safetensors", "-o", out, "-q", "--seed", "3",
              "--rule", "w=normal(std=0.5, rows=2:5)", "--rule", "v=zeros(cols=random(0.5))",
              "--report", tmp_path / "r.json")  # fmt: skip
    assert res.exit_code == 0, res.output
    entries = {t["name"]: t for t in json.loads((tmp_path / "r.json").read_text())["tensors"]}
    assert entries["w"]["scheme"] == "normal(mean=0.0, std=0.5) on rows=2:5"
    assert entries["w"]["expected_std"] is None  # most of it is kept: no one std to expect
    got = load_file(out)
    drawn = generate(bind_scheme("normal", (), {"std": 0.5}), "w", (10, 6), torch.float32, 3)
    assert torch.equal(got["w"][2:5], drawn[2:5])
    assert torch.equal(got["w"][:2], w[:2]) and torch.equal(got["w"][5:], w[5:])
    zero_cols = (got["v"] == 0).all(dim=0)
    assert int(zero_cols.sum()) == 3
    assert torch.equal(got["v"][:, ~zero_cols], w[:, ~zero_cols])


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("w=normal(rows=5:2)", "START:STOP"),
        ("w=normal(rows=random(1.5))", "0 < R <= 1"),
        ("w=normal(rows=0:2, cols=0:2)", "not both"),
        ("w=normal(group=x)", "group="),
    ],
)
def test_bad_rows_cols_are_one_line_usage_errors(tmp_path, rule, fragment):
    save_file({"w": torch.zeros(4, 4)}, tmp_path / "a.safetensors")
    refused(tmp_path, ["apply", str(tmp_path / "a.safetensors"), "-o",
                       str(tmp_path / "o.safetensors"), "--rule", rule], 2, fragment)  # fmt: skip


# --- item 3: sparse upcycling and drop-upcycling ----------------------------------------------


def upcycle_rules(dense: Path) -> list[str]:
    mlp = "model.layers.{1}.mlp"
    ex = "model.layers.*.block_sparse_moe.experts.*"
    return [
        f"*=from({dense})",
        f"{ex}.w1.weight=from({dense}, key={mlp}.gate_proj.weight)",
        f"{ex}.w3.weight=from({dense}, key={mlp}.up_proj.weight)",
        f"{ex}.w2.weight=from({dense}, key={mlp}.down_proj.weight)",
        "*.block_sparse_moe.gate.weight=normal(std=0.02)",
    ]


def upcycle(tmp_path: Path) -> tuple[Path, Path]:
    dense = mistral(tmp_path / "dense")
    target = mixtral(tmp_path / "moe-init", seed=5)
    out = tmp_path / "moe"
    res = run("apply", target, "-o", out, "-q",
              *[a for r in upcycle_rules(dense) for a in ("--rule", r)])  # fmt: skip
    assert res.exit_code == 0, res.output
    return dense, out


def test_sparse_upcycling_loads_cleanly_and_keeps_the_dense_logits(tmp_path):
    dense, moe = upcycle(tmp_path)
    model = load_cleanly(transformers.MixtralForCausalLM, moe)
    ref = transformers.MistralForCausalLM.from_pretrained(dense).eval()
    ids = torch.randint(0, DIMS["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids).logits, ref(ids).logits
    assert torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max()
    router = load_file(moe / "model.safetensors")["model.layers.0.block_sparse_moe.gate.weight"]
    assert abs(router.std().item() - 0.02) < 4 * 0.02 / math.sqrt(2 * router.numel())


def drop_upcycling_reference(dense: dict, seed: int, r: float) -> dict:
    """Nakamura et al. 2025, Algorithm 1, written out: for each expert, draw the indices S of
    round(r·I) intermediate dimensions (one draw per expert: torch.randperm from the expert's
    key); rows S of gate and up, columns S of down, are replaced by N(mu, sigma) of the dense
    matrix (as reinit draws: the whole tensor from its own generator, then those indices)."""
    out = {}
    for layer in range(DIMS["num_hidden_layers"]):
        mlp = {
            w: dense[f"model.layers.{layer}.mlp.{p}_proj.weight"]
            for w, p in (("w1", "gate"), ("w3", "up"), ("w2", "down"))
        }
        for e in range(E):
            size = DIMS["intermediate_size"]
            g = torch.Generator().manual_seed(seed_for(seed, f"L{layer}E{e}"))
            chosen = torch.randperm(size, generator=g)[: round(r * size)]
            for w, m in mlp.items():
                name = PER.format(l=layer, e=e, w=w)
                mean, std = float(m.double().mean()), float(m.double().std())
                fresh = torch.empty(m.shape).normal_(
                    mean, std, generator=torch.Generator().manual_seed(seed_for(seed, name))
                )
                new = m.clone()
                if w == "w2":
                    new[:, chosen] = fresh[:, chosen]
                else:
                    new[chosen] = fresh[chosen]
                out[name] = new
    return out


def test_drop_upcycling_equals_the_papers_algorithm(tmp_path):
    dense, moe = upcycle(tmp_path)
    out = tmp_path / "drop"
    group = "group=L{1}E{2}"
    res = run(
        "apply", moe, "-o", out, "-q", "--seed", "11",
        "--rule", f"model.layers.*.block_sparse_moe.experts.*.w[13].weight=normal_like(rows=random(0.5), {group})",
        "--rule", f"model.layers.*.block_sparse_moe.experts.*.w2.weight=normal_like(cols=random(0.5), {group})",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = load_file(out / "model.safetensors")
    want = drop_upcycling_reference(load_file(dense / "model.safetensors"), 11, 0.5)
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    w1 = [got[PER.format(l=0, e=e, w="w1")] for e in range(E)]
    assert not torch.equal(w1[0], w1[1])  # other indices, other values in each expert
    load_cleanly(transformers.MixtralForCausalLM, out)


# --- item 3: expert and router re-init, the report by kind ------------------------------------


def test_expert_and_router_reinit_report_reads_at_a_glance(tmp_path):
    """64 experts x 48 layers: the terminal report groups experts by kind (one row each)
    and counts depth in layers, not experts; <= 40 lines at 100 columns."""
    big_moe(tmp_path / "big.safetensors")
    res = run("apply", tmp_path / "big.safetensors", "-o", tmp_path / "o.safetensors",
              "--rule", "*.experts.[35].*=normal(std=0.3)",
              "--rule", "*.gate.weight=normal(std=0.3)", env={"COLUMNS": "100"})  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.rstrip("\n").splitlines()
    assert len(lines) <= 40, res.output
    assert max(len(x) for x in lines) <= 100, res.output
    assert "block_sparse_moe.experts.*.w1.weight" in res.output
    assert "3072 layers" not in res.output
    assert "336 reinit" in res.output  # 48 layers x 2 experts x 3 + 48 routers


def test_plot_puts_all_experts_of_a_kind_in_one_series_by_layer(tmp_path):
    """The plot groups by kind too: one series per expert matrix kind, x = the layer."""
    import reinit
    from reinit.report.views._plot_groups import plot_panels

    t = {}
    for layer in range(6):
        for e in range(8):
            for w in ("w1", "w2", "w3"):
                t[PER.format(l=layer, e=e, w=w)] = torch.randn(4, 4) * 0.02
    save_file(t, tmp_path / "m.safetensors")
    rep = reinit.apply(tmp_path / "m.safetensors", ["*.experts.[35].*=normal(std=0.02)"],
                       tmp_path / "o.safetensors")  # fmt: skip
    kinds = [k for p in plot_panels(rep.tensors) for k in p.kinds]
    assert len(kinds) == 3
    for k in kinds:
        assert len(k.points) == 6 * 8
        assert {p.layer for p in k.points} == set(range(6))


def test_verify_forward_loads_per_expert_tensors_into_the_stacked_module(tmp_path):
    """verify --forward (and probe --checkpoint) put each expert's tensor into its slice of
    the stacked parameter: the upcycled MoE runs, and against itself nothing differs."""
    path = mixtral(tmp_path / "m")
    res = run("verify", "--forward", path, "--against", path)
    assert res.exit_code == 0, res.output
    assert "max |Δ| 0," in res.output or "max |Δ| 0 " in res.output, res.output


SMALL = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", SMALL),
    "bert-mlm-tied": (
        "BertConfig",
        "BertForMaskedLM",
        dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
    ),  # fmt: skip
    "vit": (
        "ViTConfig",
        "ViTForImageClassification",
        dict(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    ),  # fmt: skip
    "qwen3-moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {**SMALL, "moe_intermediate_size": 8, "num_experts": 4, "num_experts_per_tok": 2},
    ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {**SMALL, "num_experts": 4}),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {**SMALL, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "qwen2-moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            **SMALL,
            "moe_intermediate_size": 8,
            "shared_expert_intermediate_size": 24,
            "num_experts": 4,
            "num_experts_per_tok": 2,
        },
    ),  # fmt: skip
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_checkpoint_slices_reproduce_save_pretrained_values(arch, tmp_path):
    """For each architecture: the listed checkpoint tensors are exactly the saved ones (names,
    shapes, ties) and each one's slice of its module tensor holds exactly the saved values."""
    from reinit.planning.ckpt_names import checkpoint_slices

    cfg_name, cls_name, kw = ARCHS[arch]
    if not hasattr(transformers, cls_name):
        pytest.skip(f"transformers has no {cls_name}")
    torch.manual_seed(0)
    module = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**kw))
    module.save_pretrained(tmp_path / "m")
    saved = load_file(tmp_path / "m" / "model.safetensors")
    listed = {t.name: t.shape for t in load_model(tmp_path / "m").checkpoint}
    assert listed == {k: tuple(v.shape) for k, v in saved.items()}
    state = module.state_dict()
    for c in checkpoint_slices(module, hf=True):
        assert torch.equal(c.take(state[c.source]), saved[c.name]), c.name


def test_brace_alternatives_select_experts_by_number(tmp_path):
    """`*.experts.{1,3}.*=default` (as the shell expands braces): experts 1 and 3 of every
    layer at the module's init, the others and the rest kept; `{...}` captures nothing."""
    from reinit.rules import parse_rule

    p = parse_rule("*.experts.{3,5}.*=zeros").pattern
    assert p.match("a.experts.3.w1.weight") == ("a", "w1.weight")
    assert p.match("a.experts.5.w") == ("a", "w")
    assert p.match("a.experts.13.w") is None and p.match("a.experts.35.w") is None
    assert parse_rule("w{x}=zeros").pattern.match("w{x}") == ()  # no comma: literal braces
    path = mixtral(tmp_path / "m")
    out = tmp_path / "o"
    res = run("apply", path, "-o", out, "-q", "--model", path,
              "--rule", "model.layers.*.block_sparse_moe.experts.{1,3}.*=default")  # fmt: skip
    assert res.exit_code == 0, res.output
    new, old = load_file(out / "model.safetensors"), load_file(path / "model.safetensors")
    changed = {k for k in old if not torch.equal(new[k], old[k])}
    want = {PER.format(l=i, e=e, w=w) for i in range(2) for e in (1, 3) for w in ("w1", "w2", "w3")}
    assert changed == want


def test_brace_expansion_is_bounded(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
    rule = "w" + "{a,b}" * 11 + "=zeros"
    refused(tmp_path, ["apply", str(tmp_path / "a.safetensors"), "-o",
                       str(tmp_path / "o.safetensors"), "--rule", rule], 2, "expand to over")  # fmt: skip


# --- `reinit new` of an MoE: per-expert checkpoint tensors drawn from the stacked module ----


def moe_configs() -> dict[str, object]:
    qwen = dict(moe_intermediate_size=8, num_experts=E, num_experts_per_tok=2,
                decoder_sparse_step=1, mlp_only_layers=[])  # fmt: skip
    return {
        "mixtral": transformers.MixtralConfig(
            **DIMS, num_local_experts=E, num_experts_per_tok=2,
            architectures=["MixtralForCausalLM"],
        ),
        "qwen2-moe": transformers.Qwen2MoeConfig(
            **DIMS, **qwen, shared_expert_intermediate_size=24,
            architectures=["Qwen2MoeForCausalLM"],
        ),
        "qwen3-moe": transformers.Qwen3MoeConfig(
            **DIMS, **qwen, architectures=["Qwen3MoeForCausalLM"]
        ),
    }  # fmt: skip


def moe_config(tmp_path: Path, kind: str) -> tuple[Path, type]:
    cfg = moe_configs()[kind]
    cfg.save_pretrained(tmp_path / f"{kind}-config")
    return tmp_path / f"{kind}-config", getattr(transformers, cfg.architectures[0])


@pytest.mark.parametrize("kind", ["mixtral", "qwen2-moe", "qwen3-moe"])
def test_new_of_an_moe_loads_cleanly_with_experts_at_the_module_init(tmp_path, kind):
    """`reinit new` of an MoE config: save_pretrained's per-expert names and shapes, loaded with
    no missing/unexpected/mismatched key and no warning, every expert tensor (and the router)
    at the module's init normal(0, initializer_range); experts differ from one another."""
    cfg, cls = moe_config(tmp_path, kind)
    out = tmp_path / "out"
    res = run("new", cfg, "-o", out, "-q", "--seed", "3")
    assert res.exit_code == 0, res.output
    model = load_cleanly(cls, out)
    ref = tmp_path / "ref"
    cls(moe_configs()[kind]).save_pretrained(ref)
    assert header(out) == header(ref)
    w = load_file(out / "model.safetensors")
    experts = {n: t for n, t in w.items() if ".experts." in n}
    assert len(experts) == DIMS["num_hidden_layers"] * E * 3
    sigma = moe_configs()[kind].initializer_range
    pooled = torch.cat([t.flatten() for t in experts.values()]).double()
    assert abs(pooled.std().item() - sigma) < 5 * sigma / math.sqrt(2 * pooled.numel())
    for n, t in experts.items():  # each expert tensor on its own, too
        assert abs(t.double().std().item() - sigma) < 5 * sigma / math.sqrt(2 * t.numel()), n
    first = [t for n, t in experts.items() if ".experts.0." in n]
    second = [t for n, t in experts.items() if ".experts.1." in n]
    assert all(not torch.equal(a, b) for a, b in zip(first, second, strict=True))
    routers = [t for n, t in w.items() if n.endswith("gate.weight") and ".experts." not in n]
    assert routers and all(abs(r.double().std().item() - sigma) < 0.5 * sigma for r in routers)
    again = tmp_path / "again"  # what was loaded is what was written
    model.save_pretrained(again)
    assert all(torch.equal(t, w[n]) for n, t in load_file(again / "model.safetensors").items())


def test_new_of_a_mixtral_equals_apply_default_on_its_checkpoint(tmp_path):
    path = mixtral(tmp_path / "m")
    res = run("apply", path, "--model", path, "-r", "*=default", "--seed", "4", "-q",
              "-o", tmp_path / "applied")  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run("new", path, "-o", tmp_path / "new", "--seed", "4", "-q")
    assert res.exit_code == 0, res.output
    applied = load_file(tmp_path / "applied" / "model.safetensors")
    made = load_file(tmp_path / "new" / "model.safetensors")
    assert applied.keys() == made.keys()
    assert all(torch.equal(applied[n], made[n]) for n in applied)


def test_sparse_upcycling_from_a_config_alone(tmp_path):
    """The one-command form: `reinit new MIXTRAL-CONFIG` with the upcycling rules, no target
    checkpoint: loads cleanly, the dense model's logits, the router at normal(std=0.02)."""
    dense = mistral(tmp_path / "dense")
    cfg, cls = moe_config(tmp_path, "mixtral")
    out = tmp_path / "moe"
    res = run(
        "new", cfg, "-o", out, "-q", *[a for r in upcycle_rules(dense) for a in ("--rule", r)]
    )
    assert res.exit_code == 0, res.output
    model = load_cleanly(cls, out)
    ref = transformers.MistralForCausalLM.from_pretrained(dense).eval()
    ids = torch.randint(0, DIMS["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids).logits, ref(ids).logits
    assert torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max()
    w, src = load_file(out / "model.safetensors"), load_file(dense / "model.safetensors")
    assert torch.equal(w[PER.format(l=1, e=3, w="w2")], src["model.layers.1.mlp.down_proj.weight"])
    router = w["model.layers.0.block_sparse_moe.gate.weight"]
    assert abs(router.std().item() - 0.02) < 4 * 0.02 / math.sqrt(2 * router.numel())


def test_new_progress_bar_says_new(tmp_path, capsys):
    import reinit

    cfg, _ = moe_config(tmp_path, "mixtral")
    reinit.new(cfg, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "reinit new" in err and "reinit apply" not in err


def test_the_model_view_holds_no_index_per_expert_element(tmp_path):
    """Learning the checkpoint names of a wide MoE config costs what its shapes cost, not an
    int64 per expert weight (transformers' fused gate/up split copies; the view does not keep
    or make that copy): each expert's index is a broadcastable part of its slice."""
    cfg = transformers.MixtralConfig(
        vocab_size=64, hidden_size=512, intermediate_size=2048, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, num_local_experts=8,
        num_experts_per_tok=2, architectures=["MixtralForCausalLM"],
    )  # fmt: skip
    cfg.save_pretrained(tmp_path / "c")
    model = load_model(tmp_path / "c")
    parts = [s.part for s in model.sites.values() if s.part is not None]
    assert len(parts) == 2 * 8 * 3
    values = sum(math.prod(p.shape) for p in parts)
    held = sum(ix.numel() for p in parts for ix in p.index)
    assert held * 100 < values, (held, values)


@pytest.mark.parametrize("kind", ["mixtral", "qwen2-moe", "qwen3-moe"])
def test_new_of_an_moe_shards_exactly_as_save_pretrained(tmp_path, kind):
    """save_pretrained writes a layer's per-expert tensors as views of one stacked storage, and
    huggingface_hub's split keeps a storage's tensors in one shard, counted once where the
    first of them comes: `--max-shard-size` must put every expert tensor where it does."""
    cfg, cls = moe_config(tmp_path, kind)
    res = run("new", cfg, "-o", tmp_path / "out", "-q", "--max-shard-size", "7KB")
    assert res.exit_code == 0, res.output
    cls(moe_configs()[kind]).save_pretrained(tmp_path / "ref", max_shard_size="7KB")
    index = "model.safetensors.index.json"
    got = json.loads((tmp_path / "out" / index).read_text())
    want = json.loads((tmp_path / "ref" / index).read_text())
    assert len(set(want["weight_map"].values())) > 2
    assert got["weight_map"] == want["weight_map"]
    assert got["metadata"] == want["metadata"]
    load_cleanly(cls, tmp_path / "out")


def test_apply_with_model_shards_an_moe_as_save_pretrained(tmp_path):
    """The same on `apply --model`: a Mixtral checkpoint resharded in the model's order."""
    path = mixtral(tmp_path / "m")
    res = run("apply", path, "--model", path, "-r", "*.gate.weight=zeros", "-q",
              "--max-shard-size", "20KB", "-o", tmp_path / "out")  # fmt: skip
    assert res.exit_code == 0, res.output
    model = transformers.MixtralForCausalLM.from_pretrained(path)
    model.save_pretrained(tmp_path / "ref", max_shard_size="20KB")
    index = "model.safetensors.index.json"
    got = json.loads((tmp_path / "out" / index).read_text())
    want = json.loads((tmp_path / "ref" / index).read_text())
    assert len(set(want["weight_map"].values())) > 2
    assert got["weight_map"] == want["weight_map"]


def big_moe(path: Path) -> Path:
    """48 layers x 64 experts of tiny matrices (the shape of a real large MoE's names)."""
    torch.manual_seed(0)
    t = {}
    for layer in range(48):
        t[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(8)
        t[f"model.layers.{layer}.block_sparse_moe.gate.weight"] = torch.randn(64, 8) * 0.3
        for e in range(64):
            for w, s in (("w1", (4, 8)), ("w2", (8, 4)), ("w3", (4, 8))):
                t[PER.format(l=layer, e=e, w=w)] = torch.randn(*s) * 0.3
    save_file(t, path)
    return path


def test_report_per_layer_view_has_a_column_per_layer_not_per_expert(tmp_path):
    """`reinit report` (and apply --by tensor, --report X.md) of 64 experts x 48 layers: the
    per-layer view has one column per layer (the experts' std as a min-max span), titled
    with layers and experts, so the whole report reads in a screenful or two, not 2,000 lines
    of 3,072 'layers'."""
    src = big_moe(tmp_path / "big.safetensors")
    res = run("report", src, "-o", tmp_path / "r.md", env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    lines = res.output.rstrip("\n").splitlines()
    assert "3072 layers" not in res.output and "48 layers × 64 experts" in res.output
    assert len(lines) <= 150, len(lines)
    assert max(len(x) for x in lines) <= 100
    md = (tmp_path / "r.md").read_text()
    assert "3072 layers" not in md and "48 layers × 64 experts" in md
    row = next(x for x in md.splitlines() if x.startswith("| layer |"))
    assert row.count("|") == 48 + 2
    w = load_file(src)  # layer 7's column: the span of its 64 experts' std
    stds = [w[PER.format(l=7, e=e, w="w1")].double().std(correction=0).item() for e in range(64)]
    std_row = next(x for x in md.splitlines() if x.startswith("| std |"))
    cell = std_row.split("|")[2 + 7].strip().strip("*")
    assert cell == f"{min(stds):.3g}–{max(stds):.3g}"


def test_a_stacked_checkpoint_resharded_with_model_keeps_layer_order(tmp_path):
    """A checkpoint in the module's own layout (stacked experts, names save_pretrained never
    writes) resharded with --model: each stacked tensor stays among its layer's tensors."""
    per = mixtral(tmp_path / "m")
    state = transformers.MixtralForCausalLM.from_pretrained(per).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "stacked.safetensors")
    res = run("apply", tmp_path / "stacked.safetensors", "--model", per, "-q",
              "-r", "*.norm.weight=ones", "--max-shard-size", "16KB",
              "-o", tmp_path / "out")  # fmt: skip
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shard = {k: int(v.split("-")[1]) for k, v in index["weight_map"].items()}
    for layer in range(DIMS["num_hidden_layers"] - 1):
        this = [s for k, s in shard.items() if f".layers.{layer}." in k]
        after = [s for k, s in shard.items() if f".layers.{layer + 1}." in k]
        assert max(this) <= min(after), index["weight_map"]


def test_a_rule_naming_a_stacked_module_tensor_says_how_the_checkpoint_holds_it(tmp_path):
    """`reinit new` of a Mixtral with a rule on the module's stacked parameter: the checkpoint
    holds one tensor per expert, and the refusal names them."""
    cfg, _ = moe_config(tmp_path, "mixtral")
    rule = "model.layers.*.mlp.experts.gate_up_proj=zeros"
    refused(tmp_path, ["new", str(cfg), "-o", str(tmp_path / "out"), "-r", rule], 2,
            "'model.layers.0.mlp.experts.gate_up_proj' is held in the checkpoint as "
            f"{2 * E} tensors", "block_sparse_moe.experts.0.w1.weight")  # fmt: skip


def test_a_missing_source_key_is_listed_once_however_many_experts_read_it(tmp_path):
    """Upcycling with a wrong key= template: 24 expert tensors read 2 source keys; the refusal
    counts and lists the 2 keys, not 24 entries of the same 2."""
    dense = mistral(tmp_path / "dense")
    cfg, _ = moe_config(tmp_path, "mixtral")
    rule = f"*.experts.*=from({dense}, key=model.layers.{{1}}.mlp.gate_proj.weight)"
    line = refused(tmp_path, ["new", str(cfg), "-o", str(tmp_path / "out"), "-r", rule], 2,
                   "1 more missing: ")  # fmt: skip
    missing = line.split("1 more missing: ")[1].split("; fix key=")[0]
    assert missing == "'model.layers.model.layers.1.block_sparse_moe.mlp.gate_proj.weight'"


def test_a_new_then_apply_recipe_equals_the_two_commands_byte_for_byte(tmp_path):
    """Upcycle then drop-upcycle: a two-step `new:` recipe writes the bytes `reinit new` then
    `reinit apply` write through files (tensors in the same order in the file)."""
    dense = mistral(tmp_path / "dense")
    cfg, _ = moe_config(tmp_path, "mixtral")
    drop = [
        "model.layers.*.block_sparse_moe.experts.*.w[13].weight="
        "normal_like(rows=random(0.5), group=L{1}E{2})",
        "model.layers.*.block_sparse_moe.experts.*.w2.weight="
        "normal_like(cols=random(0.5), group=L{1}E{2})",
    ]
    up = upcycle_rules(dense)
    res = run("new", cfg, "-o", tmp_path / "moe", "-q", *[a for r in up for a in ("-r", r)])
    assert res.exit_code == 0, res.output
    res = run("apply", tmp_path / "moe", "-o", tmp_path / "cmd", "-q",
              *[a for r in drop for a in ("-r", r)])  # fmt: skip
    assert res.exit_code == 0, res.output
    steps = "".join(
        "  - rules:\n" + "".join(f"      - '{r}'\n" for r in rules) for rules in (up, drop)
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"new: {cfg}\noutput: {tmp_path / 'rec'}\nsteps:\n{steps}")
    res = run("run", recipe, "-q")
    assert res.exit_code == 0, res.output
    cmd = (tmp_path / "cmd" / "model.safetensors").read_bytes()
    assert cmd == (tmp_path / "rec" / "model.safetensors").read_bytes()


def test_fan_schemes_on_stacked_experts_use_each_expert_s_fans_transposed_or_not(tmp_path):
    """GPT-OSS saves its experts stacked and transposed (`experts.gate_up_proj` [E, H, 2I],
    used as `x @ W[e]`: fan_in H; `down_proj` [E, I, H]: fan_in I), as its module says
    (`is_transposed`, transformers' experts flag). With `--model`, `kaiming_normal` drew them
    at torch's fans of the 3-D tensor (H·2I), a std 7x too small, silently. Each expert's own
    fans now: sqrt(2/H) and sqrt(2/I); the output loads."""
    cfg = transformers.GptOssConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                         "original_max_position_embeddings": 2, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False},
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.GptOssForCausalLM(cfg).save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    res = run(
        "apply", tmp_path / "src", "--model", tmp_path / "src", "-o", f"{out}/", "-q",
        "--rule", "*.mlp.experts.gate_up_proj=kaiming_normal",
        "--rule", "*.mlp.experts.down_proj=kaiming_normal",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    load_clean(transformers.GptOssForCausalLM, out)
    got = load_file(out / "model.safetensors")
    for t, fan_in in (("gate_up_proj", 16), ("down_proj", 24)):
        w = torch.cat([got[f"model.layers.{i}.mlp.experts.{t}"].flatten() for i in (0, 1)])
        want = math.sqrt(2 / fan_in)  # 0.354, 0.289; the 3-D fans gave 0.051, 0.072
        assert abs(w.std().item() / want - 1) < 5 / math.sqrt(2 * w.numel()), (t, w.std())


@pytest.mark.parametrize("arch", ["llama4", "jetmoe"])
def test_fan_schemes_on_experts_modules_without_the_flag_use_each_expert_s_fans(tmp_path, arch):
    """Llama 4's experts ([E, H, 2I] and [E, I, H], used as `torch.bmm(x, W)`) and JetMoE's
    ([E, out, in], used as `F.linear(x, W[e])`) carry no `is_transposed`: `kaiming_normal` with
    `--model` drew them at torch's fans of the whole 3-D tensor (JetMoE's input experts at
    sqrt(2/(2I·H)), 8x too small). Each expert's own fans now; the output loads."""
    t = transformers
    if arch == "llama4":
        cfg = t.Llama4TextConfig(
            vocab_size=64, hidden_size=16, intermediate_size=24, intermediate_size_mlp=32,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
            num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
            moe_layers=[0, 1], max_position_embeddings=64, tie_word_embeddings=False,
        )  # fmt: skip
        cls, experts = t.Llama4ForCausalLM, "feed_forward.experts"
        fans = {"gate_up_proj": 16, "down_proj": 24}  # [E, H, 2I]: in H; [E, I, H]: in I
    else:
        cfg = t.JetMoeConfig(
            vocab_size=64, hidden_size=16, intermediate_size=24, kv_channels=8,
            num_hidden_layers=2, num_key_value_heads=2, num_local_experts=4,
            num_experts_per_tok=2, max_position_embeddings=64, tie_word_embeddings=False,
        )  # fmt: skip
        cls, experts = t.JetMoeForCausalLM, "mlp"
        fans = {"input_linear.weight": 16, "output_linear.weight": 24}  # [E, out, in]
    torch.manual_seed(0)
    cls(cfg).save_pretrained(tmp_path / "src")
    names = load_file(tmp_path / "src" / "model.safetensors")
    rules = [a for n in fans for a in ("--rule", f"*.{experts}.{n}=kaiming_normal")]
    assert all(any(k.endswith(f"{experts}.{n}") for k in names) for n in fans), sorted(names)
    out = tmp_path / "out"
    res = run("apply", tmp_path / "src", "--model", tmp_path / "src", "-o", f"{out}/", "-q", *rules)
    assert res.exit_code == 0, res.output
    load_clean(cls, out)
    got = load_file(out / "model.safetensors")
    for n, fan_in in fans.items():
        w = torch.cat([v.flatten() for k, v in got.items() if k.endswith(f"{experts}.{n}")])
        want = math.sqrt(2 / fan_in)
        assert abs(w.std().item() / want - 1) < 5 / math.sqrt(2 * w.numel()), (n, w.std())
