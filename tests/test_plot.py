"""`--plot PNG` on `report` and `apply`: a PNG that decodes at the documented size, flagged
tensors marked in red, and a one-line error naming the extra when matplotlib is missing."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import run
from safetensors.torch import save_file

import reinit
from reinit.report.files import plot_report
from reinit.report.plot import DPI, FIGSIZE


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
    assert img.shape[:2] == size == (600, 1100)
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
    assert decode(tmp_path / "p.png").shape[:2] == (600, 1100)


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
