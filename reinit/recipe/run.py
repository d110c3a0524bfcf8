"""Running a recipe: each step but the last in memory on the previous step's tensors, the last
one streamed to the output; one merged report."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import torch

from reinit.errors import UsageError
from reinit.io.checkpoint import Checkpoint
from reinit.io.memory import StateDictCheckpoint
from reinit.options import ApplyOptions
from reinit.planning.planner import NOTE_RENAMED, Plan
from reinit.planning.transplant import EQUAL_TO_SOURCE
from reinit.recipe.validate import Recipe, Step
from reinit.report.entries import Report, TensorEntry


def run_recipe(recipe: Recipe, *, progress: bool = False) -> Report:
    """Run every step of a recipe and write its output (checkpoint and reports published
    together, or nothing).

    One step is exactly `reinit.apply` with the recipe's options. Several steps: each but the
    last runs in memory on the previous step's tensors (`StateDictCheckpoint`), its surgery
    (add/drop/rename/resize) included, the last one streams to the output with the source's
    layout and metadata; no intermediate file is written. The report then covers all steps: per tensor, the last step that changed it, its
    std before the first change and after the last.

    Args:
        recipe: A validated recipe (`reinit.load_recipe`). One that says `dry_run: true` is
            refused (UsageError): `plan_recipe` gives its plans.
        progress: Show progress bars (and the Hub's download bars).

    Returns:
        The final `Report` (merged over the steps).

    Example:

    ```python
    import reinit

    recipe = reinit.load_recipe("init.yaml", sets=["seed=5"])
    report = reinit.run_recipe(recipe)
    print(report.output, report.summary.reinit)
    ```
    """
    from reinit.run.apply import apply

    check_recipe("run_recipe", recipe)
    if recipe.dry_run:
        raise UsageError(
            f"{recipe.path}: the recipe says dry_run, so nothing may be written; plan it with "
            "reinit.plan_recipe(recipe) (or set dry_run to false)"
        )
    if len(recipe.steps) == 1 and not recipe.new:
        step = recipe.steps[0]
        with _naming(step):  # as its dry run names its errors
            return apply(recipe.source, step.rules, recipe.output, options=_live(step, progress))
    if len(recipe.steps) == 1:
        from reinit.run.new import new

        step = recipe.steps[0]
        with _naming(step):
            return new(
                recipe.source, _new_output(recipe), step.rules, options=_live(step, progress)
            )
    started = time.perf_counter()
    reports: list[Report] = []
    with _open_source(recipe, progress) as original:
        current: Checkpoint = original
        for i, step in enumerate(recipe.steps[:-1]):
            with _naming(step):
                rules, options = _first_step(recipe, original, i, step, progress)
                tensors, rep, shards, views = _run_step(current, rules, options)
            reports.append(rep)
            record = _step_record(current, rules, options)
            current = StepOutput(tensors, original, record, shards, views)
        with _naming(recipe.steps[-1]):
            return _write_last(recipe, current, tuple(reports), started, progress)


def _run_step(
    ckpt: Checkpoint, rules: Sequence[str], options: ApplyOptions
) -> tuple[dict[str, torch.Tensor], Report, dict[str, str], dict[str, dict[str, bool]]]:
    """A step run in memory: its tensors, its report, the shard each tensor's file would
    put it in (a renamed tensor in its own, an added one in the last: the surgery's refs) and
    the input's overlapping views under the output's names (all kept: a change is refused)."""
    from reinit.run.inmemory import run_prepared
    from reinit.run.prepare import Job, prepare

    with ExitStack() as stack:
        prepared = prepare(stack, Job.of(ckpt, rules, options, require_rules=False), options)
        shards = {r.name: r.shard for r in prepared.ckpt.refs()}
        run = run_prepared(prepared)
        views = prepared.ckpt.overlaps()
    return run.tensors, run.report, shards, views


class StepOutput(StateDictCheckpoint):
    """A step's tensors, laid out like the source (each in the shard its step's output file
    would put it in: `shards`), recording the step as its output file would (`reinit`
    metadata: `run.record`), so the next step's output records every step that made it, as a
    chain of files does. `views`: the input's overlapping views (`Checkpoint.overlaps`), which
    a later step may not change either, though a step's kept tensors may be copies (a torch
    file's are)."""

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        like: Checkpoint,
        record: str,
        shards: Mapping[str, str],
        views: Mapping[str, Mapping[str, bool]] | None = None,
    ):
        super().__init__(tensors, like=like)
        self.record = record
        self._shard_of = {**self._shard_of, **shards}
        self.views = {n: dict(o) for n, o in (views or {}).items()}

    def overlaps(self) -> dict[str, dict[str, bool]]:
        out = super().overlaps()
        for n, others in self.views.items():
            out.setdefault(n, {}).update({m: s for m, s in others.items() if m not in out[n]})
        return out

    def metadata(self, shard: str = "") -> dict[str, str]:
        meta = dict(super().metadata(shard))  # as `run.output.output_metadata` writes it
        meta.setdefault("format", "pt")
        return {**meta, "reinit": self.record}


def _step_record(ckpt: Checkpoint, rules: Sequence[str], options: ApplyOptions) -> str:
    """What the output of a step run on `ckpt` records (`run.record`), as its file would."""
    from reinit.run.output import record_json
    from reinit.run.prepare import Job, record_of

    job = Job.of(ckpt, rules, options, require_rules=False)
    return record_json(record_of(job, options, ckpt))


def _write_last(
    recipe: Recipe, current: Checkpoint, earlier: tuple[Report, ...], started: float, progress: bool
) -> Report:
    """The last step: `apply`'s stages on the previous step's tensors, its report merged with
    the earlier steps' and published with the checkpoint (together or not at all)."""
    from reinit.run.layout import OutputRequest, lay_out
    from reinit.run.prepare import Job, prepare
    from reinit.run.write import publish, report_of, stage, write

    last = recipe.steps[-1]
    o = _live(last, progress)
    job, request = Job.of(current, last.rules, o), OutputRequest.of(recipe.output, o)
    with ExitStack() as stack:
        prepared = prepare(stack, job, o)
        layout = lay_out(prepared, request)
        staging = stage(stack, layout)
        written = write(prepared, layout, staging.tmp, progress=o.progress)
        seconds = time.perf_counter() - started
        tolerance = recipe.options.reference_tolerance
        steps = [*earlier, report_of(prepared, layout, written)]
        report = merge_reports(steps, recipe.seed, seconds, tolerance)
        publish(staging, layout, report)
    return report


def check_recipe(function: str, recipe: object) -> None:
    """A `Recipe` (what `load_recipe` returns); a path or a dict is a `UsageError` saying so."""
    if not isinstance(recipe, Recipe):
        raise UsageError(
            f"{function}: recipe must be a reinit.Recipe, got {type(recipe).__name__}; "
            "read the file with reinit.load_recipe(path) first"
        )


def plan_recipe(recipe: Recipe, *, progress: bool = False) -> list[Plan]:
    """Each step's plan, as `run_recipe` would run it, writing nothing (`--dry-run`).

    Each step is planned on the previous step's result: a checkpoint of the names, shapes and
    dtypes the previous plan produces (its add/drop/rename/resize applied), holding no data, so a
    dry run shows exactly the plans the run follows.

    Args:
        recipe: A validated recipe (`reinit.load_recipe`).
        progress: Show the Hub's download bars of hf:// sources.

    Returns:
        One `Plan` per step, in order.

    Example:

    ```python
    import reinit

    for plan in reinit.plan_recipe(reinit.load_recipe("init.yaml")):
        print([(e.name, e.action) for e in plan.entries])
    ```
    """
    from reinit.planning.session import plan
    from reinit.run.layout import check_run_flags

    check_recipe("plan_recipe", recipe)
    check_run_flags(recipe.output, _live(recipe.steps[-1], progress))  # as the run will
    plans: list[Plan] = []
    with _open_source(recipe, progress) as original:
        current: Checkpoint = original
        for i, step in enumerate(recipe.steps):
            with _naming(step):
                rules, options = _first_step(recipe, original, i, step, progress)
                the_plan = plan(current, rules, options=options)
            plans.append(the_plan)
            current = PlannedCheckpoint(the_plan, current, original)
    return plans


class PlannedCheckpoint(StateDictCheckpoint):
    """The tensors a plan produces, as a checkpoint without data (meta tensors: names, shapes
    and dtypes), laid out like the source as the run's in-memory steps are. Names tied in the
    step's input stay tied, as the run keeps them one tensor object, and overlapping views stay
    so, under the names the step's --rename gives them."""

    def __init__(self, the_plan: Plan, before: Checkpoint, like: Checkpoint):
        tensors = {
            e.name: torch.empty(e.shape, dtype=e.dtype, device="meta") for e in the_plan.entries
        }
        super().__init__(tensors, like=like)
        new = {e.renamed_from or e.name: e.name for e in the_plan.entries if not e.added}
        self.tied = {new[n]: new[r] for n, r in before.aliases().items() if n in new and r in new}
        self.overlapping = {  # under the step's new names, as the run's `StepOutput` has them
            new[n]: {new[m]: sure for m, sure in others.items() if m in new}
            for n, others in before.overlaps().items()
            if n in new and any(m in new for m in others)
        }

    def aliases(self) -> dict[str, str]:
        # meta tensors share no storage to find ties by: the input's ties carry over
        return dict(self.tied)

    def overlaps(self) -> dict[str, dict[str, bool]]:
        return {n: dict(o) for n, o in self.overlapping.items()}


def _live(step: Step, progress: bool) -> ApplyOptions:
    """The step's options as a run uses them (progress shown or not)."""
    return replace(step.options, progress=progress)


@contextmanager
def _naming(step: Step) -> Iterator[None]:
    """Prefix a step's usage errors with where they come from: the line of the rule an error
    names (`r.yaml line 7 (step 2, head): rule '...' matches no tensor`), else the step."""
    try:
        yield
    except UsageError as e:
        text = str(e)
        at = next(
            (
                w
                for r, w in zip(step.rules, step.rule_where, strict=False)
                if text.startswith(f"rule {r!r}")
            ),
            step.label,
        )
        raise type(e)(f"{at}: {text}") from None


def step_note(seen: Sequence[tuple[int, TensorEntry]]) -> tuple[str, ...]:
    """`changed by step 2` / `changed by steps 1, 3` (1-based), or nothing if no step did;
    `seen`: the tensor's entry in each step that had it (`lineage`)."""
    which = [str(i + 1) for i, x in seen if x.changes]
    if not which:
        return ()
    return (f"changed by step{'s' if len(which) > 1 else ''} {', '.join(which)}",)


def lineage(name: str, steps: Sequence[Mapping[str, TensorEntry]]) -> list[tuple[int, TensorEntry]]:
    """The final tensor `name`'s entry in each step that had it, first step first, followed
    back through each step's `--rename` (a step's entry is under the name that step gave it)."""
    seen: list[tuple[int, TensorEntry]] = []
    for i in range(len(steps) - 1, -1, -1):
        x = steps[i].get(name)
        if x is None:
            break
        seen.append((i, x))
        old = next((n[len(NOTE_RENAMED) :] for n in x.notes if n.startswith(NOTE_RENAMED)), None)
        name = old if old is not None else name
    return seen[::-1]


def step_notes(seen: Sequence[TensorEntry]) -> list[str]:
    """Every step's notes on a tensor, in order, but `equal to source` where a later step
    changed the tensor again (it says what the values are, and they are no longer that)."""
    out: list[str] = []
    for i, x in enumerate(seen):
        redrawn = any(y.changes for y in seen[i + 1 :])
        out += [n for n in x.notes if not (redrawn and n == EQUAL_TO_SOURCE)]
    return out


def as_written(done: TensorEntry, final: TensorEntry) -> TensorEntry:
    """The entry of the step that acted on a tensor (`done`: what was done, its expected and
    reference std) with what the last step wrote (`final`: its name, shape, dtype, fans,
    statistics and checksum), flags left to be recomputed."""
    return replace(
        done,
        name=final.name,
        shape=final.shape,
        dtype=final.dtype,
        fan_in=final.fan_in,
        fan_out=final.fan_out,
        after=final.after,
        var_gain=final.var_gain,
        sha256=final.sha256,
        flags=(),
    )


def merge_reports(
    reports: Sequence[Report], seed: int, seconds: float, tolerance: float = 2.0
) -> Report:
    """One report for a multi-step run: each tensor as the last step that acted on it, with its
    std before the first change and after the last (and the reference scale of that step);
    flags recomputed over the result, `off_reference` with `tolerance`, `untrained` as the last
    step found it on a tensor no step changed. With more
    than one step, a tensor keeps the notes every step gave it (`resized ...` by step 1 though
    step 2 redrew it), and one that changed carries the note `changed by step N`
    (`steps 1, 3`), numbered as the recipe's steps, so the report says which step did it."""
    from reinit.report.assemble import finalize, summarize

    final = reports[-1]
    steps = [{e.name: e for e in r.tensors} for r in reports]
    entries = []
    never_trained = set()  # the last step's `untrained`, but where a step drew the values
    for e in final.tensors:
        trace = lineage(e.name, steps)
        seen = [x for _, x in trace]
        changed = [x for x in seen if x.changes]
        if "untrained" in e.flags and not changed:
            never_trained.add(e.name)
        acted = [x for x in seen if x.rule is not None]
        if changed:
            entry = as_written(replace(changed[-1], before=changed[0].before), e)
        elif acted:
            entry = as_written(acted[-1], e)
        else:
            entry = replace(e, flags=())
        if len(reports) > 1:  # every step's notes (a step-1 resize's too), then which step
            notes = dict.fromkeys([*step_notes(seen), *entry.notes, *step_note(trace)])
            entry = replace(entry, notes=tuple(notes))
        entries.append(entry)
    done = finalize(entries, tolerance, never_trained)
    seed, seed_notes = _seeds(reports, seed)
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
        dropped=tuple(n for rep in reports for n in rep.dropped),
        notes=(*(n for rep in reports for n in rep.notes), *seed_notes),
    )


def _seeds(reports: Sequence[Report], seed: int) -> tuple[int, tuple[str, ...]]:
    """The merged report's seed: the last step's, which the output records (the recipe's
    top-level `seed` is only the default of the steps that set none); with a note naming each
    step's seed when they differ, so the report says what reproduces each step's draws."""
    seeds = [r.seed for r in reports] or [seed]
    if len(set(seeds)) <= 1:
        return seeds[-1], ()
    each = ", ".join(f"step {i} seed {s}" for i, s in enumerate(seeds, 1))
    return seeds[-1], (f"seeds by step: {each} (the report's seed is the last step's)",)


def _new_output(recipe: Recipe) -> str:
    if recipe.output is None:
        raise UsageError(f"{recipe.path}: a new: recipe has no default output; give output")
    return recipe.output


def _first_step(
    recipe: Recipe, original: Checkpoint, index: int, step: Step, progress: bool
) -> tuple[Sequence[str], ApplyOptions]:
    """A step's rules and options; a `new:` recipe's first step draws the model's own init
    (`*=default` first) with the model's view, as `reinit new` does."""
    options = _live(step, progress)
    if not recipe.new or index > 0:
        return step.rules, options
    from reinit.planning.fresh import DEFAULT_RULE, ModelCheckpoint

    assert isinstance(original, ModelCheckpoint)
    return (DEFAULT_RULE, *step.rules), replace(options, model=original.view, dtype=None)


def _open_source(recipe: Recipe, progress: bool) -> Checkpoint:
    """The recipe's source, opened as its run and its dry run both read it (trust and --key
    as the recipe says); for `new:`, the model's checkpoint as `reinit new` makes it."""
    from reinit.io.sources import open_checkpoint

    if recipe.new:
        from reinit.run.new import prepare_new

        return prepare_new(recipe.source, (), recipe.options, None)[0]

    return open_checkpoint(
        recipe.source,
        unsafe_pickle=recipe.unsafe_pickle,
        progress=progress,
        key=recipe.options.key,
    )
