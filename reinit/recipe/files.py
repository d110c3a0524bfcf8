"""Reading recipe files (YAML, TOML, JSON) with where each key is (file and line), bounded in
size, nesting and alias expansion; `${VAR}` expansion."""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from reinit.errors import UsageError

if TYPE_CHECKING:
    import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class SetValue:
    """Text from `--set KEY=VALUE`, converted by the kind of the key it lands on."""

    text: str


# A recipe's data as parsed (YAML's safe loader, JSON, TOML: timestamps included), with the
# text of `--set` (a SetValue) where it overrides a key.
Data: TypeAlias = (
    None
    | bool
    | int
    | float
    | str
    | datetime.date
    | datetime.time
    | SetValue
    | list["Data"]
    | dict[str, "Data"]
)


Where = dict[Path_, str]  # a key's path -> "recipe.yaml line 7" or "--set seed"


SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}


# Bounds on what a recipe file may hold (a recipe needs a few levels and a few thousand
# values): deeper nesting overflowed Python's recursion, YAML aliases expanded exponentially
# (a "billion laughs" exhausted memory). Documented in docs/guarantees.md.
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


def _check_yaml_nodes(root: yaml.Node, label: str) -> None:
    """YAML: refuse nesting deeper than MAX_DEPTH and more than MAX_VALUES values once
    aliases are expanded (an alias is a reference to an earlier node; walking references
    counts what every later step would walk), without recursion."""
    import yaml

    seen = 0
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
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


def _yaml_where(node: yaml.Node, path: Path_, where: Where, label: str) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            line = f"{label} line {key_node.start_mark.line + 1}"
            if key in seen:
                raise UsageError(f"{line}: key {key!r} given twice")
            seen.add(key)
            where[path + (key,)] = line
            _yaml_where(value_node, (*path, key), where, label)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            where[path + (i,)] = f"{label} line {item.start_mark.line + 1}"
            _yaml_where(item, (*path, i), where, label)


def _read_yaml(text: str, label: str) -> tuple[Data, Where]:
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


def _json_scan(text: str, label: str) -> tuple[Data, Where]:
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

    def value(i: int, path: Path_) -> tuple[Data, int]:
        i = skip(i)
        if text.startswith("{", i):
            obj: dict[str, Data] = {}
            i = skip(i + 1)
            if text.startswith("}", i):
                return obj, i + 1
            while True:
                key, j = scanstring(text, i + 1)
                if key in obj:
                    raise UsageError(f"{line(i)}: key {key!r} given twice")
                where[path + (key,)] = line(i)
                j = skip(j) + 1  # the ':'
                obj[key], j = value(j, (*path, key))
                j = skip(j)
                if text.startswith("}", j):
                    return obj, j + 1
                i = skip(j + 1)  # the ','
        if text.startswith("[", i):
            arr: list[Data] = []
            i = skip(i + 1)
            if text.startswith("]", i):
                return arr, i + 1
            while True:
                where[path + (len(arr),)] = line(i)
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


def _toml_where(data: Data, text: str, label: str) -> Where:
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

    def walk(node: Data, path: Path_, start: int, stop: int) -> None:
        if isinstance(node, dict):
            for key, val in node.items():
                i = find(key, start, stop)
                if i is None and path == () and step_starts:
                    i = find(key, 0, step_starts[0])
                where[path + (key,)] = f"{label} line {i + 1}" if i is not None else label
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
        elif isinstance(node, list):
            at = start
            for n, item in enumerate(node):
                j = _toml_string_line(lines, item, at, stop) if isinstance(item, str) else None
                if j is not None:  # a rule's own line, as YAML and JSON say it
                    where[path + (n,)] = f"{label} line {j + 1}"
                    at = j

    top_stop = step_starts[0] if step_starts else len(lines)
    walk(data, (), 0, top_stop)
    return where


def _toml_string_line(lines: Sequence[str], value: str, start: int, stop: int) -> int | None:
    """The first line from `start` that writes the string `value` as a one-line TOML string
    (basic `"..."`, escaped as JSON escapes, or literal `'...'`); None when it is written
    another way (a multi-line string, unusual escapes): its key's line stands then."""
    forms = [json.dumps(value, ensure_ascii=False), json.dumps(value)]
    if "'" not in value and "\n" not in value:
        forms.append(f"'{value}'")
    for i in range(start, stop):
        if any(f in lines[i] for f in forms):
            return i
    return None


def _read_toml(text: str, label: str) -> tuple[Data, Where]:
    if sys.version_info < (3, 11):
        raise UsageError(f"{label}: TOML recipes need Python 3.11 or newer (tomllib)")
    else:  # checked by the type checker as the oldest Python we run on, hence this shape
        import tomllib

        _check_bracket_depth(text, label)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{label}: not valid TOML ({e})") from None
        return data, _toml_where(data, text, label)


def read_recipe_file(path: str | os.PathLike[str]) -> tuple[dict[str, Data], Where, str]:
    """The recipe's raw data, where each key was written, and the file's label."""
    p = Path(path)
    label = os.fspath(path)
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{label}: unknown recipe type {p.suffix or '(no suffix)'}; use .yaml, .yml, .toml or .json"
        )
    try:
        with p.open("rb") as f:  # at most the cap: a size the file reports may be 0 (/dev/zero)
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise UsageError(
                f"{label}: the recipe is larger than {MAX_RECIPE_BYTES // 2**20} MiB; "
                "a recipe holds rules, not data"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{label}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{label}: cannot read ({e})") from None
    reader: Callable[[str, str], tuple[Data, Where]] = {
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
    except ValueError:  # Python's cap on an integer's digits (the parsers' other errors are theirs)
        raise UsageError(
            f"{_long_number(text, label)}: a number of more than "
            f"{sys.get_int_max_str_digits()} digits; a recipe's numbers are short"
        ) from None
    if data is None:
        raise UsageError(f"{label}: the recipe is empty; it needs at least source and rules")
    if not isinstance(data, dict):
        raise UsageError(
            f"{label}: a recipe is a mapping of keys (source, rules, …), not a {type(data).__name__}"
        )
    return data, where, label


def _long_number(text: str, label: str) -> str:
    """`label line N` of the first integer longer than Python converts, else `label`."""
    m = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
    return f"{label} line {text.count(chr(10), 0, m.start()) + 1}" if m else label


# `$$`, `${VAR}`, `${VAR:-default}`, and (the last alternative) any other `${`, which is refused
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


# Parts of an environment variable's name that mark a credential (HF_TOKEN, GITHUB_TOKEN,
# AWS_SECRET_ACCESS_KEY, OPENAI_API_KEY, DB_PASSWORD, ...): a recipe is shared like a config
# file, and whatever it expands ends in the output's metadata and report, which get published.
_CREDENTIAL_PARTS = frozenset(
    {"TOKEN", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
)
_CREDENTIAL_KEYS = ("API_KEY", "ACCESS_KEY", "PRIVATE_KEY", "AUTH_KEY")


def is_credential(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential.

    >>> [is_credential(n) for n in ("HF_TOKEN", "OPENAI_API_KEY", "MODEL", "TOKENIZER", "KEY")]
    [True, True, False, False, False]
    """
    upper = name.upper()
    parts = set(upper.split("_"))
    return bool(parts & _CREDENTIAL_PARTS) or any(k in upper for k in _CREDENTIAL_KEYS)


def expand_vars(text: str, where: str, env: Mapping[str, str] | None = None) -> str:
    """`${VAR}` -> the environment variable (an error when unset), `${VAR:-default}` -> it or
    the default when unset or empty, `$$` -> `$`. A bare `$VAR` is left alone; any other `${`
    (`${VAR-default}`, `${A:-${B}}`, `${1}`) is an error, not text kept in a path.

    >>> expand_vars("${MODEL}/x-${TAG:-v1} costs $$5, $HOME stays", "r.yaml", {"MODEL": "m"})
    'm/x-v1 costs $5, $HOME stays'
    """
    env = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name is None or (default is not None and "${" in default):
            raise UsageError(
                f"{where}: {text[m.start() : m.start() + 40]!r}: a recipe expands only ${{VAR}} "
                "and ${VAR:-default} (no nesting, no ${VAR-default}); write $$ for a literal $"
            )
        if is_credential(name):
            raise UsageError(
                f"{where}: ${{{name}}} names a credential; a recipe may not read one from the "
                "environment (its value would be written into the output's metadata and "
                f"report); if the recipe really needs this value, give it with --set"
            )
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


def expand_all(node: Data, path: Path_, where: Where, label: str) -> Data:
    """`node` with `${VAR}` expanded in every string (a --set value is left as written)."""
    if isinstance(node, str):
        return expand_vars(node, location(where, path, label))
    if isinstance(node, dict):
        return {k: expand_all(v, (*path, k), where, label) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_all(v, (*path, i), where, label) for i, v in enumerate(node)]
    return node


def location(where: Where, path: Path_, label: str) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in where:
            return where[path[:n]]
    return label
