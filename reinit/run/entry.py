"""A planned tensor's report entry, once its values are known: the one place a `PlanEntry`
and its statistics become a `TensorEntry` (expected std, var_gain, what `default` ran, which
transform fed it), so the streaming engine and every caller describe a tensor alike."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from reinit.errors import ValueRangeError
from reinit.io.formats import dtype_name, is_float_name
from reinit.planning.planner import PlanEntry
from reinit.planning.transplant import transform_label
from reinit.report.entries import TensorEntry, var_gain
from reinit.report.reference import OWN_BEFORE, PARTIAL, RESIZED, SOURCE
from reinit.report.stats import Stats
from reinit.schemes import DEFAULT, compute_fans, expected_std_for

if TYPE_CHECKING:  # its TorchFunctionMode loads torch: imported where a model is used
    from reinit.planning.init_trace import AppliedInit

__all__ = ["entry_for", "refuse_overflow", "with_source_std"]


def entry_for(
    p: PlanEntry,
    after: Stats,
    before: Stats | None = None,
    source: str | None = None,
    notes: tuple[str, ...] = (),
    fans: tuple[int, int] | None = None,
    applied: AppliedInit | None = None,
) -> TensorEntry:
    """`fans`: the owning module's own fans when a model is given (else torch's, from the shape).
    `applied`: what the `default` scheme ran on this tensor; its expected std is that init's and
    the scheme reads `default (BertModel._init_weights on Linear: normal(std=0.02))`."""
    fans = fans or compute_fans(p.shape)
    fan_in, fan_out = fans if fans else (None, None)
    bound = p.scheme
    # a grown tensor's std mixes its kept and its new entries: no one scheme's std to expect
    scored = bound if not p.resize_fills else None
    expected = expected_std_for(scored, p.shape, fans) if scored is not None else None
    scheme = bound.describe() if bound is not None else None
    if applied is not None and bound is not None and bound.name == DEFAULT:
        expected = applied.expected_std
        scheme = f"{scheme} ({applied.description})"
    part = p.rule.part if p.rule is not None and p.action == "reinit" else None
    if part is not None:  # the rest of the tensor is kept: no one std to expect of it all
        expected = None
        scheme = f"{scheme} on {part.text}"
    entry = TensorEntry(
        name=p.name,
        shape=p.shape,
        dtype=p.dtype_name,
        action=p.action,
        after=after,
        rule=p.rule_text or None,
        scheme=scheme,
        source=source,
        reason=p.reason,
        fan_in=fan_in,
        fan_out=fan_out,
        before=before,
        expected_std=expected,
        var_gain=var_gain(fan_in, after.std) if is_float_name(p.dtype_name) else None,
        notes=notes,
        transform=transform_label(p),
        kurtosis=scored.scheme.kurtosis if scored is not None else 3.0,
    )
    if part is None and bound is not None and bound.name in OWN_SCALE:
        return _own_scale_reference(entry, bound.name, before)
    return _kept_part_reference(entry, p, before, part is not None)


#: Schemes whose values are the checkpoint's own: `copy` another tensor's, `normal_like` a
#: draw at the tensor's own mean and std.
OWN_SCALE = ("copy", "normal_like")


def _own_scale_reference(entry: TensorEntry, scheme: str, before: Stats | None) -> TensorEntry:
    """A `copy(...)` is judged against its source, as a `from()` copy (its values are the
    source's: on reference by definition); `normal_like` against its own std before. A
    trained tensor so made is never judged by the init scale."""
    if not entry.is_float:
        return entry
    std = entry.after.std if scheme == "copy" else (before.std if before is not None else None)
    if not std:
        return entry
    return replace(entry, reference=SOURCE if scheme == "copy" else OWN_BEFORE, reference_std=std)


def _kept_part_reference(
    entry: TensorEntry, p: PlanEntry, before: Stats | None, partial: bool
) -> TensorEntry:
    """A tensor `--resize` grew, or a rule re-initialized only in part (`rows=`/`cols=`), keeps
    old values beside the new ones: it is judged against its own std before (trained
    embeddings sit at 2-3x the config's init scale, so a correct vocabulary growth or a few
    re-drawn rows must not be judged by that), never by the init scale."""
    if not (p.resize_fills or partial) or before is None or not before.std:
        return entry
    if not is_float_name(p.dtype_name):
        return entry
    return replace(
        entry, reference=RESIZED if p.resize_fills else PARTIAL, reference_std=before.std
    )


def with_source_std(entry: TensorEntry, source_std: float | None) -> TensorEntry:
    """A transplant's entry with its source tensor(s)' std as its reference (DESIGN §8): what
    `off_reference` judges it by, whatever the tensor is named."""
    if entry.action != "transplant" or source_std is None or not entry.is_float:
        return entry
    return replace(entry, reference=SOURCE, reference_std=source_std)


def refuse_overflow(p: PlanEntry, after: Stats, before: Stats | None) -> None:
    """A tensor this run drew (reinit, --add, --resize) holds values beyond its dtype (inf):
    fail before anything is published, naming it. Non-finite values it read (a scheme that
    keeps old rows) are not its doing."""
    if after.nonfinite <= (before.nonfinite if before is not None else 0):
        return
    how = p.scheme.describe() if p.scheme is not None else (p.resized or "its --add scheme")
    top = torch.finfo(p.dtype).max if p.dtype.is_floating_point else None
    limit = f" (largest finite value: {top:g})" if top is not None else ""
    raise ValueRangeError(
        f"tensor '{p.name}': {how} drew {after.nonfinite} value(s) beyond {dtype_name(p.dtype)}"
        f"'s range{limit}; nothing was written: use a smaller mean, std or gain"
    )
