"""What the commands share: the options repeated per command (defined once here, or derived
from `ApplyOptions`), output helpers, and the loud --unsafe-pickle warning."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

import click

from reinit.options import meta

if TYPE_CHECKING:
    from reinit.options import ApplyOptions
    from reinit.planning.planner import Plan
    from reinit.report.entries import Report
    from reinit.run.ranks import Group

__all__ = [
    "FlagValue",
    "load_torch",
    "show_plan",
    "apply_option",
    "apply_options",
    "by_option",
    "color_on",
    "on_a_terminal",
    "dry_run_option",
    "flag_fields",
    "options_from_flags",
    "dropped_line",
    "err",
    "examples",
    "json_option",
    "plot_option",
    "progress_on",
    "quiet_option",
    "show_report",
    "ranks_of_run",
    "shown",
    "unsafe_pickle_option",
    "warn_all",
    "warn_unsafe",
    "width",
]

Command = Callable[..., None]  # a click command function, before click wraps it
Decorator = Callable[[Command], Command]


def err(text: str) -> None:
    """One line (or block) on stderr."""
    click.echo(text, err=True)


def shown(text: str) -> str:
    """Text from the input (a name, a warning naming one), escaped for the terminal."""
    from reinit.text import shown as escape

    return escape(text)


def warn_all(warnings: tuple[str, ...]) -> None:
    """The library's warnings, one line each on stderr."""
    from reinit.text import bounded

    for w in warnings:
        err(f"warning: {bounded(shown(w))}")


def note_all(notes: tuple[str, ...]) -> None:
    """The run's notes (config.json fields changed, files not copied), one line each on
    stderr, escaped and cut as warnings are: they quote a source's config values."""
    from reinit.text import bounded

    for note in notes:
        err(f"note: {bounded(shown(note))}")


def warn_unsafe(paths: tuple[str, ...], what: str = "--unsafe-pickle") -> None:
    """The loud warning whenever trust is given, naming exactly what it covers (and refusing a
    value that is no path, e.g. the old flag form followed by another option)."""
    if not paths:
        return
    from reinit.io.trust import pickle_trust

    pickle_trust(paths, what)
    err(
        f"warning: {what} lets torch files run code while loading, only these: "
        f"{', '.join(paths)}; use it only for files you trust"
    )


def on_a_terminal(stream: TextIO | None) -> bool:
    """Whether `stream` is a terminal; a closed one (`2>&-`: Python's `sys.stderr` is None)
    is not."""
    return stream is not None and stream.isatty()


def color_on(stream: TextIO | None) -> bool:
    """Colors in the terminal views: only on a terminal, and never when `NO_COLOR` is set to
    anything but the empty string (no-color.org)."""
    return on_a_terminal(stream) and not os.environ.get("NO_COLOR")


def progress_on(quiet: bool) -> bool:
    """Progress bars: on a terminal, unless --quiet."""
    return not quiet and on_a_terminal(sys.stderr)


#: The narrowest and widest the terminal views are drawn (`COLUMNS`, else the terminal's).
MIN_WIDTH, MAX_WIDTH = 20, 160


def width() -> int:
    """The terminal views' width: the terminal's (or `COLUMNS`), within 20..160 (below ~4
    columns the views' wrapping had no room left: a finished run ended as an internal error)."""
    return max(MIN_WIDTH, min(shutil.get_terminal_size((100, 24)).columns, MAX_WIDTH))


def examples(*lines: str) -> str:
    """An --help epilog of real commands, kept as written (click's \\b: no rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def dropped_line(names: tuple[str, ...]) -> str:
    listed = ", ".join(map(shown, names[:10]))
    listed += f", … ({len(names) - 10} more)" if len(names) > 10 else ""
    return f"dropped {len(names)} tensor(s): {listed}"


def apply_option(field: str, help: str | None = None) -> Decorator:
    """The click option of ApplyOptions' `field`, as its metadata declares it (flag names,
    help, metavar, repeatable or not, default); the parameter is named like the field."""
    from reinit.options import ApplyOptions

    m = meta(field)
    assert m.flags, f"{field} is not a flag"
    default = getattr(ApplyOptions(), field)
    text = help or m.help
    if m.is_flag:
        return click.option(*m.flags, field, is_flag=True, help=text)
    if m.multiple:
        return click.option(*m.flags, field, multiple=True, metavar=m.metavar, help=text)
    return click.option(
        *m.flags,
        field,
        default=default,
        type=type(default) if default is not None else None,
        metavar=m.metavar,
        show_default=m.show_default,
        help=text,
    )


def json_option(help: str = "Print the JSON report on stdout.") -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def quiet_option(help: str = "No progress bar, no summary.") -> Decorator:
    return click.option("--quiet", "-q", is_flag=True, help=help)


def unsafe_pickle_option() -> Decorator:
    return apply_option("unsafe_pickle")


def plot_option(help: str | None = None) -> Decorator:
    return apply_option("plot", help)


def by_option() -> Decorator:
    """`--by kind|tensor`: a display choice (not an ApplyOptions field: it changes no file)."""
    return click.option(
        "--by",
        type=click.Choice(["kind", "tensor"]),
        default="kind",
        show_default=True,
        help="The terminal table: one row per kind (name with numbers as *), shape, action and "
        "rule, or one row per tensor.",
    )


def dry_run_option(help: str = "Print the plan and write nothing.") -> Decorator:
    """--dry-run, and --all: the plan lists the unchanged tensors too."""

    def both(f: Command) -> Command:
        f = click.option(
            "--all",
            "all_tensors",
            is_flag=True,
            help="With --dry-run: list the tensors that stay unchanged too.",
        )(f)
        return click.option("--dry-run", is_flag=True, help=help)(f)

    return both


# What click hands a command for an ApplyOptions flag: typed by the declaration in `meta`.
FlagValue = str | int | bool | tuple[str, ...] | None


def flag_fields() -> tuple[str, ...]:
    """The ApplyOptions fields that are flags of `reinit apply`, in field order."""
    from reinit.options import option_names

    return tuple(n for n in option_names() if meta(n).flags)


def apply_options(f: Command) -> Command:
    """Every flag of ApplyOptions on a command (`reinit apply`), derived from its fields."""
    for name in reversed(flag_fields()):  # click lists the last decorator applied first
        f = apply_option(name)(f)
    return f


def options_from_flags(values: dict[str, FlagValue], *, progress: bool) -> ApplyOptions:
    """The ApplyOptions the flags of `apply_options` give."""
    from reinit.options import ApplyOptions

    assert set(values) == set(flag_fields()), sorted(set(values) ^ set(flag_fields()))
    # each value has the type its click declaration (from the field's metadata) gives it
    return ApplyOptions(progress=progress, **values)  # type: ignore[arg-type]


@contextmanager
def ranks_of_run() -> Iterator[Group | None]:
    """Under torchrun, the ranks (their gloo process group, set up for the command and torn
    down after); else None, and nothing distributed is touched."""
    from reinit.run.ranks import process_group, torchrun_world

    if torchrun_world() is None:
        yield None
        return
    with process_group() as ranks:
        yield ranks


def load_torch() -> None:
    """Import torch with SIGINT/SIGTERM held, before a command's first module that needs it.

    Why: an interrupt raised inside torch's import runs into its C++ code and aborts the
    process (SIGABRT, exit 134) instead of exiting 130. Held, it is raised as soon as torch is
    loaded: a Ctrl-C waits at most for the import (about a second)."""
    with torch_loading():
        import torch  # noqa: F401


def defer_torch() -> None:
    """Bind torch for every module that imports it, but load it (with SIGINT/SIGTERM held, as
    `load_torch`) only when the run first uses it: a plain copy or transplant of same-dtype
    safetensors bytes never does (`reinit.lazy.defer_import`)."""
    # what `torch_loading` uses, imported now: its first use then imports nothing (and so makes
    # no garbage) before the collector is paused
    import reinit.errors
    import reinit.io.signals
    import reinit.text  # noqa: F401
    from reinit.lazy import defer_import

    defer_import("torch", around=torch_loading)


@contextmanager
def torch_loading() -> Iterator[None]:
    """Around torch's import: SIGINT/SIGTERM held, and an install that cannot load (a missing
    or mismatched shared library) one line that says so, not an internal error (deferred, it
    surfaces wherever the run first uses torch, a worker thread included)."""
    from reinit.errors import ReinitError
    from reinit.io.signals import signals_deferred
    from reinit.lazy import gc_paused
    from reinit.text import one_line

    # the collector off while torch loads, and torch's modules frozen out of it after (they
    # live as long as the process, as `apply` freezes reinit's own before: `gc.freeze`)
    with signals_deferred(), gc_paused(freeze=True):
        try:
            yield
        except ImportError as e:
            raise ReinitError(
                f"torch cannot be loaded ({one_line(e)}); reinstall it (pip install torch)"
            ) from e


def show_plan(the_plan: Plan, *, as_json: bool, by: str, every: bool, quiet: bool = False) -> None:
    """What `apply --dry-run` and `new --dry-run` print: the plan's warnings, the plan (on
    stderr with `--json`, unless `-q`, and its JSON on stdout), and the names it drops; under torchrun only rank 0 prints."""
    from reinit.report.views import plan_json, render_plan
    from reinit.run.ranks import torchrun_world

    if (torchrun_world() or (0, 1))[0] != 0:
        return
    warn_all(the_plan.warnings)
    if as_json:
        click.echo(plan_json([the_plan]))
    if not (as_json and quiet):  # -q with --json: the JSON alone
        click.echo(render_plan(the_plan, width(), by=by, every=every), err=as_json)
    if the_plan.dropped:
        err(dropped_line(the_plan.dropped))


def show_report(report: Report, *, as_json: bool, quiet: bool, by: str) -> None:
    """What `apply` and `new` print after a run: warnings and notes, the dropped names, the
    JSON report on stdout (`--json`), and the terminal view with its notes (unless `-q`)."""
    warn_all(report.warnings)
    note_all(report.notes)
    if report.dropped and not quiet:
        err(dropped_line(report.dropped))
    if as_json:
        click.echo(report.to_json())
    if quiet:
        return
    from reinit.report.views import note_lines, render_terminal

    per_layer = "none" if by == "kind" else "changed"
    err(render_terminal(report, width(), color_on(sys.stderr), per_layer, by))
    for line in note_lines(report):
        err(line)
