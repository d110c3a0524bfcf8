"""The output's `config.json` follows the surgery (issue 14 item 1; docs/guide/surgery.md,
"config.json follows the surgery").

Why: after `--add classifier.weight=[3,H]` or `--drop "encoder.layer.1.*"` the weights no longer
match the source's config.json, and loading the output fails on a size mismatch or builds the
wrong model. These pure functions take the source config, the output's tensor shapes and the
user's `--config KEY=VALUE` / `--labels a,b,c` and return the new config and one note per field
changed, so `run/apply.py` writes config.json from the dict instead of copying the stale one.

Fields the surgery implies (each only when the config has a different value):
- `vocab_size`: the rows of the word-embedding tensor (`word_embeddings`, `embed_tokens`, `wte`,
  `shared`), when the config has a `vocab_size`;
- `num_labels`, `id2label`, `label2id`: the rows of the classifier head (`classifier`, `score`,
  `classifier.out_proj`), names from `--labels` (else `LABEL_i`, as transformers names them);
- `max_position_embeddings` (or `n_positions`, whichever the config has): the rows of
  the learned position table (`position_embeddings.weight`, GPT-2's `wpe.weight`, CLIP text's
  `position_embedding.weight`), less the 2 rows BART-style tables (`embed_positions.weight` of
  BART, mBART, OPT, ...) keep before position 0; a vision config's (`image_size` and
  `patch_size`: ViT, CLIP vision) `image_size` instead: its patch grid is the table's positions
  after the class token; each in its own section of a composite config (CLIP's `vision_config`,
  `text_config`); a note where no value can describe the tables;
- `num_hidden_layers` (or `n_layer`/`num_layers`, whichever the config has): how many layer
  indices (`layer.N.`, `layers.N.`, `h.N.`, `block.N.`) the output holds, and the per-layer
  `layer_types` list (Qwen2/3, Gemma 2/3) one entry per layer, which transformers checks;
  an encoder-decoder's stacks each by its own key (T5's `num_layers` / `num_decoder_layers`,
  BART's `encoder_layers` / `decoder_layers`);
- `num_local_experts` (or `num_experts` / `n_routed_experts` / `moe_num_experts`): the experts
  per MoE layer, from the per-expert tensors (or dim 0 of stacked ones: GPT-OSS, Llama 4); notes where no count fits (uneven layers, gaps, a
  router tensor's expert axis: its weight's rows, a sigmoid router's per-expert bias);
- `dtype` (and `torch_dtype`, the name before transformers 5, where the config has it): the
  output's `--dtype`, which `from_pretrained` builds the model in.
`architectures` is never guessed: set it with `--config 'architectures=["..."]'`. `--config`
values are applied last, so they win over the implied ones."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from reinit.errors import UsageError
from reinit.io.jsonfile import json_depth_ok
from reinit.limits import MAX_JSON_DEPTH
from reinit.planning.routers import expert_axis, router_block
from reinit.run.config_positions import follow_positions
from reinit.text import shown

__all__ = [
    "ConfigUpdate",
    "config_for",
    "labels_list",
    "parse_config_set",
    "stale_file",
    "update_config",
]

_EMBED = re.compile(r"(?:^|\.)(?:word_embeddings|embed_tokens|wte|shared)\.weight$")
_HEAD = re.compile(r"(?:^|\.)(?:classifier|score)(?:\.out_proj)?\.weight$")
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_PER_LAYER = ("layer_types",)
_DTYPE_KEYS = ("dtype", "torch_dtype")


@dataclass(frozen=True)
class ConfigUpdate:
    """The new config, one note per field changed, and whether anything changed."""

    config: dict[str, object]
    notes: tuple[str, ...]
    changed: bool


def parse_config_set(items: Sequence[str]) -> tuple[tuple[str, object], ...]:
    """`KEY=VALUE` strings (VALUE as JSON) as (key, value) pairs; a bad item is a UsageError
    (exit 2) before any work."""
    out: list[tuple[str, object]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(
                f"--config {item!r}: expected KEY=VALUE with a JSON value "
                "(e.g. --config 'architectures=[\"BertForSequenceClassification\"]')"
            )
        value = _config_value(key, text)
        out.append((key, value))
    return tuple(out)


def _config_value(key: str, text: str) -> object:
    """`--config KEY=TEXT`'s value: standard JSON (no NaN, Infinity or a number that
    overflows to one: config.json must stay readable by any JSON parser), at most
    `MAX_JSON_DEPTH` deep."""
    where = f"--config {shown(key)[:80]}"

    def no_constant(name: str) -> object:
        raise UsageError(f"{where}: {name} is not a JSON number; give a finite number")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise UsageError(
            f"{where}: the value nests more than {MAX_JSON_DEPTH} levels deep"
        ) from None
    except ValueError:
        short = text if len(text) <= 60 else text[:60] + "..."
        raise UsageError(
            f"{where}: {short!r} is not a JSON value; quote a string as JSON "
            f"(--config '{key}=\"{short}\"')"
        ) from None
    if not json_depth_ok(value):
        raise UsageError(f"{where}: the value nests more than {MAX_JSON_DEPTH} levels deep")
    if not _all_finite(value):
        raise UsageError(f"{where}: a number overflows to infinity; give a finite number")
    return value


def _all_finite(value: object) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def labels_list(labels: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`--labels a,b,c` (or a list of names) as a tuple; None when not given."""
    if labels is None:
        return None
    names = labels.split(",") if isinstance(labels, str) else list(labels)
    names = [n.strip() for n in names]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise UsageError(f"--labels {labels!r}: give distinct, non-empty names (e.g. neg,neu,pos)")
    return tuple(names)


def _rows(shapes: Mapping[str, Sequence[int]], pattern: re.Pattern[str]) -> int | None:
    rows = {s[0] for n, s in shapes.items() if pattern.search(n) and len(s) == 2}
    return rows.pop() if len(rows) == 1 else None


def _label_count(config: Mapping[str, object]) -> int:
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping):
        return len(id2label)
    n = config.get("num_labels")
    return n if isinstance(n, int) else 2  # transformers' default


def _renumber_hint(names: Iterable[str]) -> str:
    """A `--rename` the CLI takes that moves the first layer out of place to its place:
    `'model.layers.2.*=model.layers.1.{1}'` for indices 0, 2."""
    found = {int(m.group(1)): n[: m.start(1)] for n in names for m in [_LAYER.search(n)] if m}
    order = sorted(found)
    index = next(i for pos, i in enumerate(order) if i != pos)
    prefix = found[index]
    return f"--rename '{prefix}{index}.*={prefix}{order.index(index)}.{{1}}'"


def _follow_per_layer(config: dict[str, object], indices: set[int]) -> list[str]:
    """Make each per-layer list (`layer_types`: Qwen2/3, Gemma 2/3; transformers refuses a
    config whose list is not `num_hidden_layers` long) one entry per output layer, in place; one
    note per list changed. A list of one value keeps it; a mixed one keeps the entries of the
    output's layer indices (by index: a layer renumbered by --rename takes its new index's
    entry); one that cannot say (an index past its end) is left, with a note."""
    notes: list[str] = []
    for key in _PER_LAYER:
        old = config.get(key)
        if not isinstance(old, list) or not old or len(old) == len(indices):
            continue
        if len({json.dumps(v, sort_keys=True) for v in old}) == 1:
            value, why = [old[0]] * len(indices), "one entry per layer, as before"
        elif max(indices) < len(old):
            value = [old[i] for i in sorted(indices)]
            why = (
                "kept by layer index; if --rename renumbered layers, set it with "
                f"--config '{key}=[...]'"
            )
        else:
            notes.append(
                f"config.json: {key} has {len(old)} entries for {len(indices)} layers and "
                f"cannot say which the new ones are: transformers will not load it; set it with "
                f"--config '{key}=[...]'"
            )
            continue
        config[key] = value
        notes.append(f"config.json: {key} {len(old)} -> {len(value)} entries ({why})")
    return notes


_Put = Callable[[str, object, str], None]


def _follow_head(
    new: dict[str, object],
    shapes: Mapping[str, Sequence[int]],
    labels: tuple[str, ...] | None,
    put: _Put,
    notes: list[str],
) -> None:
    """`num_labels`, `id2label`, `label2id` from the classifier head's rows (`--labels` names
    them); with their notes (`put`'s and `notes`)."""
    head = _rows(shapes, _HEAD)
    if labels is not None and head is not None and len(labels) != head:
        raise UsageError(
            f"--labels names {len(labels)} labels but the classifier head has {head} rows; "
            "give one name per row"
        )
    if head is not None and (head != _label_count(new) or labels is not None):
        names = labels or tuple(f"LABEL_{i}" for i in range(head))
        why = f"the classifier head's {head} rows"
        if _label_count(new) != head:
            notes.append(f"config.json: num_labels {_label_count(new)} -> {head} ({why})")
        if "num_labels" in new:  # transformers reads the count from id2label; keep them equal
            new["num_labels"] = head
        put("id2label", {str(i): n for i, n in enumerate(names)}, why)
        put("label2id", {n: i for i, n in enumerate(names)}, why)
    elif labels is not None:
        raise UsageError(
            "--labels: the output has no classifier head (classifier.weight, score.weight) "
            "whose rows the names would label"
        )


#: A layer stack's own count in an encoder-decoder config (T5: `num_layers` for the encoder and
#: `num_decoder_layers`; BART, Whisper, Marian: `encoder_layers`, `decoder_layers`). A stack
#: whose key the config lacks (BERT's `encoder.layer.N`, OPT's `decoder.layers.N`) is counted
#: under the model's one layer count (`_LAYER_KEYS`).
_STACK_KEYS = {
    "encoder": ("encoder_layers", "num_encoder_layers"),
    "decoder": ("num_decoder_layers", "decoder_layers"),
}


def _stack(name: str, start: int) -> str:
    """`encoder`, `decoder` or "" by the last such segment before the layer index."""
    segments = name[:start].split(".")
    return next((s for s in reversed(segments) if s in _STACK_KEYS), "")


def _layer_groups(new: Mapping[str, object], names: Iterable[str]) -> dict[str, list[str]]:
    """The output's layered tensor names by the config key that counts their layers."""
    groups: dict[str, list[str]] = {}
    for n in names:
        m = _LAYER.search(n)
        if m is None:
            continue
        own = _STACK_KEYS.get(_stack(n, m.start(1)), ())
        key = next((k for k in (*own, *_LAYER_KEYS) if k in new), None)
        if key is not None:
            groups.setdefault(key, []).append(n)
    return groups


def _follow_layers(
    new: dict[str, object], shapes: Mapping[str, Sequence[int]], put: _Put, notes: list[str]
) -> None:
    """Each layer count (and per-layer lists) from the layer indices the output holds, stack by
    stack (an encoder-decoder's own keys), with their notes (`put`'s and `notes`)."""
    for key, names in _layer_groups(new, shapes).items():
        indices = {int(m.group(1)) for n in names for m in [_LAYER.search(n)] if m}
        put(key, len(indices), "layer indices present in the output")
        if key in _LAYER_KEYS:
            notes.extend(_follow_per_layer(new, indices))
        if indices != set(range(len(indices))):
            notes.append(
                f"layer indices {sorted(indices)} are not 0..{len(indices) - 1}: transformers "
                f"will not load them; renumber with --rename (e.g. {_renumber_hint(names)})"
            )


_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)\.")
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _experts_by_layer(names: Iterable[str]) -> dict[str, set[int]]:
    """Per-expert tensor names (`...experts.3.w1.weight`) as each layer's expert indices, by
    the name's part before `experts.N.`."""
    layers: dict[str, set[int]] = {}
    for n in names:
        m = _EXPERT.search(n)
        if m is not None:
            layers.setdefault(n[: m.start(1)], set()).add(int(m.group(1)))
    return layers


# A stacked experts parameter as transformers 5 saves it for GPT-OSS and Llama 4
# (`...mlp.experts.gate_up_proj` [E, H, 2I], `...experts.down_proj_bias` [E, H]): one
# parameter of the experts module, the experts along dim 0.
_STACKED = re.compile(r"(?:^|\.)(experts\.)[A-Za-z_]\w*$")


def _stacked_by_layer(shapes: Mapping[str, Sequence[int]], notes: list[str]) -> dict[str, set[int]]:
    """Where no tensor is one expert's, the stacked experts parameters as each layer's expert
    indices (0..E-1, E their dim 0), by the name's part up to `experts.`; none, with a note,
    where one layer's stacked parameters differ in E (one was resized, not the others)."""
    sizes: dict[str, set[int]] = {}
    for n, shape in shapes.items():
        m = _STACKED.search(n)
        if m is not None and len(shape) >= 2:
            sizes.setdefault(n[: m.end(1)], set()).add(shape[0])
    for prefix, found in sizes.items():
        if len(found) > 1:
            notes.append(
                f"config.json: the stacked experts of '{prefix}*' hold {sorted(found)} experts "
                "(dim 0): transformers will not load them; resize them together"
            )
            return {}
    return {p: set(range(next(iter(e)))) for p, e in sizes.items()}


def _follow_experts(
    new: dict[str, object], shapes: Mapping[str, Sequence[int]], put: _Put, notes: list[str]
) -> None:
    """The expert count (`num_local_experts`, `num_experts`, `n_routed_experts`,
    `moe_num_experts`, whichever the config has) from the per-expert tensors each MoE layer
    holds; a note where no count can describe them (layers with different counts, indices not
    0..n-1, a router tensor not of the count)."""
    keys = [k for k in _EXPERT_KEYS if isinstance(new.get(k), int)]
    layers = _experts_by_layer(shapes) or _stacked_by_layer(shapes, notes) if keys else {}
    if not layers:
        return
    counts = {len(v) for v in layers.values()}
    if len(counts) > 1:
        notes.append(
            f"config.json: the experts per layer differ ({sorted(counts)}): transformers "
            "builds every MoE layer with one expert count and will not load this"
        )
        return
    count = next(iter(counts))
    for k in keys:
        put(k, count, "experts per MoE layer")
    notes.extend(_router_notes(shapes, layers, count))
    gaps = [(p, i) for p, i in layers.items() if i != set(range(len(i)))]
    if gaps:
        prefix, indices = gaps[0]
        notes.append(
            f"expert indices {sorted(indices)} are not 0..{len(indices) - 1}: transformers "
            f"will not load them; renumber with --rename (e.g. {_expert_hint(prefix, indices)}), "
            "and give the router the kept experts' rows (row i routes to expert i)"
        )


def _router_notes(
    shapes: Mapping[str, Sequence[int]], layers: Mapping[str, set[int]], count: int
) -> list[str]:
    """A note for the first router tensor of each kind (`...block_sparse_moe.gate.weight`: one
    row per expert; `...mlp.gate.e_score_correction_bias`: one entry) whose expert axis is not
    the layer's expert count, with the `--resize` that fits it."""
    notes: dict[str, str] = {}
    for name, shape in shapes.items():
        block = router_block(name, len(shape))
        kept = layers.get(f"{block}experts.") if block is not None else None
        rest = name[len(block or "") :]
        if kept is None or rest in notes:
            continue
        axis = expert_axis(rest, len(shape))
        if shape[axis] != count:
            notes[rest] = _router_note(name, shape, axis, sorted(kept))
    return list(notes.values())


def _router_note(name: str, shape: Sequence[int], axis: int, kept: list[int]) -> str:
    """`NAME has 4 rows for 3 experts: ...; resize ... (--resize 'NAME=[3,*]')`; where the
    kept experts are not the first ones (a middle one dropped), no `--resize`: it keeps the
    first rows, so a renumbered expert would be routed by a dropped expert's row."""
    what = "columns" if axis else ("rows" if len(shape) == 2 else "entries")
    count = len(kept)
    if kept != list(range(count)):
        return (
            f"{name} has {shape[axis]} {what} for experts {kept}: transformers will not load "
            f"it; its {what} follow the expert indices, so it needs {what} {kept}, not the "
            f"first {count} that --resize keeps (a renumbered expert would be routed by a "
            f"dropped expert's {what[:-1]}): re-initialize the router after its --resize, or "
            f"drop the last experts instead"
        )
    fit = ["*"] * len(shape)
    fit[axis] = str(count)
    return (
        f"{name} has {shape[axis]} {what} for {count} experts: transformers will not "
        f"load it; resize each layer's router too (--resize '{name}=[{','.join(fit)}]')"
    )


def _expert_hint(prefix: str, indices: set[int]) -> str:
    """A `--rename` that moves the first expert out of place to the first free index, in every
    layer: `'model.layers.*.mlp.experts.3.*=model.layers.{1}.mlp.experts.2.{2}'`."""
    first = min(indices - set(range(len(indices))))
    free = min(set(range(len(indices))) - indices)
    m = _LAYER.search(prefix)
    if m is None:
        return f"--rename '{prefix}{first}.*={prefix}{free}.{{1}}'"
    head, tail = prefix[: m.start(1)], prefix[m.end(1) :]
    return f"--rename '{head}*{tail}{first}.*={head}{{1}}{tail}{free}.{{2}}'"


def update_config(
    config: Mapping[str, object] | None,
    shapes: Mapping[str, Sequence[int]],
    config_set: Sequence[tuple[str, object]] = (),
    labels: tuple[str, ...] | None = None,
    dtype: str | None = None,
) -> ConfigUpdate:
    """The config the output's weights imply (see the module docstring), then `config_set`.
    `shapes`: every output tensor's name and shape; `dtype`: `--dtype`'s name, if given."""
    new: dict[str, object] = dict(config or {})
    notes: list[str] = []

    def put(key: str, value: object, why: str) -> None:
        if new.get(key) != value:
            old = new.get(key, "unset")
            new[key] = value
            notes.append(f"config.json: {key} {old} -> {json.dumps(value)} ({why})")

    vocab = _rows(shapes, _EMBED)
    if vocab is not None and "vocab_size" in new:
        put("vocab_size", vocab, "rows of the word embeddings")
    notes.extend(follow_positions(new, shapes))
    _follow_head(new, shapes, labels, put, notes)
    _follow_layers(new, shapes, put, notes)
    _follow_experts(new, shapes, put, notes)
    if dtype is not None:
        for k in [k for k in _DTYPE_KEYS if k in new] or [_DTYPE_KEYS[0]]:
            put(k, dtype, "--dtype")
    for k, value in config_set:
        if new.get(k) != value:
            new[k] = value
            notes.append(f"config.json: {k} = {json.dumps(value)} (--config)")
    if vocab is not None and vocab != (config or {}).get("vocab_size"):
        notes.extend(_tokens_outside(new, vocab))
    return ConfigUpdate(new, tuple(notes), new != dict(config or {}))


def _tokens_outside(config: Mapping[str, object], vocab: int) -> list[str]:
    """A note per top-level `*_token_id` a vocabulary cut to `vocab` rows no longer holds
    (transformers warns of it at every load, and generation would index past the embedding):
    the value to set with `--config`."""
    return [
        f"config.json: {k} {v} is outside the {vocab} rows of the word embeddings; set it "
        f"with --config '{k}=N' (N < {vocab}) or null"
        for k, v in config.items()
        if k.endswith("_token_id")
        and isinstance(v, int)
        and not isinstance(v, bool)
        and not 0 <= v < vocab
    ]


def config_for(
    fmt: str,
    source_config: Callable[[], Mapping[str, object] | None],
    shapes: Mapping[str, Sequence[int]],
    config_set: Sequence[tuple[str, object]],
    labels: tuple[str, ...] | None,
    surgery: bool,
    dtype: str | None = None,
) -> tuple[list[str], str | None]:
    """The notes and the text of the output's config.json, or None to leave it as it is
    (copied from a source folder, or not written beside a file output). A folder's (`fmt`
    "directory") config follows the surgery (`surgery`: this run's, or a recipe's earlier
    step's) and its `--dtype` (`dtype`); a file output gets one only when --config or
    --labels asks."""
    asked = bool(config_set) or labels is not None
    if not (asked or (fmt == "directory" and (surgery or dtype is not None))):
        return [], None
    base = source_config()
    if base is None and not asked:
        return [], None
    update = update_config(base, shapes, config_set, labels, dtype if fmt == "directory" else None)
    if not update.changed and fmt == "directory":
        return list(update.notes), None
    return list(update.notes), json.dumps(update.config, indent=2) + "\n"


_STALE = re.compile(r"(?:^|/)(?:reinit-report\.json|[^/]*\.report\.(?:json|csv|md)|README\.md)$")


def stale_file(relname: str) -> bool:
    """Whether a source folder's file describes the source's weights, not the output's: our own
    reports (`reinit-report.json`, `*.report.json/csv/md`) and the model card (`README.md`).
    A directory output does not copy them (a note names each): a card or report beside the
    new weights would claim numbers and results those weights never had."""
    return _STALE.search(relname) is not None
