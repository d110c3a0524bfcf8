"""Size limits that keep hostile or mistyped sizes from reaching torch's allocator.

A tensor size comes from a file header or from `--add NAME=[d0,...]`; torch addresses bytes
with int64 and allocates a whole tensor at once, so a size past 2^63 - 1 bytes overflows inside
torch and a size past the machine's memory dies in the allocator. Both are refused here first,
with the size in bytes, so the message is ours and names what was asked."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MAX_TENSOR_BYTES", "available_memory", "declared_bytes"]

# Largest tensor byte size anything may declare: what torch (int64 sizes) can address.
MAX_TENSOR_BYTES = 2**63 - 1


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


def available_memory() -> int:
    """Bytes this process may still allocate: the smaller of the kernel's MemAvailable and the
    cgroup's memory limit (a container's cap), else physical memory; a large number where
    neither can be read (no refusal is then made on memory grounds)."""
    candidates: list[int] = []
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
