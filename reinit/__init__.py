"""reinit: model surgery for checkpoints.

Match parameters by name pattern and re-initialize them with a chosen scheme or transplant
pretrained weights into them; write a new checkpoint and a per-layer std report.

    >>> import reinit
    >>> report = reinit.apply("model.safetensors", ["*.weight=kaiming"])  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from reinit.diff import diff_checkpoints  # noqa: E402
from reinit.engine import apply, plan, report_checkpoint  # noqa: E402
from reinit.errors import (  # noqa: E402
    CheckpointError,
    HubError,
    OutputError,
    ReinitError,
    RuleError,
    SchemeError,
    StrictError,
    TransplantError,
    UsageError,
    WriteError,
)
from reinit.io.readers import Checkpoint, open_checkpoint  # noqa: E402
from reinit.report import Report, Stats, TensorEntry  # noqa: E402
from reinit.rules import Plan, PlanEntry, Rule, parse_rule  # noqa: E402
from reinit.schemes import SCHEMES, calculate_gain, seed_for  # noqa: E402

__all__ = [
    "__version__",
    "apply",
    "plan",
    "report_checkpoint",
    "diff_checkpoints",
    "open_checkpoint",
    "parse_rule",
    "calculate_gain",
    "seed_for",
    "SCHEMES",
    "Checkpoint",
    "Plan",
    "PlanEntry",
    "Rule",
    "Report",
    "Stats",
    "TensorEntry",
    "ReinitError",
    "UsageError",
    "RuleError",
    "SchemeError",
    "StrictError",
    "OutputError",
    "CheckpointError",
    "HubError",
    "TransplantError",
    "WriteError",
]
