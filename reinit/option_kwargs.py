"""The keyword arguments of the public functions, typed (`**kwargs: Unpack[OptionKwargs]`):
exactly `ApplyOptions`' fields (tests/test_options.py checks it). Apart from `reinit.options`
so that file stays one readable list of fields."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypedDict

from reinit.io.trust import TrustSpec
from reinit.option_meta import PathLike

if TYPE_CHECKING:
    from reinit.planning.session import ModelInput
    from reinit.report.entries import Report

__all__ = ["OptionKwargs", "OptionKwargsBesidesSeed"]


class OptionKwargsBesidesSeed(TypedDict, total=False):
    """`OptionKwargs` less `seed`: the keywords of the in-memory functions, whose `seed` is a
    positional parameter of its own."""

    reports: Sequence[PathLike]
    default_report: bool
    strict: bool
    allow_unmatched: bool
    overwrite: bool
    in_place: bool
    device: str
    progress: bool
    unsafe_pickle: TrustSpec
    key: str
    add: Sequence[str]
    drop: Sequence[str]
    rename: Sequence[str]
    resize: Sequence[str]
    model: ModelInput | None
    config: Mapping[str, object] | None
    config_set: Sequence[str]
    labels: str | Sequence[str] | None
    plot: PathLike | None
    dtype: str | None
    max_shard_size: str | int | None
    format: str
    checksums: bool
    reference_tolerance: float
    finish_report: Callable[[Report], Report] | None


class OptionKwargs(OptionKwargsBesidesSeed, total=False):
    """The keyword arguments the public functions take, typed (`**kwargs: Unpack[...]`):
    exactly ApplyOptions' fields (tests/test_options.py checks it)."""

    seed: int
