"""`reinit new CONFIG -o OUT`: the checkpoint a model would have, from its config. Its options
are apply's (derived from ApplyOptions) but those that edit or name a source."""

from __future__ import annotations

from collections.abc import Callable

import click

from reinit.cli.common import (
    FlagValue,
    apply_option,
    by_option,
    dry_run_option,
    examples,
    flag_fields,
    json_option,
    load_torch,
    progress_on,
    quiet_option,
    show_plan,
    show_report,
    warn_unsafe,
)

__all__ = ["new"]

# ApplyOptions flags `reinit new` does not take (run.new.NEW_FIELDS, kept import-free here)
_NOT_NEW = {
    "in_place", "key", "add", "drop", "rename", "resize", "model", "config", "config_set",
    "labels",
}  # fmt: skip

# flags whose meaning differs for a model made from its config
_HELP = {
    "dtype": "float32, bfloat16 or float16: the dtype of every floating tensor (drawn in "
    "float32, then cast). Default: the config's dtype (torch_dtype), else float32.",
    "max_shard_size": "Shard size of a folder output, split as save_pretrained splits "
    "(e.g. 5GB, 500MB, 10MiB, or bytes). Default: save_pretrained's 50GB.",
}


def _new_fields() -> tuple[str, ...]:
    return tuple(n for n in flag_fields() if n not in _NOT_NEW)


Command = Callable[..., None]


def new_options(f: Command) -> Command:
    """apply's ApplyOptions flags that `new` takes."""
    for name in reversed(_new_fields()):
        f = apply_option(name, _HELP.get(name))(f)
    return f


@click.command(
    epilog=examples(
        "reinit new llama-config/ -o llama-new/ --dtype bfloat16",
        'reinit new llama-48-config/ -o llama-48-up/ --rule "*=from(llama-32/)" \\\n'
        '    --rule "re:model\\.layers\\.(2[4-9]|3[0-9]|4[0-7])\\.(.*)='
        'from(llama-32/, key=model.layers.{1-16}.{2})"',
        'reinit new clf-config/ -o clf/ --rule "bert.*=from(bert-base/, key={1})"',
    )
)
@click.argument("config")
@click.option(
    "-o",
    "--output",
    required=True,
    help="Output folder (sharded as save_pretrained shards it, config.json beside) or a "
    ".safetensors / .bin file (the weights alone).",
)
@click.option(
    "--rule",
    "-r",
    "rules",
    multiple=True,
    metavar="PATTERN=ACTION",
    help="After the implicit '*=default' (the architecture's own init); repeatable, the last "
    "matching rule wins.",
)
@dry_run_option()
@json_option("Print the JSON report on stdout (with --dry-run: the plan as JSON).")
@quiet_option()
@by_option()
@new_options
def new(
    config: str,
    output: str,
    rules: tuple[str, ...],
    dry_run: bool,
    all_tensors: bool,
    as_json: bool,
    quiet: bool,
    by: str,
    **flags: FlagValue,
) -> None:
    """Write the checkpoint the model CONFIG names would have (a config.json, a model
    folder, hf://OWNER/NAME, or module:callable): every tensor under save_pretrained's names,
    drawn by the architecture's own init (seeded per tensor by --seed and its name) unless a
    rule says otherwise, streamed one tensor at a time. The dtype is the config's (else
    float32) unless --dtype says."""
    from reinit.options import ApplyOptions

    options = ApplyOptions(progress=progress_on(quiet), **flags)  # type: ignore[arg-type]
    trusted = options.unsafe_pickle
    assert isinstance(trusted, tuple)
    warn_unsafe(trusted)
    load_torch()
    if dry_run:
        from reinit.run.layout import check_run_flags
        from reinit.run.new import plan_new

        check_run_flags(output, options)  # what the run refuses, the plan refuses

        the_plan = plan_new(config, rules, options=options)
        show_plan(the_plan, as_json=as_json, by=by, every=all_tensors, quiet=quiet)
        return
    if options.plot is not None:
        from reinit.report.views import require_matplotlib

        require_matplotlib()
    from reinit.run.ranks import torchrun_world

    world = torchrun_world()
    if world is None:
        from reinit.run.new import new as run_new

        report = run_new(config, output, rules, options=options)
    else:  # under torchrun: the shards split over the ranks; rank 0 speaks for the run
        from reinit.run.torchrun import new_split

        report = new_split(config, output, rules, options=options)
        if world[0] != 0:
            return
    show_report(report, as_json=as_json, quiet=quiet, by=by)
