"""Recipes: `reinit run RECIPE.(yaml|yml|toml|json) [--set KEY=VALUE]...`.

A recipe holds what `reinit apply`'s flags hold (keys named like the flags, `-` -> `_`), and
optionally `steps:`, a list of rule sets applied one after another where each step reads the
previous step's tensors in memory: no intermediate file is written, and the final output is
byte-identical to running the steps one after another with files in between.

Parsing keeps where every key was written (YAML via the compose API's node marks, JSON via a
small scanner over `json.decoder`, TOML by finding the key in the text, since tomllib keeps
no positions), so every error names the file and line of the key at fault."""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reinit.errors import UsageError

Path_ = tuple[str | int, ...]
Where = dict[Path_, str]  # a key's path -> "recipe.yaml line 7" or "--set seed"

# --- schema: the keys a recipe may hold, and what each must be ----------------------------

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
SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}


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


# --- reading the file, with where each key is ---------------------------------------------


# Bounds on what a recipe file may hold (a recipe needs a few levels and a few thousand
# values): deeper nesting overflowed Python's recursion, YAML aliases expanded exponentially
# (a "billion laughs" exhausted memory). Documented in README "Guarantees".
MAX_RECIPE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_VALUES = 200_000  # scalars and containers, counting each alias use in full


def _check_bracket_depth(text: str, label: str) -> None:
    """JSON/TOML: refuse nesting deeper than MAX_DEPTH before a recursive parser sees it
    (strings and TOML comments are skipped)."""
    depth = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if c == '"' and text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, i) + 1
                raise UsageError(
                    f"{label} line {line}: nested deeper than {MAX_DEPTH} levels; "
                    "a recipe needs only a few"
                )
        elif c in "]}":
            depth -= 1
        i += 1


def _check_yaml_nodes(root: Any, label: str) -> None:
    """YAML: refuse nesting deeper than MAX_DEPTH and more than MAX_VALUES values once
    aliases are expanded (an alias is a reference to an earlier node; walking references
    counts what every later step would walk), without recursion."""
    import yaml

    seen = 0
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        line = f"{label} line {node.start_mark.line + 1}"
        if depth > MAX_DEPTH:
            raise UsageError(
                f"{line}: nested deeper than {MAX_DEPTH} levels; a recipe needs only a few"
            )
        if seen > MAX_VALUES:
            raise UsageError(
                f"{line}: the recipe expands to more than {MAX_VALUES} values (YAML aliases "
                "or sheer size); write the rules out plainly"
            )
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)


def _yaml_where(node: Any, path: Path_, where: Where, label: str) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            line = f"{label} line {key_node.start_mark.line + 1}"
            if key in seen:
                raise UsageError(f"{line}: key {key!r} given twice")
            seen.add(key)
            where[(*path, key)] = line
            _yaml_where(value_node, (*path, key), where, label)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            where[(*path, i)] = f"{label} line {item.start_mark.line + 1}"
            _yaml_where(item, (*path, i), where, label)


def _read_yaml(text: str, label: str) -> tuple[Any, Where]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_yaml_nodes(node, label)
        data = yaml.safe_load(text)
    except RecursionError:
        raise UsageError(
            f"{label}: nested too deeply to parse; a recipe needs only a few levels"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        hint = ""
        bad_line = (
            text.splitlines()[mark.line]
            if mark is not None and mark.line < len(text.splitlines())
            else ""
        )
        if re.search(r"(^|[\s\[,:-])\*", bad_line):  # a leading * is a YAML alias
            hint = "; quote rules that start with '*', e.g. '*.weight=kaiming'"
        raise UsageError(f"{label}{at}: not valid YAML ({problem}){hint}") from None
    where: Where = {}
    if node is not None:
        _yaml_where(node, (), where, label)
    return data, where


def _json_scan(text: str, label: str) -> tuple[Any, Where]:
    """Parse JSON recording each key's line: objects and arrays are walked here, scalars and
    strings are decoded by the json module itself."""
    decoder = json.JSONDecoder()
    scanstring = json.decoder.scanstring  # type: ignore[attr-defined]
    ws = re.compile(r"[ \t\n\r]*")
    where: Where = {}

    def line(i: int) -> str:
        return f"{label} line {text.count(chr(10), 0, i) + 1}"

    def skip(i: int) -> int:
        return ws.match(text, i).end()  # type: ignore[union-attr]

    def value(i: int, path: Path_) -> tuple[Any, int]:
        i = skip(i)
        if text.startswith("{", i):
            obj: dict[str, Any] = {}
            i = skip(i + 1)
            if text.startswith("}", i):
                return obj, i + 1
            while True:
                key, j = scanstring(text, i + 1)
                if key in obj:
                    raise UsageError(f"{line(i)}: key {key!r} given twice")
                where[(*path, key)] = line(i)
                j = skip(j) + 1  # the ':'
                obj[key], j = value(j, (*path, key))
                j = skip(j)
                if text.startswith("}", j):
                    return obj, j + 1
                i = skip(j + 1)  # the ','
        if text.startswith("[", i):
            arr: list[Any] = []
            i = skip(i + 1)
            if text.startswith("]", i):
                return arr, i + 1
            while True:
                where[(*path, len(arr))] = line(i)
                item, j = value(i, (*path, len(arr)))
                arr.append(item)
                j = skip(j)
                if text.startswith("]", j):
                    return arr, j + 1
                i = skip(j + 1)
        return decoder.raw_decode(text, i)

    _check_bracket_depth(text, label)
    try:
        json.loads(text)  # the json module's own errors, with line and column
    except json.JSONDecodeError as e:
        raise UsageError(f"{label} line {e.lineno}: not valid JSON ({e.msg})") from None
    data, _ = value(0, ())
    return data, where


def _toml_where(data: Any, text: str, label: str) -> Where:
    """tomllib keeps no positions: find each key in the text — within its `[[steps]]` table
    for step keys, else the first line that assigns it (or opens its table)."""
    lines = text.splitlines()
    step_starts = [i for i, s in enumerate(lines) if re.match(r"\s*\[\[\s*steps\s*\]\]", s)]
    where: Where = {}

    def find(key: str, start: int, stop: int) -> int | None:
        pat = re.compile(
            rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=|"""
            rf"""^\s*\[+\s*{re.escape(key)}\s*\]+|[{{,]\s*{re.escape(key)}\s*="""
        )
        for i in range(start, stop):
            if pat.search(lines[i]):
                return i
        return None

    def walk(node: Any, path: Path_, start: int, stop: int) -> None:
        if isinstance(node, dict):
            for key, val in node.items():
                i = find(key, start, stop)
                if i is None and path == () and step_starts:
                    i = find(key, 0, step_starts[0])
                where[(*path, key)] = f"{label} line {i + 1}" if i is not None else label
                if key == "steps" and path == () and isinstance(val, list):
                    for n, step in enumerate(val):
                        if n < len(step_starts):
                            s0 = step_starts[n]
                            s1 = step_starts[n + 1] if n + 1 < len(step_starts) else len(lines)
                            where[("steps", n)] = f"{label} line {s0 + 1}"
                            walk(step, ("steps", n), s0, s1)
                        else:
                            where[("steps", n)] = where[("steps",)]
                            walk(step, ("steps", n), i or 0, len(lines))
                else:
                    walk(val, (*path, key), i or start, stop)

    top_stop = step_starts[0] if step_starts else len(lines)
    walk(data, (), 0, top_stop)
    return where


def _read_toml(text: str, label: str) -> tuple[Any, Where]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UsageError(f"{label}: TOML recipes need Python 3.11 or newer (tomllib)") from None
    _check_bracket_depth(text, label)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{label}: not valid TOML ({e})") from None
    return data, _toml_where(data, text, label)


def read_recipe_file(path: str | os.PathLike[str]) -> tuple[Any, Where, str]:
    """The recipe's raw data, where each key was written, and the file's label."""
    p = Path(path)
    label = os.fspath(path)
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{label}: unknown recipe type {p.suffix or '(no suffix)'}; use .yaml, .yml, .toml or .json"
        )
    try:
        if p.stat().st_size > MAX_RECIPE_BYTES:
            raise UsageError(
                f"{label}: the recipe is larger than {MAX_RECIPE_BYTES // 2**20} MiB; "
                "a recipe holds rules, not data"
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{label}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{label}: cannot read ({e})") from None
    reader: Callable[[str, str], tuple[Any, Where]] = {
        "yaml": _read_yaml,
        "toml": _read_toml,
        "json": _json_scan,
    }[fmt]
    try:
        data, where = reader(text, label)
    except RecursionError:
        raise UsageError(
            f"{label}: nested too deeply to parse; a recipe needs only a few levels"
        ) from None
    if data is None:
        raise UsageError(f"{label}: the recipe is empty; it needs at least source and rules")
    if not isinstance(data, dict):
        raise UsageError(
            f"{label}: a recipe is a mapping of keys (source, rules, …), not a {type(data).__name__}"
        )
    return data, where, label


# --- ${VAR} expansion and --set ------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, where: str, env: Mapping[str, str] | None = None) -> str:
    """`${VAR}` -> the environment variable (an error when unset), `${VAR:-default}` -> it or
    the default when unset or empty, `$$` -> `$`. A bare `$VAR` is left alone.

    >>> expand_vars("${MODEL}/x-${TAG:-v1} costs $$5, $HOME stays", "r.yaml", {"MODEL": "m"})
    'm/x-v1 costs $5, $HOME stays'
    """
    env = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise UsageError(
                    f"{where}: environment variable {name} is not set; export it or write "
                    f"${{{name}:-default}}"
                )
            return default
        return value

    return _VAR.sub(sub, text)


def _expand_all(node: Any, path: Path_, where: Where, label: str) -> Any:
    if isinstance(node, str):
        return expand_vars(node, _loc(where, path, label))
    if isinstance(node, dict):
        return {k: _expand_all(v, (*path, k), where, label) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_all(v, (*path, i), where, label) for i, v in enumerate(node)]
    return node


def _loc(where: Where, path: Path_, label: str) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in where:
            return where[path[:n]]
    return label


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


# --- validation -----------------------------------------------------------------------------


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
        at = _loc(where, (*path, key), label)
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
        at = _loc(where, ("steps",), label)
        if "rules" in top:
            raise UsageError(f"{at}: give rules or steps, not both (put the rules in a step)")
        if top_options:
            raise UsageError(f"{at}: with steps, put {top_options[0][0]} in the step it belongs to")
        if not isinstance(raw, list) or not raw:
            raise UsageError(f"{at}: 'steps' must be a non-empty list of steps, each with rules")
        for i, step in enumerate(raw):
            sat = _loc(where, ("steps", i), label)
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
    from reinit.engine import apply

    params = inspect.signature(apply).parameters
    return {k for k in PASS_THROUGH if k in params}


def _check_pass_through(steps: Sequence[Step], where: Where, label: str) -> None:
    supported = _supported_options()
    for i, step in enumerate(steps):
        for key, _ in step.options:
            in_step = ("steps", i, key) in where
            path: Path_ = ("steps", i, key) if in_step else (key,)
            at = _loc(where, path, label)
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
    data = _expand_all(data, (), where, label)
    return validate(data, where, label)


# --- running --------------------------------------------------------------------------------


def run_recipe(recipe: Recipe, *, progress: bool = False) -> Any:
    """Run every step; return the final `Report` (or, for a dry run, the list of `Plan`s).

    One step is exactly `reinit.apply` with the recipe's options. Several steps: each but the
    last runs in memory on the previous step's tensors (`StateDictCheckpoint`), the last one
    streams to the output with the source's layout and metadata; no intermediate file is
    written. The report then covers all steps: per tensor, the last step that changed it, its
    std before the first change and after the last."""
    import reinit
    from reinit.inmemory import apply_to_checkpoint
    from reinit.io.readers import StateDictCheckpoint, open_checkpoint

    if recipe.dry_run:
        return [
            reinit.plan(
                recipe.source,
                step.rules,
                strict=step.strict,
                allow_unmatched=step.allow_unmatched,
                unsafe_pickle=recipe.unsafe_pickle,
                progress=progress,
            )
            for step in recipe.steps
        ]
    common: dict[str, Any] = {
        "overwrite": recipe.overwrite,
        "in_place": recipe.in_place,
        "device": recipe.device,
        "progress": progress,
        "unsafe_pickle": recipe.unsafe_pickle,
    }
    if len(recipe.steps) == 1:
        step = recipe.steps[0]
        return reinit.apply(
            recipe.source,
            step.rules,
            recipe.output,
            seed=step.seed,
            reports=recipe.reports,
            strict=step.strict,
            allow_unmatched=step.allow_unmatched,
            **common,
            **dict(step.options),
        )
    started = time.perf_counter()
    reports = []
    with open_checkpoint(
        recipe.source, unsafe_pickle=recipe.unsafe_pickle, progress=progress
    ) as original:
        current: Any = original
        for step in recipe.steps[:-1]:
            tensors, rep = _step(apply_to_checkpoint, current, step, recipe, progress)
            reports.append(rep)
            current = StateDictCheckpoint(tensors, like=original)
        last = recipe.steps[-1]
        done = tuple(reports)
        # the merged report is written with the checkpoint, published together or not at all
        return _step_or_raise(
            lambda: reinit.apply(
                current,
                last.rules,
                recipe.output,
                seed=last.seed,
                reports=recipe.reports,
                strict=last.strict,
                allow_unmatched=last.allow_unmatched,
                finish_report=lambda final: merge_reports(
                    [*done, final], recipe.seed, time.perf_counter() - started
                ),
                **common,
                **dict(last.options),
            ),
            last,
        )


def _step_or_raise(fn: Callable[[], Any], step: Step) -> Any:
    """Prefix a step's usage errors with the step, so a multi-step error says where."""
    try:
        return fn()
    except UsageError as e:
        raise type(e)(f"{step.label}: {e}") from None


def _step(fn: Callable[..., Any], ckpt: Any, step: Step, recipe: Recipe, progress: bool) -> Any:
    return _step_or_raise(
        lambda: fn(
            ckpt,
            step.rules,
            seed=step.seed,
            strict=step.strict,
            allow_unmatched=step.allow_unmatched,
            device=recipe.device,
            unsafe_pickle=recipe.unsafe_pickle,
            progress=progress,
        ),
        step,
    )


def merge_reports(reports: Sequence[Any], seed: int, seconds: float) -> Any:
    """One report for a multi-step run: each tensor as the last step that acted on it, with its
    std before the first change and after the last; flags recomputed over the result."""
    from reinit.report import Report, finalize, summarize

    final = reports[-1]
    steps = [{e.name: e for e in r.tensors} for r in reports]
    entries = []
    for e in final.tensors:
        seen = [s[e.name] for s in steps if e.name in s]
        changed = [x for x in seen if x.action in ("reinit", "transplant")]
        acted = [x for x in seen if x.rule is not None]
        if changed:
            entry = replace(changed[-1], before=changed[0].before, after=e.after, flags=())
        elif acted:
            entry = replace(acted[-1], after=e.after, flags=())
        else:
            entry = replace(e, flags=())
        entries.append(entry)
    done = finalize(entries)
    rules = tuple(r for rep in reports for r in rep.rules)
    warnings = tuple(w for rep in reports for w in rep.warnings)
    return Report(
        reinit_version=final.reinit_version,
        source=reports[0].source,
        output=final.output,
        seed=seed,
        rules=rules,
        tensors=done,
        summary=summarize(done, final.summary.bytes_written, seconds),
        warnings=warnings,
    )


__all__ = ["Recipe", "Step", "expand_vars", "load_recipe", "merge_reports", "run_recipe"]
