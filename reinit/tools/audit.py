"""`reinit report`: the statistics of a checkpoint as it is, optionally against a baseline
(before/after by name, bitwise change detection), written to the requested files.

A safetensors source (a file, or a folder of safetensors shards) without a baseline is read
by `tools.raw_report` and imports no torch; every other form goes through the streaming
engine (`run.stream`), imported only then."""

from __future__ import annotations

__all__ = [
    "report_checkpoint",
    "same_bytes",
    "seen_as_note",
    "with_renames",
    "write_report_files",
]

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from reinit.errors import UsageError
from reinit.io.checkpoint import CHUNK_BYTES, Checkpoint, FileTensor
from reinit.io.sources import open_checkpoint
from reinit.io.targets import Inputs
from reinit.io.trust import TrustSpec
from reinit.report.assemble import make_report
from reinit.report.entries import (
    NOTE_CHANGED,
    NOTE_NEW,
    NOTE_SHAPE,
    Report,
    ReportStep,
    TensorEntry,
)
from reinit.report.progress import Progress, progress_bar
from reinit.report.reference import REFERENCE_TOLERANCE, ReferenceBasis, basis_for
from reinit.report.stats import StatsAccumulator
from reinit.report.views import check_formats, publish_report_files, report_targets
from reinit.run.ranks import Group, split_map
from reinit.run.record import RECORD_FORMAT, Provenance, SurgeryTexts
from reinit.tools.provenance import recorded_provenance
from reinit.tools.raw_report import raw_entries

if TYPE_CHECKING:
    import torch

    from reinit.planning.model import ModelInput, ModelView
    from reinit.planning.model_named import ModelNamedCheckpoint
    from reinit.planning.planner import PlanEntry
    from reinit.planning.ties import Ties
    from reinit.tools.verdict import Replay


def report_checkpoint(
    source: str | os.PathLike[str],
    against: str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
    unsafe_pickle: TrustSpec = (),
    key: str = "",
    ranks: Group | None = None,
    model: ModelInput | None = None,
) -> Report:
    """The report of a checkpoint as it is: every tensor `kept`, with its statistics. One
    thread reads ahead while another computes, so this runs at the disk's (or the page
    cache's) speed rather than at the sum of both.

    `ranks` (the ranks of a run under torchrun, as `reinit report` sets them up): each rank
    sums a contiguous share of the tensors, and every rank gets the whole report, the same as
    one process's.

    With `against` (a baseline checkpoint, any form of §1), each tensor of the same name in
    the baseline gives the `before` statistics, a tensor whose bytes (or shape or dtype) differ
    carries the note "changed vs baseline", one absent from the baseline "not in baseline", and
    the baseline's names absent from SOURCE are listed in the report's warnings. What SOURCE
    records of how reinit made it is replayed (`tools.verdict`): its surgery pairs each tensor
    with the baseline tensor it came from, its rules judge what differs as apply did;
    `model` (`--model`) serves rules that need the architecture (`default`, `type:`)."""
    started = time.perf_counter()
    if model is not None and against is None:
        raise UsageError(
            "--model judges the rules a checkpoint records against its baseline: give --against"
        )
    with ExitStack() as stack:
        ckpt = stack.enter_context(_opened(source, unsafe_pickle, progress, key))
        record = recorded_provenance(ckpt)
        replay: Replay | None = None
        if against is not None:
            base = stack.enter_context(_opened(against, unsafe_pickle, progress))
            base, seen_as = _under_names_of(base, ckpt, against)
            if seen_as is None:  # SOURCE per-expert, the baseline under the model's names
                ckpt, seen_as = _under_names_of(ckpt, base, source)
            from reinit.tools.verdict import replay_of

            replay = replay_of(record, ckpt, base, model)
        else:
            base, seen_as = None, None
        stored = ckpt.file_tensors() if base is None else None
        progress = progress and (ranks is None or ranks.primary)
        if stored is not None:  # safetensors: no torch
            entries = split_map(
                ranks,
                stored,
                _stored_bytes,
                lambda part: _raw(part, progress, source if ranks is None else None),
                "summing",
            )
        else:
            origins = replay.origins() if replay is not None else {}
            entries = _streamed(ckpt, base, progress, stack, ranks, origins)
        # the file's own recorded seed and rules (written by reinit), else seed 0 and none
        seed, rules = (record.seed, record.rules) if record is not None else (0, ())
        renamed: set[str] = set()
        warnings: tuple[str, ...] = ()
        if base is not None and replay is not None:  # what apply said of what differs
            entries, renamed, warnings = _as_applied(entries, ckpt, base, replay)
        view = replay.view if replay is not None else None
        basis = _basis(ckpt, base, view, seed)
        report = make_report(os.fspath(source), None, seed, rules, entries, 0, started, basis=basis)
        if warnings:
            report = replace(report, warnings=(*report.warnings, *warnings))
        if seen_as:
            report = replace(report, notes=(*report.notes, seen_as))
        if record is not None:
            report = replace(report, steps=report_steps(record))
        if base is not None:
            report = _with_missing(report, ckpt, base, renamed, replay, source, against)
        return report


def _with_missing(
    report: Report,
    ckpt: Checkpoint,
    base: Checkpoint,
    renamed: set[str],
    replay: Replay | None,
    source: str | os.PathLike[str],
    against: str | os.PathLike[str] | None,
) -> Report:
    """The report with the baseline names SOURCE lacks: those a recorded `--drop` removed as
    its `dropped`, those held under the model's names and the rest as warnings."""
    from reinit.planning.dcp_names import held_under_model_names  # torch: --against

    dropped = replay.dropped if replay is not None else ()
    gone = set(renamed) | set(dropped)
    missing = [n for n in base.names() if n not in ckpt and n not in gone]
    held = held_under_model_names(base, missing, ckpt, os.fspath(against or ""))
    missing = [n for n in missing if n not in held]
    warnings = [_held_warning(held, source)] if held else []
    if missing:
        shown = ", ".join(missing[:10]) + (", …" if len(missing) > 10 else "")
        warnings.append(
            f"{len(missing)} tensor(s) of the baseline {os.fspath(against or '')} "
            f"are not in {os.fspath(source)}: {shown}"
        )
    return replace(report, warnings=(*report.warnings, *warnings), dropped=tuple(dropped))


def report_steps(record: Provenance) -> tuple[ReportStep, ...] | None:
    """The report's `steps`: every step the record holds when it holds more than its own
    (() for one: the report's seed and rules say it all), None when those before are unknown.
    A record of a later format than this reinit reads says nothing of its steps here: () (was:
    'made in several steps' for any, one step too)."""
    if record.format > RECORD_FORMAT:
        return ()
    steps = record.steps
    if steps is None:
        return None
    if len(steps) < 2:
        return ()
    return tuple(ReportStep(st.seed, st.rules, _surgery_texts(st.surgery)) for st in steps)


def _surgery_texts(surgery: SurgeryTexts | None) -> tuple[str, ...] | None:
    """A step's surgery as written (`--drop X`, ..., in the order it runs)."""
    if surgery is None:
        return None
    return tuple(f"--{k} {t}" for k, texts in surgery.to_dict().items() for t in texts)


def _basis(
    ckpt: Checkpoint, base: Checkpoint | None, view: ModelView | None, seed: int
) -> ReferenceBasis:
    """The references `report` judges by: SOURCE's config.json; where SOURCE has none (a
    `--format dcp` output holds no config.json) and a baseline is given, the baseline's, the
    config apply judged the run by."""
    basis = basis_for(ckpt, None, view, seed, REFERENCE_TOLERANCE)
    if basis.config is None and base is not None:
        return basis_for(base, None, view, seed, REFERENCE_TOLERANCE)
    return basis


def _under_names_of(
    base: Checkpoint, ckpt: Checkpoint, against: str | os.PathLike[str] | Checkpoint
) -> tuple[Checkpoint, str | None]:
    """The baseline under SOURCE's names where SOURCE holds its per-expert tensors under the
    model's `state_dict()` names (a `--format dcp` output: `planning.model_named`), with the
    note that says so; else the baseline as it is. Only where each holds names the other
    lacks (the model is built, so torch is loaded, then only). Called the other way round
    (`base` SOURCE, `ckpt` the baseline), SOURCE under the baseline's names."""
    if all(n in ckpt for n in base.names()) or all(n in base for n in ckpt.names()):
        return base, None
    from reinit.planning.model_named import ModelNamedCheckpoint, under_names_of

    where = os.fspath(against) if isinstance(against, (str, os.PathLike)) else base.source
    seen = under_names_of(base, ckpt, where)
    if not isinstance(seen, ModelNamedCheckpoint):
        return base, None
    return seen, seen_as_note(seen, where, os.fspath(ckpt.source))


def seen_as_note(seen: ModelNamedCheckpoint, where: str, other: str) -> str:
    """The note that `where`'s tensors were compared under `other`'s (the model's) names."""
    old, box = next(iter(seen.placed.items()))
    targets = len({b.name for b in seen.placed.values()})
    return (
        f"{len(seen.placed)} tensor(s) of {where} compared as the {targets} tensor(s) of the "
        f"model's state_dict() names that {other} holds them in (e.g. '{old}' as "
        f"'{box.name}' at {list(box.offsets)}; transformers' conversion mapping)"
    )


def _held_warning(held: Mapping[str, str], source: str | os.PathLike[str]) -> str:
    """What `report --against` says of baseline tensors held under the model's names."""
    old, new = next(iter(held.items()))
    targets = len(set(held.values()))
    return (
        f"{len(held)} tensor(s) of the baseline are held in {os.fspath(source)} under "
        f"{targets} of the model's state_dict() names (e.g. '{old}' in '{new}'), not "
        "compared: those are listed as not in baseline; compare against the safetensors "
        "output, or a DCP of the baseline written the same way"
    )


def _as_applied(
    entries: list[TensorEntry], ckpt: Checkpoint, base: Checkpoint, replay: Replay
) -> tuple[list[TensorEntry], set[str], tuple[str, ...]]:
    """`report --against`'s entries judged as apply judged them (`tools.verdict`), the
    baseline names SOURCE holds under another name (renamed by the replayed surgery, else
    found by their values), and what could not be replayed."""
    from reinit.planning.model_named import ModelNamedCheckpoint
    from reinit.tools.verdict import as_applied

    if not replay.surgery:  # no surgery recorded: renames found by their values
        entries, renamed = with_renames(entries, ckpt, base)
    else:
        renamed = {n for n in replay.origins().values() if n is not None}
    stacked = (
        frozenset(b.name for b in base.placed.values())
        if isinstance(base, ModelNamedCheckpoint)
        else frozenset()
    )
    judged, warnings = as_applied(entries, ckpt, replay, stacked)
    return judged, renamed, warnings


@contextmanager
def _opened(
    source: str | os.PathLike[str] | Checkpoint,
    unsafe_pickle: TrustSpec,
    progress: bool,
    key: str = "",
) -> Iterator[Checkpoint]:
    """A path opened (and closed after) without torch where it is safetensors; anything else
    (an open `Checkpoint`, a state dict) as `planning.session.open_source` takes it."""
    if not isinstance(source, (str, os.PathLike)):
        from reinit.planning.session import open_source

        with open_source(source, unsafe_pickle, progress, key) as ckpt:
            yield ckpt
        return
    ckpt = open_checkpoint(source, unsafe_pickle=unsafe_pickle, progress=progress, key=key)
    try:
        yield ckpt
    finally:
        ckpt.close()


def _stored_bytes(t: FileTensor) -> int:
    return t.info.nbytes


def _raw(tensors: list[FileTensor], progress: bool, source: object = None) -> list[TensorEntry]:
    """The entries of safetensors tensors (no torch), with a progress bar over their bytes;
    `source`: the path they were opened from, for a second summing process (`run.ahead`)."""
    with progress_bar(sum(t.info.nbytes for t in tensors), progress, "reinit report") as bar:
        return raw_entries(tensors, bar, source)


def _streamed(
    ckpt: Checkpoint,
    base: Checkpoint | None,
    progress: bool,
    stack: ExitStack,
    ranks: Group | None = None,
    origins: Mapping[str, str | None] | None = None,
) -> list[TensorEntry]:
    """Every tensor's entry through the streaming engine (torch), with the baseline's (of the
    name `origins` gives, where a replayed surgery renamed or added it); with `ranks`, each
    rank streams its contiguous share."""
    from reinit.planning.planner import plan as make_plan
    from reinit.planning.ties import resolve_ties

    the_plan = make_plan(ckpt.refs(), ())
    ties = resolve_ties(the_plan, ckpt.aliases())[1]

    def entries_of(part: list[PlanEntry]) -> list[TensorEntry]:
        return _stream_entries(ckpt, base, part, ties, progress, origins or {})

    return split_map(ranks, the_plan.entries, _planned_bytes, entries_of, "summing")


def _planned_bytes(e: PlanEntry) -> int:
    from reinit.io.checkpoint import TensorRef

    return TensorRef(e.name, e.dtype_name, e.shape).nbytes


def _stream_entries(
    ckpt: Checkpoint,
    base: Checkpoint | None,
    part: list[PlanEntry],
    ties: Ties,
    progress: bool,
    origins: Mapping[str, str | None],
) -> list[TensorEntry]:
    """The entries of `part` (planned `kept`) through one `Applier`, in order."""
    from contextlib import closing

    from reinit.run.stream import Applier

    applier = Applier(ckpt, 0, "cpu", ties=ties)
    total = sum(_planned_bytes(e) for e in part)
    entries = []
    bar: Progress
    with progress_bar(total, progress, "reinit report") as bar, closing(applier.stream(part)) as s:
        for piece in s:
            if piece.entry is not None:
                entry = piece.entry
                if base is not None:
                    entry = _against(ckpt, base, entry, origins.get(entry.name, entry.name))
                entries.append(entry)
            bar.update(piece.nbytes)
    return entries


def write_report_files(
    source: str | os.PathLike[str],
    against: str | os.PathLike[str] | None,
    outputs: Sequence[str | os.PathLike[str]],
    plot: str | os.PathLike[str] | None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    unsafe_pickle: TrustSpec = (),
    key: str = "",
    ranks: Group | None = None,
    model: ModelInput | None = None,
) -> Report:
    """`reinit report SOURCE -o ... --plot ...`: every path checked by the one rule before the
    checkpoint is read (never an input, never an existing file without `overwrite`), then all
    of them published together (with `ranks`: by rank 0, the report summed by all)."""
    check_formats(outputs, plot, "-o")
    inputs = Inputs.of([source, against])
    targets = report_targets(outputs, plot, "-o", inputs=inputs, overwrite=overwrite)
    rep = report_checkpoint(
        source,
        against,
        progress=progress,
        unsafe_pickle=unsafe_pickle,
        key=key,
        ranks=ranks,
        model=model,
    )
    if targets and (ranks is None or ranks.primary):  # publishing imports torch: only then
        from reinit.io.publish import how_to_publish

        publish_report_files(rep, targets, how_to_publish(overwrite=overwrite))
    return rep


def _against(
    ckpt: Checkpoint, base: Checkpoint, entry: TensorEntry, old: str | None
) -> TensorEntry:
    """`entry` with the statistics of the baseline's `old` (its own name, or the one a
    replayed `--rename` gave it; None: `--add` made it) as `before` and a note when it
    differs: one pass over the baseline's chunks, compared with the source's chunk for chunk
    (bitwise, so a NaN equals the same NaN) until the first difference."""
    if old is None or old not in base:
        return replace(entry, notes=(*entry.notes, NOTE_NEW))
    if old != entry.name:
        entry = replace(entry, notes=(*entry.notes, f"renamed from {old}"))
    ref, bref = ckpt.ref(entry.name), base.ref(old)
    from reinit.io.formats import dtype_name
    from reinit.run.stream import view_bytes

    acc = StatsAccumulator(bref.dtype)
    same = (ref.dtype, ref.shape) == (bref.dtype, bref.shape)
    # the source's chunks are read lazily and only until the first difference
    mine = ckpt.iter_chunks(entry.name, CHUNK_BYTES)
    for chunk in base.iter_chunks(old, CHUNK_BYTES):
        acc.add(view_bytes(chunk, bref.dtype))
        if same:
            same = same_bytes(next(mine, memoryview(b"")), chunk)
    notes: tuple[str, ...] = ()
    if not same and _is_cast(ckpt, base, entry.name, old):
        from reinit.run.outcontrol import cast_note

        notes = (cast_note(bref.dtype, ref.dtype),)  # as apply --dtype notes it
    elif not same:
        notes = (NOTE_CHANGED,)
        if bref.shape != ref.shape:
            notes += (f"{NOTE_SHAPE}{list(bref.shape)}",)
        if bref.dtype != ref.dtype:
            notes += (f"baseline dtype {dtype_name(bref.dtype)}",)
    return replace(entry, before=acc.result(), notes=(*entry.notes, *notes))


def _is_cast(ckpt: Checkpoint, base: Checkpoint, name: str, old: str = "") -> bool:
    """Whether `name` in `ckpt` holds exactly the baseline's values (of `old`, default the
    same name) cast to another floating dtype (what `apply --dtype` writes for a tensor no
    rule touched): a cast, not a change."""
    ref, bref = ckpt.ref(name), base.ref(old or name)
    floats = ref.dtype.is_floating_point and bref.dtype.is_floating_point
    if ref.shape != bref.shape or ref.dtype == bref.dtype or not floats:
        return False
    return _same_values(ckpt, name, base, old or name)


def _same_values(ckpt: Checkpoint, name: str, base: Checkpoint, old: str) -> bool:
    """Whether `name` holds exactly `old`'s values of the baseline, in its own dtype (the
    baseline's cast to it when they differ). Compared piece by piece (the same elements on
    both sides) until the first difference."""
    ref, bref = ckpt.ref(name), base.ref(old)
    if ref.shape != bref.shape:
        return False
    count = CHUNK_BYTES // 8  # elements per piece: a whole number of bytes for every dtype
    mine = ckpt.iter_chunks(name, count * ref.dtype.itemsize)
    for chunk in base.iter_chunks(old, count * bref.dtype.itemsize):
        if not same_bytes(next(mine, memoryview(b"")), _as_dtype(chunk, bref.dtype, ref.dtype)):
            return False
    return next(mine, None) is None


def _as_dtype(chunk: memoryview, dtype: torch.dtype, to: torch.dtype) -> bytes | memoryview:
    """Raw values of `dtype` as `to` would store them (as they are when the dtypes agree)."""
    if dtype == to:
        return chunk
    from reinit.io.formats import tensor_to_bytes
    from reinit.run.stream import view_bytes

    return tensor_to_bytes(view_bytes(chunk, dtype).to(to))


HEAD_VALUES = 4096  # the leading values a renamed tensor is first matched by


def _head(ck: Checkpoint, name: str, to: torch.dtype) -> bytes:
    """The first `HEAD_VALUES` values of `name` as `to` stores them (a cheap first match)."""
    dtype = ck.ref(name).dtype
    pieces = ck.iter_chunks(name, HEAD_VALUES * dtype.itemsize)
    return bytes(_as_dtype(next(pieces, memoryview(b"")), dtype, to))


def _castable(dtype: torch.dtype, to: torch.dtype) -> bool:
    return dtype == to or (dtype.is_floating_point and to.is_floating_point)


def with_renames(
    entries: Sequence[TensorEntry], ckpt: Checkpoint, base: Checkpoint
) -> tuple[list[TensorEntry], set[str]]:
    """`entries` of `report --against` with each tensor `not in baseline` that holds exactly
    the values of a baseline tensor SOURCE lacks (or their cast) noted `renamed from OLD`, as
    `--rename` left it: renaming is not a change. Returns the baseline names so accounted for.
    Candidates are matched by shape and their first values, then compared whole."""
    missing = [n for n in base.names() if n not in ckpt]
    new = [e for e in entries if NOTE_NEW in e.notes]
    if not missing or not new:
        return list(entries), set()
    dtypes = {ckpt.ref(e.name).dtype for e in new}
    index: dict[tuple[tuple[int, ...], torch.dtype, bytes], list[str]] = {}
    for old in missing:
        bref = base.ref(old)
        for to in (d for d in dtypes if _castable(bref.dtype, d)):
            index.setdefault((bref.shape, to, _head(base, old, to)), []).append(old)
    used: set[str] = set()
    out = []
    for e in entries:
        if NOTE_NEW in e.notes:
            ref = ckpt.ref(e.name)
            olds = index.get((ref.shape, ref.dtype, _head(ckpt, e.name, ref.dtype)), [])
            match = (o for o in olds if o not in used and _same_values(ckpt, e.name, base, o))
            found = next(match, None)
            if found is not None:
                used.add(found)
                e = _renamed_entry(e, found, base.ref(found).dtype, ref.dtype)
        out.append(e)
    return out, used


def _renamed_entry(e: TensorEntry, old: str, dtype: torch.dtype, to: torch.dtype) -> TensorEntry:
    from reinit.run.outcontrol import cast_note

    notes = tuple(n for n in e.notes if n != NOTE_NEW) + (f"renamed from {old}",)
    return replace(e, notes=notes + ((cast_note(dtype, to),) if dtype != to else ()))


def same_bytes(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bool:
    """Bitwise equality without copying either buffer (NaN payloads compare as bits)."""
    ma, mb = memoryview(a).cast("B"), memoryview(b).cast("B")
    if ma.nbytes != mb.nbytes:
        return False
    if ma.nbytes == 0:
        return True
    return bool(np.array_equal(np.frombuffer(ma, np.uint8), np.frombuffer(mb, np.uint8)))
