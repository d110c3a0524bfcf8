"""`--plot PNG` on `report` and `apply`: a PNG that decodes at the documented size, flagged
tensors marked in red, and a one-line error naming the extra when matplotlib is missing.

Internal: also tests reinit.report.entries, reinit.report.views._files, reinit.report.views._plot,
reinit.report.views._plot_groups, reinit.report.stats directly (not the `reinit` API).
"""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import run
from safetensors.torch import save_file

import reinit
from reinit.report.views._files import plot_report
from reinit.report.views._plot import DPI, FIGSIZE


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_report.py
    yield
    torch.set_num_threads(before)


def stack(path, bad: bool):
    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.fc.weight": torch.randn(64, 64, generator=g) * 0.05 for i in range(6)}
    sd.update({f"layers.{i}.proj.weight": torch.randn(32, 64, generator=g) * 0.1 for i in range(6)})
    if bad:
        sd["layers.3.fc.weight"] *= 20  # outlier
        sd["layers.5.proj.weight"][0, 0] = 1e37  # garbage: off the log axis
    save_file(sd, path)
    return path


def decode(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def pure_red(img) -> int:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return int(((r > 0.95) & (g < 0.05) & (b < 0.05)).sum())


def test_report_plot_png_decodes_at_size_and_marks_flags(tmp_path):
    size = (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    bad = stack(tmp_path / "bad.safetensors", bad=True)
    r = run("report", str(bad), "--plot", str(tmp_path / "bad.png"), "-q")
    assert r.exit_code == 0
    img = decode(tmp_path / "bad.png")
    assert img.shape[:2] == size == (900, 1600)
    good = stack(tmp_path / "good.safetensors", bad=False)
    plot_report(reinit.report_checkpoint(good), tmp_path / "good.png")
    clean = decode(tmp_path / "good.png")
    assert clean.shape == img.shape
    # the red markers (× on the line, ▲ on the top edge for garbage) exist only when flagged;
    # the legend's two red sample markers are in both
    assert pure_red(img) > pure_red(clean) + 50
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_apply_plot_shows_before_and_after(tmp_path):
    src = stack(tmp_path / "m.safetensors", bad=False)
    out = tmp_path / "o.safetensors"
    r = run(
        "apply",
        str(src),
        "-r",
        "layers.[0-2].fc.weight=kaiming",
        "-o",
        str(out),
        "--plot",
        str(tmp_path / "p.png"),
    )
    assert r.exit_code == 0 and out.is_file()
    assert decode(tmp_path / "p.png").shape[:2] == (900, 1600)


def test_missing_matplotlib_is_one_clear_line_and_nothing_is_written(tmp_path, monkeypatch):
    src = stack(tmp_path / "m.safetensors", bad=False)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    r = run("report", str(src), "--plot", str(tmp_path / "p.png"))
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        "error: --plot needs matplotlib, which is not installed: pip install 'reinit[plot]'"
    )
    r = run("apply", str(src), "-r", "*=zeros", "--plot", str(tmp_path / "p.png"))
    assert r.exit_code == 2 and "reinit[plot]" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # checked first


def _after_points(ax) -> int:
    n = sum(len(line.get_xdata()) for line in ax.lines if line.get_gid() == "after")
    return n + sum(
        len(c.get_offsets()) for c in ax.collections if c.get_gid() in ("after-zero", "after-off")
    )


def test_plot_panels_by_group_every_tensor_drawn_and_zeros_kept(tmp_path):
    from reinit.report.views._plot import build_figure

    g = torch.Generator().manual_seed(0)
    sd = {"model.embed_tokens.weight": torch.randn(64, 16, generator=g) * 0.02}
    for i in range(6):
        p = f"model.layers.{i}"
        for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj", "mlp.down_proj"):
            sd[f"{p}.{name}.weight"] = torch.randn(16, 16, generator=g) * 0.02
        sd[f"{p}.input_layernorm.weight"] = torch.ones(16)  # std 0
        sd[f"{p}.mlp.up_proj.bias"] = torch.zeros(16)  # std 0
    sd["model.norm.weight"] = torch.ones(16)
    sd["lm_head.weight"] = torch.randn(64, 16, generator=g) * 0.02
    src = tmp_path / "m.safetensors"
    save_file(sd, src)
    report = reinit.apply(
        src, ["model.layers.[45].*_proj.weight=kaiming"], output=tmp_path / "o.safetensors"
    )
    fig = build_figure(report)
    titles = [ax.get_title(loc="left").split("   ")[0] for ax in fig.axes]
    assert titles == ["attention", "MLP", "embeddings and heads", "norms and biases"]
    assert sum(_after_points(ax) for ax in fig.axes) == len(sd)  # every tensor, once
    zeros = sum(
        len(c.get_offsets())
        for ax in fig.axes
        for c in ax.collections
        if c.get_gid() == "after-zero"
    )
    assert zeros == 6 + 6 + 1  # the ones and zeros sit on the std-0 row, not dropped
    heads = fig.axes[2]
    assert {t.get_text() for t in heads.get_xticklabels()} == {
        "model.embed_tokens.weight",
        "lm_head.weight",
    }  # layer-less tensors are columns of their own
    flagged = sum(
        len(c.get_offsets())
        for ax in fig.axes
        for c in ax.collections
        if c.get_gid() is None
        and c.get_edgecolor().size
        and tuple(c.get_facecolor()[0][:3]) == (1, 0, 0)
    )
    assert flagged == len([e for e in report.tensors if e.flags]) > 0


def test_few_kinds_one_panel_each_and_labels_cut_at_dots():
    from reinit.report.views._plot import LABEL_WIDTH, label_text
    from reinit.report.views._plot_groups import plot_panels

    name = "encoder.layer.*.attention.self.very_long_module_name.query.weight"
    cut = label_text(name)
    assert len(cut) <= LABEL_WIDTH and cut.startswith("….") and name.endswith(cut[2:])
    assert label_text("short.weight") == "short.weight"
    report = reinit.report_checkpoint
    del report
    from reinit.report.entries import TensorEntry
    from reinit.report.stats import Stats

    def entry(name):
        return TensorEntry(
            name=name,
            shape=(4, 4),
            dtype="float32",
            action="kept",
            after=Stats.from_dict(
                {
                    "mean": 0.0,
                    "std": 0.1,
                    "min": -1.0,
                    "max": 1.0,
                    "abs_max": 1.0,
                    "nonfinite": 0,
                    "zero_frac": 0.0,
                }
            ),
        )

    panels = plot_panels(
        [entry(f"layers.{i}.fc.weight") for i in range(3)] + [entry("head.weight")]
    )
    assert [p.title for p in panels] == ["layers.*.fc.weight", "head.weight"]


def test_names_with_mathtext_characters_render_literally(tmp_path):
    """A `$` in a name made matplotlib parse mathtext (`$w_1$` drawn as a subscript; `$\\bad{$`
    raised in savefig) and a kind starting with `_` vanished from the legend: every label is
    now drawn as the name reads."""
    import io

    from matplotlib import cbook

    from reinit.report.views._plot import build_figure, mpl_text

    g = torch.Generator().manual_seed(0)
    names = [f"blocks.{i}.$w_1$.weight" for i in range(3)]
    names += [f"_orig_mod.{i}.lin.weight" for i in range(3)]
    names += ["head.$\\bad{$.weight"]  # an unknown mathtext command: savefig raised
    path = tmp_path / "m$x_1$.safetensors"  # the source is in the title
    save_file({n: torch.randn(8, 8, generator=g) for n in names}, path)
    fig = build_figure(reinit.report_checkpoint(path))
    fig.savefig(io.BytesIO(), format="png")  # raised ValueError (mathtext) before the fix
    texts = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    for ax in fig.axes:
        legend = ax.get_legend()
        texts += [t.get_text() for t in legend.get_texts()] if legend else []
        texts.append(ax.get_title(loc="left"))
    assert not any(cbook.is_math_text(t) for t in texts)  # drawn as text, `_` and all
    drawn = [t.replace("\\$", "$") for t in texts]  # what matplotlib draws for `\$`
    assert any("$w_1$.weight" in t for t in drawn), drawn
    assert any("head.$\\bad{$.weight" in t for t in drawn), drawn
    assert any(t.strip().startswith("_orig_mod.") for t in drawn), drawn  # in the legend
    assert mpl_text("a$b$c") == "a\\$b\\$c" and mpl_text("_x") == " _x"
    title = fig.get_suptitle()  # two lines: the source, the summary
    assert not cbook.is_math_text(title) and len(title.splitlines()) == 2
    assert "m$x_1$.safetensors" in title.replace("\\$", "$"), title
