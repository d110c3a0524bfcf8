"""The transform arguments of `from(...)` (docs/guide/transplant.md, "Transplants across
architecture changes") as data, and their parsing and validation.

Order of application: select (`key=` / `cat=` / `stack=` / `expert=` / `chunk=`) -> `rotary=` -> one of `resample=`,
`adapt=`, `rows=` -> cast to the target's dtype -> `on_mismatch=`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from reinit.errors import RuleError

__all__ = [
    "ADAPTERS",
    "CHOICES",
    "TRANSFORM_ARGS",
    "Chunk",
    "TransformSpec",
    "parse_chunk",
    "parse_grid",
    "parse_stack",
    "parse_transform",
]

# the values each choice-valued argument takes
CHOICES: dict[str, tuple[str, ...]] = {
    "rotary": ("hf_to_meta", "meta_to_hf"),
    "resample": ("linear", "bilinear", "bicubic", "copy"),
    "adapt": ("channels",),
    "rows": ("tokens", "labels"),
}

# at most one of these per rule: each makes the source fit the target's shape its own way
ADAPTERS = ("resample", "adapt", "rows")

# the arguments that only make sense beside another one
_NEEDS: dict[str, tuple[str, ...]] = {
    "dim": ("chunk", "cat", "stack"),
    "experts": ("stack",),
    "heads": ("rotary",),
    "prefix": ("resample",),
    "grid": ("resample",),
    "init": ("resample",),
    "vocab": ("rows",),
    "src_vocab": ("rows",),
    "new": ("rows",),
}

TRANSFORM_ARGS = (
    "chunk",
    "dim",
    "experts",
    "expert",
    *CHOICES,
    "heads",
    "prefix",
    "grid",
    "init",
    "vocab",
) + (
    "src_vocab",
    "new",
)


@dataclass(frozen=True)
class Chunk:
    """`chunk=I/N` (the I-th of N equal chunks, 0-based: `count` > 0) or `chunk=START:STOP`
    (an index range: `count` == 0)."""

    index: int = 0
    count: int = 0
    start: int = 0
    stop: int = 0

    @property
    def text(self) -> str:
        return f"{self.index}/{self.count}" if self.count else f"{self.start}:{self.stop}"


@dataclass(frozen=True)
class TransformSpec:
    """What a `from(...)` rule does to the source tensor(s) between reading and writing.
    All defaults: no transform (a plain copy)."""

    chunk: Chunk | None = None
    dim: int = 0  # of chunk= and cat= (stack=: of the cat within one expert)
    experts: int = 0  # stack=: how many experts are stacked along a new dim 0
    expert: int | None = None  # expert=E: index E along dim 0 of a stacked source
    expert_template: str | None = None  # expert={2}: E from the target's name (bound per entry)
    rotary: str | None = None  # hf_to_meta | meta_to_hf
    heads: int = 0  # rotary=: the number of heads of THIS tensor (n_kv_heads for k under GQA)
    resample: str | None = None  # linear | bilinear | bicubic | copy (position tables)
    prefix: int | None = None  # resample=: leading tokens kept as they are (None: infer)
    grid: tuple[int, int] | None = None  # resample=: the source grid HxW (None: infer)
    init: str | None = None  # resample=copy: the scheme for the new positions
    adapt: str | None = None  # channels (conv stems)
    rows: str | None = None  # tokens | labels
    vocab: str | None = None  # rows=: the target's tokenizer.json / vocab.txt / config.json
    src_vocab: str | None = None  # rows=: the source's
    new: str | None = None  # rows=: the scheme for rows with no source row

    @property
    def adapter(self) -> str | None:
        """The one of resample/adapt/rows this spec uses, if any."""
        for a in ADAPTERS:
            if getattr(self, a) is not None:
                return a
        return None

    @property
    def active(self) -> bool:
        """Whether anything happens besides a copy (cat= is the TransplantSpec's)."""
        return (
            self.chunk is not None
            or self.expert is not None
            or self.expert_template is not None
            or self.rotary is not None
            or self.adapter is not None
        )

    def parts(self) -> list[str]:
        """`key=value` texts as written, for `describe()` and the report's `transform`."""
        out: list[str] = []
        if self.experts:
            out.append(f"experts={self.experts}")
        if self.expert_template is not None:
            out.append(f"expert={self.expert_template}")
        elif self.expert is not None:
            out.append(f"expert={self.expert}")
        if self.chunk is not None:
            out.append(f"chunk={self.chunk.text}")
        if self.rotary is not None:
            out += [f"rotary={self.rotary}", f"heads={self.heads}"]
        for name in (*ADAPTERS, "prefix", "init", "vocab", "src_vocab", "new"):
            v = getattr(self, name)
            if v is not None:
                out.append(f"{name}={v}")
        if self.grid is not None:
            out.append(f"grid={self.grid[0]}x{self.grid[1]}")
        return out


_CHUNK = re.compile(r"(\d{1,18})/(\d{1,18})\Z|(\d{1,18}):(\d{1,18})\Z")  # 18: any index


def parse_chunk(value: object, where: str) -> Chunk:
    """`I/N` or `START:STOP`, all non-negative integers, I < N, START < STOP."""
    m = _CHUNK.match(str(value).strip())
    if not m:
        raise RuleError(
            f"{where}: chunk={value!r} must be I/N (the I-th of N equal chunks, from 0) "
            "or START:STOP (an index range), e.g. chunk=0/3 or chunk=0:512"
        )
    if m.group(1) is not None:
        i, n = int(m.group(1)), int(m.group(2))
        if not 0 <= i < n:
            raise RuleError(f"{where}: chunk={value}: I must be in 0..N-1 (chunks count from 0)")
        return Chunk(index=i, count=n)
    a, b = int(m.group(3)), int(m.group(4))
    if a >= b:
        raise RuleError(f"{where}: chunk={value}: START must be below STOP")
    return Chunk(start=a, stop=b)


_GRID = re.compile(r"(\d{1,18})[xX](\d{1,18})\Z")


def parse_grid(value: object, where: str) -> tuple[int, int]:
    """`HxW`, both positive."""
    m = _GRID.match(str(value).strip())
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise RuleError(f"{where}: grid={value!r} must be HxW with positive sizes, e.g. grid=14x14")
    return int(m.group(1)), int(m.group(2))


def _int(kw: Mapping[str, object], name: str, where: str, low: int) -> int | None:
    v = kw.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise RuleError(f"{where}: {name}={v!r} must be an integer >= {low}")
    return v


def _choice(kw: Mapping[str, object], name: str, where: str) -> str | None:
    v = kw.get(name)
    if v is None:
        return None
    if v not in CHOICES[name]:
        raise RuleError(f"{where}: {name}={v!r} is not one of {', '.join(CHOICES[name])}")
    return str(v)


def _text(kw: Mapping[str, object], name: str, where: str) -> str | None:
    v = kw.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise RuleError(f"{where}: {name}= needs a non-empty value")
    return v


def _is_template(v: object) -> bool:
    """`expert={2}`: a template field filled from the target's name for each tensor."""
    return isinstance(v, str) and "{" in v


def parse_transform(
    kw: Mapping[str, object], where: str, has_cat: bool = False, has_stack: bool = False
) -> TransformSpec:
    """The transform arguments among a `from(...)` action's keyword arguments, checked: values
    among their choices, companions only beside what they qualify, at most one adapter."""
    for name, needs in _NEEDS.items():
        given = {"cat": has_cat, "stack": has_stack}
        if name in kw and not any(n in kw or given.get(n, False) for n in needs):
            raise RuleError(
                f"{where}: {name}= only applies with {' or '.join(n + '=' for n in needs)}"
            )
    adapters = [a for a in ADAPTERS if a in kw]
    if len(adapters) > 1:
        raise RuleError(
            f"{where}: use at most one of {', '.join(f'{a}=' for a in ADAPTERS)} "
            f"per rule (got {', '.join(adapters)})"
        )
    if "chunk" in kw and has_cat:
        raise RuleError(
            f"{where}: chunk= takes a piece of one source tensor and cat= joins several: "
            "use one per rule"
        )
    experts = _int(kw, "experts", where, 1)
    if has_stack and experts is None:
        raise RuleError(f"{where}: stack= needs experts=N, how many experts to stack (0..N-1)")
    if has_stack and "expert" in kw:
        raise RuleError(f"{where}: stack= builds every expert and expert= takes one: use one")
    rotary = _choice(kw, "rotary", where)
    heads = _int(kw, "heads", where, 1)
    if rotary is not None and heads is None:
        raise RuleError(
            f"{where}: rotary= needs heads=N, the number of heads of this tensor "
            "(n_heads for q_proj, n_kv_heads for k_proj)"
        )
    dim = _int(kw, "dim", where, 0)
    grid = parse_grid(kw["grid"], where) if "grid" in kw else None
    return TransformSpec(
        chunk=parse_chunk(kw["chunk"], where) if "chunk" in kw else None,
        dim=dim or 0,
        experts=experts or 0,
        expert=None if _is_template(kw.get("expert")) else _int(kw, "expert", where, 0),
        expert_template=str(kw["expert"]) if _is_template(kw.get("expert")) else None,
        rotary=rotary,
        heads=heads or 0,
        resample=_choice(kw, "resample", where),
        prefix=_int(kw, "prefix", where, 0),
        grid=grid,
        init=_text(kw, "init", where),
        adapt=_choice(kw, "adapt", where),
        rows=_choice(kw, "rows", where),
        vocab=_text(kw, "vocab", where),
        src_vocab=_text(kw, "src_vocab", where),
        new=_text(kw, "new", where),
    )


def parse_stack(
    kw: Mapping[str, object], key: str | None, cat: tuple[str, ...], where: str
) -> tuple[str, ...]:
    """`stack=T1[;T2...]`: key templates naming one expert with `{e}` (0..experts-1); each
    expert's tensors are joined along dim= (as cat=), then the experts stacked along dim 0."""
    if "stack" not in kw:
        return ()
    if key is not None or cat:
        raise RuleError(f"{where}: stack= names every source key: not with key= or cat=")
    stack = tuple(k.strip() for k in str(kw["stack"]).split(";"))
    if not all(stack) or not all("{e}" in k for k in stack):
        raise RuleError(
            f"{where}: stack= needs key templates with {{e}} for the expert index, separated "
            "by ';', e.g. stack={1}.experts.{e}.w1.weight;{1}.experts.{e}.w3.weight"
        )
    return stack
