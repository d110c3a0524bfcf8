"""Stage 1 of every run, `prepare`: the source opened, its surgery applied, the `from()` sources
pooled, the model view aligned, the rules planned and ties resolved. Every path starts here:
`apply` (the file path), the in-memory API, a recipe's steps, and (through `Prepared`) any
writer of another output form. Nothing is written; the stages after it are `run.layout`
(where every byte goes), `run.write` (the one `Applier` into files) and publishing.

`Job` is what was asked, parsed before any work (a typo costs nothing); `Prepared` is what
planning made of it, open until the caller's `ExitStack` closes."""

from __future__ import annotations

__all__ = ["Job", "Prepared", "plan_on", "prepare", "record_of"]

import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

from reinit.errors import UsageError
from reinit.io.checkpoint import Checkpoint
from reinit.io.sources import source_text as path_text
from reinit.options import ApplyOptions
from reinit.planning.model import ModelView
from reinit.planning.planner import Plan, PlanEntry
from reinit.planning.session import (
    RuleInput,
    as_rules,
    check_device,
    edit_checkpoint,
    loaded_model,
    model_view,
    open_source,
    plan_for,
)
from reinit.planning.surgery import Edited, Surgery, parse_surgery
from reinit.planning.ties import Ties
from reinit.planning.transplant import SourcePool
from reinit.report.assemble import make_report
from reinit.report.entries import Report, TensorEntry
from reinit.report.reference import basis_for, check_tolerance
from reinit.rules import Rule
from reinit.run.config_update import labels_list
from reinit.run.record import Provenance, SurgeryTexts, history_of, model_record
from reinit.run.stream import Applier


@dataclass(frozen=True)
class Job:
    """What a run was asked to do, parsed and checked before any work: the source (a path,
    URL or open checkpoint), the rules, the surgery, the device, the report's tolerance."""

    source: str | Checkpoint
    source_text: str
    rules: tuple[Rule, ...]
    surgery: Surgery
    device: str
    tolerance: float
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(
        cls,
        source: str | os.PathLike[str] | Checkpoint,
        rules: Sequence[RuleInput],
        o: ApplyOptions,
        *,
        require_rules: bool = True,
    ) -> Job:
        """`source` and `rules` with the options' surgery, device and tolerance, checked.
        `require_rules`: a run that writes a file refuses to only copy its source."""
        text = source.source if isinstance(source, Checkpoint) else path_text(source)
        parsed = as_rules(rules)
        if require_rules and not parsed and not (o.add or o.drop or o.rename or o.resize):
            raise UsageError(
                f"{text}: no rules, so apply would only copy the checkpoint; give at least "
                "one rule (e.g. '*.weight=kaiming'), or add/drop/rename/resize"
            )
        surgery = parse_surgery(o.add, o.drop, o.rename, o.resize)
        device = check_device(o.device)
        tolerance = check_tolerance(o.reference_tolerance)
        opened = source if isinstance(source, Checkpoint) else text
        return cls(opened, text, parsed, surgery, device, tolerance)


def record_of(job: Job, options: ApplyOptions, ckpt: Checkpoint) -> Provenance:
    """What the output of `job` on `ckpt` (its input, as the surgery left it or not) records
    about the run (`run.record`): seed, rules, surgery, model, and the steps `ckpt` records as
    having made it (`before`: a recipe's earlier step, or a chain of files, keeps them all)."""
    s = job.surgery
    texts = SurgeryTexts(
        tuple(d.text for d in s.drops),
        tuple(r.text for r in s.renames),
        tuple(r.text for r in s.resizes),
        tuple(a.text for a in s.adds),
    )
    rules = tuple(r.text for r in job.rules)
    model = model_record(options.model)
    return Provenance(options.seed, rules, texts, model, before=history_of(ckpt))


@dataclass(frozen=True)
class Prepared:
    """A planned run: the checkpoint as the surgery left it, the `from()` sources, the model
    view, the plan and its ties. The open files belong to the `ExitStack` given to `prepare`."""

    job: Job
    options: ApplyOptions
    ckpt: Checkpoint
    source_config: Callable[[], Mapping[str, object] | None]  # the source's config.json
    edited: Edited | None
    sources: SourcePool
    view: ModelView | None
    plan: Plan
    ties: Ties

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def rule_texts(self) -> tuple[str, ...]:
        return tuple(r.text for r in self.job.rules)

    @property
    def record(self) -> Provenance:
        """What the output records about this run (`run.record`): seed, rules, surgery, model,
        and the steps its input records (`before`)."""
        return record_of(self.job, self.options, self.ckpt)

    @property
    def by_name(self) -> dict[str, PlanEntry]:
        return {e.name: e for e in self.plan.entries}

    def applier(self) -> Applier:
        """A fresh `Applier` over the plan (one per stream of pieces)."""
        return Applier(self.ckpt, self.seed, self.job.device, self.sources, self.ties, self.view)

    def report(
        self,
        entries: Sequence[TensorEntry],
        output: str | os.PathLike[str] | None = None,
        bytes_written: int = 0,
        warnings: Sequence[str] = (),
        notes: Sequence[str] = (),
    ) -> Report:
        """The run's `Report` from the entries its writer gave (in plan order), the reference
        scale from the config and model view, with the writer's warnings and the layout's
        notes added."""
        order = {e.name: i for i, e in enumerate(self.plan.entries)}
        ordered = sorted(entries, key=lambda e: order[e.name])
        o = self.options
        basis = basis_for(self.ckpt, o.config, self.view, self.seed, self.job.tolerance)
        report = make_report(
            self.job.source_text,
            output,
            self.seed,
            self.rule_texts,
            ordered,
            bytes_written,
            self.job.started,
            self.plan,
            basis,
        )
        if warnings:
            report = replace(report, warnings=(*report.warnings, *warnings))
        if notes:
            report = replace(report, notes=(*report.notes, *notes))
        return report


def prepare(stack: ExitStack, job: Job, o: ApplyOptions) -> Prepared:
    """Open the job's source (closed with `stack`), apply its surgery, align the model view,
    then plan (`plan_on`)."""
    ckpt = stack.enter_context(open_source(job.source, o.unsafe_pickle, o.progress, o.key))
    source_config = ckpt.config  # read only when needed (on the Hub: one more download)
    model = loaded_model(o.model)  # once: the surgery's ties (--resize) and the plan's view
    ckpt, edited = edit_checkpoint(
        ckpt, job.surgery, o.allow_unmatched, o.seed, job.device, o.config, model
    )
    view = model_view(model if model is not None else o.model, ckpt)
    return plan_on(stack, job, ckpt, o, view, edited, source_config)


def plan_on(
    stack: ExitStack,
    job: Job,
    ckpt: Checkpoint,
    o: ApplyOptions,
    view: ModelView | None,
    edited: Edited | None = None,
    source_config: Callable[[], Mapping[str, object] | None] | None = None,
) -> Prepared:
    """Plan the job's rules on a checkpoint already opened and edited (`edited`: the surgery
    it went through, marked on the plan), pooling the `from()` sources (closed with `stack`)."""
    labels = labels_list(o.labels)  # the output's class names: rows=labels maps to them
    sources = stack.enter_context(SourcePool(ckpt, o.unsafe_pickle, o.progress, labels))
    the_plan, ties = plan_for(
        ckpt, job.rules, o.strict, o.allow_unmatched, sources, view, o.config, edited
    )
    config = source_config if source_config is not None else ckpt.config
    return Prepared(job, o, ckpt, config, edited, sources, view, the_plan, ties)
