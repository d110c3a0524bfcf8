"""The byte-counting progress bar of the streaming loops (tqdm's, or one disabled), without
torch: `reinit report` of a safetensors file draws it too."""

from __future__ import annotations

__all__ = ["Progress", "progress_bar"]

from types import TracebackType
from typing import Protocol


class Progress(Protocol):
    """What the streaming loops need of a progress bar (tqdm's, or one disabled)."""

    def update(self, n: float | None = 1) -> bool | None: ...

    def __enter__(self) -> Progress: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def progress_bar(total: int, enabled: bool, desc: str) -> Progress:
    """A byte-counting tqdm bar (disabled when not `enabled`); imported here only, so a run
    without --progress never pays for it."""
    from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type stubs

    bar: Progress = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )
    return bar
