"""A recipe's keys checked against the schema (named with file and line) into a frozen Recipe."""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reinit.errors import UsageError
from reinit.recipe.files import Path_, Where, expand_all, location, read_recipe_file

# kinds: str, str?, int, bool, rules (list of rule strings), paths (a string or a list of
# strings), steps (list of step mappings), any (passed through to reinit.apply as given),
# specs (a string or a list of strings, each an --add/--drop/--rename value)
TOP_KEYS: dict[str, str] = {
    "source": "str",
    "output": "str?",
    "seed": "int",
    "rules": "rules",
    "report": "paths",
    "strict": "bool",
    "allow_unmatched": "bool",
    "overwrite": "bool",
    "in_place": "bool",
    "device": "str",
    "unsafe_pickle": "paths",
    "dry_run": "bool",
    "steps": "steps",
    "add": "specs",
    "drop": "specs",
    "rename": "specs",
}


STEP_KEYS: dict[str, str] = {
    "name": "str",
    "rules": "rules",
    "seed": "int",
    "strict": "bool",
    "allow_unmatched": "bool",
    "add": "specs",
    "drop": "specs",
    "rename": "specs",
}


PASS_THROUGH = ("add", "drop", "rename")  # options of reinit.apply added by the transplant work


@dataclass(frozen=True)
class Step:
    rules: tuple[str, ...]
    seed: int
    strict: bool
    allow_unmatched: bool
    name: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # add/drop/rename, as written
    where: str = ""

    @property
    def label(self) -> str:
        """How errors name the step: `recipe.yaml step 1 (name)`."""
        return self.where or self.name


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: what to run, with every default filled in."""

    path: str
    source: str
    steps: tuple[Step, ...]
    output: str | None = None
    seed: int = 0
    reports: tuple[str, ...] = ()
    overwrite: bool = False
    in_place: bool = False
    device: str = "cpu"
    unsafe_pickle: tuple[str, ...] = ()  # the torch files/folders trusted to run code
    dry_run: bool = False


def apply_sets(data: dict[str, Any], where: Where, sets: Sequence[str]) -> None:
    """`--set KEY=VALUE` overrides, in place. KEY is a dotted path (`seed`, `steps.0.seed`);
    VALUE is text that the key's kind converts (a list key takes one item, or a YAML/JSON
    list such as `["a=zeros", "b=ones"]`)."""
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set {item}: write KEY=VALUE, e.g. --set seed=3")
        key, value = item.split("=", 1)
        key = key.strip()
        parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
            in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
            if in_list or in_dict:
                node = node[part]
            else:
                have = ".".join(map(str, parts[: depth + 1]))
                raise UsageError(f"--set {key}: the recipe has no {have}")
            if not isinstance(node, (dict, list)):
                raise UsageError(
                    f"--set {key}: {'.'.join(map(str, parts[: depth + 1]))} holds a value, not keys"
                )
        last = parts[-1]
        if not isinstance(node, dict) or not isinstance(last, str):
            raise UsageError(f"--set {key}: name a key, e.g. seed or steps.0.seed")
        node[last] = _SetValue(value)
        where[tuple(parts)] = f"--set {key}"


@dataclass(frozen=True)
class _SetValue:
    """Text from --set, converted by the kind of the key it lands on."""

    text: str


def _unknown(key: str, known: Mapping[str, str], at: str, inside: str) -> UsageError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UsageError(f"{at}: unknown key {key!r}{inside}{hint} Known keys: {', '.join(known)}")


_TRUE = {"true", "yes", "on", "1"}


_FALSE = {"false", "no", "off", "0"}


def _coerce(kind: str, value: Any, key: str, at: str) -> Any:
    set_text = value.text if isinstance(value, _SetValue) else None
    if set_text is not None and kind in ("rules", "paths", "any", "specs"):
        value = (
            _parse_set_list(set_text) if kind in ("rules", "paths") else _parse_set_any(set_text)
        )
    elif set_text is not None:
        value = set_text
    if kind == "any":
        return value
    if kind in ("str", "str?"):
        if value is None and kind == "str?":
            return None
        if isinstance(value, str):
            return value
        raise UsageError(f"{at}: {key!r} must be a string, got {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise UsageError(f"{at}: {key!r} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise UsageError(f"{at}: {key!r} must be an integer, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise UsageError(f"{at}: {key!r} must be true or false, got {value!r}")
    if kind in ("rules", "paths"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            what = "rule strings (PATTERN=ACTION)" if kind == "rules" else "paths"
            raise UsageError(f"{at}: {key!r} must be a list of {what}, got {value!r}")
        return tuple(value)
    if kind == "specs":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            example = SPEC_EXAMPLES.get(key, "")
            raise UsageError(
                f"{at}: {key!r} must be a list of strings, e.g. {example}, got {value!r}"
            )
        return tuple(value)
    raise AssertionError(kind)


SPEC_EXAMPLES = {
    "add": "['head.weight=[3,24]:xavier_uniform']",
    "drop": "['head.*']",
    "rename": "['enc.*=encoder.{1}']",
}


def _parse_set_list(text: str) -> Any:
    if text.lstrip().startswith("["):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return [text]


def _parse_set_any(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _fields(
    node: Mapping[str, Any], known: Mapping[str, str], path: Path_, where: Where, label: str
) -> dict[str, Any]:
    inside = "" if not path else f" in {_path_text(path)}"
    out: dict[str, Any] = {}
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


def validate(data: dict[str, Any], where: Where, label: str) -> Recipe:
    top = _fields(data, TOP_KEYS, (), where, label)
    if "source" not in top:
        raise UsageError(
            f"{label}: the recipe needs a source (a checkpoint path or hf://OWNER/NAME)"
        )
    seed = top.get("seed", 0)
    strict = top.get("strict", False)
    allow = top.get("allow_unmatched", False)
    top_options = tuple((k, top[k]) for k in PASS_THROUGH if k in top)
    steps: list[Step] = []
    if "steps" in top:
        raw = top["steps"]
        at = location(where, ("steps",), label)
        if "rules" in top:
            raise UsageError(f"{at}: give rules or steps, not both (put the rules in a step)")
        if top_options:
            raise UsageError(f"{at}: with steps, put {top_options[0][0]} in the step it belongs to")
        if not isinstance(raw, list) or not raw:
            raise UsageError(f"{at}: 'steps' must be a non-empty list of steps, each with rules")
        for i, step in enumerate(raw):
            sat = location(where, ("steps", i), label)
            if not isinstance(step, dict):
                raise UsageError(f"{sat}: each step is a mapping with rules (and seed, strict, …)")
            f = _fields(step, STEP_KEYS, ("steps", i), where, label)
            if not f.get("rules") and not any(k in f for k in PASS_THROUGH):
                raise UsageError(f"{sat}: step {i} has no rules")
            steps.append(
                Step(
                    rules=f.get("rules", ()),
                    seed=f.get("seed", seed),
                    strict=f.get("strict", strict),
                    allow_unmatched=f.get("allow_unmatched", allow),
                    name=f.get("name", ""),
                    options=tuple((k, f[k]) for k in PASS_THROUGH if k in f),
                    where=f"{label} step {i}" + (f" ({f['name']})" if f.get("name") else ""),
                )
            )
    else:
        if not top.get("rules") and not top_options:
            raise UsageError(
                f"{label}: the recipe has no rules (give rules: [...] or steps: [...])"
            )
        steps.append(
            Step(top.get("rules", ()), seed, strict, allow, options=top_options, where=label)
        )
    _check_pass_through(steps, where, label)
    return Recipe(
        path=label,
        source=top["source"],
        steps=tuple(steps),
        output=top.get("output"),
        seed=seed,
        reports=top.get("report", ()),
        overwrite=top.get("overwrite", False),
        in_place=top.get("in_place", False),
        device=top.get("device", "cpu"),
        unsafe_pickle=top.get("unsafe_pickle", ()),
        dry_run=top.get("dry_run", False),
    )


def _supported_options() -> set[str]:
    """Which of add/drop/rename this version's `reinit.apply` takes."""
    from reinit.run.apply import apply

    params = inspect.signature(apply).parameters
    return {k for k in PASS_THROUGH if k in params}


def _check_pass_through(steps: Sequence[Step], where: Where, label: str) -> None:
    supported = _supported_options()
    for i, step in enumerate(steps):
        for key, _ in step.options:
            in_step = ("steps", i, key) in where
            path: Path_ = ("steps", i, key) if in_step else (key,)
            at = location(where, path, label)
            if key not in supported:
                raise UsageError(
                    f"{at}: {key!r} is not supported yet by this version of reinit "
                    "(reinit.apply has no such option); use rules for now"
                )
            if len(steps) > 1 and i < len(steps) - 1:
                raise UsageError(
                    f"{at}: {key!r} is supported only in the last step of a multi-step recipe for now"
                )


def load_recipe(
    path: str | os.PathLike[str],
    sets: Sequence[str] = (),
) -> Recipe:
    """Read, override (`--set`), expand `${VAR}` and validate a recipe file. Relative paths in
    it are left as written: like the flags they mirror, they are relative to the current
    directory."""
    data, where, label = read_recipe_file(path)
    # --set first: a key it overrides is not expanded, so `--set source=dir` works on a recipe
    # whose source is `${MODEL}` without MODEL set (--set values are taken as written)
    apply_sets(data, where, sets)
    data = expand_all(data, (), where, label)
    return validate(data, where, label)
