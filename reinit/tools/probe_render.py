"""The probe's terminal table and plot."""

from __future__ import annotations

from pathlib import Path

from reinit.errors import UsageError
from reinit.io.publish import atomic_output
from reinit.report.text import fmt, shorten
from reinit.text import shown
from reinit.tools.probe import ProbePass, ProbeResult, is_positive, per_layer_factor

__all__ = [
    "plot",
    "render",
]


def render(result: ProbeResult, width: int = 100) -> str:
    """The terminal table: per layer, activation and gradient std before → after, then one
    verdict line per pass (names escaped: they come from user code)."""

    def f(x: float | None) -> str:
        return fmt(x) if x is not None else "-"

    after = result.after
    rows = list(zip(result.before.layers, after.layers if after else [None] * 10**6, strict=False))
    name_w = max(12, min(max((len(b.name) for b, _ in rows), default=5), width // 3))
    head = f"{'layer'.ljust(name_w)}  {'type':<14} {'act std':>22}  {'grad std':>22}"
    lines = [f"{result.model}: {result.input}, seed {result.seed}", head]
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
        lines.append(summary(f"after {' '.join(result.rules)}", after))
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
