"""Loading a model to plan with: a Hugging Face directory or hf:// repo (on the meta device),
or a `module:callable` spec."""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from reinit.errors import ReinitError, UsageError
from reinit.io.hub import HubRepo, is_hf_url, parse_hf_url
from reinit.io.jsonfile import read_json_file
from reinit.io.trust import CALLABLE_SPEC, callable_name
from reinit.lazy import gc_paused
from reinit.library_output import route_transformers, transformers_quiet
from reinit.limits import MAX_CONFIG_BYTES, MAX_MODEL_COUNT, MAX_TOTAL_TENSORS
from reinit.planning.model import Model, ModelError, fans_from_module
from reinit.text import one_line

if TYPE_CHECKING:
    from torch import nn

    from reinit.planning.build_trace import ConstructedValues

__all__ = [
    "Factory",
    "build_module",
    "build_real",
    "rebuilt_constructed",
    "call_arguments",
    "check_config",
    "check_torch_seed",
    "load_model",
    "model_factory",
    "model_of_config",
    "read_config_json",
]


Factory = Callable[[], object]  # builds a model; `build_module` checks it is an nn.Module

_CALLABLE = CALLABLE_SPEC


def load_model(spec: str | os.PathLike[str] | nn.Module) -> Model:
    """Build the skeleton `spec` names (see the module docstring), on the meta device. An
    `nn.Module` is taken as it is (its tensors may be real or meta), with its constructor's
    values where they can be known (`rebuilt_constructed`)."""
    if isinstance(spec, torch.nn.Module):
        return _live_model(spec)
    text = os.fspath(spec)
    with gc_paused():
        factory = model_factory(spec)
        constructed: dict[str, torch.Tensor] = {}
        with torch.device("meta"):
            module = build_module(text, factory, constructed)
    kind = "hf" if _is_hf(module) else "torch"
    prefix = _prefix(module) if kind == "hf" else ""
    return fans_from_module(text, module, kind, prefix, constructed)


def _live_model(module: nn.Module) -> Model:
    """A model handed in as a module (its tensors real or meta), with the values its
    constructor gives where they can be known (`rebuilt_constructed`)."""
    kind = "hf" if callable(getattr(module, "_init_weights", None)) else "torch"
    constructed = rebuilt_constructed(module)
    return fans_from_module(type(module).__name__, module, kind, _prefix(module), constructed)


def rebuilt_constructed(module: nn.Module) -> dict[str, torch.Tensor]:
    """The values the constructor of a transformers model gives its tensors, learnt as
    `reinit new` learns them: its class built again on the meta device from a copy of its
    config, the constructor traced (`build_trace`), so `default` on a live model gives CLIP's
    `logit_scale` its `config.logit_scale_init_value`. Only tensors the module holds alike
    (same name, shape and owning class) are kept. Empty for any other module, or a class that
    its config alone does not build (a subclass taking other arguments): their constructor's
    values are not known. Nothing of `module` (config included) nor the caller's RNG changes."""
    cls, config = type(module), getattr(module, "config", None)
    transformers = sys.modules.get("transformers")  # imported, where the module is its model's
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return {}
    if not isinstance(config, transformers.PretrainedConfig):
        return {}
    constructed: dict[str, torch.Tensor] = {}
    try:
        built = _rebuild(cls.__name__, lambda: cls(copy.deepcopy(config)), constructed)
    except ReinitError:
        return {}
    return _held_alike(constructed, built, module)


def _rebuild(name: str, factory: Factory, constructed: dict[str, torch.Tensor]) -> nn.Module:
    """`factory` built on the meta device, quietly, offline, on a forked RNG, `constructed`
    receiving its constructor's values."""
    from reinit.io.hub import hub_offline

    rng = torch.random.fork_rng(devices=[])
    with gc_paused(), hub_offline(), transformers_quiet(), rng, torch.device("meta"):
        return build_module(name, factory, constructed)


def _held_alike(
    constructed: Mapping[str, torch.Tensor], built: nn.Module, live: nn.Module
) -> dict[str, torch.Tensor]:
    """The values of `constructed` (by `built`'s names) whose tensor `live` holds alike."""
    if not constructed:
        return {}
    ours, theirs = _tensor_places(built), _tensor_places(live)
    return {n: v for n, v in constructed.items() if n in theirs and ours.get(n) == theirs[n]}


def _tensor_places(module: nn.Module) -> dict[str, tuple[tuple[int, ...], type]]:
    """Each parameter and buffer name (tied names included): its shape and owner's class."""
    modules = dict(module.named_modules(remove_duplicate=False))
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    return {n: (tuple(t.shape), type(modules[n.rpartition(".")[0]])) for n, t in named}


def build_real(spec: str | os.PathLike[str], seed: int = 0) -> nn.Module:
    """The model `spec` names with real weights on the CPU, initialized as its constructor
    (for transformers, with `post_init`) does, from `torch.manual_seed(seed)` inside `fork_rng`
    (the caller's RNG is untouched)."""
    check_torch_seed(seed)
    text = os.fspath(spec)
    factory = model_factory(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_module(text, factory)


#: The seeds torch's own generators take (`torch.manual_seed`): a signed or unsigned 64-bit int.
TORCH_SEEDS = range(-(2**63), 2**64)


def check_torch_seed(seed: int) -> None:
    """A seed handed to torch as it is (a model's constructor, probe's and verify --forward's
    inputs) must be one torch takes: past it, torch's own "Overflow" error, not one line."""
    if seed not in TORCH_SEEDS:
        raise UsageError(
            f"--seed {seed}: a model is built and its inputs drawn by torch's generator, which "
            "takes seeds from -2**63 to 2**64 - 1; give a seed in that range"
        )


def build_module(
    text: str, factory: Factory, constructed: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """Call a model factory (on whatever device and RNG state the caller set up): a failure
    inside the user's code, or a result that is not a module, is one `ModelError` line.
    `constructed`, when given, receives the values the constructor gave the module's meta
    tensors, by name, where they are known (`build_trace`: CLIP's `logit_scale`)."""
    from reinit.planning.build_trace import ConstructedValues

    values = ConstructedValues()
    try:
        with _tensor_cap(text), values if constructed is not None else contextlib.nullcontext():
            module = factory()
    except ReinitError:
        raise
    except Exception as e:
        raise ModelError(
            f"--model {text}: building the model failed: {one_line(e, typed=True)}"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"--model {text}: the callable returned {type(module).__name__}, not a torch.nn.Module"
        )
    if constructed is not None:
        constructed.update(_constructed(module, values))
    return module


def _constructed(module: nn.Module, values: ConstructedValues) -> dict[str, torch.Tensor]:
    """Each parameter and buffer (tied names included) whose constructed value is known."""
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    out = {}
    for name, t in named:
        value = values.value(t) if t.device.type == "meta" else None
        if value is not None:
            out[name] = value
    return out


@contextlib.contextmanager
def _tensor_cap(text: str) -> Iterator[None]:
    """Stop a build that registers more than `MAX_TOTAL_TENSORS` parameters and buffers, the
    cap a checkpoint has: a config saying `num_hidden_layers: 100000000` built modules for
    minutes, ~85 MB more each second, until memory ran out (nothing is allocated on meta,
    but every module is a Python object)."""
    count = 0

    def hook(module: nn.Module, name: str, value: object) -> None:
        nonlocal count
        count += 1
        if count > MAX_TOTAL_TENSORS:
            raise ModelError(
                f"--model {text}: the model registers more than {MAX_TOTAL_TENSORS:,} "
                "parameters and buffers (the largest public models hold ~100,000); check its "
                "config (num_hidden_layers, num_experts, ...)"
            )

    from torch.nn.modules.module import (
        register_module_buffer_registration_hook,
        register_module_parameter_registration_hook,
    )

    handles = [
        register_module_parameter_registration_hook(hook),
        register_module_buffer_registration_hook(hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def model_factory(spec: str | os.PathLike[str]) -> Factory:
    """A function that builds the model `spec` names (on whatever device is current).

    Only a `str` may be a `module:callable` (the caller's own code, or one the user allowed on
    the command line); a path object (`pathlib.Path`: what a recipe's `model:` becomes unless
    the user trusted it) is a model folder or config file, never imported."""
    text = os.fspath(spec)
    if text == "":  # "." to pathlib: the current folder's config.json
        raise ModelError(
            "--model '': the model path is empty (an unset variable?); give a model folder, "
            "a config.json, hf://OWNER/NAME or module:callable"
        )
    if is_hf_url(text):
        ref = parse_hf_url(text)
        return _hf_factory(text, HubRepo(ref, progress=False).fetch("config.json"))
    path = Path(text)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ModelError(
                f"--model {text}: the directory has no config.json; give a Hugging Face model "
                "directory or module:callable"
            )
        return _hf_factory(text, config_path)
    if path.is_file() and path.name.endswith(".json"):
        return _hf_factory(text, path)
    m = _CALLABLE.match(text)
    if m and not path.exists() and isinstance(spec, str):
        return _callable_factory(text, m.group(1), m.group(2), m.group(3))
    if m and not path.exists():
        raise ModelError(
            f"--model {text}: no such directory; a module:callable from a recipe runs only "
            f"when the command line allows it (--trust-model-callable {callable_name(text)})"
        )
    raise ModelError(
        f"--model {text}: no such directory and not module:callable; give a Hugging Face model "
        "directory (with config.json), hf://OWNER/NAME, or module:callable "
        "(e.g. torchvision.models:resnet18)"
    )


def call_arguments(text: str, call: str) -> tuple[tuple[object, ...], dict[str, object]]:
    """The arguments of `module:callable(ARGS)` as Python literals (`ast.literal_eval`: so
    `pretrained=False` is False and `None` is None, never the strings a rule's arguments
    would be). Anything else (a name, a call, `*args`) is a `ModelError` naming the argument."""
    where = f"--model {text}"
    try:
        tree = ast.parse("f" + call, mode="eval")
    except SyntaxError as e:
        raise ModelError(f"{where}: the arguments do not parse ({e.msg})") from None
    node = tree.body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ModelError(f"{where}: give the arguments as (VALUE, ..., NAME=VALUE, ...)")
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for i, arg in enumerate(node.args):
        args.append(_literal(where, f"argument {i + 1}", arg))
    for kw in node.keywords:
        if kw.arg is None:
            raise ModelError(f"{where}: **kwargs is not allowed; name each argument")
        kwargs[kw.arg] = _literal(where, f"argument {kw.arg}", kw.value)
    return tuple(args), kwargs


def _literal(where: str, what: str, node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ModelError(
            f"{where}: {what} ({ast.unparse(node)}) is not a Python literal; use a number, "
            "string ('...'), True/False/None, or a list/tuple/dict of them"
        ) from None


def _callable_factory(text: str, module_name: str, attr: str, call: str | None) -> Factory:
    args: tuple[object, ...] = ()
    kwargs: dict[str, object] = {}
    if call:
        args, kwargs = call_arguments(text, call)
    # typed on the command line or passed by the API caller; a spec from a recipe, --set or
    # ${VAR} reaches here only when --trust-model-callable names it
    try:
        mod = importlib.import_module(module_name)  # reviewed: the user's own or granted
    except ImportError as e:
        raise ModelError(
            f"--model {text}: cannot import {module_name!r} ({e}); install it or put its "
            "directory on PYTHONPATH"
        ) from None
    found: object = mod
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ModelError(f"--model {text}: module {module_name!r} has no {attr!r}")
    if not callable(found):
        raise ModelError(f"--model {text}: {module_name}.{attr} is not callable")
    fn = found
    return lambda: fn(*args, **kwargs)


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "--model with a Hugging Face config needs transformers: pip install 'reinit[hf]'"
        ) from None
    route_transformers()  # its log text, inside the CLI, as reinit's warning: lines
    return transformers


def _hf_factory(spec: str, config_path: Path) -> Factory:
    """The class comes from the config's `architectures` (so names line up with checkpoints
    saved from it), else `AutoModel`. Remote code is never run."""
    data = read_config_json(spec, config_path)
    return _config_factory(_hf_config(spec, str(config_path), data))


def _config_factory(config: object) -> Factory:
    transformers = _transformers()
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs and isinstance(archs[0], str) else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return lambda: cls(config)
    return lambda: transformers.AutoModel.from_config(config, trust_remote_code=False)


def _hf_config(spec: str, where: str, data: Mapping[str, object]) -> object:
    """The transformers config built from `data` (config.json, read once the bounded way: size
    and nesting capped, a FIFO refused: `io.jsonfile`), so transformers never parses the file
    itself. Its `model_type` picks the class as `AutoConfig` does; remote code is never run."""
    transformers = _transformers()
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        raise ModelError(
            f"--model {spec}: {where} has model_type {one_line(repr(model_type), limit=80)}, "
            "which this transformers does not know; upgrade transformers for new model types"
        )
    try:
        return transformers.CONFIG_MAPPING[model_type].from_dict(_special_floats(dict(data)))
    except Exception as e:
        raise ModelError(
            f"--model {spec}: transformers cannot read {where}: {one_line(e, typed=True)}"
        ) from None


def model_of_config(spec: str, data: Mapping[str, object], *, internal: bool = False) -> Model:
    """The transformers model a config.json already read (`data`, e.g. a checkpoint's own)
    describes, on the meta device, checked as `--model` checks one (no `auto_map`, counts).
    `internal`: a build reinit makes for itself (a checkpoint's ties, its DCP names), during
    which transformers says nothing below an error (`library_output.transformers_quiet`)."""
    from reinit.io.hub import hub_offline

    check_config(spec, "config.json", data)
    if internal:
        _transformers()  # imported before its level is set: its first import sets its own
    quiet = transformers_quiet() if internal else contextlib.nullcontext()
    with gc_paused(), hub_offline(), quiet:  # a file's config never makes it reach the Hub
        factory = _config_factory(_hf_config(spec, "config.json", data))
        constructed: dict[str, torch.Tensor] = {}
        with torch.device("meta"):
            module = build_module(spec, factory, constructed)
    if not _is_hf(module):
        raise ModelError(f"--model {spec}: config.json does not describe a transformers model")
    return fans_from_module(spec, module, "hf", _prefix(module), constructed)


_FLOAT_TAGS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _special_floats(value: object) -> object:
    """`value` with transformers' tagged floats decoded as its own config reader decodes them:
    `{"__float__": "Infinity"}` (how `save_pretrained` writes Mamba2's `time_step_limit`
    bound, strict JSON having no infinity) is `inf`. Depth is capped by the reader."""
    if isinstance(value, dict):
        tag = value.get("__float__") if len(value) == 1 else None
        if isinstance(tag, str) and tag in _FLOAT_TAGS:
            return _FLOAT_TAGS[tag]
        return {k: _special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_special_floats(v) for v in value]
    return value


def read_config_json(spec: str, config_path: Path) -> dict[str, object]:
    """config.json as a dict, read with the caps of `reinit.limits` (exit 2 past them), and
    checked (`check_config`)."""
    where = f"--model {spec}: {config_path}"
    data = read_json_file(config_path, where, MAX_CONFIG_BYTES, ModelError)
    if not isinstance(data, dict):
        raise ModelError(f"{where}: is not a JSON object; give a model's config.json")
    check_config(spec, str(config_path), data)
    return data


def check_config(spec: str, where: str, data: Mapping[str, object]) -> None:
    """One whose `auto_map` points at its own Python files asks to run them: refused (exit 2),
    so transformers can neither prompt nor import; a layer or expert count past any model's
    too."""
    if "auto_map" in data:
        raise ModelError(
            f"--model {spec}: {where} has auto_map (custom model code); reinit never "
            "runs code from a model folder: use a model type transformers ships"
        )
    _check_counts(data, f"--model {spec}: {where}")


_COUNT_KEY = re.compile(r"(?:^|_)(?:layers?|experts)$")


def _check_counts(data: Mapping[str, object], where: str) -> None:
    """Refuse a layer or expert count past `MAX_MODEL_COUNT`, in the config or a config nested
    in it (nesting is already capped by `read_json_file`)."""
    stack: list[object] = [data]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, Mapping) else ()
        for key, value in items:
            if isinstance(value, Mapping):
                stack.append(value)
            too_many = isinstance(value, int) and value > MAX_MODEL_COUNT
            if too_many and _COUNT_KEY.search(str(key)):
                raise ModelError(
                    f"{where}: {key} is {value:,}, past the {MAX_MODEL_COUNT:,} layers or experts "
                    "any model has; fix the config"
                )


def _is_hf(module: nn.Module) -> bool:
    return callable(getattr(module, "_init_weights", None)) and hasattr(module, "config")


def _prefix(module: nn.Module) -> str:
    return str(getattr(module, "base_model_prefix", "") or "")
