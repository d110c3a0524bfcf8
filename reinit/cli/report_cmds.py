"""The commands that read checkpoints and write nothing but reports: `report`, `inspect`,
`diff`, `verify`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import click

from reinit.cli.common import (
    by_option,
    color_on,
    err,
    examples,
    json_option,
    note_all,
    plot_option,
    progress_on,
    quiet_option,
    ranks_of_run,
    shown,
    unsafe_pickle_option,
    warn_all,
    warn_unsafe,
    width,
)

if TYPE_CHECKING:
    from reinit.tools.inspect import InspectRow

__all__ = ["diff", "inspect", "report", "verify"]


def fail_on_flags(value: str | None) -> frozenset[str]:
    """`--fail-on nonfinite,garbage` (or `any`) -> the set of flags that fail the run."""
    import difflib

    from reinit.errors import UsageError
    from reinit.report.flags import FLAGS

    if value is None:
        return frozenset()
    names = {v.strip() for v in value.split(",") if v.strip()}
    if not names:  # `--fail-on "$FLAGS"` with FLAGS unset: a gate that never fails
        raise UsageError(
            f"--fail-on {value!r}: names no flag; give one of {', '.join(FLAGS)} "
            "(comma-separated) or 'any', or leave --fail-on out"
        )
    if "any" in names:
        return frozenset(FLAGS)
    unknown = sorted(names - set(FLAGS))
    if unknown:
        close = [c for u in unknown for c in difflib.get_close_matches(u, FLAGS, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(
            f"--fail-on {value}: unknown flag {', '.join(unknown)}{hint}; use any of "
            f"{', '.join(FLAGS)} (comma-separated) or 'any'"
        )
    return frozenset(names)


@click.command(
    epilog=examples(
        "reinit report model.safetensors",
        "reinit report model.safetensors -o r.md --fail-on nonfinite,garbage",
        "reinit report new.safetensors --against old.safetensors --json",
    )
)
@click.argument("source")
@click.option(
    "--against",
    default=None,
    metavar="BASELINE",
    help="A checkpoint whose same-named tensors give the 'before' statistics.",
)
@click.option(
    "-o",
    "--output",
    "outputs",
    multiple=True,
    metavar="PATH",
    help="Write the report (.json, .csv, .md); repeatable.",
)
@plot_option()
@click.option(
    "--fail-on",
    default=None,
    metavar="FLAG[,FLAG]",
    help="Exit 1 when a tensor carries one of these flags ('any' for all).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing report/plot files.")
@json_option()
@quiet_option("No progress bar, no terminal report.")
@click.option(
    "--key",
    default="",
    metavar="PATH",
    help="The dotted path of the state dict inside a torch training checkpoint or DCP directory.",
)
@unsafe_pickle_option()
@by_option()
@click.option(
    "--model",
    default=None,
    metavar="MODEL",
    help="With --against: the model apply had (HF directory, hf://OWNER/NAME, module:callable), "
    "to judge the recorded rules that need it (default, type:).",
)
def report(
    source: str,
    against: str | None,
    outputs: tuple[str, ...],
    plot: str | None,
    fail_on: str | None,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
    key: str,
    unsafe_pickle: tuple[str, ...],
    by: str,
    model: str | None,
) -> None:
    """The per-tensor std report of a checkpoint as it is (before/after with --against).

    Flags (nonfinite, garbage, constant, std_off, off_reference, untrained, outlier,
    unstable_depth) are shown and the exit status is 0, unless --fail-on names one that a
    tensor carries (exit 1)."""
    from reinit.io.targets import check_suffix
    from reinit.report.views import note_lines, render_terminal
    from reinit.tools.audit import write_report_files

    failing = fail_on_flags(fail_on)
    for path in outputs:  # a typo in a format costs nothing
        check_suffix(path, "-o", "report")
    if plot is not None:
        check_suffix(plot, "--plot", "plot")
        from reinit.report.views import require_matplotlib

        require_matplotlib()
    warn_unsafe(unsafe_pickle)
    with ranks_of_run() as ranks:  # under torchrun: the tensors shared out; rank 0 speaks
        rep = write_report_files(
            source,
            against,
            outputs,
            plot,
            overwrite=overwrite,
            progress=progress_on(quiet),
            unsafe_pickle=unsafe_pickle,
            key=key,
            ranks=ranks,
            model=model,
        )
    if ranks is not None and not ranks.primary:
        return
    warn_all(rep.warnings)
    note_all(rep.notes)  # e.g. the baseline compared under the model's names
    if as_json:
        click.echo(rep.to_json())
    if not quiet:
        err(render_terminal(rep, width(), color=color_on(sys.stderr), per_layer="all", by=by))
        for line in note_lines(rep):  # as apply says them (casts, renames, moved stds)
            err(line)
    hits = [e for e in rep.tensors if failing & set(e.flags)]
    if hits:
        first = hits[0]
        err(
            f"error: --fail-on {fail_on}: {len(hits)} tensor(s) flagged, first "
            f"'{shown(first.name)}' [{', '.join(sorted(failing & set(first.flags)))}]"
        )
        raise click.exceptions.Exit(1)


@click.command(
    epilog=examples(
        "reinit diff model.safetensors model.reinit.safetensors",
        "reinit diff a.bin b/ --json",
    )
)
@click.argument("a")
@click.argument("b")
@json_option("Print the diff as JSON on stdout.")
@unsafe_pickle_option()
def diff(a: str, b: str, as_json: bool, unsafe_pickle: tuple[str, ...]) -> None:
    """Which tensors differ between checkpoints A and B (bitwise), and by how much."""
    from reinit.tools.diff import diff_checkpoints, render_diff

    warn_unsafe(unsafe_pickle)
    d = diff_checkpoints(a, b, unsafe_pickle=unsafe_pickle)
    if as_json:
        click.echo(d.to_json())
        return
    click.echo(render_diff(d, width(), color=color_on(sys.stdout)))


@click.command(
    epilog=examples(
        "reinit verify model.safetensors",
        "reinit verify ./my-model/ --json",
        "reinit verify ./grown/ --forward --against ./old/ --max-kl 0.01",
        "reinit verify out/ --report out/reinit-report.json",
    )
)
@click.argument("path")
@click.option(
    "--report",
    "report_path",
    default=None,
    metavar="R.json",
    help="Also recheck every tensor's sha256 against this report (written by apply --checksums).",
)
@json_option("Print the result as JSON on stdout.")
@click.option(
    "--forward", is_flag=True, help="Load the weights into the model and run fixed inputs."
)
@click.option(
    "--against", default=None, metavar="SOURCE", help="--forward: compare outputs with SOURCE's."
)
@click.option(
    "--model",
    default=None,
    metavar="M",
    help="--forward: the architecture (module:callable or model dir) instead of config.json.",
)
@click.option(
    "--max-kl",
    type=float,
    default=None,
    metavar="X",
    help="--forward --against: exit 1 when the logits' mean KL (nats) exceeds X.",
)
@click.option(
    "--min-top1",
    type=float,
    default=None,
    metavar="X",
    help="--forward --against: exit 1 when the top-1 agreement (0-1) is below X.",
)
@click.option(
    "--min-cosine",
    type=float,
    default=None,
    metavar="X",
    help="--forward --against: exit 1 when a layer's hidden-state cosine is below X.",
)
def verify(
    path: str,
    report_path: str | None,
    as_json: bool,
    forward: bool,
    against: str | None,
    model: str | None,
    max_kl: float | None,
    min_top1: float | None,
    min_cosine: float | None,
) -> None:
    """Check a safetensors file, or a directory of shards and its index, against the format
    rules (the validator reinit reads with); a torch file, DCP directory or ZeRO folder is
    read tensor by tensor. Exit 0 when valid, 1 when not (with --report: also
    when a tensor's sha256 differs from the report's, naming the first). With --forward:
    run the weights in their architecture (per-layer std; against SOURCE: each layer's hidden
    states, the first divergent layer, the logits' KL and top-1 agreement)."""
    from reinit.cli.forward_out import ForwardLimits, check_forward_options, verify_forward
    from reinit.io.verify import verify as verify_path

    limits = ForwardLimits(max_kl, min_top1, min_cosine)
    check_forward_options(forward, against, model, limits)
    if forward:
        verify_forward(path, against, model, limits, as_json)
        return
    result = verify_path(path)
    if report_path is not None:
        from reinit.io.checksums import verify_checksums

        checked = verify_checksums(path, report_path)
        err(
            f"{shown(path)}: {checked} tensors match their name, dtype, shape and sha256 in "
            f"{shown(report_path)}"
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    if len(result.files) > 1 or os.path.isdir(path):
        for f in result.files:
            err(f"{shown(f.path)}: ok, {f.tensors} tensors, {f.nbytes:,d} bytes")
    click.echo(
        f"{shown(result.path)}: valid {result.form}: {len(result.files)} file(s), "
        f"{result.tensors} tensors, {result.nbytes:,d} bytes of tensor data"
    )


def _inspect_lines(rows: Sequence[InspectRow], cols: int) -> Iterator[str]:
    """One line per tensor: name, shape, dtype, bytes (and statistics). A name is never cut
    (it is what a rule or a grep is written from): one longer than its column (half the width)
    stands on its own line, its row below it."""
    from reinit.report.views import fmt, shape_text

    names = [shown(r.name) for r in rows]
    name_w = max(16, min(max(map(len, names), default=4), cols // 2))
    for r, name in zip(rows, names, strict=True):
        if len(name) > name_w:
            yield name
            name = ""
        line = f"{name.ljust(name_w)}  {shape_text(r.shape):<16} {r.dtype:<14} {r.nbytes:>12,d} B"
        if r.stats is not None:
            s = r.stats
            line += f"  mean {fmt(s.mean)}  std {fmt(s.std)}  min {fmt(s.min)}  max {fmt(s.max)}"
            if s.nonfinite:
                line += f"  nonfinite {s.nonfinite}"
        yield line


@click.command(
    epilog=examples(
        "reinit inspect model.safetensors",
        'reinit inspect model.safetensors --filter "*.attention.*" --stats',
        "reinit inspect ./my-model/ --json",
    )
)
@click.argument("source")
@click.option(
    "--filter", "pattern", default=None, help="Only names matching this glob or re: pattern."
)
@click.option("--stats", is_flag=True, help="Also read every tensor and show mean/std/min/max.")
@json_option("Print the rows as JSON on stdout.")
@click.option(
    "--key",
    default="",
    metavar="PATH",
    help="The dotted path of the state dict inside a torch training checkpoint or DCP directory.",
)
def inspect(source: str, pattern: str | None, stats: bool, as_json: bool, key: str) -> None:
    """List the tensors of a checkpoint: name, shape, dtype, size (and statistics)."""
    from reinit.tools.inspect import inspect_checkpoint

    rows = inspect_checkpoint(source, pattern, stats=stats, key=key)
    if as_json:
        from reinit.report.jsonio import dumps

        click.echo(dumps([r.to_dict() for r in rows], indent=2))
        return
    for line in _inspect_lines(rows, width()):
        click.echo(line)
    total = sum(r.nbytes for r in rows)
    click.echo(f"{len(rows)} tensors, {total:,d} bytes", err=True)
    if pattern and not rows:  # a typo in --filter: say the names it came closest to
        from reinit.rules import closest_hint

        names = [r.name for r in inspect_checkpoint(source, None, key=key)]
        err(shown(f"no tensor matches {pattern!r}{closest_hint(pattern, names)}"))
