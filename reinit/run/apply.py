"""`apply`: open the source, plan, resolve the output, stream the plan into the output files
and publish them (checkpoint, reports and plot together or not at all)."""

from __future__ import annotations

__all__ = ["apply"]

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reinit.errors import OutputError, UsageError
from reinit.io.checkpoint import Checkpoint
from reinit.io.confine import copy_regular, extras_to_copy, output_path
from reinit.io.memory import reshaped
from reinit.io.pipeline import prefetch
from reinit.io.publish import Publication, how_to_publish
from reinit.io.targets import REPORT_NAME, Inputs, check_replace_folder, check_target
from reinit.io.writer import SafetensorsWriter, write_torch_file
from reinit.options import APPLY_FIELDS, ApplyOptions, OptionKwargs, with_kwargs
from reinit.planning.planner import PlanEntry
from reinit.planning.session import (
    RuleInput,
    as_rules,
    check_device,
    edit_checkpoint,
    model_view,
    open_source,
    plan_for,
)
from reinit.planning.surgery import parse_surgery
from reinit.planning.ties import Ties
from reinit.report.assemble import make_report
from reinit.report.entries import Report, TensorEntry
from reinit.report.files import (
    SideOutput,
    check_formats,
    render_for_path,
    report_targets,
    stage_report_files,
    write_text_file,
)
from reinit.report.reference import basis_for, check_tolerance
from reinit.run.config_update import config_for, labels_list, parse_config_set, stale_file
from reinit.run.outcontrol import OutputControl, model_order, parse_dtype, parse_size
from reinit.run.output import (
    INDEX_NAME,
    OutFile,
    OutputSpec,
    check_unread_names,
    output_files,
    output_metadata,
    resolve_output,
)
from reinit.run.pieces import Piece, assemble, progress_bar
from reinit.run.stream import WRITE_AHEAD, Applier

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Progress(Protocol):
    """What the writers need of a progress bar (tqdm's `update`)."""

    def update(self, n: float | None = 1) -> bool | None: ...


def apply(
    source: str | os.PathLike[str] | Checkpoint,
    rules: Sequence[RuleInput],
    output: str | os.PathLike[str] | None = None,
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> Report:
    """Re-initialize or transplant the tensors the rules match and write a new checkpoint
    (with its report beside it), published atomically: all of it or nothing.

    Args:
        source: A checkpoint file (.safetensors, .bin/.pt), a model folder, `hf://OWNER/NAME`,
            or an open `Checkpoint` (e.g. `StateDictCheckpoint(tensors, like=ckpt)`).
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s); the last matching rule wins.
        output: The output file or folder; by default beside the source
            (`X.reinit.safetensors`, `D-reinit/`, `./NAME-reinit/` for the Hub).
        options: An `ApplyOptions` holding any of the keywords below; keywords given too
            override it.
        **kwargs: The fields of `reinit.ApplyOptions`: `seed` (int, 0), `reports` (extra report
            paths, .json/.csv/.md), `default_report` (True), `strict`, `allow_unmatched`,
            `overwrite`, `in_place`, `device` ("cpu" or "cuda"), `progress`, `unsafe_pickle`
            (torch files trusted to run code), `add`/`drop`/`rename`/`resize` (surgery, run
            before the rules in the order drop, rename, resize, add; the rules see the new
            names and shapes), `model` (a
            Hugging Face folder, hf:// URL, `module:callable`, an `nn.Module` or a
            `reinit.planning.model.Model`: enables `type:` patterns, module fans and `default`),
            `config` (overrides the model config scaled_normal/small_init read), `plot` (a PNG
            path), `reference_tolerance` (2.0: `off_reference` beyond that factor of the
            model's own scale), `finish_report` (maps the report before it is written). An
            unknown keyword is a TypeError.

    Returns:
        The `Report` (also written to the default report path unless `default_report=False`,
        and to each of `reports` in the format its extension names).

    Raises:
        ReinitError: a subclass naming the file, tensor or rule at fault; nothing is written.

    Example:

    ```python
    import reinit

    report = reinit.apply("model.safetensors", ["*.weight=kaiming", "*.bias=zeros"], seed=0)
    print(report.output, report.summary.reinit)  # model.reinit.safetensors 2
    ```
    """
    o = with_kwargs("apply", options, kwargs, APPLY_FIELDS)
    seed, device = o.seed, o.device
    overwrite, in_place, default_report = o.overwrite, o.in_place, o.default_report
    add, drop, rename, resize = o.add, o.drop, o.rename, o.resize
    reports, plot = o.reports, o.plot
    started = time.perf_counter()
    source_text = source.source if isinstance(source, Checkpoint) else os.fspath(source)
    opened: str | Checkpoint = source if isinstance(source, Checkpoint) else source_text
    rule_objs = as_rules(rules)
    if not rule_objs and not (add or drop or rename or resize):
        raise UsageError(
            f"{source_text}: no rules, so apply would only copy the checkpoint; give at least "
            "one rule (e.g. '*.weight=kaiming'), or add/drop/rename/resize"
        )
    surgery = parse_surgery(add, drop, rename, resize)
    device = check_device(device)
    check_formats(reports, plot, "--report")  # before any work, so a typo costs nothing
    control = OutputControl(parse_dtype(o.dtype), o.checksums)
    max_shard = parse_size(o.max_shard_size)
    tolerance = check_tolerance(o.reference_tolerance)
    config_set, labels = parse_config_set(o.config_set), labels_list(o.labels)
    with ExitStack() as stack:
        from reinit.planning.transplant import SourcePool

        ckpt = stack.enter_context(open_source(opened, o.unsafe_pickle, o.progress, o.key))
        source_config = ckpt.config  # the source's config.json, read only when needed
        ckpt, edited = edit_checkpoint(ckpt, surgery, o.allow_unmatched, seed, device)
        sources = stack.enter_context(SourcePool(ckpt, o.unsafe_pickle, o.progress))
        view = model_view(o.model, ckpt)
        the_plan, ties = plan_for(
            ckpt, rule_objs, o.strict, o.allow_unmatched, sources, view, o.config, edited
        )
        inputs = Inputs.of([source_text, *sources.opened()])
        spec = resolve_output(
            source_text, ckpt, output, overwrite=overwrite, in_place=in_place, inputs=inputs
        )
        if max_shard is not None and spec.fmt != "directory":
            if output is not None or in_place:
                raise UsageError(
                    f"-o {spec.path}: --max-shard-size writes a folder of shards; give a "
                    "folder as -o (e.g. -o out/)"
                )
            folder = str(spec.path.with_name(spec.path.name.split(".safetensors")[0])) + "/"
            spec = resolve_output(
                source_text, ckpt, folder, overwrite=overwrite, in_place=False, inputs=inputs
            )
        targets = _side_targets(spec, reports, plot, inputs, default_report, overwrite, in_place)
        applier = Applier(ckpt, seed, device, sources, ties, view)
        applier.spans = not control.active  # a cast or a hash reads kept bytes as chunks
        rule_texts = tuple(r.text for r in rule_objs)
        refs = {r.name: r for r in ckpt.refs()}
        by_name = {e.name: e for e in the_plan.entries}
        out_dtype = {e.name: control.out_dtype(e.dtype) for e in the_plan.entries}
        numels = {n: refs[n].numel for n in out_dtype}
        sizes = {n: numels[n] * d.itemsize for n, d in out_dtype.items()}
        in_order = [refs[e.name] for e in the_plan.entries]
        if max_shard is not None and view is not None:  # save_pretrained's order: the model's
            in_order = model_order(in_order, view)
        files = output_files(spec, in_order, ckpt, max_shard, sizes)
        extras = (
            extras_to_copy(ckpt, [(f.relname, f.source_shard) for f in files], source_text)
            if spec.fmt == "directory"
            else []
        )
        shapes = {e.name: e.shape for e in the_plan.entries}
        # a recipe's earlier steps may have done the surgery: its input's shapes then differ
        edited_before = bool(surgery) or reshaped(ckpt)
        notes, config_file = config_for(
            spec.fmt, source_config, shapes, config_set, labels, edited_before
        )
        if spec.fmt == "directory":
            notes = [
                *(
                    f"not copied: {r} (it describes the source's weights)"
                    for r, _ in extras
                    if stale_file(r) and not in_place  # in place: they stay where they are
                ),
                *notes,
            ]
            skip = {"config.json"} if config_file is not None else set()
            extras = [(r, p) for r, p in extras if not stale_file(r) and r not in skip]
        elif config_file is not None:
            beside = check_target(
                spec.path.parent / "config.json",
                "--config",
                "report",
                inputs=inputs,
                overwrite=overwrite or in_place,
            )
            targets_paths = [spec.path, *(t.path for t in targets)]
            if beside.resolve() in {p.resolve() for p in targets_paths}:
                raise OutputError(f"--config: {beside} is also another output; choose another -o")
        ordered = [by_name[n] for f in files for n in f.names]
        total = sum(refs[e.name].nbytes for e in the_plan.entries)
        # --in-place on a folder: only the files written here replace their namesakes
        merge = in_place and spec.fmt == "directory" and spec.path.is_dir()
        into_source = merge and inputs.owner(spec.path) == spec.path.resolve()
        if merge:
            check_unread_names(spec.path, files, ckpt)
        if spec.fmt == "directory" and not merge:
            held = [f.relname for f in files] + list(ckpt.extra_files())
            check_replace_folder(spec.path, [*held, INDEX_NAME, REPORT_NAME])
        bar = stack.enter_context(progress_bar(total, o.progress, "reinit apply"))
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
        with closing(stream) as raw:
            pieces = control.stream(raw, {e.name: e.dtype for e in the_plan.entries})
            if spec.fmt == "torch":
                cast = {n: replace(e, dtype=out_dtype[n]) for n, e in by_name.items()}
                entries, bytes_written = _write_torch(tmp, pieces, cast, bar, ties)
            else:
                entries, bytes_written = [], 0
                for f in files:
                    target = (
                        output_path(tmp, f.relname, source_text) if spec.fmt == "directory" else tmp
                    )
                    target.parent.mkdir(parents=True, exist_ok=True)
                    layout = [(n, out_dtype[n], by_name[n].shape) for n in f.names]
                    meta = output_metadata(ckpt, f.source_shard, seed, rule_texts)
                    with SafetensorsWriter(target, layout, meta) as w:
                        entries.extend(_write_pieces(w, pieces, len(f.names), bar, applier))
                    bytes_written += w.bytes_written
                if spec.fmt == "directory":
                    # --in-place into the source folder: its other files are already there
                    copied = [] if into_source else extras
                    bytes_written += _finish_directory(
                        tmp, ckpt, files, sizes, numels, copied, sharded=max_shard is not None
                    )
                    if config_file is not None:
                        write_text_file(output_path(tmp, "config.json", source_text), config_file)
                        bytes_written += len(config_file)
        order = {e.name: i for i, e in enumerate(the_plan.entries)}
        entries.sort(key=lambda e: order[e.name])
        basis = basis_for(ckpt, o.config, view, seed, tolerance)
        report = make_report(
            source_text,
            spec.path,
            seed,
            rule_texts,
            entries,
            bytes_written,
            started,
            the_plan,
            basis,
        )
        line = control.summary()
        if line is not None:
            report = replace(report, warnings=(*report.warnings, line))
        if notes:
            report = replace(report, notes=(*report.notes, *notes))
        if o.finish_report is not None:
            report = o.finish_report(report)
        if default_report and spec.fmt == "directory":
            write_text_file(tmp / REPORT_NAME, render_for_path(report, REPORT_NAME))
        stage_report_files(pub, report, targets, how)
        if config_file is not None and spec.fmt != "directory":
            write_text_file(pub.stage(spec.path.parent / "config.json", how=how), config_file)
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
) -> list[SideOutput]:
    """The reports and plot a run writes beside its checkpoint, each checked by the one rule
    before any work; the default report of a file output comes first."""
    first: list[SideOutput] = []
    if default_report and spec.fmt != "directory":
        path = spec.default_report
        if os.path.lexists(path) and not (overwrite or in_place):
            raise OutputError(f"-o {spec.path}: its report {path} exists; pass --overwrite")
        first.append(SideOutput("report", path))
    rest = report_targets(
        reports,
        plot,
        "--report",
        inputs=inputs,
        overwrite=overwrite,
        also=[spec.path, *(t.path for t in first)],
    )
    return [*first, *rest]


def _write_pieces(
    w: SafetensorsWriter, pieces: Iterator[Piece], count: int, bar: Progress, applier: Applier
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
    tmp: Path,
    pieces: Iterator[Piece],
    by_name: dict[str, PlanEntry],
    bar: Progress,
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
    sizes: dict[str, int],
    numel: dict[str, int],
    extras: Sequence[tuple[str, Path]],
    sharded: bool = False,
) -> int:
    """Copy the non-weight files (checked by `extras_to_copy`) and write the shard index
    (when there is more than one shard, or the source had an index)."""
    written = 0
    for rel, src in extras:
        dst = output_path(tmp, rel, ckpt.source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        written += copy_regular(src, dst, ckpt.source)
    has_index = getattr(getattr(ckpt, "layout", None), "index", None) is not None
    if sharded and len(files) < 2:  # save_pretrained writes no index for one shard
        return written
    if len(files) > 1 or has_index:
        meta: dict[str, int] = {"total_size": sum(sizes[n] for f in files for n in f.names)}
        if sharded:  # save_pretrained's metadata, keys sorted as it writes them
            meta["total_parameters"] = sum(numel[n] for f in files for n in f.names)
        index = {
            "metadata": meta,
            "weight_map": {n: f.relname for f in files for n in f.names},
        }
        text = json.dumps(index, indent=2, sort_keys=sharded) + "\n"
        write_text_file(tmp / INDEX_NAME, text)
        written += len(text)
    return written
