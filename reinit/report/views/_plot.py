"""`--plot`: small multiples of std per layer, one panel per group of tensor kinds (extra
`reinit[plot]`).

A panel per group (attention, MLP, embeddings and heads, norms and biases; one per kind when
there are few) keeps each panel to a handful of colours. In every panel: after solid, before
dashed; each kind's expected std a band of its colour (±10%, the `std_off` tolerance), the
reference std (when the report has one) a grey band of ×/÷2 (the `off_reference` line);
tensors without a layer number (embeddings, pooler, head, final norm) as their own columns at
the right; tensors of std 0 (zeros, ones) on a marked row at the bottom of the log axis;
those with no finite value or beyond 1e10 as triangles on the bottom/top edge; flagged
tensors a red ×. Every after-point carries a gid (`after`, `after-zero`, `after-off`) so a
test can count that every tensor was drawn."""

from __future__ import annotations

import math
import os
from typing import Any, TypeGuard

from reinit.errors import UsageError
from reinit.report.entries import Report
from reinit.report.views._plot_groups import PlotKind, PlotPanel, plot_panels
from reinit.report.views._terminal import summary_line
from reinit.report.views._text import shorten, shorten_name
from reinit.text import shown

# matplotlib is an extra, imported lazily (tests/test_dependencies.py forbids a module-level
# import, even under TYPE_CHECKING): its Figure and Axes are typed Any here.
Figure = Any
Axes = Any

__all__ = [
    "DPI",
    "FIGSIZE",
    "LABEL_WIDTH",
    "MAX_NAMED_TICKS",
    "build_figure",
    "draw_plot",
    "mpl_text",
    "thin_labels",
    "require_matplotlib",
]

FIGSIZE = (16.0, 9.0)  # inches

DPI = 100  # so the PNG is 1600 × 900 pixels

LABEL_WIDTH = 40  # legend and column names: cut at dots from the left, the same way everywhere

EXPECTED_BAND = 0.10  # ± around the expected std (std_off's relative tolerance)
REFERENCE_BAND = 2.0  # ×/÷ around the reference std (off_reference's default tolerance)


def require_matplotlib() -> None:
    """Fail early, before any work, with the extra to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'reinit[plot]'"
        ) from None


def draw_plot(report: Report, path: str | os.PathLike[str], title: str | None = None) -> None:
    """Write (directly: `path` is a temporary that the report files' writer publishes) the PNG."""
    fig = build_figure(report, title)
    with open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)


def mpl_text(text: str) -> str:
    """Text from the checkpoint (names, kinds, the source) as matplotlib draws it literally.

    matplotlib reads `$...$` as mathtext: a tensor named `w.$x_1$` would be drawn with a
    subscript, and one named `w.$\\bad{$.x` makes `savefig` raise. Every `$` is escaped
    (`\\$`, drawn as `$`; with no unescaped `$` left nothing is parsed as math, so `_`, `^`
    and backslashes stay literal). A legend leaves out any label that starts with `_` (its
    mark for "hidden"), so such a name (`_orig_mod.` of torch.compile) gets a leading space."""
    text = shown(text).replace("$", "\\$")
    return " " + text if text.startswith("_") else text


def label_text(text: str) -> str:
    """A name cut to `LABEL_WIDTH` always the same way: whole dotted parts from the right."""
    if len(text) <= LABEL_WIDTH:
        return text
    parts = text.split(".")
    kept: list[str] = []
    while parts and len(".".join([parts[-1], *kept])) + 2 <= LABEL_WIDTH:
        kept.insert(0, parts.pop())
    return "…." + ".".join(kept) if kept else shorten_name(text, LABEL_WIDTH)


def build_figure(report: Report, title: str | None = None) -> Figure:
    """The figure, not yet written: one axes per panel (titles = panel names)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = plot_panels([e for e in report.tensors if e.is_float])
    fig = MplFigure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    n = max(len(panels), 1)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    last = max((p.layer for pn in panels for p in pn.points if p.layer is not None), default=-1)
    values = [
        v
        for pn in panels
        for p in pn.points
        for v in (p.after, p.before, p.expected, p.reference)
        if _sane(v)
    ]
    lo = min(values) / 3 if values else 1e-3
    hi = max(values) * 3 if values else 1.0
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_panel(ax, panel, last, lo, hi)
    if not panels:
        fig.add_subplot(1, 1, 1).set_title("no float tensors")
    head = title or f"reinit report: {shorten(report.source, 90)}"
    summary = shorten(summary_line(report), 160)
    fig.suptitle(f"{mpl_text(head)}\n{mpl_text(summary)}", fontsize=11)
    handles = [
        Line2D([], [], color="black", linestyle="-", marker="o", markersize=4, label="after"),
        Line2D(
            [],
            [],
            color="black",
            linestyle="--",
            marker="o",
            markerfacecolor="none",
            markersize=4,
            label="before",
        ),
        Patch(color="C0", alpha=0.25, label="expected std ±10%"),
        Patch(color="grey", alpha=0.15, label="reference std ×/÷2"),
        Line2D([], [], color="red", marker="x", linestyle="", label="flagged"),
        Line2D([], [], color="black", marker="v", linestyle="", label="std 0 / off the axis"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=6, fontsize=8, frameon=False)
    return fig


MAX_NAMED_TICKS = 24  # names under the layer-less columns: beyond this, every k-th is shown


def thin_labels(ticks: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Every k-th named tick kept (the others blank), so at most `MAX_NAMED_TICKS` names are
    written under a panel: a CNN's 60 layer-less tensors would print as one black smear."""
    step = math.ceil(len(ticks) / MAX_NAMED_TICKS) if ticks else 1
    return [(x, name if i % step == 0 else "") for i, (x, name) in enumerate(ticks)]


def _draw_panel(ax: Axes, panel: PlotPanel, last: int, lo: float, hi: float) -> None:
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    zero_y = lo * 1.35
    ax.axhline(zero_y * 1.35, color="grey", linewidth=0.5, linestyle=":")
    ax.text(0.005, 0.01, "std 0 ↓", transform=ax.transAxes, fontsize=6, color="grey")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_ylabel("std")
    title = panel.title + (f"   ({panel.prefix}…)" if panel.prefix else "")
    ax.set_title(mpl_text(shorten(title, 90)), fontsize=10, loc="left")
    column = last + 1.5  # the first column of the layer-less tensors
    ticks: list[tuple[float, str]] = []
    for j, kind in enumerate(panel.kinds):
        color = f"C{j % 10}"
        if kind.layered:  # nudged apart, so that lines that coincide stay visible
            nudge = (j - (len(panel.kinds) - 1) / 2) * 0.06
            xs = [p.layer + nudge if p.layer is not None else math.nan for p in kind.points]
        else:
            xs = []
            for p in kind.points:
                xs.append(column)
                name = kind.label if len(kind.points) == 1 else p.name
                ticks.append((column, mpl_text(label_text(name))))
                column += 1.0
        _draw_kind(ax, kind, xs, color, zero_y, lo, hi)
    ticks = thin_labels(ticks)
    layered = last >= 0 and any(k.layered for k in panel.kinds)
    if layered:
        step = max(1, math.ceil((last + 1) / 12))
        ticks = [(float(x), str(x)) for x in range(0, last + 1, step)] + ticks
        ax.set_xlabel(
            "layer index" + ("   |   layer-less tensors →" if column > last + 1.5 else "")
        )
    if ticks:
        ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=7)
        for lab in ax.get_xticklabels()[(last + step) // step if layered else 0 :]:
            lab.set_rotation(25)
            lab.set_horizontalalignment("right")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def _draw_kind(
    ax: Axes, kind: PlotKind, xs: list[float], color: str, zero_y: float, lo: float, hi: float
) -> None:
    pts = kind.points
    flagged = any(p.flags for p in pts)
    label = mpl_text(label_text(kind.label)) + (
        " [" + ",".join(dict.fromkeys(f for p in pts for f in p.flags)) + "]" if flagged else ""
    )
    after = [p.after if _sane(p.after) else math.nan for p in pts]
    style = "-" if kind.layered else "none"
    drawn = [(x, y) for x, y in zip(xs, after, strict=True) if not math.isnan(y)]
    ax.plot(
        [d[0] for d in drawn],
        [d[1] for d in drawn],
        linestyle=style,
        marker="o",
        markersize=3.5,
        color=color,
        linewidth=1.6,
        label=label,
        gid="after",
        zorder=3,
    )
    if any(p.before is not None for p in pts):
        before = [(x, p.before) for x, p in zip(xs, pts, strict=True) if _sane(p.before)]
        ax.plot(
            [b[0] for b in before],
            [b[1] for b in before],
            linestyle="--" if kind.layered else "none",
            marker="o",
            markerfacecolor="none",
            markersize=5,
            color=color,
            linewidth=1.2,
            alpha=0.75,
            zorder=2,
        )
    half = 0.3 if not kind.layered else 0.5
    for x, p in zip(xs, pts, strict=True):
        if _sane(p.expected):
            ax.fill_between(
                [x - half, x + half],
                p.expected * (1 - EXPECTED_BAND),
                p.expected * (1 + EXPECTED_BAND),
                color=color,
                alpha=0.25,
                linewidth=0,
                zorder=1,
            )
        if _sane(p.reference):
            ax.fill_between(
                [x - half, x + half],
                p.reference / REFERENCE_BAND,
                p.reference * REFERENCE_BAND,
                color="grey",
                alpha=0.12,
                linewidth=0,
                zorder=0,
            )
    zeros = [(x, p) for x, p in zip(xs, pts, strict=True) if p.after == 0.0]
    if zeros:
        ax.scatter(
            [z[0] for z in zeros],
            [zero_y] * len(zeros),
            marker="v",
            s=28,
            color=color,
            gid="after-zero",
            zorder=4,
        )
    off = [(x, p) for x, p in zip(xs, pts, strict=True) if p.after != 0.0 and not _sane(p.after)]
    for x, p in off:
        high = p.after is not None and not (p.after < 1e10)
        ax.scatter(
            [x],
            [hi / 1.3 if high else lo * 1.1],
            marker="^" if high else "v",
            s=40,
            color="red" if p.flags else color,
            gid="after-off",
            zorder=4,
        )
    marks = [(x, p) for x, p in zip(xs, pts, strict=True) if p.flags]
    if marks:
        ys = [
            p.after if _sane(p.after) else (zero_y if p.after == 0.0 else math.nan)
            for _, p in marks
        ]
        ax.scatter([m[0] for m in marks], ys, marker="x", s=60, color="red", zorder=5)


def _sane(v: float | None) -> TypeGuard[float]:
    """Drawable on the log axis: positive, finite, below the `garbage` threshold."""
    return v is not None and 0 < v < 1e10 and math.isfinite(v)
