"""Tensors held in a dict as a `Checkpoint`: the shared base of a loaded torch file
(`torch_reader.TorchFile`) and of a state dict in memory (`StateDictCheckpoint`, what
`apply_to_state_dict`, `apply_to_module` and multi-step recipes read from).

Both hold `name -> torch.Tensor`, so reading, aliasing (tied weights) and the name rules are one
code path here; the subclasses differ only in where the dict comes from and which shard and
layout they report."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

from reinit.errors import CheckpointError, UsageError
from reinit.io.checkpoint import Checkpoint, ConfigDict, TensorRef
from reinit.io.formats import MAX_TENSORS, tensor_to_bytes
from reinit.text import shown

__all__ = [
    "check_state_dict",
    "StateDictCheckpoint",
    "TensorDictCheckpoint",
    "check_tensor_names",
    "EXACT_OVERLAP_LIMIT",
    "OVERLAP_SOLVER_WORK",
    "find_aliases",
    "find_overlaps",
    "overlaps_itself",
    "reshaped",
]


def check_state_dict(tensors: object, where: str, *, values: bool = False) -> None:
    """A state dict given to the API: a mapping of names to tensors, with names a file can
    hold (`check_tensor_names`); with `values`, tensors with data (a meta tensor has none:
    planning needs only shapes, applying needs values)."""
    if not isinstance(tensors, Mapping):
        raise UsageError(
            f"{where}: a state dict is a mapping of names to tensors, got {type(tensors).__name__}"
        )
    check_tensor_names(tensors, where)
    for name, t in tensors.items():  # torch raised from inside ('Cannot access storage')
        kind = unreadable_kind(t)
        if kind is not None:
            raise UsageError(
                f"{where}: tensor '{shown(name)}' is {kind}; reinit works on dense tensors: "
                "pass t.to_dense() or t.dequantize() instead"
            )
    for name, t in tensors.items() if values else ():
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise UsageError(
                f"{where}: tensor '{shown(name)}' is on the meta device and holds no values; "
                "materialize the model (e.g. to_empty + load) before applying rules"
            )
        if isinstance(t, torch.Tensor) and t.numel() and _address(t) is None:
            raise UsageError(
                f"{where}: tensor '{shown(name)}' is a {type(t).__name__} (a tensor subclass "
                "with no memory of its own, as FSDP2 and tensor parallelism hold); apply to "
                "plain tensors (a DTensor's .full_tensor(), or get_model_state_dict(model, "
                "options=StateDictOptions(full_state_dict=True))) and load the result back"
            )


def check_tensor_names(tensors: Collection[object], where: str) -> None:
    """The same name rules as the safetensors validator, for the keys of `tensors`: string keys that UTF-8 can encode
    (a pickle may hold lone surrogates, which could be neither printed nor written to a
    safetensors header), and at most `MAX_TENSORS` of them."""
    if len(tensors) > MAX_TENSORS:
        raise CheckpointError(
            f"{where}: holds {len(tensors)} tensors, over reinit's limit of {MAX_TENSORS} per "
            "file; split the checkpoint into shards (a model folder with an index)"
        )
    for k in tensors:
        if not isinstance(k, str):
            raise CheckpointError(f"{where}: tensor keys must be strings, found {k!r}")
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            shown = k.encode("utf-8", "backslashreplace").decode("utf-8")
            raise CheckpointError(
                f"{where}: tensor name '{shown}' holds a lone surrogate, which no file can "
                "store; rename it with the code that made the file"
            ) from None


def find_aliases(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Names whose tensor is the same view of the same storage as an earlier name (tied
    weights such as embeddings shared with the LM head). Tensors with no memory of their own
    (meta, wrapper subclasses such as DTensor: address 0) are tied only to views of their own
    storage object, not to every tensor of their shape."""
    seen: dict[tuple[object, ...], str] = {}
    out: dict[str, str] = {}
    for name, t in tensors.items():
        where = _storage_id(t)
        if where is None:
            continue
        key = (*where, int(t.storage_offset()), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    return out


def _storage_id(t: torch.Tensor) -> tuple[object, ...] | None:
    """What tells `t`'s storage apart: its device and address, or for a tensor with no
    address the storage object itself (a meta tensor's `detach()` shares it); None for an
    empty tensor or one whose storage torch cannot give."""
    if t.numel() == 0:
        return None
    try:
        storage = t.untyped_storage()
        if _address(t) is not None:
            return (str(t.device), int(storage.data_ptr()))
    except RuntimeError:
        return None
    own = getattr(storage, "_cdata", None)  # the C++ storage's identity
    return ("storage", own) if own else None


#: The most cells (a cell: the largest unit every element and stride of the two views is a
#: multiple of, usually one element) the exact overlap check of two strided views may mark in
#: a boolean mask (128 MiB); past it, a pair whose byte ranges overlap and that no cheaper test
#: tells apart counts as overlapping (refused if changed, the message says "may overlap").
EXACT_OVERLAP_LIMIT = 1 << 27


@dataclass(frozen=True)
class _Span:
    """One distinct view (its exact aliases together, `names`): where its bytes lie."""

    names: tuple[str, ...]
    device: str
    start: int  # the address of its first byte
    end: int  # one past its last byte
    itemsize: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in bytes

    @classmethod
    def of(cls, names: tuple[str, ...], t: torch.Tensor) -> _Span:
        size = t.element_size()
        strides = tuple(s * size for s in t.stride())
        last = sum((n - 1) * s for n, s in zip(t.shape, strides, strict=True))
        start = t.data_ptr()
        return cls(names, str(t.device), start, start + last + size, size, tuple(t.shape), strides)

    def steps(self) -> list[int]:
        """The byte strides of the dimensions that move (size > 1)."""
        return [s for n, s in zip(self.shape, self.strides, strict=True) if n > 1]

    def dense(self) -> bool:
        """Whether the view covers every byte between its first and last (a permutation of a
        contiguous tensor: `w`, `w.t()`, a slice of rows)."""
        want = self.itemsize
        for s, n in sorted((s, n) for n, s in zip(self.shape, self.strides, strict=True) if n > 1):
            if s != want:
                return False
            want *= n
        return True


def find_overlaps(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, bool]]:
    """Names whose memory overlaps another entry's without being the same view (which
    `find_aliases` ties): name -> {other name: True where some byte is shared, False where it
    could not be told within `EXACT_OVERLAP_LIMIT` and is assumed}, in the dict's order.

    Exact for strided views: byte ranges first (disjoint slices of a flat buffer end here),
    then the strides' common divisor (`w[:, ::2]` and `w[:, 1::2]` of an even width), then a
    view that covers its whole range, and only then a mask of the two views' cells. Only the
    pairs `_pairs_to_check` leaves are compared, so that many views of one matrix (its columns)
    cost about n log n, not n^2; a pair it proves apart by residues is apart even where the
    solver and the mask would give up (blocks of columns). Nothing reads the tensors' values;
    meta and empty tensors hold no memory."""
    order = sorted(_distinct_spans(tensors), key=lambda v: (v.device, v.start))
    found: dict[str, dict[str, bool]] = {}
    for i, j in _pairs_to_check(order):
        verdict = _overlap(order[i], order[j])
        if verdict is not None:
            _note_pair(found, order[i].names, order[j].names, verdict)
    pos = {n: i for i, n in enumerate(tensors)}
    return {
        n: dict(sorted(found[n].items(), key=lambda kv: pos[kv[0]]))
        for n in sorted(found, key=pos.__getitem__)
    }


def _pairs_to_check(order: list[_Span]) -> Iterator[tuple[int, int]]:
    """Pairs `(i, j)`, `i < j`, of `order` (views sorted by device and first byte) whose bytes
    may meet: every pair whose byte ranges overlap, less those that lie in disjoint residues
    modulo a stride both step by (`_residue_parts`: a matrix's columns, a buffer's interleaved
    strided views), which share no byte. Range clusters and residue parts are split in turn
    until neither splits (`_split_or_sweep`)."""
    work = [list(range(len(order)))]
    while work:
        for cluster in _range_clusters(order, work.pop()):
            if len(cluster) > 1:
                yield from _split_or_sweep(order, cluster, work)


def _range_clusters(order: list[_Span], group: list[int]) -> Iterator[list[int]]:
    """`group` (ascending indices of `order`) in runs whose byte ranges chain together on one
    device: no view of one run shares a byte with a view of another."""
    cluster: list[int] = []
    reach = 0
    for i in group:
        v = order[i]
        if cluster and (v.device != order[cluster[0]].device or v.start >= reach):
            yield cluster
            cluster = []
        reach = max(reach, v.end) if cluster else v.end
        cluster.append(i)
    if cluster:
        yield cluster


def _split_or_sweep(
    order: list[_Span], cluster: list[int], work: list[list[int]]
) -> Iterator[tuple[int, int]]:
    """The pairs of `cluster` to check now. Modulo the stride most of its views step by
    (`_common_step`), the views whose bytes lie in a short arc of residues (`_arc`) are split
    into parts whose arcs meet, queued on `work`; the others (a whole matrix beside its columns)
    are paired with every view. Where the parts do not split, the views of longer arcs than
    most are paired so, and where all are alike, the pairs whose arcs meet are taken
    (`_arc_pairs`). Without such a stride, every pair whose ranges overlap (`_sweep`)."""
    modulus = _common_step([order[i] for i in cluster])
    arcs = {i: _arc(order[i], modulus) for i in cluster} if modulus else {}
    tame = [i for i in cluster if modulus and arcs[i] < modulus]
    if len(tame) < 2:
        yield from _sweep(order, cluster)
        return
    parts = _residue_parts(order, tame, modulus, arcs)
    if len(parts) == 1 and len(tame) == len(cluster):
        tame = _typical(tame, arcs)
        if len(tame) == len(cluster):
            yield from _arc_pairs(order, cluster, modulus, arcs)
            return
        parts = [tame]
    work.extend(parts)
    yield from _wild_pairs(order, cluster, set(tame))


def _common_step(views: list[_Span]) -> int:
    """The most common largest byte stride of `views` (0 when none moves): the modulus most
    of them may be told apart by (a matrix's row stride for its columns)."""
    counts = Counter(m for m in (max(v.steps(), default=0) for v in views) if m)
    return counts.most_common(1)[0][0] if counts else 0


def _arc(v: _Span, modulus: int) -> int:
    """How many consecutive residues modulo `modulus` hold `v`'s bytes, from `v.start`'s: its
    element and the reach of the dimensions whose stride `modulus` does not divide (strides
    are never negative). Two views whose arcs do not meet share no byte."""
    inner = sum((n - 1) * s for n, s in zip(v.shape, v.strides, strict=True) if s % modulus)
    return inner + v.itemsize


def _typical(group: list[int], arcs: dict[int, int]) -> list[int]:
    """The views of `group` whose arc is no longer than the most common one's."""
    common = Counter(arcs[i] for i in group).most_common(1)[0][0]
    return [i for i in group if arcs[i] <= common]


def _residue_parts(
    order: list[_Span], tame: list[int], modulus: int, arcs: dict[int, int]
) -> list[list[int]]:
    """`tame` (views whose arc of residues modulo `modulus` is shorter than it) in parts whose
    arcs meet, circularly: views of different parts share no byte. Each part ascending, as
    `order` is."""
    parts: list[_Part] = []
    for r, i in sorted((order[i].start % modulus, i) for i in tame):
        end = r + arcs[i]
        if parts and r < parts[-1].reach:
            parts[-1].reach = max(parts[-1].reach, end)
            parts[-1].members.append(i)
        else:
            parts.append(_Part(r, end, [i]))
    return [sorted(p.members) for p in _join_wrapped(parts, modulus)]


def _arc_pairs(
    order: list[_Span], group: list[int], modulus: int, arcs: dict[int, int]
) -> Iterator[tuple[int, int]]:
    """Each pair of `group` whose arcs of residues meet (circularly) and whose byte ranges
    overlap, found by a sweep over the arcs (one that wraps is swept again from below 0)."""
    events = []
    for i in group:
        r = order[i].start % modulus
        events.append((r, r + arcs[i], i))
        if r + arcs[i] > modulus:
            events.append((r - modulus, r + arcs[i] - modulus, i))
    events.sort()
    active: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for r, end, j in events:
        active = [(e, i) for e, i in active if e > r]
        for pair in {(min(i, j), max(i, j)) for _, i in active if i != j} - seen:
            seen.add(pair)
            if order[pair[0]].end > order[pair[1]].start:
                yield pair
        active.append((end, j))


@dataclass
class _Part:
    """Views whose residue arcs meet: from residue `first` up to `reach` (which may pass the
    modulus: the arc wraps round to the first residues)."""

    first: int
    reach: int
    members: list[int]


def _join_wrapped(parts: list[_Part], modulus: int) -> list[_Part]:
    """`parts` (in order of first residue) with the first ones that the last one's wrapped arc
    reaches joined into it."""
    head = 0
    while head < len(parts) - 1 and parts[head].first < parts[-1].reach - modulus:
        last = parts[-1]
        last.reach = max(last.reach, parts[head].reach + modulus)
        last.members.extend(parts[head].members)
        head += 1
    return parts[head:]


def _sweep(order: list[_Span], cluster: list[int]) -> Iterator[tuple[int, int]]:
    """Each pair of `cluster` (ascending, one device) whose byte ranges overlap."""
    active: list[int] = []
    for j in cluster:
        start = order[j].start
        active = [i for i in active if order[i].end > start]
        yield from ((i, j) for i in active)
        active.append(j)


def _wild_pairs(
    order: list[_Span], cluster: list[int], tame: set[int]
) -> Iterator[tuple[int, int]]:
    """Each pair of `cluster` with a view not in `tame` whose byte ranges overlap."""
    for i in cluster:
        if i in tame:
            continue
        for j in cluster:
            if j != i and (j in tame or j > i):
                a, b = min(i, j), max(i, j)
                if order[a].end > order[b].start:
                    yield a, b


def _note_pair(
    found: dict[str, dict[str, bool]], left: tuple[str, ...], right: tuple[str, ...], sure: bool
) -> None:
    for n in left:
        for m in right:
            found.setdefault(n, {})[m] = sure
            found.setdefault(m, {})[n] = sure


def overlaps_itself(t: torch.Tensor) -> bool:
    """Whether some elements of `t` share memory (`expand`'s zero strides, `as_strided`), so
    that no value can be written into it in place. Past `EXACT_OVERLAP_LIMIT`, assumed so."""
    if t.numel() < 2 or _address(t) is None:
        return False
    span = _Span.of(("",), t)
    reach = 0  # how far the smaller strides' dimensions reach, in bytes
    for s, n in sorted((s, n) for n, s in zip(span.shape, span.strides, strict=True) if n > 1):
        if s < reach + span.itemsize:
            break
        reach += (n - 1) * s
    else:
        return False  # each stride steps past all the smaller ones: no element repeats a byte
    cell = math.gcd(span.itemsize, *span.steps())
    if (span.end - span.start) // cell > EXACT_OVERLAP_LIMIT:
        return True
    mask = torch.zeros((span.end - span.start) // cell, dtype=torch.bool)
    _cells(mask, span, span.start, cell).fill_(True)  # a cell marked twice counts once
    return int(mask.sum()) < t.numel() * (span.itemsize // cell)


def _distinct_spans(tensors: Mapping[str, torch.Tensor]) -> list[_Span]:
    """One `_Span` per distinct view (exact aliases share one), of the tensors with memory."""
    names: dict[tuple[object, ...], list[str]] = {}
    first: dict[tuple[object, ...], torch.Tensor] = {}
    for name, t in tensors.items():
        ptr = _address(t)
        if ptr is None:
            continue
        key = (str(t.device), ptr, tuple(t.shape), tuple(t.stride()), t.dtype)
        names.setdefault(key, []).append(name)
        first.setdefault(key, t)
    return [_Span.of(tuple(names[k]), first[k]) for k in names]


def _address(t: torch.Tensor) -> int | None:
    """Where `t`'s first element lies, or None when it holds no memory of its own to share
    (meta, empty, a wrapper subclass such as DTensor: torch gives it address 0, or raises)."""
    if t.is_meta or t.numel() == 0:
        return None
    try:
        ptr = int(t.data_ptr())
    except RuntimeError:
        return None
    return ptr or None


def _overlap(a: _Span, b: _Span) -> bool | None:
    """None when `a` and `b` (`a` starting first) share no byte, True when they do, False when
    the mask they need is over `EXACT_OVERLAP_LIMIT` (assumed)."""
    if b.start >= a.end:
        return None
    step = math.gcd(*a.steps(), *b.steps())
    if step:  # every byte of a lies at a.start + k*step + [0, a.itemsize), b's alike
        gap = (b.start - a.start) % step
        if gap >= a.itemsize and gap + b.itemsize <= step:
            return None
    if a.dense() or (b.dense() and a.end <= b.end):  # one holds a byte of the other's range
        return True
    solved = _solve_overlap(a, b)
    if solved is not None:
        return True if solved else None
    return _mask_overlap(a, b, step)


#: The most candidate solutions numpy's exact overlap solver (`numpy.shares_memory`'s
#: `max_work`) may try on one pair before the mask of `EXACT_OVERLAP_LIMIT` takes over (0: none).
OVERLAP_SOLVER_WORK = 1 << 20
_TOO_HARD: type[Exception] = getattr(np, "exceptions", np).TooHardError  # top level before 1.25


def _solve_overlap(a: _Span, b: _Span) -> bool | None:
    """numpy's exact solver (a bounded Diophantine problem on the strides, microseconds for
    column blocks of one matrix, which a mask would mark cell by cell over the whole matrix) on
    the two views' geometry; None when it gives up (`OVERLAP_SOLVER_WORK`) or numpy cannot
    hold the views' dimensions."""
    if OVERLAP_SOLVER_WORK <= 0:
        return None
    base = np.zeros(1, dtype=np.uint8)  # the views point past it: only their geometry is used
    try:
        left, right = _geometry(a, a.start, base), _geometry(b, a.start, base)
        work = OVERLAP_SOLVER_WORK  # numpy takes any positive bound; its stubs name only -1 and 0
        return bool(np.shares_memory(left, right, max_work=work))  # type: ignore[arg-type]
    except (_TOO_HARD, ValueError):
        return None


def _geometry(v: _Span, base_address: int, base: np.ndarray) -> np.ndarray:
    """A byte array with `v`'s shape and strides at `v.start - base_address` past `base`'s
    first byte, never read (numpy's `as_strided` checks no bounds): what `shares_memory` needs."""
    dims = [(n, s) for n, s in zip(v.shape, v.strides, strict=True) if n > 1]
    shape = [n for n, _ in dims] + [v.itemsize]
    strides = [s for _, s in dims] + [1]
    offset = v.start - base_address
    if offset:  # a leading dimension of two whose second entry starts `offset` bytes on
        return as_strided(base, (2, *shape), (offset, *strides))[1]
    return as_strided(base, shape, strides)


def _mask_overlap(a: _Span, b: _Span, step: int) -> bool | None:
    """Mark a's cells in a mask over both views' range and look for one of b's."""
    cell = math.gcd(a.itemsize, b.itemsize, step, b.start - a.start)
    cells = (max(a.end, b.end) - a.start) // cell
    if cells > EXACT_OVERLAP_LIMIT:
        return False
    mask = torch.zeros(cells, dtype=torch.bool)
    _cells(mask, a, a.start, cell).fill_(True)
    return True if bool(_cells(mask, b, a.start, cell).any()) else None


def _cells(mask: torch.Tensor, v: _Span, base: int, cell: int) -> torch.Tensor:
    """`v`'s cells in `mask` (which starts at address `base`), one per `cell` bytes."""
    shape = (*v.shape, v.itemsize // cell)
    strides = (*(s // cell for s in v.strides), 1)
    return mask.as_strided(shape, strides, (v.start - base) // cell)


def unreadable_kind(t: object) -> str | None:
    """What makes a tensor one reinit cannot read as a checkpoint's bytes (sparse, nested,
    quantized: torch raised from inside, 'Cannot access storage'), or None."""
    if not isinstance(t, torch.Tensor):
        return None
    if t.is_nested:
        return "nested"
    if t.layout != torch.strided:
        return f"sparse ({t.layout})"
    if t.is_quantized:
        return f"quantized ({t.dtype})"
    return None


def _refuse_unreadable(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """A torch file may hold a sparse, nested or quantized tensor: one line naming it."""
    for name, t in tensors.items():
        kind = unreadable_kind(t)
        if kind is not None:
            raise CheckpointError(
                f"{source}: tensor '{shown(name)}' is {kind}; reinit reads dense tensors: save "
                "it with .to_dense() or .dequantize() (or drop it) with the code that made the file"
            )


class TensorDictCheckpoint(Checkpoint):
    """A checkpoint whose tensors are already objects (`self.tensors`). Reads are independent,
    contiguous CPU copies, whatever device a tensor lives on."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], source: str):
        self.source = source
        self.tensors = dict(tensors)
        _refuse_unreadable(self.tensors, source)
        self._aliases = find_aliases(self.tensors)
        self._overlaps: dict[str, dict[str, bool]] | None = None

    def shard_of(self, name: str) -> str:
        """The shard a tensor is reported in (its file within a folder layout)."""
        return self.shards()[0]

    def names(self) -> list[str]:
        return list(self.tensors)

    def _get(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: has no tensor '{name}'") from None

    def ref(self, name: str) -> TensorRef:
        t = self._get(name)
        return TensorRef.of(name, t.dtype, tuple(t.shape), self.shard_of(name))

    def read(self, name: str) -> torch.Tensor:
        t = self._get(name).detach()
        return t.to("cpu", copy=True, memory_format=torch.contiguous_format)

    def read_bytes(self, name: str) -> memoryview:
        return tensor_to_bytes(self._get(name))

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def overlaps(self) -> dict[str, dict[str, bool]]:
        if self._overlaps is None:  # only planning asks: a state dict's views, a torch file's
            self._overlaps = find_overlaps(self.tensors)
        return {n: dict(o) for n, o in self._overlaps.items()}


class StateDictCheckpoint(TensorDictCheckpoint):
    """An in-memory state dict as a checkpoint. Tensors may live on any device; reads are CPU
    copies.

    Args:
        tensors: name -> tensor; entries that are not tensors are left out.
        source: the name messages and the report use.
        like: an open checkpoint that lends its layout (shards, metadata, extra files, config,
            source name), so that a recipe's final step writes exactly what applying to a file
            of these tensors would.
        config: a model config (as config.json would hold it) for schemes that read one.

    Example:
        >>> ck = StateDictCheckpoint({"w": torch.zeros(2, 3)})
        >>> ck.ref("w").shape
        (2, 3)
    """

    kind = "memory"

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        *,
        source: str = "<state_dict>",
        like: Checkpoint | None = None,
        config: Mapping[str, object] | None = None,
    ):
        check_state_dict(tensors, source)
        super().__init__(
            {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)},
            like.source if like is not None else source,
        )
        self.like = like
        if like is not None:
            self.kind = like.kind
            self.layout = getattr(like, "layout", None)
            self._shard_of = {r.name: r.shard for r in like.refs()}
        else:
            self._shard_of = {}
        self._config: ConfigDict | None = dict(config) if config is not None else None

    def shard_of(self, name: str) -> str:
        return self._shard_of.get(name, self.shards()[0])

    def shards(self) -> list[str]:
        return self.like.shards() if self.like is not None else [""]

    def metadata(self, shard: str = "") -> dict[str, str]:
        return self.like.metadata(shard) if self.like is not None else {}

    def extra_files(self) -> list[str]:
        return self.like.extra_files() if self.like is not None else []

    def fetch_extra(self, relname: str) -> Path:
        if self.like is None:
            raise CheckpointError(f"{self.source}: has no file {relname}")
        return self.like.fetch_extra(relname)

    def config(self) -> ConfigDict | None:
        if self._config is not None:
            return dict(self._config)
        return self.like.config() if self.like is not None else None


def reshaped(ckpt: Checkpoint) -> bool:
    """Whether `ckpt` is an in-memory checkpoint lent another's layout (`like`: a recipe's later
    step) whose names or shapes differ from that checkpoint's: an earlier step's surgery, which
    the output's config.json must follow."""
    like = ckpt.like if isinstance(ckpt, StateDictCheckpoint) else None
    if like is None:
        return False
    return {r.name: r.shape for r in ckpt.refs()} != {r.name: r.shape for r in like.refs()}
