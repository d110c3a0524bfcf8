"""Every file in examples/ runs with exactly the command(s) its header shows (or, for JSON, which
has no comments, the docs'), through a real shell and the installed `reinit` executable, on
a tiny checkpoint of the architecture it is written for; its output loads in its consumer."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]


def header_commands(path: Path) -> list[str]:
    """The `reinit run ...` lines of an example's leading comment."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if re.match(r"^([A-Z_]+=\S+ )*reinit run ", text):
            out.append(text)
    return out


def readme_commands(example: str) -> list[str]:
    """Lines of README.md's and docs/guide/'s code blocks that run this example."""
    lines = [ln for page in DOC_PAGES for ln in page.read_text(encoding="utf-8").splitlines()]
    return sorted(
        {
            ln.strip()
            for ln in lines
            if re.match(rf"^([A-Z_]+=\S+ )*reinit run examples/{re.escape(example)}\b", ln.strip())
        }
    )


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a docs/header line as written, with this venv's `reinit` first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "OLD", "OLD_VOCAB", "OUT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """An empty folder holding a copy of examples/, so `examples/X` resolves as in the repo."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    return tmp_path


def gpt2(path: Path, vocab: int = 99, seed: int = 0, layers: int = 3) -> None:
    cfg = transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=8, n_layer=layers, n_head=2
    )
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)


def test_every_example_is_covered_here():
    names = sorted(p.name for p in EXAMPLES.iterdir() if not p.name.startswith("."))
    assert names == ["detection-head.json", "gpt2-init.yaml", "grow-vocab.toml"]


def test_gpt2_init_as_its_header_shows(workdir):
    commands = header_commands(EXAMPLES / "gpt2-init.yaml")
    assert len(commands) == 2, commands  # the docs' line runs in test_readme_examples.py
    assert set(readme_commands("gpt2-init.yaml")) <= {c.split(" --set seed")[0] for c in commands}
    gpt2(workdir / "path" / "to" / "gpt2-dir")
    for cmd in dict.fromkeys(commands):
        shutil.rmtree(workdir / "gpt2-init", ignore_errors=True)  # each command as if first
        (workdir / "gpt2-init.report.md").unlink(missing_ok=True)
        res = shell(cmd, workdir)
        assert res.returncode == 0, f"{cmd}: {res.stderr}"
        model = transformers.GPT2LMHeadModel.from_pretrained(workdir / "gpt2-init")
        sd = load_file(workdir / "gpt2-init" / "model.safetensors")
        proj = torch.cat(
            [
                sd[f"transformer.h.{i}.{m}.c_proj.weight"].flatten()
                for i in range(3)
                for m in ("attn", "mlp")
            ]
        )
        assert proj.std().item() == pytest.approx(0.02 / math.sqrt(6), rel=0.15)
        assert sd["transformer.h.0.attn.c_attn.weight"].std().item() == pytest.approx(
            0.02, rel=0.15
        )
        assert torch.equal(sd["transformer.ln_f.weight"], torch.ones(8))
        assert torch.equal(sd["transformer.h.2.mlp.c_fc.bias"], torch.zeros(32))
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
        assert (workdir / "gpt2-init.report.md").is_file()


def test_grow_vocab_as_its_header_shows(workdir):
    commands = header_commands(EXAMPLES / "grow-vocab.toml")
    assert len(commands) == 1, commands  # the docs' line runs in test_readme_examples.py
    assert readme_commands("grow-vocab.toml")
    for cmd in dict.fromkeys(commands):
        sizes = {k: int(v) for k, v in re.findall(r"(OLD_VOCAB)=(\d+)", cmd)}
        old_vocab = sizes["OLD_VOCAB"]
        model_dir, old_dir = re.search(r"MODEL=(\S+)", cmd)[1], re.search(r"OLD=(\S+)", cmd)[1]
        gpt2(workdir / old_dir, vocab=old_vocab, seed=1, layers=2)
        gpt2(workdir / model_dir, vocab=old_vocab + 5, seed=2, layers=2)
        shutil.rmtree(workdir / "grown", ignore_errors=True)
        res = shell(cmd, workdir)
        assert res.returncode == 0, f"{cmd}: {res.stderr}"
        old = load_file(workdir / old_dir / "model.safetensors")
        out = load_file(workdir / "grown" / "model.safetensors")
        wte = out["transformer.wte.weight"]
        assert wte.shape == (old_vocab + 5, 8)
        assert torch.equal(wte[:old_vocab], old["transformer.wte.weight"])
        mean = old["transformer.wte.weight"].double().mean(0)
        assert torch.allclose(wte[old_vocab:].double(), mean.expand(5, -1), atol=1e-3)
        for name in old:
            if name != "transformer.wte.weight":
                assert torch.equal(out[name], old[name]), name
        model = transformers.GPT2LMHeadModel.from_pretrained(workdir / "grown")
        assert model.config.vocab_size == old_vocab + 5


class RetinaHead(torch.nn.Module):
    """RetinaNet-style head, as detection-head.json names it: a conv tower per branch,
    cls_logits (A·K channels) and bbox_pred (A·4)."""

    def __init__(self, c: int = 8, anchors: int = 3, classes: int = 3):
        super().__init__()

        def tower() -> torch.nn.Module:
            m = torch.nn.Module()
            m.conv = torch.nn.Sequential(
                torch.nn.Conv2d(c, c, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(c, c, 3, padding=1),
            )
            return m

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_logits = torch.nn.Conv2d(c, anchors * classes, 3, padding=1)
        self.bbox_pred = torch.nn.Conv2d(c, anchors * 4, 3, padding=1)


def test_detection_head_as_the_readme_shows(workdir):
    commands = readme_commands("detection-head.json")
    assert commands, "the docs show no command for examples/detection-head.json"
    model = torch.nn.Module()
    model.backbone = torch.nn.Conv2d(3, 8, 3)
    model.head = RetinaHead()
    for cmd in commands:
        src = re.search(r"MODEL=(\S+)", cmd)[1]
        save_file(model.state_dict(), workdir / src)
        res = shell(cmd, workdir)
        assert res.returncode == 0, f"{cmd}: {res.stderr}"
        out = load_file(workdir / "detector-init.safetensors")
        assert torch.allclose(out["head.cls_logits.bias"], torch.full((9,), -math.log(99)))
        assert torch.equal(out["backbone.weight"], model.backbone.weight.detach())
        assert out["head.cls_tower.conv.0.weight"].std().item() == pytest.approx(0.01, rel=0.2)
        fresh = torch.nn.Module()
        fresh.backbone, fresh.head = torch.nn.Conv2d(3, 8, 3), RetinaHead()
        fresh.load_state_dict(out)  # strict: no missing or unexpected keys
