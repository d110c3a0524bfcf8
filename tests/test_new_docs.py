"""docs/guide/new-from-config.md runs: every ```bash command (a `reinit ...` line) exits 0,
every ```yaml block is written to the file its first comment names, every ```python block
runs, in one fresh directory holding the tiny models the page names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from helpers import run

PAGE = Path(__file__).parents[1] / "docs" / "guide" / "new-from-config.md"
_BLOCK = re.compile(r"^```(\w+)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

transformers = pytest.importorskip("transformers")


def blocks(lang: str) -> list[str]:
    return [body for kind, body in _BLOCK.findall(PAGE.read_text()) if kind == lang]


def commands(body: str) -> list[str]:
    """The command lines of a shell block, backslash continuations joined."""
    return [c.strip() for c in body.replace("\\\n", " ").splitlines() if c.strip()]


def _fixtures(root: Path) -> None:
    def llama(layers: int, **kw: object) -> object:
        return transformers.LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
            bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"], **kw,
        )  # fmt: skip

    llama(4).save_pretrained(root / "llama-config")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(llama(32)).save_pretrained(root / "llama-32")
    llama(48).save_pretrained(root / "llama-48-config")
    body = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=24, max_position_embeddings=32)  # fmt: skip
    transformers.BertModel(transformers.BertConfig(**body)).save_pretrained(root / "bert-base")
    transformers.BertConfig(
        **body, num_labels=3, architectures=["BertForSequenceClassification"]
    ).save_pretrained(root / "clf-config")


def test_the_pages_examples_run(tmp_path, monkeypatch):
    _fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    for body in blocks("yaml"):
        name = body.splitlines()[0].removeprefix("#").strip()
        (tmp_path / name).write_text(body)
    ran = 0
    for body in blocks("bash"):
        for command in commands(body):
            argv = shlex.split(command)
            assert argv[0] == "reinit", command
            res = run(*argv[1:], "-q") if "--dry-run" not in argv else run(*argv[1:])
            assert res.exit_code == 0, (command, res.output)
            ran += 1
    assert ran >= 7
    for body in blocks("python"):
        exec(compile(body, str(PAGE), "exec"), {"__name__": "__docs__"})
    # the SOLAR example: layers 24-47 are layers 8-31 of the source, byte for byte
    from safetensors.torch import load_file

    src = load_file(tmp_path / "llama-32" / "model.safetensors")
    up = load_file(tmp_path / "llama-48-up" / "model.safetensors")
    for name, t in up.items():
        parts = name.split(".")
        if parts[1] == "layers" and int(parts[2]) >= 24:
            parts[2] = str(int(parts[2]) - 16)
        assert torch.equal(t, src[".".join(parts)]), name
    bf16 = load_file(tmp_path / "llama-bf16" / "model.safetensors")
    assert {t.dtype for t in bf16.values()} == {torch.bfloat16}
