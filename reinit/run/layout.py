"""Stage 2 of a run that writes, `lay_out`: where every byte goes, decided before anything is
written. The output's path and form, its files (shards) and the tensors of each in write order,
each tensor's output dtype, the source files copied beside, the config.json and shard index
texts, the reports and plot beside, how it is published. Every refusal of an output happens
here (exit 2, nothing written).

A `Layout` is plain data: a writer may write any subset of its `shards()` (`run.write.write`)
and publishing is a step of its own after every writer has finished."""

from __future__ import annotations

__all__ = ["Layout", "OutputRequest", "check_run_flags", "lay_out"]

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reinit.errors import OutputError, ReinitError, UsageError
from reinit.io.checkpoint import Checkpoint
from reinit.io.confine import extras_to_copy
from reinit.io.formats import DcpBox, dtype_name, name_size
from reinit.io.memory import reshaped
from reinit.io.publish import how_to_publish
from reinit.io.targets import REPORT_NAME, Inputs, check_replace_folder, check_target
from reinit.options import ApplyOptions
from reinit.planning.dcp_names import DcpNames, dcp_names
from reinit.planning.model import ModelView
from reinit.planning.model_load import model_of_config
from reinit.planning.planner import PlanEntry
from reinit.planning.session import check_device
from reinit.report.reference import check_tolerance
from reinit.report.views import SideOutput, check_formats, report_targets
from reinit.run.config_update import (
    config_for,
    labels_list,
    parse_config_set,
    stale_file,
    update_config,
)
from reinit.run.outcontrol import (
    OutputControl,
    model_order,
    parse_dtype,
    parse_size,
    shared_storage,
)
from reinit.run.output import (
    INDEX_NAME,
    OutFile,
    OutputSpec,
    check_format_name,
    check_no_stale_shards,
    check_output_form,
    check_unread_names,
    default_output,
    output_files,
    output_format,
    refuse_lossy_in_place,
    refuse_unread_in_place,
    resolve_output,
    with_format,
)
from reinit.run.prepare import Prepared

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class OutputRequest:
    """The output options of a run, parsed and checked before any work: `-o`, `--dtype`,
    `--checksums`, `--max-shard-size`, `--config`, `--labels` (and the report formats)."""

    output: StrPath | None
    dtype: torch.dtype | None
    checksums: bool
    max_shard: int | None
    config_set: tuple[tuple[str, object], ...]
    labels: tuple[str, ...] | None

    @classmethod
    def of(cls, output: StrPath | None, o: ApplyOptions) -> OutputRequest:
        if output is not None and not isinstance(output, (str, os.PathLike)):
            raise UsageError(
                f"output must be a path (str or os.PathLike), got {type(output).__name__}"
            )
        check_formats(o.reports, o.plot, "--report")  # before any work: a typo costs nothing
        dtype, max_shard = parse_dtype(o.dtype), parse_size(o.max_shard_size)
        return cls(
            output,
            dtype,
            o.checksums,
            max_shard,
            parse_config_set(o.config_set),
            labels_list(o.labels),
        )


@dataclass(frozen=True)
class Layout:
    """Where every byte of a run goes (see the module docstring). `control` casts and hashes
    the pieces on the way (its summary is the writer's warning); `plan_entries` are the planned
    tensors by name, `in_bytes` their source bytes (progress); `extras` are source files
    copied into a folder output; `index` and `config_file` are the texts of the shard index
    and config.json (None: not written); `side` the reports and plot; `how` and `merge` how
    the checkpoint is published."""

    spec: OutputSpec
    files: tuple[OutFile, ...]
    plan_entries: Mapping[str, PlanEntry]
    out_dtype: Mapping[str, str]  # each tensor's output dtype, by name (`dtype_name`)
    in_bytes: Mapping[str, int]
    control: OutputControl
    side: tuple[SideOutput, ...]
    extras: tuple[tuple[str, Path], ...]
    index: str | None
    config_file: str | None
    notes: tuple[str, ...]
    how: str
    merge: bool
    default_report: bool
    # `--format dcp`: the tensors written as (a box of) a module tensor of another name, and
    # the module's tied names listed with the records of the name they are tied to
    dcp_chunks: Mapping[str, DcpBox] = field(default_factory=dict)
    dcp_aliases: Mapping[str, str] = field(default_factory=dict)

    def shards(self) -> tuple[str, ...]:
        """The output files' names (within a folder output; "" for a single file)."""
        return tuple(f.relname for f in self.files)

    def files_of(self, shards: Sequence[str] | None = None) -> tuple[OutFile, ...]:
        """The output files named `shards` (all of them for None), in layout order."""
        if shards is None:
            return self.files
        unknown = sorted(set(shards) - set(self.shards()))
        if unknown:
            raise UsageError(f"{self.spec.path}: no output shard {unknown[0]!r} in the layout")
        wanted = set(shards)
        return tuple(f for f in self.files if f.relname in wanted)

    @property
    def config_beside(self) -> Path | None:
        """Where a file output's config.json goes (a folder's is one of its files)."""
        if self.config_file is None or self.spec.fmt == "directory":
            return None
        return self.spec.path.parent / "config.json"


def lay_out(prepared: Prepared, request: OutputRequest) -> Layout:
    """Decide where every byte of the prepared run goes, refusing any output that may not be
    written (see `Layout`); the reports, plot and how to publish come from the run's options."""
    o = prepared.options
    inputs = Inputs.of([prepared.job.source_text, *prepared.sources.opened()])
    spec = _output_spec(prepared, request, inputs, o)
    side = _side_targets(spec, o, inputs)
    control = OutputControl(request.dtype, request.checksums)
    entries = prepared.by_name
    out_dtype = {n: control.out_dtype_name(e.dtype_name) for n, e in entries.items()}
    files = _files(prepared, spec, request.max_shard, out_dtype)
    extras = _extras(prepared, spec, files)
    notes, config_file = _config(prepared, spec, request, extras, o.in_place)
    if spec.fmt == "directory":
        skip = {"config.json"} if config_file is not None else set()
        extras = [(r, p) for r, p in extras if not stale_file(r) and r not in skip]
    elif config_file is not None:
        _check_config_beside(spec, side, inputs, o)
    merge = _check_folder(prepared, spec, files, o.in_place)
    into_source = merge and inputs.owner(spec.path) == spec.path.resolve()
    refs = {r.name: r for r in prepared.ckpt.refs()}
    dcp = _dcp_names(prepared, request, out_dtype) if spec.fmt == "dcp" else DcpNames({})
    if dcp.note is not None:
        notes.append(dcp.note)
    return Layout(
        spec=spec,
        files=tuple(files),
        plan_entries=entries,
        out_dtype=out_dtype,
        in_bytes={n: refs[n].nbytes for n in entries},
        control=control,
        side=tuple(side),
        extras=() if into_source else tuple(extras),  # in place: the others are there already
        index=_index(prepared, spec, files, out_dtype, request.max_shard is not None),
        config_file=config_file,
        notes=tuple(notes),
        how=how_to_publish(overwrite=o.overwrite, in_place=o.in_place),
        merge=merge,
        default_report=o.default_report,
        dcp_chunks=dcp.chunks,
        dcp_aliases=dcp.aliases,
    )


def _dcp_names(
    prepared: Prepared, request: OutputRequest, out_dtype: Mapping[str, str]
) -> DcpNames:
    """A DCP output's tensors under the model's `state_dict()` names (`planning.dcp_names`):
    the model of `--model`, else the one the output's config describes (the source's own
    config.json, as the surgery and `--config` change it: a transformers architecture);
    without one, the checkpoint's names (a note says why when the config names a model that
    is not built)."""
    entries = [(e.name, out_dtype[e.name], tuple(e.shape)) for e in prepared.plan.entries]
    try:
        view = prepared.view or _own_model_view(prepared, request, entries)
    except ReinitError as why:
        said = str(why).removeprefix(f"--model {prepared.job.source_text}: ")
        return DcpNames({}, note=f"--format dcp: written under the checkpoint's names ({said})")
    if view is None:
        return DcpNames({})
    return dcp_names(view, entries)


def _own_model_view(
    prepared: Prepared, request: OutputRequest, entries: Sequence[tuple[str, str, tuple[int, ...]]]
) -> ModelView | None:
    """The model the output's config.json describes (the source's, followed as a folder
    output's follows the surgery: a dropped expert makes a model of fewer experts), seen
    through the output's names; None when there is no config or it names no model type.
    A config this one cannot build (transformers not installed, an unknown type, custom
    code) raises its `ReinitError`."""
    config = prepared.source_config()
    if config is None or "model_type" not in config:
        return None
    shapes = {n: s for n, _, s in entries}
    if prepared.job.surgery or reshaped(prepared.ckpt) or request.config_set or request.labels:
        config = update_config(config, shapes, request.config_set, request.labels).config
    model = model_of_config(prepared.job.source_text, config, internal=True)
    return model.align(list(shapes), shapes)


def _output_spec(
    prepared: Prepared, request: OutputRequest, inputs: Inputs, o: ApplyOptions
) -> OutputSpec:
    """The output's path and form; `--max-shard-size` turns a default file output into a
    folder of the same stem."""
    source, ckpt = prepared.job.source_text, prepared.ckpt
    output, overwrite, in_place = request.output, o.overwrite, o.in_place
    if output is None and not in_place and request.max_shard is not None:
        output = _default_shard_folder(source, ckpt)
    spec = resolve_output(
        source, ckpt, output, overwrite=overwrite, in_place=in_place, inputs=inputs
    )
    spec = with_format(spec, o.format, request.max_shard is not None)
    refuse_unread_in_place(source, ckpt.kind, spec)
    refuse_lossy_in_place(source, ckpt, spec)
    if request.max_shard is not None and spec.fmt not in ("directory", "dcp"):
        raise UsageError(
            f"-o {spec.path}: --max-shard-size writes a folder of shards; give a "
            "folder as -o (e.g. -o out/)"
        )
    return spec


def _default_shard_folder(source: str, ckpt: Checkpoint) -> str | None:
    """The default output under `--max-shard-size`: a file default (`X.reinit.safetensors`)
    becomes the folder of that stem (`X.reinit/`), the path then checked for existence (not
    the file this run does not write); a folder default stays as it is (None)."""
    if ckpt.kind == "memory":
        return None  # no default output: resolve_output says so
    default = default_output(source, ckpt)
    if output_format(os.fspath(default)) != "safetensors":
        return None
    return str(default.with_name(default.name.split(".safetensors")[0])) + "/"


def check_run_flags(output: StrPath | None, o: ApplyOptions) -> None:
    """The flags a run checks before any work, checked for a dry run: it writes nothing, and
    once said yes (exit 0) to `--max-shard-size nan`, `--dtype int8`, `--format bogus`,
    `--report r.txt`, `--reference-tolerance 0`, `--device tpu` or `-o out.json`, which the
    run then refused (exit 2). Whether the output exists, or its folder, is the run's question."""
    check_output_form(output)
    OutputRequest.of(output, o)
    check_format_name(o.format)
    check_tolerance(o.reference_tolerance)
    check_device(o.device)


def _side_targets(spec: OutputSpec, o: ApplyOptions, inputs: Inputs) -> list[SideOutput]:
    """The reports and plot a run writes beside its checkpoint, each checked by the one rule
    before any work; the default report of a file output comes first."""
    _refuse_inside_folder_output(spec, o)
    first: list[SideOutput] = []
    if o.default_report and spec.fmt != "directory":
        path = spec.default_report
        if os.path.lexists(path) and not (o.overwrite or o.in_place):
            raise OutputError(f"-o {spec.path}: its report {path} exists; pass --overwrite")
        first.append(SideOutput("report", path))
    rest = report_targets(
        _besides(o.reports, first),
        o.plot,
        "--report",
        inputs=inputs,
        overwrite=o.overwrite,
        also=[spec.path, *(t.path for t in first)],
    )
    return [*first, *rest]


def _refuse_inside_folder_output(spec: OutputSpec, o: ApplyOptions) -> None:
    """A `--report`/`--plot` inside a folder output: the folder is written whole and renamed
    into place, so the run failed at its end ('cannot write'), after all the work. Refused
    first (with `--in-place` such a path is inside the source folder: refused as that)."""
    if spec.fmt not in ("directory", "dcp") or o.in_place:
        return
    folder = spec.path.resolve()
    named: list[tuple[str, StrPath]] = [("--report", r) for r in o.reports]
    if o.plot is not None:
        named.append(("--plot", o.plot))
    for option, path in named:
        if Path(path).resolve().is_relative_to(folder):
            raise OutputError(
                f"{option} {os.fspath(path)}: lies inside the output folder {spec.path}, which "
                "the run writes whole; put it beside the folder (it holds its own "
                "reinit-report.json)"
            )


def _besides(reports: Sequence[StrPath], first: Sequence[SideOutput]) -> list[StrPath]:
    """The `--report` paths less the default report's own (naming it asks for that report,
    which is written anyway; the same path twice would be refused as named twice)."""
    default = {os.path.abspath(t.path) for t in first}
    return [r for r in reports if os.path.abspath(r) not in default]


def _files(
    prepared: Prepared,
    spec: OutputSpec,
    max_shard: int | None,
    out_dtype: Mapping[str, str],
) -> list[OutFile]:
    """The output files and their tensors: the source's layout, or split as save_pretrained
    splits (in the model's order when there is one) by output bytes."""
    ckpt, view = prepared.ckpt, prepared.view
    refs = {r.name: r for r in ckpt.refs()}
    sizes = {n: refs[n].numel * name_size(d) for n, d in out_dtype.items()}
    in_order = [refs[e.name] for e in prepared.plan.entries]
    # save_pretrained's order: the model's (a `reinit new` model is in that order already)
    if max_shard is None or view is None:
        return output_files(spec, in_order, ckpt, max_shard, sizes)
    if ckpt.kind != "model":
        in_order = model_order(in_order, view)
    # a layer's per-expert tensors, written from one storage: one shard, as save_pretrained
    return output_files(spec, in_order, ckpt, max_shard, sizes, shared_storage(view, sizes))


def _extras(
    prepared: Prepared, spec: OutputSpec, files: Sequence[OutFile]
) -> list[tuple[str, Path]]:
    """The source folder's other files a folder output copies (checked: regular, inside)."""
    if spec.fmt != "directory":
        return []
    shards = [(f.relname, f.source_shard) for f in files]
    return extras_to_copy(prepared.ckpt, shards, prepared.job.source_text)


def _config(
    prepared: Prepared,
    spec: OutputSpec,
    request: OutputRequest,
    extras: Sequence[tuple[str, Path]],
    in_place: bool,
) -> tuple[list[str], str | None]:
    """The notes and the output's config.json text (None: left as it is), with a note for
    each source file not copied because it describes the source's weights."""
    shapes = {e.name: e.shape for e in prepared.plan.entries}
    # a recipe's earlier steps may have done the surgery: its input's shapes then differ
    edited_before = bool(prepared.job.surgery) or reshaped(prepared.ckpt)
    notes, config_file = config_for(
        spec.fmt,
        prepared.source_config,
        shapes,
        request.config_set,
        request.labels,
        edited_before,
        dtype_name(request.dtype) if request.dtype is not None else None,
    )
    if spec.fmt != "directory":
        return notes, config_file
    stale = [
        f"not copied: {r} (it describes the source's weights)"
        for r, _ in extras
        if stale_file(r) and not in_place  # in place: they stay where they are
    ]
    return [*stale, *notes], config_file


def _check_config_beside(
    spec: OutputSpec, side: Sequence[SideOutput], inputs: Inputs, o: ApplyOptions
) -> None:
    """A file output's config.json goes beside it: checked as any output, and distinct."""
    beside = check_target(
        spec.path.parent / "config.json",
        "--config",
        "report",
        inputs=inputs,
        overwrite=o.overwrite or o.in_place,
    )
    paths = [spec.path, *(t.path for t in side)]
    if beside.resolve() in {p.resolve() for p in paths}:
        raise OutputError(f"--config: {beside} is also another output; choose another -o")


def _check_folder(
    prepared: Prepared, spec: OutputSpec, files: Sequence[OutFile], in_place: bool
) -> bool:
    """Whether the folder output merges into an existing folder (--in-place: only the files
    written replace their namesakes); a folder replaced whole must hold only what a run
    writes there."""
    merge = in_place and spec.fmt == "directory" and spec.path.is_dir()
    if merge:
        check_unread_names(spec.path, files, prepared.ckpt)
        check_no_stale_shards(spec.path, files, prepared.ckpt)
    if spec.fmt == "directory" and not merge:
        held = [f.relname for f in files] + list(prepared.ckpt.extra_files())
        check_replace_folder(spec.path, [*held, INDEX_NAME, REPORT_NAME])
    if spec.fmt == "dcp" and spec.path.is_dir():
        _check_dcp_folder(spec.path, in_place)
    return merge


def _check_dcp_folder(path: Path, in_place: bool) -> None:
    """`--format dcp` replaces its folder whole: `--in-place` may drop only the DCP's own files
    (`.metadata`, `*.distcp`, `reinit.json`), `--overwrite` only what reinit's DCP output
    holds."""
    from reinit.io.formats import DCP_RECORD_NAME, is_dcp_file

    foreign = _not_our_record(path / DCP_RECORD_NAME)
    if not in_place:
        ours = [".metadata", "__0_0.distcp"] + ([] if foreign else [DCP_RECORD_NAME])
        check_replace_folder(path, ours, merges=False)
        return
    extra = sorted(
        e.name
        for e in path.iterdir()
        if e.is_dir() or not is_dcp_file(e.name) or (e.name == DCP_RECORD_NAME and foreign)
    )
    if extra:
        shown = ", ".join(extra[:5]) + (", …" if len(extra) > 5 else "")
        raise OutputError(
            f"--in-place: {path} holds {shown} besides the DCP checkpoint; --format dcp writes "
            "the directory whole and would delete them: move them out, or give -o"
        )


def _not_our_record(path: Path) -> bool:
    """Whether a DCP folder's `reinit.json` is there and is not a record reinit wrote (a
    user's file of that name, a link, a folder): `--overwrite` and `--in-place` would delete
    it with the folder, so it counts as the user's."""
    from reinit.io.jsonfile import parse_json, read_text_file
    from reinit.limits import MAX_CONFIG_BYTES
    from reinit.run.record import parse_provenance

    if not path.is_symlink() and not path.exists():
        return False
    if path.is_symlink() or not path.is_file():
        return True
    try:
        data = parse_json(read_text_file(path, f"record {path}", MAX_CONFIG_BYTES), str(path))
    except ReinitError:
        return True
    return parse_provenance(data) is None


def _index(
    prepared: Prepared,
    spec: OutputSpec,
    files: Sequence[OutFile],
    out_dtype: Mapping[str, str],
    sharded: bool,
) -> str | None:
    """The shard index's text: when there is more than one shard, or the source had an index
    (save_pretrained writes none for one shard)."""
    if spec.fmt != "directory" or (sharded and len(files) < 2):
        return None
    ckpt = prepared.ckpt
    has_index = getattr(getattr(ckpt, "layout", None), "index", None) is not None
    if len(files) < 2 and not has_index:
        return None
    refs = {r.name: r for r in ckpt.refs()}
    names = [n for f in files for n in f.names]
    meta: dict[str, int] = {
        "total_size": sum(refs[n].numel * name_size(out_dtype[n]) for n in names)
    }
    if sharded:  # save_pretrained's metadata, keys sorted as it writes them
        meta["total_parameters"] = sum(refs[n].numel for n in names)
    index = {"metadata": meta, "weight_map": {n: f.relname for f in files for n in f.names}}
    return json.dumps(index, indent=2, sort_keys=sharded) + "\n"
