"""`--plot`: std per layer for each tensor kind, before and after (extra `reinit[plot]`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TypeGuard

from reinit.errors import UsageError
from reinit.report.entries import Report
from reinit.report.layers import LayerTable, layer_tables
from reinit.report.terminal import summary_line
from reinit.report.text import shorten, shorten_name

__all__ = ["DPI", "FIGSIZE", "MAX_LINES", "draw_plot", "require_matplotlib"]

FIGSIZE = (11.0, 6.0)  # inches


DPI = 100  # so the PNG is 1100 × 600 pixels


MAX_LINES = 24  # kinds drawn; the rest are named in the caption


def require_matplotlib() -> None:
    """Fail early, before any work, with the extra to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'reinit[plot]'"
        ) from None


def _plottable(t: LayerTable) -> bool:
    return any(c.after and c.after > 0 for c in t.cells) or any(
        c.before and c.before > 0 for c in t.cells
    )


def draw_plot(report: Report, path: str | os.PathLike[str], title: str | None = None) -> None:
    """Write (directly: `path` is a temporary that `reinit.report.files` publishes) a PNG of std (log scale) against layer index, one colour per tensor kind: after
    solid, before (when the report has it) dashed; flagged tensors marked with a red ×, those
    whose std cannot sit on a log axis (zero, NaN-only, or garbage beyond 1e10) as red
    triangles on the bottom or top edge."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    tables = [t for t in layer_tables(report.tensors) if _plottable(t)]
    drawn, dropped = tables[:MAX_LINES], tables[MAX_LINES:]
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_yscale("log")
    ax.set_xlabel("layer index")
    ax.set_ylabel("std")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title or f"reinit report: {shorten(report.source, 80)}", fontsize=11)

    values = [v for t in drawn for c in t.cells for v in (c.after, c.before) if _sane(v)]
    lo = min(values) / 2 if values else 1e-3
    hi = max(values) * 2 if values else 1.0
    edge_low: list[float] = []
    edge_high: list[float] = []
    marks: list[tuple[float, float]] = []
    colors = [f"C{i % 10}" for i in range(len(drawn))]
    styles = ["-", "-", "-.", ":"]
    for i, t in enumerate(drawn):
        xs = [_x(c.label) for c in t.cells]
        color = colors[i]
        width = 1.8 if i < 10 else 1.0
        after = [c.after if _sane(c.after) else math.nan for c in t.cells]
        ax.plot(
            xs,
            after,
            linestyle=styles[(i // 10) % len(styles)],
            color=color,
            linewidth=width,
            marker="." if len(xs) <= 40 else None,
            label=_label(t),
        )
        if any(c.before is not None for c in t.cells):
            # an unchanged tensor's before is its after: the dashed line leaves the solid
            # one exactly where something changed
            before = [
                v if _sane(v) else math.nan
                for v in (
                    (c.before if c.before is not None else (None if c.changed else c.after))
                    for c in t.cells
                )
            ]
            ax.plot(xs, before, linestyle="--", color=color, linewidth=1.4, alpha=0.7, zorder=1)
        for x, c in zip(xs, t.cells, strict=True):
            if not c.flags:
                continue
            if _sane(c.after):
                marks.append((x, c.after))
            elif "garbage" in c.flags or (c.after is not None and c.after >= 1e10):
                edge_high.append(x)
            else:
                edge_low.append(x)
    if marks:
        ax.scatter(
            [m[0] for m in marks], [m[1] for m in marks], marker="x", s=70, color="red", zorder=5
        )
    ax.set_ylim(lo, hi)
    if edge_high:
        ax.scatter(edge_high, [hi / 1.15] * len(edge_high), marker="^", s=70, color="red", zorder=5)
    if edge_low:
        ax.scatter(edge_low, [lo * 1.15] * len(edge_low), marker="v", s=70, color="red", zorder=5)
    handles, labels = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="black", linestyle="-", label="after"),
        Line2D([], [], color="black", linestyle="--", label="before"),
        Line2D([], [], color="red", marker="x", linestyle="", label="flagged"),
        Line2D([], [], color="red", marker="^", linestyle="", label="flagged, off the axis"),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
    )
    caption = [summary_line(report)]
    loose = [e for e in report.tensors if e.flags and not _in_tables(e.name, drawn)]
    if loose:
        names = ", ".join(f"{shorten_name(e.name, 40)} [{','.join(e.flags)}]" for e in loose[:4])
        caption.append(
            f"flagged outside the per-layer lines: {names}" + (" …" if len(loose) > 4 else "")
        )
    if dropped:
        caption.append(f"{len(dropped)} more kinds not drawn (see the .md report)")
    fig.text(0.01, 0.01, "\n".join(caption), fontsize=7, va="bottom", ha="left")
    fig.subplots_adjust(left=0.07, right=0.70, top=0.93, bottom=0.10 + 0.025 * len(caption))
    with open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)


def _sane(v: float | None) -> TypeGuard[float]:
    """Drawable on the log axis: positive, finite, below the `garbage` threshold."""
    return v is not None and 0 < v < 1e10 and math.isfinite(v)


def _x(label: str) -> float:
    """Layer index on the x axis: "3" -> 3; a nested "3.7" (expert 7 of layer 3) -> 3."""
    return float(label.split(".")[0])


def _label(t: LayerTable) -> str:
    text = shorten_name(t.kind, 42)
    return text + (f"  [{','.join(t.flags)}]" if t.flags else "")


def _in_tables(name: str, tables: Sequence[LayerTable]) -> bool:
    return any(c.name == name for t in tables for c in t.cells)
