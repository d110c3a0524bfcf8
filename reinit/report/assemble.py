"""Entries -> a finished Report: flags added, the summary counted."""

from __future__ import annotations

__all__ = ["finalize", "make_report", "summarize"]

import os
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from reinit.report.entries import Report, Summary, TensorEntry
from reinit.report.flags import (
    SELF_FLAGS,
    depth_checks,
    kind_of,
    layer_index,
    outliers,
    takes_part,
    tensor_flags,
)
from reinit.report.reference import (
    REFERENCE_TOLERANCE,
    ReferenceBasis,
    init_scale,
    off_reference,
    reference_warnings,
    with_references,
)
from reinit.report.untrained import untrained
from reinit.version import __version__

if TYPE_CHECKING:
    from reinit.planning.planner import Plan


def make_report(
    source: str,
    output: str | os.PathLike[str] | None,
    seed: int,
    rules: tuple[str, ...],
    entries: Sequence[TensorEntry],
    bytes_written: int,
    started: float,
    the_plan: Plan | None = None,
    basis: ReferenceBasis | None = None,
) -> Report:
    """The finished Report of a run: each changed tensor's reference scale found
    (`with_references`, from `basis`: the model config, the model's own init, the tolerance),
    flags added (`finalize`), counts and time summed, the plan's warnings and dropped names
    carried over."""
    basis = basis or ReferenceBasis()
    referenced = with_references(entries, basis)
    never_trained = untrained(referenced, init_scale(referenced, basis))
    final = finalize(referenced, basis.tolerance, never_trained)
    return Report(
        reinit_version=__version__,
        source=source,
        output=os.fspath(output) if output is not None else None,
        seed=seed,
        rules=rules,
        tensors=final,
        summary=summarize(final, bytes_written, time.perf_counter() - started),
        warnings=(*(the_plan.warnings if the_plan else ()), *reference_warnings(final, basis)),
        dropped=the_plan.dropped if the_plan else (),
    )


def finalize(
    entries: Sequence[TensorEntry],
    tolerance: float = REFERENCE_TOLERANCE,
    never_trained: Collection[str] = (),
) -> tuple[TensorEntry, ...]:
    """Add every flag: per-tensor ones, `off_reference` (beyond `tolerance`x of the entry's
    `reference_std`, unless a self-explaining flag already names the problem), `untrained`
    for the names in `never_trained` (report/untrained.py), then `outlier` and
    `unstable_depth` (see `outliers` and `depth_checks` for which tensors take part)."""
    out_names = outliers(entries)
    unstable = {c.kind for c in depth_checks(entries) if c.unstable}
    result = []
    for e in entries:
        flags = list(tensor_flags(e))
        if not set(flags) & set(SELF_FLAGS) and off_reference(e, tolerance):
            flags.append("off_reference")
        if e.name in never_trained:
            flags.append("untrained")
        if e.name in out_names:
            flags.append("outlier")
        if (
            kind_of(e.name) in unstable
            and takes_part(e)
            and e.var_gain
            and layer_index(e.name) is not None
        ):
            flags.append("unstable_depth")
        result.append(replace(e, flags=tuple(flags)))
    return tuple(result)


def summarize(entries: Iterable[TensorEntry], bytes_written: int, seconds: float) -> Summary:
    """The report's counts by action and flagged, with what the run wrote and took."""
    entries = list(entries)
    count = {
        a: sum(1 for e in entries if e.action == a)
        for a in ("reinit", "transplant", "kept", "skipped")
    }
    return Summary(
        tensors=len(entries),
        reinit=count["reinit"],
        transplant=count["transplant"],
        kept=count["kept"],
        skipped=count["skipped"],
        flagged=sum(1 for e in entries if e.flags),
        bytes_written=bytes_written,
        seconds=round(seconds, 3),
    )
