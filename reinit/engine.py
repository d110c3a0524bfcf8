"""Applying a plan: the loop that streams every tensor from the source to the output.

`apply` = open the source, parse the rules, plan, resolve the output, then for each output
file write the header and stream each tensor (kept bytes copied as they are, re-initialized or
transplanted tensors produced one at a time), computing the report's statistics on the way."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reinit import __version__
from reinit.errors import OutputError, RuleError, SchemeError, UsageError
from reinit.io.confine import (
    check_output_names,
    check_relname,
    copy_regular,
    extras_to_copy,
    output_path,
)
from reinit.io.pipeline import prefetch
from reinit.io.publish import Publication, how_to_publish
from reinit.io.readers import (
    CHUNK_BYTES,
    TORCH_SUFFIXES,
    Checkpoint,
    TensorRef,
    open_checkpoint,
    tensor_from_bytes,
)
from reinit.io.safetensors_format import dtype_name, tensor_to_bytes
from reinit.io.targets import (
    REPORT_NAME,
    Inputs,
    check_distinct,
    check_output,
    check_replace_folder,
    check_suffix,
    check_target,
)
from reinit.io.trust import TrustSpec
from reinit.io.writer import SafetensorsWriter, remove_path, write_error, write_torch_file
from reinit.report import (
    Report,
    Stats,
    StatsAccumulator,
    TensorEntry,
    finalize,
    summarize,
    tensor_stats,
    var_gain,
)
from reinit.rules import Plan, PlanEntry, Rule, closest_hint, parse_rules
from reinit.rules import plan as make_plan
from reinit.schemes import (
    FillContext,
    compute_fans,
    expected_std_for,
    generate,
    missing_from_config,
    resolve_from_config,
)
from reinit.ties import Ties, resolve_ties

if TYPE_CHECKING:
    from reinit.model import ModelView

RuleInput = str | Rule
ModelInput = Any  # str | os.PathLike | torch.nn.Module | reinit.model.Model | ModelView


# --- output -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    path: Path
    fmt: str  # "safetensors" | "torch" | "directory"

    @property
    def default_report(self) -> Path:
        if self.fmt == "directory":
            return self.path / "reinit-report.json"
        name = self.path.name
        for suffix in (".safetensors", *TORCH_SUFFIXES):
            if name.endswith(suffix):
                return self.path.with_name(name[: -len(suffix)] + ".report.json")
        return self.path.with_name(name + ".report.json")


def output_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    return "directory"


def default_output(source: str, ckpt: Checkpoint) -> Path:
    """DESIGN §1: X.safetensors / X.bin -> X.reinit.safetensors; D -> D-reinit/;
    hf://OWNER/NAME -> ./NAME-reinit/."""
    if source.startswith("hf://"):
        from reinit.io.hub import parse_hf_url

        return Path.cwd() / f"{parse_hf_url(source).name}-reinit"
    p = Path(source)
    if ckpt.kind == "directory":
        return p.parent / f"{p.resolve().name}-reinit"
    return p.with_name(p.stem + ".reinit.safetensors")


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
    if output is None and in_place:
        if source.startswith("hf://"):
            raise OutputError(f"--in-place: {source} is on the Hub; give -o for the output")
        output = source
    path = Path(output) if output is not None else default_output(source, ckpt)
    text = os.fspath(output) if output is not None else os.fspath(path)
    fmt = "directory" if text.endswith(("/", os.sep)) else output_format(text)
    if path.is_dir() and fmt != "directory":
        raise OutputError(f"-o {path}: is a directory; give a file name or a directory form")
    inputs = inputs if inputs is not None else Inputs.of([source])
    check_output(path, fmt, inputs=inputs, overwrite=overwrite, in_place=in_place)
    if not path.parent.is_dir():  # refused like any output we will not write: exit 2, early
        raise OutputError(
            f"-o {path}: the folder {path.parent} does not exist; create it first "
            f"(mkdir -p {path.parent})"
        )
    return OutputSpec(path, fmt)


@dataclass(frozen=True)
class OutFile:
    relname: str  # within a directory output; "" for a single-file output
    names: tuple[str, ...]
    source_shard: str


def output_files(spec: OutputSpec, refs: Sequence[TensorRef], ckpt: Checkpoint) -> list[OutFile]:
    """A file output holds everything; a directory output keeps the source's shard layout
    (torch shards become safetensors shards of the same numbering)."""
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


def output_metadata(
    ckpt: Checkpoint, shard: str, seed: int, rules: Sequence[str]
) -> dict[str, str]:
    """The source's metadata, plus `format: pt` (transformers refuses safetensors files with
    metadata but no format) and our provenance under `reinit`."""
    meta = dict(ckpt.metadata(shard)) if shard is not None else {}
    meta.setdefault("format", "pt")
    meta["reinit"] = json.dumps(
        {"version": __version__, "seed": seed, "rules": list(rules)}, separators=(",", ":")
    )
    return meta


# --- the loop ---------------------------------------------------------------------------


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )


def _entry(
    p: PlanEntry,
    after: Stats,
    before: Stats | None = None,
    source: str | None = None,
    notes: tuple[str, ...] = (),
    fans: tuple[int, int] | None = None,
) -> TensorEntry:
    """`fans`: the owning module's own fans when a model is given (else torch's, from the shape)."""
    fans = fans or compute_fans(p.shape)
    fan_in, fan_out = fans if fans else (None, None)
    bound = p.scheme
    expected = expected_std_for(bound, p.shape, fans) if bound is not None else None
    return TensorEntry(
        name=p.name,
        shape=p.shape,
        dtype=dtype_name(p.dtype),
        action=p.action,
        after=after,
        rule=p.rule.text if p.rule is not None else None,
        scheme=bound.describe() if bound is not None else None,
        source=source,
        reason=p.reason,
        fan_in=fan_in,
        fan_out=fan_out,
        before=before,
        expected_std=expected,
        var_gain=var_gain(fan_in, after.std) if p.dtype.is_floating_point else None,
        notes=notes,
        kurtosis=bound.scheme.kurtosis if bound is not None else 3.0,
    )


@dataclass(frozen=True)
class Piece:
    """One step of the output stream: some bytes of a tensor, a span of a file to copy
    kernel-side, or (with `entry`) the end of the tensor and its report entry."""

    name: str
    data: memoryview | None = None
    span: tuple[int, int, int] | None = None  # (fd, offset, nbytes)
    entry: TensorEntry | None = None

    @property
    def nbytes(self) -> int:
        if self.data is not None:
            return self.data.nbytes
        return self.span[2] if self.span is not None else 0


KERNEL_COPY = True  # copy unchanged bytes with copy_file_range; tests compare both paths
READ_AHEAD = 2  # chunks read ahead of the compute thread
WRITE_AHEAD = 2  # pieces computed ahead of the writer
DRAW_AHEAD = 1  # re-initialized tensors drawn ahead on a worker thread


def _n_chunks(nbytes: int) -> int:
    return -(-nbytes // CHUNK_BYTES)


def _view(raw: bytes | bytearray | memoryview, dtype: torch.dtype) -> torch.Tensor:
    if memoryview(raw).nbytes == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(raw, dtype=dtype)


def read_stream(ckpt: Checkpoint, names: Sequence[str]) -> Iterator[tuple[str, memoryview]]:
    """Every chunk of the named tensors, in order: the one sequential read of the source."""
    for name in names:
        for chunk in ckpt.iter_chunks(name, CHUNK_BYTES):
            yield name, chunk


class Applier:
    """Turns planned entries into pieces of output, computing statistics on the way.

    It consumes the source's chunks from `reads` (read ahead by another thread), so each
    source byte is read once: for a kept tensor its chunks give the statistics and the writer
    copies the same span kernel-side; for a changed tensor they give the `before` statistics."""

    def __init__(
        self,
        ckpt: Checkpoint,
        seed: int,
        device: str,
        sources: object = None,
        ties: Ties | None = None,
        model: ModelView | None = None,
    ):
        self.ckpt = ckpt
        self.seed = seed
        self.device = device
        self.sources = sources  # a transplant.SourcePool when any rule is from(...)
        self.model = model  # with --model: module fans and the `default` scheme
        self.fans = model.fans if model is not None else {}
        self.ties = ties or Ties()
        # a changed tied group's new value, kept until its last member is written
        self._tied_values: dict[str, tuple[torch.Tensor, str | None, tuple[str, ...]]] = {}
        self._drawn: dict[str, Future[torch.Tensor]] = {}  # values drawn ahead, by name
        self._tied_left = {
            root: sum(1 for g in self.ties.groups.values() if g[0] == root)
            for root in self.ties.defining
        }

    def _chunks(
        self, reads: Iterator[tuple[str, memoryview]], p: PlanEntry
    ) -> Iterator[memoryview]:
        for _ in range(_n_chunks(TensorRef(p.name, p.dtype, p.shape).nbytes)):
            name, chunk = next(reads)
            assert name == p.name, (name, p.name)
            yield chunk

    def _source_stats(self, reads: Iterator[tuple[str, memoryview]], p: PlanEntry) -> Stats:
        acc = StatsAccumulator(p.dtype)
        for chunk in self._chunks(reads, p):
            acc.add(_view(chunk, p.dtype))
        return acc.result()

    def _copy(
        self,
        ck: Checkpoint,
        name: str,
        dtype: torch.dtype,
        chunks: Iterator[memoryview],
        acc: StatsAccumulator,
    ) -> Iterator[Piece]:
        """Pieces that reproduce `name`'s bytes of `ck` exactly: spans for the writer to copy
        kernel-side when the bytes lie in a file, else the chunks themselves."""
        span = ck.span(name) if KERNEL_COPY else None
        pos = 0
        for chunk in chunks:
            acc.add(_view(chunk, dtype))
            if span is not None:
                yield Piece(name, span=(span.fd, span.start + pos, chunk.nbytes))
            else:
                yield Piece(name, data=chunk)
            pos += chunk.nbytes

    def pieces(self, p: PlanEntry, reads: Iterator[tuple[str, memoryview]]) -> Iterator[Piece]:
        tie_note = self.ties.note(p.name)
        if p.action in ("kept", "skipped"):
            acc = StatsAccumulator(p.dtype)
            if p.added:  # no source bytes: its --add values, generated
                for piece in _tensor_pieces(p.name, self.ckpt.read(p.name)):
                    acc.add(_view(piece.data, p.dtype))
                    yield piece
            else:
                for piece in self._copy(self.ckpt, p.name, p.dtype, self._chunks(reads, p), acc):
                    yield piece
            entry = _entry(p, acc.result(), notes=p.notes + tie_note, fans=self.fans.get(p.name))
            yield Piece(p.name, entry=entry)
            return
        # an added tensor has no source bytes, so no "before"
        before = None if p.added else self._source_stats(reads, p)
        root = self.ties.root(p.name)
        if root is not None and root in self.ties.defining:
            new, source, notes = self._tied_value(root)
            yield from _tensor_pieces(p.name, new)
            entry = _entry(
                p,
                tensor_stats(new),
                before,
                source,
                p.notes + notes + tie_note,
                self.fans.get(p.name),
            )
            yield Piece(p.name, entry=entry)
            return
        if p.action == "transplant":
            from reinit.transplant import exact_source

            direct = exact_source(self.sources, p)
            if direct is not None:  # same dtype and shape: a byte copy, streamed
                src, key, label = direct
                acc = StatsAccumulator(p.dtype)
                for piece in self._copy(src, key, p.dtype, src.iter_chunks(key, CHUNK_BYTES), acc):
                    yield Piece(p.name, piece.data, piece.span)
                entry = _entry(p, acc.result(), before, label, p.notes, self.fans.get(p.name))
                yield Piece(p.name, entry=entry)
                return
        notes: tuple[str, ...] = ()
        source = None
        if p.action == "reinit":
            new = self._drawn_value(p)
        else:
            from reinit.transplant import transplant_value

            new, source, notes = transplant_value(self.sources, p, self.ckpt.read(p.name))
        after = tensor_stats(new)
        yield from _tensor_pieces(p.name, new)
        entry = _entry(p, after, before, source, p.notes + notes, self.fans.get(p.name))
        yield Piece(p.name, entry=entry)

    def _reinit(self, p: PlanEntry) -> torch.Tensor:
        """A reinit entry's values; with a model, module fans and `default` apply."""
        assert p.scheme is not None
        context = self._context(p)
        if self.model is not None:
            from reinit.model import reinit_value

            return reinit_value(
                self.model, p.scheme, p.name, p.shape, p.dtype, self.seed, self.device, context
            )
        return generate(p.scheme, p.name, p.shape, p.dtype, self.seed, self.device, context=context)

    def _tied_value(self, root: str) -> tuple[torch.Tensor, str | None, tuple[str, ...]]:
        """A changed tied group's one new value: made once from its defining entry (the member
        the rule hit), handed to every member, dropped after the last."""
        value = self._tied_values.get(root)
        if value is None:
            d = self.ties.defining[root]
            if d.action == "reinit":
                new = self._reinit(d)
                value = (new, None, ())
            else:
                from reinit.transplant import transplant_value

                value = transplant_value(self.sources, d, self.ckpt.read(d.name))
            self._tied_values[root] = value
        self._tied_left[root] -= 1
        if self._tied_left[root] <= 0:
            del self._tied_values[root]
        return value

    def stream(self, entries: Sequence[PlanEntry]) -> Iterator[Piece]:
        """All pieces of all entries, in output order.

        Re-initialized values are drawn ahead on a worker thread (at most `DRAW_AHEAD`
        tensors): torch draws with an explicit generator on one core, so drawing the next
        tensor while this thread computes statistics keeps the second core busy. Values do
        not depend on this: each tensor has its own generator."""
        reads = prefetch(
            read_stream(self.ckpt, [p.name for p in entries if not p.added]),
            READ_AHEAD,
            "reinit-read",
        )
        pending = deque(p for p in entries if p.action == "reinit" and not self._tied(p))
        with ThreadPoolExecutor(1, thread_name_prefix="reinit-draw") as pool:

            def top_up() -> None:
                while pending and len(self._drawn) < DRAW_AHEAD:
                    q = pending.popleft()
                    self._drawn[q.name] = pool.submit(self._reinit, q)

            try:
                for p in entries:
                    top_up()
                    yield from self.pieces(p, reads)
            finally:
                reads.close()
                for future in self._drawn.values():
                    future.cancel()
                self._drawn.clear()

    def _tied(self, p: PlanEntry) -> bool:
        root = self.ties.root(p.name)
        return root is not None and root in self.ties.defining

    def _drawn_value(self, p: PlanEntry) -> torch.Tensor:
        future = self._drawn.pop(p.name, None)
        return future.result() if future is not None else self._reinit(p)

    def _context(self, p: PlanEntry) -> FillContext | None:
        """What a scheme that reads beyond its own shape gets (see `Scheme.needs_context`):
        the tensor's values (read again: the stream only kept its statistics) and the other
        tensor it names."""
        assert p.scheme is not None
        scheme = p.scheme.scheme
        if not scheme.needs_context:
            return None
        other_name = scheme.reads(p.name, p.captures, p.scheme.kwargs) if scheme.reads else None
        return FillContext(
            before=self.ckpt.read(p.name) if scheme.needs_before else None,
            other=self.ckpt.read(other_name) if other_name is not None else None,
            other_name=other_name,
        )


def resolve_rules(rules: Sequence[Rule], config: Mapping[str, Any] | None) -> tuple[Rule, ...]:
    """Fill scheme arguments that come from the model config (scaled_normal's layers,
    small_init's dim) when the rule left them unset; a required one still missing is an error."""
    out: list[Rule] = []
    for r in rules:
        if r.scheme is not None and r.scheme.scheme.from_config:
            resolved = resolve_from_config(r.scheme, config)
            problem = missing_from_config(resolved)
            if problem:
                raise RuleError(f"rule {r.text!r}: {problem}")
            r = replace(r, scheme=resolved)
        out.append(r)
    return tuple(out)


def check_reads(result: Plan, ckpt: Checkpoint) -> None:
    """Schemes that read another tensor (`copy`): it must exist and have the target's shape.
    Checked before anything is written."""
    for e in result.entries:
        bound = e.scheme
        if bound is None or bound.scheme.reads is None:
            continue
        rule = e.rule.text if e.rule else ""
        try:
            other = bound.scheme.reads(e.name, e.captures, bound.kwargs)
        except SchemeError as err:
            raise RuleError(f"rule {rule!r}: {err}") from None
        if other not in ckpt:
            raise RuleError(
                f"rule {rule!r}: {bound.describe()} for '{e.name}': the checkpoint has no "
                f"tensor '{other}'{closest_hint(other, ckpt.names())}"
            )
        shape = ckpt.ref(other).shape
        if shape != e.shape:
            raise RuleError(
                f"rule {rule!r}: cannot copy '{other}' {list(shape)} into '{e.name}' "
                f"{list(e.shape)}: shapes differ"
            )


def _tensor_pieces(name: str, t: torch.Tensor) -> Iterator[Piece]:
    data = tensor_to_bytes(t)
    for i in range(0, data.nbytes, CHUNK_BYTES):
        yield Piece(name, data=data[i : i + CHUNK_BYTES])


def _as_rules(rules: Sequence[RuleInput]) -> tuple[Rule, ...]:
    if isinstance(rules, str):
        rules = [rules]
    return tuple(r if isinstance(r, Rule) else parse_rules([r])[0] for r in rules)


def check_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"--device {device}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
            f"{'no CUDA build' if torch.version.cuda is None else 'no GPU visible'}); use --device cpu"
        )
    return device


def plan(
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, torch.Tensor],
    rules: Sequence[RuleInput],
    *,
    strict: bool = False,
    allow_unmatched: bool = False,
    unsafe_pickle: TrustSpec = (),
    add: Sequence[str] = (),
    drop: Sequence[str] = (),
    rename: Sequence[str] = (),
    model: ModelInput | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Plan:
    """What `apply` would do, without writing anything (the `--dry-run`). `source` may also be
    an open `Checkpoint` or an in-memory state dict. `model` (see `reinit.model`) enables
    `type:` patterns and the `default` scheme; `config` (a model config as a dict) gives the
    arguments some schemes read from it, by default the checkpoint's own config.json.
    `progress=True` shows the Hub's download bars of hf:// sources."""
    from reinit.surgery import parse_surgery
    from reinit.transplant import SourcePool

    surgery = parse_surgery(add, drop, rename)
    rule_objs = _as_rules(rules)
    with ExitStack() as stack:
        ckpt = stack.enter_context(_opened(source, unsafe_pickle, progress))
        ckpt, edited = _edited(ckpt, surgery, allow_unmatched)
        pool = stack.enter_context(SourcePool(ckpt, unsafe_pickle, progress))
        view = model_view(model, ckpt)
        return _plan_for(ckpt, rule_objs, strict, allow_unmatched, pool, view, config, edited)[0]


def _edited(
    ckpt: Checkpoint,
    surgery: object,
    allow_unmatched: bool,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[Checkpoint, object]:
    """The checkpoint as `--drop/--rename/--add` leave it (itself when there are none)."""
    from reinit.surgery import EditedCheckpoint, Surgery, edit_refs

    assert isinstance(surgery, Surgery)
    if not surgery:
        return ckpt, None
    edited = edit_refs(ckpt.refs(), surgery, allow_unmatched=allow_unmatched)
    return EditedCheckpoint(ckpt, edited, seed, device), edited


def _plan_for(
    ckpt: Checkpoint,
    rules: tuple[Rule, ...],
    strict: bool,
    allow_unmatched: bool,
    pool: object,
    view: ModelView | None = None,
    config: Mapping[str, Any] | None = None,
    edited: object = None,
) -> tuple[Plan, Ties]:
    """The plan, with tied groups made consistent (see `reinit.ties`), and the ties."""
    if any(r.scheme is not None and r.scheme.scheme.from_config for r in rules):
        # read config.json only when a rule needs it (on the Hub it is one more download)
        rules = resolve_rules(rules, config if config is not None else ckpt.config())
    result = make_plan(
        ckpt.refs(),
        rules,
        strict=strict,
        allow_unmatched=allow_unmatched,
        module_types=view.module_types if view is not None else None,
    )
    check_reads(result, ckpt)
    if view is not None:
        from reinit.model import check_default

        result = check_default(result, view, strict)
    if edited is not None:
        from reinit.surgery import mark_plan

        result = mark_plan(result, edited)  # type: ignore[arg-type]
    if any(r.kind == "transplant" for r in rules):
        from reinit.transplant import check_transplants

        result = check_transplants(result, pool)  # type: ignore[arg-type]
        if strict and result.skipped:
            from reinit.errors import StrictError

            first = result.skipped[0]
            raise StrictError(f"--strict: '{first.name}' would be skipped: {first.reason}")
    return resolve_ties(result, ckpt.aliases())


def model_view(model: ModelInput | None, ckpt: Checkpoint) -> ModelView | None:
    """The model (a spec, a loaded `Model`, or a view already) seen through the checkpoint's
    tensor names; None without a model."""
    if model is None:
        return None
    from reinit.model import Model, ModelView, load_model

    if isinstance(model, ModelView):
        return model
    loaded = model if isinstance(model, Model) else load_model(model)
    return loaded.align(ckpt.names(), {r.name: r.shape for r in ckpt.refs()})


@contextmanager
def _opened(
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, torch.Tensor],
    unsafe_pickle: TrustSpec = (),
    progress: bool = True,
) -> Iterator[Checkpoint]:
    if isinstance(source, Checkpoint):
        yield source
        return
    if isinstance(source, Mapping):
        from reinit.io.readers import StateDictCheckpoint

        yield StateDictCheckpoint(source)
        return
    ckpt = open_checkpoint(source, unsafe_pickle=unsafe_pickle, progress=progress)
    try:
        yield ckpt
    finally:
        ckpt.close()


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
    from reinit.surgery import parse_surgery

    rule_objs = _as_rules(rules)
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
        from reinit.transplant import SourcePool

        ckpt = stack.enter_context(_opened(opened, unsafe_pickle, progress))
        ckpt, edited = _edited(ckpt, surgery, allow_unmatched, seed, device)
        sources = stack.enter_context(SourcePool(ckpt, unsafe_pickle, progress))
        view = model_view(model, ckpt)
        the_plan, ties = _plan_for(
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
        bar = stack.enter_context(_progress(total, progress, "reinit apply"))
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
        report = _make_report(
            source_text, spec, seed, rule_texts, entries, bytes_written, started, the_plan
        )
        if finish_report is not None:
            report = finish_report(report)
        if default_report and spec.fmt == "directory":
            _write_text(tmp / REPORT_NAME, report.to_json() + "\n")
        _stage_side_outputs(pub, report, targets, how)
        pub.commit()  # the checkpoint, its reports and plot: all of them or none
    return report


INDEX_NAME = "model.safetensors.index.json"


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


def _stage_side_outputs(
    pub: Publication, report: Report, targets: Sequence[tuple[str, Path]], how: str
) -> None:
    from reinit.report import render_for_path

    for kind, path in targets:
        tmp = pub.stage(path, how=how)
        try:
            if kind == "plot":
                from reinit.plot import plot_report

                plot_report(report, tmp, direct=True)
            else:
                _write_text(tmp, render_for_path(report, path.name))
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
    ties = ties or Ties()
    shared: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    entries: list[TensorEntry] = []
    buf = bytearray()
    for piece in pieces:
        if piece.entry is not None:
            p = by_name[piece.name]
            value = tensor_from_bytes(buf, p.dtype, p.shape).clone()
            root = ties.root(piece.name)
            state[piece.name] = shared.setdefault(root, value) if root else value
            entries.append(piece.entry)
            buf = bytearray()
        elif piece.span is not None:
            fd, offset, nbytes = piece.span
            buf += os.pread(fd, nbytes, offset)
        elif piece.data is not None:
            buf += piece.data
        bar.update(piece.nbytes)
    return entries, write_torch_file(tmp, state)


def _make_report(
    source: str,
    spec: OutputSpec | None,
    seed: int,
    rules: tuple[str, ...],
    entries: Sequence[TensorEntry],
    bytes_written: int,
    started: float,
    the_plan: Plan | None = None,
) -> Report:
    final = finalize(entries)
    return Report(
        reinit_version=__version__,
        source=source,
        output=os.fspath(spec.path) if spec else None,
        seed=seed,
        rules=rules,
        tensors=final,
        summary=summarize(final, bytes_written, time.perf_counter() - started),
        warnings=the_plan.warnings if the_plan else (),
        dropped=the_plan.dropped if the_plan else (),
    )


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


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
        _write_text(tmp / "model.safetensors.index.json", text)
        written += len(text)
    return written


def report_checkpoint(
    source: str | os.PathLike[str],
    against: str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
    unsafe_pickle: TrustSpec = (),
) -> Report:
    """The report of a checkpoint as it is: every tensor `kept`, with its statistics. One
    thread reads ahead while another computes, so this runs at the disk's (or the page
    cache's) speed rather than at the sum of both.

    With `against` (a baseline checkpoint, any form of §1), each tensor of the same name in
    the baseline gives the `before` statistics, a tensor whose bytes (or shape or dtype) differ
    carries the note "changed vs baseline", one absent from the baseline "not in baseline", and
    the baseline's names absent from SOURCE are listed in the report's warnings."""
    started = time.perf_counter()
    with ExitStack() as stack:
        ckpt = stack.enter_context(_opened(source, unsafe_pickle, progress))
        if against is not None:
            base = stack.enter_context(_opened(against, unsafe_pickle, progress))
        else:
            base = None
        the_plan = make_plan(ckpt.refs(), ())
        applier = Applier(ckpt, 0, "cpu", ties=resolve_ties(the_plan, ckpt.aliases())[1])
        total = sum(TensorRef(e.name, e.dtype, e.shape).nbytes for e in the_plan.entries)
        entries = []
        bar = stack.enter_context(_progress(total, progress, "reinit report"))
        pieces = stack.enter_context(closing(applier.stream(the_plan.entries)))
        for piece in pieces:
            if piece.entry is not None:
                entry = piece.entry
                if base is not None:
                    entry = _against(ckpt, base, entry)
                entries.append(entry)
            bar.update(piece.nbytes)
        report = _make_report(os.fspath(source), None, 0, (), entries, 0, started)
        if base is not None:
            missing = [n for n in base.names() if n not in ckpt]
            if missing:
                shown = ", ".join(missing[:10]) + (", …" if len(missing) > 10 else "")
                report = replace(
                    report,
                    warnings=(
                        *report.warnings,
                        f"{len(missing)} tensor(s) of the baseline {os.fspath(against or '')} "
                        f"are not in {os.fspath(source)}: {shown}",
                    ),
                )
        return report


def write_report_files(
    source: str | os.PathLike[str],
    against: str | os.PathLike[str] | None,
    outputs: Sequence[str | os.PathLike[str]],
    plot: str | os.PathLike[str] | None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    unsafe_pickle: bool = False,
) -> Report:
    """`reinit report SOURCE -o ... --plot ...`: every path checked by the one rule before the
    checkpoint is read (never an input, never an existing file without `overwrite`), then all
    of them published together."""
    inputs = Inputs.of([source, against])
    targets = [
        ("report", check_target(p, "-o", "report", inputs=inputs, overwrite=overwrite))
        for p in outputs
    ]
    if plot is not None:
        targets.append(
            ("plot", check_target(plot, "--plot", "plot", inputs=inputs, overwrite=overwrite))
        )
    check_distinct([p for _, p in targets])
    rep = report_checkpoint(source, against, progress=progress, unsafe_pickle=unsafe_pickle)
    if targets:
        with Publication() as pub:
            _stage_side_outputs(pub, rep, targets, how_to_publish(overwrite=overwrite))
            pub.commit()
    return rep


def _against(ckpt: Checkpoint, base: Checkpoint, entry: TensorEntry) -> TensorEntry:
    """`entry` with the baseline's statistics as `before` and a note when it differs: one
    pass over the baseline's chunks, compared with the source's chunk for chunk (bitwise, so
    a NaN equals the same NaN) until the first difference."""
    from reinit.report import NOTE_CHANGED, NOTE_NEW

    if entry.name not in base:
        return replace(entry, notes=(*entry.notes, NOTE_NEW))
    ref, bref = ckpt.ref(entry.name), base.ref(entry.name)
    acc = StatsAccumulator(bref.dtype)
    same = (ref.dtype, ref.shape) == (bref.dtype, bref.shape)
    with closing(ckpt.iter_chunks(entry.name, CHUNK_BYTES)) as mine:
        for chunk in base.iter_chunks(entry.name, CHUNK_BYTES):
            acc.add(_view(chunk, bref.dtype))
            if same:
                same = _same_bytes(next(mine, memoryview(b"")), chunk)
    notes: tuple[str, ...] = ()
    if not same:
        notes = (NOTE_CHANGED,)
        if bref.shape != ref.shape:
            notes += (f"baseline shape {list(bref.shape)}",)
        if bref.dtype != ref.dtype:
            notes += (f"baseline dtype {dtype_name(bref.dtype)}",)
    return replace(entry, before=acc.result(), notes=(*entry.notes, *notes))


def _same_bytes(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bool:
    """Bitwise equality without copying either buffer (NaN payloads compare as bits)."""
    ma, mb = memoryview(a).cast("B"), memoryview(b).cast("B")
    if ma.nbytes != mb.nbytes:
        return False
    if ma.nbytes == 0:
        return True
    return torch.equal(
        torch.frombuffer(ma, dtype=torch.uint8), torch.frombuffer(mb, dtype=torch.uint8)
    )


__all__ = ["apply", "plan", "report_checkpoint", "OutputSpec", "resolve_output", "remove_path"]


@dataclass(frozen=True)
class InspectRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    shard: str
    stats: Stats | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bytes": self.nbytes,
            "shard": self.shard or None,
            "stats": self.stats.to_dict() if self.stats else None,
        }


def inspect_checkpoint(
    source: str | os.PathLike[str], pattern: str | None = None, *, stats: bool = False
) -> list[InspectRow]:
    """The tensors of a checkpoint (optionally only those matching `pattern`)."""
    from reinit.rules import parse_pattern

    pat = parse_pattern(pattern) if pattern else None
    with _opened(source) as ckpt:
        rows = []
        for r in ckpt.refs():
            if pat is not None and pat.match(r.name) is None:
                continue
            st = tensor_stats(ckpt.read(r.name)) if stats else None
            rows.append(InspectRow(r.name, r.shape, dtype_name(r.dtype), r.nbytes, r.shard, st))
        return rows
