"""Model awareness: a model's module tree seen through the checkpoint's names (`ModelView`):
module types for `type:` patterns, module fans, and the `default` init."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from reinit.errors import RuleError, SchemeError, UsageError
from reinit.planning.planner import Plan, check_strict
from reinit.schemes import (
    DEFAULT,
    BoundScheme,
    FillContext,
    compute_fans,
    fans_scale,
    generate,
    seed_for,
)

if TYPE_CHECKING:  # the modules that subclass torch's are imported where a model is used
    from torch import nn

    from reinit.planning.ckpt_names import CheckpointSlice
    from reinit.planning.init_trace import AppliedInit, InitTrace

__all__ = [
    "CheckpointTensor",
    "Fans",
    "Model",
    "ModelError",
    "ModelInput",
    "ModelView",
    "TensorSite",
    "align",
    "check_default",
    "default_init",
    "default_value",
    "fans_from_module",
    "module_fans",
    "reinit_value",
    "tied_copies",
]


Fans = tuple[int, int]


class ModelError(UsageError):
    """`--model` names nothing we can build, or a model that does not fit the checkpoint."""


@dataclass(frozen=True)
class TensorSite:
    """Where a tensor lives in the model: its owning module and that module's class names
    (most specific first, e.g. ('NonDynamicallyQuantizableLinear', 'Linear'))."""

    name: str  # the model's own name for it
    module_name: str  # "" for the root
    attr: str
    types: tuple[str, ...]
    shape: tuple[int, ...]
    fans: Fans | None
    is_buffer: bool = False
    # A checkpoint tensor that is a part of the module's tensor (one expert of a stacked
    # `[E, ...]` parameter): how to take it out, and the module tensor's own shape.
    part: CheckpointSlice | None = field(default=None, compare=False)

    @property
    def source_shape(self) -> tuple[int, ...]:
        """The shape of the module tensor the init runs on (`shape` unless a part)."""
        return self.shape if self.part is None else self.part.source_shape


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor of the checkpoint a model saves: its name, shape and dtype as
    `save_pretrained` writes them (tied copies stored once, as transformers stores them)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    # the first checkpoint tensor whose storage save_pretrained writes this one from ("": its
    # own); its split into shards keeps a storage's tensors together (`CheckpointSlice.storage`)
    storage: str = ""


@dataclass(frozen=True)
class Model:
    """A model skeleton on the meta device and what the planner needs from it."""

    spec: str
    module: nn.Module
    kind: str  # "hf" | "torch"
    sites: Mapping[str, TensorSite]  # by the module's names and the checkpoint's
    prefix: str = ""  # transformers' base_model_prefix ("bert"), for name alignment
    checkpoint: tuple[CheckpointTensor, ...] = ()  # what save_pretrained writes, in order
    # the values its constructor gave tensors built on the meta device, where known (CLIP's
    # `logit_scale` from the config), by the module's names: `default` starts from them
    constructed: Mapping[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def all_meta(self) -> bool:
        """Whether every tensor of the module is on the meta device (a model reinit built,
        not a live module handed in): an ancestor's init then runs on the module's own parts
        (`_leading_to` copies none), looked up once rather than once per tensor."""
        tensors = (*self.module.parameters(), *self.module.buffers())
        return all(t.device.type == "meta" for t in tensors)

    def view(self) -> ModelView:
        """The model seen through its own checkpoint's names (for writing that checkpoint)."""
        shapes = {t.name: t.shape for t in self.checkpoint}
        return ModelView(self, {t.name: t.name for t in self.checkpoint}, shapes)

    def align(
        self, names: Sequence[str], shapes: Mapping[str, Sequence[int]] | None = None
    ) -> ModelView:
        return align(self, names, shapes)


@dataclass(frozen=True)
class ModelView:
    """A model seen through one checkpoint's tensor names (which may lack or carry the
    transformers base-model prefix): everything keyed by the checkpoint's name."""

    model: Model
    names: Mapping[str, str]  # checkpoint name -> model name
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # the checkpoint's

    @property
    def module_types(self) -> dict[str, tuple[str, ...]]:
        return {ck: self.model.sites[m].types for ck, m in self.names.items()}

    @property
    def fans(self) -> dict[str, Fans]:
        """Module fans, only where the model's tensor has the checkpoint's shape (a model of
        another size says nothing about this tensor's fans)."""
        out: dict[str, Fans] = {}
        for ck, m in self.names.items():
            site = self.model.sites[m]
            if site.fans is not None and self.shapes.get(ck, site.shape) == site.shape:
                out[ck] = site.fans
        return out

    def why_no_default(self, name: str) -> str | None:
        """Why the `default` scheme cannot give this checkpoint tensor values, or None."""
        site = self.site(name)
        if site is None:
            return "default: not a parameter or buffer of the model, so it has no own init"
        shape = self.shapes.get(name, site.shape)
        if tuple(shape) != site.shape:
            return (
                f"default: the model's '{site.name}' is {list(site.shape)}, the checkpoint's "
                f"{list(shape)}; is --model the checkpoint's configuration?"
            )
        return None

    def site(self, name: str) -> TensorSite | None:
        m = self.names.get(name)
        return self.model.sites[m] if m is not None else None

    def held_elsewhere(self) -> dict[str, str]:
        """The model's tensors that this checkpoint holds under other names, each with where:
        a tied copy (`'lm_head.weight' is tied to 'model.embed_tokens.weight' ...`) or a
        stacked module parameter the checkpoint keeps per expert. For the hint of a rule that
        names them and so matches no checkpoint tensor."""
        by_model = {m: ck for ck, m in self.names.items()}
        parts: dict[str, list[str]] = {}
        for m, site in self.model.sites.items():
            if site.part is not None and m in by_model:
                parts.setdefault(site.part.source, []).append(by_model[m])
        out = {}
        for m, held in parts.items():
            if m not in by_model:
                out[m] = (
                    f"'{m}' is held in the checkpoint as {len(held)} tensors, one per expert "
                    f"({held[0]}, ..., {held[-1]}): name those"
                )
        for m, kept in tied_copies(self.model.module).items():
            if m not in by_model and kept in by_model:
                out[m] = (
                    f"'{m}' is tied to '{by_model[kept]}' (the checkpoint stores it once, under "
                    "that name): a rule on that name sets both"
                )
        return out

    def checkpoint_tensors(self) -> tuple[CheckpointTensor, ...]:
        """Every tensor of the checkpoint this model saves (`save_pretrained`'s names, shapes,
        dtypes, ties and order), whatever checkpoint the view was aligned to. Draw any of them
        with `default_value(model.view(), name, dtype, seed)`."""
        return self.model.checkpoint


def tied_copies(module: nn.Module) -> dict[str, str]:
    """Each parameter name that is another name's parameter (tied), with the first name."""
    first: dict[int, str] = {}
    copies = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        kept = first.setdefault(id(p), name)
        if kept != name:
            copies[name] = kept
    return copies


def _type_names(module: nn.Module) -> tuple[str, ...]:
    names = []
    for cls in type(module).__mro__:
        if cls is torch.nn.Module or cls is object:
            break
        if not cls.__name__.startswith("_"):
            names.append(cls.__name__)
    return tuple(names) or (type(module).__name__,)


def _linear_like(owner: nn.Module, attr: str, shape: Sequence[int]) -> tuple[str, ...]:
    """A mixture-of-experts router (transformers' `*Router`/`*Gate` modules with a 2-D weight)
    is a Linear without being one: `type:Linear` matches it too."""
    name = type(owner).__name__
    if isinstance(owner, torch.nn.Linear) or attr != "weight" or len(shape) != 2:
        return ()
    return ("Linear",) if name.endswith(("Router", "Gate")) else ()


# transformers' experts modules that do not carry `is_transposed`, with the layout their
# forward reads: Llama 4's `torch.bmm(x, W)` takes [E, in, out]; JetMoE's
# `F.linear(x, W[e])` [E, out, in].
_EXPERTS_TRANSPOSED = {"Llama4TextExperts": True, "JetMoeParallelExperts": False}


def _experts_transposed(module: nn.Module) -> bool | None:
    """Whether an experts module holds each expert [in, out] (True) or [out, in] (False): its
    own `is_transposed` (transformers' `use_experts_implementation`), else the table above;
    None for any other module."""
    flag = getattr(module, "is_transposed", None)
    if isinstance(flag, bool):
        return flag
    return _EXPERTS_TRANSPOSED.get(type(module).__name__)


def module_fans(module: nn.Module, attr: str, shape: Sequence[int]) -> Fans | None:
    """A tensor's fans as its module uses it (see the module docstring)."""
    transposed = _experts_transposed(module) if len(shape) == 3 else None
    if transposed is not None:
        # E matrices, each [out, in], or [in, out] where the module says so (GPT-OSS, Llama 4):
        # each expert's fans
        return (shape[1], shape[2]) if transposed else (shape[2], shape[1])
    fans = compute_fans(shape)
    if fans is None or attr != "weight":
        return fans
    rf = math.prod(shape[2:])
    if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
        g = module.groups
        return shape[0] // g * rf, shape[1] * rf
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        g = module.groups
        return shape[1] * rf, shape[0] // g * rf
    if type(module).__name__ == "Conv1D" and len(shape) == 2:  # transformers' GPT-2 layer
        return shape[0], shape[1]
    return fans


def fans_from_module(
    spec: str,
    module: nn.Module,
    kind: str,
    prefix: str,
    constructed: Mapping[str, torch.Tensor] | None = None,
) -> Model:
    """Every parameter and buffer, tied names included (a checkpoint may hold either), with
    the values the constructor gave them where known (`constructed`)."""
    modules = dict(module.named_modules(remove_duplicate=False))
    sites: dict[str, TensorSite] = {}
    named = [
        *((n, t, False) for n, t in module.named_parameters(remove_duplicate=False)),
        *((n, t, True) for n, t in module.named_buffers(remove_duplicate=False)),
    ]
    for full, t, is_buffer in named:
        mname, _, attr = full.rpartition(".")
        owner = modules[mname]
        shape = tuple(t.shape)
        sites.setdefault(
            full,
            TensorSite(
                full,
                mname,
                attr,
                _type_names(owner) + _linear_like(owner, attr, shape),
                shape,
                module_fans(owner, attr, shape),
                is_buffer,
            ),
        )
    from reinit.planning.ckpt_names import checkpoint_slices

    slices = checkpoint_slices(module, hf=kind == "hf")
    checkpoint = tuple(CheckpointTensor(c.name, c.shape, c.dtype, c.storage) for c in slices)
    sites = _with_checkpoint_sites(sites, slices, modules)
    return Model(spec, module, kind, sites, prefix, checkpoint, dict(constructed or {}))


def _with_checkpoint_sites(
    sites: Mapping[str, TensorSite],
    slices: Sequence[CheckpointSlice],
    modules: Mapping[str, nn.Module],
) -> dict[str, TensorSite]:
    """The module's sites and, just before each module tensor, the checkpoint names that are
    not module names and come from it (so the sites' order is the order `save_pretrained`
    walks)."""
    extra: dict[str, list[tuple[str, TensorSite]]] = {}
    for c in slices:
        if c.name in sites or c.source not in sites:
            continue
        base = sites[c.source]
        part = c if c.index is not None else None
        fans = module_fans(modules[base.module_name], base.attr, c.shape)
        types = base.types
        if part is not None and len(c.shape) == 2 and "Linear" not in types:
            types = (*types, "Linear")  # one expert's matrix, used as a Linear's weight
        site = replace(base, types=types, shape=c.shape, fans=fans, part=part)
        extra.setdefault(c.source, []).append((c.name, site))
    out: dict[str, TensorSite] = {}
    for name, site in sites.items():
        out.update(extra.get(name, []))
        out[name] = _with_parts_fans(site, [s for _, s in extra.get(name, [])])
    return out


def _with_parts_fans(site: TensorSite, parts: Sequence[TensorSite]) -> TensorSite:
    """A module tensor saved as parts (a stacked `[E, 2I, H]` experts parameter, saved one
    `[I, H]` matrix per expert) has its parts' fans when they all agree (`fan_in` = H, as
    for each expert's matrix, not torch's 2I·H of the 3-D tensor): a rule on the stacked
    parameter (a DCP written under the module's names) scales as on the per-expert tensors."""
    fans = {p.fans for p in parts if p.part is not None}
    if len(fans) != 1 or len(parts) != len([p for p in parts if p.part is not None]):
        return site
    return replace(site, fans=fans.pop())


def align(
    model: Model, names: Sequence[str], shapes: Mapping[str, Sequence[int]] | None = None
) -> ModelView:
    """Map checkpoint names to the model's: the same name, else with the base-model prefix
    added or removed (a `BertModel` checkpoint against `BertForSequenceClassification`, or the
    other way round). Nothing in common is an error that shows both sides."""
    mapping: dict[str, str] = {}
    renamed: Callable[[str], str] | None = None
    for n in names:
        found = _site_of(model, n)
        if found is None and model.kind == "hf":  # a legacy name (`LayerNorm.gamma`)
            if renamed is None:
                from reinit.planning.ckpt_names import load_renaming

                renamed = load_renaming(model.module)
            found = _site_of(model, renamed(n)) if renamed(n) != n else None
        if found is not None:
            mapping[n] = found
    if names and not mapping:
        ck = ", ".join(list(names)[:3])
        mm = ", ".join(list(model.sites)[:3])
        raise ModelError(
            f"--model {model.spec}: no checkpoint tensor name matches a parameter of the model "
            f"(checkpoint: {ck}, ...; model: {mm}, ...); is it the model this checkpoint was "
            "saved from?"
        )
    return ModelView(model, mapping, {k: tuple(v) for k, v in (shapes or {}).items()})


def _site_of(model: Model, name: str) -> str | None:
    """The model's name for checkpoint name `name`: the same, else with the base-model prefix
    added or removed; None when the model has neither."""
    pre = model.prefix + "." if model.prefix else ""
    if name in model.sites:
        return name
    if pre and pre + name in model.sites:
        return pre + name
    if pre and name.startswith(pre) and name[len(pre) :] in model.sites:
        return name[len(pre) :]
    return None


def check_default(result: Plan, view: ModelView | None, strict: bool = False) -> Plan:
    """`default` entries the model cannot serve (a tensor it lacks, or of another shape) become
    skips with the reason, or errors for a rule without wildcards (as for any scheme)."""
    if view is None:
        return result
    entries = []
    for e in result.entries:
        bound = e.scheme
        reason = (
            view.why_no_default(e.name) if bound is not None and bound.name == DEFAULT else None
        )
        if reason is None:
            entries.append(e)
            continue
        assert e.rule is not None
        if not e.rule.pattern.has_wildcards:
            raise RuleError(f"rule {e.rule.text!r}: tensor '{e.name}' {list(e.shape)}: {reason}")
        entries.append(replace(e, action="skipped", reason=reason))
    checked = replace(result, entries=tuple(entries))
    check_strict(checked, strict)
    return checked


def reinit_value(
    view: ModelView | None,
    bound: BoundScheme,
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int,
    device: str = "cpu",
    context: FillContext | None = None,
) -> torch.Tensor:
    """A reinit entry's values: `default` from the model; a fan-based scheme drawn with the
    module's own fans where they differ from torch's (rescaled from the same draw, so it stays
    reproducible from seed and name); anything else exactly as without a model."""
    if bound.name == DEFAULT:
        return default_init(view, name, dtype, seed)[0]
    new = generate(bound, name, shape, dtype, seed, device, context=context)
    fans = view.fans.get(name) if view is not None else None
    scale = fans_scale(bound, shape, fans)
    if scale != 1.0:
        work = torch.float64 if dtype == torch.float64 else torch.float32
        new = (new.to(work) * scale).to(dtype)
    return new


def default_value(view: ModelView, name: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The architecture's own init for one tensor (see `default_init`), the values only."""
    return default_init(view, name, dtype, seed)[0]


def default_init(
    view: ModelView | None, name: str, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, AppliedInit]:
    """The architecture's own init for one tensor: a real CPU copy of its owning module (only
    that module), initialized the way the architecture does it — torch's `reset_parameters()`
    (as at construction), then for transformers models the model's `_init_weights(module)` —
    with the values torch's global RNG seeded from `seed_for(seed, name)` gives (a
    parametrization's originals: from its weight's name, `parametrized.draw_key`; drawn from a
    generator of the thread's own seeded the same way, so two threads draw at once; see
    `init_rng`), so the caller's RNG is untouched and the values depend on seed and name only.

    The values follow the architecture's init distribution; they are not those of one
    particular from-scratch model instance (that one draws all tensors from one RNG stream).

    With them comes what ran (`AppliedInit`: `Linear.reset_parameters: kaiming_uniform(a=2.236)`,
    `BertModel._init_weights on Linear: normal(std=0.02)`) and the std that init's formula
    gives for the tensor, recorded while the init runs (`init_trace`): nothing is drawn twice."""
    from reinit.planning.init_trace import AppliedInit, applied_init
    from reinit.planning.parametrized import draw_key

    why = view.why_no_default(name) if view is not None else "default needs --model"
    if view is None or why is not None:
        raise SchemeError(f"'{name}': {why}")
    site = view.site(name)
    assert site is not None
    model = view.model
    key = draw_key(model.module, site.module_name, site.attr) or name
    real, trace, ran, built = _run_init(model, site, seed_for(seed, key))
    value = _get_attr_tensor(real, site.attr)
    if site.part is not None:  # one expert of a stacked tensor: its slice of the init
        value = site.part.take(value)
    applied = applied_init(trace.calls, site.source_shape) or built
    ran = ran or built is not None
    if applied is None and site.name in model.constructed:  # the constructor's value stands
        ran, applied = True, _constructed_init(real, model.constructed[site.name])
    if not ran or not _surely_set(value, trace, applied):
        raise SchemeError(
            f"default: the architecture's init does not set '{name}' (module "
            f"{site.module_name or '(root)'} of type {site.types[0]} has no reset_parameters"
            f"{' and _init_weights leaves it' if model.kind == 'hf' else ''}); give it an "
            "explicit scheme"
        )
    if applied is None:  # set, but by nothing the trace names (a custom write)
        applied = AppliedInit(
            f"{type(real).__name__}: its own init (not a torch.nn.init call)", None
        )
    return _own_copy(value.detach().to(dtype).contiguous(), value), applied


def _constructed_init(owner: nn.Module, value: torch.Tensor) -> AppliedInit:
    """What a tensor that keeps its constructor's value ran: `CLIPModel.__init__:
    constant(val=2.659)` when every value is one, else its values as built; the std is theirs."""
    from reinit.planning.init_trace import AppliedInit

    flat = value.detach().double().flatten()
    where = f"{type(owner).__name__}.__init__"
    if flat.numel() and bool((flat == flat[0]).all()):
        return AppliedInit(f"{where}: constant(val={float(flat[0]):.4g})", 0.0)
    std = float(flat.std(correction=0)) if flat.numel() else None
    return AppliedInit(f"{where}: its constructor's values", std)


def _surely_set(value: torch.Tensor, trace: InitTrace, applied: AppliedInit | None) -> bool:
    """Whether the init set every value of the NaN-filled tensor. Where the trace saw it set
    whole by a known scheme, with nothing after it but what keeps a finite std (a constant on
    a part, a scalar scaling: `expected_std` finite), in the traced storage itself, no value
    can be the NaN sentinel, and the pass over the tensor is saved; otherwise it is looked at."""
    if not value.is_floating_point():
        return True
    std = applied.expected_std if applied is not None else None
    traced = value.untyped_storage().data_ptr() == trace.storage
    if traced and std is not None and math.isfinite(std):
        return True
    return not bool(value.isnan().any())


def _own_copy(out: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`out` (the value cast to the output dtype) as a tensor that holds only its own bytes:
    a cast is already a new tensor, and so is the module's whole parameter (the module is a
    private copy, dropped on return); a part of a larger storage (one expert's slice of a
    stacked parameter) is copied out, so the rest of the storage is not kept alive."""
    if out.data_ptr() != value.data_ptr():
        return out
    whole = out.storage_offset() == 0 and out.untyped_storage().nbytes() == (
        out.numel() * out.element_size()
    )
    return out if whole else out.clone()


def _blank_owner(model: Model, site: TensorSite) -> tuple[nn.Module, InitTrace]:
    """A real float32 CPU copy of the tensor's owning module (only that module), every float
    tensor NaN (the sentinel for values its init leaves unset), and the trace watching it."""
    from reinit.planning.init_trace import InitTrace

    owner = model.module.get_submodule(site.module_name)
    real = copy.deepcopy(owner, _derived_tensors(owner)).to_empty(device="cpu", recurse=True)
    real = real.float()
    with torch.no_grad():
        for t in [*real.parameters(), *real.buffers()]:
            if hasattr(t, "_is_hf_initialized"):  # transformers would skip "done" tensors
                del t._is_hf_initialized
            if t.is_floating_point():
                t.fill_(float("nan"))
        _fill_constructed(real, site.module_name, model.constructed)
    return real, InitTrace(_get_attr_tensor(real, site.attr))


def _fill_constructed(real: nn.Module, path: str, constructed: Mapping[str, torch.Tensor]) -> None:
    """The values the constructor gave the module's tensors, where known (before its init
    runs, as when the model is built for real)."""
    if not constructed:
        return
    named = [
        *real.named_parameters(remove_duplicate=False),
        *real.named_buffers(remove_duplicate=False),
    ]
    for local, t in named:
        value = constructed.get(f"{path}.{local}" if path else local)
        if value is not None and value.shape == t.shape:
            t.copy_(value)


_Drawn: TypeAlias = "tuple[nn.Module, InitTrace, bool, AppliedInit | None]"


def _run_init(model: Model, site: TensorSite, seed: int) -> _Drawn:
    """The owning module initialized from `seed` (see `default_init`), its trace, whether
    any init ran, and what the constructor gave a parametrization's originals (`parametrized`:
    weight_norm's g and v, which no later init reaches): drawn on a generator of the thread's
    own where the init lets it (two threads draw at once), else on the global one, one thread
    at a time (`seeded_draw`)."""
    from reinit.planning.init_rng import seeded_draw
    from reinit.planning.parametrized import construct_originals

    def draw(rng: contextlib.AbstractContextManager[Any]) -> _Drawn:
        real, trace = _blank_owner(model, site)
        with torch.no_grad(), rng:
            built = construct_originals(model.module, site.module_name, real, site.attr)
            with trace:
                ran = _init_module(model, site.module_name, real, trace)
                _init_ancestors(model, site.module_name, real, trace)
            return real, trace, ran, built

    owner = model.module.get_submodule(site.module_name)
    return seeded_draw(seed, type(owner), draw)


def _init_module(model: Model, path: str, real: nn.Module, trace: InitTrace) -> bool:
    """torch's `reset_parameters()` (as at construction), then for transformers models the
    `_init_weights(module)` of the model it belongs to (`init_owner`), on `real` (the module
    at `path`); whether either ran."""
    kind = type(real).__name__
    ran = False
    for method in ("reset_parameters", "_reset_parameters"):
        fn = getattr(real, method, None)
        if callable(fn):
            trace.phase = f"{kind}.{method}"
            fn()
            ran = True
            break
    if model.kind == "hf":
        owner = init_owner(model.module, path)
        init = getattr(owner, "_init_weights", None)
        if callable(init):
            trace.phase = f"{type(owner).__name__}._init_weights on {kind}"
            _mark_done(real.modules(), but=real)
            init(real)
            ran = True
    return ran


def _mark_done(modules: Iterable[nn.Module], but: nn.Module) -> None:
    """transformers initializes a module after its children and marks each one done
    (`_is_hf_initialized`) as it goes, and an init may read the mark: ViTMAE's embeddings skip
    their sin-cos table, xavier and cls_token draw once their patch projection is marked, so
    `from_config` leaves them as constructed. So every module below the one whose
    `_init_weights` runs is marked, as there (on reinit's own copies, never the model's)."""
    for module in modules:
        if module is not but:
            module.__dict__["_is_hf_initialized"] = True


def init_owner(root: nn.Module, path: str) -> nn.Module:
    """The model whose `_init_weights` transformers runs on the module at `path`: the nearest
    transformers model at or above it (`PreTrainedModel.initialize_weights` hands each
    sub-model, e.g. Llava's CLIP vision tower, its own init for everything below it), else
    `root`. A sub-model whose init is the one above it (LlamaForCausalLM's LlamaModel: the same
    `_init_weights` on the same config) does not count, so the report keeps naming the model."""
    owner, module = root, root
    for part in path.split(".") if path else ():
        child = module._modules[part]
        assert child is not None
        module = child
        if _own_init(module, owner):
            owner = module
    return owner


def _own_init(module: nn.Module, above: nn.Module) -> bool:
    """Whether `module` is a transformers model whose init differs from `above`'s: another
    `_init_weights`, or the same one reading another config."""
    init = getattr(type(module), "_init_weights", None)
    if not callable(init) or not hasattr(module, "config"):
        return False
    same = init is getattr(type(above), "_init_weights", None)
    return not same or getattr(module, "config", None) is not getattr(above, "config", None)


def _init_ancestors(model: Model, path: str, real: nn.Module, trace: InitTrace) -> None:
    """transformers runs `_init_weights` on a module after its children, and a block's may
    set its children's tensors (GPT-2's attention and MLP draw `c_proj.weight` again, scaled
    by depth; T5's feed-forward its `wi`/`wo`): so each ancestor of the owner, nearest first,
    is initialized too, as a shallow copy whose path down leads to `real` (every other tensor
    stays on the meta device, where an init writes nothing). An ancestor whose init cannot
    run on meta tensors (it reads values) is passed over."""
    if model.kind != "hf" or not path:
        return
    parts = path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        where = ".".join(parts[:depth])
        ancestor = model.module.get_submodule(where)
        owner = init_owner(model.module, where)
        init = getattr(owner, "_init_weights", None)
        if not callable(init):
            continue
        trace.phase = f"{type(owner).__name__}._init_weights on {type(ancestor).__name__}"
        try:  # (a parametrized module on the way cannot be copied: torch refuses)
            proxy = _leading_to(ancestor, parts[depth:], real, model.all_meta)
            _mark_done([*_down_to(proxy, parts[depth:]), *real.modules()], but=proxy)
            init(proxy)
        except Exception:  # noqa: BLE001 (an init that needs real values: as before)
            continue


def _leading_to(
    module: nn.Module, path: Sequence[str], real: nn.Module, all_meta: bool = False
) -> nn.Module:
    """A shallow copy of `module` (its own tensor and module tables copied, so nothing the
    init assigns reaches the model) whose submodule at `path` is `real`, every other tensor
    on the meta device: a model given as a live module (`apply_to_module`, `model=module`)
    holds real tensors, which an ancestor's init (GPT-2's block drawing every `c_proj.weight`
    below it) would otherwise overwrite. With `all_meta` (the model holds no real tensor)
    the other submodules are the model's own, uncopied."""
    from reinit.planning.parametrized import meta_tables

    if not path:
        return real
    proxy = copy.copy(module)
    proxy._parameters, proxy._buffers = meta_tables(module)
    proxy._modules = {
        k: m if all_meta or k == path[0] else _meta_skeleton(m) for k, m in module._modules.items()
    }
    child = module._modules[path[0]]
    assert child is not None
    proxy._modules[path[0]] = _leading_to(child, path[1:], real, all_meta)
    return proxy


def _meta_skeleton(module: nn.Module | None) -> nn.Module | None:
    """`module` itself when its tensors are all on the meta device, else a copy whose tensors
    are (tied ones still shared); no tensor data is copied."""
    from reinit.planning.parametrized import on_meta

    if module is None:
        return None
    tensors = [
        *(t for _, t in module.named_parameters(remove_duplicate=False)),
        *(t for _, t in module.named_buffers(remove_duplicate=False)),
    ]
    if all(t.device.type == "meta" for t in tensors):
        return module
    memo: dict[int, Any] = {id(t): on_meta(t) for t in tensors} | _derived_tensors(module)
    return copy.deepcopy(module, memo)


def _derived_tensors(module: nn.Module) -> dict[int, Any]:
    """`deepcopy` memo entries for the tensors `module`'s submodules hold as plain attributes
    that autograd computed (the `weight` of `torch.nn.utils.weight_norm`, recomputed before each
    forward from `weight_g` and `weight_v`), which deepcopy refuses (RuntimeError, 'graph
    leaves'): a meta tensor of its shape stands in, no data copied."""
    from reinit.planning.parametrized import on_meta

    return {
        id(v): on_meta(v)
        for m in module.modules()
        for v in vars(m).values()
        if isinstance(v, torch.Tensor) and v.grad_fn is not None
    }


def _down_to(module: nn.Module, path: Sequence[str]) -> list[nn.Module]:
    """The modules on `path` from `module` down, `module` first (a `_leading_to` chain: its
    own copies and `real`, every one of which reinit may mark)."""
    chain = [module]
    for part in path:
        child = chain[-1]._modules[part]
        assert child is not None
        chain.append(child)
    return chain


def _get_attr_tensor(module: nn.Module, attr: str) -> torch.Tensor:
    t = getattr(module, attr)
    assert isinstance(t, torch.Tensor)
    return t


ModelInput: TypeAlias = "str | os.PathLike[str] | nn.Module | Model | ModelView"
"""What `--model` / `model=` accepts: a Hugging Face directory, hf:// URL or `module:callable`
spec; a module; a loaded `Model`; or a `ModelView` already aligned to the checkpoint."""
