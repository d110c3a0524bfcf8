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

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reinit.errors import TransplantError
from reinit.io.checkpoint import Checkpoint
from reinit.io.formats import DuplicateKey, no_duplicate_keys
from reinit.io.jsonfile import parse_json, read_json_file, read_text_file
from reinit.limits import MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES
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
            _put(path, out, item[0], i, f"model.vocab[{i}]")
    else:
        raise _bad(path, "its model has no vocab (a dict token -> id or a list of [token, score])")
    for j, added in enumerate(data.get("added_tokens") or []):
        if not isinstance(added, dict) or not isinstance(added.get("content"), str):
            raise _bad(path, f"added_tokens[{j}] has no content")
        token = added["content"]
        new_id = _int_id(path, token, added.get("id"))
        if token in out and out[token] != new_id:  # the same id again is the usual restatement
            raise _duplicate(path, token, f"id {out[token]} and added_tokens[{j}] id {new_id}")
        out[token] = new_id
    return out


def _duplicate(path: Path, token: str, where: str) -> TransplantError:
    shown_token = token if len(token) <= 60 else token[:57] + "..."
    return _bad(path, f"token {shown_token!r} is listed twice ({where}), so its row is ambiguous")


def _put(path: Path, out: dict[str, int], token: str, token_id: int, where: str) -> None:
    if token in out:
        raise _duplicate(path, token, f"id {out[token]} and {where}")
    out[token] = token_id


def read_vocab(path: str | Path) -> dict[str, int]:
    """token -> id of a tokenizer file (see the module doc)."""
    p = Path(path)
    if not p.exists():
        raise TransplantError(
            f"vocab file {p} not found; give vocab=PATH / src_vocab=PATH to a tokenizer.json, "
            "vocab.txt or vocab.json"
        )
    text = read_text_file(p, f"vocab file {p}", MAX_TOKENIZER_BYTES, TransplantError)
    if p.suffix == ".json":
        try:
            data = parse_json(text, f"vocab file {p}", TransplantError, no_duplicate_keys)
        except DuplicateKey as d:
            raise _duplicate(p, d.key, "a JSON object names it twice") from None
        out = _from_json(p, data)
    else:  # universal newlines, as transformers reads it
        lines = io.StringIO(text.replace("\r\n", "\n").replace("\r", "\n")).readlines()
        out = {}
        for index, line in enumerate(lines):
            _put(p, out, line.rstrip("\n"), index, f"line {index + 1}")
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


def _vocab_label(path: Path, ck: Checkpoint, given: str | None) -> str:
    """A tokenizer file as the report names it: `folder/tokenizer.json`, or for one found in a
    Hub repo the repo's own name (`hf://acme/tok/tokenizer.json`), not the cache's snapshot
    folder (a commit hash)."""
    if not given and ck.source.startswith("hf://"):
        return f"{ck.source.rstrip('/')}/{path.name}"
    return f"{path.parent.name}/{path.name}"


def _config_at(path: str, where: str) -> Mapping[str, Any]:
    """A config.json named by `vocab=`/`src_vocab=` for `rows=labels`."""
    p = Path(path)
    if not p.exists():
        raise TransplantError(
            f"{where}: config file {p} not found (rows=labels reads its id2label)"
        )
    config = read_json_file(p, f"{where}: config file {p}", MAX_CONFIG_BYTES, TransplantError)
    if not isinstance(config, dict):
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
    target_labels: Sequence[str] | None = None,
) -> RowNames:
    """The source's and the target's row names for `rows=tokens|labels`: tokens
    from the two tokenizer files (given, or found in/beside each checkpoint), labels from the
    `id2label` of each checkpoint's config.json (or of the config files `vocab=`/`src_vocab=`
    name; `target_labels`: the output's class names, given by `--labels`, which win over the
    target's config.json)."""
    if kind == "labels":
        src_config = _config_at(src_vocab, where) if src_vocab else source.config()
        how = "by class name (id2label)"
        tgt_config: Mapping[str, Any] | None
        if vocab:
            tgt_config = _config_at(vocab, where)
        elif target_labels is not None:
            tgt_config = {"id2label": {str(i): n for i, n in enumerate(target_labels)}}
            how = "by class name (id2label; the target's from --labels)"
        else:
            tgt_config = target.config()
        return RowNames(
            labels_of(src_config, where, "source"), labels_of(tgt_config, where, "target"), how
        )
    sp = _vocab_path(src_vocab, source, "source", "src_vocab", where)
    tp = _vocab_path(vocab, target, "target", "vocab", where)
    how = f"by token ({_vocab_label(sp, source, src_vocab)} -> {_vocab_label(tp, target, vocab)})"
    return RowNames(read_vocab(sp), read_vocab(tp), how)
