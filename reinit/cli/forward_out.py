"""`reinit verify OUTPUT --forward`: the option checks, the terminal lines and the exits of the
forward check (`--max-kl`, `--min-top1`, `--min-cosine`; the measuring is reinit.tools.forward)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from reinit.cli.common import err, shown
from reinit.errors import UsageError

if TYPE_CHECKING:
    from reinit.tools.forward import ForwardResult

__all__ = ["ForwardLimits", "check_forward_options", "verify_forward"]


@dataclass(frozen=True)
class ForwardLimits:
    """The thresholds that make `verify --forward --against` exit 1."""

    max_kl: float | None = None
    min_top1: float | None = None
    min_cosine: float | None = None

    def given(self) -> list[str]:
        pairs = (("--max-kl", self.max_kl), ("--min-top1", self.min_top1),
                 ("--min-cosine", self.min_cosine))  # fmt: skip
        return [n for n, v in pairs if v is not None]


def check_forward_options(
    forward: bool, against: str | None, model: str | None, limits: ForwardLimits
) -> None:
    """--against/--model/the limits only mean something with --forward; a limit needs
    --against; each is a number in its range."""
    if not forward:
        given = [n for n, v in (("--against", against), ("--model", model)) if v is not None]
        given += limits.given()
        if given:
            raise UsageError(f"verify: {', '.join(given)} only apply with --forward")
    if limits.given() and against is None:
        raise UsageError(
            f"verify --forward {limits.given()[0]}: give --against SOURCE to compare with"
        )
    if limits.max_kl is not None and not limits.max_kl >= 0:
        raise UsageError(f"verify --max-kl {limits.max_kl}: give a KL in nats >= 0")
    for flag, v in (("--min-top1", limits.min_top1), ("--min-cosine", limits.min_cosine)):
        if v is not None and not -1 <= v <= 1:
            raise UsageError(f"verify {flag} {v}: give a number in [0, 1]")


def _print_result(res: ForwardResult) -> None:
    from reinit.report.views import fmt
    from reinit.tools.forward_compare import DIVERGENCE

    width = max([len(s.name) for s in res.layers] + [8])
    for s in res.layers:
        click.echo(f"{shown(s.name).ljust(width)}  {s.type:<20} act std {fmt(s.act_std)}")
    click.echo(
        f"{shown(res.output)}: {res.output_name} {list(res.output_shape)} std "
        f"{fmt(res.output_std)} on {res.inputs} (seed {res.seed})"
    )
    if res.against is None:
        return
    for d in res.hidden:
        mark = "  <- first divergent layer" if d.layer == res.first_divergent_layer else ""
        click.echo(
            f"hidden states, layer {d.layer:<10} cosine {d.cosine:.6f}  relative error "
            f"{fmt(d.rel_error)}{mark}"
        )
    if res.hidden:
        verdict = (
            f"first divergent layer: {res.first_divergent_layer} (relative error > {DIVERGENCE:g})"
            if res.first_divergent_layer is not None
            else f"no layer diverges (relative error <= {DIVERGENCE:g} throughout)"
        )
        click.echo(verdict)
    against = f"against {shown(res.against)}"
    if res.compared == "shared trunk":
        click.echo(
            f"{against}: the heads differ ({res.output_name} {list(res.output_shape)} vs "
            f"{list(res.against_shape or ())}): compared the shared trunk's hidden states"
        )
    elif res.logits is not None:
        k = res.logits
        click.echo(
            f"{against}: max |Δ| {fmt(res.max_abs_diff)}, KL {k.kl_mean:.6g} nats (mean over "
            f"{k.positions} positions, {k.classes} classes compared; median {k.kl_median:.3g}, "
            f"p99 {k.kl_p99:.3g}, max {k.kl_max:.3g}); top-1 agreement {k.top1:.2%}"
        )
    elif res.output_diff is not None:
        d = res.output_diff
        click.echo(
            f"{against}: max |Δ| {fmt(res.max_abs_diff)}, {res.output_name} cosine "
            f"{d.cosine:.6f}, relative error {fmt(d.rel_error)}"
        )


def _fail(message: str) -> None:
    err(f"error: {message}")
    raise click.exceptions.Exit(1)


def _check_limits(res: ForwardResult, limits: ForwardLimits) -> None:
    """Exit 1 past a limit, one line saying by how much; exit 2 for a limit nothing measured."""
    k = res.logits
    if (limits.max_kl is not None or limits.min_top1 is not None) and k is None:
        raise UsageError(
            f"verify --forward: no logits were compared ({res.compared}: {res.output_name}); "
            "--max-kl and --min-top1 need logits: use --min-cosine"
        )
    # `not x <= limit`: a NaN (NaN logits, states) fails every limit instead of passing it
    if limits.max_kl is not None and k is not None and not k.kl_mean <= limits.max_kl:
        _fail(
            f"--max-kl {limits.max_kl:g}: KL {k.kl_mean:.6g} nats exceeds it by "
            f"{k.kl_mean - limits.max_kl:.6g}"
        )
    if limits.min_top1 is not None and k is not None and not k.top1 >= limits.min_top1:
        _fail(f"--min-top1 {limits.min_top1:g}: top-1 agreement {k.top1:.4g} is below it")
    low = res.min_cosine
    if limits.min_cosine is not None:
        if low is None:
            raise UsageError("verify --forward --min-cosine: no hidden states were compared")
        if not low >= limits.min_cosine:
            where = res.first_divergent_layer
            at = f" (first divergent layer: {where})" if where is not None else ""
            _fail(f"--min-cosine {limits.min_cosine:g}: cosine {low:.6g} is below it{at}")


def verify_forward(
    path: str, against: str | None, model: str | None, limits: ForwardLimits, as_json: bool
) -> None:
    """Run the forward check and print it: per-layer activation std, the output and, with
    --against, each layer's hidden states compared, the first divergent layer, and the logits'
    KL statistics and top-1 agreement (stdout; JSON with --json). Exit 1 past a limit."""
    from reinit.tools.forward import forward_check

    res = forward_check(path, against=against, model=model)
    if as_json:
        click.echo(res.to_json())
    else:
        _print_result(res)
    _check_limits(res, limits)
