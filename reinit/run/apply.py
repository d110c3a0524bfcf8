"""`apply`: a run that writes, as its named stages: `prepare` (open, surgery, plan), `lay_out`
(where every byte goes), `write` (the one `Applier` into staged files), `publish` (checkpoint,
reports and plot together or not at all). A recipe's last step runs the same stages."""

from __future__ import annotations

__all__ = ["apply"]

import os
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

from reinit.io.checkpoint import Checkpoint
from reinit.options import APPLY_FIELDS, ApplyOptions, OptionKwargs, with_kwargs
from reinit.planning.session import RuleInput
from reinit.report.entries import Report
from reinit.run.layout import OutputRequest, lay_out
from reinit.run.prepare import Job, prepare
from reinit.run.write import publish, report_of, stage, write

if TYPE_CHECKING:
    from typing_extensions import Unpack


def apply(
    source: str | os.PathLike[str] | Checkpoint,
    rules: Sequence[RuleInput],
    output: str | os.PathLike[str] | None = None,
    *,
    options: ApplyOptions | None = None,
    **kwargs: Unpack[OptionKwargs],
) -> Report:
    """Re-initialize or transplant the tensors the rules match and write a new checkpoint
    (with its report beside it), published atomically: all of it or nothing.

    Args:
        source: A checkpoint file (.safetensors, .bin/.pt), a model folder, `hf://OWNER/NAME`,
            or an open `Checkpoint` (e.g. `StateDictCheckpoint(tensors, like=ckpt)`).
        rules: `PATTERN=ACTION` strings (or parsed `Rule`s); the last matching rule wins.
        output: The output file or folder; by default beside the source
            (`X.reinit.safetensors`, `D-reinit/`, `./NAME-reinit/` for the Hub).
        options: An `ApplyOptions` holding any of the keywords below; keywords given too
            override it.
        **kwargs: The fields of `reinit.ApplyOptions`: `seed` (int, 0), `reports` (extra report
            paths, .json/.csv/.md), `default_report` (True), `strict`, `allow_unmatched`,
            `overwrite`, `in_place`, `device` ("cpu" or "cuda"), `progress`, `unsafe_pickle`
            (torch files trusted to run code), `add`/`drop`/`rename`/`resize` (surgery, run
            before the rules in the order drop, rename, resize, add; the rules see the new
            names and shapes), `model` (a Hugging Face folder, hf:// URL, `module:callable` or
            an `nn.Module`: enables `type:` patterns, module fans and `default`),
            `config` (overrides the model config scaled_normal/small_init read), `plot` (a PNG
            path), `reference_tolerance` (2.0: `off_reference` beyond that factor of the
            model's own scale). An unknown keyword is a TypeError.

    Returns:
        The `Report` (also written to the default report path unless `default_report=False`,
        and to each of `reports` in the format its extension names).

    Raises:
        ReinitError: a subclass naming the file, tensor or rule at fault; nothing is written.

    Example:

    ```python
    import reinit

    report = reinit.apply("model.safetensors", ["*.weight=kaiming", "*.bias=zeros"], seed=0)
    print(report.output, report.summary.reinit)  # model.reinit.safetensors 2
    ```
    """
    o = with_kwargs("apply", options, kwargs, APPLY_FIELDS)
    job = Job.of(source, rules, o)  # parsed and checked before any work
    request = OutputRequest.of(output, o)
    with ExitStack() as stack:
        prepared = prepare(stack, job, o)
        layout = lay_out(prepared, request)
        staging = stage(stack, layout)
        written = write(prepared, layout, staging.tmp, progress=o.progress)
        report = report_of(prepared, layout, written)
        publish(staging, layout, report)
    return report
