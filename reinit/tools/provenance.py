"""What a checkpoint written by reinit records about itself: the seed, rules, surgery, kind
of model and steps before in the safetensors metadata's `reinit` key (written by
`run.output.output_metadata`; a DCP's `reinit.json`), its format and reader in `run.record`.

Why: `reinit report new --against old` built its report with seed 0 and no rules, so its
Markdown said `seed: 0, rules: (none)` about a file that records both."""

from __future__ import annotations

__all__ = ["recorded_provenance"]

from reinit.io.checkpoint import Checkpoint
from reinit.run.record import Provenance, recorded


def recorded_provenance(ckpt: Checkpoint) -> Provenance | None:
    """The file's `reinit` metadata, or None when absent or unreadable (a file not written by
    reinit, or one whose metadata was edited into something else)."""
    return recorded(ckpt)
