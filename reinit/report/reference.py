"""Reference scale (docs/guide/report.md): the std a changed tensor would have by the model's own standard,
where it came from, and the `off_reference` flag when the tensor is far from it.

Why this exists: `std_off` compares a tensor with its own scheme's formula and `outlier` with
its siblings, so neither sees the commonest mistake: `*.weight=kaiming` on a BERT initialized
with N(0, 0.02) gives exactly what kaiming promises (no `std_off`), to every layer alike (no
`outlier`), yet 2.5-12x the model's own scale. The reference answers "does this match the
model's own scale?" from, in this order (the first that is known wins):

1. `model default`: with `--model`, the std of the architecture's own init of that tensor
   (the `default` scheme's values, drawn once per kind and shape);
2. `config initializer_range` (or `init_std`, its name in BART-like configs): the model
   config's init std, for >=2-D float weights that are not norms (the tensors HF models draw
   from N(0, initializer_range); biases and norm gains start constant);
3. `siblings median`: the median std of the untouched tensors of the same kind and shape.

A transplanted tensor is judged against its source, never the init scale: trained weights sit
at ~2x initializer_range by design. The run records the source tensor(s)' std (`source`): a
plain copy is on reference by definition, a transform (chunk/cat, resample, rows, adapt,
rotary) is judged against what it was made from. A transplant whose source std was not
recorded (a report read back) falls back to its siblings, then the init scale. The reference
follows the tensor, not its name, so renaming changes no judgement.

A config is used only when it can own the tensors: one whose hidden size appears in none of
their shapes (a BERT config.json beside a CNN) is set aside, and the report says so.

Everything here is pure except `model_default_std`, which draws the model's init."""

from __future__ import annotations

__all__ = [
    "CONFIG_KEYS",
    "MODEL_DEFAULT",
    "OWN_BEFORE",
    "PARTIAL",
    "REFERENCE_TOLERANCE",
    "RESIZED",
    "UNRECORDED",
    "NOT_RE_READ",
    "SIBLINGS",
    "SOURCE",
    "config_fits",
    "config_where",
    "init_scale",
    "reference_warnings",
    "ModelStd",
    "ReferenceBasis",
    "basis_for",
    "check_tolerance",
    "config_reference",
    "model_default_std",
    "off_reference",
    "reference_text",
    "sibling_medians",
    "with_references",
]

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from reinit.errors import ReinitError, SchemeError, UsageError
from reinit.report.entries import TensorEntry
from reinit.report.flags import is_norm, kind_of, std_tolerance
from reinit.report.stats import tensor_stats
from reinit.report.views import fmt

if TYPE_CHECKING:  # torch and the model only where a model's own init is drawn
    from reinit.io.checkpoint import Checkpoint
    from reinit.planning.model import ModelView

#: `off_reference` when the std is more than this factor above or below the reference.
REFERENCE_TOLERANCE = 2.0

MODEL_DEFAULT = "model default"

SIBLINGS = "siblings median"

SOURCE = "source"  # a transplant's reference: its source tensor(s)' std, recorded by the run

RESIZED = "before resize"  # a grown tensor's reference: its own std before --resize

#: A tensor a rule re-initialized only in part (`rows=`/`cols=`): the rest is kept, so it is
#: judged against its own std before, as a grown tensor is, never the init scale.
PARTIAL = "before partial re-init"

#: A tensor redrawn at its own scale (`normal_like`: its own mean and std as read): judged
#: against that std, never the init scale.
OWN_BEFORE = "its own std before"

#: `report --against`: a tensor that differs from the baseline though the output's recorded
#: rules and surgery do not change it (the baseline is not the input of the run that wrote it:
#: a recipe's or a chain's earlier step changed it). Nothing says what its scale should be, so it
#: has no reference std and is not judged `off_reference`.
UNRECORDED = "not in its record"

#: `report --against`: a transplant a transform made (chunk/cat, resample, rows, adapt,
#: rotary). Apply judged it against its source, which `report` does not re-read: it has no
#: reference std (never the init scale a trained source's values would be far from).
NOT_RE_READ = "source (not re-read)"

#: References the run records itself, which the tensor keeps whatever its name or siblings.
RECORDED = (SOURCE, RESIZED, PARTIAL, OWN_BEFORE)

#: The config keys that name a model's width, in the order they are tried.
WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim")

#: The config keys that hold a model's init std, in the order they are tried.
CONFIG_KEYS = ("initializer_range", "init_std")

#: The std of a tensor's own init by the model, or None where the model does not say.
ModelStd = Callable[[TensorEntry], float | None]

Ref = tuple[str, float]


@dataclass(frozen=True)
class ReferenceBasis:
    """What a run's references are drawn from: the model config (the checkpoint's, or the one
    passed as `config`), the model's own init (`--model`) and the `off_reference` tolerance."""

    config: Mapping[str, object] | None = None
    model_std: ModelStd | None = None
    tolerance: float = REFERENCE_TOLERANCE
    config_name: str = "config"  # where the config came from (`minilm/config.json`)


def check_tolerance(tolerance: float) -> float:
    """A tolerance is a factor >= 1 (2 = half to twice the reference); anything else is a
    usage error, refused before any work."""
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 1):
        raise UsageError(
            f"--reference-tolerance {tolerance!r}: give a factor of at least 1 (2 flags a std "
            "beyond half or twice the reference)"
        )
    return float(tolerance)


def config_reference(config: Mapping[str, object] | None, name: str = "config") -> Ref | None:
    """("config initializer_range", 0.02) from a config that holds a positive init std; with
    `name`, the file it came from (`("minilm/config.json initializer_range", 0.02)`)."""
    for key in CONFIG_KEYS:
        value = (config or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value) and value > 0:
            return f"{name} {key}", float(value)
    return None


def _width(config: Mapping[str, object]) -> int | None:
    for key in WIDTH_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def config_fits(config: Mapping[str, object] | None, entries: Sequence[TensorEntry]) -> bool:
    """Can this config's architecture own these tensors? Its width (`hidden_size`, `d_model`,
    …) must appear in the shape of at least one >=2-D float tensor. A config with no width
    key is given the benefit of the doubt."""
    if not config:
        return False
    width = _width(config)
    if width is None:
        return True
    return any(width in e.shape for e in entries if e.is_float and len(e.shape) >= 2)


def config_where(ckpt: object) -> str:
    """The config.json a checkpoint's config comes from, as the summary line names it: the
    folder's own or the one beside a single file (`minilm/config.json`, its folder's name
    only, so a report reads the same wherever it ran); `config` when the form does not say."""
    import os

    if getattr(ckpt, "kind", None) == "directory":
        folder = str(getattr(ckpt, "source", ""))
    elif isinstance(getattr(ckpt, "path", None), str):
        folder = os.path.dirname(os.path.abspath(str(getattr(ckpt, "path", ""))))
    else:
        return "config"
    base = os.path.basename(folder.rstrip("/"))
    return f"{base}/config.json" if base else "config.json"


def sibling_medians(entries: Sequence[TensorEntry]) -> dict[tuple[str, tuple[int, ...]], float]:
    """The median std of the untouched (kept) float tensors of each (kind, shape)."""
    groups: dict[tuple[str, tuple[int, ...]], list[float]] = defaultdict(list)
    for e in entries:
        if e.action == "kept" and e.is_float and e.after.std is not None and not e.after.nonfinite:
            groups[(kind_of(e.name), e.shape)].append(e.after.std)
    return {k: statistics.median(v) for k, v in groups.items()}


def with_references(
    entries: Sequence[TensorEntry], basis: ReferenceBasis | None = None
) -> tuple[TensorEntry, ...]:
    """Every changed float tensor with its `reference_std` and `reference` (see the module
    docstring for the order); the others unchanged. A tensor no source speaks for keeps None."""
    basis = basis or ReferenceBasis()
    fits = config_fits(basis.config, entries)
    from_config = config_reference(basis.config, basis.config_name) if fits else None
    medians = sibling_medians(entries)
    out = []
    for e in entries:
        if e.reference in RECORDED and e.reference_std is not None:
            out.append(e)  # the run recorded it (the source's std): it follows the tensor
            continue
        if e.reference in (UNRECORDED, NOT_RE_READ):
            out.append(e)  # nothing here to judge it by (no rule made it; a source not read)
            continue
        ref = _reference_for(e, from_config, medians, basis.model_std)
        if ref is None:
            out.append(_moved_note(e, basis.tolerance))
            continue
        out.append(replace(e, reference=ref[0], reference_std=ref[1]))
    return tuple(out)


def init_scale(
    entries: Sequence[TensorEntry], basis: ReferenceBasis | None = None
) -> Callable[[TensorEntry], float | None]:
    """The std each tensor would have at the model's own init: `--model`'s own init, else the
    config's init std (when the config fits these tensors) for >=2-D weights that are not
    norms; None where neither says (what `untrained` compares a tensor's scale with)."""
    basis = basis or ReferenceBasis()
    fits = config_fits(basis.config, entries)
    from_config = config_reference(basis.config, basis.config_name) if fits else None

    def scale(e: TensorEntry) -> float | None:
        own = basis.model_std(e) if basis.model_std is not None else None
        if own is not None:
            return own
        if from_config is not None and len(e.shape) >= 2 and not is_norm(e.name):
            return from_config[1]
        return None

    return scale


def _moved_note(e: TensorEntry, tolerance: float) -> TensorEntry:
    """With no reference, a re-initialized tensor whose std moved beyond `tolerance`x of its
    own `before` gets a note saying by how much (not a flag: nothing says which is right)."""
    before = e.before.std if e.before is not None else None
    got = e.after.std
    if e.action != "reinit" or not before or not got or before <= 0 or not math.isfinite(got):
        return e
    factor = got / before
    if 1 / tolerance <= factor <= tolerance:
        return e
    note = f"std {fmt(factor)}x its own before ({fmt(before)} -> {fmt(got)}); no reference"
    return replace(e, notes=(*e.notes, note))


def reference_warnings(
    entries: Sequence[TensorEntry], basis: ReferenceBasis | None = None
) -> tuple[str, ...]:
    """The report's warning about its reference: a config set aside because its architecture
    cannot own these tensors (no reference at all is said by `reference_text`)."""
    basis = basis or ReferenceBasis()
    lines = []
    if basis.config and not config_fits(basis.config, entries):
        mtype = basis.config.get("model_type", "?")
        lines.append(
            f"{basis.config_name} (model_type {mtype}, width {_width(basis.config)}) fits none "
            "of these tensors' shapes: not used as the reference"
        )
    return tuple(lines)


def _reference_for(
    e: TensorEntry,
    from_config: Ref | None,
    medians: Mapping[tuple[str, tuple[int, ...]], float],
    model_std: ModelStd | None,
) -> Ref | None:
    if not (e.changes and e.is_float):
        return None
    own: Ref | None = None
    if model_std is not None:
        std = model_std(e)
        own = (MODEL_DEFAULT, std) if std is not None else None
    if own is None and from_config is not None and len(e.shape) >= 2 and not is_norm(e.name):
        own = from_config
    median = medians.get((kind_of(e.name), e.shape))
    siblings = (SIBLINGS, median) if median is not None else None
    # a transplant whose source std was not recorded: trained siblings first, init scale second
    order = (siblings, own) if e.action == "transplant" else (own, siblings)
    return next((r for r in order if r is not None), None)


def off_reference(e: TensorEntry, tolerance: float = REFERENCE_TOLERANCE) -> bool:
    """The std is beyond `tolerance`x either way of a positive reference. A tensor with std 0
    is not judged (meant constant, or flagged `constant`), and a tiny tensor's bounds widen
    to its sampling error (`std_tolerance`, t), so a 4-value head is not flagged by chance:
    above, ref·(1 + t); below, ref·(1 − t), which a sample std of a few values often falls
    under when t is taken as a factor (a 2-value draw 31% of the time), and none can when
    t >= 1 (12 values or fewer)."""
    ref, got = e.reference_std, e.after.std
    if ref is None or got is None or ref <= 0 or got <= 0 or not math.isfinite(got):
        return False
    chance = std_tolerance(e.after.count, e.kurtosis)
    above = max(tolerance, 1.0 + chance)
    below = min(1.0 / tolerance, max(1.0 - chance, 0.0))  # a fraction of ref; 0: never
    return got > ref * above or got < ref * below


def reference_text(entries: Sequence[TensorEntry]) -> str | None:
    """`reference: config initializer_range 0.02` for the summary line: each source used, with
    its value (or range), and how many tensors it served when there are several; when changed
    matrices have none at all, a line saying so and what to pass."""
    by_source: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        if e.reference is not None and e.reference_std is not None:
            by_source[e.reference].append(e.reference_std)
    if not by_source:
        changed = sum(
            1
            for e in entries
            if e.changes
            and e.is_float
            and len(e.shape) >= 2
            and e.reference not in (UNRECORDED, NOT_RE_READ)  # --model would not judge these
        )
        if not changed:
            return None
        return (
            f"no reference scale for the {changed} changed tensor(s), so off_reference is not "
            "judged: pass --model (module:callable or a model folder) to judge them by the "
            "architecture's own init"
        )
    parts = []
    for source, values in by_source.items():
        lo, hi = min(values), max(values)
        value = fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"
        count = f" ({len(values)} tensors)" if len(by_source) > 1 else ""
        parts.append(f"{source} {value}{count}")
    return "reference: " + ", ".join(parts)


def model_default_std(view: ModelView, seed: int) -> ModelStd:
    """The std of the model's own init (the `default` scheme) for each tensor the model can
    serve: drawn once per (kind, shape), since layers of one kind share their init; a tensor
    re-initialized with `default` itself is its own reference: the std of the init that ran
    (its `expected_std`), else its own measured std (the same values)."""
    import torch

    from reinit.planning.model import default_value
    from reinit.schemes import DEFAULT

    cache: dict[tuple[str, tuple[int, ...]], float | None] = {}

    def std(e: TensorEntry) -> float | None:
        if view.why_no_default(e.name) is not None:
            return None
        if e.action == "reinit" and (e.scheme or "").split(" (")[0] == DEFAULT:
            return e.expected_std if e.expected_std is not None else e.after.std
        key = (kind_of(e.name), e.shape)
        if key not in cache:
            try:
                value = default_value(view, e.name, torch.float32, seed)
            except SchemeError:  # the architecture's init does not set it: no reference
                cache[key] = None
            else:
                cache[key] = tensor_stats(value).std if value.numel() > 1 else None
        return cache[key]

    return std


def basis_for(
    ckpt: Checkpoint,
    config: Mapping[str, object] | None,
    view: ModelView | None,
    seed: int,
    tolerance: float,
) -> ReferenceBasis:
    """A run's `ReferenceBasis`: `config` when the caller passed one, else the checkpoint's
    config.json (beside a file, in its folder, or fetched from the Hub); the model's own
    init when there is a `--model` view. A config that cannot be read or fetched means no
    config reference, not a failed run (as for `read_config_file`)."""
    if config is None:
        try:
            config = ckpt.config()
        except ReinitError:
            config = None
        name = config_where(ckpt) if config is not None else "config"
    else:
        name = "config"
    return ReferenceBasis(
        config=config,
        model_std=model_default_std(view, seed) if view is not None else None,
        tolerance=tolerance,
        config_name=name,
    )
