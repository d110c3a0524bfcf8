"""`reinit run RECIPE`: a recipe's keys are apply's options (reinit/options.py); its --dry-run,
--json and --quiet are apply's own, shared from reinit/cli/common.py."""

from __future__ import annotations

import sys

import click

from reinit.cli.common import (
    by_option,
    color_on,
    dry_run_option,
    err,
    examples,
    json_option,
    load_torch,
    note_all,
    progress_on,
    quiet_option,
    unsafe_pickle_option,
    warn_all,
    warn_unsafe,
    width,
)

__all__ = ["run"]


@click.command(
    epilog=examples(
        "MODEL=path/to/gpt2-dir reinit run examples/gpt2-init.yaml",
        "reinit run recipe.toml --set seed=3 --set steps.1.seed=4 --dry-run",
    )
)
@click.argument("recipe")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key (dotted for steps: steps.0.seed=3); repeatable.",
)
@click.option(
    "--model",
    default=None,
    metavar="MODEL",
    help="The model the checkpoint belongs to, as the recipe's model: key (overrides it).",
)
@unsafe_pickle_option()
@click.option(
    "--trust-model-callable",
    "trust_callables",
    multiple=True,
    metavar="MODULE:CALLABLE",
    help="Let the recipe's model: import and call this module:callable; repeatable. "
    "A recipe never runs code without it (docs/guide/trust.md).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing output (and reports); a recipe's own overwrite: true needs it.",
)
@click.option(
    "--in-place",
    "in_place",
    is_flag=True,
    help="Rewrite the source's weight files; a recipe's own in_place: true needs it.",
)
@click.option(
    "--allow-write",
    "allow_write",
    multiple=True,
    metavar="DIR",
    help="Let the recipe's output, report and plot paths lie below DIR; repeatable. Without "
    "it a recipe writes only below the current directory or its own folder, in no hidden or "
    "Python package folder (docs/guide/trust.md).",
)
@dry_run_option("Print each step's plan and write nothing.")
@json_option("Print the JSON report on stdout (with --dry-run: the plan as JSON).")
@quiet_option()
@by_option()
def run(
    recipe: str,
    sets: tuple[str, ...],
    model: str | None,
    unsafe_pickle: tuple[str, ...],
    trust_callables: tuple[str, ...],
    overwrite: bool,
    in_place: bool,
    allow_write: tuple[str, ...],
    dry_run: bool,
    all_tensors: bool,
    as_json: bool,
    quiet: bool,
    by: str,
) -> None:
    """Run a recipe (.yaml/.yml, .toml or .json): apply's options as keys, and `steps:` to
    chain several rule sets in memory."""
    from reinit.io.trust import callable_name

    load_torch()
    from reinit.recipe.run import plan_recipe, run_recipe
    from reinit.recipe.validate import load_recipe
    from reinit.report.views import plan_json, render_plan, render_terminal

    if model is not None:  # --set model=MODEL, and a module:callable typed here is the user's
        sets = (*sets, f"model={model}")
        name = callable_name(model)
        trust_callables = (*trust_callables, *([name] if name else []))
    warn_unsafe(unsafe_pickle)
    loaded = load_recipe(
        recipe,
        sets,
        unsafe_pickle=unsafe_pickle,
        trust_model_callable=trust_callables,
        overwrite=overwrite,
        in_place=in_place,
        allow_write=allow_write,
    )
    if dry_run or loaded.dry_run:
        plans = plan_recipe(loaded, progress=progress_on(quiet))
        if as_json:
            click.echo(plan_json(plans))
        for i, plan in enumerate(plans):
            warn_all(plan.warnings)
            if as_json and quiet:  # -q with --json: the JSON alone
                continue
            if len(plans) > 1:  # numbered from 1, as the report's `changed by step N`
                from reinit.text import shown

                name = loaded.steps[i].name  # as the recipe wrote it: escaped for the terminal
                click.echo(
                    f"step {i + 1}" + (f" ({shown(name)})" if name else "") + ":", err=as_json
                )
            click.echo(render_plan(plan, width(), by=by, every=all_tensors), err=as_json)
        return
    from reinit.run.ranks import torchrun_world

    if torchrun_world() is not None:  # every rank would publish the same output
        from reinit.errors import UsageError

        raise UsageError(
            f"{recipe}: reinit run does not split across processes; run it without torchrun "
            "(apply, new and report do split)"
        )
    result = run_recipe(loaded, progress=progress_on(quiet))
    warn_all(result.warnings)
    note_all(result.notes)  # config.json fields changed, stale files not copied
    if as_json:
        click.echo(result.to_json())
    if not quiet:
        per_layer = "none" if by == "kind" else "changed"
        err(render_terminal(result, width(), color_on(sys.stderr), per_layer, by))
