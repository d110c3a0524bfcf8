"""Every example of README.md and of each docs/guide/*.md page runs: its ```python blocks in
order in one namespace in an empty folder, and its ```bash/```sh/```console (and bare ```)
blocks line by line in a folder holding tiny checkpoints with the names the pages use. A block
that cannot run here is preceded by `<!-- not-run: REASON -->`, which the tests honour and
count; every other block runs. Pages added to docs/guide/ later are found by the glob. A page
whose examples need fixtures of their own (an MoE, a model config) says so on a line
`<!-- doc-test: tests/test_X.py -->`: that test module runs every block of the page, and
this module checks that it exists and names the page."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import run
from transform_fixtures import transform_fixtures

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"


def doc_pages() -> list[Path]:
    """README.md and every page of docs/guide/, found by glob."""
    return [README, *sorted(GUIDE.glob("*.md"))]


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


SHELL_LANGS = ("", "bash", "sh", "console")
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")
_OWN_TEST = re.compile(r"^<!--\s*doc-test:\s*(tests/test_\w+\.py)\s*-->\s*$", re.M)


def own_test(page: Path) -> str | None:
    """The test module that runs this page's blocks with fixtures of its own, if the page
    names one; that module must exist and name the page."""
    m = _OWN_TEST.search(page.read_text(encoding="utf-8"))
    if m is None:
        return None
    module = ROOT / m.group(1)
    assert module.is_file(), f"{page_id(page)} names {m.group(1)}, which does not exist"
    assert page.name in module.read_text(encoding="utf-8"), (page_id(page), m.group(1))
    return m.group(1)


@dataclass(frozen=True)
class Block:
    line: int  # the line of its first content line (1-based)
    lang: str
    body: str
    not_run: str | None  # the reason given by a preceding <!-- not-run: ... --> comment


def blocks(text: str) -> list[Block]:
    """Every fenced block (fences at the start of a line) with its language and, when the last
    non-blank line before it is `<!-- not-run: REASON -->`, that reason."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        lang, start = lines[i][3:].strip(), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        m = _NOT_RUN.match(before.strip())
        body = "".join(ln + "\n" for ln in lines[start + 1 : j])
        out.append(Block(start + 2, lang, body, m.group(1) if m else None))
        i = j + 1
    return out


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block that is not marked not-run."""
    return [(b.line, b.body) for b in blocks(text) if b.lang == "python" and b.not_run is None]


def run_blocks(path: Path) -> int:
    """Execute the Python blocks of a Markdown file in order; returns how many ran."""
    code_blocks = python_blocks(path.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, code in code_blocks:
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"{page_id(path)} block at line {line} failed: {e!r}") from e
    return len(code_blocks)


def shell_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each command of the shell blocks not marked not-run, with
    backslash continuations joined; in a ```console block only `$ ` lines are commands."""
    out: list[tuple[int, str]] = []
    for block in blocks(text):
        if block.lang not in SHELL_LANGS or block.not_run is not None:
            continue
        pending, start = "", 0
        for offset, line in enumerate(block.body.splitlines()):
            if block.lang == "console" and not pending:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not pending:
                start = block.line + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command, pending = (pending + line).strip(), ""
            if command and not command.startswith("#"):
                out.append((start, command))
    return out


def not_run_blocks(text: str) -> list[Block]:
    return [b for b in blocks(text) if b.not_run is not None]


@pytest.mark.parametrize("page", doc_pages(), ids=page_id)
def test_python_blocks_of_the_page_run(page, tmp_path, monkeypatch):
    if (runner := own_test(page)) is not None:
        pytest.skip(f"{page_id(page)} runs in {runner}")
    if not python_blocks(page.read_text(encoding="utf-8")):
        pytest.skip(f"{page_id(page)} has no ```python blocks")
    monkeypatch.chdir(tmp_path)
    assert run_blocks(page) > 0


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\n```\nnot python\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x + 1\n")]
    marked = "<!-- not-run: needs a GPU -->\n```python\nz = 1\n```\n"
    assert python_blocks(marked) == [] and not_run_blocks(marked)[0].not_run == "needs a GPU"


def _fixtures(root: Path) -> None:
    """The checkpoints and files the documented commands name, as tiny models of the kind each
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
    shutil.copytree(ROOT / "examples", root / "examples")
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


@pytest.fixture(scope="module")
def fixture_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture checkpoints, made once per module (each page works on a copy)."""
    root = tmp_path_factory.mktemp("doc-fixtures")
    _fixtures(root)
    return root


def _run_line(command: str, line: str, cwd: Path) -> None:
    """A `reinit ...` line runs in process (after any VAR=value words); any other line runs
    through bash with this venv's `reinit` first on PATH. Either must exit 0."""
    words = shlex.split(command, comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words and words[0] == "reinit":
        res = run(*words[1:], env=env)
        assert res.exit_code == 0, f"{line}: {command}\n{res.output}"
        return
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    pythonpath = os.pathsep.join([str(ROOT), str(cwd), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": path, "PYTHONPATH": pythonpath},
    )  # fmt: skip
    assert proc.returncode == 0, f"{line}: {command}\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("page", doc_pages(), ids=page_id)
def test_shell_blocks_of_the_page_run(page, fixture_folder, tmp_path, monkeypatch):
    """Every command of the page's shell blocks runs as written, in order, in a copy of the
    fixture folder, and exits 0; blocks marked not-run are counted and say why."""
    if (runner := own_test(page)) is not None:
        pytest.skip(f"{page_id(page)} runs in {runner}")
    text = page.read_text(encoding="utf-8")
    commands = shell_commands(text)
    skipped = not_run_blocks(text)
    if not commands:
        pytest.skip(f"{page_id(page)}: no shell commands ({len(skipped)} blocks marked not-run)")
    work = tmp_path / "work"
    shutil.copytree(fixture_folder, work, symlinks=True)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))  # `mypkg.nets:MLP` as a user's own package
    for line, command in commands:
        _run_line(command, f"{page_id(page)} line {line}", work)


def test_not_run_blocks_say_why_and_are_counted():
    """Each block that does not run names its reason; the README's and the guides' runnable
    commands far outnumber them."""
    ran, skipped = 0, []
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        ran += len(shell_commands(text)) + len(python_blocks(text))
        for block in not_run_blocks(text):
            assert len(block.not_run or "") >= 10, f"{page_id(page)} line {block.line}"
            skipped.append((page_id(page), block.line, block.not_run))
    assert ran >= 40 and len(skipped) <= ran // 4, (ran, skipped)


def test_the_readme_recipe_is_the_example_file():
    """README's ```yaml block is examples/gpt2-init.yaml as it is (tests/test_examples.py
    runs that file)."""
    (yaml_block,) = [b for b in blocks(README.read_text(encoding="utf-8")) if b.lang == "yaml"]
    body = "".join(ln + "\n" for ln in yaml_block.body.splitlines() if not ln.startswith("# "))
    assert body in (ROOT / "examples" / "gpt2-init.yaml").read_text(encoding="utf-8")


def test_the_recipes_page_yaml_recipe_runs(fixture_folder, tmp_path, monkeypatch):
    """The ```yaml recipe of docs/guide/recipes.md, run as a file on the GPT-2 checkpoints."""
    page = GUIDE / "recipes.md"
    (yaml_block,) = [b for b in blocks(page.read_text(encoding="utf-8")) if b.lang == "yaml"]
    work = tmp_path / "work"
    shutil.copytree(fixture_folder, work, symlinks=True)
    monkeypatch.chdir(work)
    (work / "doc-recipe.yaml").write_text(yaml_block.body)
    env = {"MODEL": "new", "OLD": "old", "OLD_VOCAB": "50257"}
    res = run("run", "doc-recipe.yaml", "-q", env=env)
    assert res.exit_code == 0, f"recipes.md yaml recipe\n{res.output}"
    assert (work / "model-init" / "model.safetensors").is_file()
    assert (work / "init.report.md").is_file()


def test_shell_command_extraction():
    text = "```\nreinit a \\\n  --b c   # note\n\nX=1 reinit d\n```\n```python\nnot = 1\n```\n"
    assert shell_commands(text) == [(2, "reinit a    --b c   # note"), (5, "X=1 reinit d")]
    console = "```console\n$ reinit e\noutput line\n```\n<!-- not-run: needs torchrun -->\n```bash\ntorchrun x\n```\n"
    assert shell_commands(console) == [(2, "reinit e")]
