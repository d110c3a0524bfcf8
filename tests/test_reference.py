"""Reference scale (docs/guide/report.md, issue 13): every changed tensor carries the model's own scale
(`reference_std`) and where it came from (`reference`): `--model`'s own init, else the config's
`initializer_range`, else the untouched siblings' median; `off_reference` flags a std beyond
`--reference-tolerance` (2x) either way of it.

Internal: also tests reinit.report.entries, reinit.report.flags, reinit.report.reference,
reinit.report.stats directly (not the `reinit` API).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import refused, run
from hubcache import seed_repo
from safetensors.torch import save_file

import reinit
from reinit.report.entries import Report, TensorEntry
from reinit.report.flags import std_tolerance
from reinit.report.reference import (
    ReferenceBasis,
    off_reference,
    reference_text,
    with_references,
)
from reinit.report.stats import Stats, tensor_stats


def bert_dir(path: Path, initializer_range: float = 0.02) -> Path:
    """A MiniLM-shaped BERT (32 wide, 2 layers) as save_pretrained writes it, with the
    `initializer_range` in its config.json."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=initializer_range,
        vocab_size=100,
        max_position_embeddings=32,
    )
    BertModel(cfg).save_pretrained(path)
    return path


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


def flat(text: str) -> str:
    """The terminal's summary line, unwrapped (it wraps at the terminal's width)."""
    summary = text.split("\nwrote ")[0]
    return " ".join(summary.split())


def changed_matrices(rep: dict) -> list[dict]:
    return [t for t in rep["tensors"] if t["action"] == "reinit" and len(t["shape"]) >= 2]


def test_kaiming_on_a_minilm_shaped_bert_is_off_reference_from_its_config(tmp_path):
    src = bert_dir(tmp_path / "bert")
    res = run("apply", src, "-r", "*.weight=kaiming", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    rep = report_of(tmp_path / "out" / "reinit-report.json")
    weights = changed_matrices(rep)
    assert len(weights) == 16  # 3 embeddings, 6 per layer, the pooler
    for t in weights:
        assert t["reference"] == "bert/config.json initializer_range" and t["reference_std"] == 0.02
        assert "off_reference" in t["flags"], t["name"]
        assert t["after"]["std"] / 0.02 > 8  # kaiming at fan 32 or 64: 0.25 or 0.18
    # unchanged tensors have no reference; the 1-D weights kaiming cannot take are skipped
    assert all(t["reference"] is None for t in rep["tensors"] if t["action"] != "reinit")
    assert "; reference: bert/config.json initializer_range 0.02\n" in flat(res.stderr) + "\n"
    assert "16 flagged" in res.stderr


def test_normal_002_on_the_same_bert_is_not_off_reference(tmp_path):
    src = bert_dir(tmp_path / "bert")
    out = tmp_path / "out.safetensors"
    report = reinit.apply(src / "model.safetensors", ["*.weight=normal(std=0.02)"], out)
    weights = [e for e in report.tensors if e.action == "reinit" and len(e.shape) >= 2]
    assert len(weights) == 16
    for e in weights:  # config.json beside the weight file counts as the checkpoint's
        assert (e.reference, e.reference_std) == ("bert/config.json initializer_range", 0.02)
        assert "off_reference" not in e.flags
    assert not any("off_reference" in e.flags for e in report.tensors)


def bert768_top_layers(path: Path) -> Path:
    """Layers 10 and 11 of a 768-wide BERT (the rest left out: ~57 MB, not 340), N(0, 0.02) as
    BERT initializes them, with a config.json saying so beside the file."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "attention.self.query.weight": (768, 768),
        "attention.self.key.weight": (768, 768),
        "attention.self.value.weight": (768, 768),
        "attention.output.dense.weight": (768, 768),
        "intermediate.dense.weight": (3072, 768),
        "output.dense.weight": (768, 3072),
    }
    sd = {}
    for i in (10, 11):
        for name, shape in shapes.items():
            sd[f"encoder.layer.{i}.{name}"] = torch.randn(shape, generator=g) * 0.02
            sd[f"encoder.layer.{i}.{name[: -len('weight')]}bias"] = torch.zeros(shape[0])
        sd[f"encoder.layer.{i}.output.LayerNorm.weight"] = torch.ones(768)
    path.mkdir()
    save_file(sd, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"hidden_size": 768, "initializer_range": 0.02}))
    return path / "model.safetensors"


def test_kaiming_on_the_top_layers_of_a_768_wide_bert_is_flagged(tmp_path):
    """The README once promised this was flagged; it was not (2.55x: no outlier, no std_off).
    Kaiming at fan_in 768 is √(2/768) = 0.051, 2.55x the 0.02 of config.json: flagged. The FFN
    down-projection has fan_in 3072 (0.0255, 1.28x): within 2x, so not."""
    src = bert768_top_layers(tmp_path / "m")
    out = tmp_path / "out.safetensors"
    report = reinit.apply(src, ["encoder.layer.1[01].*.weight=kaiming"], out)
    weights = [e for e in report.tensors if e.action == "reinit"]
    assert len(weights) == 12
    for e in weights:
        assert (e.reference, e.reference_std) == ("m/config.json initializer_range", 0.02)
        ratio = (e.after.std or 0.0) / 0.02
        if e.fan_in == 768:
            assert ratio == pytest.approx(math.sqrt(2 / 768) / 0.02, rel=0.01)  # 2.55
            assert "off_reference" in e.flags, e.name
        else:
            assert e.name.endswith(".output.dense.weight") and "attention" not in e.name
            assert ratio == pytest.approx(math.sqrt(2 / 3072) / 0.02, rel=0.01)  # 1.28
            assert "off_reference" not in e.flags
    assert report.summary.flagged == 10


def test_kaiming_on_a_768_wide_bert_with_model_is_flagged_against_its_default(tmp_path):
    """The issue saw nothing flagged "with or without --model". With --model (BERT-base's own
    config: 768 wide, initializer_range 0.02) the reference is the model's `default` init of
    each tensor, N(0, 0.02) drawn by BertModel._init_weights, and the same 10 matrices are
    flagged; the model's init is drawn once per kind and shape, not per tensor."""
    from transformers import BertConfig

    src = bert768_top_layers(tmp_path / "m")
    model = tmp_path / "base"
    model.mkdir()
    BertConfig().to_json_file(model / "config.json")  # 768 wide, 12 layers, 0.02
    report = reinit.apply(
        src, ["encoder.layer.1[01].*.weight=kaiming"], tmp_path / "o.safetensors", model=str(model)
    )
    weights = [e for e in report.tensors if e.action == "reinit"]
    assert len(weights) == 12
    for e in weights:
        assert e.reference == "model default", e
        assert abs((e.reference_std or 0) / 0.02 - 1) < std_tolerance(math.prod(e.shape)), e
        assert ("off_reference" in e.flags) == (e.fan_in == 768), e
    assert report.summary.flagged == 10


def test_with_model_the_reference_is_the_models_own_init(tmp_path):
    """--model B (initializer_range 0.05) wins over the checkpoint's config (0.02): the
    reference is the std of B's `default` init of each tensor, and it says so."""
    src = bert_dir(tmp_path / "a", 0.02)
    model = bert_dir(tmp_path / "b", 0.05)
    res = run("apply", src, "-r", "*.weight=kaiming", "--model", model, "-o", tmp_path / "k")
    assert res.exit_code == 0, res.output
    assert "; reference: model default 0.0" in flat(res.stderr)
    weights = changed_matrices(report_of(tmp_path / "k" / "reinit-report.json"))
    assert len(weights) == 16
    for t in weights:
        n = math.prod(t["shape"])
        assert t["reference"] == "model default"
        # a sample of N(0, 0.05) (one zeroed padding row in the word embeddings)
        assert abs(t["reference_std"] / 0.05 - 1) < std_tolerance(n) + 0.02, t
        assert "off_reference" in t["flags"]  # kaiming: 0.18-0.25, 3.5-5x

    # normal(std=0.05) matches B's init: not flagged, though it is 2.5x the file's config
    out = tmp_path / "n.safetensors"
    rules = ["*.weight=normal(std=0.05)"]
    with_model = reinit.apply(src / "model.safetensors", rules, out, model=str(model))
    assert not any("off_reference" in e.flags for e in with_model.tensors)
    without = reinit.apply(src / "model.safetensors", rules, tmp_path / "n2.safetensors")
    matrices = [e for e in without.tensors if e.action == "reinit" and len(e.shape) >= 2]
    assert matrices and all("off_reference" in e.flags for e in matrices)


def test_without_config_the_reference_is_the_untouched_siblings_median(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {f"layers.{i}.w": torch.randn(64, 64, generator=g) * 0.02 for i in range(4)}
    sd["head.w"] = torch.randn(10, 64, generator=g) * 0.02
    save_file(sd, tmp_path / "m.safetensors")
    report = reinit.apply(
        tmp_path / "m.safetensors",
        ["layers.3.w=kaiming", "head.w=kaiming"],
        tmp_path / "o.safetensors",
    )
    e = report.entry("layers.3.w")
    kept = sorted(report.entry(f"layers.{i}.w").after.std or 0.0 for i in range(3))
    assert (e.reference, e.reference_std) == ("siblings median", kept[1])
    assert "off_reference" in e.flags
    head = report.entry("head.w")  # no config, no untouched sibling: nothing to judge by
    assert head.reference is None and head.reference_std is None
    assert "off_reference" not in head.flags
    assert reference_text(report.tensors) == f"reference: siblings median {kept[1]:.3g}"


def test_a_transplant_is_judged_by_its_source(tmp_path):
    """Trained weights sit at ~2x the init scale; a transplanted layer is compared with the
    source tensor it was copied from (on reference by definition), not with the config's
    initializer_range."""
    g = torch.Generator().manual_seed(2)
    trained = {f"layers.{i}.w": torch.randn(64, 64, generator=g) * 0.045 for i in range(4)}
    (tmp_path / "dst").mkdir()
    save_file(trained, tmp_path / "dst" / "model.safetensors")
    (tmp_path / "dst" / "config.json").write_text('{"initializer_range": 0.02}')
    save_file({"w": torch.randn(64, 64, generator=g) * 0.045}, tmp_path / "donor.safetensors")
    report = reinit.apply(
        tmp_path / "dst" / "model.safetensors",
        [f"layers.3.w=from({tmp_path / 'donor.safetensors'}, key=w)", "layers.2.w=kaiming"],
        tmp_path / "o.safetensors",
    )
    t = report.entry("layers.3.w")
    assert t.action == "transplant" and t.reference == "source"
    assert t.reference_std == t.after.std and "equal to source" in t.notes
    assert "off_reference" not in t.flags  # 0.045 against 0.02 would be 2.25x
    k = report.entry("layers.2.w")  # a reinit still takes the init scale first
    assert (k.reference, k.reference_std) == ("dst/config.json initializer_range", 0.02)
    assert "dst/config.json initializer_range 0.02 (1 tensors)" in (
        reference_text(report.tensors) or ""
    )


def test_an_hf_source_fetches_its_config_for_the_reference(offline, tmp_path):
    src = bert_dir(tmp_path / "bert")
    seed_repo(
        offline,
        "acme/mini",
        {
            "model.safetensors": (src / "model.safetensors").read_bytes(),
            "config.json": (src / "config.json").read_bytes(),
        },
    )
    out = tmp_path / "out.safetensors"
    report = reinit.apply("hf://acme/mini", ["encoder.layer.1.*.weight=kaiming"], out)
    changed = [e for e in report.tensors if e.action == "reinit"]
    assert len(changed) == 6
    assert all(e.reference == "mini/config.json initializer_range" for e in changed)
    assert all("off_reference" in e.flags for e in changed)


def test_reference_tolerance_flag_recipe_key_and_keyword(tmp_path):
    src = bert_dir(tmp_path / "bert") / "model.safetensors"
    res = run("apply", src, "-r", "*.weight=kaiming", "--reference-tolerance", "20")
    assert res.exit_code == 0, res.output
    assert "0 flagged" in res.stderr  # 8.8-12.5x is within 20x
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"source: {src}\noutput: {tmp_path / 'r.safetensors'}\nreference_tolerance: 13\n"
        "rules: ['*.weight=kaiming']\n"
    )
    res = run("run", recipe)
    assert res.exit_code == 0, res.output
    assert "0 flagged" in res.stderr
    res = run("run", recipe, "--set", "reference_tolerance=5", "--overwrite")
    assert res.exit_code == 0, res.output
    assert "16 flagged" in res.stderr
    state = {"w": torch.randn(64, 64) * 0.02, "v": torch.randn(64, 64) * 0.02}
    _, rep = reinit.apply_to_state_dict(
        state, ["w=normal(std=0.05)"], config={"initializer_range": 0.02}
    )
    assert "off_reference" in rep.entry("w").flags  # 2.5x
    _, rep = reinit.apply_to_state_dict(
        state, ["w=normal(std=0.05)"], config={"initializer_range": 0.02}, reference_tolerance=3
    )
    assert "off_reference" not in rep.entry("w").flags


def test_a_tolerance_below_1_is_refused_before_any_work(tmp_path):
    src = bert_dir(tmp_path / "bert") / "model.safetensors"
    args = ["apply", str(src), "-r", "*.weight=kaiming", "--reference-tolerance", "0.5"]
    refused(tmp_path, args, 2, "--reference-tolerance 0.5", "at least 1")


def test_csv_markdown_and_json_carry_the_reference(tmp_path):
    src = bert_dir(tmp_path / "bert") / "model.safetensors"
    out = tmp_path / "o.safetensors"
    reports = [tmp_path / "r.csv", tmp_path / "r.md"]
    report = reinit.apply(src, ["encoder.layer.0.*.weight=kaiming"], out, reports=reports)
    rows = list(csv.DictReader(io.StringIO(reports[0].read_text())))
    q = next(r for r in rows if r["name"] == "encoder.layer.0.attention.self.query.weight")
    assert (q["reference_std"], q["reference"]) == ("0.02", "bert/config.json initializer_range")
    assert "off_reference" in q["flags"]
    kept = next(r for r in rows if r["name"] == "encoder.layer.1.attention.self.query.weight")
    assert kept["reference_std"] == "" and kept["reference"] == ""
    md = reports[1].read_text()
    assert "| reference |" in md and "0.02 (bert/config.json initializer_range)" in md
    assert "reference: bert/config.json initializer_range 0.02" in md
    (default,) = tmp_path.glob("o*.json")  # the default report, read back as a Report
    again = Report.from_dict(json.loads(default.read_text()))
    fields = [(e.name, e.reference, e.reference_std, e.flags) for e in report.tensors]
    assert [(e.name, e.reference, e.reference_std, e.flags) for e in again.tensors] == fields


def test_in_memory_module_is_its_own_reference():
    """apply_to_module plans with the module itself (issue 14), so the reference is the
    model's own `default` init (~ its initializer_range 0.02), which outranks config.json."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=50,
        max_position_embeddings=16,
    )
    report = reinit.apply_to_module(BertModel(cfg), ["encoder.*.weight=kaiming"])
    changed = [e for e in report.tensors if e.action == "reinit"]
    assert changed and all(e.reference == "model default" for e in changed)
    assert all(0.015 < (e.reference_std or 0) < 0.025 for e in changed)
    assert all("off_reference" in e.flags for e in changed)


def entry(name: str, std: float, action: str = "reinit", n: int = 4096, **kw) -> TensorEntry:
    after = Stats(0.0, std, -1.0, 1.0, 0, n)
    return TensorEntry(name, (64, n // 64), "float32", action, after, **kw)


def test_off_reference_judges_only_a_positive_std_against_a_positive_reference():
    assert off_reference(entry("a", 0.05, reference_std=0.02))  # 2.5x
    assert off_reference(entry("a", 0.009, reference_std=0.02))  # 1/2.2
    assert not off_reference(entry("a", 0.039, reference_std=0.02))
    assert not off_reference(entry("a", 0.0, reference_std=0.02))  # constant: its own flag
    assert not off_reference(entry("a", 0.05, reference_std=0.0))
    assert not off_reference(entry("a", 0.05))  # no reference
    assert not off_reference(entry("a", 0.05, reference_std=0.02), tolerance=3)
    tiny = TensorEntry(
        "h", (2, 2), "float32", "reinit", Stats(0, 0.05, -1, 1, 0, 4), reference_std=0.02
    )
    assert not off_reference(tiny)  # 2.5x, but 4 values can be that far by chance


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64])
def test_a_tiny_tensor_drawn_at_the_reference_is_not_flagged_by_chance(n):
    """2,000 fresh normal(0.02) draws of n values each, judged against 0.02: none is
    off_reference. The factor once widened only by the std's asymptotic standard error, the
    same either way; but a sample std of a few values falls far more often than it rises
    (GPT-OSS's 2 attention sinks: 0.0053 against 0.02), so 31% of 2-value and 9% of 4-value
    draws were flagged low. Below, a std is off when it is under the reference by more than
    sampling error allows (as `std_off` judges), which a tensor of <= 12 values never is."""
    gen = torch.Generator().manual_seed(0)
    flagged = 0
    for _ in range(2000):
        after = tensor_stats(torch.randn(n, generator=gen) * 0.02)
        flagged += off_reference(
            TensorEntry("h", (n,), "float32", "reinit", after, reference_std=0.02)
        )
    assert flagged == 0


def test_a_garbage_tensor_is_not_also_off_reference(tmp_path):
    state = {"w": torch.randn(64, 64) * 0.02, "v": torch.randn(64, 64) * 0.02}
    _, rep = reinit.apply_to_state_dict(
        state, ["w=constant(1e12)", "v=normal(std=0.05)"], config={"initializer_range": 0.02}
    )
    assert "off_reference" not in rep.entry("w").flags
    assert "off_reference" in rep.entry("v").flags


def test_with_references_is_pure_and_orders_its_sources():
    kept = [entry(f"l.{i}.w", 0.04, action="kept") for i in range(3)]
    changed = entry("l.3.w", 0.1)
    moved = entry("l.4.w", 0.04, action="transplant")
    norm = TensorEntry(
        "l.3.norm.weight", (64, 64), "float32", "reinit", tensor_stats(torch.ones(2))
    )
    out = with_references(
        [*kept, changed, moved, norm], ReferenceBasis({"initializer_range": 0.02})
    )
    by = {e.name: e for e in out}
    assert (by["l.3.w"].reference, by["l.3.w"].reference_std) == ("config initializer_range", 0.02)
    assert (by["l.4.w"].reference, by["l.4.w"].reference_std) == ("siblings median", 0.04)
    assert by["l.3.norm.weight"].reference is None  # a norm takes no initializer_range
    assert all(by[k.name].reference is None for k in kept)
    model = ReferenceBasis({"initializer_range": 0.02}, model_std=lambda e: 0.03)
    assert with_references([changed], model)[0].reference == "model default"
    assert with_references([changed], model)[0].reference_std == 0.03


@pytest.mark.parametrize(
    "surgery",
    [
        ["--drop", "pooler.dense.bias"],
        ["--rename", "embeddings.*=embed.{1}"],
        ["--resize", "embeddings.word_embeddings.weight=[120,32]"],
        ["--add", "head.weight=[3,32]:normal(std=0.02)"],
    ],
    ids=["drop", "rename", "resize", "add"],
)
def test_surgery_keeps_the_config_as_the_reference(tmp_path, surgery):
    """Surgery wraps the source in an edited checkpoint; its config.json still speaks for the
    tensors. Before, any --drop/--rename/--resize/--add lost the config: kaiming on the pooler
    (8.8x the config's 0.02) was not judged at all, and apply passed what `report --against`
    failed."""
    src = bert_dir(tmp_path / "bert")
    out = tmp_path / "out"
    res = run("apply", src, *surgery, "-r", "pooler.dense.weight=kaiming", "-o", out)
    assert res.exit_code == 0, res.output
    (pooler,) = [
        t
        for t in report_of(out / "reinit-report.json")["tensors"]
        if t["name"] == "pooler.dense.weight"
    ]
    assert (pooler["reference"], pooler["reference_std"]) == (
        "bert/config.json initializer_range",
        0.02,
    )
    assert "off_reference" in pooler["flags"]


def test_a_scheme_reads_the_config_under_surgery(tmp_path):
    """scaled_normal takes its layer count from config.json; with a --drop it once said the
    config was missing (exit 2)."""
    src = bert_dir(tmp_path / "bert")
    res = run(
        "apply",
        src,
        "--drop",
        "pooler.dense.bias",
        "-r",
        "encoder.layer.1.output.dense.weight=scaled_normal",
        "-o",
        tmp_path / "out",
    )
    assert res.exit_code == 0, res.output
    (t,) = changed_matrices(report_of(tmp_path / "out" / "reinit-report.json"))
    assert t["expected_std"] == pytest.approx(0.02 / math.sqrt(2 * 2))  # 2 layers


def trained_bert(path: Path) -> Path:
    """bert_dir with its matrices at 3x the config's 0.02, as trained weights sit."""
    from safetensors.torch import load_file

    bert_dir(path)
    sd = load_file(path / "model.safetensors")
    sd = {k: v * 3 if v.dim() >= 2 else v for k, v in sd.items()}
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_a_grown_vocabulary_is_judged_against_its_own_rows(tmp_path):
    """A tensor --resize grew keeps its trained rows: its reference is its own std before, so a
    correct vocabulary growth (mean_resize) is on reference, a growth by a wrong scale is not,
    and `report --against` says the same of the written folder."""
    src = trained_bert(tmp_path / "bert")
    emb = "embeddings.word_embeddings.weight"
    for shape, scheme, flagged in [("[120,32]", "", False), ("[300,32]", ":normal(std=1)", True)]:
        out = tmp_path / f"out{shape}"
        rep = reinit.apply(
            src, ["pooler.dense.weight=normal(std=0.02)"], out, resize=[f"{emb}={shape}{scheme}"]
        )
        e = next(t for t in rep.tensors if t.name == emb)
        assert (e.reference, e.reference_std) == ("before resize", pytest.approx(0.06, rel=0.1))
        assert ("off_reference" in e.flags) is flagged
        again = next(t for t in reinit.report_checkpoint(out, src).tensors if t.name == emb)
        assert (again.action, again.reference, again.flags) == ("reinit", "before resize", e.flags)
