"""`reinit diff A B`: which tensors differ between two checkpoints and by how much."""

from __future__ import annotations

__all__ = ["Diff", "TensorDiff", "diff_checkpoints", "render_diff", "summary_line", "value_diff"]

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reinit.io.checkpoint import Checkpoint
from reinit.io.formats import dtype_name
from reinit.io.trust import TrustSpec
from reinit.planning.session import open_source
from reinit.report.jsonio import JSON, dumps
from reinit.report.stats import tensor_stats
from reinit.report.views import click_style, column_widths, fmt, shape_text, table_row
from reinit.text import shown
from reinit.tools.audit import same_bytes, seen_as_note

_CHUNK = 1 << 21


@dataclass(frozen=True)
class TensorDiff:
    name: str
    status: str  # identical | changed | added | removed
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    dtype_a: str | None
    dtype_b: str | None
    std_a: float | None = None
    std_b: float | None = None
    max_abs_diff: float | None = None  # same shape only
    rel_frobenius: float | None = None  # ‖B−A‖/‖A‖; None when A is all zero or shapes differ
    nonfinite_changed: int = 0
    shared: str | None = None  # a resized tensor: its shared block compared (`shared_block`)

    def to_dict(self) -> dict[str, JSON]:
        return {
            "name": self.name,
            "status": self.status,
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "std_a": self.std_a,
            "std_b": self.std_b,
            "max_abs_diff": self.max_abs_diff,
            "rel_frobenius": self.rel_frobenius,
            "nonfinite_changed": self.nonfinite_changed,
            "shared": self.shared,
        }

    @property
    def what(self) -> str:
        """Shape and dtype, or how they changed."""
        parts = []
        if self.shape_a == self.shape_b or self.shape_b is None or self.shape_a is None:
            parts.append(shape_text(self.shape_a or self.shape_b or ()))
        else:
            parts.append(f"{shape_text(self.shape_a)}→{shape_text(self.shape_b)}")
        if self.dtype_a != self.dtype_b and self.dtype_a and self.dtype_b:
            parts.append(f"{self.dtype_a}→{self.dtype_b}")
        return " ".join(parts)


@dataclass(frozen=True)
class Diff:
    a: str
    b: str
    tensors: tuple[TensorDiff, ...]
    notes: tuple[str, ...] = ()  # what the table's removed/added mean beyond the names

    def of(self, status: str) -> tuple[TensorDiff, ...]:
        return tuple(t for t in self.tensors if t.status == status)

    def entry(self, name: str) -> TensorDiff:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict[str, JSON]:
        return {
            "a": self.a,
            "b": self.b,
            "tensors": [t.to_dict() for t in self.tensors],
            "added": [t.name for t in self.of("added")],
            "removed": [t.name for t in self.of("removed")],
            "notes": list(self.notes),
            "summary": dict(self.counts()),
        }

    def counts(self) -> dict[str, int]:
        """Tensors compared (in both), and how many of each status."""
        return {
            "compared": sum(1 for t in self.tensors if t.status in ("identical", "changed")),
            **{s: len(self.of(s)) for s in ("identical", "changed", "added", "removed")},
        }

    def to_json(self) -> str:
        return dumps(self.to_dict(), indent=2)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def value_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float | None, int]:
    """(max |b−a|, ‖b−a‖/‖a‖ or None when ‖a‖ = 0 and b ≠ a, nonfinite positions that
    changed) for two tensors of the same shape, in float64 chunks."""
    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    max_abs, sq_diff, sq_a, bad = 0.0, 0.0, 0.0, 0
    for i in range(0, fa.numel(), _CHUNK):
        x = fa[i : i + _CHUNK].to(torch.float64)
        y = fb[i : i + _CHUNK].to(torch.float64)
        fin = torch.isfinite(x) & torch.isfinite(y)
        if not bool(fin.all()):
            same = (x == y) | (torch.isnan(x) & torch.isnan(y))
            bad += int((~fin & ~same).sum())
            x, y = x[fin], y[fin]
        if x.numel() == 0:
            continue
        d = _exact_difference(fa[i : i + _CHUNK], fb[i : i + _CHUNK], y - x)
        max_abs = max(max_abs, float(d.abs().max()))
        sq_diff += float(d.square().sum())
        sq_a += float(x.square().sum())
    rel = (0.0 if sq_diff == 0.0 else None) if sq_a == 0.0 else math.sqrt(sq_diff / sq_a)
    return max_abs, rel, bad


def _exact_difference(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """b − a: `d` (computed in float64), or for two integer tensors the difference taken in
    int64 first, so values past 2^53 that float64 rounds together (2^53 and 2^53 + 1) still
    differ; integers too large for int64's difference keep `d`."""
    ints = not (a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool)
    ints = ints and not (b.dtype.is_floating_point or b.dtype.is_complex or b.dtype == torch.bool)
    if not ints or a.numel() == 0:
        return d
    big = 2**62
    try:
        if max(int(a.max()), int(b.max())) >= big or min(int(a.min()), int(b.min())) < -big:
            return d
    except RuntimeError:  # an unsigned dtype torch has no max/min for
        return d
    return (b.to(torch.int64) - a.to(torch.int64)).to(torch.float64)


def diff_checkpoints(
    a: str | os.PathLike[str], b: str | os.PathLike[str], *, unsafe_pickle: TrustSpec = ()
) -> Diff:
    """Compare two checkpoints (any source form: docs/reference.md) tensor by tensor, streaming: at most
    one tensor of each is in memory at a time."""
    out: list[TensorDiff] = []
    with open_source(a, unsafe_pickle) as ca, open_source(b, unsafe_pickle) as cb:
        ca, cb, seen_as = _same_names(ca, cb, os.fspath(a), os.fspath(b))
        for ref in ca.refs():
            if ref.name not in cb:
                t = ca.read(ref.name)
                out.append(
                    TensorDiff(
                        ref.name,
                        "removed",
                        ref.shape,
                        None,
                        dtype_name(ref.dtype),
                        None,
                        std_a=tensor_stats(t).std,
                    )
                )
                continue
            bref = cb.ref(ref.name)
            same_layout = (ref.shape, ref.dtype) == (bref.shape, bref.dtype)
            if same_layout and same_bytes(ca.read_bytes(ref.name), cb.read_bytes(ref.name)):
                std = tensor_stats(ca.read(ref.name)).std
                out.append(
                    TensorDiff(
                        ref.name,
                        "identical",
                        ref.shape,
                        bref.shape,
                        dtype_name(ref.dtype),
                        dtype_name(bref.dtype),
                        std,
                        std,
                        0.0,
                        0.0,
                    )
                )
                continue
            ta, tb = ca.read(ref.name), cb.read(ref.name)
            max_abs: float | None = None
            rel: float | None = None
            bad = 0
            shared = None
            if ref.shape == bref.shape and not (ta.dtype.is_complex or tb.dtype.is_complex):
                max_abs, rel, bad = value_diff(ta, tb)
            elif ta.dim() == tb.dim() and not (ta.dtype.is_complex or tb.dtype.is_complex):
                shared = shared_block(ta, tb)
            out.append(
                TensorDiff(
                    ref.name,
                    "changed",
                    ref.shape,
                    bref.shape,
                    dtype_name(ref.dtype),
                    dtype_name(bref.dtype),
                    tensor_stats(ta).std,
                    tensor_stats(tb).std,
                    _finite_or_none(max_abs) if max_abs is not None else None,
                    rel,
                    bad,
                    shared,
                )
            )
            del ta, tb
        for bref in cb.refs():
            if bref.name not in ca:
                out.append(
                    TensorDiff(
                        bref.name,
                        "added",
                        None,
                        bref.shape,
                        None,
                        dtype_name(bref.dtype),
                        std_b=tensor_stats(cb.read(bref.name)).std,
                    )
                )
        notes = (*seen_as, *_held_notes(ca, cb, out, os.fspath(a), os.fspath(b)))
    return Diff(os.fspath(a), os.fspath(b), tuple(out), notes)


def _same_names(
    ca: Checkpoint, cb: Checkpoint, a: str, b: str
) -> tuple[Checkpoint, Checkpoint, tuple[str, ...]]:
    """A and B, the one that holds a model's per-expert tensors seen under the model's
    `state_dict()` names where the other holds them so (`planning.model_named`), and the
    note that says so; else both as they are. The model is built only where each side holds
    names the other lacks."""
    if all(n in cb for n in ca.names()) or all(n in ca for n in cb.names()):
        return ca, cb, ()
    from reinit.planning.model_named import ModelNamedCheckpoint, under_names_of

    seen = under_names_of(ca, cb, a)
    if isinstance(seen, ModelNamedCheckpoint):
        return seen, cb, (seen_as_note(seen, a, b),)
    seen = under_names_of(cb, ca, b)
    if isinstance(seen, ModelNamedCheckpoint):
        return ca, seen, (seen_as_note(seen, b, a),)
    return ca, cb, ()


def _held_notes(
    ca: Checkpoint, cb: Checkpoint, out: Sequence[TensorDiff], a: str, b: str
) -> tuple[str, ...]:
    """A note where one side holds the other's removed (added) tensors under the model's
    `state_dict()` names (a `--format dcp` output of a per-expert checkpoint), by the model
    of the per-expert side's config.json."""
    from reinit.planning.dcp_names import held_under_model_names

    notes = []
    for status, mine, other, where in (("removed", ca, cb, a), ("added", cb, ca, b)):
        names = [t.name for t in out if t.status == status]
        held = held_under_model_names(mine, names, other, where)
        if held:
            old, new = next(iter(held.items()))
            notes.append(
                f"{len(held)} {status} tensor(s) of {where} are held in "
                f"{b if status == 'removed' else a} under {len(set(held.values()))} of the "
                f"model's state_dict() names (e.g. '{old}' in '{new}'); compare a DCP written "
                "the same way, or the safetensors output"
            )
    return tuple(notes)


def shared_block(a: torch.Tensor, b: torch.Tensor) -> str:
    """What a resize kept and what it added: `50257 shared rows identical, 8 rows added`
    (`columns` for dim 1, `[a, b] shared block` beyond), with max |Δ| when the block moved."""
    block = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape, strict=True))
    max_abs, _, _ = value_diff(a[block].contiguous(), b[block].contiguous())
    dims = [d for d, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
    state = "identical" if max_abs == 0 else f"changed (max |Δ| {fmt(max_abs)})"
    if len(dims) != 1 or dims[0] > 1:
        return f"shared block {[s.stop for s in block]} {state}"
    d = dims[0]
    unit = "rows" if d == 0 else "columns"
    grown = b.shape[d] - a.shape[d]
    change = f"{grown} {unit} added" if grown > 0 else f"{-grown} {unit} removed"
    return f"{min(a.shape[d], b.shape[d])} shared {unit} {state}, {change}"


def summary_line(d: Diff) -> str:
    s = d.counts()
    return (
        f"{s['compared']} tensors in both: {s['changed']} changed, {s['identical']} identical; "
        f"{s['added']} added, {s['removed']} removed"
    )


def render_diff(d: Diff, width: int = 100, color: bool = False) -> str:
    """The summary, then the changed, added and removed tensors as an aligned table that fits
    `width` columns (identical ones are only counted)."""
    rows = [t for t in d.tensors if t.status != "identical"]
    lines = [summary_line(d), *(f"note: {n}" for n in d.notes)]
    if not rows:
        return "\n".join(lines)
    header = ("name", "status", "shape/dtype", "max |Δ|", "rel Δ", "std A → B")
    cells = [
        (
            shown(t.name),
            t.status,
            shown(t.what),
            fmt(t.max_abs_diff)
            + (f" +{t.nonfinite_changed} nonfinite" if t.nonfinite_changed else ""),
            fmt(t.rel_frobenius) if t.status == "changed" else "-",
            f"{fmt(t.std_a)} → {fmt(t.std_b)}",
        )
        for t in rows
    ]
    notes = [f"{shown(t.name)}: {t.shared}" for t in rows if t.shared is not None]
    widths = column_widths(header, cells)
    fixed = sum(widths[1:]) + 2 * (len(widths) - 1)
    widths[0] = max(16, min(widths[0], width - fixed))
    if sum(widths) + 2 * (len(widths) - 1) > width:  # a long shape/dtype change: shorten it
        widths[2] = max(8, widths[2] - (sum(widths) + 2 * (len(widths) - 1) - width))
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    style = {"changed": "yellow", "added": "green", "removed": "red"}
    for t, c in zip(rows, cells, strict=True):
        lines.append(click_style(table_row(c, widths), color, fg=style[t.status]))
    return "\n".join(lines + notes)
