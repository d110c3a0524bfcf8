"""The command line: click commands, one library call each (`reinit = "reinit.cli:main"`).

Each command lives in its own module and is added here explicitly (never registered by an
import's side effect). Nothing here imports torch at import time: `reinit --help` answers at
once. The group's error mapping (one line, the library's exit code) is in `group.py`; the
options the commands share are defined once in `common.py`, apply's derived from
`reinit.options.ApplyOptions`."""

from __future__ import annotations

import atexit
import gc
import os

# Before numpy loads: the statistics kernel sums rows of 1,024 values with BLAS (report.kernels),
# far too little work to share, so a BLAS thread pool only spins beside reinit's own threads
# (~0.15 CPU-s of the bench's 2-core apply, docs/bench/log.md). The user's setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Before torch loads: OpenMP threads that wait for the next parallel region sleep instead of
# spinning. reinit draws tensors on two threads of its own, each casting in chunks with torch's
# parallel_for, and spinning teams burnt 13 CPU-s of 31 on the bench's 27 GB apply (user 31 ->
# 17 s, docs/bench/round3.md). The user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before torch allocates: torch's own switch for transparent huge pages on CPU tensors of 2 MB
# or more (2 MB-aligned, madvise(MADV_HUGEPAGE)). A run draws into fresh float32 buffers, and each
# then faults in 2 MB pages rather than 4 KB ones: `reinit new` of the bench's 1.36B Llama spent
# 2.0-2.1 sys-s against 2.8-2.9 (docs/bench/round3.md). The user's setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import click  # noqa: E402

from reinit.cli.apply_cmd import apply  # noqa: E402
from reinit.cli.group import ReinitGroup  # noqa: E402
from reinit.cli.info_cmds import gain, schemes  # noqa: E402
from reinit.cli.new_cmd import new  # noqa: E402
from reinit.cli.probe_cmd import probe  # noqa: E402
from reinit.cli.report_cmds import diff, inspect, report, verify  # noqa: E402
from reinit.cli.run_cmd import run  # noqa: E402
from reinit.version import __version__  # noqa: E402

__all__ = ["main"]


@click.group(cls=ReinitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reinit")
def main() -> None:
    """Model surgery for checkpoints: re-initialize or transplant parameters by name pattern,
    and see every layer's scale at a glance."""
    _no_collection_at_exit()


def _no_collection_at_exit() -> None:
    """At exit the interpreter would run one last garbage collection over every object torch
    and transformers made (a CPU-second for `reinit new`); objects still alive then are freed
    with the process anyway, so they are frozen out of it (`gc.freeze`). Once per process."""
    global _EXIT_HOOKED
    if not _EXIT_HOOKED:
        atexit.register(gc.freeze)
        _EXIT_HOOKED = True


_EXIT_HOOKED = False


main.add_command(apply)
main.add_command(new)
main.add_command(report)
main.add_command(diff)
main.add_command(verify)
main.add_command(inspect)
main.add_command(schemes)
main.add_command(gain)
main.add_command(probe)
main.add_command(run)
