"""`apply`: open the source, plan, resolve the output, stream the plan into the output files
and publish them (checkpoint, reports and plot together or not at all)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reinit.errors import OutputError, UsageError
from reinit.io.confine import (
    copy_regular,
    extras_to_copy,
    output_path,
)
from reinit.io.pipeline import prefetch
from reinit.io.publish import Publication, how_to_publish
from reinit.io.readers import (
    Checkpoint,
    TensorRef,
)
from reinit.io.targets import (
    REPORT_NAME,
    Inputs,
    check_distinct,
    check_replace_folder,
    check_suffix,
    check_target,
)
from reinit.io.trust import TrustSpec
from reinit.io.writer import SafetensorsWriter, write_error, write_torch_file
from reinit.planning.planner import PlanEntry
from reinit.planning.session import (
    ModelInput,
    RuleInput,
    as_rules,
    check_device,
    edit_checkpoint,
    model_view,
    open_source,
    plan_for,
)
from reinit.planning.ties import Ties
from reinit.report.assemble import make_report
from reinit.report.entries import Report, TensorEntry
from reinit.report.files import write_text_file
from reinit.run.output import (
    INDEX_NAME,
    OutFile,
    OutputSpec,
    output_files,
    output_metadata,
    resolve_output,
)
from reinit.run.pieces import Piece, assemble, progress_bar
from reinit.run.stream import WRITE_AHEAD, Applier

if TYPE_CHECKING:
    pass


def apply(
    source: str | os.PathLike[str] | Checkpoint,
    rules: Sequence[RuleInput],
    output: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    reports: Sequence[str | os.PathLike[str]] = (),
    default_report: bool = True,
    strict: bool = False,
    allow_unmatched: bool = False,
    overwrite: bool = False,
    in_place: bool = False,
    device: str = "cpu",
    progress: bool = False,
    unsafe_pickle: TrustSpec = (),
    add: Sequence[str] = (),
    drop: Sequence[str] = (),
    rename: Sequence[str] = (),
    model: ModelInput | None = None,
    config: Mapping[str, Any] | None = None,
    plot: str | os.PathLike[str] | None = None,
    finish_report: Callable[[Report], Report] | None = None,
) -> Report:
    """Re-initialize or transplant the tensors the rules match and write a new checkpoint.
    `model` (a Hugging Face directory, hf:// URL, `module:callable`, an `nn.Module` or a
    `reinit.model.Model`) enables `type:` patterns, module fans and the `default` scheme.

    `drop` (patterns), `rename` (`PATTERN=TEMPLATE`) and `add` (`NAME=[d0,...]:SCHEME`)
    change the list of tensors first, in that order; the rules then see the new names.

    Returns the report (also written to the default report path unless `default_report` is
    False, and to each of `reports` in the format its extension names). `source` may be an
    open `Checkpoint` (e.g. a recipe's in-memory step result); `config` overrides the model
    config that scaled_normal/small_init read (default: the checkpoint's config.json)."""
    started = time.perf_counter()
    source_text = source.source if isinstance(source, Checkpoint) else os.fspath(source)
    opened: str | Checkpoint = source if isinstance(source, Checkpoint) else source_text
    from reinit.planning.surgery import parse_surgery

    rule_objs = as_rules(rules)
    if not rule_objs and not (add or drop or rename):
        raise UsageError(
            f"{source_text}: no rules, so apply would only copy the checkpoint; give at least "
            "one rule (e.g. '*.weight=kaiming'), or add/drop/rename"
        )
    surgery = parse_surgery(add, drop, rename)
    device = check_device(device)
    for r in reports:  # checked before any work, so a typo costs nothing
        check_suffix(r, "--report", "report")
    if plot is not None:
        check_suffix(plot, "--plot", "plot")
    with ExitStack() as stack:
        from reinit.planning.transplant import SourcePool

        ckpt = stack.enter_context(open_source(opened, unsafe_pickle, progress))
        ckpt, edited = edit_checkpoint(ckpt, surgery, allow_unmatched, seed, device)
        sources = stack.enter_context(SourcePool(ckpt, unsafe_pickle, progress))
        view = model_view(model, ckpt)
        the_plan, ties = plan_for(
            ckpt, rule_objs, strict, allow_unmatched, sources, view, config, edited
        )
        inputs = Inputs.of([source_text, *sources.opened()])
        spec = resolve_output(
            source_text, ckpt, output, overwrite=overwrite, in_place=in_place, inputs=inputs
        )
        targets = _side_targets(spec, reports, plot, inputs, default_report, overwrite, in_place)
        applier = Applier(ckpt, seed, device, sources, ties, view)
        rule_texts = tuple(r.text for r in rule_objs)
        refs = {r.name: r for r in ckpt.refs()}
        by_name = {e.name: e for e in the_plan.entries}
        files = output_files(spec, [refs[e.name] for e in the_plan.entries], ckpt)
        extras = (
            extras_to_copy(ckpt, [(f.relname, f.source_shard) for f in files], source_text)
            if spec.fmt == "directory"
            else []
        )
        ordered = [by_name[n] for f in files for n in f.names]
        total = sum(refs[e.name].nbytes for e in the_plan.entries)
        # --in-place on a folder: only the files written here replace their namesakes
        merge = in_place and spec.fmt == "directory" and spec.path.is_dir()
        into_source = merge and inputs.owner(spec.path) == spec.path.resolve()
        if spec.fmt == "directory" and not merge:
            held = [f.relname for f in files] + list(ckpt.extra_files())
            check_replace_folder(spec.path, [*held, INDEX_NAME, REPORT_NAME])
        bar = stack.enter_context(progress_bar(total, progress, "reinit apply"))
        pub = stack.enter_context(Publication())
        how = how_to_publish(overwrite=overwrite, in_place=in_place)
        tmp = pub.stage(
            spec.path,
            how="merge" if merge else how,
            directory=spec.fmt == "directory",
            first=tuple(f.relname for f in files),
            last=(INDEX_NAME, REPORT_NAME),
        )
        stream = prefetch(applier.stream(ordered), WRITE_AHEAD, "reinit-compute")
        with closing(stream) as pieces:
            if spec.fmt == "torch":
                entries, bytes_written = _write_torch(tmp, pieces, by_name, bar, ties)
            else:
                entries, bytes_written = [], 0
                for f in files:
                    target = (
                        output_path(tmp, f.relname, source_text) if spec.fmt == "directory" else tmp
                    )
                    target.parent.mkdir(parents=True, exist_ok=True)
                    layout = [(n, by_name[n].dtype, by_name[n].shape) for n in f.names]
                    meta = output_metadata(ckpt, f.source_shard, seed, rule_texts)
                    with SafetensorsWriter(target, layout, meta) as w:
                        entries.extend(_write_pieces(w, pieces, len(f.names), bar))
                    bytes_written += w.bytes_written
                if spec.fmt == "directory":
                    # --in-place into the source folder: its other files are already there
                    copied = [] if into_source else extras
                    bytes_written += _finish_directory(tmp, ckpt, files, refs, copied)
        order = {e.name: i for i, e in enumerate(the_plan.entries)}
        entries.sort(key=lambda e: order[e.name])
        report = make_report(
            source_text, spec.path, seed, rule_texts, entries, bytes_written, started, the_plan
        )
        if finish_report is not None:
            report = finish_report(report)
        if default_report and spec.fmt == "directory":
            write_text_file(tmp / REPORT_NAME, report.to_json() + "\n")
        stage_side_outputs(pub, report, targets, how)
        pub.commit()  # the checkpoint, its reports and plot: all of them or none
    return report


def _side_targets(
    spec: OutputSpec,
    reports: Sequence[str | os.PathLike[str]],
    plot: str | os.PathLike[str] | None,
    inputs: Inputs,
    default_report: bool,
    overwrite: bool,
    in_place: bool,
) -> list[tuple[str, Path]]:
    """The reports and plot a run writes beside its checkpoint, as (kind, path), each checked
    by the one rule (`check_target`) before any work."""
    out: list[tuple[str, Path]] = []
    if default_report and spec.fmt != "directory":
        path = spec.default_report
        if os.path.lexists(path) and not (overwrite or in_place):
            raise OutputError(f"-o {spec.path}: its report {path} exists; pass --overwrite")
        out.append(("report", path))
    for r in reports:
        out.append(
            ("report", check_target(r, "--report", "report", inputs=inputs, overwrite=overwrite))
        )
    if plot is not None:
        out.append(
            ("plot", check_target(plot, "--plot", "plot", inputs=inputs, overwrite=overwrite))
        )
    check_distinct([spec.path, *(p for _, p in out)])
    return out


def stage_side_outputs(
    pub: Publication, report: Report, targets: Sequence[tuple[str, Path]], how: str
) -> None:
    from reinit.report.files import render_for_path

    for kind, path in targets:
        tmp = pub.stage(path, how=how)
        try:
            if kind == "plot":
                from reinit.report.plot import plot_report

                plot_report(report, tmp, direct=True)
            else:
                write_text_file(tmp, render_for_path(report, path.name))
        except OSError as e:  # named as the user named it, not as our temporary
            raise write_error(str(path), e) from None


def _write_pieces(
    w: SafetensorsWriter, pieces: Iterator[Piece], count: int, bar: Any
) -> list[TensorEntry]:
    """Write `count` tensors' pieces with `w`; return their report entries."""
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
        bar.update(piece.nbytes)
    return entries


def _write_torch(
    tmp: Path,
    pieces: Iterator[Piece],
    by_name: dict[str, PlanEntry],
    bar: Any,
    ties: Ties | None = None,
) -> tuple[list[TensorEntry], int]:
    """The `.bin/.pt` output: `torch.save` needs every tensor at once, so this form holds the
    whole model in memory. Tied names stay tied (one tensor object, one storage in the file)."""
    state, entries = assemble(pieces, by_name, ties, on_piece=bar.update)
    return entries, write_torch_file(tmp, state)


def _finish_directory(
    tmp: Path,
    ckpt: Checkpoint,
    files: Sequence[OutFile],
    refs: dict[str, TensorRef],
    extras: Sequence[tuple[str, Path]],
) -> int:
    """Copy the non-weight files (checked by `extras_to_copy`) and write the shard index
    (when there is more than one shard, or the source had an index)."""
    written = 0
    for rel, src in extras:
        dst = output_path(tmp, rel, ckpt.source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        written += copy_regular(src, dst, ckpt.source)
    has_index = getattr(getattr(ckpt, "layout", None), "index", None) is not None
    if len(files) > 1 or has_index:
        index = {
            "metadata": {"total_size": sum(refs[n].nbytes for f in files for n in f.names)},
            "weight_map": {n: f.relname for f in files for n in f.names},
        }
        text = json.dumps(index, indent=2) + "\n"
        write_text_file(tmp / "model.safetensors.index.json", text)
        written += len(text)
    return written
