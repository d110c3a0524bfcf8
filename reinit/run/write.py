"""Stages 3 and 4 of a run that writes: `write` streams the plan through the one `Applier`
into the files a `Layout` names (all of them, or a subset of its shards), under a staging
folder; `publish` then puts the checkpoint, its reports, plot and config.json in place
together, or none of them.

`stage` opens the `Publication` (closed, and so cleaned up, by the caller's `ExitStack`):
the staging path is where every writer writes; whoever publishes holds the `Staging`."""

from __future__ import annotations

__all__ = ["Staging", "Written", "publish", "report_of", "stage", "write", "write_side_files"]

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path

from reinit.io.confine import copy_regular, output_path
from reinit.io.formats import DcpWriter
from reinit.io.pipeline import prefetch
from reinit.io.publish import Publication
from reinit.io.targets import REPORT_NAME
from reinit.io.writer import SafetensorsWriter, write_torch_file
from reinit.report.entries import Report, TensorEntry
from reinit.report.progress import Progress, progress_bar
from reinit.report.views import render_for_path, stage_report_files, write_text_file
from reinit.run.layout import Layout
from reinit.run.output import INDEX_NAME, OutFile, output_metadata
from reinit.run.pieces import Piece, assemble
from reinit.run.prepare import Prepared
from reinit.run.stream import WRITE_AHEAD, Applier


@dataclass(frozen=True)
class Staging:
    """The run's `Publication` and the temporary path its checkpoint is written under (a
    file, or a folder whose files are the layout's `shards()`)."""

    pub: Publication
    tmp: Path


@dataclass(frozen=True)
class Written:
    """What a writer wrote: the report entries of its tensors, the bytes, and its warnings
    (lossy casts, from the layout's `control`)."""

    entries: tuple[TensorEntry, ...]
    bytes_written: int
    warnings: tuple[str, ...] = ()


def stage(stack: ExitStack, layout: Layout) -> Staging:
    """Open the publication (aborted, its temporaries removed, unless committed before `stack`
    closes) and stage the checkpoint's path."""
    pub = stack.enter_context(Publication())
    spec = layout.spec
    tmp = pub.stage(
        spec.path,
        how="merge" if layout.merge else layout.how,
        directory=spec.fmt in ("directory", "dcp"),
        first=layout.shards(),
        last=(INDEX_NAME, REPORT_NAME),
    )
    return Staging(pub, tmp)


def write(
    prepared: Prepared,
    layout: Layout,
    tmp: Path,
    *,
    shards: Sequence[str] | None = None,
    progress: bool = False,
) -> Written:
    """Write the tensors of `shards` (default: every file of the layout, then the folder's
    side files: copied extras, the index, config.json) under `tmp`."""
    files = layout.files_of(shards)
    ordered = [layout.plan_entries[n] for f in files for n in f.names]
    applier = prepared.applier()
    applier.spans = not layout.control.active  # a cast or a hash reads kept bytes as chunks
    total = sum(layout.in_bytes[e.name] for e in ordered)
    with progress_bar(total, progress, _command(prepared)) as bar:
        stream = prefetch(applier.stream(ordered), WRITE_AHEAD, "reinit-compute")
        with closing(stream) as raw:
            pieces = layout.control.stream(raw, {e.name: e.dtype_name for e in ordered})
            if layout.spec.fmt == "torch":
                entries, written = _write_torch(prepared, layout, tmp, pieces, bar)
            else:
                entries, written = _write_files(prepared, layout, tmp, files, pieces, bar, applier)
        if shards is None:
            written += write_side_files(prepared, layout, tmp)
    line = layout.control.summary()
    return Written(tuple(entries), written, (line,) if line is not None else ())


def _command(prepared: Prepared) -> str:
    """The progress bar's label: the command the user ran (a model's checkpoint drawn from
    its config is `reinit new`)."""
    return "reinit new" if prepared.ckpt.kind == "model" else "reinit apply"


def report_of(prepared: Prepared, layout: Layout, written: Written) -> Report:
    """The run's `Report`: the writer's entries, bytes and warnings, the layout's notes."""
    return prepared.report(
        written.entries, layout.spec.path, written.bytes_written, written.warnings, layout.notes
    )


def publish(staging: Staging, layout: Layout, report: Report) -> None:
    """Stage the reports, plot and a file output's config.json beside the written checkpoint,
    then publish them all together (or nothing)."""
    pub, tmp = staging.pub, staging.tmp
    if layout.default_report and layout.spec.fmt == "directory":
        write_text_file(tmp / REPORT_NAME, render_for_path(report, REPORT_NAME))
    stage_report_files(pub, report, layout.side, layout.how)
    beside = layout.config_beside
    if beside is not None and layout.config_file is not None:
        write_text_file(pub.stage(beside, how=layout.how), layout.config_file)
    pub.commit()  # the checkpoint, its reports and plot: all of them or none


def _write_files(
    prepared: Prepared,
    layout: Layout,
    tmp: Path,
    files: Sequence[OutFile],
    pieces: Iterator[Piece],
    bar: Progress,
    applier: Applier,
) -> tuple[list[TensorEntry], int]:
    """The safetensors files (one, or a folder's shards), in layout order."""
    entries: list[TensorEntry] = []
    written = 0
    folder = layout.spec.fmt == "directory"
    for f in files:
        target = output_path(tmp, f.relname, prepared.job.source_text) if folder else tmp
        target.parent.mkdir(parents=True, exist_ok=True)
        header = [(n, layout.out_dtype[n], layout.plan_entries[n].shape) for n in f.names]
        meta = output_metadata(prepared.ckpt, f.source_shard, prepared.record)
        w: SafetensorsWriter | DcpWriter = (
            DcpWriter(target, header, meta, layout.dcp_chunks, layout.dcp_aliases)
            if layout.spec.fmt == "dcp"
            else SafetensorsWriter(target, header, meta, _known(applier, layout, f))
        )
        with w:
            entries.extend(_write_pieces(w, pieces, len(f.names), bar, applier))
        written += w.bytes_written
    return entries, written


def _known(applier: Applier, layout: Layout, f: OutFile) -> dict[str, tuple[int, int]]:
    """The kept tensors of `f` the writer may write ahead of the stream (`Applier.known_bytes`),
    in a run that draws: the stream then waits for torch to load and for draws, and the disk
    can work meanwhile. A run that only copies writes from the start; there writing ahead on
    one more thread measured slower (`*=keep` of the bench's 2.7 GB, 6 interleaved runs:
    median 2.30 s against 2.03 s; docs/bench/round3.md)."""
    if not any(e.action == "reinit" for e in layout.plan_entries.values()):
        return {}
    return applier.known_bytes(layout.plan_entries[n] for n in f.names)


def _write_pieces(
    w: SafetensorsWriter | DcpWriter,
    pieces: Iterator[Piece],
    count: int,
    bar: Progress,
    applier: Applier,
) -> list[TensorEntry]:
    """Write `count` tensors' pieces with `w`, chunks back to `applier` once written."""
    entries: list[TensorEntry] = []
    while len(entries) < count:
        piece = next(pieces)
        if piece.entry is not None:
            w.end_tensor(piece.name)
            entries.append(piece.entry)
        elif piece.span is not None:
            w.copy_part(piece.name, *piece.span)
        else:
            assert piece.data is not None
            w.write_part(piece.name, piece.data)
            applier.release(piece.data)
        bar.update(piece.nbytes)
    return entries


def _write_torch(
    prepared: Prepared, layout: Layout, tmp: Path, pieces: Iterator[Piece], bar: Progress
) -> tuple[list[TensorEntry], int]:
    """The `.bin/.pt` output: `torch.save` needs every tensor at once, so this form holds the
    whole model in memory. Tied names stay tied (one tensor object, one storage in the file)."""
    cast = {n: replace(e, dtype_name=layout.out_dtype[n]) for n, e in layout.plan_entries.items()}
    state, entries = assemble(pieces, cast, prepared.ties, on_piece=bar.update)
    return entries, write_torch_file(tmp, state)


def write_side_files(prepared: Prepared, layout: Layout, tmp: Path) -> int:
    """A folder output's other files: the source's files the layout copies, the shard index
    and config.json. Returns the bytes written."""
    if layout.spec.fmt != "directory":
        return 0
    source = prepared.ckpt.source
    written = 0
    for rel, src in layout.extras:
        dst = output_path(tmp, rel, source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        written += copy_regular(src, dst, source)
    if layout.index is not None:
        write_text_file(tmp / INDEX_NAME, layout.index)
        written += len(layout.index)
    if layout.config_file is not None:
        write_text_file(
            output_path(tmp, "config.json", prepared.job.source_text), layout.config_file
        )
        written += len(layout.config_file)
    return written
