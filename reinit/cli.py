"""The command line: click commands, one library call each.

Library errors (`ReinitError`) become one line on stderr and the exit code they carry (2 usage,
1 failure); anything unexpected becomes one line too, with the traceback only under
REINIT_DEBUG=1. `--json` output goes to stdout and nothing else does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import warnings
from contextlib import suppress
from typing import Any, NoReturn

import click

from reinit.errors import ReinitError
from reinit.version import __version__


def _debug() -> bool:
    return os.environ.get("REINIT_DEBUG", "") not in ("", "0")


class CommandError(click.ClickException):
    """A one-line error with the exit code the library chose."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        # The message may quote a tensor or file name from the input: escape control and bidi
        # characters (reinit.text) so the one line stays one line and cannot be forged.
        from reinit.text import shown

        click.echo(f"error: {shown(self.format_message())}", err=True)


def _one_line(e: BaseException, empty: str | None = None) -> str:
    """The error's message as one line: a name from the input inside it (which may hold a
    newline) is escaped by `CommandError.show`, so the whole message is kept; a trailing newline
    is dropped."""
    text = str(e).rstrip("\n")
    return text or (type(e).__name__ if empty is None else empty)


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    # Unwind like Ctrl-C so every `finally` (temporary output removal) runs.
    raise KeyboardInterrupt


def _interrupted() -> int:
    """Say what a Ctrl-C/SIGTERM left, truthfully, and return the exit code: once the outputs
    were renamed into place they are complete (exit 0, named); before, nothing was (130)."""
    # never import here: a Ctrl-C during `import torch` leaves it half-initialized, and
    # importing it again (publish imports torch) crashes the interpreter; not loaded, nothing
    # was published
    publish = sys.modules.get("reinit.io.publish")
    done = publish.published() if publish is not None else ()
    if done:
        click.echo(
            f"interrupted after the output was published: {', '.join(done)} "
            "(complete); nothing else was left behind",
            err=True,
        )
        return 0
    click.echo("error: interrupted; no partial output was left behind", err=True)
    return 130


def _end_on_closed_pipe() -> NoReturn:
    """The reader went away (`reinit inspect x | head -1`): stop quietly with exit 0, as `cat`
    does, instead of an "internal error". As the Python docs recommend, stdout (and stderr,
    which may be the pipe) are pointed at /dev/null so the flush at exit cannot fail again.
    Outputs are published before anything is printed, so nothing is left half done."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError, AttributeError):  # not a real file (test captures)
            os.dup2(devnull, stream.fileno())
    raise click.exceptions.Exit(0)


def _examples(*lines: str) -> str:
    """An --help epilog of real commands, kept as written (click's \\b: no rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


class ReinitGroup(click.Group):
    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """click's standalone main, except that a Ctrl-C outside a command's own handling
        (while parsing, or after the command returned) is told like any other (`_interrupted`),
        not as click's "Aborted!" with exit 1."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except (click.exceptions.Abort, KeyboardInterrupt):
            sys.exit(_interrupted())
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
            # Over `ulimit -f`, the kernel's default is to kill us (SIGXFSZ) mid-write, leaving
            # the temporary behind; ignored, the write fails with EFBIG and we clean up.
            if hasattr(signal, "SIGXFSZ"):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread (e.g. some test runners)
            previous = None
        if not _debug():
            # huggingface_hub's warnings.warn() (e.g. about disk space or symlinks) would add
            # lines to our one-line failures; its logging is captured by reinit/io/hub_retry.py.
            warnings.filterwarnings("ignore", module=r"huggingface_hub(\.|$)")
        publish = sys.modules.get("reinit.io.publish")  # in-process reruns (tests, notebooks)
        if publish is not None:
            publish.forget_published()
        try:
            return super().invoke(ctx)
        except ReinitError as e:
            if _debug():
                raise
            raise CommandError(_one_line(e), e.exit_code) from None
        except KeyboardInterrupt:
            ctx.exit(_interrupted())
        except BrokenPipeError:
            _end_on_closed_pipe()
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug: still one line, and the way to see more
            if _debug():
                raise
            raise CommandError(
                f"internal error: {type(e).__name__}: {_one_line(e, '')} "
                "(run with REINIT_DEBUG=1 for the traceback, and please report it)",
                1,
            ) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _err(text: str) -> None:
    click.echo(text, err=True)


def _warn_unsafe(paths: tuple[str, ...], what: str = "--unsafe-pickle") -> None:
    """The loud warning whenever trust is given, naming exactly what it covers (and refusing a
    value that is no path, e.g. the old flag form followed by another option)."""
    if not paths:
        return
    from reinit.io.trust import pickle_trust

    pickle_trust(paths, what)
    _err(
        f"warning: {what} lets torch files run code while loading, only these: "
        f"{', '.join(paths)}; use it only for files you trust"
    )


def _shown(text: str) -> str:
    """Text from the input (a name, a warning naming one), escaped for the terminal."""
    from reinit.text import shown

    return shown(text)


def _progress_on(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _width() -> int:
    return min(shutil.get_terminal_size((100, 24)).columns, 160)


@click.group(cls=ReinitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reinit")
def main() -> None:
    """Model surgery for checkpoints: re-initialize or transplant parameters by name pattern,
    and see every layer's scale at a glance."""


# --- apply ------------------------------------------------------------------------------


@main.command(
    epilog=_examples(
        'reinit apply model.safetensors --rule "*.weight=kaiming"',
        'reinit apply model.safetensors -r "classifier.weight=xavier_uniform" -r "classifier.bias=zeros" -o new.safetensors',
        'reinit apply new_model/ -o clf/ --rule "bert.*=from(pretrained/, key={1})"',
        'reinit apply model.safetensors -r "*.weight=normal(std=0.02)" --dry-run',
    )
)
@click.argument("source")
@click.option(
    "--rule",
    "-r",
    "rules",
    multiple=True,
    metavar="PATTERN=ACTION",
    help="Repeatable; the last matching rule wins.",
)
@click.option(
    "-o",
    "--output",
    default=None,
    help="Output file (.safetensors, .bin/.pt) or directory (a trailing /). Default: "
    "X.reinit.safetensors beside a file X.safetensors, D-reinit/ beside a directory D, "
    "./NAME-reinit/ for hf://OWNER/NAME.",
)
@click.option(
    "--add",
    "adds",
    multiple=True,
    metavar="NAME=[d0,...]:SCHEME",
    help="Add a new tensor filled by SCHEME (float32 unless ':dtype=bfloat16' etc. follows); "
    "repeatable. Runs before the rules.",
)
@click.option(
    "--drop",
    "drops",
    multiple=True,
    metavar="PATTERN",
    help="Remove the tensors PATTERN matches; repeatable. Runs before the rules.",
)
@click.option(
    "--rename",
    "renames",
    multiple=True,
    metavar="PATTERN=TEMPLATE",
    help="Rename the tensors PATTERN matches ({name}, {1}, {2}, ... in TEMPLATE); repeatable, "
    "applied in order. Runs before the rules.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seeds every re-initialized tensor's own generator (with its name): same seed, "
    "same bytes.",
)
@click.option(
    "--report",
    "reports",
    multiple=True,
    metavar="PATH",
    help="Extra report (.json, .csv, .md); repeatable.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@click.option("--strict", is_flag=True, help="Any skipped tensor is an error.")
@click.option(
    "--allow-unmatched",
    is_flag=True,
    help="A rule that matches nothing is a warning, not an error.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option(
    "--in-place",
    is_flag=True,
    help="Replace the source's weight files (and index) atomically; nothing else in its folder changes.",
)
@click.option(
    "--device", default="cpu", show_default=True, help="cpu or cuda: where values are drawn."
)
@click.option("--plot", "plot_path", default=None, metavar="PNG", help="Plot std per layer.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
@click.option(
    "--unsafe-pickle",
    "unsafe_pickle",
    multiple=True,
    metavar="PATH",
    help="Let this torch file (or model folder) run code while loading; repeatable. Only for "
    "files you trust: other sources stay weights-only.",
)
@click.option(
    "--model",
    default=None,
    metavar="MODEL",
    help="The model the checkpoint belongs to (HF directory, hf://OWNER/NAME, module:callable): "
    "enables type:CLASS patterns, module fans and the scheme default.",
)
def apply(
    source: str,
    rules: tuple[str, ...],
    output: str | None,
    adds: tuple[str, ...],
    drops: tuple[str, ...],
    renames: tuple[str, ...],
    seed: int,
    reports: tuple[str, ...],
    dry_run: bool,
    strict: bool,
    allow_unmatched: bool,
    overwrite: bool,
    in_place: bool,
    device: str,
    plot_path: str | None,
    as_json: bool,
    quiet: bool,
    unsafe_pickle: tuple[str, ...],
    model: str | None,
) -> None:
    """Re-initialize or transplant the tensors of SOURCE that the rules match, and write a
    new checkpoint plus its report (X.reinit.report.json beside X.reinit.safetensors).

    A rule is PATTERN=ACTION: PATTERN a glob (* also matches dots) or re:REGEX, ACTION a
    scheme (reinit schemes), keep, or from(SOURCE, key=..., on_mismatch=...). The last
    matching rule wins; tensors no rule matches are copied byte for byte."""
    import reinit.planning.session as planning
    import reinit.run.apply as running
    from reinit.errors import UsageError
    from reinit.report.plan_view import render_plan
    from reinit.report.terminal import render_terminal

    if not (rules or adds or drops or renames):
        raise UsageError(
            f"{source}: no rules, so apply would only copy it; pass --rule PATTERN=ACTION "
            '(e.g. --rule "*.weight=kaiming"), or --add/--drop/--rename (see reinit apply --help)'
        )

    _warn_unsafe(unsafe_pickle)
    if dry_run:
        plan = planning.plan(
            source,
            rules,
            strict=strict,
            allow_unmatched=allow_unmatched,
            unsafe_pickle=unsafe_pickle,
            add=adds,
            drop=drops,
            rename=renames,
            model=model,
            progress=_progress_on(quiet),
        )
        for w in plan.warnings:
            _err(f"warning: {_shown(w)}")
        click.echo(render_plan(plan, _width()), err=as_json)
        if plan.dropped:
            _err(_dropped_line(plan.dropped))
        return
    if plot_path is not None:
        from reinit.report.plot import require_matplotlib

        require_matplotlib()
    report = running.apply(
        source,
        rules,
        output,
        plot=plot_path,
        seed=seed,
        reports=reports,
        strict=strict,
        allow_unmatched=allow_unmatched,
        overwrite=overwrite,
        in_place=in_place,
        device=device,
        progress=_progress_on(quiet),
        unsafe_pickle=unsafe_pickle,
        add=adds,
        drop=drops,
        rename=renames,
        model=model,
    )
    for w in report.warnings:
        _err(f"warning: {_shown(w)}")
    if report.dropped and not quiet:
        _err(_dropped_line(report.dropped))
    if as_json:
        click.echo(report.to_json())
    if not quiet:
        _err(render_terminal(report, _width(), color=sys.stderr.isatty()))


def _dropped_line(names: tuple[str, ...]) -> str:
    listed = ", ".join(map(_shown, names[:10]))
    listed += f", … ({len(names) - 10} more)" if len(names) > 10 else ""
    return f"dropped {len(names)} tensor(s): {listed}"


# --- report ---------------------------------------------------------------------------


def _fail_on(value: str | None) -> frozenset[str]:
    """`--fail-on nonfinite,garbage` (or `any`) -> the set of flags that fail the run."""
    from reinit.errors import UsageError
    from reinit.report.flags import FLAGS

    if not value:
        return frozenset()
    names = {v.strip() for v in value.split(",") if v.strip()}
    if "any" in names:
        return frozenset(FLAGS)
    unknown = sorted(names - set(FLAGS))
    if unknown:
        raise UsageError(
            f"--fail-on {value}: unknown flag {', '.join(unknown)}; use any of "
            f"{', '.join(FLAGS)} (comma-separated) or 'any'"
        )
    return frozenset(names)


@main.command(
    epilog=_examples(
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
@click.option("--plot", "plot_path", default=None, metavar="PNG", help="Plot std per layer.")
@click.option(
    "--fail-on",
    default=None,
    metavar="FLAG[,FLAG]",
    help="Exit 1 when a tensor carries one of these flags ('any' for all).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing report/plot files.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no terminal report.")
@click.option(
    "--unsafe-pickle",
    "unsafe_pickle",
    multiple=True,
    metavar="PATH",
    help="Let this torch file (or model folder) run code while loading; repeatable. Only for "
    "files you trust: other sources stay weights-only.",
)
def report(
    source: str,
    against: str | None,
    outputs: tuple[str, ...],
    plot_path: str | None,
    fail_on: str | None,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
    unsafe_pickle: tuple[str, ...],
) -> None:
    """The per-tensor std report of a checkpoint as it is (before/after with --against).

    Flags (nonfinite, garbage, constant, std_off, outlier, unstable_depth) are shown and the
    exit status is 0, unless --fail-on names one that a tensor carries (exit 1)."""
    from reinit.report.terminal import render_terminal

    failing = _fail_on(fail_on)
    from reinit.io.targets import check_suffix
    from reinit.tools.audit import write_report_files

    for path in outputs:  # a typo in a format costs nothing
        check_suffix(path, "-o", "report")
    if plot_path is not None:
        check_suffix(plot_path, "--plot", "plot")
        from reinit.report.plot import require_matplotlib

        require_matplotlib()
    _warn_unsafe(unsafe_pickle)
    rep = write_report_files(
        source,
        against,
        outputs,
        plot_path,
        overwrite=overwrite,
        progress=_progress_on(quiet),
        unsafe_pickle=unsafe_pickle,
    )
    for w in rep.warnings:
        _err(f"warning: {_shown(w)}")
    if as_json:
        click.echo(rep.to_json())
    if not quiet:
        _err(render_terminal(rep, _width(), color=sys.stderr.isatty(), per_layer="all"))
    hits = [e for e in rep.tensors if failing & set(e.flags)]
    if hits:
        first = hits[0]
        _err(
            f"error: --fail-on {fail_on}: {len(hits)} tensor(s) flagged, first "
            f"'{_shown(first.name)}' [{', '.join(sorted(failing & set(first.flags)))}]"
        )
        raise click.exceptions.Exit(1)


# --- diff -------------------------------------------------------------------------------


@main.command(
    epilog=_examples(
        "reinit diff model.safetensors model.reinit.safetensors",
        "reinit diff a.bin b/ --json",
    )
)
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON on stdout.")
@click.option(
    "--unsafe-pickle",
    "unsafe_pickle",
    multiple=True,
    metavar="PATH",
    help="Let this torch file (or model folder) run code while loading; repeatable. Only for "
    "files you trust: other sources stay weights-only.",
)
def diff(a: str, b: str, as_json: bool, unsafe_pickle: tuple[str, ...]) -> None:
    """Which tensors differ between checkpoints A and B (bitwise), and by how much."""
    from reinit.tools.diff import diff_checkpoints, render_diff

    _warn_unsafe(unsafe_pickle)
    d = diff_checkpoints(a, b, unsafe_pickle=unsafe_pickle)
    if as_json:
        click.echo(d.to_json())
        return
    click.echo(render_diff(d, _width(), color=sys.stdout.isatty()))


# --- verify -----------------------------------------------------------------------------


@main.command(
    epilog=_examples(
        "reinit verify model.safetensors",
        "reinit verify ./my-model/ --json",
    )
)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def verify(path: str, as_json: bool) -> None:
    """Check a safetensors file, or a directory of shards and its index, against the format
    rules (the validator reinit reads with). Exit 0 when valid, 1 when not."""
    from reinit.io.verify import verify as verify_path

    result = verify_path(path)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    if len(result.files) > 1 or os.path.isdir(path):
        for f in result.files:
            _err(f"{_shown(f.path)}: ok, {f.tensors} tensors, {f.nbytes:,d} bytes")
    click.echo(
        f"{_shown(result.path)}: valid safetensors: {len(result.files)} file(s), "
        f"{result.tensors} tensors, {result.nbytes:,d} bytes of tensor data"
    )


# --- inspect ----------------------------------------------------------------------------


@main.command(
    epilog=_examples(
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
@click.option("--json", "as_json", is_flag=True)
def inspect(source: str, pattern: str | None, stats: bool, as_json: bool) -> None:
    """List the tensors of a checkpoint: name, shape, dtype, size (and statistics)."""
    from reinit.report.text import fmt, shape_text, shorten
    from reinit.tools.inspect import inspect_checkpoint

    rows = inspect_checkpoint(source, pattern, stats=stats)
    if as_json:
        from reinit.report.jsonio import dumps

        click.echo(dumps([r.to_dict() for r in rows], indent=2))
        return
    width = _width()
    names = [_shown(r.name) for r in rows]
    name_w = max(16, min(max(map(len, names), default=4), width // 2))
    for r, name in zip(rows, names, strict=True):
        line = f"{shorten(name, name_w).ljust(name_w)}  {shape_text(r.shape):<16} {r.dtype:<14} {r.nbytes:>12,d} B"
        if r.stats is not None:
            s = r.stats
            line += f"  mean {fmt(s.mean)}  std {fmt(s.std)}  min {fmt(s.min)}  max {fmt(s.max)}"
            if s.nonfinite:
                line += f"  nonfinite {s.nonfinite}"
        click.echo(line)
    total = sum(r.nbytes for r in rows)
    click.echo(f"{len(rows)} tensors, {total:,d} bytes", err=True)


# --- schemes and gain -------------------------------------------------------------------


@main.command(
    epilog=_examples(
        "reinit schemes",
        "reinit schemes --json",
    )
)
@click.option("--json", "as_json", is_flag=True)
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
    click.echo("keep\n    leaves the tensor as it is (carve an exception out of a broader rule)")
    click.echo(
        "from(SOURCE, key=TEMPLATE|auto, on_mismatch=error|skip|slice)\n    copies the tensor from another checkpoint (key: {name}, {1}, {2}, ... or auto = longest common dotted suffix)"
    )


@main.command(
    epilog=_examples(
        "reinit gain relu",
        "reinit gain leaky_relu 0.2",
        "reinit gain tanh --measure",
    )
)
@click.argument("nonlinearity")
@click.argument("param", required=False, type=float)
@click.option(
    "--measure", is_flag=True, help="Also measure std(x)/std(f(x)) on a million N(0,1) samples."
)
def gain(nonlinearity: str, param: float | None, measure: bool) -> None:
    """The recommended gain for NONLINEARITY (torch.nn.init.calculate_gain)."""
    from reinit.schemes import calculate_gain
    from reinit.schemes.gain import measure_gain

    value = calculate_gain(nonlinearity, param)
    click.echo(f"{nonlinearity}: gain {value:.6g}")
    if measure:
        ratio = measure_gain(nonlinearity, param)
        click.echo(f"measured std(x)/std(f(x)) on 1,000,000 N(0,1) samples: {ratio:.4g}")


# --- probe ------------------------------------------------------------------------------


@main.command(
    epilog=_examples(
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
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seeds the inputs and the rules."
)
@click.option(
    "--checkpoint", default=None, help="Load these weights first (else the model as built)."
)
@click.option("--allow-unmatched", is_flag=True, help="A rule that matches nothing is a warning.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result on stdout.")
@click.option("--plot", "plot_path", default=None, metavar="PNG", help="Plot (needs reinit[plot]).")
def probe(
    model: str,
    input_shape: str | None,
    rules: tuple[str, ...],
    seed: int,
    checkpoint: str | None,
    allow_unmatched: bool,
    as_json: bool,
    plot_path: str | None,
) -> None:
    """Run random inputs through MODEL and report activation and gradient std per layer,
    before and after the rules: see signals vanish or explode through depth.

    MODEL: a Hugging Face model directory, hf://OWNER/NAME, or module:callable."""
    from reinit.tools.probe import parse_shape
    from reinit.tools.probe import probe as run_probe
    from reinit.tools.probe_render import plot, render

    shape = parse_shape(input_shape) if input_shape else None
    if plot_path is not None:
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
    )
    for w in result.warnings:
        _err(f"warning: {_shown(w)}")
    if plot_path is not None:
        plot(result, plot_path)
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(render(result, _width()))


# --- run --------------------------------------------------------------------------------


@main.command(
    epilog=_examples(
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
@click.option("--dry-run", is_flag=True, help="Print each step's plan and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
def run(recipe: str, sets: tuple[str, ...], dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Run a recipe (.yaml/.yml, .toml or .json): apply's options as keys, and `steps:` to
    chain several rule sets in memory."""
    from dataclasses import replace

    from reinit.recipe.run import plan_recipe, run_recipe
    from reinit.recipe.validate import load_recipe
    from reinit.report.plan_view import render_plan
    from reinit.report.terminal import render_terminal

    loaded = load_recipe(recipe, sets)
    if dry_run:
        loaded = replace(loaded, dry_run=True)
    _warn_unsafe(loaded.unsafe_pickle, "unsafe_pickle")
    if loaded.dry_run:
        plans = plan_recipe(loaded, progress=_progress_on(quiet))
        for i, plan in enumerate(plans):
            for w in plan.warnings:
                _err(f"warning: {_shown(w)}")
            if len(plans) > 1:
                click.echo(f"step {i}:", err=as_json)
            click.echo(render_plan(plan, _width()), err=as_json)
        return
    result = run_recipe(loaded, progress=_progress_on(quiet))
    for w in result.warnings:
        _err(f"warning: {_shown(w)}")
    if as_json:
        click.echo(result.to_json())
    if not quiet:
        _err(render_terminal(result, _width(), color=sys.stderr.isatty()))
