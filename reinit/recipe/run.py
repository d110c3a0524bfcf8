"""Running a recipe: each step but the last in memory on the previous step's tensors, the last
one streamed to the output; one merged report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from reinit.errors import UsageError
from reinit.recipe.validate import Recipe, Step


def run_recipe(recipe: Recipe, *, progress: bool = False) -> Any:
    """Run every step; return the final `Report` (or, for a dry run, the list of `Plan`s).

    One step is exactly `reinit.apply` with the recipe's options. Several steps: each but the
    last runs in memory on the previous step's tensors (`StateDictCheckpoint`), the last one
    streams to the output with the source's layout and metadata; no intermediate file is
    written. The report then covers all steps: per tensor, the last step that changed it, its
    std before the first change and after the last."""
    from reinit.io.readers import StateDictCheckpoint, open_checkpoint
    from reinit.planning.session import plan
    from reinit.run.apply import apply
    from reinit.run.inmemory import apply_to_checkpoint

    if recipe.dry_run:
        return [
            plan(
                recipe.source,
                step.rules,
                strict=step.strict,
                allow_unmatched=step.allow_unmatched,
                unsafe_pickle=recipe.unsafe_pickle,
                progress=progress,
            )
            for step in recipe.steps
        ]
    common: dict[str, Any] = {
        "overwrite": recipe.overwrite,
        "in_place": recipe.in_place,
        "device": recipe.device,
        "progress": progress,
        "unsafe_pickle": recipe.unsafe_pickle,
    }
    if len(recipe.steps) == 1:
        step = recipe.steps[0]
        return apply(
            recipe.source,
            step.rules,
            recipe.output,
            seed=step.seed,
            reports=recipe.reports,
            strict=step.strict,
            allow_unmatched=step.allow_unmatched,
            **common,
            **dict(step.options),
        )
    started = time.perf_counter()
    reports = []
    with open_checkpoint(
        recipe.source, unsafe_pickle=recipe.unsafe_pickle, progress=progress
    ) as original:
        current: Any = original
        for step in recipe.steps[:-1]:
            tensors, rep = _step(apply_to_checkpoint, current, step, recipe, progress)
            reports.append(rep)
            current = StateDictCheckpoint(tensors, like=original)
        last = recipe.steps[-1]
        done = tuple(reports)
        # the merged report is written with the checkpoint, published together or not at all
        return _step_or_raise(
            lambda: apply(
                current,
                last.rules,
                recipe.output,
                seed=last.seed,
                reports=recipe.reports,
                strict=last.strict,
                allow_unmatched=last.allow_unmatched,
                finish_report=lambda final: merge_reports(
                    [*done, final], recipe.seed, time.perf_counter() - started
                ),
                **common,
                **dict(last.options),
            ),
            last,
        )


def _step_or_raise(fn: Callable[[], Any], step: Step) -> Any:
    """Prefix a step's usage errors with the step, so a multi-step error says where."""
    try:
        return fn()
    except UsageError as e:
        raise type(e)(f"{step.label}: {e}") from None


def _step(fn: Callable[..., Any], ckpt: Any, step: Step, recipe: Recipe, progress: bool) -> Any:
    return _step_or_raise(
        lambda: fn(
            ckpt,
            step.rules,
            seed=step.seed,
            strict=step.strict,
            allow_unmatched=step.allow_unmatched,
            device=recipe.device,
            unsafe_pickle=recipe.unsafe_pickle,
            progress=progress,
        ),
        step,
    )


def merge_reports(reports: Sequence[Any], seed: int, seconds: float) -> Any:
    """One report for a multi-step run: each tensor as the last step that acted on it, with its
    std before the first change and after the last; flags recomputed over the result."""
    from reinit.report.assemble import finalize, summarize
    from reinit.report.entries import Report

    final = reports[-1]
    steps = [{e.name: e for e in r.tensors} for r in reports]
    entries = []
    for e in final.tensors:
        seen = [s[e.name] for s in steps if e.name in s]
        changed = [x for x in seen if x.changes]
        acted = [x for x in seen if x.rule is not None]
        if changed:
            entry = replace(changed[-1], before=changed[0].before, after=e.after, flags=())
        elif acted:
            entry = replace(acted[-1], after=e.after, flags=())
        else:
            entry = replace(e, flags=())
        entries.append(entry)
    done = finalize(entries)
    rules = tuple(r for rep in reports for r in rep.rules)
    warnings = tuple(w for rep in reports for w in rep.warnings)
    return Report(
        reinit_version=final.reinit_version,
        source=reports[0].source,
        output=final.output,
        seed=seed,
        rules=rules,
        tensors=done,
        summary=summarize(done, final.summary.bytes_written, seconds),
        warnings=warnings,
    )
