"""The per-layer std report (DESIGN §5): statistics, flags, and renderers (JSON, CSV, Markdown,
terminal).

Statistics are exact over the finite values, accumulated in float64 chunk by chunk (so a large
tensor never needs a float64 copy of itself), with NaN/Inf counted apart: one NaN must not hide
the scale of everything else. Std is the population std (correction 0), which makes the `eye`
and `dirac` patterns' expected std exact."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from reinit.text import md_cell, shown

GARBAGE_ABS = 1e10
STD_OFF_REL = 0.10
STD_OFF_SIGMAS = 5.0
OUTLIER_FACTOR = 5.0
OUTLIER_MIN_KIND = 3
UNSTABLE_MIN_LAYERS = 8
UNSTABLE_GAIN = 4.0
FLAGS = ("nonfinite", "garbage", "constant", "std_off", "outlier", "unstable_depth")


# --- JSON -------------------------------------------------------------------------------

NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float written as a string ("NaN", "Infinity", "-Infinity"):
    strict JSON has no such numbers, and Python's json would emit bare NaN, which other parsers
    reject. Finite numbers stay numbers; `number()` reads the strings back."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return NONFINITE[repr(obj)]
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON of `obj` (see `json_safe`): never a bare NaN/Infinity."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def number(v: Any) -> Any:
    """A number of our JSON back as a float: "NaN"/"Infinity"/"-Infinity" strings included."""
    return float(v) if isinstance(v, str) and v in NONFINITE.values() else v


# --- statistics -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Mean, std, min, max over the finite values (None when there are none) and the count
    of NaN/Inf values."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    nonfinite: int
    count: int = 0  # finite values counted; not part of the JSON schema

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "nonfinite": self.nonfinite,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Stats:
        return Stats(
            number(d["mean"]),
            number(d["std"]),
            number(d["min"]),
            number(d["max"]),
            int(d["nonfinite"]),
        )


_FLOAT_CHUNK = 1 << 20  # elements per float32 work buffer (4 MB: stays in cache)


class StatsAccumulator:
    """Streaming mean/std/min/max/nonfinite of one tensor, fed chunk by chunk in order.

    Why it looks like this: statistics are on the hot path of every command (every byte of a
    checkpoint passes through here), so each chunk is converted once into a reused float32
    buffer (float64 for 64-bit types), shifted by a pivot (the tensor's first finite value, so
    E[x²]−E[x]² does not cancel for tensors like LayerNorm weights ≈ 1 ± 0.01), and reduced with
    torch's cascade summation; chunk sums are accumulated in float64. A chunk holding NaN/Inf
    (or values whose squares overflow) takes an exact masked path instead."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        wide = dtype in (torch.float64, torch.int64, torch.uint64, torch.int32, torch.uint32)
        self.work = torch.float64 if wide or dtype.is_complex else torch.float32
        self.is_float = dtype.is_floating_point
        self._buf: torch.Tensor | None = None
        self.n = 0
        self.s1 = 0.0  # Σ(x − pivot)
        self.s2 = 0.0  # Σ(x − pivot)²
        self.pivot: float | None = None
        self.exp = 0  # s1 is in units of 2**exp, s2 in units of 2**(2*exp)
        self.lo = math.inf
        self.hi = -math.inf
        self.bad = 0

    def add(self, chunk: torch.Tensor) -> None:
        flat = chunk.reshape(-1)
        if flat.dtype.is_complex:
            flat = torch.view_as_real(flat).reshape(-1)
        for i in range(0, flat.numel(), _FLOAT_CHUNK):
            self._add(flat[i : i + _FLOAT_CHUNK])

    def _add(self, part: torch.Tensor) -> None:
        k = part.numel()
        if k == 0:
            return
        if self._buf is None or self._buf.numel() < k:
            self._buf = torch.empty(max(k, min(_FLOAT_CHUNK, 1 << 16)), dtype=self.work)
        x = self._buf[:k]
        x.copy_(part)
        if self.pivot is None:
            first = float(x[0])
            self.pivot = first if math.isfinite(first) else 0.0
        lo, hi = torch.aminmax(x)
        lo_f, hi_f = float(lo), float(hi)
        x.sub_(self.pivot)
        s1 = float(x.sum())
        x.square_()
        s2 = float(x.sum())
        if math.isfinite(s1) and math.isfinite(s2) and math.isfinite(lo_f) and math.isfinite(hi_f):
            self._merge(k, s1, s2, lo_f, hi_f)
        else:
            self._add_masked(part)

    def _add_masked(self, part: torch.Tensor) -> None:
        """The exact path: finite values only, in float64; scaled by a power of two when the
        squares (or the differences from the pivot) would overflow, e.g. values near 1e200."""
        xd = part.to(torch.float64)
        finite = torch.isfinite(xd)
        self.bad += int(xd.numel() - int(finite.sum()))
        xd = xd[finite]
        k = xd.numel()
        if k == 0:
            return
        lo, hi = torch.aminmax(xd)
        lo_f, hi_f = float(lo), float(hi)
        if self.pivot is None or not math.isfinite(self.pivot):
            self.pivot = float(xd[0])
        d = xd - self.pivot
        s1, s2 = float(d.sum()), float(d.square().sum())
        if math.isfinite(s1) and math.isfinite(s2):
            self._merge(k, s1, s2, lo_f, hi_f)
            return
        # |x|, |pivot| < 2**(e-1), so every scaled difference lies in (-1, 1) and its square
        # sum is below k: nothing overflows, and a power of two scales exactly
        e = math.frexp(max(abs(lo_f), abs(hi_f), abs(self.pivot)))[1] + 1
        scale = math.ldexp(1.0, -e)
        y = xd * scale - self.pivot * scale
        self._merge(k, float(y.sum()), float(y.square().sum()), lo_f, hi_f, e)

    def _merge(self, k: int, s1: float, s2: float, lo: float, hi: float, e: int = 0) -> None:
        """Add a part's sums, given in units of 2**e (squares: 2**2e), to the running ones,
        which are kept in units of 2**self.exp: both go to the larger unit."""
        top = max(self.exp, e)
        self.s1 = math.ldexp(self.s1, self.exp - top) + math.ldexp(s1, e - top)
        self.s2 = math.ldexp(self.s2, 2 * (self.exp - top)) + math.ldexp(s2, 2 * (e - top))
        self.exp = top
        self.n += k
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)

    def result(self) -> Stats:
        if self.n == 0:
            return Stats(None, None, None, None, self.bad, 0)
        m1 = self.s1 / self.n
        var = max(self.s2 / self.n - m1 * m1, 0.0)
        mean = (self.pivot or 0.0) + _unscale(m1, self.exp)
        # the shifted sums can round outside [min, max] for near-constant tensors
        mean = min(max(mean, self.lo), self.hi)
        return Stats(mean, _unscale(math.sqrt(var), self.exp), self.lo, self.hi, self.bad, self.n)


def _unscale(x: float, e: int) -> float:
    """x * 2**e; inf only where the true value is beyond float64 (a std of values spanning
    ±1.8e308)."""
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(math.inf, x)


def tensor_stats(t: torch.Tensor) -> Stats:
    """Stats of any tensor: float (incl. bf16/fp16/fp8), integer and bool (never changed,
    but their values are summarized too)."""
    acc = StatsAccumulator(t.dtype)
    acc.add(t.detach())
    return acc.result()


# --- entries and report -----------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    action: str  # kept | reinit | transplant | skipped
    after: Stats
    rule: str | None = None
    scheme: str | None = None
    source: str | None = None  # "from" in JSON
    reason: str | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    before: Stats | None = None
    expected_std: float | None = None
    var_gain: float | None = None
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    kurtosis: float = 3.0  # of the scheme's distribution; for std_off's tolerance only

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "action": self.action,
            "rule": self.rule,
            "scheme": self.scheme,
            "from": self.source,
            "reason": self.reason,
            "fan_in": self.fan_in,
            "fan_out": self.fan_out,
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict(),
            "expected_std": self.expected_std,
            "var_gain": self.var_gain,
            "flags": list(self.flags),
            "notes": list(self.notes),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TensorEntry:
        return TensorEntry(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            action=d["action"],
            after=_counted(Stats.from_dict(d["after"]), d["shape"]),
            rule=d.get("rule"),
            scheme=d.get("scheme"),
            source=d.get("from"),
            reason=d.get("reason"),
            fan_in=d.get("fan_in"),
            fan_out=d.get("fan_out"),
            before=Stats.from_dict(d["before"]) if d.get("before") else None,
            expected_std=number(d.get("expected_std")),
            var_gain=number(d.get("var_gain")),
            flags=tuple(d.get("flags", ())),
            notes=tuple(d.get("notes", ())),
        )


def _counted(s: Stats, shape: Sequence[int]) -> Stats:
    """Stats read back from JSON, with the finite count (not in the schema) restored, so
    std_off's sampling tolerance is the same as when the report was made."""
    return replace(s, count=max(math.prod(shape) - s.nonfinite, 0) if s.std is not None else 0)


@dataclass(frozen=True)
class Summary:
    tensors: int
    reinit: int
    transplant: int
    kept: int
    skipped: int
    flagged: int
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ROWS = "\x00reinit-tensor-rows\x00"  # to_json's placeholder for the tensor rows


@dataclass(frozen=True)
class Report:
    reinit_version: str
    source: str
    output: str | None
    seed: int
    rules: tuple[str, ...]
    tensors: tuple[TensorEntry, ...]
    summary: Summary
    warnings: tuple[str, ...] = field(default=())
    dropped: tuple[str, ...] = field(default=())  # names removed by --drop

    def to_dict(self) -> dict[str, Any]:
        return {
            "reinit_version": self.reinit_version,
            "source": self.source,
            "output": self.output,
            "seed": self.seed,
            "rules": list(self.rules),
            "tensors": [t.to_dict() for t in self.tensors],
            "summary": self.summary.to_dict(),
            "dropped": list(self.dropped),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON: indented, with one line per tensor.

        Why one line per tensor: json's indenting encoder is pure Python, and a fully indented
        tensor list cost ~0.4 ms and ~500 bytes per tensor (a third of `apply`'s time on a file
        of 100k small tensors); each row is encoded by the C encoder instead."""
        d = json_safe(self.to_dict())  # non-finite numbers as strings: strict JSON
        if indent is None:
            return json.dumps(d, allow_nan=False)
        rows = d["tensors"]
        d["tensors"] = _ROWS  # a placeholder no real value encodes to, kept in key order
        encode = json.JSONEncoder(allow_nan=False).encode
        pad = " " * indent
        body = ",\n".join(pad * 2 + encode(row) for row in rows)
        text = json.dumps(d, indent=indent, allow_nan=False)
        tensors = f"[\n{body}\n{pad}]" if rows else "[]"
        return text.replace(json.dumps(_ROWS), tensors, 1)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Report:
        return Report(
            reinit_version=d["reinit_version"],
            source=d["source"],
            output=d.get("output"),
            seed=int(d["seed"]),
            rules=tuple(d.get("rules", ())),
            tensors=tuple(TensorEntry.from_dict(t) for t in d["tensors"]),
            summary=Summary(**d["summary"]),
            dropped=tuple(d.get("dropped", ())),
        )

    def entry(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def flagged(self) -> tuple[TensorEntry, ...]:
        return tuple(t for t in self.tensors if t.flags)


def var_gain(fan_in: int | None, std: float | None) -> float | None:
    """fan_in·std²: the factor by which a layer scales the variance of its input."""
    if fan_in is None or std is None:
        return None
    return fan_in * std * std


# --- flags ------------------------------------------------------------------------------

#: Parameters that architectures initialize to zero on purpose (LoRA's B matrices, ControlNet's
#: zero convolutions, DiT's adaLN-Zero modulation): all-zero, they are not `constant`.
ZERO_INIT_NAMES = ("lora_B", "lora_embedding_B", "zero_conv", "adaLN_modulation")

#: Flags a tensor earns on its own. A tensor that has one of these is not also compared with
#: its siblings (`outlier`, `unstable_depth`): the first flag already names the problem, and
#: its absurd std must not move the median or the geometric mean the siblings are judged by.
SELF_FLAGS = ("nonfinite", "garbage", "constant")


def tensor_flags(e: TensorEntry) -> tuple[str, ...]:
    """The flags one tensor earns on its own (the cross-layer ones come from `finalize`)."""
    flags: list[str] = []
    s = e.after
    if not e.is_float:
        return ()
    if s.nonfinite:
        flags.append("nonfinite")
    if s.min is not None and max(abs(s.min), abs(s.max or 0.0)) > GARBAGE_ABS:
        flags.append("garbage")
    meant_constant = (e.action == "reinit" and e.expected_std == 0.0) or (
        s.max == 0.0 and s.min == 0.0 and any(z in e.name for z in ZERO_INIT_NAMES)
    )
    if len(e.shape) >= 2 and s.count > 1 and s.std == 0.0 and not meant_constant:
        flags.append("constant")
    if std_off(e):
        flags.append("std_off")
    return tuple(flags)


def std_tolerance(n: int, kurtosis: float = 3.0) -> float:
    """The relative deviation of a sample std that std_off forgives for a tensor of `n` values:
    10%, or 5 standard errors of the sample std when that is more. SE(s)/σ ≈ √((κ−1)/(4n)) for
    a distribution of kurtosis κ (κ = 3 normal, 1.8 uniform), so a 16-value head may be off by
    ~88% and a 1M-value matrix only by 10%."""
    se = math.sqrt(max(kurtosis - 1.0, 0.0) / (4.0 * max(n, 1)))
    return max(STD_OFF_REL, STD_OFF_SIGMAS * se)


def std_off(e: TensorEntry) -> bool:
    """A re-initialized tensor whose std is off its expected value by more than
    `std_tolerance` (10%, and more than sampling error allows)."""
    if e.action != "reinit" or e.expected_std is None or e.after.std is None:
        return False
    exp, got = e.expected_std, e.after.std
    if exp == 0.0:
        return got > 0.0
    return abs(got - exp) / exp > std_tolerance(e.after.count, e.kurtosis)


_NUM = re.compile(r"(?<![^.])\d+(?![^.])")
_NORM = re.compile(r"norm|(?:^|[._])ln(?:_?\d+|_?f)?(?:[._]|$)", re.IGNORECASE)


def kind_of(name: str) -> str:
    """The tensor's kind: its name with dotted numeric parts replaced by `*`
    (`layers.3.mlp.weight` -> `layers.*.mlp.weight`; `fc1.weight` stays itself)."""
    return _NUM.sub("*", name)


def layer_index(name: str) -> int | None:
    """The first dotted number in the name: its depth in a stack of layers."""
    m = _NUM.search(name)
    return int(m.group(0)) if m else None


def layer_key(name: str) -> tuple[int, ...]:
    """Every dotted number of the name, outermost first: the column of a tensor within its
    kind (`layers.3` -> (3,); `layers.3.experts.7` -> (3, 7))."""
    return tuple(int(m.group(0)) for m in _NUM.finditer(name))


def layer_prefix(name: str) -> str | None:
    """The name up to and including its first dotted number (`model.layers.3`): the block."""
    m = _NUM.search(name)
    return name[: m.end()] if m else None


def is_norm(name: str) -> bool:
    """LayerNorm/RMSNorm/BatchNorm parameters by their usual names (`LayerNorm`,
    `input_layernorm`, `norm1`, GPT-2's `ln_1`/`ln_f`)."""
    return _NORM.search(name) is not None


def _comparable(e: TensorEntry) -> bool:
    """May this tensor be judged against its siblings? ≥2-D float weights with a finite,
    positive std and none of the self-explaining flags. 1-D tensors (biases, norm gains) are
    left out: their std measures spread around a learned value, not a scale."""
    return (
        e.is_float
        and len(e.shape) >= 2
        and e.after.std is not None
        and e.after.std > 0.0
        and not (set(tensor_flags(e)) & set(SELF_FLAGS))
    )


def geometric_mean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


@dataclass(frozen=True)
class DepthCheck:
    """The `unstable_depth` verdict for one kind."""

    kind: str
    layers: int
    gmean_var_gain: float
    normalized: bool  # every block that holds a member also holds a norm parameter
    unstable: bool


def depth_checks(entries: Sequence[TensorEntry]) -> tuple[DepthCheck, ...]:
    """For each kind of ≥ `UNSTABLE_MIN_LAYERS` comparable tensors at distinct depths: the
    geometric-mean var_gain and whether it signals explosion (> 4) or vanishing (< 1/4).

    Vanishing is not flagged in a normalized stack (a norm parameter in every block that holds
    a member): there a LayerNorm/RMSNorm rescales the signal at every block and the residual
    stream carries it past a small branch, so HF's default N(0, 0.02) in a 64-wide Llama
    (var_gain 0.026) is intended, not a bug. Explosion is flagged regardless: N(0, 1) weights
    saturate attention and swamp the residual stream even behind norms."""
    normed = {layer_prefix(e.name) for e in entries if is_norm(e.name)}
    normed.discard(None)
    by_kind: dict[str, list[TensorEntry]] = defaultdict(list)
    for e in entries:
        if _comparable(e) and e.var_gain and layer_index(e.name) is not None:
            by_kind[kind_of(e.name)].append(e)
    out = []
    for kind, members in by_kind.items():
        depths = {layer_key(e.name) for e in members}
        if len(depths) < UNSTABLE_MIN_LAYERS:
            continue
        g = geometric_mean(e.var_gain or 0.0 for e in members)
        if g is None:
            continue
        normalized = all(layer_prefix(e.name) in normed for e in members)
        unstable = g > UNSTABLE_GAIN or (g < 1.0 / UNSTABLE_GAIN and not normalized)
        out.append(DepthCheck(kind, len(depths), g, normalized, unstable))
    return tuple(out)


def outliers(entries: Sequence[TensorEntry]) -> set[str]:
    """Names whose std is more than 5× away from the median std of their siblings: the
    comparable tensors of the same kind *and shape* (a kind can mix shapes — nn.Sequential's
    `net.*.weight`, a first layer wider than the rest — whose stds differ by design), counted
    only where there are at least `OUTLIER_MIN_KIND` of them."""
    groups: dict[tuple[str, tuple[int, ...]], list[TensorEntry]] = defaultdict(list)
    for e in entries:
        if _comparable(e) and layer_index(e.name) is not None:
            groups[(kind_of(e.name), e.shape)].append(e)
    out: set[str] = set()
    for members in groups.values():
        if len(members) < OUTLIER_MIN_KIND:
            continue
        med = statistics.median(e.after.std or 0.0 for e in members)
        for e in members:
            std = e.after.std or 0.0
            if std > OUTLIER_FACTOR * med or std < med / OUTLIER_FACTOR:
                out.add(e.name)
    return out


def finalize(entries: Sequence[TensorEntry]) -> tuple[TensorEntry, ...]:
    """Add every flag: per-tensor ones, then `outlier` and `unstable_depth` (see `outliers`
    and `depth_checks` for which tensors take part)."""
    out_names = outliers(entries)
    unstable = {c.kind for c in depth_checks(entries) if c.unstable}
    result = []
    for e in entries:
        flags = list(tensor_flags(e))
        if e.name in out_names:
            flags.append("outlier")
        if (
            kind_of(e.name) in unstable
            and _comparable(e)
            and e.var_gain
            and layer_index(e.name) is not None
        ):
            flags.append("unstable_depth")
        result.append(replace(e, flags=tuple(flags)))
    return tuple(result)


def summarize(entries: Iterable[TensorEntry], bytes_written: int, seconds: float) -> Summary:
    entries = list(entries)
    count = {
        a: sum(1 for e in entries if e.action == a)
        for a in ("reinit", "transplant", "kept", "skipped")
    }
    return Summary(
        tensors=len(entries),
        reinit=count["reinit"],
        transplant=count["transplant"],
        kept=count["kept"],
        skipped=count["skipped"],
        flagged=sum(1 for e in entries if e.flags),
        bytes_written=bytes_written,
        seconds=round(seconds, 3),
    )


# --- renderers --------------------------------------------------------------------------

NOTE_CHANGED = "changed vs baseline"  # `report --against`: the bytes differ from the baseline's
NOTE_NEW = "not in baseline"


def fmt(x: float | None) -> str:
    """3 significant digits, exponents without padding (`1e37`, `2.56e-5`); '-' for none."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    text = f"{x:.3g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    return text


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


def is_changed(e: TensorEntry) -> bool:
    """Re-initialized, transplanted, or (report --against) different from the baseline."""
    return e.action in ("reinit", "transplant") or NOTE_CHANGED in e.notes


# --- per-layer view ---------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCell:
    label: str  # the layer's numbers, "3" or "3.7"
    name: str
    after: float | None
    before: float | None
    var_gain: float | None
    flags: tuple[str, ...]
    changed: bool


@dataclass(frozen=True)
class LayerTable:
    """One tensor kind across depth: a row reads as the layers of the stack, in order."""

    kind: str
    shapes: tuple[str, ...]
    cells: tuple[LayerCell, ...]
    gmean_var_gain: float | None  # over the members that take part in unstable_depth

    @property
    def flags(self) -> tuple[str, ...]:
        seen = dict.fromkeys(f for c in self.cells for f in c.flags)
        return tuple(seen)

    @property
    def has_before(self) -> bool:
        return any(c.before is not None for c in self.cells)

    @property
    def has_var_gain(self) -> bool:
        return any(c.var_gain is not None for c in self.cells)

    @property
    def interesting(self) -> bool:
        """Worth a reader's lines: something changed, something is flagged, or the std is
        not zero everywhere (all-zero biases and all-one norm gains say nothing per layer)."""
        return (
            bool(self.flags)
            or any(c.changed for c in self.cells)
            or any(c.after not in (None, 0.0) for c in self.cells)
        )


def layer_tables(entries: Sequence[TensorEntry]) -> tuple[LayerTable, ...]:
    """Every float kind with at least two layer-indexed members, in order of first
    appearance, its columns sorted by layer numbers."""
    groups: dict[str, list[TensorEntry]] = defaultdict(list)
    for e in entries:
        if e.is_float and layer_index(e.name) is not None:
            groups[kind_of(e.name)].append(e)
    tables = []
    for kind, members in groups.items():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda e: layer_key(e.name))
        cells = tuple(
            LayerCell(
                ".".join(map(str, layer_key(e.name))),
                e.name,
                e.after.std,
                e.before.std if e.before else None,
                e.var_gain,
                e.flags,
                is_changed(e),
            )
            for e in members
        )
        shapes = tuple(dict.fromkeys(shape_text(e.shape) for e in members))
        gm = geometric_mean(e.var_gain or 0.0 for e in members if _comparable(e) and e.var_gain)
        tables.append(LayerTable(kind, shapes, cells, gm))
    return tuple(tables)


def _table_title(t: LayerTable) -> str:
    parts = [", ".join(t.shapes) if len(t.shapes) <= 2 else f"{len(t.shapes)} shapes"]
    parts.append(f"{len(t.cells)} layers")
    if t.gmean_var_gain is not None:
        parts.append(f"geometric-mean var_gain {fmt(t.gmean_var_gain)}")
    return "  ".join(parts)


def _layer_rows(t: LayerTable, mark: str) -> list[tuple[str, list[str]]]:
    """(label, cells) rows: std after (a flagged tensor's std carries `mark`), std before,
    var_gain."""

    def flagged(c: LayerCell, text: str) -> str:
        return text + mark if c.flags else text

    rows = [("std after" if t.has_before else "std", [flagged(c, fmt(c.after)) for c in t.cells])]
    if t.has_before:
        rows.append(
            ("std before", [fmt(c.before) if c.before is not None else "=" for c in t.cells])
        )
    if t.has_var_gain:
        rows.append(("var_gain", [fmt(c.var_gain) for c in t.cells]))
    return rows


def render_layer_table(t: LayerTable, width: int = 100, color: bool = False) -> str:
    """The kind's title line, then rows `layer / std / std before / var_gain` with one
    column per layer, wrapped into blocks that fit `width`."""
    import click

    rest = _table_title(t) + (f"  [{', '.join(t.flags)}]" if t.flags else "")
    kind = shown(t.kind)
    if len(kind) + 2 + len(rest) <= width:
        titles = [f"{kind}  {rest}"]
    else:  # the kind on its own line, what it is below
        titles = [shorten_name(kind, width), "  " + shorten(rest, width - 2)]
    lines = [click.style(x, bold=True) if color else x for x in titles]  # kind: shown() above
    rows = [("layer", [c.label for c in t.cells]), *_layer_rows(t, "!")]
    label_w = max(len(r[0]) for r in rows)
    col_w = [max(len(r[1][i]) for r in rows) for i in range(len(t.cells))]
    start = 0
    while start < len(t.cells):
        used, stop = 2 + label_w, start
        while stop < len(t.cells) and (stop == start or used + 2 + col_w[stop] <= width):
            used += 2 + col_w[stop]
            stop += 1
        for label, cells in rows:
            parts = []
            for i in range(start, stop):
                text = cells[i].rjust(col_w[i])
                if color and label.startswith("std") and t.cells[i].flags and label != "std before":
                    text = click.style(text, fg="red", bold=True)
                parts.append(text)
            lines.append(f"  {label.ljust(label_w)}  " + "  ".join(parts))
        start = stop
    return "\n".join(lines)


def layers_markdown(t: LayerTable) -> list[str]:
    title = _table_title(t).replace("  ", " · ")
    if t.flags:
        title += " · " + ", ".join(f"**{f}**" for f in t.flags)
    lines = [f"### `{md_cell(t.kind)}`", "", title, ""]
    lines.append("| layer | " + " | ".join(c.label for c in t.cells) + " |")
    lines.append("| --- |" + " ---: |" * len(t.cells))
    for label, cells in _layer_rows(t, ""):
        marked = [
            f"**{v}**" if label != "std before" and c.flags and label.startswith("std") else v
            for v, c in zip(cells, t.cells, strict=True)
        ]
        lines.append(f"| {label} | " + " | ".join(marked) + " |")
    lines.append("")
    return lines


CSV_COLUMNS = (
    "name",
    "shape",
    "dtype",
    "action",
    "rule",
    "scheme",
    "from",
    "reason",
    "fan_in",
    "fan_out",
    *(f"before_{k}" for k in ("mean", "std", "min", "max", "nonfinite")),
    *(f"after_{k}" for k in ("mean", "std", "min", "max", "nonfinite")),
    "expected_std",
    "var_gain",
    "flags",
    "notes",
)


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in report.tensors:
        d = e.to_dict()
        before = d["before"] or dict.fromkeys(("mean", "std", "min", "max", "nonfinite"))
        row = [
            e.name,
            "x".join(map(str, e.shape)),
            e.dtype,
            e.action,
            e.rule,
            e.scheme,
            e.source,
            e.reason,
            e.fan_in,
            e.fan_out,
            *(before[k] for k in ("mean", "std", "min", "max", "nonfinite")),
            *(d["after"][k] for k in ("mean", "std", "min", "max", "nonfinite")),
            e.expected_std,
            e.var_gain,
            ";".join(e.flags),
            "; ".join(e.notes),
        ]
        # the csv module quotes a cell with a newline, a quote or a comma; control and bidi
        # characters are escaped too, so a spreadsheet or a terminal shows them as text.
        w.writerow(["" if v is None else shown(v) if isinstance(v, str) else v for v in row])
    return buf.getvalue()


def _md_cell(text: str) -> str:
    return md_cell(text)


def to_markdown(report: Report) -> str:
    """A header, `## Tensors` (one table row per tensor, flags in the last column) and
    `## Per layer` (one table per tensor kind, a column per layer)."""
    lines = [
        f"# reinit report: {_md_cell(report.source)}",
        "",
        f"- output: {_md_cell(report.output or '(none)')}",
        f"- seed: {report.seed}",
        f"- rules: {', '.join(f'`{_md_cell(r)}`' for r in report.rules) or '(none)'}",
        f"- {summary_line(report)}",
        *(f"- warning: {_md_cell(w)}" for w in report.warnings),
        *(f"- {_md_cell(line)}" for line in depth_lines(report.tensors)),
        "",
        "## Tensors",
        "",
        "| name | shape | dtype | action | rule | std before | std after | expected | var_gain | flags |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in report.tensors:
        lines.append(
            "| "
            + " | ".join(
                _md_cell(c)
                for c in (
                    f"`{e.name}`",
                    shape_text(e.shape),
                    e.dtype,
                    e.action + (f" ({e.reason})" if e.reason else ""),
                    f"`{e.rule}`" if e.rule else "",
                    fmt(e.before.std) if e.before else "",
                    fmt(e.after.std),
                    fmt(e.expected_std),
                    fmt(e.var_gain),
                    ", ".join(e.flags),
                )
            )
            + " |"
        )
    tables = layer_tables(report.tensors)
    if tables:
        lines += ["", "## Per layer", ""]
        lines.append(
            "std per layer for each tensor kind (the name with its numbers replaced by `*`); "
            "var_gain = fan_in·std², the factor by which the layer scales the variance of its "
            "input (≈1 keeps a stack stable, ≈2 in front of a ReLU). Flagged tensors in bold."
        )
        lines.append("")
        for t in tables:
            lines += layers_markdown(t)
    return "\n".join(lines).rstrip("\n") + "\n"


def summary_line(report: Report) -> str:
    s = report.summary
    parts = [
        f"{s.tensors} tensors",
        f"{s.reinit} reinit",
        f"{s.transplant} transplanted",
        f"{s.kept} kept",
        f"{s.skipped} skipped",
        f"{s.flagged} flagged",
    ]
    changed = sum(1 for e in report.tensors if NOTE_CHANGED in e.notes)
    if changed or any(e.before is not None for e in report.tensors if e.action == "kept"):
        parts.insert(1, f"{changed} changed vs baseline")
    if s.bytes_written:
        parts.append(f"{s.bytes_written / 1e6:.1f} MB written")
    parts.append(f"{s.seconds:.2f}s")
    return ", ".join(parts)


def depth_lines(entries: Sequence[TensorEntry]) -> list[str]:
    """One line per kind flagged unstable_depth, with the number that explains it."""
    lines = []
    for c in depth_checks(entries):
        if c.unstable:
            way = "explode" if c.gmean_var_gain > 1 else "vanish"
            lines.append(
                f"unstable_depth: {c.kind}: {c.layers} layers, geometric-mean var_gain "
                f"{fmt(c.gmean_var_gain)}: signals {way} through depth "
                "(stable: ≈1, ≈2 in front of a ReLU)"
            )
    return lines


def shorten_name(name: str, width: int) -> str:
    """Shorten a dotted tensor name to `width` by clipping its non-numeric parts from the
    left (`bert.encoder.layer.3.attention.output.dense.weight` ->
    `b….e….l….3.attent….output.dense.weight`): a name goes from general to specific, so the
    leading parts are the ones every row shares, while the layer numbers and the trailing
    parts tell tensors apart. In the middle if that is not enough."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    excess = len(name) - width
    for i, p in enumerate(parts[:-1]):
        if excess <= 0:
            break
        if p.isdigit() or p == "*" or len(p) <= 2:  # "m…" still says where a part was
            continue
        keep = max(len(p) - excess, 2)
        excess -= len(p) - keep
        parts[i] = p[: keep - 1] + "…"
    return shorten(".".join(parts), width)


def shorten(text: str, width: int) -> str:
    """Shorten in the middle, keeping both ends (the ends of a tensor name carry the meaning)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    keep = width - 1
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head) :]


_TABLE_HEADER = ("name", "shape", "action", "std before → after", "expected", "var_gain", "flags")
_MIN_WIDTH = (16, 7, 6, 11, 8, 8, 7)


def _fit_widths(widths: list[int], width: int) -> list[int]:
    """Shrink the widest shrinkable columns (name first in practice) until the row fits."""
    widths = list(widths)
    while sum(widths) + 2 * (len(widths) - 1) > width:
        excess = [w - m for w, m in zip(widths, _MIN_WIDTH, strict=True)]
        i = max(range(len(widths)), key=lambda k: (excess[k], k == 0))
        if excess[i] <= 0:
            break
        widths[i] -= 1
    return widths


def render_table(entries: Sequence[TensorEntry], width: int = 100, color: bool = False) -> str:
    """An aligned table (flagged rows first) that fits `width` columns: long names are
    shortened in the middle, numbers have 3 significant digits."""
    import click

    rows = sorted(entries, key=lambda e: (not e.flags,))
    cols = [
        (
            shown(e.name),
            shape_text(e.shape),
            e.action,
            (fmt(e.before.std) + " → " if e.before else "") + fmt(e.after.std),
            fmt(e.expected_std),
            fmt(e.var_gain),
            ",".join(e.flags),
        )
        for e in rows
    ]
    n = len(_TABLE_HEADER)
    widths = [max([len(_TABLE_HEADER[i])] + [len(c[i]) for c in cols]) for i in range(n)]
    widths = _fit_widths(widths, width)
    out = [
        "  ".join(
            shorten(h, w).ljust(w) for h, w in zip(_TABLE_HEADER, widths, strict=True)
        ).rstrip()
    ]
    for e, c in zip(rows, cols, strict=True):
        cells = [shorten_name(c[0], widths[0]).ljust(widths[0])]
        cells += [shorten(v, w).ljust(w) for v, w in zip(c[1:], widths[1:], strict=True)]
        line = "  ".join(cells).rstrip()
        if color and e.flags:
            line = click.style(line, fg="red")
        elif color and is_changed(e):
            line = click.style(line, fg="green")
        out.append(line)
    return "\n".join(out)


def render_terminal(
    report: Report, width: int = 100, color: bool = False, per_layer: str = "changed"
) -> str:
    """The one-line summary, the changed and the flagged tensors as a table (flagged first;
    a kind flagged only for unstable_depth takes one line, not one row per layer), then the
    per-layer view: `per_layer="all"` every kind with something to read, `"changed"` only the
    kinds with a changed or flagged member, `"none"` nothing."""
    listed = [e for e in report.tensors if set(e.flags) - {"unstable_depth"} or is_changed(e)]
    skipped = [e for e in report.tensors if e.action == "skipped"]
    lines = [summary_line(report)]
    if report.output:
        lines.append(f"wrote {shown(report.output)}")
    if listed:
        lines.append(render_table(listed, width, color))
    for line in depth_lines(report.tensors):
        wrapped = textwrap.fill(
            shown(line), width, subsequent_indent="    ", break_on_hyphens=False
        )
        lines.append(click_style(wrapped, color, fg="red"))
    if skipped:
        reasons: dict[str, int] = defaultdict(int)
        for e in skipped:
            reasons[e.reason or ""] += 1
        for reason, n in reasons.items():
            lines.append(f"skipped {n}: {shown(reason)}")
    if per_layer != "none":
        tables = [
            t
            for t in layer_tables(report.tensors)
            if t.interesting and (per_layer == "all" or t.flags or any(c.changed for c in t.cells))
        ]
        if tables:
            lines.append("")
            lines.append("per layer (std of each tensor kind by layer index; ! = flagged):")
            for t in tables:
                lines.append(render_layer_table(t, width, color))
    return "\n".join(lines)


def click_style(text: str, color: bool, **style: Any) -> str:
    if not color:
        return text
    import click

    return click.style(text, **style)


def write_report(report: Report, path: str | Any, *, replace: bool = True) -> None:
    """Write `report` to `path` in the format its extension names (.json, .csv, .md),
    atomically (a temporary beside it, renamed when complete; without `replace`, an existing
    file is an error, even one that appears meanwhile)."""
    from pathlib import Path

    from reinit.io.writer import atomic_output

    p = Path(path)
    text = render_for_path(report, p.name)
    with atomic_output(p, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")


def render_for_path(report: Report, filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".json"):
        return report.to_json() + "\n"
    if lower.endswith(".csv"):
        return to_csv(report)
    if lower.endswith(".md"):
        return to_markdown(report)
    from reinit.io.targets import check_suffix

    check_suffix(filename, "--report", "report")  # raises: the one message for every path
    raise AssertionError(filename)


def render_plan(plan: Any, width: int = 100) -> str:
    """The `--dry-run` view: each tensor, the rule that won, the action, or why it is skipped."""
    rows = []
    for e in plan.entries:
        if e.action == "reinit" and e.scheme is not None:
            what = e.scheme.describe()
        elif e.action == "transplant" and e.rule is not None and e.rule.transplant is not None:
            what = e.rule.transplant.describe()
            if e.source_key is not None and e.source_key != e.name:
                what += f" <- {e.source_key}"
        elif e.action == "skipped":
            what = e.reason or ""
        else:
            what = "unchanged" if e.rule is None else "keep"
        if e.action in ("reinit", "transplant") and e.reason:  # e.g. a tied tensor's partner
            what += f" ({e.reason})"
        if getattr(e, "notes", ()):  # --add / --rename
            what += f" [{', '.join(e.notes)}]"
        rows.append(
            (
                shown(e.name),
                shape_text(e.shape),
                str(e.dtype).removeprefix("torch."),
                e.action,
                shown(what),
                shown(e.rule.text) if e.rule else "-",
            )
        )
    header = ("name", "shape", "dtype", "action", "what", "rule")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(4)]
    widths[0] = max(16, min(widths[0], width // 2))
    lines = []
    for r in [header, *rows]:
        head = "  ".join(
            (shorten_name(c, widths[i]) if i == 0 else c).ljust(widths[i])
            for i, c in enumerate(r[:4])
        )
        lines.append(f"{head}  {r[4]}" + (f"   [{r[5]}]" if r[5] not in ("-", "rule") else ""))
    counts = defaultdict(int)
    for e in plan.entries:
        counts[e.action] += 1
    summary = ", ".join(f"{counts[a]} {a}" for a in ("reinit", "transplant", "kept", "skipped"))
    return "\n".join(
        [f"plan: {len(plan.entries)} tensors: {summary} (dry run, nothing written)", *lines]
    )
