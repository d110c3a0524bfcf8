"""Row names for `from(SRC, rows=tokens|labels, ...)` (issue 15, docs/guide/transplant.md): a tokenizer's
token -> id, read as a plain file (no tokenizers library), and a config's label -> id.

Tokenizer files:

- `tokenizer.json` (the `tokenizers` library's file): `model.vocab` as a dict token -> id (BPE,
  WordPiece, WordLevel) or a list of `[token, score]` whose index is the id (Unigram), then
  `added_tokens` (`{"id", "content"}`), which win over the model's vocab;
- `vocab.txt` (BERT's WordPiece): one token per line, the id is the line number (as
  transformers' `load_vocab`: lines split by universal newlines, the `\\n` stripped);
- `vocab.json` (GPT-2's slow tokenizer): a JSON dict token -> id.

When `vocab=`/`src_vocab=` is not given, the file is looked for in the model folder (or beside
the weight file), in that order: tokenizer.json, vocab.txt, vocab.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reinit.errors import TransplantError
from reinit.io.checkpoint import Checkpoint, read_config_file
from reinit.io.confine import require_regular
from reinit.transforms.rows import RowNames

__all__ = [
    "VOCAB_FILES",
    "find_vocab",
    "labels_of",
    "read_vocab",
    "row_names",
]

VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def _bad(path: Path, why: str) -> TransplantError:
    return TransplantError(
        f"vocab file {path}: {why}; give a tokenizer.json, vocab.txt (one token per line) or "
        "vocab.json (token -> id)"
    )


def _int_id(path: Path, token: object, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(path, f"token {token!r} has id {value!r}, not a non-negative integer")
    return value


def _from_json(path: Path, data: Any) -> dict[str, int]:
    if not isinstance(data, dict):
        raise _bad(path, "not a JSON object")
    if "model" not in data:  # vocab.json: token -> id
        return {str(k): _int_id(path, k, v) for k, v in data.items()}
    model = data["model"]
    vocab = model.get("vocab") if isinstance(model, dict) else None
    out: dict[str, int] = {}
    if isinstance(vocab, dict):
        out = {str(k): _int_id(path, k, v) for k, v in vocab.items()}
    elif isinstance(vocab, list):
        for i, item in enumerate(vocab):
            if not isinstance(item, (list, tuple)) or not item or not isinstance(item[0], str):
                raise _bad(path, f"model.vocab[{i}] is not a [token, score] pair")
            out[item[0]] = i
    else:
        raise _bad(path, "its model has no vocab (a dict token -> id or a list of [token, score])")
    for j, added in enumerate(data.get("added_tokens") or []):
        if not isinstance(added, dict) or not isinstance(added.get("content"), str):
            raise _bad(path, f"added_tokens[{j}] has no content")
        out[added["content"]] = _int_id(path, added["content"], added.get("id"))
    return out


def read_vocab(path: str | Path) -> dict[str, int]:
    """token -> id of a tokenizer file (see the module doc)."""
    p = Path(path)
    if not p.is_file():
        raise TransplantError(
            f"vocab file {p} not found; give vocab=PATH / src_vocab=PATH to a tokenizer.json, "
            "vocab.txt or vocab.json"
        )
    require_regular(p, "vocab file")
    try:
        with open(p, encoding="utf-8") as f:  # universal newlines, as transformers reads it
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(p, f"cannot be read as UTF-8 text ({e.__class__.__name__})") from None
    if p.suffix == ".json":
        try:
            data = json.loads("".join(lines))
        except json.JSONDecodeError as e:
            raise _bad(p, f"not valid JSON ({e.msg} at line {e.lineno})") from None
        out = _from_json(p, data)
    else:
        out = {line.rstrip("\n"): index for index, line in enumerate(lines)}
    if not out:
        raise _bad(p, "it holds no tokens")
    return out


def find_vocab(ck: Checkpoint, source: str) -> Path | None:
    """The tokenizer file of a checkpoint: in its folder (local or a Hub repo: fetched) or
    beside a single weight file; None when there is none."""
    extras = set(ck.extra_files())
    for name in VOCAB_FILES:
        if name in extras:
            return ck.fetch_extra(name)
    here = Path(source)
    if here.is_file():
        for name in VOCAB_FILES:
            candidate = here.parent / name
            if candidate.is_file():
                return candidate
    return None


def labels_of(config: Mapping[str, Any] | None, where: str, what: str) -> dict[str, int]:
    """label -> class index from a config's `id2label` (keys are the indices as strings)."""
    raw = (config or {}).get("id2label")
    if not isinstance(raw, dict) or not raw:
        raise TransplantError(
            f"{where}: rows=labels needs id2label in the {what}'s config.json; none found"
        )
    out: dict[str, int] = {}
    for key, label in raw.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise TransplantError(
                f"{where}: the {what}'s id2label has key {key!r}, not a class index"
            ) from None
        if not isinstance(label, str):
            raise TransplantError(f"{where}: the {what}'s id2label[{key}] is not a string")
        if label in out:
            raise TransplantError(
                f"{where}: the {what}'s id2label names {label!r} twice (classes {out[label]} and "
                f"{index}); rows=labels needs distinct class names"
            )
        out[label] = index
    return out


def _vocab_path(given: str | None, ck: Checkpoint, what: str, flag: str, where: str) -> Path:
    if given:
        return Path(given)
    found = find_vocab(ck, ck.source)
    if found is None:
        raise TransplantError(
            f"{where}: rows=tokens found no tokenizer file ({', '.join(VOCAB_FILES)}) in or "
            f"beside the {what} {ck.source}; pass {flag}=PATH"
        )
    return found


def _config_at(path: str, where: str) -> Mapping[str, Any]:
    """A config.json named by `vocab=`/`src_vocab=` for `rows=labels`."""
    p = Path(path)
    if not p.is_file():
        raise TransplantError(
            f"{where}: config file {p} not found (rows=labels reads its id2label)"
        )
    require_regular(p, "config file")
    config = read_config_file(p)
    if config is None:
        raise TransplantError(f"{where}: {p} is not a JSON object (rows=labels reads its id2label)")
    return config


def row_names(
    kind: str,
    source: Checkpoint,
    target: Checkpoint,
    *,
    vocab: str | None,
    src_vocab: str | None,
    where: str,
) -> RowNames:
    """The source's and the target's row names for `rows=tokens|labels`: tokens
    from the two tokenizer files (given, or found in/beside each checkpoint), labels from the
    `id2label` of each checkpoint's config.json (or of the config files `vocab=`/`src_vocab=`
    name)."""
    if kind == "labels":
        src_config = _config_at(src_vocab, where) if src_vocab else source.config()
        tgt_config = _config_at(vocab, where) if vocab else target.config()
        return RowNames(
            labels_of(src_config, where, "source"),
            labels_of(tgt_config, where, "target"),
            "by class name (id2label)",
        )
    sp = _vocab_path(src_vocab, source, "source", "src_vocab", where)
    tp = _vocab_path(vocab, target, "target", "vocab", where)
    how = f"by token ({sp.parent.name}/{sp.name} -> {tp.parent.name}/{tp.name})"
    return RowNames(read_vocab(sp), read_vocab(tp), how)
