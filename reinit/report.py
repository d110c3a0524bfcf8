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
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

GARBAGE_ABS = 1e10
STD_OFF_REL = 0.10
STD_OFF_SIGMAS = 5.0
OUTLIER_FACTOR = 5.0
OUTLIER_MIN_KIND = 3
UNSTABLE_MIN_LAYERS = 8
UNSTABLE_GAIN = 4.0
FLAGS = ("nonfinite", "garbage", "constant", "std_off", "outlier", "unstable_depth")

_CHUNK = 1 << 21  # elements per statistics chunk


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
        return Stats(d["mean"], d["std"], d["min"], d["max"], int(d["nonfinite"]))


@dataclass
class _Acc:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    bad: int = 0

    def add(self, x: torch.Tensor) -> None:
        """Merge one chunk (float32/float64) by Chan's parallel variance formula."""
        if x.is_floating_point():
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                self.bad += int(x.numel() - int(finite.sum()))
                x = x[finite]
        k = x.numel()
        if k == 0:
            return
        xd = x.to(torch.float64)
        var, mu = torch.var_mean(xd, correction=0)
        mu_f, m2 = float(mu), float(var) * k
        lo, hi = torch.aminmax(xd)
        delta = mu_f - self.mean
        total = self.n + k
        self.mean += delta * k / total
        self.m2 += m2 + delta * delta * self.n * k / total
        self.n = total
        self.lo = min(self.lo, float(lo))
        self.hi = max(self.hi, float(hi))

    def stats(self) -> Stats:
        if self.n == 0:
            return Stats(None, None, None, None, self.bad, 0)
        std = math.sqrt(max(self.m2, 0.0) / self.n)
        return Stats(self.mean, std, self.lo, self.hi, self.bad, self.n)


def tensor_stats(t: torch.Tensor) -> Stats:
    """Stats of any tensor: float (incl. bf16/fp16/fp8), integer and bool (never changed,
    but their values are summarized too)."""
    flat = t.detach().reshape(-1)
    acc = _Acc()
    work = torch.float64 if t.dtype in (torch.float64, torch.int64, torch.uint64) else torch.float32
    if t.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1)
        work = torch.float64
    for i in range(0, flat.numel(), _CHUNK):
        acc.add(flat[i : i + _CHUNK].to(work))
    return acc.stats()


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
            after=Stats.from_dict(d["after"]),
            rule=d.get("rule"),
            scheme=d.get("scheme"),
            source=d.get("from"),
            reason=d.get("reason"),
            fan_in=d.get("fan_in"),
            fan_out=d.get("fan_out"),
            before=Stats.from_dict(d["before"]) if d.get("before") else None,
            expected_std=d.get("expected_std"),
            var_gain=d.get("var_gain"),
            flags=tuple(d.get("flags", ())),
            notes=tuple(d.get("notes", ())),
        )


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
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

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
    meant_constant = e.action == "reinit" and e.expected_std == 0.0
    if len(e.shape) >= 2 and s.count > 1 and s.std == 0.0 and not meant_constant:
        flags.append("constant")
    if std_off(e):
        flags.append("std_off")
    return tuple(flags)


def std_off(e: TensorEntry) -> bool:
    """A re-initialized tensor whose std is off its expected value by more than 10% and by
    more than 5 standard errors of the sample std, SE ≈ σ·√((κ−1)/(4n)) for kurtosis κ."""
    if e.action != "reinit" or e.expected_std is None or e.after.std is None:
        return False
    exp, got = e.expected_std, e.after.std
    if exp == 0.0:
        return got > 0.0
    rel = abs(got - exp) / exp
    n = max(e.after.count, 1)
    se = math.sqrt(max(e.kurtosis - 1.0, 0.0) / (4.0 * n))
    return rel > STD_OFF_REL and rel > STD_OFF_SIGMAS * se


_NUM = re.compile(r"(?<![^.])\d+(?![^.])")


def kind_of(name: str) -> str:
    """The tensor's kind: its name with dotted numeric parts replaced by `*`
    (`layers.3.mlp.weight` -> `layers.*.mlp.weight`; `fc1.weight` stays itself)."""
    return _NUM.sub("*", name)


def layer_index(name: str) -> int | None:
    """The first dotted number in the name: its depth in a stack of layers."""
    m = _NUM.search(name)
    return int(m.group(0)) if m else None


def finalize(entries: Sequence[TensorEntry]) -> tuple[TensorEntry, ...]:
    """Add every flag: per-tensor ones, then `outlier` (std > 5× off the median of its kind)
    and `unstable_depth` (a kind of ≥ 8 layers whose geometric-mean var_gain leaves [1/4, 4])."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        if e.is_float and e.after.std is not None:
            by_kind[kind_of(e.name)].append(i)
    extra: dict[int, list[str]] = defaultdict(list)
    for members in by_kind.values():
        if len(members) >= OUTLIER_MIN_KIND:
            med = statistics.median(entries[i].after.std or 0.0 for i in members)
            if med > 0:
                for i in members:
                    std = entries[i].after.std or 0.0
                    if std > OUTLIER_FACTOR * med or std < med / OUTLIER_FACTOR:
                        extra[i].append("outlier")
        gains = [entries[i].var_gain for i in members if entries[i].var_gain]
        if len(gains) >= UNSTABLE_MIN_LAYERS and len(gains) == len(members):
            gmean = math.exp(sum(math.log(g) for g in gains) / len(gains))
            if gmean > UNSTABLE_GAIN or gmean < 1.0 / UNSTABLE_GAIN:
                for i in members:
                    extra[i].append("unstable_depth")
    return tuple(
        replace(e, flags=tensor_flags(e) + tuple(extra.get(i, ()))) for i, e in enumerate(entries)
    )


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


def fmt(x: float | None) -> str:
    """3 significant digits; '-' for none."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}"


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


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
        ]
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(report: Report) -> str:
    s = report.summary
    lines = [
        f"# reinit report: {_md_cell(report.source)}",
        "",
        f"- output: {report.output or '(none)'}",
        f"- seed: {report.seed}",
        f"- rules: {', '.join(f'`{r}`' for r in report.rules) or '(none)'}",
        f"- {summary_line(report)}",
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
    del s
    return "\n".join(lines) + "\n"


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
    if s.bytes_written:
        parts.append(f"{s.bytes_written / 1e6:.1f} MB written")
    parts.append(f"{s.seconds:.2f}s")
    return ", ".join(parts)


def shorten(text: str, width: int) -> str:
    """Shorten in the middle, keeping both ends (the ends of a tensor name carry the meaning)."""
    if len(text) <= width:
        return text
    keep = width - 1
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head) :]


def render_table(entries: Sequence[TensorEntry], width: int = 100, color: bool = False) -> str:
    """An aligned table (flagged rows first) that fits `width` columns."""
    import click

    rows = sorted(entries, key=lambda e: (not e.flags,))
    cols = [
        (
            e.name,
            shape_text(e.shape),
            e.action,
            (fmt(e.before.std) + " → " if e.before else "") + fmt(e.after.std),
            fmt(e.expected_std),
            fmt(e.var_gain),
            ",".join(e.flags),
        )
        for e in rows
    ]
    header = ("name", "shape", "action", "std before → after", "expected", "var_gain", "flags")
    widths = [max([len(header[i])] + [len(c[i]) for c in cols]) for i in range(len(header))]
    fixed = sum(widths[1:]) + 2 * (len(widths) - 1)
    widths[0] = max(16, min(widths[0], width - fixed))
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for e, c in zip(rows, cols, strict=True):
        cells = [shorten(c[0], widths[0]).ljust(widths[0])] + [
            v.ljust(w) for v, w in zip(c[1:], widths[1:], strict=True)
        ]
        line = "  ".join(cells).rstrip()
        if color and e.flags:
            line = click.style(line, fg="red")
        elif color and e.action in ("reinit", "transplant"):
            line = click.style(line, fg="green")
        out.append(line)
    return "\n".join(out)


def render_terminal(report: Report, width: int = 100, color: bool = False) -> str:
    """The one-line summary, then the changed and the flagged tensors as a table."""
    shown = [e for e in report.tensors if e.flags or e.action in ("reinit", "transplant")]
    skipped = [e for e in report.tensors if e.action == "skipped"]
    lines = [summary_line(report)]
    if report.output:
        lines.append(f"wrote {report.output}")
    if shown:
        lines.append(render_table(shown, width, color))
    if skipped:
        reasons: dict[str, int] = defaultdict(int)
        for e in skipped:
            reasons[e.reason or ""] += 1
        for reason, n in reasons.items():
            lines.append(f"skipped {n}: {reason}")
    return "\n".join(lines)


def write_report(report: Report, path: str) -> None:
    """Write `report` to `path` in the format its extension names (.json, .csv, .md)."""
    from pathlib import Path

    p = Path(path)
    text = render_for_path(report, p.name)
    p.write_text(text, encoding="utf-8")


def render_for_path(report: Report, filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".json"):
        return report.to_json() + "\n"
    if lower.endswith(".csv"):
        return to_csv(report)
    if lower.endswith(".md"):
        return to_markdown(report)
    from reinit.errors import UsageError

    raise UsageError(f"--report {filename}: unknown report format; use .json, .csv or .md")


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
        rows.append(
            (
                e.name,
                shape_text(e.shape),
                str(e.dtype).removeprefix("torch."),
                e.action,
                what,
                e.rule.text if e.rule else "-",
            )
        )
    header = ("name", "shape", "dtype", "action", "what", "rule")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(4)]
    widths[0] = max(16, min(widths[0], width // 2))
    lines = []
    for r in [header, *rows]:
        head = "  ".join(
            (shorten(c, widths[i]) if i == 0 else c).ljust(widths[i]) for i, c in enumerate(r[:4])
        )
        lines.append(f"{head}  {r[4]}" + (f"   [{r[5]}]" if r[5] not in ("-", "rule") else ""))
    counts = defaultdict(int)
    for e in plan.entries:
        counts[e.action] += 1
    summary = ", ".join(f"{counts[a]} {a}" for a in ("reinit", "transplant", "kept", "skipped"))
    return "\n".join(
        [f"plan: {len(plan.entries)} tensors: {summary} (dry run, nothing written)", *lines]
    )
