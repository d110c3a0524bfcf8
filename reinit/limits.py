"""Size limits that keep hostile or mistyped sizes from reaching torch's allocator.

A tensor size comes from a file header or from `--add NAME=[d0,...]`; torch addresses bytes
with int64 and allocates a whole tensor at once, so a size past 2^63 - 1 bytes overflows inside
torch and a size past the machine's memory dies in the allocator. Both are refused here first,
with the size in bytes, so the message is ours and names what was asked."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_INDEX_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MODEL_COUNT",
    "MAX_RECORDED_STEPS",
    "MAX_RECORDED_SURGERY_BYTES",
    "MAX_REGEX_CHARS",
    "MAX_REGEX_REPEAT",
    "MAX_REPORT_BYTES",
    "MAX_TENSOR_BYTES",
    "MAX_TOKENIZER_BYTES",
    "MAX_TOTAL_TENSORS",
    "REGEX_BUDGET_S",
    "available_memory",
    "declared_bytes",
]

# Largest tensor byte size anything may declare: what torch (int64 sizes) can address.
MAX_TENSOR_BYTES = 2**63 - 1

# The JSON files read beside a checkpoint are capped by size before they are parsed (json's
# objects take 10-20x their text in memory: a 254 MB tokenizer.json peaked at 2.9 GB) and by
# depth (deeper nesting ends in Python's recursion limit). Real files sit far below: configs are
# kilobytes (an ImageNet-21k id2label ~1 MB), tokenizer.json files up to ~35 MB, an index of
# 200k tensors ~16 MB, a report of 200k tensors ~75 MB.
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # config.json (also a rows=labels config file)
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024  # tokenizer.json, vocab.json, vocab.txt
MAX_INDEX_BYTES = 64 * 1024 * 1024  # model.safetensors.index.json, pytorch_model.bin.index.json
MAX_REPORT_BYTES = 256 * 1024 * 1024  # a reinit JSON report read back (verify --report)
MAX_JSON_DEPTH = 64  # lists/objects inside each other, in any of these files or a --config value

# The surgery an output records in its safetensors metadata (`run.record`: the --drop, --rename,
# --resize and --add texts, which `report --against` replays), as JSON. Each text is ~50 bytes:
# 64 KiB holds ~1,000 of them, and every shard's header carries a copy. Beyond it the output
# records that its surgery was left out; a longer record read back is ignored.
MAX_RECORDED_SURGERY_BYTES = 64 * 1024

# The steps an output records as having made its input (`run.record`: a recipe's earlier steps,
# the applies of a chain of files), each with its rules and surgery. Beyond it the output
# records that its input's steps were left out; a longer list read back is ignored.
MAX_RECORDED_STEPS = 32

# Tensors in one checkpoint, all its shards together (each file is also capped at 200,000 by
# `io.formats` MAX_TENSORS): the largest public models hold ~100,000.
MAX_TOTAL_TENSORS = 200_000

# Layers or experts a model's config.json may declare (`num_hidden_layers`, `n_layer`,
# `num_local_experts`, ... in it or a nested text/vision config): the largest public models
# have ~100 layers and ~400 experts. transformers builds per-layer lists from these counts
# while it reads the config, before any module exists (`num_hidden_layers: 30000000`: 4 GB and
# 90 s before the build's own cap, MAX_TOTAL_TENSORS, could stop it).
MAX_MODEL_COUNT = 65_536

# A `re:` pattern is bounded before it is compiled (the regex compiler expands counted repeats:
# `a{99999999}` took 23 GB) and while it runs: each name has `matching.REGEX_TIMEOUT_S`, and all
# the names one pattern is tried on share `REGEX_BUDGET_S` (a sane regex spends microseconds
# per name, under a second on 200,000 names).
MAX_REGEX_CHARS = 4096
MAX_REGEX_REPEAT = 1000  # the product of nested {n,m} counts
REGEX_BUDGET_S = 10.0


def declared_bytes(shape: tuple[int, ...] | list[int], itemsize: int) -> int | None:
    """The bytes a shape of `itemsize`-byte elements needs, with dims multiplied ignoring
    zeros; None when that passes `MAX_TENSOR_BYTES`.

    Why ignore zeros: torch multiplies every dim with an overflow check, so [2**62, 2**62, 0]
    overflows there although it holds nothing. Stops at the first overflow, so a shape of huge
    integers costs no big-number product."""
    total = itemsize
    for d in shape:
        total *= d or 1
        if total > MAX_TENSOR_BYTES:
            return None
    return total if all(shape) else 0


def _address_space_left() -> int | None:
    """RLIMIT_AS minus the address space this process already maps (VmSize), or None when
    there is no such limit or it cannot be read."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(soft - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError, IndexError):
        pass
    return soft


def available_memory() -> int:
    """Bytes this process may still allocate: the smaller of the kernel's MemAvailable, the
    cgroup's memory limit (a container's cap) and what `ulimit -v` (RLIMIT_AS) leaves of the
    address space, else physical memory; a large number where none can be read (no refusal is
    then made on memory grounds)."""
    candidates: list[int] = []
    left = _address_space_left()
    if left is not None:
        candidates.append(left)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    for cg in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cg).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            candidates.append(int(text))
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return MAX_TENSOR_BYTES
    return min(candidates)
