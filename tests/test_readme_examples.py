"""Every ```python block of README.md runs, in order, in one namespace, in a fresh directory:
the README's examples are executed, not just shown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import run
from transform_fixtures import transform_fixtures

README = Path(__file__).parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python fenced block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def run_blocks(path: Path) -> int:
    """Execute the blocks of a Markdown file in order; returns how many ran."""
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, code in blocks:
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"{path.name} block at line {line} failed: {e!r}") from e
    return len(blocks)


def test_python_blocks_of_the_readme_run(tmp_path, monkeypatch):
    if not README.is_file() or not python_blocks(README.read_text(encoding="utf-8")):
        pytest.skip("README.md has no ```python blocks")
    monkeypatch.chdir(tmp_path)
    assert run_blocks(README) > 0


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\n```\nnot python\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = x + 1\n")]


# --- shell blocks ---------------------------------------------------------------------------

SHELL_LANGS = ("", "bash", "sh")

# Lines of README shell blocks that are not run here, each with the reason. Anything else in a
# shell block must be a `reinit ...` command (optionally after VAR=value), and it runs.
NOT_RUN = {
    "./scripts/": "the set-up scripts: CI runs ./scripts/test, and scripts/smoke runs "
    "./scripts/demo in a fresh clone",
    "hf://": "needs the network (the Hub paths run against a local fake Hub in tests/test_hub_apply.py)",
    "from_pretrained('minilm-clf'": "loads the output of the hf:// command above",
    "torchvision.": "torchvision is not a dependency of the tests",
}


def shell_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each command line of the ``` and ```bash blocks (fences at
    the start of a line), with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    lang: str | None = None  # the open block's language; None outside a block
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            continue
        if lang not in SHELL_LANGS:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command, pending = (pending + line).strip(), ""
        if command:
            out.append((start, command))
    return out


def _fixtures(root: Path) -> None:
    """The checkpoints and files the README's commands name, as tiny models of the kind each
    command expects (names as transformers saves them)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    transformers = pytest.importorskip("transformers")

    def bert(layers: int, seed: int) -> Any:
        torch.manual_seed(seed)
        cfg = transformers.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=32,
            num_labels=3,
        )
        return transformers.BertForSequenceClassification(cfg)

    def gpt2(path: Path, vocab: int, seed: int) -> None:
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(
            vocab_size=vocab, n_positions=16, n_embd=8, n_layer=2, n_head=2
        )
        transformers.GPT2LMHeadModel(cfg).save_pretrained(path)

    bert(2, 0).save_pretrained(root / "bert2")
    shutil.copy(root / "bert2" / "model.safetensors", root / "model.safetensors")
    shutil.copy(root / "model.safetensors", root / "old.safetensors")
    save_file(bert(2, 1).state_dict(), root / "new.safetensors")
    torch.save(bert(2, 2).state_dict(), root / "a.bin")
    bert(2, 3).save_pretrained(root / "b")
    bert(12, 4).save_pretrained(root / "ckpt")
    bert(2, 5).save_pretrained(root / "bert-dir")
    bert(2, 6).save_pretrained(root / "my-model", max_shard_size="20KB")
    gpt2(root / "path" / "to" / "gpt2-dir", 99, 7)
    gpt2(root / "old", 50257, 8)
    gpt2(root / "new", 50262, 9)
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "nets.py").write_text(
        "from torch import nn\n\n\n"
        "def MLP(depth=8, width=64):\n"
        "    layers = []\n"
        "    for _ in range(depth):\n"
        "        layers += [nn.Linear(width, width), nn.ReLU()]\n"
        "    return nn.Sequential(*layers)\n"
    )
    torch.manual_seed(10)
    mlp = torch.nn.Sequential(
        *[m for _ in range(8) for m in (torch.nn.Linear(64, 64), torch.nn.ReLU())]
    )
    save_file(mlp.state_dict(), root / "mlp.safetensors")
    (root / "recipe.toml").write_text(
        'source = "model.safetensors"\noutput = "recipe-out.safetensors"\n\n'
        '[[steps]]\nrules = ["*.weight=lecun_normal"]\n\n'
        '[[steps]]\nrules = ["classifier.bias=bias_prior(0.1)"]\n'
    )
    det = {
        "backbone.weight": torch.randn(8, 3, 3, 3),
        **{
            f"head.{t}.conv.{i}.{p}": torch.randn(8, 8, 3, 3) if p == "weight" else torch.randn(8)
            for t in ("cls_tower", "box_tower")
            for i in (0, 2)
            for p in ("weight", "bias")
        },
        "head.cls_logits.weight": torch.randn(9, 8, 3, 3),
        "head.cls_logits.bias": torch.randn(9),
        "head.bbox_pred.weight": torch.randn(12, 8, 3, 3),
        "head.bbox_pred.bias": torch.randn(12),
    }
    save_file(det, root / "detector.safetensors")
    shutil.copytree(README.parent / "examples", root / "examples")
    transform_fixtures(root)
    _architecture_change_fixtures(root, transformers)


def _architecture_change_fixtures(root: Path, transformers: Any) -> None:
    """The models of "Transplants across architecture changes" (positions, stems, rows), at
    tiny widths: ViTs of 224/384 pixels and 3/4 channels, BERTs of 512/1024 positions, GPT-2s
    with two tokenizer.json files, classifiers with two id2label."""
    import json

    import torch

    def small(**kw: Any) -> dict[str, Any]:
        return dict(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, **kw
        )

    for name, size, channels in (("vit224", 224, 3), ("vit384", 384, 3), ("vit-rgbn", 224, 4)):
        cfg = transformers.ViTConfig(
            image_size=size, patch_size=16, num_channels=channels, **small()
        )
        transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(root / name)
    for name, positions in (("bert512", 512), ("bert1024", 1024)):
        cfg = transformers.BertConfig(vocab_size=32, max_position_embeddings=positions, **small())
        transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(root / name)
    tokens = {
        "gpt2-oldtok": ["<|endoftext|>", *(f"w{i}" for i in range(15))],
        "gpt2-newtok": ["<|endoftext|>", *(f"w{i}" for i in range(0, 15, 2)), "new0", "new1"],
    }
    for name, vocab in tokens.items():
        cfg = transformers.GPT2Config(
            vocab_size=len(vocab), n_positions=16, n_embd=8, n_layer=1, n_head=2,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        transformers.GPT2LMHeadModel(cfg).save_pretrained(root / name)
        doc = {
            "added_tokens": [{"id": 0, "content": vocab[0], "special": True}],
            "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)}},
        }
        (root / name / "tokenizer.json").write_text(json.dumps(doc))
    for name, labels in (
        ("clf-old-labels", ["neg", "neu", "pos"]),
        ("clf-new-labels", ["pos", "mixed", "neg"]),
    ):
        cfg = transformers.BertConfig(
            vocab_size=32, max_position_embeddings=16, id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)}, **small(),
        )  # fmt: skip
        torch.manual_seed(len(name))
        transformers.BertForSequenceClassification(cfg).save_pretrained(root / name)


def test_shell_blocks_of_the_readme_run(tmp_path, monkeypatch):
    """Every `reinit ...` line of the README's shell blocks runs as written (in order, in one
    folder holding checkpoints with the names the README uses) and exits 0; the lines it does
    not run are listed in NOT_RUN with the reason. The ```yaml recipe block runs too."""
    import shlex

    _fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # `mypkg.nets:MLP` as a user's own package
    ran, skipped = [], []
    for line, command in shell_commands(README.read_text(encoding="utf-8")):
        reason = next((why for key, why in NOT_RUN.items() if key in command), None)
        if reason is not None:
            skipped.append((line, reason))
            continue
        words = shlex.split(command, comments=True)
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert words[0] == "reinit", f"README.md line {line}: not a reinit command: {command}"
        res = run(*words[1:], env=env)
        assert res.exit_code == 0, f"README.md line {line}: {command}\n{res.output}"
        ran.append(command)
    assert len(ran) >= 25 and len(skipped) <= 8, (len(ran), skipped)
    # the ```yaml recipe of "Recipes", run as a file on the GPT-2 checkpoints above
    (yaml_block,) = re.findall(r"^```yaml[ \t]*\n(.*?)^```", README.read_text(), re.S | re.M)
    (tmp_path / "readme-recipe.yaml").write_text(yaml_block)
    env = {"MODEL": "new", "OLD": "old", "OLD_VOCAB": "50257"}
    res = run("run", "readme-recipe.yaml", "-q", env=env)
    assert res.exit_code == 0, f"README.md yaml recipe\n{res.output}"
    assert (tmp_path / "model-init" / "model.safetensors").is_file()
    assert (tmp_path / "init.report.md").is_file()
    assert (tmp_path / "model.reinit.safetensors").is_file() and (tmp_path / "std.png").is_file()


def test_shell_command_extraction():
    text = "```\nreinit a \\\n  --b c   # note\n\nX=1 reinit d\n```\n```python\nnot = 1\n```\n"
    assert shell_commands(text) == [(2, "reinit a    --b c   # note"), (5, "X=1 reinit d")]
