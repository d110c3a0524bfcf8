"""`reinit apply`: its options are ApplyOptions' flags (reinit/options.py), derived, plus the
command's own (--rule, -o, --dry-run, --json, --quiet)."""

from __future__ import annotations

import gc

import click

from reinit.cli.common import (
    FlagValue,
    apply_options,
    by_option,
    defer_torch,
    dry_run_option,
    examples,
    json_option,
    load_torch,
    options_from_flags,
    progress_on,
    quiet_option,
    show_plan,
    show_report,
    warn_unsafe,
)

__all__ = ["apply"]

RULE_HELP = "Repeatable; the last matching rule wins."
OUTPUT_HELP = (
    "Output file (.safetensors, .bin/.pt/.pth/.ckpt) or directory (a trailing /). Default: "
    "X.reinit.safetensors beside a file X.safetensors, D-reinit/ beside a directory D, "
    "./NAME-reinit/ for hf://OWNER/NAME."
)


@click.command(
    epilog=examples(
        'reinit apply model.safetensors --rule "*.weight=kaiming"',
        'reinit apply model.safetensors -r "classifier.weight=xavier_uniform" -r "classifier.bias=zeros" -o new.safetensors',
        'reinit apply new_model/ -o clf/ --rule "bert.*=from(pretrained/, key={1})"',
        'reinit apply model.safetensors -r "*.weight=normal(std=0.02)" --dry-run',
    )
)
@click.argument("source")
@click.option("--rule", "-r", "rules", multiple=True, metavar="PATTERN=ACTION", help=RULE_HELP)
@click.option("-o", "--output", default=None, help=OUTPUT_HELP)
@dry_run_option()
@json_option("Print the JSON report on stdout (with --dry-run: the plan as JSON).")
@quiet_option()
@by_option()
@apply_options
def apply(
    source: str,
    rules: tuple[str, ...],
    output: str | None,
    dry_run: bool,
    all_tensors: bool,
    as_json: bool,
    quiet: bool,
    by: str,
    **flags: FlagValue,
) -> None:
    """Re-initialize or transplant the tensors of SOURCE that the rules match, and write a
    new checkpoint plus its report (X.reinit.report.json beside X.reinit.safetensors).

    A rule is PATTERN=ACTION: PATTERN a glob (* also matches dots) or re:REGEX, ACTION a
    scheme (reinit schemes), keep, or from(SOURCE, key=..., on_mismatch=...). The last
    matching rule wins; tensors no rule matches are copied byte for byte."""
    from reinit.errors import UsageError

    options = options_from_flags(flags, progress=progress_on(quiet))
    if not (rules or options.add or options.drop or options.rename or options.resize):
        raise UsageError(
            f"{source}: no rules, so apply would only copy it; pass --rule PATTERN=ACTION "
            '(e.g. --rule "*.weight=kaiming"), or --add/--drop/--rename/--resize (see reinit '
            "apply --help)"
        )
    from reinit.run.ranks import torchrun_world

    trusted = options.unsafe_pickle
    assert isinstance(trusted, tuple)  # a repeatable flag: a tuple of paths
    warn_unsafe(trusted)
    if dry_run:
        defer_torch()  # a plan of a plain copy or transplant never loads it
        from reinit.planning.session import plan
        from reinit.run.layout import check_run_flags

        check_run_flags(output, options)  # what the run refuses, the plan refuses

        show_plan(
            plan(source, rules, options=options),
            as_json=as_json,
            by=by,
            every=all_tensors,
            quiet=quiet,
        )
        return
    if options.plot is not None:
        from reinit.report.views import require_matplotlib

        require_matplotlib()

    # torch's and reinit's modules are ~10^5 objects that live as long as the process: frozen,
    # the collector stops walking them on every full collection the stream's many small
    # objects set off (-0.3 CPU s user of ~3 on the bench's apply, BENCH round three)
    gc.freeze()
    world = torchrun_world()
    if world is None:
        from reinit.run.ahead import stats_ahead

        # the source's statistics start in a second process while torch is imported here
        # (not with --dtype or --checksums: those read every kept byte here anyway)
        with stats_ahead(None if options.dtype or options.checksums else source):
            defer_torch()  # loaded when the run first needs it: a plain copy never does
            from reinit.run.apply import apply as run_apply

            report = run_apply(source, rules, output, options=options)
    else:  # under torchrun: the shards split over the ranks; rank 0 speaks for the run
        load_torch()
        from reinit.run.torchrun import apply_split

        report = apply_split(source, rules, output, options=options)
        if world[0] != 0:
            return
    show_report(report, as_json=as_json, quiet=quiet, by=by)
