"""The command group's machinery: one-line errors with the library's exit codes, Ctrl-C and
SIGTERM told truthfully, a closed pipe ending quietly.

Library errors (`ReinitError`) become one line on stderr and the exit code they carry (2 usage,
1 failure); anything unexpected becomes one line too, with the traceback only under
REINIT_DEBUG=1. `--json` output goes to stdout and nothing else does."""

from __future__ import annotations

import _thread
import atexit
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import suppress
from types import FrameType
from typing import IO, Any, NoReturn

import click

from reinit.errors import ReinitError
from reinit.library_output import routed

__all__ = ["CommandError", "ReinitGroup", "one_line"]


def debug() -> bool:
    """REINIT_DEBUG=1: let tracebacks through."""
    return os.environ.get("REINIT_DEBUG", "") not in ("", "0")


class CommandError(click.ClickException):
    """A one-line error with the exit code the library chose."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        # click types exit_code as a ClassVar, yet reads it from the instance: ours is per error
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        # The message may quote a tensor or file name from the input: escape control and bidi
        # characters (reinit.text) so the one line stays one line and cannot be forged.
        from reinit.text import bounded, shown

        click.echo(f"error: {bounded(shown(self.format_message()))}", err=True)


def one_line(e: BaseException, empty: str | None = None) -> str:
    """The error's message as one line: a name from the input inside it (which may hold a
    newline) is escaped by `CommandError.show`, so the whole message is kept; a trailing newline
    is dropped."""
    text = str(e).rstrip("\n")
    return text or (type(e).__name__ if empty is None else empty)


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # Unwind like Ctrl-C so every `finally` (temporary output removal) runs.
    raise KeyboardInterrupt


def _interrupt_again(unraisable: Any) -> None:
    """`sys.unraisablehook` of the program: a Ctrl-C (or SIGTERM) whose KeyboardInterrupt was
    raised inside a finalizer (`__del__` during a garbage collection) is one Python swallows,
    printing 'Exception ignored in ...' and its traceback, and the run went on to publish.
    It is raised again in the main thread, through SIGTERM's handler (the one that unwinds
    like Ctrl-C, or holds it where signals are held), asked by another thread once this hook
    has returned: asked here, it would run inside the hook and be swallowed again (and if it
    still lands in a finalizer, this hook asks again); anything else as Python reports it."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _thread.start_new_thread(_thread.interrupt_main, (signal.SIGTERM,))  # not waited for
        return
    sys.__unraisablehook__(unraisable)


def _interrupted() -> int:
    """Say what a Ctrl-C/SIGTERM left, truthfully, and return the exit code: once the outputs
    were renamed into place they are complete (exit 0, named); before, nothing was (130)."""
    # never import here: a Ctrl-C during `import torch` leaves it half-initialized, and
    # importing it again (publish imports torch) crashes the interpreter; not loaded, nothing
    # was published
    publish = sys.modules.get("reinit.io.publish")
    done = publish.published() if publish is not None else ()
    with suppress(KeyboardInterrupt):  # a second signal while saying so changes nothing
        if done:
            click.echo(
                f"interrupted after the output was published: {', '.join(done)} "
                "(complete); nothing else was left behind",
                err=True,
            )
        else:
            click.echo(f"error: {_ranked_interrupt()}", err=True)
    return 0 if done else 130


def _ranked_interrupt() -> str:
    """What an interrupt left: under torchrun, said as every rank says it (`rank R of N: …;
    nothing was published`), wherever the signal landed (torchrun's SIGTERM can come between
    the steps a rank words itself); alone, the plain line."""
    ranks = sys.modules.get("reinit.run.ranks")  # loaded by every torchrun run (no import here)
    world = ranks.torchrun_world() if ranks is not None else None
    if ranks is None or world is None:
        return "interrupted; no partial output was left behind"
    return f"rank {world[0]} of {world[1]}: {ranks.INTERRUPTED}; {ranks.NOTHING}"


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


def _exit_on_stop_signals(code: int) -> None:
    """The command is over and its outcome told: from here to the end of the process
    (interpreter teardown included), SIGINT/SIGTERM end it at once with that same exit code,
    never as killed (143) nor with a traceback from teardown."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # a closed pipe: nothing more to say anyway
            stream.flush()

    def end(signum: int, frame: FrameType | None) -> NoReturn:
        os._exit(code)

    with suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, end)
        signal.signal(signal.SIGTERM, end)


def _end_program(code: int) -> NoReturn:
    """End the `reinit` program with `code`: its exit handlers run (atexit: logging's flush,
    whatever a wrapper registered), then the process ends without the interpreter's teardown.

    Why not `sys.exit`: the teardown puts the default signal handlers back, so a SIGTERM landing
    there killed a run whose output was already published (exit 143, against the guarantee);
    and Python 3.11 ends with SIGINT (-2) instead of the 130 reinit chose when an interrupt had
    passed through code run by `exec` (a dataclass being made during an import). Seen in 16
    and 30 of 628 signalled runs of a SIGTERM/SIGINT loop (branch `hang`, 2026-12-07)."""
    with suppress(BaseException):  # a handler's failure must not change the outcome told
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code)


def _show(e: click.ClickException) -> None:
    """Say a click error: a usage error (an unknown option or command, a missing or invalid
    argument) as one `error:` line naming the help to read, like every other error, not
    click's four lines (Usage:, Try ..., a blank, `Error: ...`); `reinit` alone shows the help."""
    if not isinstance(e, click.UsageError) or isinstance(e, click.exceptions.NoArgsIsHelpError):
        e.show()
        return
    from reinit.text import bounded, shown

    path = e.ctx.command_path if e.ctx is not None else "reinit"
    message = f"{e.format_message()} (see '{path} --help')"
    click.echo(f"error: {bounded(shown(message))}", err=True)


class ReinitGroup(click.Group):
    program = False  # run as the `reinit` program (see `main`), not in-process

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,  # click's own signature: passed through to make_context
    ) -> Any:  # click's own: the command's return value
        """click's standalone main, except that a Ctrl-C outside a command's own handling
        (while parsing, or after the command returned) is told like any other (`_interrupted`),
        not as click's "Aborted!" with exit 1."""
        run = super().main
        if not standalone_mode:
            return run(args, prog_name, complete_var, standalone_mode=False, **extra)
        # args None: the `reinit` program itself (console script, python -m reinit), whose
        # process ends here; in-process callers (CliRunner, notebooks) pass their args
        self.program = args is None
        if self.program:
            sys.unraisablehook = _interrupt_again
        try:
            rv = run(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except (click.exceptions.Abort, KeyboardInterrupt):
            code = _interrupted()
        except click.ClickException as e:
            code = e.exit_code
            with suppress(KeyboardInterrupt):  # the error stands, whatever signal follows
                _show(e)
        if self.program:
            _exit_on_stop_signals(code)
            _end_program(code)
        sys.exit(code)

    def _invoke_routed(self, ctx: click.Context) -> Any:
        """click's invoke, with torch's and transformers' text as reinit's `warning:` lines
        (raw under REINIT_DEBUG, for the one debugging)."""
        if debug():
            return super().invoke(ctx)
        # huggingface_hub's warnings.warn() (e.g. about disk space or symlinks) would add
        # lines to our one-line failures; its logging is captured by reinit/io/hub/_retry.py.
        warnings.filterwarnings("ignore", module=r"huggingface_hub(\.|$)")
        with routed(_library_warning()):
            return super().invoke(ctx)

    def invoke(self, ctx: click.Context) -> Any:  # click's own: the command's return value
        previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
            # Over `ulimit -f`, the kernel's default is to kill us (SIGXFSZ) mid-write, leaving
            # the temporary behind; ignored, the write fails with EFBIG and we clean up.
            if hasattr(signal, "SIGXFSZ"):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread (e.g. some test runners)
            previous = None
        publish = sys.modules.get("reinit.io.publish")  # in-process reruns (tests, notebooks)
        if publish is not None:
            publish.forget_published()
        try:
            return self._invoke_routed(ctx)
        except ReinitError as e:
            if debug():
                raise
            raise CommandError(one_line(e), e.exit_code) from None
        except KeyboardInterrupt:
            ctx.exit(_interrupted())
        except BrokenPipeError:
            _end_on_closed_pipe()
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MemoryError:  # past every size check (ulimit -v, memory taken meanwhile)
            if debug():
                raise
            raise CommandError(
                "out of memory; free memory or raise `ulimit -v`, or give smaller sizes", 1
            ) from None
        except Exception as e:  # a bug: still one line, and the way to see more
            if debug():
                raise
            raise _unexpected(e) from None
        finally:
            # the program keeps its handler until `_exit_on_stop_signals`: restoring SIG_DFL
            # here let a SIGTERM after publication kill it with 143 and a complete output
            if previous is not None and not self.program:
                signal.signal(signal.SIGTERM, previous)


def _unexpected(e: Exception) -> CommandError:
    """The one line for an exception no layer turned into a `ReinitError`: our printing to a
    stream that cannot take it (`> /dev/full`) says so; anything else is a bug to report."""
    stream = _echo_stream(e) if isinstance(e, OSError) else None
    if isinstance(e, OSError) and stream is not None:
        return CommandError(f"cannot write to {stream}: {e.strerror or one_line(e)}", 1)
    return CommandError(
        f"internal error: {type(e).__name__}: {one_line(e, '')} "
        "(run with REINIT_DEBUG=1 for the traceback, and please report it)",
        1,
    )


def _echo_stream(e: OSError) -> str | None:
    """'stdout' or 'stderr' (or 'the output') when `e` was raised by click.echo writing to
    that stream, else None."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame if tb is not None else None
    if frame is None or frame.f_globals.get("__name__") != "click.utils":
        return None
    file = frame.f_locals.get("file")
    names = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
    return names.get(id(file), "the output")


#: The most library warnings one command prints (each distinct text once); past it, silence.
MAX_LIBRARY_WARNINGS = 20
LIBRARY_WARNING_CHARS = 300


def _library_warning() -> Callable[[str], None]:
    """How one command shows torch's and transformers' warnings (`reinit.library_output`): one
    `warning:` line on stderr each, whitespace folded, cut to `LIBRARY_WARNING_CHARS`,
    escaped for the terminal, each distinct text once and at most `MAX_LIBRARY_WARNINGS`."""
    from reinit.text import one_line as folded
    from reinit.text import shown

    seen: set[str] = set()

    def emit(text: str) -> None:
        line = folded(text, limit=LIBRARY_WARNING_CHARS)
        if line in seen or len(seen) >= MAX_LIBRARY_WARNINGS:
            return
        seen.add(line)
        with suppress(OSError):  # a closed stderr must not end the command
            click.echo(f"warning: {shown(line)}", err=True)

    return emit
