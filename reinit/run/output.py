"""Where a run writes and in what layout: the output path and format a SOURCE and `-o` give
(docs/guide/outputs.md), the output files of a directory or sharded output, and the provenance metadata."""

from __future__ import annotations

__all__ = [
    "INDEX_NAME",
    "OutFile",
    "OutputSpec",
    "check_format_name",
    "check_output_form",
    "check_unread_names",
    "default_output",
    "output_files",
    "output_format",
    "output_metadata",
    "record_json",
    "resolve_output",
    "shard_output_name",
    "check_no_stale_shards",
    "refuse_lossy_in_place",
    "refuse_unread_in_place",
    "with_format",
]

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from reinit.errors import OutputError, UsageError
from reinit.io.checkpoint import Checkpoint, TensorRef
from reinit.io.confine import (
    cache_blobs,
    check_output_names,
    check_relname,
)
from reinit.io.formats import TORCH_SUFFIXES
from reinit.io.hub import is_hf_url, parse_hf_url
from reinit.io.targets import REPORT_NAME, Inputs, check_output
from reinit.run.outcontrol import hf_shard_name, split_like_save_pretrained
from reinit.run.record import Provenance
from reinit.version import __version__

#: The shard index of a sharded output (transformers' name).
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class OutputSpec:
    """The checkpoint output of a run: where, and in which form (a file or a folder)."""

    path: Path
    fmt: str  # "safetensors" | "torch" | "directory" | "dcp"

    @property
    def default_report(self) -> Path:
        """Inside a folder output; beside a file output (`X.safetensors` -> `X.report.json`)."""
        if self.fmt == "directory":
            return self.path / REPORT_NAME
        name = self.path.name
        for suffix in (".safetensors", *TORCH_SUFFIXES):
            if name.lower().endswith(suffix):  # the form is read case-blind too
                return self.path.with_name(name[: -len(suffix)] + ".report.json")
        return self.path.with_name(name + ".report.json")


# Names that look like a file of another kind: without a trailing "/" such an -o is refused,
# not taken as a folder name (reports and recipes go elsewhere; weights are .safetensors/.bin).
FILE_SUFFIXES = frozenset(
    {".json", ".csv", ".md", ".txt", ".png", ".yaml", ".yml", ".toml", ".gguf", ".h5", ".onnx"}
    | {".npz", ".npy", ".pkl", ".msgpack", ".zip", ".tar", ".gz"}
)


def output_format(path: str) -> str:
    """The output form its name asks for: a known weight suffix is a file, anything else a
    folder."""
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    return "directory"


def default_output(source: str, ckpt: Checkpoint) -> Path:
    """docs/reference.md, "Sources and outputs": X.safetensors / X.bin -> X.reinit.safetensors; D -> D-reinit/;
    a DCP or ZeRO folder D -> D.reinit.safetensors; hf://OWNER/NAME -> ./NAME-reinit/."""
    if is_hf_url(source):
        return Path.cwd() / f"{parse_hf_url(source).name}-reinit"
    p = Path(source)
    if p.name in ("", ".", ".."):  # `.`, `./`, `x/..`: name the folder, beside it
        p = Path(os.path.abspath(p))
    if ckpt.kind == "directory":
        return p.parent / f"{p.resolve().name}-reinit"
    if ckpt.kind in ("dcp", "zero"):  # a folder: its whole name (`run.v2` has no suffix)
        return p.parent / f"{p.resolve().name}.reinit.safetensors"
    return p.with_name(p.stem + ".reinit.safetensors")


def check_output_form(output: str | os.PathLike[str] | None) -> None:
    """`-o` refused by its text alone, before any work (and by a dry run, which reads no
    output): empty, `-`, or a file name whose suffix is no checkpoint format."""
    if output is None:
        return
    text = os.fspath(output)
    if text == "":  # "." to pathlib: the current folder
        raise OutputError(
            "-o '': the output path is empty (an unset variable?); give a file or a folder"
        )
    if text == "-":  # a folder named `-`, once
        raise OutputError(
            "-o -: a checkpoint is written to a path, never to stdout; give a file or a folder "
            "(a folder named '-' is -o ./-/)"
        )
    suffix = Path(text).suffix.lower()
    slash = text.endswith(("/", os.sep))
    if not slash and suffix in FILE_SUFFIXES and not Path(text).is_dir():
        raise OutputError(  # `-o out.json` once wrote a folder named out.json/
            f"-o {text}: {suffix} is not a checkpoint format (use .safetensors, "
            f"{', '.join(TORCH_SUFFIXES)}); for a folder of that name write {text}/"
        )


def resolve_output(
    source: str,
    ckpt: Checkpoint,
    output: str | os.PathLike[str] | None,
    *,
    overwrite: bool,
    in_place: bool,
    inputs: Inputs | None = None,
) -> OutputSpec:
    """The output's path and form, refused (before any work) when it is, holds or lies in an
    input without `--in-place`, or exists without `--overwrite` (see `reinit.io.targets`)."""
    if output is None and ckpt.kind == "memory":
        raise OutputError(f"{source}: an in-memory checkpoint has no default output; give -o")
    check_output_form(output)
    if in_place:
        _refuse_cache_in_place(source)
        _refuse_other_in_place_target(source, output)
    if output is None and in_place:
        output = source
    path = Path(output) if output is not None else default_output(source, ckpt)
    text = os.fspath(output) if output is not None else os.fspath(path)
    fmt = "directory" if text.endswith(("/", os.sep)) else output_format(text)
    if path.is_dir() and fmt != "directory":
        raise OutputError(f"-o {path}: is a directory; give a file name or a directory form")
    if fmt == "directory" and path.is_symlink() and not in_place:  # found only when publishing
        raise OutputError(
            f"-o {path}: is a link to {os.path.realpath(path)}; a folder output replaces its "
            f"folder whole and never a link: give -o {os.path.realpath(path)}/"
        )
    inputs = inputs if inputs is not None else Inputs.of([source])
    _refuse_over_a_from_source(path, source, inputs)
    if ckpt.kind == "model":  # `reinit new`, which has no --in-place to suggest
        _refuse_new_into_its_config_folder(path, inputs)
    check_output(path, fmt, inputs=inputs, overwrite=overwrite, in_place=in_place)
    if not path.parent.is_dir():  # refused like any output we will not write: exit 2, early
        raise OutputError(
            f"-o {path}: the folder {path.parent} does not exist; create it first "
            f"(mkdir -p {path.parent})"
        )
    return OutputSpec(path, fmt)


FORMATS = ("safetensors", "dcp")  # --format


def check_format_name(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown output format; use {' or '.join(FORMATS)}")


def with_format(spec: OutputSpec, fmt: str, sharded: bool) -> OutputSpec:
    """The output as `--format` asks: safetensors (the form -o names) or a DCP directory,
    which -o must name as a folder (`-o out/`) and which holds no shards."""
    check_format_name(fmt)
    if fmt == "safetensors":
        return spec
    if spec.fmt != "directory" or sharded:
        what = "--max-shard-size (DCP has its own layout)" if sharded else f"-o {spec.path}"
        raise UsageError(
            f"--format dcp writes a torch.distributed.checkpoint directory; drop {what} "
            "and give the folder with -o (e.g. -o out-dcp/)"
        )
    return OutputSpec(spec.path, "dcp")


def refuse_unread_in_place(source: str, kind: str, spec: OutputSpec) -> None:
    """Refuse (exit 2) an output written over a DCP directory or a DeepSpeed ZeRO folder in a
    form that folder is not read as: `model.safetensors` beside `.metadata` or the rank files
    would leave the folder reading as the checkpoint it held, unchanged."""
    if kind not in ("dcp", "zero") or spec.fmt == kind:
        return
    if os.path.realpath(spec.path) != os.path.realpath(source):
        return
    what, fix = (
        ("a DCP directory", "add --format dcp to rewrite it as DCP, or give -o")
        if kind == "dcp"
        else ("a DeepSpeed ZeRO folder, which reinit reads but does not write", "give -o")
    )
    raise OutputError(
        f"--in-place: {source} is {what}; files written into it would not be read (it would "
        f"still read as the checkpoint it holds): {fix}"
    )


def refuse_lossy_in_place(source: str, ckpt: Checkpoint, spec: OutputSpec) -> None:
    """Refuse (exit 2) rewriting a training checkpoint in place: the output holds the state
    dict's tensors alone, so the optimizer state, counters and the nest itself would be lost
    (and the training code that loads `["model_state_dict"]` would fail)."""
    beside = ckpt.beside_state()
    if not beside or os.path.realpath(spec.path) != os.path.realpath(source):
        return
    shown = ", ".join(beside[:6]) + (f" and {len(beside) - 6} more" if len(beside) > 6 else "")
    raise OutputError(
        f"--in-place: {source} holds {shown} besides the weights; the output holds the state "
        "dict's tensors alone and would lose them: give -o for a new file"
    )


def _refuse_over_a_from_source(path: Path, source: str, inputs: Inputs) -> None:
    """-o naming (or inside) a `from()` source, not the run's own source, was refused as "is the
    source; pass --in-place", which would rewrite the other file; say which input it is."""
    owner = inputs.owner(path)
    if owner is None or is_hf_url(source) or owner == Path(source).resolve():
        return
    where = "is" if owner == path.resolve() else "is inside"
    raise OutputError(
        f"-o {path}: {where} {owner}, a from() source this run reads; pick another -o (copy "
        "the source elsewhere first to write the output over it)"
    )


def _refuse_new_into_its_config_folder(path: Path, inputs: Inputs) -> None:
    """`reinit new FOLDER -o FOLDER/` was refused with "pass --in-place", which `new` does
    not take; say what works."""
    owner = inputs.owner(path)
    if owner is not None and owner.is_dir():
        raise OutputError(
            f"-o {path}: is (or is inside) the model folder {owner} that new reads the config "
            f"of; pick another -o, or write the weights file beside that config by naming it: "
            f"reinit new {owner}/config.json -o {owner}/model.safetensors"
        )


def _refuse_other_in_place_target(source: str, output: str | os.PathLike[str] | None) -> None:
    """`--in-place` rewrites the source and nothing else: an `-o` that is not the source (links
    resolved) is refused, as it once was written under `--in-place`'s leave, an existing file
    there (even a `from()` source) replaced without `--overwrite`."""
    if output is None or Path(output).resolve() == Path(source).resolve():
        return
    raise OutputError(
        f"-o {os.fspath(output)}: is not the source {source}, and --in-place only rewrites the "
        "source; drop --in-place to write -o (--overwrite replaces an existing one), or drop -o"
    )


def _refuse_cache_in_place(source: str) -> None:
    """`--in-place` never rewrites the Hugging Face cache: not through hf://, nor through a
    snapshot folder (or a file in one) given as a local path."""
    if is_hf_url(source):
        raise OutputError(f"--in-place: {source} is on the Hub; give -o for the output")
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if cache_blobs(folder) is not None:
        raise OutputError(
            f"--in-place: {source} is a snapshot in the Hugging Face cache; rewriting it would "
            "corrupt the cache; give -o for the output"
        )


@dataclass(frozen=True)
class OutFile:
    """One output file and the tensors it holds, in the order they are written."""

    relname: str  # within a directory output; "" for a single-file output
    names: tuple[str, ...]
    source_shard: str


def output_files(
    spec: OutputSpec,
    refs: Sequence[TensorRef],
    ckpt: Checkpoint,
    max_shard: int | None = None,
    sizes: dict[str, int] | None = None,
    storage: Mapping[str, str] | None = None,
) -> list[OutFile]:
    """A file output holds everything; a directory output keeps the source's shard layout
    (torch shards become safetensors shards of the same numbering), or, with `max_shard`
    (bytes), is split as transformers' `save_pretrained` splits (`sizes`: output bytes;
    `storage`: the tensors it writes from one storage, kept in one shard)."""
    if max_shard is not None:
        sized = sizes or {r.name: r.nbytes for r in refs}
        shard_of = {r.name: r.shard for r in refs}
        names = [r.name for r in refs]
        split = split_like_save_pretrained(names, [sized[n] for n in names], max_shard, storage)
        return [
            OutFile(hf_shard_name(i, len(split)), tuple(group), shard_of[group[0]])
            for i, group in enumerate(split)
        ]
    if spec.fmt != "directory":
        return [OutFile("", tuple(r.name for r in refs), ckpt.shards()[0])]
    groups: dict[str, list[str]] = {}
    for r in refs:
        groups.setdefault(r.shard, []).append(r.name)
    files = [
        OutFile(shard_output_name(shard), tuple(names), shard) for shard, names in groups.items()
    ]
    check_output_names([(f.relname, f.source_shard) for f in files], ckpt.source)
    return files


def check_unread_names(folder: Path, files: Sequence[OutFile], ckpt: Checkpoint) -> None:
    """`--in-place` into a folder replaces only what this run read: an output name (a weight
    file, or the index) that exists there but is none of the files the checkpoint was read from
    belongs to someone else (`pytorch_model-00001-of-00002.bin` becomes
    `model-00001-of-00002.safetensors`, which may already hold other tensors): exit 2, naming it."""
    read = {*ckpt.shards(), *(f.source_shard for f in files)}
    index = getattr(getattr(ckpt, "layout", None), "index", None)
    if isinstance(index, str):
        read.add(index)
    names = [f.relname for f in files] + ([INDEX_NAME] if len(files) > 1 or index else [])
    for rel in names:
        if rel not in read and os.path.lexists(folder / rel):
            raise OutputError(
                f"--in-place: {folder / rel} exists but is not part of the checkpoint this run "
                "read; writing it would replace it: move it away or give -o for the output"
            )


def check_no_stale_shards(folder: Path, files: Sequence[OutFile], ckpt: Checkpoint) -> None:
    """`--in-place` with new shard names (`--max-shard-size`) would leave a safetensors shard
    this run read, and whose tensors it writes elsewhere, beside the new ones: every such
    tensor twice, and a stale `model.safetensors` is what `from_pretrained` loads (before any
    index), the old weights. Exit 2, naming it."""
    written = {f.relname for f in files}
    out_names = {n for f in files for n in f.names}
    stale = sorted({r.shard for r in ckpt.refs() if r.name in out_names} - written - {""})
    stale = [s for s in stale if s.endswith(".safetensors") and os.path.lexists(folder / s)]
    if stale:
        raise OutputError(
            f"--in-place: {folder / stale[0]} would stay beside the new shards "
            f"({', '.join(sorted(written)[:3])}{', …' if len(written) > 3 else ''}) with the old "
            "values of tensors they hold (from_pretrained may load it); keep the source's "
            "sharding (drop --max-shard-size) or give -o for the output"
        )


def shard_output_name(shard: str) -> str:
    """`model-00001-of-00002.safetensors` stays; `pytorch_model-00001-of-00002.bin` becomes
    `model-00001-of-00002.safetensors`; a single file becomes `model.safetensors`. Only a plain
    relative name is accepted (`confine.check_relname`), so the result stays inside the output
    folder whatever the source's index said."""
    if not shard:
        return "model.safetensors"
    check_relname(shard, "directory output", "would write the shard")
    folder, _, name = shard.rpartition("/")
    if name == "pytorch_model.bin":
        return "model.safetensors"
    if name.endswith(".safetensors"):
        return shard
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model") :]
    return f"{folder}/{stem}.safetensors" if folder else stem + ".safetensors"


def output_metadata(ckpt: Checkpoint, shard: str, record: Provenance) -> dict[str, str]:
    """The source's metadata, plus `format: pt` (transformers refuses safetensors files with
    metadata but no format) and our provenance under `reinit` (`run.record`)."""
    meta = dict(ckpt.metadata(shard)) if shard is not None else {}
    meta.pop("reinit", None)  # the source's record is in `record.before`; ours goes last
    meta.setdefault("format", "pt")
    meta["reinit"] = record_json(record)
    return meta


def record_json(record: Provenance) -> str:
    """The `reinit` metadata value of an output written now (this reinit's version)."""
    return replace(record, version=__version__).to_json()
