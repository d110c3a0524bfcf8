"""`reinit probe`: a forward and backward pass through the model with fixed seeded inputs,
per-layer activation and gradient std, before and after the rules."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from reinit.errors import UsageError
from reinit.io.formats import holds_weights
from reinit.io.memory import StateDictCheckpoint
from reinit.io.sources import open_checkpoint
from reinit.limits import available_memory
from reinit.planning.model import ModelError
from reinit.planning.model_load import build_real, load_model
from reinit.planning.model_size import check_model_fits
from reinit.planning.planner import Plan
from reinit.planning.session import model_view
from reinit.report.jsonio import dumps
from reinit.rules import Rule, parse_rules
from reinit.run.inmemory import module_config, run_in_memory, write_back
from reinit.text import shown

__all__ = [
    "call_model",
    "STABLE_FACTOR",
    "LayerSignal",
    "ProbePass",
    "ProbeResult",
    "apply_rules_in_memory",
    "is_positive",
    "load_weights",
    "make_inputs",
    "parse_shape",
    "per_layer_factor",
    "probe",
    "run_pass",
    "verdict",
]


STABLE_FACTOR = 2.0  # per weighted layer, in std: variance ×4 (the report's unstable_depth)


_SKIP_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


@dataclass(frozen=True)
class LayerSignal:
    """One leaf module's output, in call order: its std forward and its gradient's backward."""

    name: str
    type: str
    act_std: float | None
    grad_std: float | None
    weighted: bool  # owns a ≥2-D parameter (Linear, Conv, Embedding, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_layer_factor(ratio: float | None, depth: int) -> float | None:
    """The geometric-mean factor per weighted layer, growth^(1/(depth−1)): a whole-net
    ratio says little until it is spread over the depth that produced it."""
    if ratio is None or ratio <= 0 or not math.isfinite(ratio):
        return None if ratio is None or ratio < 0 or math.isnan(ratio) else ratio
    return ratio ** (1.0 / max(1, depth - 1))


def verdict(per_layer: float | None) -> str:
    """`exploding` / `vanishing` when the std changes by more than ×2 per weighted layer on
    average (variance ×4: the report's unstable_depth threshold), else `stable`."""
    if per_layer is None:
        return "unknown"
    if per_layer == math.inf or per_layer > STABLE_FACTOR:
        return "exploding"
    if per_layer < 1.0 / STABLE_FACTOR:
        return "vanishing"
    return "stable"


@dataclass(frozen=True)
class ProbePass:
    """One forward+backward pass. `act_growth` = std of the last weighted layer's output over
    the first's; `grad_growth` = gradient std at the first weighted layer's output over the
    last's (gradients grow toward the input when they explode). `*per_layer_factor` is the geometric
    mean factor per weighted layer: growth^(1/(depth−1))."""

    layers: tuple[LayerSignal, ...]
    output_std: float | None

    @property
    def depth(self) -> int:
        return sum(1 for layer in self.layers if layer.weighted)

    def _ends(self, attr: str) -> tuple[float | None, float | None]:
        """The first and last weighted layers' values (like is compared with like: a ReLU's
        output has a smaller std than the Linear's before it); all layers if none is weighted."""
        chosen = [layer for layer in self.layers if layer.weighted] or list(self.layers)
        values = [getattr(layer, attr) for layer in chosen if getattr(layer, attr) is not None]
        return (values[0], values[-1]) if values else (None, None)

    @property
    def act_growth(self) -> float | None:
        first, last = self._ends("act_std")
        return _ratio(last, first)

    @property
    def grad_growth(self) -> float | None:
        first, last = self._ends("grad_std")
        return _ratio(first, last)

    @property
    def act_verdict(self) -> str:
        return verdict(per_layer_factor(self.act_growth, self.depth))

    @property
    def grad_verdict(self) -> str:
        return verdict(per_layer_factor(self.grad_growth, self.depth))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "output_std": self.output_std,
            "depth": self.depth,
            "act_growth": _finite(self.act_growth),
            "act_per_layer": _finite(per_layer_factor(self.act_growth, self.depth)),
            "activations": self.act_verdict,
            "grad_growth": _finite(self.grad_growth),
            "grad_per_layer": _finite(per_layer_factor(self.grad_growth, self.depth)),
            "gradients": self.grad_verdict,
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return math.inf if (a is not None and not math.isfinite(a)) else None
    if b == 0:
        return math.inf if a > 0 else None
    return a / b


def _finite(x: float | None) -> float | str | None:
    """JSON has no Infinity: non-finite numbers are written as strings."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


@dataclass(frozen=True)
class ProbeResult:
    """Both passes of one probe, with what was fed and the rules applied between them (the
    `--json` output)."""

    model: str
    input: str  # what was fed, e.g. "N(0,1) [256, 64]" or "token ids [2, 16] < 30522"
    seed: int
    rules: tuple[str, ...]
    before: ProbePass
    after: ProbePass | None
    checkpoint: str | None = None
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "input": self.input,
            "seed": self.seed,
            "rules": list(self.rules),
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)


def parse_shape(text: str) -> tuple[int, ...]:
    """`256,64` or `256x64` or `[256, 64]`."""
    cleaned = text.strip().strip("[]()").replace("x", ",").replace("×", ",")
    try:
        shape = tuple(int(p) for p in cleaned.split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(
            f"--input-shape {text}: write positive sizes separated by commas, e.g. 32,3,224,224"
        )
    return shape


def _check_input_fits(shape: Sequence[int], element_size: int) -> None:
    """Refuse (exit 2, before allocating) an input larger than the memory available: it was
    torch's allocator error, an internal error."""
    need, free = math.prod(shape) * element_size, available_memory()
    if need > free:
        raise UsageError(
            f"--input-shape {','.join(map(str, shape))}: the input alone needs {need:,} bytes, "
            f"more than the {free:,} bytes of memory available; give a smaller shape"
        )


def make_inputs(
    module: nn.Module, input_shape: Sequence[int] | None, seed: int
) -> tuple[dict[str, torch.Tensor] | torch.Tensor, str]:
    """The model's random input and a description of it."""
    g = torch.Generator().manual_seed(seed)
    config = getattr(module, "config", None)
    main = getattr(module, "main_input_name", None) if config is not None else None
    if main == "input_ids":
        shape = tuple(input_shape) if input_shape else (2, 16)
        if len(shape) != 2:
            raise UsageError(
                f"--input-shape {list(shape)}: a token model takes (batch, sequence), e.g. 2,16"
            )
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if vocab <= 0:
            raise UsageError("the model config has no vocab_size; cannot draw token ids")
        _check_input_fits(shape, 8)  # int64 ids
        ids = torch.randint(0, vocab, shape, generator=g)
        return {"input_ids": ids}, f"token ids {list(shape)} uniform in [0, {vocab})"
    if main == "pixel_values" and not input_shape:
        size = getattr(config, "image_size", None)
        channels = getattr(config, "num_channels", 3)
        if isinstance(size, int):
            input_shape = (2, channels, size, size)
    if not input_shape:
        raise UsageError(
            "--input-shape is needed for this model (e.g. --input-shape 32,784 for an MLP, "
            "32,3,224,224 for an image model)"
        )
    _check_input_fits(input_shape, 4)
    x = torch.randn(tuple(input_shape), generator=g)
    if main == "pixel_values":
        return {"pixel_values": x}, f"N(0,1) images {list(input_shape)}"
    return x, f"N(0,1) {list(input_shape)}"


def _first_tensor(out: object) -> torch.Tensor | None:
    """The first tensor in a module's output (a tensor, or one nested in a dict/tuple/list:
    a transformers `ModelOutput` is a dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _std(t: torch.Tensor) -> float | None:
    if not t.is_floating_point() or t.numel() < 2:
        return None
    return float(t.detach().to(torch.float64).std(correction=0))


@dataclass
class _Record:
    """A leaf module's signal while the pass runs (mutable: the backward hook fills `grad`
    after the forward hook made it); frozen into a `LayerSignal` at the end."""

    name: str
    type: str
    act: float | None
    weighted: bool
    grad: float | None = None


Hook = Callable[[nn.Module, tuple[object, ...], object], None]


def run_pass(
    module: nn.Module, inputs: dict[str, torch.Tensor] | torch.Tensor, seed: int
) -> ProbePass:
    """One forward and backward pass with hooks on every leaf module."""
    records: list[_Record] = []
    counts: dict[str, int] = {}
    handles = []

    def hook(name: str, mod: nn.Module) -> Hook:
        weighted = any(p.dim() >= 2 for p in mod.parameters(recurse=False))

        def fwd(_m: nn.Module, _inp: tuple[object, ...], out: object) -> None:
            t = _first_tensor(out)
            if t is None or not t.is_floating_point():
                return
            counts[name] = counts.get(name, 0) + 1
            label = name if counts[name] == 1 else f"{name}[{counts[name]}]"
            rec = _Record(label, type(mod).__name__, _std(t), weighted)
            records.append(rec)
            if t.requires_grad:

                def grad_hook(g: torch.Tensor) -> None:
                    rec.grad = _std(g)

                t.register_hook(grad_hook)

        return fwd

    for name, mod in module.named_modules():
        if any(True for _ in mod.children()) or isinstance(mod, _SKIP_TYPES):
            continue
        handles.append(mod.register_forward_hook(hook(name or "(root)", mod)))
    was_training = module.training
    module.eval()
    try:
        module.zero_grad(set_to_none=True)
        out = call_model(module, inputs)
        y = _first_tensor(out)
        output_std = _std(y) if y is not None else None
        if y is not None and y.requires_grad:
            # torch reads a seed modulo 2**64: the same draw as seed + 1, without its overflow
            g = torch.Generator().manual_seed((seed + 1) % 2**64)
            cot = torch.randn(y.shape, generator=g)
            y.backward(cot.to(y.dtype))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
        module.zero_grad(set_to_none=True)
    layers = tuple(LayerSignal(r.name, r.type, r.act, r.grad, r.weighted) for r in records)
    return ProbePass(layers, output_std)


def call_model(
    module: nn.Module, inputs: dict[str, torch.Tensor] | torch.Tensor, **options: bool
) -> object:
    """`module` on the fixed inputs; a transformers model with no cache (nothing is generated,
    and some configs cannot build one: a Qwen3-Next of linear-attention layers only). A model
    that fails on them (a config it cannot run) is a usage error naming it, not an internal
    one."""
    try:
        if not isinstance(inputs, dict):
            return module(inputs)
        if (
            hasattr(module, "config")
            and "use_cache" in inspect.signature(module.forward).parameters
        ):
            options = {"use_cache": False, **options}
        return module(**inputs, **options)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        raise UsageError(
            f"{type(module).__name__} fails on the fixed inputs ({type(e).__name__}: "
            f"{shown(str(e))[:300]}): the model does not run as configured"
        ) from e


def apply_rules_in_memory(
    module: nn.Module, rules: Sequence[Rule], seed: int, allow_unmatched: bool = False
) -> Plan:
    """Apply rules to a module's own tensors, in place, exactly as `reinit apply --model` would
    write them: the same planning and the same streaming `Applier` (per-tensor seeds, module
    fans, `default`, and schemes that read other values such as `copy(...)` and
    `mean_resize`), by way of `run_in_memory`. Tied parameters stay tied."""
    state = module.state_dict()
    config = module_config(module)
    ckpt = StateDictCheckpoint(state, source=f"<{type(module).__name__}>", config=config)
    run = run_in_memory(
        ckpt,
        rules,
        seed=seed,
        allow_unmatched=allow_unmatched,
        config=config,
        view=model_view(module, ckpt),
    )
    write_back(state, run.tensors, run.report)
    return run.plan


def load_weights(module: nn.Module, checkpoint: str) -> None:
    """Copy a checkpoint's tensors into the module (names aligned as for `--model`; one
    expert's tensor into its slice of a stacked module parameter)."""
    state = module.state_dict(keep_vars=True)
    with open_checkpoint(checkpoint) as ckpt:
        view = load_model(module).align(ckpt.names())
        with torch.no_grad():
            for ck_name in view.names:
                site = view.site(ck_name)
                if site is None or site.name not in state:
                    continue
                src = ckpt.read(ck_name)
                if tuple(src.shape) != site.shape:
                    raise ModelError(
                        f"--checkpoint {checkpoint}: '{ck_name}' is {list(src.shape)} but the "
                        f"model's '{site.name}' is {list(site.shape)}"
                    )
                dst = state[site.name]
                if site.part is not None and site.part.index is not None:
                    dst[site.part.index] = src.to(dst.dtype)
                else:
                    dst.copy_(src.to(dst.dtype))


def _built(model: str, seed: int) -> nn.Module:
    """The model MODEL names, built with real weights; its errors name what the user typed
    (`reinit probe MODEL`), not a `--model` flag that probe does not have."""
    try:
        check_model_fits(model, "probe")
        return build_real(model, seed)
    except ModelError as e:
        text = str(e)
        if not text.startswith("--model "):
            raise
        raise ModelError("reinit probe " + text.removeprefix("--model ")) from None


def probe(
    model: str,
    rules: Sequence[str | Rule] = (),
    *,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
    checkpoint: str | None = None,
    allow_unmatched: bool = False,
    as_built: bool = False,
) -> ProbeResult:
    """Build `model` (see `reinit.planning.model`; real weights as its constructor draws them from
    `seed`, or `checkpoint`'s: a model folder's own weights unless `as_built`), probe it, apply
    `rules` in memory, probe again."""
    rule_objs = tuple(r if isinstance(r, Rule) else parse_rules([r])[0] for r in rules)
    module = _built(model, seed)
    if checkpoint is None and not as_built and holds_weights(model):
        checkpoint = model
    if checkpoint is not None:
        load_weights(module, checkpoint)
    inputs, described = make_inputs(module, input_shape, seed)
    before = run_pass(module, inputs, seed)
    after = None
    warnings: tuple[str, ...] = ()
    if rule_objs:
        p = apply_rules_in_memory(module, rule_objs, seed, allow_unmatched)
        warnings = p.warnings
        after = run_pass(module, inputs, seed)
    return ProbeResult(
        model,
        described,
        seed,
        tuple(r.text for r in rule_objs),
        before,
        after,
        checkpoint,
        warnings,
    )


def is_positive(x: float | None) -> bool:
    """Drawable on a log axis (finite and > 0)."""
    return x is not None and math.isfinite(x) and x > 0
