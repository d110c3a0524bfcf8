"""`reinit verify OUTPUT --forward`: load a written checkpoint into its architecture, run fixed
seeded inputs, and measure the per-layer activation std and (with a reference) how far the
outputs moved: the check that surgery kept the function it meant to keep (docs/guide/model-awareness.md).

Why a module of its own: `probe` asks "is the signal healthy after these rules?" on a model it
builds; this asks "does this *file* compute what the source computed?", so it needs a second
model, inputs valid for both, and a distance between outputs. The hooks, the weight loading and
the model building are probe's and model_load's, reused."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reinit.errors import UsageError
from reinit.io.sources import open_checkpoint, source_text
from reinit.planning.model_load import build_real, load_model
from reinit.planning.model_size import check_model_fits
from reinit.report.jsonio import dumps
from reinit.tools.forward_compare import (
    DIVERGENCE,
    LayerDiff,
    LogitStats,
    first_divergent,
    hidden_diff,
    layer_diffs,
    logit_stats,
)
from reinit.tools.probe import LayerSignal, call_model, load_weights, run_pass

__all__ = ["ForwardError", "ForwardResult", "forward_check", "forward_inputs", "output_distance"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH, SEQ, IMAGE = 2, 16, 32  # the fixed input shape: (2, 16) token ids, (2, C, 32, 32) images


class ForwardError(UsageError):
    """The output cannot be run (no architecture, no transformers, inputs of no known kind,
    outputs that cannot be compared): a usage error, exit 2."""


@dataclass(frozen=True)
class ForwardResult:
    """What `forward_check` measured. `layers`: every leaf module's output std, in call order
    (the probe's hooks; `grad_std` is the probe's backward pass and is not shown by the CLI).
    With `against`: `max_abs_diff` over the compared outputs and `kl`, the mean over positions
    of KL(P_against || P_output) in nats (from the narrower side when the class counts differ),
    P = softmax over the last dim (see `output_distance`)."""

    output: str
    model: str
    against: str | None
    against_model: str | None
    inputs: str
    seed: int
    layers: tuple[LayerSignal, ...]
    output_name: str
    output_shape: tuple[int, ...]
    output_std: float | None
    against_shape: tuple[int, ...] | None = None
    max_abs_diff: float | None = None
    kl: float | None = None
    positions: int | None = None
    compared_classes: int | None = None
    compared: str | None = None  # "logits", "hidden states" or "shared trunk" (heads differ)
    logits: LogitStats | None = None
    output_diff: LayerDiff | None = None  # a hidden-state output (no KL over hidden features)
    hidden: tuple[LayerDiff, ...] = ()
    first_divergent_layer: str | None = None

    @property
    def min_cosine(self) -> float | None:
        """The lowest cosine over the compared layers and a hidden-state output."""
        values = [d.cosine for d in self.hidden]
        values += [self.output_diff.cosine] if self.output_diff is not None else []
        return min(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "model": self.model,
            "against": self.against,
            "against_model": self.against_model,
            "inputs": self.inputs,
            "seed": self.seed,
            "layers": [{"name": s.name, "type": s.type, "act_std": s.act_std} for s in self.layers],
            "output_name": self.output_name,
            "output_shape": list(self.output_shape),
            "output_std": self.output_std,
            "against_shape": None if self.against_shape is None else list(self.against_shape),
            "max_abs_diff": self.max_abs_diff,
            "kl": self.kl,
            "positions": self.positions,
            "compared_classes": self.compared_classes,
            "compared": self.compared,
            "kl_stats": None if self.logits is None else asdict(self.logits),
            "output_diff": None if self.output_diff is None else self.output_diff.to_dict(),
            "hidden_states": [d.to_dict() for d in self.hidden],
            "first_divergent_layer": self.first_divergent_layer,
            "divergence_threshold": DIVERGENCE,
            "min_cosine": self.min_cosine,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)


def _config_dir(path: str) -> str | None:
    """The Hugging Face directory that describes `path`: itself, or a single file's folder,
    when it holds config.json."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    return str(d) if (d / "config.json").is_file() else None


def _require_transformers(path: str) -> None:
    try:
        importlib.import_module("transformers")  # reviewed: a fixed name
    except ImportError:
        raise ForwardError(
            f"verify --forward {path}: building the model from its config.json needs "
            "transformers: pip install 'reinit[hf]' (or pass --model module:callable)"
        ) from None


def _spec_for(path: str, model: str | None, what: str) -> str:
    """The model spec that builds `path`'s architecture: --model, else its config.json."""
    if model is not None:
        return model
    found = _config_dir(path)
    if found is None:
        raise ForwardError(
            f"verify --forward: {what} {path} has no config.json (in its directory or beside "
            "it); pass --model module:callable to name its architecture"
        )
    _require_transformers(path)
    return found


def _loaded(module: nn.Module, checkpoint: str) -> nn.Module:
    """`checkpoint`'s weights in `module` (eval mode). A model tensor the checkpoint lacks would
    keep its random init and make the check meaningless: refused, unless it shares storage with a
    loaded one (tied embeddings, which save_pretrained writes once)."""
    load_weights(module, checkpoint)
    with open_checkpoint(checkpoint) as ckpt:
        view = load_model(module).align(ckpt.names())
        sites = (view.site(n) for n in view.names)
        loaded = {s.name for s in sites if s is not None}
    state = module.state_dict(keep_vars=True)
    ptrs = {state[n].data_ptr() for n in loaded if n in state}
    missing = [
        n
        for n, t in module.named_parameters(remove_duplicate=False)
        if n not in loaded and t.data_ptr() not in ptrs
    ]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ForwardError(
            f"verify --forward: {checkpoint} lacks {len(missing)} of the model's parameters "
            f"({', '.join(missing[:3])}{more}); pass --model with the architecture it was "
            "written for"
        )
    return module.eval()


def _vocab(module: nn.Module) -> int | None:
    config = getattr(module, "config", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0) if config is not None else 0
    if vocab > 0:
        return vocab
    first = next((m for m in module.modules() if not any(True for _ in m.children())), None)
    return first.num_embeddings if isinstance(first, nn.Embedding) else None


def _max_positions(module: nn.Module) -> int | None:
    config = getattr(module, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        n = getattr(config, key, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def forward_inputs(
    modules: list[nn.Module], seed: int
) -> tuple[dict[str, torch.Tensor] | torch.Tensor, str]:
    """One fixed seeded input valid for every module given: token ids in [0, smallest vocab)
    when the first has a vocabulary (config `vocab_size`, or an Embedding as first leaf),
    else N(0,1) images (config `num_channels`/`image_size`, or the first conv's in_channels)."""
    g = torch.Generator().manual_seed(seed)
    first = modules[0]
    vocabs = [_vocab(m) for m in modules]
    if vocabs[0] is not None:
        vocab = min(v for v in vocabs if v is not None)
        seq = min([SEQ] + [p for p in map(_max_positions, modules) if p is not None])
        ids = torch.randint(0, vocab, (BATCH, seq), generator=g)
        text = f"token ids [{BATCH}, {seq}] uniform in [0, {vocab})"
        return ({"input_ids": ids} if hasattr(first, "config") else ids), text
    config = getattr(first, "config", None)
    if getattr(first, "main_input_name", None) == "pixel_values" and config is not None:
        size = getattr(config, "image_size", IMAGE)
        size = size if isinstance(size, int) else IMAGE
        shape: tuple[int, ...] = (BATCH, int(getattr(config, "num_channels", 3)), size, size)
        x = torch.randn(shape, generator=g)
        return {"pixel_values": x}, f"N(0,1) images {list(shape)}"
    conv = next((m for m in first.modules() if isinstance(m, _CONVS)), None)
    if conv is not None:
        spatial = (IMAGE,) * (conv.weight.dim() - 2)
        shape = (BATCH, conv.in_channels, *spatial)
        return torch.randn(shape, generator=g), f"N(0,1) images {list(shape)}"
    lin = next((m for m in first.modules() if isinstance(m, nn.Linear)), None)
    if lin is not None:
        shape = (BATCH, lin.in_features)
        return torch.randn(shape, generator=g), f"N(0,1) {list(shape)}"
    raise ForwardError(
        f"verify --forward: cannot choose inputs for {type(first).__name__} (no vocab_size, "
        "Embedding, conv or Linear); check it with `reinit probe --input-shape` instead"
    )


def _main_output(out: object) -> tuple[str, torch.Tensor]:
    """The output compared: a tensor as it is, else the first tensor of a dict (a transformers
    ModelOutput: `logits`, or `last_hidden_state`) or tuple."""
    if isinstance(out, torch.Tensor):
        return "output", out
    items: list[tuple[object, object]] = []
    if isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, (tuple, list)):
        items = list(enumerate(out))
    for key, value in items:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return (key if isinstance(key, str) else f"output[{key}]"), value
    raise ForwardError("verify --forward: the model returned no floating-point tensor")


Hidden = tuple[torch.Tensor, ...]


def _blocks(module: nn.Module) -> nn.ModuleList | None:
    """The model's stack of blocks: its ModuleList of modules of one class that holds the most
    parameters (the layers, not the experts inside one)."""
    lists = [
        m for m in module.modules()
        if isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1
    ]  # fmt: skip
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()), default=None)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, a NaN equal to a NaN (the same computation gives the same NaNs)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


class _AfterBlocks:
    """Forward hooks that keep the last block's output and, after it, each module's output of
    the same shape (in call order): what tells a final norm from the last block."""

    def __init__(self, module: nn.Module) -> None:
        self.last: torch.Tensor | None = None
        self.after: list[tuple[str, torch.Tensor]] = []
        blocks = _blocks(module)
        self.count = len(blocks) if blocks is not None else 0
        inside = {id(m) for m in blocks.modules()} if blocks is not None else set()
        self.handles = [blocks[-1].register_forward_hook(self._block)] if blocks else []
        self.handles += [
            m.register_forward_hook(self._hook(name))
            for name, m in module.named_modules()
            if name and id(m) not in inside
        ]

    def _block(self, _m: nn.Module, _i: object, out: object) -> None:
        self.last, self.after = _first_tensor(out), []

    def _hook(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def keep(_m: nn.Module, _i: object, out: object) -> None:
            t = _first_tensor(out)
            if self.last is not None and t is not None and t.shape == self.last.shape:
                self.after.append((name, t))

        return keep

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def named(self, hidden: Hidden) -> tuple[Hidden, tuple[str, ...]]:
        """The hidden states and their layer names. Where the last state is not the last
        block's output (Llama's, GPT-2's: the final norm applied), that output is block L-1's
        state, and the last is named by the module that made it (`model.norm`)."""
        names = ("embeddings", *(str(i) for i in range(len(hidden) - 1)))
        last = self.last
        if not hidden or last is None or self.count != len(hidden) - 1:
            return hidden, names
        last = last.detach().to(torch.float64)
        if _same(last, hidden[-1]):
            return hidden, names
        made = [n for n, t in self.after if _same(t.detach().to(torch.float64), hidden[-1])]
        return (*hidden[:-1], last, hidden[-1]), (*names, made[0] if made else "final norm")


def _run(
    module: nn.Module, inputs: dict[str, torch.Tensor] | torch.Tensor
) -> tuple[str, torch.Tensor, Hidden, tuple[str, ...]]:
    """The main output (name, values) and, for a transformers model, its hidden states (the
    embeddings' output, then each block's, then a final norm's where the model applies one to
    its last state) with their layer names."""
    hidden_on = {"output_hidden_states": True} if hasattr(module, "config") else {}
    hooks = _AfterBlocks(module)
    try:
        with torch.no_grad():
            out = call_model(module, inputs, **hidden_on)
    finally:
        hooks.close()
    name, t = _main_output(out)
    states = out.get("hidden_states") if isinstance(out, dict) else None
    hidden = tuple(h.detach().to(torch.float64) for h in states or () if torch.is_tensor(h))
    hidden, names = hooks.named(hidden)
    return name, t.detach().to(torch.float64), hidden, names


LOGIT_NAMES = ("logits", "output", "prediction_logits")  # a plain module's output is its logits


def _compared(
    result: ForwardResult, name: str, y: torch.Tensor, hidden: Hidden,
    ref_name: str, y_ref: torch.Tensor, ref_hidden: Hidden, names: tuple[str, ...],
    other_head: bool = False,
) -> ForwardResult:  # fmt: skip
    """`result` with what the two runs' outputs say: KL statistics for logits, cosine and
    relative error for a hidden-state output, each layer's hidden states when both have them;
    when the heads differ (a new-head classifier against its encoder; `other_head`: another
    task's head, a token classifier against a masked LM), the shared trunk only."""
    diffs = layer_diffs(ref_hidden, hidden, names)
    result = replace(
        result, against_shape=tuple(y_ref.shape), hidden=diffs,
        first_divergent_layer=first_divergent(diffs),
    )  # fmt: skip
    if other_head or (name in LOGIT_NAMES) != (ref_name in LOGIT_NAMES):  # not one output
        if not diffs:
            raise ForwardError(
                f"verify --forward: {name} {list(y.shape)} and {ref_name} {list(y_ref.shape)} "
                "(against) are different outputs; they cannot be compared"
            )
        return replace(result, compared="shared trunk")
    if y_ref.shape[:-1] != y.shape[:-1] or y.dim() == 0:
        if not diffs:
            output_distance(y_ref, y)  # raises: the outputs cannot be compared
        return replace(result, compared="shared trunk")
    n = min(y_ref.shape[-1], y.shape[-1])
    diff = float((y_ref[..., :n] - y[..., :n]).abs().max()) if y.numel() else 0.0
    result = replace(result, max_abs_diff=diff, compared_classes=n)
    if name in LOGIT_NAMES and ref_name in LOGIT_NAMES:
        stats = logit_stats(y_ref, y)
        return replace(
            result, compared="logits", logits=stats, kl=stats.kl_mean, positions=stats.positions
        )
    if y_ref.shape != y.shape:
        return replace(result, compared="hidden states")
    return replace(result, compared="hidden states", output_diff=hidden_diff(name, y_ref, y))


def output_distance(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float, int, int]:
    """(max |Δ|, KL in nats, positions, classes compared). Positions are every index but the
    last; the last dim is the class axis. When the class counts differ (a grown vocabulary or
    head), the first n = min(…) classes are compared for |Δ| and the narrower distribution counts
    as zero on the extra classes: KL(P_narrow || P_wide) = Σ_{i<n} p_i·(log p_i − log q_i),
    which for a grown vocabulary is −log(1 − mass the new tokens take). Identical logits give
    exactly 0."""
    if ref.shape[:-1] != out.shape[:-1] or ref.dim() == 0:
        raise ForwardError(
            f"verify --forward: outputs of shape {list(out.shape)} and {list(ref.shape)} "
            "(against) differ beyond the last dim; they cannot be compared"
        )
    n = min(ref.shape[-1], out.shape[-1])
    diff = float((ref[..., :n] - out[..., :n]).abs().max()) if ref.numel() else 0.0
    narrow, wide = (ref, out) if ref.shape[-1] <= out.shape[-1] else (out, ref)
    logp = torch.log_softmax(narrow, dim=-1)
    logq = torch.log_softmax(wide, dim=-1)[..., : narrow.shape[-1]]
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    per_position = terms.sum(-1).reshape(-1)
    kl = max(float(per_position.mean()), 0.0)  # rounding can give -1e-17 for equal inputs
    return diff, kl, per_position.numel(), n


def _std(t: torch.Tensor) -> float | None:
    return float(t.std(correction=0)) if t.numel() > 1 else None


def forward_check(
    output: str | os.PathLike[str],
    against: str | os.PathLike[str] | None = None,
    model: str | None = None,
    seed: int = 0,
) -> ForwardResult:
    """Load `output` into its architecture (`model`, a `module:callable` or model directory
    spec, else the config.json of its directory), run fixed inputs drawn from `seed`, and
    measure per-layer activation std; with `against`, load that checkpoint into its own
    architecture (its config.json, else the same as `output`'s) and compare the outputs."""
    out_path = source_text(output)
    spec = _spec_for(out_path, model, "OUTPUT")
    check_model_fits(spec, "verify --forward")
    module = _loaded(build_real(spec, seed), out_path)
    modules = [module]
    ref_path = ref_spec = None
    ref_module = None
    if against is not None:
        ref_path = os.fspath(against)
        ref_dir = _config_dir(ref_path) if model is None else None
        ref_spec = ref_dir if ref_dir is not None else spec
        if ref_dir is not None:
            _require_transformers(ref_path)
        check_model_fits(ref_spec, "verify --forward")
        ref_module = _loaded(build_real(ref_spec, seed), ref_path)
        modules.append(ref_module)
    inputs, described = forward_inputs(modules, seed)
    signal = run_pass(module, inputs, seed)
    name, y, hidden, names = _run(module, inputs)
    result = ForwardResult(
        out_path, spec, ref_path, ref_spec, described, seed, signal.layers, name,
        tuple(y.shape), _std(y),
    )  # fmt: skip
    if ref_module is None:
        return result
    ref_name, y_ref, ref_hidden, _ = _run(ref_module, inputs)
    # another class of model with another class count: another head (BertForTokenClassification
    # against BertForMaskedLM), not a grown one (a vocabulary growth keeps the model's class)
    other_head = type(module) is not type(ref_module) and y.shape[-1:] != y_ref.shape[-1:]
    return _compared(result, name, y, hidden, ref_name, y_ref, ref_hidden, names, other_head)
