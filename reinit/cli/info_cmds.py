"""The commands that answer from reinit's own tables: `schemes`, `gain`."""

from __future__ import annotations

import json

import click

from reinit.cli.common import examples, json_option

__all__ = ["gain", "schemes"]


@click.command(
    epilog=examples(
        "reinit schemes",
        "reinit schemes --json",
    )
)
@json_option("Print the table as JSON on stdout.")
def schemes(as_json: bool) -> None:
    """Every scheme, its arguments (torch's defaults) and the std of its result."""
    from reinit.schemes import scheme_table

    table = scheme_table()
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    for row in table:
        aliases = f"  (= {', '.join(row['aliases'])})" if row["aliases"] else ""
        click.echo(f"{row['signature']}{aliases}")
        click.echo(f"    std: {row['std']}")
        click.echo(f"    {row['doc']}")
    click.echo(
        "any scheme(..., rows=START:STOP|random(R)) or cols=...: only those rows/columns "
        "re-initialized, the rest kept [group=TEMPLATE: the key of the random indices]"
    )
    click.echo("keep\n    leaves the tensor as it is (carve an exception out of a broader rule)")
    click.echo(
        "from(SOURCE, key=TEMPLATE|auto, on_mismatch=error|skip|slice, state=PATH)\n    copies the tensor from another checkpoint (key: {name}, {1}, {2}, ... with integer arithmetic {1+8}, {1*2+1}, or auto = longest common dotted suffix; state: the state dict's dotted path inside a torch training checkpoint)"
    )
    click.echo(
        "    transforms: cat=K1;K2 or chunk=I/N|START:STOP [dim=D]; stack=T1{e};T2{e} experts=N "
        "[dim=D] or expert=E|{2}; rotary=hf_to_meta|meta_to_hf heads=N; "
        "resample=linear|bilinear|bicubic|copy [prefix=N grid=HxW init=SCHEME], adapt=channels, rows=tokens|labels [vocab=PATH src_vocab=PATH new=SCHEME] (docs/guide/transplant.md)"
    )


@click.command(
    epilog=examples(
        "reinit gain relu",
        "reinit gain leaky_relu 0.2",
        "reinit gain tanh --measure",
        "reinit gain gelu",
    )
)
@click.argument("nonlinearity")
@click.argument("param", required=False, type=float)
@click.option(
    "--measure", is_flag=True, help="Also measure std(x)/std(f(x)) on a million N(0,1) samples."
)
def gain(nonlinearity: str, param: float | None, measure: bool) -> None:
    """The recommended gain for NONLINEARITY (torch.nn.init.calculate_gain). PARAM is
    leaky_relu's negative slope; a negative one goes after `--` (`leaky_relu -- -0.2`)."""
    from reinit.schemes import calculate_gain
    from reinit.schemes.gain import measure_gain, measure_second_moment_gain

    value = calculate_gain(nonlinearity, param)
    click.echo(f"{nonlinearity}: gain {value:.6g}")
    if nonlinearity.strip().lower() in ("gelu", "silu"):
        click.echo(
            "  (computed: 1/sqrt(E[f(x)^2]) for x ~ N(0,1), the gain that keeps the second moment)"
        )
    if measure:
        ratio = measure_gain(nonlinearity, param)
        rms = measure_second_moment_gain(nonlinearity, param)
        click.echo(
            f"measured on 1,000,000 samples x ~ N(0,1) (seed 0), f = {nonlinearity}:\n"
            f"  std(x)/std(f(x)) = {ratio:.4g}  the gain that keeps the std (mean taken out)\n"
            f"  rms(x)/rms(f(x)) = {rms:.4g}  the gain that keeps the second moment E[f(x)^2]\n"
            "The table's gain is torch's convention: relu's sqrt(2) keeps the second moment\n"
            "(E[relu(x)^2] = 1/2), while std(relu(x)) also loses relu's mean, so the std ratio\n"
            "is larger (1.71); tanh's 5/3 is a rounded choice above both (a deep tanh stack\n"
            "whose activations' std stays constant measures about 1.598)."
        )
