"""What an output written by reinit records about itself, in its safetensors metadata's `reinit`
key (a `--format dcp` output: the same JSON as `reinit.json` beside `.metadata`): the seed, the
rules, the surgery (`--drop`, `--rename`, `--resize`, `--add` as written), which kind of
`--model` the run had, and the steps that made its input. `reinit report OUT --against SRC`
replays them (`tools.verdict`) to judge OUT as `apply` did.

Why the steps: a multi-step recipe's output recorded its last step only, so `report --against`
the recipe's input set aside every tensor an earlier step changed. Each run now carries its
input's recorded steps before its own, so a recipe's output and the same steps chained through
files stay byte-identical and both record every step.

Why the surgery: without it, `report --against` could not tell an added tensor's scheme nor
where a renamed-and-resized tensor came from, so it judged them against the config (an
`--add ...:zeros` tensor flagged `constant`, a renamed grown embedding `off_reference`).

What is recorded is text the user typed, bounded (`limits.MAX_RECORDED_SURGERY_BYTES`), and
never acted on as code: a `module:callable` model is recorded by name only, for the message
that asks for `--model`; a model folder is recorded as a folder, without its path.

Format 1 (no `record` key): version, seed, rules. Format 2 adds `record`, `surgery` (absent
when there was none, null when it was too large to record) and `model`. Format 3 adds `before`:
the steps that made the run's input, oldest first, each as a format 2 record without `record`
(a recipe's earlier steps; the applies of a chain of files, read from the input's own record),
or null when the input records steps this reinit cannot carry (a later format, an unreadable
record, more than `limits.MAX_RECORDED_STEPS`). An output whose input records nothing is
written as format 2, byte for byte as before. Torch-free."""

from __future__ import annotations

__all__ = [
    "RECORD_FORMAT",
    "STEP_FORMAT",
    "ModelRecord",
    "Provenance",
    "SurgeryTexts",
    "history_of",
    "model_record",
    "parse_provenance",
    "recorded",
]

import json
import os
from dataclasses import dataclass, replace

from reinit.io.checkpoint import Checkpoint
from reinit.limits import MAX_RECORDED_STEPS, MAX_RECORDED_SURGERY_BYTES

RECORD_FORMAT = 3
STEP_FORMAT = 2  # an output whose input records no steps, and each step of `before`
SURGERY_KEYS = ("drop", "rename", "resize", "add")  # the order surgery runs in
MODEL_KINDS = ("hub", "callable", "folder", "module")


@dataclass(frozen=True)
class SurgeryTexts:
    """A run's `--drop`, `--rename`, `--resize` and `--add` as written (`parse_surgery` reads
    them back)."""

    drop: tuple[str, ...] = ()
    rename: tuple[str, ...] = ()
    resize: tuple[str, ...] = ()
    add: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.drop or self.rename or self.resize or self.add)

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in SURGERY_KEYS if getattr(self, k)}


@dataclass(frozen=True)
class ModelRecord:
    """The kind of `--model` a run had (`hub`, `callable`, `folder`, or `module`: an object
    passed to the API) and, for `hub` and `callable`, its name (never a path)."""

    kind: str
    ref: str | None = None

    def shown(self) -> str:
        return self.ref if self.ref is not None else f"a model {self.kind}"


@dataclass(frozen=True)
class Provenance:
    """What an output records: seed, rules, surgery (None: too large to record, so not
    recorded) and the kind of model of the run that wrote it, and `before`, the steps that
    made its input, oldest first (None: not known, see the module docstring)."""

    seed: int
    rules: tuple[str, ...]
    surgery: SurgeryTexts | None = SurgeryTexts()
    model: ModelRecord | None = None
    version: str = ""
    format: int = RECORD_FORMAT
    before: tuple[Provenance, ...] | None = ()

    @property
    def steps(self) -> tuple[Provenance, ...] | None:
        """Every step that made the output, in order, its own last; None when the steps
        before its own are not known."""
        if self.before is None:
            return None
        return (*self.before, self.step())

    def step(self) -> Provenance:
        """This run's own step, as a step of a later output's `before` records it."""
        return replace(self, format=STEP_FORMAT, before=())

    def same_step(self, other: Provenance) -> bool:
        """Whether `other` records the same step (as written: seed, rules, surgery, model,
        version)."""
        return self.step() == other.step()

    def to_json(self) -> str:
        """The `reinit` metadata value; a surgery record over its limit is written as null."""
        data: dict[str, object] = {"version": self.version}
        if self.before == ():
            data["record"] = STEP_FORMAT
            data.update(self._fields())
        else:
            data["record"] = RECORD_FORMAT
            data.update(self._fields())
            data["before"] = None if self.before is None else [_step_dict(b) for b in self.before]
        return json.dumps(data, separators=(",", ":"))

    def _fields(self) -> dict[str, object]:
        data: dict[str, object] = {"seed": self.seed, "rules": list(self.rules)}
        if self.surgery:
            texts = self.surgery.to_dict()
            fits = len(json.dumps(texts)) <= MAX_RECORDED_SURGERY_BYTES
            data["surgery"] = texts if fits else None
        elif self.surgery is None:
            data["surgery"] = None
        if self.model is not None:
            data["model"] = {"kind": self.model.kind, "ref": self.model.ref}
        return data


def _step_dict(step: Provenance) -> dict[str, object]:
    return {"version": step.version, **step._fields()}


def model_record(model: object) -> ModelRecord | None:
    """How the run's `--model` is recorded: an `hf://` reference and a `module:callable` by
    their text (names, not paths: `report` never imports or fetches them), a folder or
    config file as a folder (its path stays on the machine that ran), an object as `module`."""
    if model is None:
        return None
    if not isinstance(model, (str, os.PathLike)):
        return ModelRecord("module")
    from reinit.io.hub import is_hf_url
    from reinit.io.trust import CALLABLE_SPEC

    text = os.fspath(model)
    if is_hf_url(text):
        return ModelRecord("hub", text)
    if isinstance(model, str) and CALLABLE_SPEC.match(text) and not os.path.exists(text):
        return ModelRecord("callable", text)
    return ModelRecord("folder")


def parse_provenance(data: object) -> Provenance | None:
    """A `Provenance` from the parsed `reinit` metadata; None when it is not one (a file not
    written by reinit, or metadata edited into something else). A surgery or model record that
    is malformed or over its limit reads as not recorded, a `before` that is as not known; one
    of a later format than this reinit knows is not replayed (its seed and rules still are)."""
    step = _step(data)
    if step is None or not isinstance(data, dict):
        return None
    fmt = data.get("record", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt > RECORD_FORMAT:
        unread = None if "surgery" in data else SurgeryTexts()
        return Provenance(step.seed, step.rules, unread, format=fmt, before=None)
    before = _before(data.get("before", [])) if fmt >= RECORD_FORMAT else ()
    return replace(step, format=fmt, before=before)


def _step(data: object) -> Provenance | None:
    """One step's record (seed, rules, surgery, model, version); None when it is not one."""
    if not isinstance(data, dict):
        return None
    seed, rules = data.get("seed"), data.get("rules")
    if isinstance(seed, bool) or not isinstance(seed, int) or not isinstance(rules, list):
        return None
    if not all(isinstance(r, str) for r in rules):
        return None
    version = data.get("version")
    return Provenance(
        seed,
        tuple(rules),
        _surgery(data),
        _model(data.get("model")),
        version if isinstance(version, str) else "",
        STEP_FORMAT,
    )


def _before(raw: object) -> tuple[Provenance, ...] | None:
    """The steps before, oldest first; None when the list is not one of steps or too long."""
    if not isinstance(raw, list) or len(raw) >= MAX_RECORDED_STEPS:
        return None
    steps = [_step(d) for d in raw]
    if any(s is None for s in steps):
        return None
    return tuple(s for s in steps if s is not None)


def recorded(ckpt: Checkpoint) -> Provenance | None:
    """What `ckpt` records (its `reinit` metadata, first shard that has it), or None when it
    records nothing or what it holds is not a record."""
    raw = _raw_record(ckpt)
    if raw is None:
        return None
    from reinit.io.jsonfile import JsonError, parse_json

    try:
        data = parse_json(raw, "reinit metadata")
    except JsonError:
        return None
    return parse_provenance(data)


def _raw_record(ckpt: Checkpoint) -> str | None:
    try:
        raw = ckpt.metadata().get("reinit")
    except Exception:  # noqa: BLE001 - a form without metadata, or a shard that cannot be read
        return None
    return raw or None


def history_of(ckpt: Checkpoint) -> tuple[Provenance, ...] | None:
    """The steps that made `ckpt`, oldest first, as a run on it records them in `before`: ()
    when it records none (a checkpoint reinit did not write); None when it records steps this
    reinit cannot carry (a later format, a record it cannot read, `MAX_RECORDED_STEPS` of
    them already)."""
    if _raw_record(ckpt) is None:
        return ()
    record = recorded(ckpt)
    if record is None or record.format > RECORD_FORMAT:
        return None
    steps = record.steps
    return steps if steps is not None and len(steps) < MAX_RECORDED_STEPS else None


def _surgery(data: dict[str, object]) -> SurgeryTexts | None:
    if "surgery" not in data:
        return SurgeryTexts()
    raw = data["surgery"]
    if not isinstance(raw, dict) or len(json.dumps(raw)) > MAX_RECORDED_SURGERY_BYTES:
        return None
    parts: dict[str, tuple[str, ...]] = {}
    for k in SURGERY_KEYS:
        v = raw.get(k, [])
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            return None
        parts[k] = tuple(v)
    return SurgeryTexts(**parts)


def _model(raw: object) -> ModelRecord | None:
    if not isinstance(raw, dict) or raw.get("kind") not in MODEL_KINDS:
        return None
    ref = raw.get("ref")
    if not isinstance(ref, str) or len(ref) > MAX_RECORDED_SURGERY_BYTES:
        ref = None
    return ModelRecord(str(raw["kind"]), ref)
