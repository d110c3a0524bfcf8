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


class _Silent:
    """The bar of a run without progress: counts nothing, imports nothing."""

    def update(self, n: float | None = 1) -> bool | None:
        return None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def progress_bar(total: int, enabled: bool, desc: str) -> Progress:
    """A byte-counting tqdm bar when `enabled`; tqdm is imported only then, so a run without
    progress (--quiet, or stderr not a terminal) never pays for it."""
    if not enabled:
        return _Silent()
    from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type stubs

    bar: Progress = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
    )
    return bar
