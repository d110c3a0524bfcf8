"""A recipe's keys checked against the schema (named with file and line) into a frozen Recipe."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from reinit.errors import RuleError, UsageError
from reinit.io.trust import TrustSpec
from reinit.options import ApplyOptions, meta, option_names
from reinit.recipe.files import (
    Data,
    Path_,
    SetValue,
    Where,
    expand_all,
    location,
    read_recipe_file,
)
from reinit.recipe.trust import Grants, granted, granted_new, granted_writes
from reinit.rules import parse_rule

# A key's value after conversion by its kind (`_coerce`): lists become tuples of strings; a
# `steps` value stays as parsed, checked step by step.
Value = Data | tuple[str, ...]

# A value's kind: an ApplyOptions kind (reinit.options.RecipeKind), or one of the recipe's own:
# rules (a list of rule strings), steps (a list of step mappings).
Kind = Literal["int", "float", "bool", "str", "str?", "names?", "paths", "specs", "rules", "steps"]

# The keys a recipe has besides apply's options (which come from ApplyOptions, below).
OWN_TOP_KEYS: dict[str, Kind] = {
    "source": "str",
    "new": "str",  # instead of source: the model a config names, made as `reinit new` makes it
    "output": "str?",
    "rules": "rules",
    "steps": "steps",
    "dry_run": "bool",
}
OWN_STEP_KEYS: dict[str, Kind] = {"name": "str", "rules": "rules"}


def _option_keys(per_step: bool) -> dict[str, str]:
    """Recipe key -> ApplyOptions field, for the options a recipe (or a step) may set."""
    out: dict[str, str] = {}
    for name in option_names():
        m = meta(name)
        if m.recipe is not None and (m.per_step or not per_step):
            out[m.key or name] = name
    return out


TOP_OPTION_KEYS = _option_keys(per_step=False)
STEP_OPTION_KEYS = _option_keys(per_step=True)


def _kind(field_name: str) -> Kind:
    kind = meta(field_name).recipe
    assert kind is not None
    return kind


TOP_KEYS: dict[str, Kind] = {
    **OWN_TOP_KEYS,
    **{k: _kind(f) for k, f in TOP_OPTION_KEYS.items()},
}
STEP_KEYS: dict[str, Kind] = {
    **OWN_STEP_KEYS,
    **{k: _kind(f) for k, f in STEP_OPTION_KEYS.items()},
}
SURGERY = ("add", "drop", "rename", "resize")  # in any step (a step's own, not top-level)


@dataclass(frozen=True)
class Step:
    """One step: its rules and its options (the recipe's, with the step's own keys over them)."""

    rules: tuple[str, ...]
    options: ApplyOptions
    name: str = ""
    where: str = ""
    # where each rule is written, as errors name it: `r.yaml line 7 (step 2, head)`
    rule_where: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How errors name the step: `recipe.yaml step 1 (name)`."""
        return self.where or self.name

    @property
    def surgery(self) -> tuple[str, ...]:
        """Which of add/drop/rename/resize the step uses."""
        return tuple(k for k in SURGERY if getattr(self.options, k))


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: what to run, with every default filled in. `options` holds the
    recipe's top-level options; each step's own (`Step.options`) start from them."""

    path: str
    source: str
    steps: tuple[Step, ...]
    output: str | None = None
    options: ApplyOptions = ApplyOptions()
    dry_run: bool = False
    new: bool = False  # `new: CONFIG`: `source` is the config, the model made from it

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def unsafe_pickle(self) -> TrustSpec:
        return self.options.unsafe_pickle


def apply_sets(data: dict[str, Data], where: Where, sets: Sequence[str]) -> None:
    """`--set KEY=VALUE` overrides, in place. KEY is a dotted path (`seed`, `steps.0.seed`);
    VALUE is text that the key's kind converts (a list key takes one item, or a YAML/JSON
    list such as `["a=zeros", "b=ones"]`)."""
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set {item}: write KEY=VALUE, e.g. --set seed=3")
        key, value = item.split("=", 1)
        key = key.strip()
        parts: list[str | int] = [_index_or_key(p) for p in key.split(".")]
        node: Data = data
        for depth, part in enumerate(parts[:-1]):
            found, node = _child(node, part)
            if not found:
                have = ".".join(map(str, parts[: depth + 1]))
                raise UsageError(f"--set {key}: the recipe has no {have}")
            if not isinstance(node, (dict, list)):
                raise UsageError(
                    f"--set {key}: {'.'.join(map(str, parts[: depth + 1]))} holds a value, not keys"
                )
        last = parts[-1]
        if not isinstance(node, dict) or not isinstance(last, str):
            raise UsageError(f"--set {key}: name a key, e.g. seed or steps.0.seed")
        node[last] = SetValue(value)
        for inner in [w for w in where if w[: len(parts)] == tuple(parts)]:
            del where[inner]  # the file's items under the key are gone with it
        where[tuple(parts)] = f"--set {key}"


def _index_or_key(part: str) -> str | int:
    """A list index (ASCII digits, at most 18: any list's length) or a mapping key."""
    return int(part) if part.isascii() and part.isdigit() and len(part) <= 18 else part


def _child(node: Data, part: str | int) -> tuple[bool, Data]:
    """(True, the item) of a list index or a mapping key that `node` has, else (False, None)."""
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return True, node[part]
    if isinstance(node, dict) and isinstance(part, str) and part in node:
        return True, node[part]
    return False, None


def _unknown(key: str, known: Mapping[str, Kind], at: str, inside: str) -> UsageError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UsageError(f"{at}: unknown key {key!r}{inside}{hint}; known keys: {', '.join(known)}")


_TRUE = {"true", "yes", "on", "1"}


_FALSE = {"false", "no", "off", "0"}


def _coerce(kind: Kind, value: Data, key: str, at: str) -> Value:
    """`value` (as parsed, or `--set` text) converted to its key's kind, or a usage error."""
    set_text = value.text if isinstance(value, SetValue) else None
    if set_text is not None and kind in ("rules", "paths"):
        value = _parse_set_list(set_text)
    elif set_text is not None and kind == "specs":
        value = _parse_set_any(set_text)
    elif set_text is not None:
        value = set_text
    convert = _CONVERT.get(kind)
    if convert is None:
        raise AssertionError(kind)
    out = convert(kind, value, key, at)
    for text in out if isinstance(out, tuple) else (out,):
        if isinstance(text, str) and "\0" in text:  # a file's "\0", or --set's YAML "\0"
            raise UsageError(
                f"{at}: {key!r} holds a NUL character (\\x00), which no path can hold; "
                "remove it (in a pattern, match it with ? or re:\\x00)"
            )
    return out


def _as_str(kind: Kind, value: Data, key: str, at: str) -> Value:
    if value is None and kind == "str?":
        return None
    if isinstance(value, str):
        return value
    raise UsageError(f"{at}: {key!r} must be a string, got {value!r}")


def _as_names(kind: Kind, value: Data, key: str, at: str) -> Value:
    """`labels: neg,neu,pos` or `labels: [neg, neu, pos]`."""
    strings = _strings(value) if isinstance(value, list) else None
    if strings is not None:
        return strings
    if value is None or isinstance(value, str):
        return value
    raise UsageError(
        f"{at}: {key!r} must be a list of names or a comma-separated string, got {value!r}"
    )


def _as_int(kind: Kind, value: Data, key: str, at: str) -> Value:
    if isinstance(value, bool):
        raise UsageError(f"{at}: {key!r} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        try:
            return int(value)
        except ValueError:  # more digits than Python converts
            raise UsageError(
                f"{at}: {key!r} is an integer of {len(value.strip())} digits; give a shorter one"
            ) from None
    raise UsageError(f"{at}: {key!r} must be an integer, got {value!r}")


def _as_float(kind: Kind, value: Data, key: str, at: str) -> Value:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # a number, or --set text that reads as one
            return float(value)
        except ValueError:
            pass
    raise UsageError(f"{at}: {key!r} must be a number, got {value!r}")


def _as_bool(kind: Kind, value: Data, key: str, at: str) -> Value:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UsageError(f"{at}: {key!r} must be true or false, got {value!r}")


def _as_strings(kind: Kind, value: Data, key: str, at: str) -> Value:
    """rules, paths, specs: a list of strings (one string is a list of one)."""
    strings = _strings([value] if isinstance(value, str) else value)
    if strings is not None:
        return strings
    if kind == "specs":
        example = SPEC_EXAMPLES.get(key)
        eg = f", e.g. {example}" if example else ""
        raise UsageError(f"{at}: {key!r} must be a list of strings{eg}, got {value!r}")
    what = "rule strings (PATTERN=ACTION)" if kind == "rules" else "paths"
    raise UsageError(f"{at}: {key!r} must be a list of {what}, got {value!r}")


_CONVERT: dict[str, Callable[[Kind, Data, str, str], Value]] = {
    "str": _as_str,
    "str?": _as_str,
    "names?": _as_names,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "rules": _as_strings,
    "paths": _as_strings,
    "specs": _as_strings,
}


def _strings(value: Data) -> tuple[str, ...] | None:
    """A list of strings as a tuple; None when `value` is not one."""
    if not isinstance(value, list):
        return None
    out = tuple(v for v in value if isinstance(v, str))
    return out if len(out) == len(value) else None


SPEC_EXAMPLES = {
    "add": "['head.weight=[3,24]:xavier_uniform']",
    "drop": "['head.*']",
    "rename": "['enc.*=encoder.{1}']",
    "resize": "['transformer.wte.weight=[1008,*]']",
    "config": "['num_labels=3', 'architectures=[\"BertForSequenceClassification\"]']",
}


def _parse_set_list(text: str) -> Data:
    if text.lstrip().startswith("["):
        import yaml

        try:
            return yaml.safe_load(text)
        except (yaml.YAMLError, ValueError):  # ValueError: an integer of too many digits
            return text
    return [text]


def _parse_set_any(text: str) -> Data:
    import yaml

    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of too many digits
        return text


def _fields(
    node: Mapping[str, Data], known: Mapping[str, Kind], path: Path_, where: Where, label: str
) -> dict[str, Value]:
    inside = "" if not path else f" in {_path_text(path)}"
    out: dict[str, Value] = {}
    for key, value in node.items():
        at = location(where, (*path, key), label)
        if not isinstance(key, str) or key not in known:
            raise _unknown(str(key), known, at, inside)
        if known[key] == "steps":
            out[key] = value
            continue
        out[key] = _coerce(known[key], value, key, at)
    return out


def _path_text(path: Path_) -> str:
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else p)
    return text


def _options(
    base: ApplyOptions, values: Mapping[str, Value], keys: Mapping[str, str]
) -> ApplyOptions:
    """`base` with the option keys of `values` (already converted) set."""
    changes = {keys[k]: v for k, v in values.items() if k in keys}
    # each value was converted by its field's recipe kind (`_coerce`), so it has its type
    return replace(base, **changes)  # type: ignore[arg-type]


def validate(data: Mapping[str, Data], where: Where, label: str) -> Recipe:
    top = _fields(data, TOP_KEYS, (), where, label)
    if ("source" in top) == ("new" in top):
        raise UsageError(
            f"{label}: the recipe needs a source (a checkpoint path or hf://OWNER/NAME) or "
            "new (a model config, as reinit new takes it), one of them"
        )
    base = _options(ApplyOptions(), top, TOP_OPTION_KEYS)
    top_surgery = [k for k in SURGERY if k in top]
    steps: list[Step] = []
    if "steps" in top:
        raw = top["steps"]
        at = location(where, ("steps",), label)
        if "rules" in top:
            raise UsageError(f"{at}: give rules or steps, not both (put the rules in a step)")
        if top_surgery:
            raise UsageError(f"{at}: with steps, put {top_surgery[0]} in the step it belongs to")
        if not isinstance(raw, list) or not raw:
            raise UsageError(f"{at}: 'steps' must be a non-empty list of steps, each with rules")
        for i, step in enumerate(raw):
            sat = location(where, ("steps", i), label)
            if not isinstance(step, dict):
                raise UsageError(f"{sat}: each step is a mapping with rules (and seed, strict, …)")
            f = _fields(step, STEP_KEYS, ("steps", i), where, label)
            if not f.get("rules") and not any(k in f for k in SURGERY):
                raise UsageError(f"{sat}: step {i + 1} has no rules")
            name = str(f.get("name", ""))
            which = f"step {i + 1}" + (f", {name}" if name else "")
            rules = _rules(f, ("steps", i), where, label, f" ({which})")
            steps.append(
                Step(
                    rules=rules,
                    options=_options(base, f, STEP_OPTION_KEYS),
                    name=name,
                    where=f"{label} step {i + 1}" + (f" ({name})" if name else ""),
                    rule_where=tuple(
                        f"{location(where, ('steps', i, 'rules', j), label)} ({which})"
                        for j in range(len(rules))
                    ),
                )
            )
    else:
        if not top.get("rules") and not top_surgery and "new" not in top:
            raise UsageError(
                f"{label}: the recipe has no rules (give rules: [...] or steps: [...])"
            )
        rules = _rules(top, (), where, label)
        lines = tuple(location(where, ("rules", j), label) for j in range(len(rules)))
        steps.append(Step(rules, base, where=label, rule_where=lines))
    output = top.get("output")
    return Recipe(
        path=label,
        source=str(top["source"] if "source" in top else top["new"]),
        steps=tuple(steps),
        output=output if isinstance(output, str) else None,
        options=base,
        dry_run=bool(top.get("dry_run", False)),
        new="new" in top,
    )


def _rules(
    values: Mapping[str, Value], path: Path_, where: Where, label: str, which: str = ""
) -> tuple[str, ...]:
    """The rules of a step (or of the recipe, `path` ()), each parsed here so that a bad rule,
    scheme or argument names the line it is written on (and `which` step)."""
    rules = values.get("rules", ())
    assert isinstance(rules, tuple)
    for i, text in enumerate(rules):
        try:
            parse_rule(text)
        except RuleError as e:
            raise type(e)(f"{location(where, (*path, 'rules', i), label)}{which}: {e}") from None
    return tuple(str(r) for r in rules)


def _writes(recipe: Recipe) -> list[tuple[Path_, str | os.PathLike[str]]]:
    """Every path the recipe names to write, with its key: its output, reports and plot
    (top-level keys: a step has none of its own)."""
    out: list[tuple[Path_, str | os.PathLike[str]]] = []
    if recipe.output is not None:
        out.append((("output",), recipe.output))
    out += [(("report", i), p) for i, p in enumerate(recipe.options.reports)]
    if recipe.options.plot is not None:
        out.append((("plot",), recipe.options.plot))
    return out


def _with_grants(options: ApplyOptions, base: ApplyOptions) -> ApplyOptions:
    """A step's options with what the user granted (and nothing the recipe granted itself)."""
    return replace(
        options,
        unsafe_pickle=base.unsafe_pickle,
        model=base.model,
        overwrite=base.overwrite,
        in_place=base.in_place,
    )


def _one_or_many(value: object, keyword: str, what: str) -> tuple[Any, ...]:
    """A `load_recipe` keyword that takes several items (`what`: "str" or "path"), as a tuple:
    one item alone (a str was once read character by character, `allow_write="/x"` granting
    "/") is that item; an item of another type is a `UsageError` naming the keyword."""
    kind = (str, os.PathLike) if what == "path" else str
    items = (value,) if isinstance(value, (str, os.PathLike)) else value
    out = tuple(items) if isinstance(items, Iterable) else (items,)
    for item in out:
        if not isinstance(item, kind):
            raise UsageError(
                f"load_recipe: {keyword}= takes a {what} or a list of them, got {item!r} "
                f"({type(item).__name__})"
            )
    return out


def load_recipe(
    path: str | os.PathLike[str],
    sets: Sequence[str] = (),
    *,
    unsafe_pickle: TrustSpec = (),
    trust_model_callable: Sequence[str] = (),
    overwrite: bool = False,
    in_place: bool = False,
    allow_write: Sequence[str | os.PathLike[str]] = (),
) -> Recipe:
    """Read, override (`--set`), expand `${VAR}` and validate a recipe file. Relative paths in
    it are left as written: like the flags they mirror, they are relative to the current
    directory. Nothing in the file (or `sets`) runs code or replaces files by itself: its
    `unsafe_pickle:` paths, a `model: module:callable`, `overwrite: true` and `in_place: true`
    must be granted by the caller, and so must an `output:`, `report:` or `plot:` path outside
    the current directory and the recipe's own folder, or in a hidden or Python package
    folder below them (docs/guide/trust.md).

    Args:
        path: A `.yaml`/`.yml`, `.toml` (Python >= 3.11) or `.json` recipe.
        sets: `KEY=VALUE` overrides, as `reinit run --set` (`seed=3`, `steps.1.seed=4`).
        unsafe_pickle: The torch files you trust to run code while loading (`--unsafe-pickle`);
            every path of the recipe's `unsafe_pickle:` must be among them.
        trust_model_callable: The `MODULE:CALLABLE` names you allow the recipe's `model:` to
            import and call (`--trust-model-callable`).
        overwrite: Replace an existing output (`--overwrite`); a recipe's own `overwrite: true`
            is refused without it.
        in_place: Rewrite the source's weight files (`--in-place`); a recipe's own
            `in_place: true` is refused without it.
        allow_write: Folders the recipe may write in besides the current directory and its own
            folder (`--allow-write DIR`), hidden or package folders included.

    Returns:
        The validated `Recipe`: its source, output, top-level `ApplyOptions` and steps (each
        with its own rules and options), every default filled in.

    Raises:
        UsageError: naming the file and the line of the key at fault.

    Example:

    ```python
    import reinit

    recipe = reinit.load_recipe("init.yaml", sets=["seed=5"])
    print(recipe.source, [step.rules for step in recipe.steps], recipe.options.seed)
    ```
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(
            f"load_recipe: path must be a str or os.PathLike, got {type(path).__name__}"
        )
    sets = _one_or_many(sets, "sets", "str")
    trust_model_callable = _one_or_many(trust_model_callable, "trust_model_callable", "str")
    allow_write = _one_or_many(allow_write, "allow_write", "path")
    data, where, label = read_recipe_file(path)
    # --set first: a key it overrides is not expanded, so `--set source=dir` works on a recipe
    # whose source is `${MODEL}` without MODEL set (--set values are taken as written)
    apply_sets(data, where, sets)
    expanded = expand_all(data, (), where, label)
    assert isinstance(expanded, dict)  # expand_all keeps a mapping a mapping
    recipe = validate(expanded, where, label)
    grants = Grants(unsafe_pickle, trust_model_callable, overwrite, in_place, allow_write)
    base = granted(recipe.options, where, label, grants)
    granted_writes(_writes(recipe), where, label, Path(path).parent, grants)
    if recipe.new:
        granted_new(recipe.source, where, label, trust_model_callable)
    steps = tuple(replace(s, options=_with_grants(s.options, base)) for s in recipe.steps)
    return replace(recipe, options=base, steps=steps)
