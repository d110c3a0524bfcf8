"""`default` for a tensor of a torch parametrization (`torch.nn.utils.parametrize`), such as
`weight_norm`'s `conv.parametrizations.weight.original0` (g) and `original1` (v) of Wav2Vec2's,
HuBERT's and WavLM's positional convolution.

Once a module's weight is parametrized, `module.weight` is computed from the originals on
every read, so every init that runs after the constructor (the module's `reset_parameters`
called again, the model's `_init_weights`) writes into that computed tensor and changes
nothing: the originals keep what the constructor gave them, the parametrization's
`right_inverse` of the weight the module's own `reset_parameters` drew before the
parametrization was registered. That is what `from_config` holds and what this computes.

Imported where a model is used (it reads torch at call time only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from reinit.planning.init_trace import AppliedInit, InitTrace, applied_init

if TYPE_CHECKING:
    from torch import nn

__all__ = ["construct_originals", "draw_key"]

_MARK = ".parametrizations."


def draw_key(root: nn.Module, path: str, attr: str) -> str | None:
    """The name one parametrization's originals are all drawn under: its module's weight
    (`conv.weight` for `conv.parametrizations.weight.original0` and `original1`), so they
    come from one draw, weight_norm's g the norms of its v, as the constructor makes them
    (each seeded by its own name, g held the norms of another draw than v); None for any
    other tensor."""
    from torch.nn.utils import parametrize

    if _MARK not in f".{path}" or not attr.startswith("original"):
        return None
    if not isinstance(root.get_submodule(path), parametrize.ParametrizationList):
        return None
    host_path, _, tensor_name = f".{path}".rpartition(_MARK)
    return f"{host_path}.{tensor_name}".lstrip(".")


def construct_originals(
    root: nn.Module, path: str, plist: nn.Module, attr: str
) -> AppliedInit | None:
    """Fill `plist` (a real copy of the `ParametrizationList` at `path` of `root`) with the
    originals the constructor gives them, drawn on the RNG in effect, and say what ran for
    its tensor `attr`; None (nothing filled) when `plist` is no parametrization or its
    module has no `reset_parameters` to draw the weight with."""
    from torch.nn.utils import parametrize

    if not isinstance(plist, parametrize.ParametrizationList) or _MARK not in f".{path}":
        return None
    host_path, _, tensor_name = f".{path}".rpartition(_MARK)
    host = root.get_submodule(host_path.lstrip("."))
    weight, drawn = _drawn_plain(host, tensor_name)
    if drawn is None:
        return None
    values: object = weight
    for step in reversed(list(plist)):
        inverse = getattr(step, "right_inverse", None)
        values = inverse(values) if callable(inverse) else values
    outs = (values,) if plist.is_tensor else tuple(values)  # type: ignore[arg-type]
    said = None
    for i, value in enumerate(outs):
        name = "original" if plist.is_tensor else f"original{i}"
        if not isinstance(value, torch.Tensor):  # no tensor to fill the original with
            return None
        getattr(plist, name).copy_(value)
        if name == attr:
            said = _said(drawn, value is weight, type(list(plist)[0]).__name__)
    return said


def _drawn_plain(host: nn.Module, tensor_name: str) -> tuple[torch.Tensor, AppliedInit | None]:
    """The weight `host`'s own `reset_parameters` draws, on a plain (unparametrized) view of
    it, and what ran (None if nothing set all of it)."""
    with torch.no_grad():
        shape = tuple(getattr(host, tensor_name).shape)  # computed on the meta device
    plain = _unparametrized(host)
    weight = torch.full(shape, float("nan"))
    plain._parameters[tensor_name] = torch.nn.Parameter(weight, requires_grad=False)
    reset = getattr(plain, "reset_parameters", None)
    if not callable(reset):
        return weight, None
    with InitTrace(weight) as trace:
        trace.phase = f"{type(plain).__name__}.reset_parameters"
        reset()
    return weight, applied_init(trace.calls, shape)


def _unparametrized(host: nn.Module) -> nn.Module:
    """A shallow view of the parametrized `host` as its own class, before `parametrize` put
    its class (`ParametrizedConv1d`, shared with the model) over it: its tensor and module
    tables copied, its parametrizations left out. (A parametrized module cannot be copied:
    torch refuses to serialize one, and removing its parametrization would change the class
    the model's module shares.)"""
    own: type[nn.Module] = type(host).__bases__[0]
    plain = own.__new__(own)
    plain.__dict__.update(host.__dict__)
    plain._parameters, plain._buffers = meta_tables(host)
    plain._modules = {k: v for k, v in host._modules.items() if k != "parametrizations"}
    return plain


def on_meta(t: torch.Tensor) -> torch.Tensor:
    """`t` as a meta tensor of its shape and dtype (a Parameter stays a Parameter), no data
    copied: what an init given a copy of a module to run on may write into, when the module
    is a user's live one (`apply_to_module`, `model=module`) and not a skeleton on meta."""
    if t.device.type == "meta":
        return t
    meta = t.detach().to("meta")
    return torch.nn.Parameter(meta, t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta


def meta_tables(
    module: nn.Module,
) -> tuple[dict[str, torch.nn.Parameter | None], dict[str, torch.Tensor | None]]:
    """Copies of `module`'s parameter and buffer tables, every tensor `on_meta`."""
    params = {
        k: p
        if p is None or p.device.type == "meta"
        else torch.nn.Parameter(on_meta(p), p.requires_grad)
        for k, p in module._parameters.items()
    }
    buffers = {k: None if b is None else on_meta(b) for k, b in module._buffers.items()}
    return params, buffers


def _said(drawn: AppliedInit, same: bool, how: str) -> AppliedInit:
    """What ran for one original: the draw itself where it is the weight (weight_norm's v),
    else the draw then the parametrization's `right_inverse` (weight_norm's g, the norms)."""
    if same:
        return drawn
    return AppliedInit(f"{drawn.description}, then {how}.right_inverse", None)
