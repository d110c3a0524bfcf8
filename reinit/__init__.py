"""reinit: model surgery for checkpoints.

Match parameters by name pattern and re-initialize them with a chosen scheme or transplant
pretrained weights into them; write a new checkpoint and a per-layer std report.

    >>> import reinit
    >>> report = reinit.apply("model.safetensors", ["*.weight=kaiming"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reinit.errors import (
    CheckpointError,
    HubError,
    OutputError,
    RankError,
    ReinitError,
    RuleError,
    SchemeError,
    StrictError,
    TransplantError,
    UsageError,
    WriteError,
)
from reinit.version import __version__

# The public names live in modules that import torch (about 2 s). They are imported on first
# use (PEP 562), so `reinit --help` and `reinit --version` answer at once (0.15 s, not 2.8 s
# measured) without torch. `from reinit import apply` works as before.
_LAZY = {
    "diff_checkpoints": "reinit.tools.diff",
    "apply": "reinit.run.apply",
    "apply_split": "reinit.run.torchrun",
    "new_split": "reinit.run.torchrun",
    "new": "reinit.run.new",
    "plan_new": "reinit.run.new",
    "plan": "reinit.planning.session",
    "report_checkpoint": "reinit.tools.audit",
    "apply_to_module": "reinit.run.inmemory",
    "apply_to_state_dict": "reinit.run.inmemory",
    "Checkpoint": "reinit.io.checkpoint",
    "StateDictCheckpoint": "reinit.io.memory",
    "open_checkpoint": "reinit.io.sources",
    "Recipe": "reinit.recipe.validate",
    "load_recipe": "reinit.recipe.validate",
    "run_recipe": "reinit.recipe.run",
    "plan_recipe": "reinit.recipe.run",
    "ApplyOptions": "reinit.options",
    "Report": "reinit.report.entries",
    "Stats": "reinit.report.stats",
    "TensorEntry": "reinit.report.entries",
    "Plan": "reinit.planning.planner",
    "PlanEntry": "reinit.planning.planner",
    "Rule": "reinit.rules",
    "parse_rule": "reinit.rules",
    "SCHEMES": "reinit.schemes",
    "calculate_gain": "reinit.schemes",
    "seed_for": "reinit.schemes",
    "forward_check": "reinit.tools.forward",
    "ForwardResult": "reinit.tools.forward",
}

if TYPE_CHECKING:
    from reinit.io.checkpoint import Checkpoint
    from reinit.io.memory import StateDictCheckpoint
    from reinit.io.sources import open_checkpoint
    from reinit.options import ApplyOptions
    from reinit.planning.planner import Plan, PlanEntry
    from reinit.planning.session import plan
    from reinit.recipe.run import plan_recipe, run_recipe
    from reinit.recipe.validate import Recipe, load_recipe
    from reinit.report.entries import Report, TensorEntry
    from reinit.report.stats import Stats
    from reinit.rules import Rule, parse_rule
    from reinit.run.apply import apply
    from reinit.run.inmemory import apply_to_module, apply_to_state_dict
    from reinit.run.new import new, plan_new
    from reinit.run.torchrun import apply_split, new_split
    from reinit.schemes import SCHEMES, calculate_gain, seed_for
    from reinit.tools.audit import report_checkpoint
    from reinit.tools.diff import diff_checkpoints
    from reinit.tools.forward import ForwardResult, forward_check


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)  # reviewed: own literal table
    else:
        try:  # a submodule not imported yet (`reinit.run.apply`), as an eager package allowed
            value = importlib.import_module(f"{__name__}.{name}")  # reviewed: a reinit submodule
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists but needs something missing: say that
            raise AttributeError(f"module 'reinit' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Only the API: not this module's own helpers (`importlib`, `Any`, ...) nor the
    submodules, which are not API (a name outside `__all__` may change without notice)."""
    return sorted(__all__)


__all__ = [
    "__version__",
    "apply",
    "apply_split",
    "apply_to_module",
    "apply_to_state_dict",
    "new",
    "new_split",
    "plan_new",
    "load_recipe",
    "run_recipe",
    "plan_recipe",
    "ApplyOptions",
    "Recipe",
    "StateDictCheckpoint",
    "plan",
    "report_checkpoint",
    "diff_checkpoints",
    "forward_check",
    "ForwardResult",
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
    "RankError",
    "CheckpointError",
    "HubError",
    "TransplantError",
    "WriteError",
]
