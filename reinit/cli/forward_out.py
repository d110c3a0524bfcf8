"""`reinit verify OUTPUT --forward`: the option checks, the terminal lines and the `--max-kl`
exit of the forward check (the measuring is reinit.tools.forward)."""

from __future__ import annotations

import click

from reinit.cli.common import err, shown
from reinit.errors import UsageError

__all__ = ["check_forward_options", "verify_forward"]


def check_forward_options(
    forward: bool, against: str | None, model: str | None, max_kl: float | None
) -> None:
    """--against/--model/--max-kl only mean something with --forward; --max-kl needs --against."""
    if not forward:
        given = [
            n
            for n, v in (("--against", against), ("--model", model), ("--max-kl", max_kl))
            if v is not None
        ]
        if given:
            raise UsageError(f"verify: {', '.join(given)} only apply with --forward")
    if max_kl is not None and against is None:
        raise UsageError("verify --forward --max-kl: give --against SOURCE to compare with")
    if max_kl is not None and not max_kl >= 0:
        raise UsageError(f"verify --max-kl {max_kl}: give a KL in nats >= 0")


def verify_forward(
    path: str, against: str | None, model: str | None, max_kl: float | None, as_json: bool
) -> None:
    """Run the forward check and print it: per-layer activation std, then the output and, with
    --against, max |Δ| and KL (stdout; JSON with --json). Exit 1 when KL exceeds --max-kl."""
    from reinit.report.text import fmt
    from reinit.tools.forward import forward_check

    res = forward_check(path, against=against, model=model)
    if as_json:
        click.echo(res.to_json())
    else:
        width = max([len(s.name) for s in res.layers] + [8])
        for s in res.layers:
            click.echo(f"{shown(s.name).ljust(width)}  {s.type:<20} act std {fmt(s.act_std)}")
        click.echo(
            f"{shown(res.output)}: {res.output_name} {list(res.output_shape)} std "
            f"{fmt(res.output_std)} on {res.inputs} (seed {res.seed})"
        )
        if res.kl is not None:
            click.echo(
                f"against {shown(res.against or '')}: max |Δ| {fmt(res.max_abs_diff)}, "
                f"KL {res.kl:.6g} nats (mean over {res.positions} positions, "
                f"{res.compared_classes} classes compared)"
            )
    if max_kl is not None and res.kl is not None and res.kl > max_kl:
        err(f"error: --max-kl {max_kl:g}: KL {res.kl:.6g} nats exceeds it by {res.kl - max_kl:.6g}")
        raise click.exceptions.Exit(1)
