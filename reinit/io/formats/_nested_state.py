"""Where a torch checkpoint keeps its weights (docs/guide/outputs.md): training checkpoints nest the state
dict (`{"epoch", "model_state_dict", "optimizer_state_dict"}`, Lightning's `state_dict`,
DeepSpeed's `module`, `ema` copies ...).

One rule: a mapping that holds tensors itself is the state. Otherwise descend through the
well-known nest names only (`NEST_KEYS`, at any depth); every mapping reached that holds
tensors is a candidate. One candidate is used; several is an exit-2 error listing them with
their tensor counts (pick one with `--key PATH` / `from(..., state=PATH)`); none is an error
that names the tensor-holding mappings found anywhere, as `--key` hints. A top level that
holds tensors beside such nests is ambiguous too (exit 2). An explicit dotted `key` is followed
first (`.` is the top level itself), and the same rule applies below it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from reinit.errors import CheckpointError, NestedStateError

__all__ = ["NEST_KEYS", "beside_state", "find_state"]

# Names training code gives the model's state inside a bigger checkpoint.
NEST_KEYS = (
    "model_state_dict",
    "state_dict",
    "model_state",
    "model",
    "module",
    "ema",
    "ema_state_dict",
    "model_ema",
    "state_dict_ema",
    "net",
    "network",
)

_MAX_DEPTH = 4  # how deep the hint search looks for tensor-holding mappings


def _tensor_count(obj: Mapping[object, object]) -> int:
    return sum(isinstance(v, torch.Tensor) for v in obj.values())


Candidate = tuple[str, int, Mapping[object, object]]


def _candidates(
    obj: Mapping[object, object], path: str, nests_only: bool, depth: int = 0
) -> list[Candidate]:
    """Dotted paths (below `path`) of mappings holding tensors, descending through the nest
    names only (`nests_only`) or through every mapping (for the hint)."""
    found: list[Candidate] = []
    if depth >= _MAX_DEPTH:
        return found
    for k, v in obj.items():
        if not isinstance(v, Mapping) or (nests_only and k not in NEST_KEYS):
            continue
        sub = f"{path}.{k}" if path else str(k)
        n = _tensor_count(v)
        if n:
            found.append((sub, n, v))
        else:
            found.extend(_candidates(v, sub, nests_only, depth + 1))
    return found


def _listed(cands: list[Candidate]) -> str:
    return ", ".join(f"{p} ({n} tensors)" for p, n, _ in cands[:8])


def _step(obj: object, parts: list[str]) -> tuple[object, int] | None:
    """The key of `obj` that the next of the dotted `parts` name, and how many parts it took:
    the longest run that is a key (parameter names hold dots: `state.0.weight.exp_avg`), an
    integer key written as digits (`Optimizer.state_dict()`'s `state.0`); None if none is."""
    if not isinstance(obj, Mapping):
        return None
    for used in range(len(parts), 0, -1):
        name = ".".join(parts[:used])
        if name in obj:
            return name, used
        if name.isdigit() and int(name) in obj:
            return int(name), used
    return None


def find_state(
    obj: object, where: str, key: str = "", flag: str = "--key"
) -> Mapping[object, object]:
    """The mapping holding the model's tensors (see the module docstring).

    Args:
        obj: what `torch.load` returned.
        where: the file, for messages.
        key: a dotted path (`--key` / `state=`) to start from; "" for the top.
        flag: how the user spells the key in messages (`--key` or `state=`).
    """
    path = ""
    parts = [p for p in key.split(".") if p] if key else []
    while parts:
        found = _step(obj, parts)
        if found is None:
            here = f"'{path}'" if path else "the top level"
            keys = (
                ", ".join(map(str, list(obj)[:8]))
                if isinstance(obj, Mapping)
                else type(obj).__name__
            )
            raise NestedStateError(
                f"{where}: {flag} {key}: no key '{parts[0]}' at {here} (keys: {keys})"
            )
        k, used = found
        obj = obj[k]  # type: ignore[index]
        path = f"{path}.{k}" if path else str(k)
        parts = parts[used:]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where}: {('at ' + repr(path) + ' ') if path else ''}holds a {type(obj).__name__}, not a state dict"
        )
    cands = _candidates(obj, path, nests_only=True)
    if _tensor_count(obj):
        if cands and not key:  # tensors beside a model_state_dict: which is the model?
            raise NestedStateError(
                f"{where}: the top level holds {_tensor_count(obj)} tensors beside nests that "
                f"hold tensors too: {_listed(cands)}; pick a nest with {flag} PATH, or the top "
                f"level with {flag} ."
            )
        return obj
    if len(cands) == 1:
        return cands[0][2]
    if cands:
        raise NestedStateError(
            f"{where}: several nests hold tensors: {_listed(cands)}; pick one with {flag} PATH"
        )
    anywhere = _candidates(obj, path, nests_only=False)
    hint = (
        f"; pick the state with {flag} PATH: {_listed(anywhere)}"
        if anywhere
        else "; expected a state dict"
    )
    raise CheckpointError(
        f"{where}: holds no tensors (keys: {', '.join(map(str, list(obj)[:8]))}){hint}"
    )


def beside_state(obj: object, state: Mapping[object, object]) -> tuple[str, ...]:
    """What `obj` (a loaded checkpoint) holds besides the tensors of `state`, the mapping
    `find_state` took from it: the nest the state sits in, the entries beside it on the way
    down (`epoch`, `optimizer_state_dict`) and the state's own entries that are not tensors.
    A file rewritten with the state's tensors alone would lose all of them; () when none."""
    path = _path_to(obj, state, 0) or []
    beside: list[str] = [f"the nest {'.'.join(map(str, path))}"] if path else []
    node = obj
    for i, k in enumerate(path):
        assert isinstance(node, Mapping)
        prefix = ".".join(map(str, path[:i]))
        beside += [f"{prefix}.{o}" if prefix else str(o) for o in node if o != k]
        node = node[k]
    beside += [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    return tuple(beside)


def _path_to(obj: object, target: object, depth: int) -> list[object] | None:
    """The keys from `obj` down to the mapping `target` (by identity): [] when it is `obj`."""
    if obj is target:
        return []
    if not isinstance(obj, Mapping) or depth > 64:  # a --key path is not deeper
        return None
    for k, v in obj.items():
        below = _path_to(v, target, depth + 1)
        if below is not None:
            return [k, *below]
    return None
