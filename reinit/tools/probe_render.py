"""The probe's terminal table and plot."""

from __future__ import annotations

import math
from pathlib import Path

from reinit.errors import UsageError
from reinit.io.publish import atomic_output
from reinit.report.views import fmt, shorten
from reinit.text import shown
from reinit.tools.probe import ProbePass, ProbeResult, is_positive, per_layer_factor

__all__ = [
    "FAR_FROM_ONE",
    "plot",
    "render",
    "worst_grad_change",
]

FAR_FROM_ONE = 4.0  # a layer's gradient std changed by more than this (either way): say which


def worst_grad_change(result: ProbeResult) -> tuple[str, float] | None:
    """The layer whose gradient std changed most (after / before, either direction), with the
    ratio; None without an after pass or comparable layers. The overall verdict compares only
    the first and last layers, so a layer in the middle whose gradients fall 35× hid behind
    "stable"."""
    if result.after is None:
        return None
    worst: tuple[str, float] | None = None
    for b, a in zip(result.before.layers, result.after.layers, strict=False):
        if not (is_positive(b.grad_std) and is_positive(a.grad_std)):
            continue
        assert b.grad_std is not None and a.grad_std is not None
        ratio = a.grad_std / b.grad_std
        if worst is None or abs(math.log(ratio)) > abs(math.log(worst[1])):
            worst = (b.name, ratio)
    return worst


def render(result: ProbeResult, width: int = 100) -> str:
    """The terminal table: per layer, activation and gradient std before → after, then one
    verdict line per pass (names escaped: they come from user code)."""

    def f(x: float | None) -> str:
        return fmt(x) if x is not None else "-"

    after = result.after
    rows = list(zip(result.before.layers, after.layers if after else [None] * 10**6, strict=False))
    name_w = max(12, min(max((len(b.name) for b, _ in rows), default=5), width // 3))
    head = f"{'layer'.ljust(name_w)}  {'type':<14} {'act std':>22}  {'grad std':>22}"
    lines = [f"{result.model}: {result.input}, seed {result.seed}"]
    if result.checkpoint is None:
        lines.append(
            f"weights: randomly initialized by the model's constructor (seed {result.seed}), "
            "not trained ones: pass --checkpoint FILE to probe a checkpoint's weights"
        )
    elif result.checkpoint == result.model:
        lines.append(
            f"weights: the folder's own ({result.checkpoint}); --as-built for the config's init"
        )
    lines.append(head)
    for b, a in rows:
        act = f(b.act_std) if a is None else f"{f(b.act_std)} → {f(a.act_std)}"
        grad = f(b.grad_std) if a is None else f"{f(b.grad_std)} → {f(a.grad_std)}"
        lines.append(
            f"{shorten(shown(b.name), name_w).ljust(name_w)}  {shorten(b.type, 14):<14} {act:>22}  {grad:>22}"
        )

    def summary(label: str, p: ProbePass) -> str:
        return (
            f"{label}: activations {p.act_verdict} (×{f(per_layer_factor(p.act_growth, p.depth))}/layer, "
            f"×{f(p.act_growth)} overall), gradients {p.grad_verdict} "
            f"(×{f(per_layer_factor(p.grad_growth, p.depth))}/layer) over {p.depth} weighted layers"
        )

    lines.append(summary("before", result.before))
    if after is not None:
        line = summary(f"after {' '.join(result.rules)}", after)
        worst = worst_grad_change(result)
        if worst is not None and max(worst[1], 1 / worst[1]) > FAR_FROM_ONE:
            name, ratio = worst
            moved = f"fall {f(1 / ratio)}×" if ratio < 1 else f"rise {f(ratio)}×"
            line += f"; but layer {shorten(shown(name), 60)}'s gradients {moved} (after vs before)"
        lines.append(line)
    return "\n".join(lines)


def plot(result: ProbeResult, path: str) -> None:
    """Activation and gradient std per layer (log scale), before and after."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'reinit[plot]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, attr, title in (
        (axes[0], "act_std", "activation std (forward)"),
        (axes[1], "grad_std", "gradient std (backward)"),
    ):
        after_label = "after " + " ".join(result.rules)
        if len(after_label) > 60:
            after_label = after_label[:59] + "…"
        for label, p in (("before", result.before), (after_label, result.after)):
            if p is None:
                continue
            xs = [i for i, layer in enumerate(p.layers) if is_positive(getattr(layer, attr))]
            ys = [getattr(p.layers[i], attr) for i in xs]
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("layer (call order)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{result.model}: {result.input}")
    fig.tight_layout()
    with atomic_output(Path(path)) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
