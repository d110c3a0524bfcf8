"""`default`: each tensor gets its architecture's own initialization.

It is a scheme in the registry (so rules parse, `reinit schemes` lists it, and the planner can
say when a tensor cannot take it), but its values come from the model (`reinit.planning.model`), not
from a fill function: the engine hands `default` entries to the model."""

from __future__ import annotations

import torch

from reinit.errors import SchemeError
from reinit.schemes.base import Args, Scheme

__all__ = ["DEFAULT", "DEFAULT_SCHEMES"]

DEFAULT = "default"


def _needs_model(t: torch.Tensor, g: torch.Generator, args: Args) -> None:
    raise SchemeError("the scheme default needs a model (--model); its values come from the model")


DEFAULT_SCHEMES: tuple[Scheme, ...] = (
    Scheme(
        DEFAULT,
        (),
        _needs_model,
        lambda shape, args: None,
        "that of the architecture's init",
        "the architecture's own init (transformers' _init_weights or torch's reset_parameters), "
        "seeded per tensor; needs --model",
    ),
)
