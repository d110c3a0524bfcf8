"""`reinit probe`: activation and gradient std per layer, before and after the rules."""

from __future__ import annotations

import click

from reinit.cli.common import (
    apply_option,
    examples,
    json_option,
    load_torch,
    plot_option,
    warn_all,
    width,
)
from reinit.cli.group import CommandError

__all__ = ["probe"]


@click.command(
    epilog=examples(
        'reinit probe "mypkg.nets:MLP(depth=8)" --input-shape 256,64 --rule "*.weight=normal"',
        'reinit probe bert-dir/ --rule "type:Linear=default" --json',
    )
)
@click.argument("model")
@click.option(
    "--input-shape",
    default=None,
    metavar="SHAPE",
    help="Input shape, e.g. 256,64 (MLP) or 8,3,32,32 (images); for token models (batch,seq), default 2,16.",
)
@click.option(
    "--rule",
    "-r",
    "rules",
    multiple=True,
    metavar="PATTERN=ACTION",
    help="Rules applied in memory for the 'after' pass; repeatable.",
)
@apply_option("seed", "Seeds the inputs and the rules.")
@click.option(
    "--checkpoint",
    default=None,
    help="Load these weights first (default: a model folder's own weights, else as built).",
)
@click.option(
    "--as-built",
    is_flag=True,
    help="Probe a model folder as its config builds it, not its weights.",
)
@apply_option("allow_unmatched", "A rule that matches nothing is a warning.")
@json_option("Print the JSON result on stdout.")
@plot_option("Plot (needs reinit[plot]).")
def probe(
    model: str,
    input_shape: str | None,
    rules: tuple[str, ...],
    seed: int,
    checkpoint: str | None,
    as_built: bool,
    allow_unmatched: bool,
    as_json: bool,
    plot: str | None,
) -> None:
    """Run random inputs through MODEL and report activation and gradient std per layer,
    before and after the rules: see signals vanish or explode through depth.

    MODEL: a Hugging Face model directory, hf://OWNER/NAME, or module:callable."""
    load_torch()
    from reinit.tools.probe import parse_shape
    from reinit.tools.probe import probe as run_probe
    from reinit.tools.probe_render import plot as plot_probe
    from reinit.tools.probe_render import render

    shape = parse_shape(input_shape) if input_shape else None
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError("--plot needs matplotlib: pip install 'reinit[plot]'", 2) from None
    result = run_probe(
        model,
        rules,
        input_shape=shape,
        seed=seed,
        checkpoint=checkpoint,
        allow_unmatched=allow_unmatched,
        as_built=as_built,
    )
    warn_all(result.warnings)
    if plot is not None:
        plot_probe(result, plot)
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(render(result, width()))
