"""What a plan can do to a tensor, without torch (the report reads these too)."""

from __future__ import annotations

__all__ = ["ACTIONS", "CHANGING_ACTIONS", "action_changes"]

ACTIONS = ("kept", "reinit", "transplant", "skipped")
CHANGING_ACTIONS = ("reinit", "transplant")  # the actions that give a tensor new values


def action_changes(action: str) -> bool:
    """Whether an action (of a plan entry or a report entry) writes new values: the one
    definition behind `PlanEntry.changes` and `TensorEntry.changes`."""
    return action in CHANGING_ACTIONS
