"""A DeepSpeed ZeRO (stages 1-3) checkpoint folder as a `Checkpoint`, read as DeepSpeed's own
`zero_to_fp32.py` reads it: the fp32 master weights, from the flat partitions of every rank.

Layout (DeepSpeed's): `DIR/latest` names a tag folder (`global_step100/`) holding
`*_model_states.pt` (rank 0's for stages 1-2, one per rank for stage 3: `module`,
`buffer_names`, `param_shapes` = one ordered {name: shape} per parameter group,
`shared_params`, `frozen_param_shapes`/`frozen_param_fragments`) and one
`*_optim_states.pt` per rank (`optimizer_state_dict`: `zero_stage`, `partition_count` and the
flat fp32 partitions, `single_partition_of_fp32_groups` for stages 1-2, `fp32_flat_groups`
for stage 3). Stages 1-2: a group's partitions, concatenated in rank order, hold its
parameters one after another. Stage 3: every parameter is split across the ranks, each rank
holding `ceil(numel / world)` elements of it at the same offset of its own flat groups.

DeepSpeed-MoE (see `_zero_layout`): with ep_size 1 every expert's fp32 master weights are in
the partitions like any parameter, and each expert file (the module's copy) is only checked
against them; expert parallelism (an expert group split over fewer ranks than the world, or
an AutoEP layer with ep_size > 1) and MoE saves without ZeRO are refused, never read in part.

Every file is opened with `lazy_pickle` (restricted unpickling, DeepSpeed's own objects kept
as inert records, nothing run) and every parameter is read alone, with positioned reads of
just its elements: memory holds one parameter, never a partition."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from reinit.errors import CheckpointError
from reinit.io.checkpoint import Checkpoint, ConfigDict, TensorRef, read_config_file
from reinit.io.confine import local_file
from reinit.io.formats._lazy_pickle import Inert, LazyFile, LazyTensor, load_lazy
from reinit.io.formats._safetensors_format import tensor_to_bytes
from reinit.io.formats._zero_layout import ZeroFiles, zero_files, zero_tag_dir

__all__ = ["ZeroCheckpoint"]

_INERT = ("deepspeed", "argparse", "numpy")  # their objects sit beside the weights, unused


@dataclass(frozen=True)
class _Piece:
    file: LazyFile
    tensor: LazyTensor
    start: int
    count: int


@dataclass(frozen=True)
class _Param:
    shape: tuple[int, ...]
    dtype: torch.dtype
    pieces: tuple[_Piece, ...]


def _key(obj: object, key: str, where: str) -> object:
    if not isinstance(obj, Mapping) or key not in obj:
        raise CheckpointError(f"{where}: has no '{key}'; not a DeepSpeed ZeRO checkpoint file")
    return obj[key]


def _as_int(v: object, where: str, key: str) -> int:
    if isinstance(v, Inert) and v.args:
        v = v.args[0]  # an enum (ZeroStageEnum) kept as its value
    if isinstance(v, list) and v and all(isinstance(n, int) for n in v):
        v = max(v)  # per-group partition counts: the data-parallel world is the largest
    if not isinstance(v, int) or isinstance(v, bool):
        raise CheckpointError(f"{where}: '{key}' is a {type(v).__name__}, not an integer")
    return v


def _mapping(obj: object, key: str, where: str) -> Mapping[object, object]:
    """`obj[key]` when it is a mapping, {} when absent; a corrupt file otherwise."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{where}: '{key}' is a {type(value).__name__}, not a mapping")
    return value


def _dims(shape: object, where: str, name: object) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise CheckpointError(f"{where}: the shape of '{name}' is {shape!r}, not a list of sizes")
    return tuple(shape)


def _groups(shapes: object, where: str) -> list[dict[str, tuple[int, ...]]]:
    """`param_shapes`: one ordered {name: shape} per parameter group, checked."""
    if not isinstance(shapes, list) or not all(isinstance(g, Mapping) for g in shapes):
        raise CheckpointError(f"{where}: param_shapes is not a list of groups")
    return [{str(k): _dims(v, where, k) for k, v in g.items()} for g in shapes]


def _tensors(obj: object, where: str) -> list[LazyTensor]:
    if not isinstance(obj, (list, tuple)) or not all(isinstance(t, LazyTensor) for t in obj):
        raise CheckpointError(f"{where}: the flat fp32 partitions are not a list of tensors")
    return list(obj)


def _take(f: LazyFile, flats: Sequence[LazyTensor], start: int, count: int) -> list[_Piece]:
    """Elements [start, start+count) of the concatenation of `flats`, as pieces."""
    out, base = [], 0
    for t in flats:
        lo, hi = max(start, base), min(start + count, base + t.numel)
        if lo < hi:
            out.append(_Piece(f, t, lo - base, hi - lo))
        base += t.numel
    if sum(p.count for p in out) != count:
        raise CheckpointError(f"{f.path}: the flat partitions end before a parameter does")
    return out


def _capped(pieces: list[_Piece], n: int) -> tuple[_Piece, ...]:
    """The first `n` elements of `pieces` (stage 3 pads each parameter to a multiple of ranks)."""
    out = []
    for p in pieces:
        if n <= 0:
            break
        out.append(_Piece(p.file, p.tensor, p.start, min(p.count, n)))
        n -= out[-1].count
    return tuple(out)


def _paddings(osd: object, shapes: list[dict[str, tuple[int, ...]]], where: str) -> list[list[int]]:
    """`param_alignment_paddings` (stages 1-2 with `parameter_alignment`): the elements left
    after each parameter of each group, before the next; none (older versions) is all 0."""
    pads = osd.get("param_alignment_paddings") if isinstance(osd, Mapping) else None
    if pads is None:
        return [[0] * len(g) for g in shapes]
    if not (
        isinstance(pads, list)
        and len(pads) == len(shapes)
        and all(isinstance(p, list) and len(p) == len(g) for p, g in zip(pads, shapes, strict=True))
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for p in pads for n in p)
    ):
        raise CheckpointError(
            f"{where}: param_alignment_paddings does not give one padding per parameter of each "
            "group of param_shapes; the checkpoint is corrupt"
        )
    return pads


def _check_counts(
    tag: Path,
    stage: int,
    world: int,
    models: list[LazyFile],
    shapes: list[dict[str, tuple[int, ...]]],
    flats: list[list[LazyTensor]],
) -> None:
    """Stage 3 keeps one model states file per rank; stages 1-2 one flat partition per
    parameter group in every rank's optimizer file."""
    if stage == 3 and len(models) != world:
        raise CheckpointError(
            f"{tag}: ZeRO stage 3 over {world} ranks, but {len(models)} model states files; "
            "a rank's model states file is missing or left from another run"
        )
    if stage <= 2 and any(len(f) != len(shapes) for f in flats):
        raise CheckpointError(
            f"{models[0].path}: param_shapes has {len(shapes)} parameter groups, the optimizer "
            f"files {sorted({len(f) for f in flats})}; the checkpoint is corrupt"
        )


def _check_files(tag: Path, files: ZeroFiles) -> None:
    """A DeepSpeed-MoE save without ZeRO has only `expp_rank_*` optimizer files; a folder
    whose only model states are experts' lacks the ranks' own."""
    if not files.optims:
        raise CheckpointError(
            f"{tag}: a DeepSpeed-MoE checkpoint saved without ZeRO (only expp_rank_* optimizer "
            "files); not supported: reinit reads ZeRO stage 1-3 folders, so save it with ZeRO "
            "stage 1 or 2"
        )
    if not files.models:
        raise CheckpointError(
            f"{tag}: has no ranks' model states file (mp_rank_00_model_states.pt), only "
            "experts'; a file is missing or left from another run"
        )


def _check_autoep(tag: Path, model: object) -> None:
    """DeepSpeed's AutoEP layers record themselves in the model states (`ds_autoep_layers`,
    `autoep_layers` before): with ep_size > 1 each rank's stacked experts are its own
    experts only (in ZeRO stage 3 too, where `param_shapes` then gives the local shape)."""
    layers = model.get("ds_autoep_layers") if isinstance(model, Mapping) else None
    if layers is None and isinstance(model, Mapping):
        layers = model.get("autoep_layers")
    for layer in layers if isinstance(layers, list) else []:
        ep = layer.get("ep_size") if isinstance(layer, Mapping) else None
        if ep != 1:
            where = layer.get("module_path") if isinstance(layer, Mapping) else None
            raise CheckpointError(
                f"{tag}: DeepSpeed AutoEP layer '{where}' with expert parallelism (ep_size "
                f"{ep}): each rank holds only its own experts; not supported: reinit reads "
                "AutoEP saved with autoep_size 1 (with ZeRO 1-2, load it in DeepSpeed with "
                "autoep_size 1, load_module_only=True, and save again; for ZeRO-3 DeepSpeed "
                "points to its ds_to_universal.py)"
            )


def _check_expert_parallel(tag: Path, osd: object, world: int) -> None:
    """DeepSpeed-MoE with expert parallelism (ep_size > 1) splits each expert group over the
    ranks of one expert-data-parallel group only: every such group's partitions hold other
    experts, under the same (local) names, so the ranks' partitions cannot be joined."""
    counts = osd.get("partition_count") if isinstance(osd, Mapping) else None
    if not isinstance(counts, list):
        return
    for i, n in enumerate(counts):
        if isinstance(n, int) and 0 < n < world:
            raise CheckpointError(
                f"{tag}: DeepSpeed-MoE with expert parallelism (ep_size {world // n}): parameter "
                f"group {i} is split over {n} of the {world} ranks, each group of ranks holding "
                "other experts under the same names; not supported: reinit reads DeepSpeed-MoE "
                "saved with ep_size 1 (load it in DeepSpeed with ep_size=1, load_module_only="
                "True, and save again)"
            )


class ZeroCheckpoint(Checkpoint):
    """A DeepSpeed ZeRO checkpoint folder (or its tag folder), read as `zero_to_fp32` does."""

    kind = "zero"

    def __init__(self, folder: str | os.PathLike[str], source: str | None = None):
        self.source = source if source is not None else os.fspath(folder)
        tag = zero_tag_dir(Path(folder))
        if tag is None:
            raise CheckpointError(f"{self.source}: not a DeepSpeed ZeRO checkpoint folder")
        self.folder, self._root = tag, Path(folder)
        self._files: list[LazyFile] = []
        try:
            self._open(tag)
        except BaseException:
            self.close()
            raise

    def _load(self, path: Path) -> LazyFile:
        rel = os.path.relpath(path, self._root)  # a regular file inside the folder: no FIFO
        f = load_lazy(str(local_file(self._root, rel, self.source, "holds")), _INERT)
        self._files.append(f)
        return f

    def _open(self, tag: Path) -> None:
        files = zero_files(tag)
        _check_files(tag, files)
        models = [self._load(p) for p in files.models]
        optims = [self._load(p) for p in files.optims]
        osds = [_key(o.obj, "optimizer_state_dict", o.path) for o in optims]
        where = optims[0].path
        stage = _as_int(_key(osds[0], "zero_stage", where), where, "zero_stage")
        world = _as_int(_key(osds[0], "partition_count", where), where, "partition_count")
        if world != len(optims) or stage not in (1, 2, 3):
            raise CheckpointError(
                f"{tag}: ZeRO stage {stage} over {world} ranks, but {len(optims)} optimizer "
                "files; a rank's file is missing or left from another run"
            )
        _check_autoep(tag, models[0].obj)
        _check_expert_parallel(tag, osds[0], world)
        key = "single_partition_of_fp32_groups" if stage <= 2 else "fp32_flat_groups"
        flats = [_tensors(_key(s, key, o.path), o.path) for s, o in zip(osds, optims, strict=True)]
        m0 = models[0].obj
        shapes = _groups(_key(m0, "param_shapes", models[0].path), models[0].path)
        _check_counts(tag, stage, world, models, shapes, flats)
        self.params: dict[str, _Param] = {}
        self._buffers(models[0])
        self._frozen(models)
        if stage <= 2:
            self._stage12(shapes, flats, optims, _paddings(osds[0], shapes, where))
        else:
            self._stage3(shapes, flats, optims, world)
        shared = _mapping(m0, "shared_params", models[0].path)
        self._aliases = {str(a): str(b) for a, b in shared.items() if str(b) in self.params}
        module = m0.get("module") if isinstance(m0, Mapping) else None
        order = [k for k in (module or {}) if k in self.params or k in self._aliases]
        rest = [k for k in [*self.params, *self._aliases] if k not in set(order)]
        self._names = order + rest
        for path in files.experts:
            self._check_expert_file(path)

    def _check_expert_file(self, path: Path) -> None:
        """A DeepSpeed-MoE expert file holds its expert's module weights under the names the
        model's state_dict gives them; with ep_size 1 the ZeRO partitions hold each of them
        too, as fp32 master weights. One that does not is refused, never dropped."""
        f = self._load(path)
        self._files.remove(f)
        try:
            if not isinstance(f.obj, Mapping):
                raise CheckpointError(f"{f.path}: is not a DeepSpeed-MoE expert file")
            for name, t in f.obj.items():
                if not isinstance(t, LazyTensor) or not self._holds_expert(str(name), t.shape):
                    raise CheckpointError(
                        f"{f.path}: expert tensor '{name}' is not among the parameters of the "
                        "ZeRO partitions (a frozen expert, or an expert layout reinit does not "
                        "read); not supported: load the checkpoint in DeepSpeed and save the "
                        "model's state_dict"
                    )
        finally:
            f.close()

    def _holds_expert(self, name: str, shape: tuple[int, ...]) -> bool:
        """`name` is a parameter read, or (AutoEP) expert E of a stacked one: `...experts.w1.E`
        is `...experts.w1[E]`."""
        p = self.params.get(name)
        if p is not None:
            return p.shape == shape
        stacked, _, e = name.rpartition(".")
        p = self.params.get(stacked)
        return bool(p and p.shape and e.isdigit() and int(e) < p.shape[0] and p.shape[1:] == shape)

    def _buffers(self, model: LazyFile) -> None:
        module = _key(model.obj, "module", model.path)
        names = _key(model.obj, "buffer_names", model.path)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{model.path}: buffer_names is not a list of names")
        for name in names:
            t = module.get(name) if isinstance(module, Mapping) else None
            if isinstance(t, LazyTensor):
                dtype = torch.float32 if t.dtype.is_floating_point else t.dtype  # as zero_to_fp32
                self.params[name] = _Param(t.shape, dtype, (_Piece(model, t, 0, t.numel),))

    def _frozen(self, models: list[LazyFile]) -> None:
        where = models[0].path
        fragments = [_mapping(m.obj, "frozen_param_fragments", m.path) for m in models]
        for name, shape in _mapping(models[0].obj, "frozen_param_shapes", where).items():
            pieces = [
                _Piece(m, frag, 0, frag.numel)
                for m, frags in zip(models, fragments, strict=True)
                if isinstance(frag := frags.get(name), LazyTensor)
            ]
            dims = _dims(shape, where, name)
            if sum(p.count for p in pieces) < math.prod(dims) or not pieces:
                raise CheckpointError(
                    f"{where}: frozen parameter '{name}' {list(dims)} has "
                    f"{sum(p.count for p in pieces)} values stored; the checkpoint is corrupt"
                )
            self.params[str(name)] = _Param(
                dims, pieces[0].tensor.dtype, _capped(pieces, math.prod(dims))
            )

    def _stage12(
        self,
        shapes: list[dict[str, tuple[int, ...]]],
        flats: list[list[LazyTensor]],
        optims: list[LazyFile],
        paddings: list[list[int]],
    ) -> None:
        for i, group in enumerate(shapes):
            parts = [(o, f[i]) for o, f in zip(optims, flats, strict=True)]
            offset = 0
            for (name, dims), pad in zip(group.items(), paddings[i], strict=True):
                n, pieces, base = math.prod(dims), [], 0
                for o, t in parts:
                    lo, hi = max(offset, base), min(offset + n, base + t.numel)
                    if lo < hi:
                        pieces.append(_Piece(o, t, lo - base, hi - lo))
                    base += t.numel
                if sum(p.count for p in pieces) != n:
                    raise CheckpointError(
                        f"{optims[0].path}: parameter group {i} ends before '{name}' does"
                    )
                self.params[name] = _Param(dims, torch.float32, tuple(pieces))
                offset += n + pad

    def _stage3(
        self,
        shapes: list[dict[str, tuple[int, ...]]],
        flats: list[list[LazyTensor]],
        optims: list[LazyFile],
        world: int,
    ) -> None:
        offset = 0
        for group in shapes:
            for name, dims in group.items():
                n = math.prod(dims)
                part = math.ceil(n / world)
                pieces = [
                    p for o, f in zip(optims, flats, strict=True) for p in _take(o, f, offset, part)
                ]
                self.params[name] = _Param(dims, torch.float32, _capped(pieces, n))
                offset += part

    def names(self) -> list[str]:
        return list(self._names)

    def stored_files(self) -> list[tuple[str, int, int]]:
        """Each file the checkpoint was read from, in the order read (model states, then each
        rank's optimizer states): its path, the tensors with values there and the bytes of
        those values as stored (a tensor split over ranks counts in each of its files; a
        tied name, once, under the tensor it shares)."""
        tensors: dict[str, set[str]] = {f.path: set() for f in self._files}
        nbytes = dict.fromkeys(tensors, 0)
        for name, p in self.params.items():
            for q in p.pieces:
                if q.count:
                    tensors[q.file.path].add(name)
                    nbytes[q.file.path] += q.count * q.tensor.dtype.itemsize
        return [(path, len(tensors[path]), nbytes[path]) for path in tensors]

    def _get(self, name: str) -> _Param:
        target = self._aliases.get(name, name)
        if target not in self.params:
            raise CheckpointError(f"{self.source}: has no tensor '{name}'")
        return self.params[target]

    def ref(self, name: str) -> TensorRef:
        p = self._get(name)
        return TensorRef.of(name, p.dtype, p.shape)

    def read(self, name: str) -> torch.Tensor:
        p = self._get(name)
        parts = [
            torch.frombuffer(q.file.read_flat(q.tensor, q.start, q.count), dtype=q.tensor.dtype)
            if q.count
            else torch.empty(0, dtype=q.tensor.dtype)
            for q in p.pieces
        ]
        flat = torch.cat(parts) if parts else torch.empty(0, dtype=p.dtype)
        return flat.to(p.dtype).reshape(p.shape)

    def read_bytes(self, name: str) -> memoryview:
        return tensor_to_bytes(self.read(name))

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def config(self) -> ConfigDict | None:
        for folder in (self.folder, self.folder.parent):
            if (folder / "config.json").is_file():
                return read_config_file(folder / "config.json")
        return None

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files.clear()
